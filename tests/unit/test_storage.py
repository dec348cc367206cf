"""lethe.storage on local paths and URI handling; the tuning objective and config; report `tune` key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lethe import storage
from lethe.config import build_config
from lethe.errors import ConfigError, StorageError
from lethe.metrics import unlearning_objective
from lethe.report import validate_report


def test_s3_uri_parsing_and_joining() -> None:
    assert storage.split_s3("s3://bucket/a/b/") == ("bucket", "a/b")
    assert storage.split_s3("s3://bucket") == ("bucket", "")
    assert storage.join("s3://b/run", "shards", "forget") == "s3://b/run/shards/forget"
    assert storage.parent("s3://b/run/shards") == "s3://b/run"
    assert storage.basename("s3://b/run/shards/") == "shards"
    assert storage.fs_path("s3://b/run/x") == "b/run/x"
    assert storage.to_uri("b/run/x", remote=True) == "s3://b/run/x"
    assert storage.normalize("s3://b/run/") == "s3://b/run"
    for bad in ("s3://", "s3://Upper/x", "s3:///x"):
        with pytest.raises(StorageError):
            storage.split_s3(bad)


def test_local_operations_are_atomic_and_listable(tmp_path: Path) -> None:
    root = str(tmp_path / "out")
    storage.write_json(storage.join(root, "a", "x.json"), {"k": 1})
    storage.write_bytes(storage.join(root, "a", "b", "y.parquet"), b"123")
    assert storage.read_json(storage.join(root, "a", "x.json")) == {"k": 1}
    assert storage.list_files(root, ".parquet") == [str(tmp_path / "out" / "a" / "b" / "y.parquet")]
    assert storage.exists(storage.join(root, "a")) and storage.is_file(storage.join(root, "a", "x.json"))
    assert not list((tmp_path / "out" / "a").glob(".*tmp"))  # no temp file left behind
    assert storage.copy_tree(storage.join(root, "a"), storage.join(root, "c")) == 2
    assert storage.read_bytes(storage.join(root, "c", "b", "y.parquet")) == b"123"
    assert storage.delete(storage.join(root, "a")) == 2
    assert not storage.exists(storage.join(root, "a"))
    with pytest.raises(StorageError, match="cannot read"):
        storage.read_bytes(storage.join(root, "missing"))


def test_retries_transient_errors_then_gives_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(storage.BACKOFF_ENV, "0")
    monkeypatch.setenv(storage.ATTEMPTS_ENV, "3")
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionRefusedError("Connection refused")
        return "ok"

    assert storage.with_retries("reading", "s3://b/k", flaky) == "ok" and calls["n"] == 3

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekrit-value-123")

    def down() -> None:
        raise OSError("AWS Error NETWORK_CONNECTION: curlCode: 7, sekrit-value-123")

    with pytest.raises(StorageError) as err:
        storage.with_retries("writing", "s3://b/k", down)
    line = str(err.value)
    assert "writing failed after 3 attempts" in line and "s3://b/k" in line
    assert "sekrit-value-123" not in line and "\n" not in line

    def denied() -> None:
        raise PermissionError("Access denied")

    calls["n"] = 0
    with pytest.raises(StorageError):
        storage.with_retries(
            "reading", "s3://b/k", lambda: (calls.__setitem__("n", calls["n"] + 1), denied())
        )
    assert calls["n"] == 1  # not transient: no retry


def test_endpoint_and_region_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9999")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    st = storage.s3_settings()
    assert (st.host, st.scheme, st.region) == ("127.0.0.1:9999", "http", "eu-west-3")
    fs = storage.s3_filesystem()
    assert fs.region == "eu-west-3"
    # A pickled filesystem (what Ray tasks receive) carries no credentials we did not pass.
    import pickle

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekrit-value-456")
    assert b"sekrit-value-456" not in pickle.dumps(storage.s3_filesystem())
    monkeypatch.setenv("AWS_ENDPOINT_URL", "ftp://nope")
    with pytest.raises(StorageError, match="invalid S3 endpoint"):
        storage.s3_settings()


def test_objective_is_zero_at_the_oracle_and_penalises_both_directions() -> None:
    assert unlearning_objective(2.0, 2.0, 1.0, 1.0) == 0.0
    under, over = unlearning_objective(1.0, 2.0, 1.0, 1.0), unlearning_objective(4.0, 2.0, 1.0, 1.0)
    assert math.isclose(under, math.log(2)) and math.isclose(over, math.log(2))
    # retain damage counts with weight w, retain improvement does not
    assert math.isclose(unlearning_objective(2.0, 2.0, 1.5, 1.0, retain_weight=2.0), 1.0)
    assert unlearning_objective(2.0, 2.0, 0.5, 1.0) == 0.0
    assert unlearning_objective(float("nan"), 2.0, 1.0, 1.0) == float("inf")
    # a retain PSNR drop of 10 dB is a pixel error 10x the original's: 9 with weight 1; a gain is free
    assert math.isclose(unlearning_objective(2.0, 2.0, 1.0, 1.0, psnr_drop_db=10.0), 9.0)
    assert math.isclose(
        unlearning_objective(2.0, 2.0, 1.0, 1.0, psnr_drop_db=3.0, psnr_weight=0.5), 0.5 * (10**0.3 - 1)
    )
    assert unlearning_objective(2.0, 2.0, 1.0, 1.0, psnr_drop_db=-2.0) == 0.0
    assert unlearning_objective(2.0, 2.0, 1.0, 1.0, psnr_drop_db=float("nan")) == float("inf")


def test_tune_and_storage_config_validation() -> None:
    cfg = build_config("smoke", overrides={"tune": {"enabled": True}, "storage": {"uri": "s3://b/run/"}})
    assert cfg.tune.enabled and cfg.tune.num_samples == 3 and cfg.storage.uri == "s3://b/run"
    with pytest.raises(ConfigError, match="tune.alpha_range"):
        build_config("smoke", overrides={"tune": {"alpha_range": [1.0, 0.1]}})
    with pytest.raises(ConfigError, match="tune.cpus_per_trial"):
        build_config("smoke", overrides={"tune": {"cpus_per_trial": 0}})
    with pytest.raises(ConfigError, match="workdir"):
        build_config("smoke", overrides={"workdir": "s3://b/w"})
    with pytest.raises(ConfigError, match="storage.uri"):
        build_config("smoke", overrides={"storage": {"uri": "s3://Bad_Bucket/x"}})


def _report_with_tune(tune: dict) -> dict:
    m = {"psnr": 1.0, "ssim": 0.5, "fd": 2.0, "embed_cos": 0.9}
    return {
        "run_id": "r",
        "dataset": "digits",
        "family": "mae",
        "method": "encoder_noise",
        "request": {"kind": "classes", "forget_count": 1, "retain_count": 2, "forget_digest": "d"},
        "metrics": {
            k: {"forget": {**m, "mia_auc": 0.5}, "retain": m} for k in ("original", "unlearned", "oracle")
        },
        "timing_s": {"tune": 1.0},
        "mlflow": {"tracking_uri": "sqlite:///x", "run_id": "r", "model_name": "m", "model_version": None},
        "tune": tune,
    }


def test_report_tune_key_is_validated() -> None:
    trial = {"trial_id": "a", "status": "finished", "alpha": 0.2, "lr": 1e-3, "objective": 0.4}
    failed = {"trial_id": "b", "status": "error", "alpha": 0.5, "lr": 1e-3, "objective": None}
    ok = {"trials": [trial, failed], "best": trial}
    validate_report(_report_with_tune(ok))
    with pytest.raises(ValueError, match=r"report.tune.trials\[0\].objective"):
        validate_report(_report_with_tune({"trials": [{**trial, "objective": float("nan")}], "best": trial}))
    with pytest.raises(ValueError, match="report.tune.best: missing"):
        validate_report(_report_with_tune({"trials": [trial]}))
