"""`lethe pipeline schedule | submit` against kfp's own client, without a live server.

Only the last hop is replaced: the urllib3 pool that kfp_server_api's REST client sends requests
through. Everything above it is real: kfp.Client, the generated API classes, their request models
and JSON serialisation, multipart uploads. The fake answers like KFP's v2beta1 API and records every
request, so the test can check exactly what a server would have received.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from lethe.cli import main
from lethe.config import config_from_json

HOST = "http://kfp.example.test:8080"


class _Resp:
    def __init__(self, status: int, payload: Any) -> None:
        self.status = status
        self.reason = "OK" if status < 400 else "Error"
        self.data = json.dumps(payload).encode()
        self.headers = {"content-type": "application/json"}

    def getheaders(self) -> dict[str, str]:
        return self.headers

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


class FakeKfpApi:
    """The subset of KFP's REST API v2beta1 that kfp.Client uses to schedule and submit."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.experiments: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.uploads: list[str] = []

    def request(self, method: str, url: str, body: Any = None, fields: Any = None, **_: Any) -> _Resp:
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if method == "GET" and fields:
            query.update(dict(fields))
        path = parts.path
        rec = {"method": method, "path": path, "query": query, "body": json.loads(body) if body else None}
        self.requests.append(rec)
        flt = json.loads(query["filter"]) if query.get("filter") else None
        name = flt["predicates"][0]["stringValue"] if flt else None

        if path == "/apis/v2beta1/healthz":
            return _Resp(200, {"multi_user": False})
        if path == "/apis/v2beta1/experiments" and method == "GET":
            found = [e for e in self.experiments.values() if e["display_name"] == name]
            return _Resp(200, {"experiments": found, "total_size": len(found)})
        if path == "/apis/v2beta1/experiments" and method == "POST":
            exp = {**rec["body"], "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments[exp["experiment_id"]] = exp
            return _Resp(200, exp)
        if path == "/apis/v2beta1/pipelines" and method == "GET":
            found = [p for p in self.pipelines.values() if p["display_name"] == name]
            return _Resp(200, {"pipelines": found, "total_size": len(found)})
        if path == "/apis/v2beta1/pipelines/upload":
            self.uploads.append(self._file(fields))
            pid = f"pipe-{len(self.pipelines) + 1}"
            self.pipelines[pid] = {"pipeline_id": pid, "display_name": query["name"]}
            self.versions[pid] = [
                {"pipeline_id": pid, "pipeline_version_id": f"{pid}-v1", "display_name": query["name"]}
            ]
            return _Resp(200, self.pipelines[pid])
        if path == "/apis/v2beta1/pipelines/upload_version":
            self.uploads.append(self._file(fields))
            pid = query["pipelineid"]
            v = {
                "pipeline_id": pid,
                "pipeline_version_id": f"{pid}-v{len(self.versions[pid]) + 1}",
                "display_name": query["name"],
            }
            self.versions[pid].append(v)
            return _Resp(200, v)
        if path.startswith("/apis/v2beta1/pipelines/") and path.endswith("/versions"):
            pid = path.split("/")[4]
            found = [v for v in self.versions.get(pid, []) if name is None or v["display_name"] == name]
            return _Resp(200, {"pipeline_versions": found, "total_size": len(found)})
        if path == "/apis/v2beta1/recurringruns" and method == "POST":
            return _Resp(200, {**rec["body"], "recurring_run_id": "rr-1", "status": "ENABLED"})
        if path == "/apis/v2beta1/runs" and method == "POST":
            return _Resp(200, {**rec["body"], "run_id": "run-1", "state": "PENDING"})
        return _Resp(404, {"error": f"no route {method} {path}"})

    @staticmethod
    def _file(fields: Any) -> str:
        data = dict(fields)["uploadfile"]
        content = data[1]
        return content.decode() if isinstance(content, bytes) else str(content)

    def posted(self, path: str) -> list[dict]:
        return [r["body"] for r in self.requests if r["method"] == "POST" and r["path"] == path]


@pytest.fixture
def kfp_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeKfpApi:
    from kfp_server_api import rest

    api = FakeKfpApi()
    real_init = rest.RESTClientObject.__init__

    def init(self, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        self.pool_manager = api  # the only network hop replaced

    monkeypatch.setattr(rest.RESTClientObject, "__init__", init)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # kfp keeps a context file under ~/.config
    return api


def _schedule(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "pipeline",
        "schedule",
        "--host",
        HOST,
        "--preset",
        "smoke",
        "--workdir",
        "/mnt/lethe/nightly",
        "--tracking-uri",
        "http://mlflow.example.test:5000",
        "--source-model",
        "models:/lethe-mae@champion",
        "--forget-classes",
        "Trouser,Sneaker",
        "--experiment",
        "nightly-unlearning",
        *extra,
    ]


def test_schedule_builds_a_recurring_run_the_server_accepts(
    kfp_api: FakeKfpApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import kfp_server_api

    assert main(_schedule(tmp_path, "--cron", "0 2 * * *")) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "rr-1"

    # experiment created by name, pipeline uploaded, then our content-addressed version
    assert [e["display_name"] for e in kfp_api.posted("/apis/v2beta1/experiments")] == ["nightly-unlearning"]
    assert list(kfp_api.pipelines.values())[0]["display_name"] == "lethe-unlearning"
    versions = kfp_api.versions["pipe-1"]
    assert versions[-1]["display_name"].startswith("lethe-unlearning-0.1.0-")

    (body,) = kfp_api.posted("/apis/v2beta1/recurringruns")
    # The body deserialises into the API's own model: the server's schema accepts it.
    client = kfp_server_api.ApiClient()
    model = client._ApiClient__deserialize(body, "V2beta1RecurringRun")
    assert model.trigger.cron_schedule.cron == "0 0 2 * * *"  # KFP's 6-field form
    assert model.experiment_id == "exp-1"
    assert model.mode == "ENABLE" and model.no_catchup is True and int(model.max_concurrency) == 1
    ref = model.pipeline_version_reference
    assert (ref.pipeline_id, ref.pipeline_version_id) == ("pipe-1", versions[-1]["pipeline_version_id"])
    assert model.pipeline_spec is None  # the run refers to the uploaded version, not an inline spec
    params = model.runtime_config.parameters
    assert set(params) == {"config_json", "workdir", "tune"}
    cfg = config_from_json(params["config_json"])
    assert params["workdir"] == "/mnt/lethe/nightly" and params["tune"] is False
    assert cfg.source_model == "models:/lethe-mae@champion" and cfg.request.classes == ["Trouser", "Sneaker"]
    assert cfg.tracking.tracking_uri == "http://mlflow.example.test:5000"

    # every uploaded package is a loadable pipeline with all its tasks
    for text in kfp_api.uploads:
        doc = yaml.safe_load(text)
        assert doc["pipelineInfo"]["name"] == "lethe-unlearning"

    # scheduling the same pipeline again reuses the pipeline and its version: no new upload
    n_uploads = len(kfp_api.uploads)
    assert main(_schedule(tmp_path, "--cron", "0 0 3 * * *", "--job-name", "second")) == 0
    assert len(kfp_api.uploads) == n_uploads
    second = kfp_api.posted("/apis/v2beta1/recurringruns")[-1]
    assert second["display_name"] == "second"
    assert second["pipeline_version_reference"] == body["pipeline_version_reference"]
    assert second["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"


@pytest.mark.parametrize(
    ("cron", "needle"),
    [("0 25 * * *", "hour value 25 is out of range"), ("every night", "fields"), ("@nightly", "descriptor")],
)
def test_bad_cron_is_one_line_and_sends_nothing(
    kfp_api: FakeKfpApi, tmp_path: Path, capsys: pytest.CaptureFixture[str], cron: str, needle: str
) -> None:
    assert main(_schedule(tmp_path, "--cron", cron)) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("lethe: error:")]
    assert len(lines) == 1 and needle in lines[0]
    assert kfp_api.requests == []


def test_submit_creates_one_run_with_the_inline_spec(
    kfp_api: FakeKfpApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "pipeline",
        "submit",
        "--host",
        HOST,
        "--preset",
        "smoke",
        "--workdir",
        "/mnt/lethe/adhoc",
        "--tune",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "run-1"
    (run,) = kfp_api.posted("/apis/v2beta1/runs")
    assert run["experiment_id"] == "exp-1"
    assert run["pipeline_spec"]["pipelineInfo"]["name"] == "lethe-unlearning"
    assert run["runtime_config"]["parameters"]["tune"] is True
    assert run["runtime_config"]["parameters"]["workdir"] == "/mnt/lethe/adhoc"


def test_server_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, kfp_api: FakeKfpApi, tmp_path: Path, capsys
) -> None:
    def refuse(method: str, url: str, **kw: Any) -> _Resp:
        if "recurringruns" in url:
            return _Resp(400, {"error": "invalid cron"})
        return FakeKfpApi.request(kfp_api, method, url, **kw)

    monkeypatch.setattr(kfp_api, "request", refuse)
    assert main(_schedule(tmp_path, "--cron", "0 2 * * *")) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("lethe: error:")]
    assert len(lines) == 1 and "refused to create the recurring run" in lines[0] and "HTTP 400" in lines[0]
