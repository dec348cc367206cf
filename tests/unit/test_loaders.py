"""Data set readers without Ray: IDX parsing, image folders, Parquet, decoding checks, digests."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lethe.data import resolve_dataset, shard_digest, to_chw_float
from lethe.data.loaders import (
    FASHION_MNIST_CLASSES,
    SCHEMA,
    _array_tables,
    decode_file_batch,
    decode_image,
    decode_parquet_batch,
    encode_labels,
    open_source,
    read_idx,
)
from lethe.data.split import SplitPlan, assign_parts, read_ids_file
from lethe.errors import DataError


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(np.uint8).tobytes()


def _write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = _idx_bytes(arr)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def idx_dir(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    tr_x = rng.integers(0, 256, (7, 4, 5), dtype=np.uint8)
    tr_y = np.array([0, 1, 2, 0, 1, 2, 0], dtype=np.uint8)
    te_x = rng.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    te_y = np.array([2, 1, 0], dtype=np.uint8)
    folder = tmp_path / "idx"
    _write_idx(folder, "train", tr_x, tr_y, gz=True)  # gz and plain files mix in one folder
    _write_idx(folder, "t10k", te_x, te_y, gz=False)
    return folder, tr_x, tr_y, te_x, te_y


def test_idx_folder_ids_labels_subsets_and_pixels(idx_dir) -> None:
    folder, tr_x, tr_y, te_x, te_y = idx_dir
    src = open_source(str(folder))
    assert (src.info.height, src.info.width, src.info.channels) == (4, 5, 1)
    assert src.info.class_names == ["0", "1", "2"]
    assert src.info.source_uri == str(folder.resolve())
    ids = src.meta.column("id").to_pylist()
    assert ids[:2] == ["train-00000", "train-00001"] and ids[-1] == "test-00002"
    assert src.meta.column("subset").to_pylist() == ["train"] * 7 + ["test"] * 3
    assert src.meta.column("label").to_pylist() == [*tr_y.tolist(), *te_y.tolist()]
    (table,) = _array_tables(src.meta, src.state["images"])
    assert table.schema == SCHEMA
    assert table.column("pixels")[8].as_py() == te_x[1].tobytes()


def test_idx_folder_named_fashion_gets_fashion_class_names(tmp_path: Path) -> None:
    folder = tmp_path / "my-fashion-mnist"
    _write_idx(folder, "train", np.zeros((2, 3, 3), np.uint8), np.array([0, 9], np.uint8), gz=False)
    src = open_source(str(folder))
    assert src.info.class_names == FASHION_MNIST_CLASSES
    # No test subset: every row is "train" and the split falls back to the id hash.
    assert set(src.meta.column("subset").to_pylist()) == {"train"}


def test_idx_bad_magic_and_truncated_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad-magic"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="bad IDX magic number") as e:
        read_idx(bad)
    assert str(bad) in str(e.value)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(_idx_bytes(np.zeros((4, 3, 3), np.uint8))[:-5]))
    with pytest.raises(DataError, match="truncated IDX file"):
        read_idx(short)
    not_gzip = tmp_path / "x.gz"
    not_gzip.write_bytes(b"plain bytes")
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(not_gzip)


def test_idx_label_count_mismatch(tmp_path: Path) -> None:
    _write_idx(tmp_path / "d", "train", np.zeros((3, 2, 2), np.uint8), np.zeros(2, np.uint8), gz=False)
    with pytest.raises(DataError, match="counts differ"):
        open_source(str(tmp_path / "d"))


def test_resolve_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_dataset("digits") == "digits"
    monkeypatch.setenv("LETHE_FASHION_MNIST_DIR", str(tmp_path))
    assert resolve_dataset("fashion-mnist") == str(tmp_path.resolve())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel").mkdir()
    assert resolve_dataset("rel") == str(tmp_path / "rel")
    with pytest.raises(DataError, match="data set folder not found") as e:
        resolve_dataset(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(e.value) and "IDX folder" in str(e.value)


def test_empty_folder_is_not_a_data_set(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no data set found"):
        open_source(str(tmp_path))


def _image_folder(root: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {}
    for cls in ("dog", "cat"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 256, (6, 5), dtype=np.uint8)
            (root / cls / f"{i}.png").write_bytes(_png(arr))
            arrays[f"{cls}/{i}.png"] = arr
    (root / "cat" / "notes.txt").write_text("not an image")
    return arrays


def test_image_folder_listing_and_decoding(tmp_path: Path) -> None:
    arrays = _image_folder(tmp_path / "imgs")
    src = open_source(str(tmp_path / "imgs"))
    assert src.info.class_names == ["cat", "dog"]
    assert (src.info.height, src.info.width, src.info.channels) == (6, 5, 1)
    ids = src.meta.column("id").to_pylist()
    assert ids == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
    assert src.meta.column("label").to_pylist() == [0, 0, 1, 1]
    batch = src.meta.append_column("path", pa.array(src.state["paths"]))
    out = decode_file_batch(batch, shape=src.info.shape)
    assert out.schema == SCHEMA
    for i, pixels in zip(ids, out.column("pixels").to_pylist(), strict=True):
        assert pixels == arrays[i].tobytes()


def test_decode_image_modes() -> None:
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0] = 200
    assert decode_image(_png(rgba), "x").shape == (3, 4, 3)
    pal = Image.fromarray(np.zeros((3, 4), np.uint8)).convert("P")
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    assert decode_image(buf.getvalue(), "x").shape == (3, 4, 3)
    assert decode_image(_png(np.zeros((3, 4), np.uint8)), "x").shape == (3, 4, 1)


def _png_of(img: Image.Image, **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **save)
    return buf.getvalue()


def test_transparent_pixels_are_composited_on_white() -> None:
    # Fully transparent pixels store black (0,0,0,0): `.convert("RGB")` alone would show them black.
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: kept as is
    rgba[0, 1] = (0, 0, 0, 128)  # half transparent black: mid grey
    out = decode_image(_png(rgba), "x")
    assert out.shape == (2, 3, 3)
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [127, 127, 127]  # round(255 * 127 / 255)
    assert (out[1] == 255).all() and (out[0, 2] == 255).all()
    # Grey with alpha stays one grey channel, composited the same way.
    la = np.zeros((2, 2, 2), np.uint8)
    la[0, 0] = (40, 255)
    out = decode_image(_png_of(Image.fromarray(la)), "x")
    assert out.shape == (2, 2, 1) and out[..., 0].tolist() == [[40, 255], [255, 255]]
    # Palette and grey images with a tRNS colour key: the keyed colour is transparent.
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8)).convert("P")
    pal.putpalette([0, 0, 0, 200, 0, 0])
    out = decode_image(_png_of(pal, transparency=0), "x")
    assert out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [200, 0, 0]
    grey = np.array([[0, 90]], np.uint8)
    out = decode_image(_png_of(Image.fromarray(grey), transparency=0), "x")
    assert out[..., 0].tolist() == [[255, 90]]


def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    wide = np.linspace(0, 65535, 48).round().astype(np.uint16).reshape(6, 8)
    data = _png_of(Image.fromarray(wide))
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    expected = np.round(wide.astype(np.float64) * 255 / 65535).astype(np.uint8)
    out = decode_image(data, "x")
    assert out.shape == (6, 8, 1) and out.dtype == np.uint8
    flat = out.ravel()
    assert (np.diff(flat.astype(int)) >= 0).all()  # monotone
    assert flat[0] == 0 and flat[-1] == 255 and len(np.unique(flat)) == 48  # spans 0..255, no clipping
    assert (out[..., 0] == expected).all()
    # Image folders and Parquet PNG bytes share the decoding.
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "w.png").write_bytes(data)
    src = open_source(str(tmp_path))
    assert src.info.shape == (6, 8, 1)
    batch = src.meta.append_column("path", pa.array(src.state["paths"]))
    assert decode_file_batch(batch, shape=(6, 8, 1)).column("pixels")[0].as_py() == expected.tobytes()
    table = pa.table({"id": ["r0"], "label": [0], "image": [data]})
    out = decode_parquet_batch(table, shape=(6, 8, 1), label_values=[0], where="d")
    assert out.column("pixels")[0].as_py() == expected.tobytes()


def test_id_with_hash_is_requestable_through_the_ids_file(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    for f in (root / "cat" / "a#1.png", root / "cat" / "b.png", root / "dog" / "c.png"):
        f.write_bytes(_png(np.zeros((3, 3), np.uint8)))
    src = open_source(str(root))
    ids = src.meta.column("id").to_pylist()
    assert "cat/a#1.png" in ids
    ids_file = tmp_path / "forget.txt"
    ids_file.write_text("# deletion requests\ncat/a#1.png\n")
    wanted = read_ids_file(ids_file)
    assert wanted == ["cat/a#1.png"]
    plan = SplitPlan(has_test=False, heldout_fraction=0.0, forget_ids=frozenset(wanted))
    parts = assign_parts(ids, src.meta.column("label").to_numpy(), [""] * len(ids), plan)
    assert [i for i, part in zip(ids, parts, strict=True) if part == "forget"] == ["cat/a#1.png"]


def _file_batch(paths: list[Path]) -> pa.Table:
    return pa.table(
        {
            "id": [p.name for p in paths],
            "label": pa.array([0] * len(paths), pa.int64()),
            "subset": [""] * len(paths),
            "path": [str(p) for p in paths],
        }
    )


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    good, bad = tmp_path / "a.png", tmp_path / "b.png"
    good.write_bytes(_png(np.zeros((4, 4), np.uint8)))
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="cannot decode image") as e:
        decode_file_batch(_file_batch([good, bad]), shape=(4, 4, 1))
    assert str(bad) in str(e.value) and "PNG or JPEG" in str(e.value)


def test_corrupt_first_image_fails_when_opening(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "0.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="cannot decode image"):
        open_source(str(tmp_path))


def test_mixed_sizes_and_channels(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    a.write_bytes(_png(np.zeros((4, 4), np.uint8)))
    b.write_bytes(_png(np.zeros((5, 4), np.uint8)))
    c.write_bytes(_png(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(DataError, match="images of mixed sizes") as e:
        decode_file_batch(_file_batch([a, b]), shape=(4, 4, 1))
    assert str(b) in str(e.value) and "4x4x1" in str(e.value) and "got 5x4x1" in str(e.value)
    with pytest.raises(DataError, match="mixed channel counts") as e:
        decode_file_batch(_file_batch([a, c]), shape=(4, 4, 1))
    assert "got 4x4x3" in str(e.value)


def test_images_larger_than_64_rejected(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "big.png").write_bytes(_png(np.zeros((65, 10), np.uint8)))
    with pytest.raises(DataError, match="too large") as e:
        open_source(str(tmp_path))
    assert "65x10" in str(e.value)


def _parquet(path: Path, labels: list, images: list[np.ndarray], **extra: list) -> None:
    cols = {"id": [f"r{i}" for i in range(len(labels))], "label": labels, "image": [_png(a) for a in images]}
    pq.write_table(pa.table({**cols, **extra}), path)


def test_parquet_string_labels_and_subset(tmp_path: Path) -> None:
    imgs = [np.full((3, 3, 3), i, np.uint8) for i in range(3)]
    _parquet(tmp_path / "d.parquet", ["zebra", "ant", "zebra"], imgs, subset=["train", None, "test"])
    src = open_source(str(tmp_path / "d.parquet"))
    assert src.info.class_names == ["ant", "zebra"]
    assert src.info.shape == (3, 3, 3)
    assert src.meta.column("label").to_pylist() == [1, 0, 1]
    assert src.meta.column("subset").to_pylist() == ["train", "", "test"]
    batch = pq.read_table(tmp_path / "d.parquet")
    out = decode_parquet_batch(batch, shape=(3, 3, 3), label_values=["ant", "zebra"], where="d")
    assert out.column("label").to_pylist() == [1, 0, 1]
    assert out.column("pixels")[2].as_py() == imgs[2].tobytes()


def test_parquet_int_labels_are_reindexed() -> None:
    values, idx = encode_labels(pa.chunked_array([[7, 3], [9, 3]]), "x")
    assert values == [3, 7, 9] and idx.tolist() == [1, 0, 2, 0]


def test_parquet_missing_column_is_named(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": ["a"], "image": [b"x"]}), tmp_path / "d.parquet")
    with pytest.raises(DataError, match="no column 'label'") as e:
        open_source(str(tmp_path / "d.parquet"))
    assert "columns id, image" in str(e.value)


def test_parquet_duplicate_ids_reported_without_ids(tmp_path: Path) -> None:
    img = _png(np.zeros((2, 2), np.uint8))
    pq.write_table(
        pa.table({"id": ["secret-7", "secret-7"], "label": [0, 1], "image": [img, img]}),
        tmp_path / "d.parquet",
    )
    with pytest.raises(DataError, match="duplicate ids") as e:
        open_source(str(tmp_path / "d.parquet"))
    assert "secret-7" not in str(e.value)


def test_to_chw_float() -> None:
    x = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    y = to_chw_float(x)
    assert y.shape == (2, 3, 3, 4) and y.dtype == np.float32
    assert y[1, 2, 0, 3] == pytest.approx(x[1, 0, 3, 2] / 255.0)
    assert to_chw_float(np.full((1, 2, 2, 1), 255, np.uint8)).max() == 1.0


def test_shard_digest_is_order_free_and_content_sensitive() -> None:
    def digest(ids: list[str], labels: list[int], ph: list[str]) -> str:
        return shard_digest(ids, labels, ph, key=b"test-key")  # keyed: lethe.digests

    ids, labels, ph = ["b", "a", "c"], [1, 0, 2], ["h1", "h0", "h2"]
    d = digest(ids, labels, ph)
    assert d == digest(["c", "a", "b"], [2, 0, 1], ["h2", "h0", "h1"])
    assert d != digest(ids, [1, 0, 3], ph)
    assert d != digest(ids, labels, ["h1", "h0", "hX"])
    assert d != digest(["b", "a", "d"], labels, ph)
    assert d != digest(ids[:2], labels[:2], ph[:2])
    # Length-prefixed rows: moving a character between id and hash cannot give the same digest.
    assert digest(["ab"], [0], ["c"]) != digest(["a"], [0], ["bc"])


def test_sample_covers_every_class_and_spreads_over_the_rest() -> None:
    from lethe.data.images import sample_indices

    labels = [0] * 100 + [1] * 3 + [2] * 200
    picks = sample_indices(labels, limit=10)
    assert picks[0] == 0 and picks == sorted(set(picks))
    assert {0, 100, 103} <= set(picks)  # each class's first file
    assert picks[-1] == len(labels) - 1 and len(picks) <= 10 + 3
    assert sample_indices([1, 1, 1], limit=64) == [0, 1, 2]
    assert sample_indices([]) == []


def test_mixed_size_in_the_sample_is_refused_before_ray(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray
    import ray.data

    # Whatever an earlier test left running, nothing here may hand data to Ray.
    def no_ray(*_a: object, **_k: object) -> None:
        raise AssertionError("Ray was reached before the sample check")

    for name in ("from_arrow", "read_parquet", "read_images"):
        monkeypatch.setattr(ray.data, name, no_ray)
    monkeypatch.setattr(ray, "init", no_ray)
    for cls in ("a", "b", "c"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            (tmp_path / cls / f"{i}.png").write_bytes(_png(np.zeros((4, 4), np.uint8)))
    # Class c's first file is always in the sample.
    (tmp_path / "c" / "0.png").write_bytes(_png(np.zeros((4, 6), np.uint8)))
    with pytest.raises(DataError, match="images of mixed sizes") as e:
        open_source(str(tmp_path))
    assert str(tmp_path / "c" / "0.png") in str(e.value) and "got 4x6x1" in str(e.value)
    (tmp_path / "c" / "0.png").write_bytes(_png(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(DataError, match="mixed channel counts"):
        open_source(str(tmp_path))


def test_s3_keys_group_into_classes_like_a_local_folder() -> None:
    from lethe.data.loaders import _s3_classes

    root = "s3://b/imgs"
    keys = [
        f"{root}/dog/2.PNG",
        f"{root}/dog/1.jpg",
        f"{root}/cat/0.png",
        f"{root}/cat/notes.txt",  # not an image
        f"{root}/cat/deep/3.png",  # nested deeper: not a class file
        f"{root}/.hidden/4.png",  # hidden folders are never classes
        f"{root}/top.png",  # no class
    ]
    assert _s3_classes(keys, root) == [
        ("cat", [f"{root}/cat/0.png"]),
        ("dog", [f"{root}/dog/1.jpg", f"{root}/dog/2.PNG"]),
    ]
