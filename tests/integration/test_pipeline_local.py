"""`lethe pipeline run --local`: the KFP pipeline executed by kfp's local runner, end to end.

Real parts only: the CLI in a subprocess, kfp.local's SubprocessRunner (one process per task), a
local Ray shared by the tasks, scikit-learn's digits (the smallest real data set: the pipeline's cost
here is process and Ray start-up, not data), and a real `mlflow server` for tracking and registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

STEPS = {"split", "pretrain", "oracle", "unlearn", "evaluate", "promote", "cleanup"}


pytestmark = pytest.mark.usefixtures("restore_mlflow_globals")


def lethe(*args: str, cwd: Path, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "lethe.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _yaml(path: Path, data: dict) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _error_lines(r: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("lethe: error:")]


def _children(client, experiment_id: str, parent: str) -> dict[str, object]:
    runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    return {r.data.tags.get("lethe.step"): r for r in runs}


@pytest.mark.slow
def test_local_pipeline_promotes_refuses_and_always_cleans_up(mlflow_server: str, tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    name = f"lethe-kfp-{os.getpid()}"
    experiment = f"kfp-local-{os.getpid()}"
    common = [
        "--preset", "smoke", "--dataset", "digits", "--forget-classes", "3",
        "--tracking-uri", mlflow_server, "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)

    # -- 1. a passing run: new version, lineage tags, alias on it, certificate with cleanup proof ---
    loose = _yaml(
        tmp_path / "loose.yaml",
        {
            "gates": {
                "forget_oracle_tol": 1e6,
                "retain_fd_tol": 1e6,
                "retain_psnr_drop_db": 1e6,
                "mia_auc_tol": 0.5,
            },
            "tracking": {"model_name": name, "experiment": experiment},
        },
    )
    w1 = tmp_path / "w1"
    r = lethe("pipeline", "run", "--local", "--config", loose, "--workdir", str(w1), *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:] + r.stdout[-4000:]
    report_path = Path(r.stdout.strip().splitlines()[-1])
    assert report_path == w1 / "report" / "report.json"
    # The terminal: a line per task as it starts and ends, then the results summary; stdout is only
    # the report path. kfp's executor output is in the log file, and every task joined the run's
    # local Ray on 127.0.0.1 (never the machine's network address).
    assert r.stdout.strip().splitlines() == [str(report_path)]
    assert "split: success in " in r.stderr and "cleanup: success in " in r.stderr, r.stderr[-3000:]
    assert "Executing task" not in r.stderr and len(r.stderr.splitlines()) < 60, r.stderr
    full = (w1 / "logs" / "pipeline.log").read_text()
    assert "Executing task" in full and "Got executor_input" in full
    assert "connecting to Ray at 127.0.0.1:" in full
    report = json.loads(report_path.read_text())
    assert report["mlflow"]["model_version"] == "1" and report["promotion"]["promoted"] is True

    mv = client.get_model_version_by_alias(name, "champion")
    assert mv.version == "1"
    tags = mv.tags
    assert tags["lethe.method"] == "encoder_noise" and tags["lethe.alpha"] == "0.2"
    assert tags["lethe.forget_digest"] == report["request"]["forget_digest"]
    assert tags["lethe.forget_count"] == str(report["request"]["forget_count"])
    assert tags["lethe.source_model"] == "pretrained by lethe"
    assert tags["lethe.pipeline_run_id"] == report["run_id"]
    assert tags["lethe.code_version"].startswith("0.1.0")
    # Gates loosened to 1e6: the untouched source lies in the forget band too, so the power check
    # makes that gate inconclusive (never "passed"); inconclusive does not hold the alias back.
    assert tags["lethe.gates"] == "inconclusive" and tags["lethe.gate.forget_vs_oracle"] == "inconclusive"
    assert tags["lethe.gate.mia"] in ("pass", "inconclusive")
    # digits' held-out 3s are too few for FD (forget fd is null): the retain FD gap is tagged
    assert "lethe.oracle_gap.retain.fd_ratio" in tags and "lethe.oracle_gap.forget.fd_ratio" not in tags
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    assert mlflow.models.get_model_info(f"models:/{name}/1").signature is not None

    parent = client.get_run(report["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["lethe.pipeline"] == "kfp"
    assert parent.data.tags["lethe.promoted"] == "true"
    assert parent.data.tags.get("lethe.kfp_run_id")
    children = _children(client, parent.info.experiment_id, parent.info.run_id)
    assert set(children) == STEPS and all(c.info.status == "FINISHED" for c in children.values())
    inputs = {d.dataset.name: d.dataset.digest for d in children["split"].inputs.dataset_inputs}
    assert set(inputs) == {"forget", "retain", "heldout_forget", "heldout_retain"}

    cert = json.loads((w1 / "certificate" / "certificate.json").read_text())
    assert cert["status"] == "complete" and cert["pipeline"]["orchestrator"] == "kfp"
    assert cert["result_model"] == {
        "name": name,
        "version": "1",
        "uri": f"models:/{name}/1",
        "alias": "champion",
        "promoted": True,
        "previous_alias_version": None,
    }
    assert cert["request"]["forget_digest"] == report["request"]["forget_digest"]
    deleted = cert["cleanup"]["deleted"]
    assert {d["shard"] for d in deleted if "shard" in d} == {"forget", "heldout_forget"}
    # the feature net trained on the forget set went too (the exit handler runs after every task)
    assert any(d.get("model") == "featnet" and d["existed"] for d in deleted)
    assert not (w1 / "models" / "featnet.pt").exists()
    for d in deleted:  # the proof holds: the files are really gone
        assert d["absent_after"] and d["absent_at_issue"] and not Path(d["uri"]).exists()
    assert cert["cleanup"]["all_absent"] is True
    # linked from the model version, and stored where the link points
    local = mlflow.artifacts.download_artifacts(tags["lethe.certificate_uri"], tracking_uri=mlflow_server)
    assert json.loads(Path(local).read_text())["result_model"]["version"] == "1"

    # -- 2. the registered model as source, gates impossibly strict: version 2, alias stays on 1 ---
    strict = _yaml(
        tmp_path / "strict.yaml",
        {
            "gates": {
                "forget_oracle_tol": 0,
                "forget_psnr_tol_db": 0,
                "retain_fd_tol": 0,
                "retain_psnr_drop_db": 0,
                "mia_auc_tol": 0,
            },
            "tracking": {"experiment": experiment},
        },
    )
    # ... as the nightly pipeline of the model (`--model`): it claims the one queued request, its
    # source is the champion, and the failed gates send the request back to the queue (attempt 1).
    w2 = tmp_path / "w2"
    source = f"models:/{name}@champion"
    store = ["--preset", "smoke", "--dataset", "digits", "--workdir", str(w2), "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"digits-{i:04d}\n" for i in range(0, 60, 6)))
    r = lethe("requests", "submit", *store, "--model", name, "--ids", str(ids), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    request_id = r.stdout.strip().splitlines()[-1]
    r = lethe(
        "pipeline", "run", "--local", "--config", strict, "--model", name, "--workdir", str(w2), *common,
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-4000:] + r.stdout[-4000:]
    assert "not promoted: @champion left where it was" in r.stderr  # the summary says so
    assert "NOT promoted" in (w2 / "logs" / "pipeline.log").read_text()  # the log line says why
    assert (
        f"nightly {name}: 1 requests claimed, 0 applied earlier, 10 images forgotten in all; "
        "failed: version 2 not promoted: gates failed" in r.stderr
    ), r.stderr[-3000:]
    out = lethe("requests", "show", *store, request_id, cwd=tmp_path).stdout
    shown = {line[:12].strip(): line[13:] for line in out.splitlines()}
    assert shown["status"] == "failed" and shown["attempts"] == "1", out
    assert shown["last error"].startswith("version 2 not promoted: gates failed: "), out
    assert not (w2 / "requests" / "forget-ids.txt").exists()  # the night's ids went with the night
    assert "digits-" not in (w2 / "requests" / "night.json").read_text()  # uuids only
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    v2 = client.get_model_version(name, "2")
    assert v2.tags["lethe.gates"] == "failed" and v2.tags["lethe.gates.summary"].startswith("gates failed: ")
    assert "NOT promoted to @champion" in v2.description
    assert v2.tags["lethe.source_model"] == f"models:/{name}/1"
    assert v2.tags["lethe.source_model_requested"] == source
    report2 = json.loads((w2 / "report" / "report.json").read_text())
    promote_run = _children(client, parent.info.experiment_id, report2["run_id"])["promote"]
    assert promote_run.data.tags["lethe.promoted"] == "false"
    assert "NOT promoted" in promote_run.data.tags["mlflow.note.content"]
    assert client.get_run(report2["run_id"]).data.tags["lethe.promoted"] == "false"
    cert2 = json.loads((w2 / "certificate" / "certificate.json").read_text())
    assert cert2["result_model"]["promoted"] is False and cert2["gates"]["passed"] is False
    assert cert2["source_model"]["uri"] == f"models:/{name}/1"
    assert cert2["source_model"]["requested"] == source
    assert [q["request_id"] for q in report2["request"]["requests"]] == [request_id]
    # 9 of the 10 ids are training images (one is held out): the forget shard holds those 9
    assert report2["request"]["kind"] == "ids" and report2["request"]["forget_count"] in (9, 10)

    # -- 3. a step fails (the source is a model of another family): cleanup still runs -------------
    w3 = tmp_path / "w3"
    bad_arch = _yaml(tmp_path / "arch.yaml", {"family": "vqgan", "tracking": {"experiment": experiment}})
    r = lethe(
        "pipeline", "run", "--local", "--config", bad_arch, "--source-model", f"models:/{name}/1",
        "--workdir", str(w3), *common, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-3000:]
    lines = _error_lines(r)
    assert lines and "pipeline failed at step pretrain" in lines[-1], r.stderr[-3000:]
    assert "not a lethe model of the configured family" in lines[-1] and "got MAE" in lines[-1]
    assert r.stdout.strip().splitlines()[-1:] != [str(w3 / "report" / "report.json")]
    assert (w3 / "shards" / "retain").exists() and not (w3 / "shards" / "forget").exists()
    cert3 = json.loads((w3 / "certificate" / "certificate.json").read_text())
    assert cert3["status"] == "incomplete" and "configured family" in cert3["error"]
    assert cert3["cleanup"]["all_absent"]
    state = json.loads((w3 / "state.json").read_text())
    failed_run = client.get_run(state["run_id"])
    assert failed_run.info.status == "FAILED" and "configured family" in failed_run.data.tags["lethe.error"]
    assert len(client.search_model_versions(f"name='{name}'")) == 2  # nothing registered

    # -- 4. the nightly pipeline of a model with nothing queued: claim, cleanup, nothing else -------
    w4 = tmp_path / "w4"
    r = lethe(
        "pipeline", "run", "--local", "--model", f"{name}-idle", "--workdir", str(w4), *common, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"nightly {name}-idle: no queued requests; nothing to do, no new version" in r.stderr
    # no report path is printed, no step ran (the terminal has no task line but claim's and cleanup's)
    assert "report.json" not in r.stdout and not (w4 / "report").exists() and not (w4 / "shards").exists()
    assert "split ..." not in r.stderr and "Executing task \x1b[96m'split'" not in r.stdout
    assert client.search_model_versions(f"name='{name}-idle'") == []


def test_unknown_source_model_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    work = tmp_path / "work"
    r = lethe(
        "pipeline", "run", "--local", "--preset", "smoke", "--dataset", "digits",
        "--source-model", "models:/no-such-model@champion", "--workdir", str(work), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2
    lines = _error_lines(r)
    assert len(lines) == 1 and "unknown source model" in lines[0] and "no-such-model" in lines[0]
    assert "Traceback" not in r.stderr
    assert not (work / "shards").exists() and not (work / "kfp").exists()
    import sqlite3

    with sqlite3.connect(work / "mlflow.db") as con:
        assert con.execute("select count(*) from runs").fetchone()[0] == 0
        assert con.execute("select count(*) from model_versions").fetchone()[0] == 0
