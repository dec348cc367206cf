"""The nightly pipeline's claim and verdict (lethe.pipeline.nightly): what its first task and its exit
handler do to the requests, on both store backends, without running the steps in between."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from lethe.cli import main
from lethe.config import build_config
from lethe.pipeline import nightly
from lethe.pipeline.layout import check_workdir
from lethe.pipeline.request_groups import groups_path, read_groups
from lethe.pipeline.state import RunState, load_state, save_state
from lethe.store import lifecycle
from lethe.store.db import open_store

IDS = ["digits-0003", "digits-0008", "digits-0013"]


@pytest.fixture()
def night(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("LETHE_DIGEST_KEY", "test-key")
    common = ["--dataset", "digits", "--preset", "smoke", "--requests-db", store_url]

    def cfg(workdir: str):
        c = build_config(
            "smoke",
            overrides={
                "workdir": str(tmp_path / workdir),
                "data": {"dataset": "digits"},
                "requests": {"db_url": store_url},
            },
        )
        check_workdir(c)
        return c

    def submit(ids: list[str]) -> str:
        f = tmp_path / "ids.txt"
        f.write_text("".join(f"{i}\n" for i in ids))
        rc = main(
            [
                "requests",
                "submit",
                *common,
                "--workdir",
                str(tmp_path / "w"),
                "--model",
                "faces",
                "--ids",
                str(f),
            ]
        )
        out, _err = capsys.readouterr()
        assert rc == 0
        return out.strip().splitlines()[-1]

    store = open_store(store_url)
    yield cfg, submit, store
    store.close()


def test_claim_writes_the_night_and_a_second_run_gets_nothing(night) -> None:
    cfg, submit, store = night
    rid = submit(IDS)
    c1 = cfg("w")
    got = nightly.pipeline_claim(c1, "faces", "kfp-run r1")
    assert got.claimed == [rid] and got.forget_count == 3 and got.earlier == []
    # The night's configuration: the forget set as an ids file only its owner reads; a first night
    # (no champion yet) pretrains and registers under the model's name.
    ids_file = Path(got.config.request.ids_file)
    assert sorted(ids_file.read_text().split()) == IDS
    assert stat.S_IMODE(ids_file.stat().st_mode) == 0o600
    # ... and the same ids by request, for the evaluation of each request's own images
    groups = groups_path(ids_file)
    assert read_groups(ids_file) == {rid: IDS} and stat.S_IMODE(groups.stat().st_mode) == 0o600
    assert got.config.request.kind == "ids" and got.config.tracking.model_name == "faces"
    assert [r.request_id for r in got.config.request.refs] == [rid]
    record = (c1.workdir_path / nightly.NIGHT_FILE).read_text()
    assert "digits-" not in record and json.loads(record)["night"] is None  # uuids only, pending
    assert lifecycle.get(store, rid).claimed_by == f"pipeline kfp-run r1 {c1.workdir_path}"
    # Another pipeline run (another work dir, the same store) finds nothing to claim.
    assert nightly.pipeline_claim(cfg("w2"), "faces", "kfp-run r2").claimed == []

    before = lifecycle.get(store, rid).lease_until
    nightly.renew_pipeline_claim(c1)
    assert lifecycle.get(store, rid).lease_until >= before


def test_verdicts_interrupted_failed_applied(night) -> None:
    cfg, submit, store = night
    rid = submit(IDS)
    c = cfg("w")

    # A body that failed without a recorded failure (a task killed): queued again, no attempt counted.
    got = nightly.pipeline_claim(c, "faces", "kfp-run r1")
    verdict = nightly.pipeline_settle(c, succeeded=False, error=None)
    assert verdict is not None and verdict.outcome.startswith("interrupted")
    assert lifecycle.get(store, rid).status == "queued" and lifecycle.get(store, rid).attempts == 0
    assert not Path(got.config.request.ids_file).exists()
    assert not groups_path(got.config.request.ids_file).exists()
    assert nightly.pipeline_settle(c, succeeded=False, error=None) is None  # settled once only

    # A step failed with its reason: failed, one attempt counted, claimed again the next night.
    nightly.pipeline_claim(c, "faces", "kfp-run r2")
    nightly.pipeline_settle(c, succeeded=False, error="step unlearn: out of memory")
    r = lifecycle.get(store, rid)
    assert r.status == "failed" and r.attempts == 1 and "out of memory" in r.last_error

    # Promoted: applied, with the version and the certificate's digest.
    nightly.pipeline_claim(c, "faces", "kfp-run r3")
    lay = check_workdir(c)
    lay.certificate_dir.mkdir(parents=True, exist_ok=True)
    (lay.certificate_dir / "certificate.json").write_text("{}")
    save_state(
        lay, RunState(promote={"promoted": True, "model_version": "3", "certificate_uri": "runs:/x/c"})
    )
    verdict = nightly.pipeline_settle(c, succeeded=True, error=None)
    assert verdict.promoted and verdict.outcome == "applied in version 3 (@champion)"
    r = lifecycle.get(store, rid)
    assert (
        r.status == "applied" and r.applied_version == "3" and r.certificate.startswith("runs:/x/c sha256:")
    )
    assert nightly.last_pipeline_night(c) == verdict
    assert load_state(lay).promote["model_version"] == "3"

    # The next night: the applied request is part of the forget set again (cumulative), not claimed.
    got = nightly.pipeline_claim(c, "faces", "kfp-run r4")
    assert got.claimed == [] and got.earlier == [rid] and got.config is None
    assert nightly.pipeline_settle(c, succeeded=True, error=None).summary("faces") == (
        "nightly faces: no queued requests; nothing to do, no new version"
    )
