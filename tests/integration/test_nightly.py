"""Deletion requests end to end (issue 15): submit, run the nightly, kill it mid-run, run it again,
cancel, a night without an oracle (the sample policy), verify the certificate chain. The real CLI in subprocesses, smoke preset on digits, the
request store on the session's real PostgreSQL server, MLflow on SQLite in the work dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from lethe.testing.processes import wait_for_output

pytestmark = pytest.mark.slow
LETHE = [sys.executable, "-m", "lethe.cli"]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    }


def _ids(path: Path, ids: list[str]) -> str:
    path.write_text("".join(f"{i}\n" for i in ids))
    return str(path)


def test_nights_a_killed_night_a_cancelled_request_no_oracle_and_the_certificate_chain(
    tmp_path: Path, postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("LETHE_DIGEST_KEY", "nightly-test-key")
    work, model = tmp_path / "work", "faces"
    db = postgres.create_database("nightly")
    config = tmp_path / "night.yaml"
    # The gates are not what this test is about (test_evidence and test_promotion are): loose, so
    # every night promotes and the requests' lifecycle is what is checked.
    config.write_text(
        yaml.safe_dump(
            {
                "gates": {
                    "forget_oracle_tol": 1e6,
                    "retain_fd_tol": 1e6,
                    "retain_psnr_drop_db": 1e6,
                    "mia_auc_tol": 0.5,
                }
            }
        )
    )
    common = ["--preset", "smoke", "--dataset", "digits", "--workdir", str(work), "--config", str(config)]
    store = [*common[:-2], "--requests-db", db]

    def lethe(*argv: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LETHE, *argv], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=timeout
        )

    def submit(name: str, ids: list[str]) -> str:
        r = lethe(
            "requests", "submit", *store, "--model", model, "--ids", _ids(tmp_path / f"{name}.txt", ids)
        )
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout.strip().splitlines()[-1]

    def show(rid: str) -> dict[str, str]:
        out = lethe("requests", "show", *store, rid).stdout
        return {line[:12].strip(): line[13:] for line in out.splitlines()}

    def night() -> subprocess.CompletedProcess[str]:
        return lethe("nightly", *common, "--model", model, "--requests-db", db)

    a_ids = [f"digits-{i:04d}" for i in range(0, 40, 4)]
    b_ids = [f"digits-{i:04d}" for i in range(1, 41, 4)]
    a = submit("a", a_ids)
    # -- night 1: no champion yet, so it pretrains; A is applied in version 1 --------------------
    r = night()
    assert r.returncode == 0, r.stderr[-4000:]
    assert (
        "1 requests claimed, 0 applied earlier, 10 images forgotten in all; applied in version 1" in r.stderr
    )
    rep1 = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    assert rep1["request"]["forget_count"] == 10
    assert [(q["request_id"], q["night"]) for q in rep1["request"]["requests"]] == [(a, "this")]
    assert show(a)["status"] == "applied" and show(a)["applied in"].startswith("version 1 ")
    assert not (work / "requests" / "forget-ids.txt").exists()  # the night's ids file is gone

    oracle1 = json.loads((work / "state.json").read_text())["oracle"]["cache_key"]
    b = submit("b", b_ids)
    c = submit("c", [f"digits-{i:04d}" for i in range(2, 42, 4)])
    assert lethe("requests", "cancel", *store, c).returncode == 0

    # -- night 2, killed outright mid-run: B stays claimed by a dead run ----------------------------
    log_path = tmp_path / "killed.log"
    with open(log_path, "wb") as err:
        proc = subprocess.Popen(
            [*LETHE, "nightly", *common, "--model", model, "--requests-db", db],
            cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
        )  # fmt: skip
    try:
        # Killed once the night has claimed B and is at work (the split done, pretrain started).
        wait_for_output(proc, log_path, "== pretrain")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)
    assert show(b)["status"] == "in_progress"

    # -- night 2 again: the dead run's claim is taken over, B applied once, in version 2 -----------
    r = night()
    assert r.returncode == 0, r.stderr[-4000:]
    assert (
        "1 requests claimed, 1 applied earlier, 20 images forgotten in all; applied in version 2" in r.stderr
    )
    rep2 = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    # Cumulative: version 2 forgets A and B; its retain set (and the oracle trained on it) holds neither.
    assert rep2["request"]["forget_count"] == 20
    retain_ids = set(pq.read_table(work / "shards" / "retain", columns=["id"]).column("id").to_pylist())
    assert retain_ids and not retain_ids & set(a_ids + b_ids)
    state = json.loads((work / "state.json").read_text())
    # The oracle's cache key is the retain shard's digest: night 2's oracle is a new one, on that set.
    assert state["oracle"]["cache_key"] != oracle1
    cert2 = json.loads((work / "certificate" / "certificate.json").read_text())
    assert cert2["oracle"]["policy"] == "reuse" and cert2["oracle"]["retrained_in_this_run"] is True
    assert sorted((q["request_id"], q["night"]) for q in rep2["request"]["requests"]) == sorted(
        [(b, "this"), (a, "earlier")]
    )
    # A's images, forgotten in version 1, measured again in version 2 (and B's for the first time):
    # the calibrated membership score of each request's own 10 images, source vs version 2.
    evidence = {q["request_id"]: q["evidence"] for q in rep2["request"]["requests"]}
    for rid in (a, b):
        ev = evidence[rid]
        assert ev["n_images"] == 10 and ev["verdict"] in ("forgotten", "remembered", "inconclusive"), ev
        assert isinstance(ev["unlearned_score"], float) and len(ev["unlearned_score_ci95"]) == 2
    assert {q["request_id"]: q["evidence"] for q in cert2["request"]["requests"]} == evidence
    assert "<th>its images</th>" in (work / "certificate" / "certificate.html").read_text()
    assert show(b)["applied in"].startswith("version 2 ") and show(c)["status"] == "cancelled"
    audit = lethe("requests", "audit", *store, b).stdout
    assert "ended without a verdict" in audit and audit.count("in_progress") >= 2
    # Both URIs given: an earlier test in the session may have left MLflow's global registry URI set.
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{model}'"))
    assert versions == [1, 2]
    assert client.get_model_version(model, "2").tags["lethe.source_model"] == f"models:/{model}/1"

    # -- night 3: nothing queued, nothing done ---------------------------------------------------
    r = night()
    assert r.returncode == 0 and "no queued requests; nothing to do, no new version" in r.stderr
    assert sorted(int(v.version) for v in client.search_model_versions(f"name='{model}'")) == [1, 2]

    # -- night 4 under the sample oracle policy, not drawn (share 0): D is applied in version 3 ----
    # without an oracle; the gates that need one are "not evaluated" (never "passed"), and the
    # report, the certificate and the registry say which yardstick there was.
    d = submit("d", [f"digits-{i:04d}" for i in range(3, 43, 4)])
    sample = ["--oracle", "sample", "--oracle-audit-share", "0"]
    r = lethe("nightly", *common, *sample, "--model", model, "--requests-db", db)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "1 requests claimed, 2 applied earlier," in r.stderr, r.stderr[-3000:]
    assert "images forgotten in all; applied in version 3" in r.stderr
    assert "oracle: not audited: not drawn" in r.stderr and "== oracle" in r.stderr
    rep4 = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    assert rep4["oracle"]["policy"] == "sample" and rep4["oracle"]["audited"] is False
    assert set(rep4["metrics"]) == {"original", "unlearned"}  # no oracle figures are made up
    verdicts = {g["name"]: g["verdict"] for g in rep4["promotion"]["gates"]["results"]}
    assert verdicts["forget_vs_oracle"] == verdicts["mia"] == "not evaluated"
    assert verdicts["retain_fd"] == verdicts["retain_psnr"] == "passed"
    assert {q["evidence"]["verdict"] for q in rep4["request"]["requests"]} == {"not evaluated"}
    # No oracle was trained: the work dir holds the stand-in, never a model.
    assert (work / "models" / "oracle.pt").read_bytes().startswith(b"lethe: no oracle in this run")
    cert4 = json.loads((work / "certificate" / "certificate.json").read_text())
    assert cert4["oracle"]["audited"] is False and cert4["oracle"]["retrained_in_this_run"] is None
    assert cert4["gates"]["verdict"] == "inconclusive"
    v3 = client.get_model_version(model, "3").tags
    assert v3["lethe.oracle"] == "sample, not audited" and v3["lethe.gate.mia"] == "not_evaluated"
    assert show(d)["applied in"].startswith("version 3 ")

    # -- the certificate chain: version 3 -> 2 -> 1, and a one-byte edit to version 1 breaks it -----
    verify = ["certificate", "verify", *common[:-2]]
    r = lethe(*verify, f"models:/{model}/3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("ok  ") == 3 and "verified: 3 certificates" in r.stdout
    cert1 = client.get_model_version(model, "1").tags["lethe.certificate_uri"]
    run1 = cert1.removeprefix("runs:/").split("/")[0]
    path = (
        Path(client.get_run(run1).info.artifact_uri.removeprefix("file://"))
        / "certificate"
        / "certificate.json"
    )
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    r = lethe(*verify, f"models:/{model}/3")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "certificate" in r.stderr and "Traceback" not in r.stderr
