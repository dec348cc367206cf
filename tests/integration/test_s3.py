"""Object storage against a real S3 server (SeaweedFS on 127.0.0.1): lethe.storage, a whole smoke run
reading an image folder from S3 and writing shards, checkpoints, models and the report there, MLflow
artifacts on S3 through an MLflow server, bad images in an S3 image folder, and a server restart in
the middle of a split (reading Parquet from S3).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lethe import storage
from lethe.errors import StorageError

LETHE = [sys.executable, "-m", "lethe.cli"]


def _keys(server, prefix: str) -> list[str]:
    client = server.client()
    out: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="lethe", Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/")]
    return out


def _digits_pngs() -> tuple[list[bytes], list[int]]:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    pngs = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return pngs, [int(v) for v in d.target]


def _upload_image_folder(server, prefix: str, files: dict[str, bytes]) -> None:
    """files: relative key (<class>/<name>.png) -> bytes, put under prefix in the test bucket."""
    client = server.client()

    def put(item: tuple[str, bytes]) -> None:
        client.put_object(Bucket="lethe", Key=f"{prefix}/{item[0]}", Body=item[1])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, files.items()))


def _upload_digits_folder(server, prefix: str, n: int | None = None) -> dict[str, bytes]:
    """scikit-learn digits as an image folder prefix/<label>/<i>.png in the test bucket."""
    pngs, labels = _digits_pngs()
    files = {f"{lab}/{i:04d}.png": png for i, (png, lab) in enumerate(zip(pngs, labels, strict=True))}
    files = dict(list(files.items())[:n])
    _upload_image_folder(server, prefix, files)
    return files


def _upload_digits_parquet(server, key: str) -> None:
    """scikit-learn digits as a Parquet data set (id, label, image PNG bytes) in the test bucket."""
    pngs, labels = _digits_pngs()
    table = pa.table(
        {
            "id": [f"d{i:04d}" for i in range(len(pngs))],
            "label": [str(v) for v in labels],
            "image": pa.array(pngs, pa.binary()),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    server.client().put_object(Bucket="lethe", Key=key, Body=sink.getvalue())


def _lethe(
    args: list[str], env: dict[str, str], cwd: Path, timeout: int = 900
) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        **env,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
        "LETHE_S3_BACKOFF_S": "0.3",
    }
    return subprocess.run([*LETHE, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------------------------
# lethe.storage on a real server
# ----------------------------------------------------------------------------------------------
def test_object_operations(s3_env, s3_server) -> None:
    base = "s3://lethe/unit-ops"
    storage.write_json(f"{base}/a/x.json", {"k": 1})
    storage.write_bytes(f"{base}/a/b/y.parquet", b"123")
    assert storage.read_json(f"{base}/a/x.json") == {"k": 1}
    assert storage.list_files(base, ".parquet") == [f"{base}/a/b/y.parquet"]
    assert storage.exists(f"{base}/a") and storage.is_file(f"{base}/a/x.json")
    assert not storage.is_file(f"{base}/a") and not storage.exists(f"{base}/nothing")
    assert storage.copy_tree(f"{base}/a", f"{base}/c") == 2
    assert storage.read_bytes(f"{base}/c/b/y.parquet") == b"123"
    assert storage.list_children(base) == [f"{base}/a", f"{base}/c"]
    assert storage.delete(f"{base}/a") == 2 and storage.list_files(f"{base}/a") == []
    storage.check_writable(base)
    with pytest.raises(StorageError, match="object not found"):
        storage.read_bytes(f"{base}/missing.json")

    # Wrong credentials: one line saying what failed and where, without any key in it.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + s3_env["AWS_SECRET_ACCESS_KEY"])
        with pytest.raises(StorageError, match="storage is not writable") as err:
            storage.check_writable(base)
    assert base in str(err.value) and "wrong-" not in str(err.value)
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in str(err.value)


@pytest.mark.slow
def test_retries_survive_a_server_restart_and_fail_clearly_when_it_stays_down(
    s3_env, s3_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = "s3://lethe/restart/obj.bin"
    storage.write_bytes(uri, b"before")
    s3_server.stop()
    # Bring the server back after a couple of seconds while a write is retrying.
    timer = threading.Timer(2.0, s3_server.start)
    timer.start()
    t0 = time.perf_counter()
    try:
        storage.write_bytes(uri, b"after")
    finally:
        timer.join()
    assert time.perf_counter() - t0 >= 1.5
    assert storage.read_bytes(uri) == b"after"

    # Down for good: one clear line naming the URI, after the configured attempts; no secret in it.
    monkeypatch.setenv(storage.ATTEMPTS_ENV, "2")
    s3_server.stop()
    try:
        with pytest.raises(StorageError) as err:
            storage.write_bytes(uri, b"lost")
    finally:
        s3_server.start()
    line = str(err.value)
    assert line.startswith("writing failed") and uri in line and "\n" not in line
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in line and s3_env["AWS_ACCESS_KEY_ID"] not in line
    assert storage.read_bytes(uri) == b"after"  # the failed write left the old object whole


# ----------------------------------------------------------------------------------------------
# whole runs on S3
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow_s3_server(s3_server, tmp_path_factory: pytest.TempPathFactory):
    """An MLflow server whose artifacts go to s3://lethe/mlartifacts (proxied through the server)."""
    import signal
    import urllib.request

    from lethe.testing.seaweedfs import free_port

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    root = tmp_path_factory.mktemp("mlflow_s3")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        **s3_server.env(),
        # MLflow's S3 artifact store reads its endpoint from here (boto3 also honours AWS_ENDPOINT_URL).
        "MLFLOW_S3_ENDPOINT_URL": s3_server.endpoint,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 's.db'}",
        "--artifacts-destination",
        "s3://lethe/mlartifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90
        while not healthy():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield uri
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # its main pid stops its workers too
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.mark.slow
def test_smoke_run_on_s3_end_to_end(s3_server, mlflow_s3_server, tmp_path: Path) -> None:
    env = s3_server.env()
    # The data set is an image folder on S3 (<class>/<i>.png, as image sets usually are stored).
    _upload_digits_folder(s3_server, "data/digits")
    work, run = tmp_path / "work", "s3://lethe/runs/digits-3"
    r = _lethe(
        [
            "run",
            "--preset",
            "smoke",
            "--dataset",
            "s3://lethe/data/digits/",
            "--forget-classes",
            "3",
            "--storage",
            run,
            "--workdir",
            str(work),
            "--tracking-uri",
            mlflow_s3_server,
        ],
        env,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    # Ray's own output went to the run's log file; workers' progress lines still reach the terminal.
    assert "Traceback" not in r.stderr and (work / "logs" / "ray.log").is_file()
    assert "unlearn step" in r.stderr
    # The last line is the local report; the same report is in S3.
    report = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    remote = json.loads(storage_read(s3_server, "runs/digits-3/report/report.json"))
    assert remote["run_id"] == report["run_id"] and report["storage_uri"] == run
    assert report["source_uri"] == "s3://lethe/data/digits"
    man = json.loads(storage_read(s3_server, "runs/digits-3/shards/manifest.json"))
    assert man["class_names"] == [str(i) for i in range(10)] and man["request"]["classes"] == ["3"]
    assert sum(sh["count"] for sh in man["shards"].values()) > 0
    assert report["mlflow"]["model_version"] == "1"

    keys = _keys(s3_server, "runs/digits-3/")
    rel = [k[len("runs/digits-3/") :] for k in keys]
    assert "shards/manifest.json" in rel
    assert any(k.startswith("shards/retain/") and k.endswith(".parquet") for k in rel)
    assert any(k.startswith("shards/heldout_retain/") for k in rel)
    # Ray Train checkpoints went to S3 through storage_path
    assert any(k.startswith("ray/unlearn-") and "/checkpoint_" in k and k.endswith("model.pt") for k in rel)
    assert any(k.startswith("ray/unlearn-") and k.endswith("lethe_finished.json") for k in rel)
    for f in ("models/original.pt", "models/unlearned.pt", "report/report.html", "state.json"):
        assert f in rel, f
    # No forget shard (nor a temp copy of one) is left in S3 after the run.
    assert not [
        k for k in rel if k.startswith(("shards/forget/", "shards/heldout_forget/", "shards/.shards"))
    ]
    assert not _keys(s3_server, "runs/.digits-3")  # no temp prefix beside it either
    assert all(d["absent_after"] for d in report["cleanup"]["deleted"])
    # MLflow artifacts (report, model) landed in S3 through the server
    art = _keys(s3_server, "mlartifacts/")
    assert any(k.endswith("report.json") for k in art) and any(k.endswith("MLmodel") for k in art)
    # Credentials never reach logs or local outputs.
    written = (
        r.stdout
        + r.stderr
        + "".join(
            p.read_text(errors="replace")
            for p in work.rglob("*")
            if p.is_file() and p.suffix in (".json", ".html")
        )
    )
    assert env["AWS_SECRET_ACCESS_KEY"] not in written and env["AWS_ACCESS_KEY_ID"] not in written


def _unsampled(files: dict[str, bytes]) -> str:
    """A relative key the driver's pre-validation sample does not decode (the loader's order)."""
    from lethe.data.images import sample_indices

    keys = sorted(files)
    picks = set(sample_indices([k.split("/")[0] for k in keys]))
    return next(k for i, k in enumerate(keys) if i not in picks)


@pytest.mark.slow
def test_s3_image_folder_bad_images_fail_in_one_line(s3_env, s3_server, tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from lethe.data.loaders import open_source
    from lethe.errors import DataError

    def png(h: int, w: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.zeros((h, w), np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    # Before Ray: a class's first file (always in the sample) of another size.
    _upload_image_folder(s3_server, "data/mixed-a", {"a/0.png": png(8, 8), "b/0.png": png(9, 8)})
    with pytest.raises(DataError, match="images of mixed sizes") as e:
        open_source("s3://lethe/data/mixed-a/")
    assert "s3://lethe/data/mixed-a/b/0.png" in str(e.value) and "got 9x8x1" in str(e.value)
    # A prefix holding neither Parquet nor an image folder: one line naming both.
    _upload_image_folder(s3_server, "data/neither", {"readme.txt": b"x", "a/b/c.png": png(8, 8)})
    with pytest.raises(DataError, match="no Parquet files and no image folder") as e:
        open_source("s3://lethe/data/neither")
    assert "Parquet" in e.value.expected and "image folder" in e.value.expected

    # In a Ray Data task (the file escapes the sample), through the CLI: one line on the terminal,
    # Ray's traceback only in <workdir>/logs/ray.log.
    files = _upload_digits_folder(s3_server, "data/mixed-b", n=200)
    odd = _unsampled(files)
    _upload_image_folder(s3_server, "data/mixed-b", {odd: png(9, 8)})
    work = tmp_path / "work"
    args = ["split", "--preset", "smoke", "--dataset", "s3://lethe/data/mixed-b", "--forget-classes", "3"]
    r = _lethe([*args, "--workdir", str(work)], s3_server.env(), tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("lethe: error:")]
    assert len(errors) == 1 and "images of mixed sizes" in errors[0], r.stderr[-3000:]
    assert f"s3://lethe/data/mixed-b/{odd}" in errors[0]
    for dump in ("Traceback", "RayTaskError", "streaming_executor", "Full stack trace"):
        assert dump not in r.stderr, r.stderr[-3000:]
    assert "RayTaskError" in (work / "logs" / "ray.log").read_text()
    assert not (work / "shards").exists()
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in r.stdout + r.stderr


def storage_read(server, key: str) -> str:
    return server.client().get_object(Bucket="lethe", Key=key)["Body"].read().decode()


@pytest.mark.slow
def test_split_survives_or_fails_cleanly_when_the_server_restarts(s3_server, tmp_path: Path) -> None:
    env = s3_server.env()
    _upload_digits_parquet(s3_server, "data/digits-r/part-0.parquet")
    run = "s3://lethe/runs/restart"
    args = [
        "split",
        "--preset",
        "smoke",
        "--dataset",
        "s3://lethe/data/digits-r/",
        "--forget-classes",
        "3",
        "--storage",
        run,
        "--workdir",
        str(tmp_path / "work"),
    ]
    full_env = {
        **os.environ,
        **env,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "LETHE_S3_BACKOFF_S": "0.5",
    }
    proc = subprocess.Popen(
        [*LETHE, *args], cwd=tmp_path, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # Restart the server while the split runs: Ray start-up plus the first reads take several seconds.
    time.sleep(8)
    s3_server.restart(down_s=2.0)
    out, err = proc.communicate(timeout=600)
    manifest_keys = _keys(s3_server, "runs/restart/shards/manifest.json")
    if proc.returncode == 0:
        # Survived: a complete, readable split.
        from lethe.data import Manifest

        with pytest.MonkeyPatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            man = Manifest.load(f"{run}/shards")
            for name, shard in man.shards.items():
                files = storage.list_files(shard.path, ".parquet")
                assert files, name
                assert (
                    sum(pq.read_metadata(pa.BufferReader(storage.read_bytes(f))).num_rows for f in files)
                    == shard.count
                )
    else:
        # Failed: one clear line, and no manifest (so no reader trusts a half-written prefix).
        lines = [ln for ln in err.splitlines() if ln.startswith("lethe: error:")]
        assert len(lines) == 1, err[-3000:]
        assert not manifest_keys
    assert env["AWS_SECRET_ACCESS_KEY"] not in out + err
