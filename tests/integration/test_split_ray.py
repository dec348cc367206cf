"""Splits that really run on Ray Data: digits, a Parquet set, an ids request, an image folder, Fashion-MNIST."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from lethe.config import RunConfig, build_config
from lethe.data import (
    SHARD_NAMES,
    Manifest,
    load_dataset,
    read_shard_numpy,
    shard_dataset,
    split_dataset,
)
from lethe.errors import DataError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session")]

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _cfg(**overrides: object) -> RunConfig:
    return build_config("demo", overrides=overrides)


def _digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return np.round(d.images * (255.0 / 16.0)).astype(np.uint8), d.target.astype(np.int64)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _leftovers(out_dir: Path) -> list[str]:
    return sorted(p.name for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}."))


def _without_files(manifest_json: dict) -> dict:
    shards = {k: {f: v for f, v in s.items() if f != "files"} for k, s in manifest_json["shards"].items()}
    return {**manifest_json, "shards": shards}


def test_load_dataset_schema() -> None:
    ds, info = load_dataset("digits")
    assert info.name == "digits" and (info.height, info.width, info.channels) == (8, 8, 1)
    assert ds.schema().names == ["id", "label", "pixels", "subset"]
    row = ds.take(1)[0]
    assert row["id"] == "digits-0000" and row["subset"] == "" and len(row["pixels"]) == 64


def test_digits_split_is_reproducible(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    cfg = _cfg(data={"dataset": "digits"}, request={"classes": ["3"]})
    m = split_dataset(cfg, out)
    counts = {k: v.count for k, v in m.shards.items()}
    assert sum(counts.values()) == 1797
    assert all(counts[k] > 0 for k in SHARD_NAMES)
    for name in SHARD_NAMES:
        assert any((out / name).glob("*.parquet"))
        assert pq.read_table(out / name).num_rows == counts[name]
    _, labels, _ = read_shard_numpy(m, "forget")
    assert set(labels.tolist()) == {3}
    assert 3 not in set(read_shard_numpy(m, "retain")[1].tolist())
    assert m.request == {"kind": "classes", "classes": ["3"], "forget_labels": [3]}
    assert Manifest.load(out) == m

    # Same input and request: same digests, and the earlier folder is replaced without leftovers.
    # The per-file index (`files`) names what this write put on disk (Ray's file names differ per
    # write); the content digests do not.
    m2 = split_dataset(cfg, out)
    assert _without_files(m2.to_json()) == _without_files(m.to_json())
    assert all(s.files for s in m2.shards.values())
    assert _leftovers(out) == []

    # Another class: other shards and request, but the same training rows -> same original model.
    m3 = split_dataset(_cfg(data={"dataset": "digits"}, request={"classes": ["5"]}), tmp_path / "other")
    assert m3.request_digest != m.request_digest
    assert m3.shards["forget"].digest != m.shards["forget"].digest
    assert m3.data_digest == m.data_digest
    # A cap changes the training rows, hence the data digest.
    m4 = split_dataset(
        _cfg(data={"dataset": "digits", "max_train": 500}, request={"classes": ["3"]}), tmp_path / "cap"
    )
    assert m4.shards["forget"].count + m4.shards["retain"].count == 500
    assert m4.data_digest != m.data_digest


def test_parquet_split_round_trips_pixels(tmp_path: Path) -> None:
    images, labels = _digits_uint8()
    n = 600
    table = pa.table(
        {
            "id": [f"p{i:04d}" for i in range(n)],
            # Integer labels that are not 0..9: the loader must re-index them.
            "label": (labels[:n] * 10 + 5).tolist(),
            "image": [_png(images[i]) for i in range(n)],
            "subset": ["test" if i % 5 == 0 else "train" for i in range(n)],
        }
    )
    (tmp_path / "pq").mkdir()
    pq.write_table(table.slice(0, 300), tmp_path / "pq" / "a.parquet")
    pq.write_table(table.slice(300), tmp_path / "pq" / "b.parquet")
    cfg = _cfg(data={"dataset": str(tmp_path / "pq")}, request={"classes": ["75"]})
    m = split_dataset(cfg, tmp_path / "shards")
    assert m.class_names == [str(v) for v in range(5, 100, 10)]
    assert m.request["forget_labels"] == [7]
    assert m.shards["forget"].count + m.shards["retain"].count == 480
    assert m.shards["heldout_forget"].count + m.shards["heldout_retain"].count == 120
    got, got_labels, ids = read_shard_numpy(m, "forget")
    for k, i in enumerate(ids):
        row = int(i[1:])
        assert np.array_equal(got[k, :, :, 0], images[row]) and labels[row] == 7 and got_labels[k] == 7


def test_ids_request(tmp_path: Path) -> None:
    ids = [f"digits-{i:04d}" for i in range(0, 1797, 60)]
    ids_file = tmp_path / "forget.txt"
    ids_file.write_text("# ids to forget\n" + "\n".join(ids) + "\n")
    m = split_dataset(
        _cfg(data={"dataset": "digits"}, request={"kind": "ids", "ids_file": str(ids_file)}), tmp_path / "s"
    )
    assert m.shards["forget"].count == len(ids)
    assert m.shards["heldout_forget"].count == 0
    assert sum(s.count for s in m.shards.values()) == 1797
    _, _, forget_ids = read_shard_numpy(m, "forget")
    assert sorted(forget_ids) == sorted(ids)
    assert set(read_shard_numpy(m, "retain")[2]).isdisjoint(ids)
    images, labels, empty_ids = read_shard_numpy(m, "heldout_forget")
    assert images.shape == (0, 8, 8, 1) and labels.shape == (0,) and empty_ids == []
    assert shard_dataset(m, "heldout_forget").count() == 0
    # The manifest holds a digest of the ids, never the ids.
    text = (tmp_path / "s" / "manifest.json").read_text()
    assert "digits-0060" not in text and len(json.loads(text)["request"]["ids_digest"]) == 64


def _image_folder(root: Path, n: int = 40, bad: bytes | None = None) -> Path | None:
    """Digits as root/class<label>/<i>.png; with `bad`, one file the driver's sample skips holds it
    (so only the Ray Data read can find it); returns that file."""
    from lethe.data.images import sample_indices

    images, labels = _digits_uint8()
    files = []
    for i in range(n):
        d = root / f"class{labels[i]}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:03d}.png").write_bytes(_png(images[i]))
        files.append((d.name, f"{i:03d}.png"))
    if bad is None:
        return None
    files.sort()  # the loader's order: classes, then files, sorted
    picks = set(sample_indices([c for c, _ in files]))
    target = root.joinpath(*files[next(i for i in range(len(files)) if i not in picks)])
    target.write_bytes(bad)
    return target


def test_image_folder_split(tmp_path: Path) -> None:
    # 120 images: with 40, class1's 3 images all hash into training, and a class with no held-out
    # images is refused (nothing to compare the models on)
    _image_folder(tmp_path / "imgs", n=120)
    m = split_dataset(
        _cfg(data={"dataset": str(tmp_path / "imgs")}, request={"classes": ["CLASS1"]}), tmp_path / "s"
    )
    assert m.class_names == [f"class{i}" for i in range(10)] and m.request["classes"] == ["class1"]
    assert sum(s.count for s in m.shards.values()) == 120
    forget, heldout = read_shard_numpy(m, "forget")[2], read_shard_numpy(m, "heldout_forget")[2]
    assert forget and heldout and all(i.startswith("class1/") for i in forget + heldout)


@pytest.mark.parametrize(
    ("bad", "what"),
    [
        (b"\x89PNG\r\n\x1a\nnot really", "cannot decode image"),
        (_png(np.zeros((9, 8), np.uint8)), "images of mixed sizes"),
    ],
    ids=["corrupt", "odd-size"],
)
def test_bad_image_in_ray_task_is_reported_and_cleaned_up(tmp_path: Path, bad: bytes, what: str) -> None:
    # 120 files: more than the driver samples, so the bad one is met in a Ray Data task.
    target = _image_folder(tmp_path / "imgs", n=120, bad=bad)
    assert target is not None
    out = tmp_path / "s"
    with pytest.raises(DataError, match=what) as e:
        split_dataset(_cfg(data={"dataset": str(tmp_path / "imgs")}, request={"classes": ["class1"]}), out)
    assert str(target) in str(e.value) and "\n" not in str(e.value)
    assert not out.exists() and _leftovers(out) == []


def test_bad_image_in_ray_task_prints_one_line_and_logs_ray_traceback(tmp_path: Path) -> None:
    """Through the CLI: the terminal gets one line, Ray Data's traceback goes to <workdir>/logs/ray.log."""
    target = _image_folder(tmp_path / "imgs", n=120, bad=_png(np.zeros((9, 8), np.uint8)))
    work = tmp_path / "work"
    r = _split_cli(work, tmp_path / "imgs")
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("lethe: error:")]
    assert len(errors) == 1 and "images of mixed sizes" in errors[0] and str(target) in errors[0]
    for dump in ("Traceback", "RayTaskError", "streaming_executor", "Full stack trace"):
        assert dump not in r.stderr, r.stderr[-3000:]
    ray_log = (work / "logs" / "ray.log").read_text()
    assert "Traceback" in ray_log and "RayTaskError" in ray_log
    assert not (work / "shards").exists()


def _split_cli(work: Path, dataset: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    args = ["split", "--preset", "smoke", "--workdir", str(work), "--dataset", str(dataset)]
    return subprocess.run(
        [sys.executable, "-m", "lethe.cli", *args, "--forget-classes", "class1"],
        cwd=work.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Fashion-MNIST is not installed")
def test_fashion_mnist_capped_split(tmp_path: Path) -> None:
    cfg = _cfg(
        data={"dataset": "fashion-mnist", "max_train": 2000, "max_heldout": 500},
        request={"classes": ["Trouser"]},
    )
    m = split_dataset(cfg, tmp_path / "s")
    assert m.dataset == "fashion-mnist" and (m.height, m.width, m.channels) == (28, 28, 1)
    assert m.shards["forget"].count > 0 and m.shards["heldout_forget"].count > 0
    assert m.shards["forget"].count + m.shards["retain"].count == 2000
    assert m.shards["heldout_forget"].count + m.shards["heldout_retain"].count == 500
    _, _, ids = read_shard_numpy(m, "retain", limit=50)
    assert len(ids) == 50 and all(i.startswith("train-") for i in ids)
    assert all(i.startswith("test-") for i in read_shard_numpy(m, "heldout_retain", limit=50)[2])
    ds = shard_dataset(m, "forget")
    assert ds.schema().names == ["image", "label"]
    seen = 0
    for batch in ds.iter_torch_batches(batch_size=64):
        assert tuple(batch["image"].shape[1:]) == (1, 28, 28)
        assert str(batch["image"].dtype) == "torch.float32" and float(batch["image"].max()) <= 1.0
        assert set(batch["label"].tolist()) == {1}
        seen += len(batch["label"])
    assert seen == m.shards["forget"].count
