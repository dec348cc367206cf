"""Forget-request planning and the manifest without Ray: part assignment, bad requests, shard reads."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lethe.config import RunConfig, build_config
from lethe.data import SHARD_NAMES, Manifest, ShardInfo, read_shard_numpy, split_dataset
from lethe.data.loaders import Source
from lethe.data.shards import SHARD_SCHEMA
from lethe.data.split import (
    SplitPlan,
    assign_parts,
    cutoff,
    hash_unit,
    read_ids_file,
    resolve_classes,
)
from lethe.errors import DataError, StorageError


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad requests must be caught in the driver, before any Ray work starts."""

    def boom(self: Source) -> None:
        raise AssertionError("the Ray pass was reached")

    monkeypatch.setattr(Source, "to_ray", boom)


def test_hash_unit_is_sha256_over_2_pow_256() -> None:
    h = _sha("train-00042")
    assert hash_unit(h) == int.from_bytes(hashlib.sha256(b"train-00042").digest(), "big") / 2**256
    assert hash_unit("0" * 64) == 0.0 and 0.0 < hash_unit("8" + "0" * 63) == 0.5


def test_parts_follow_subsets_and_classes() -> None:
    ids = ["train-0", "train-1", "train-2", "test-0", "test-1"]
    plan = SplitPlan(has_test=True, heldout_fraction=0.5, forget_labels=frozenset({1}))
    parts = assign_parts(ids, [1, 0, 1, 1, 2], ["train", "train", "train", "test", "test"], plan)
    assert parts.tolist() == ["forget", "retain", "forget", "heldout_forget", "heldout_retain"]


def test_without_test_subset_hash_decides_heldout() -> None:
    ids = [f"x{i}" for i in range(400)]
    plan = SplitPlan(has_test=False, heldout_fraction=0.25, forget_labels=frozenset({0}))
    parts = assign_parts(ids, [i % 2 for i in range(400)], [""] * 400, plan)
    heldout = np.isin(parts, ["heldout_forget", "heldout_retain"])
    assert heldout.tolist() == [hash_unit(_sha(i)) < 0.25 for i in ids]
    assert 60 < heldout.sum() < 140
    # Subsets "train" without any "test" row: the hash still decides.
    parts2 = assign_parts(ids, [i % 2 for i in range(400)], ["train"] * 400, plan)
    assert parts2.tolist() == parts.tolist()


def test_caps_keep_the_smallest_hashes() -> None:
    ids = [f"r{i}" for i in range(50)]
    hashes = [_sha(i) for i in ids]
    plan = SplitPlan(
        has_test=True,
        heldout_fraction=0.5,
        train_cutoff=cutoff(hashes[:30], 10),
        heldout_cutoff=cutoff(hashes[30:], 5),
        forget_labels=frozenset({0}),
    )
    parts = assign_parts(ids, [0] * 50, ["train"] * 30 + ["test"] * 20, plan)
    kept_train = {ids[i] for i in range(30) if parts[i] != ""}
    assert kept_train == set(sorted(ids[:30], key=_sha)[:10])
    assert (parts[30:] != "").sum() == 5
    assert cutoff(hashes, 50) is None and cutoff(hashes, None) is None


def test_id_request_forgets_train_and_heldout_rows_and_ignores_caps() -> None:
    ids = [f"r{i}" for i in range(6)]
    subsets = ["train"] * 4 + ["test"] * 2
    hashes = [_sha(i) for i in ids]
    # Cap train at 1 row: requested rows must be forgotten even when the cap would cut them.
    plan = SplitPlan(
        has_test=True,
        heldout_fraction=0.5,
        train_cutoff=cutoff(hashes[:4], 1),
        forget_ids=frozenset({"r1", "r2", "r5"}),
    )
    parts = assign_parts(ids, [0] * 6, subsets, plan)
    assert [p for i, p in zip(ids, parts, strict=True) if i in {"r1", "r2", "r5"}] == ["forget"] * 3
    assert parts[4] == "heldout_retain" and "heldout_forget" not in parts.tolist()
    assert (parts[:4] == "retain").sum() <= 1


def test_plan_repr_hides_ids() -> None:
    plan = SplitPlan(has_test=True, heldout_fraction=0.1, forget_ids=frozenset({"alice-photo-17"}))
    assert "alice-photo-17" not in repr(plan)


def test_resolve_classes() -> None:
    names = ["T-shirt/top", "Trouser", "Bag"]
    assert resolve_classes(["Bag", "trouser"], names) == [1, 2]
    with pytest.raises(DataError, match="unknown class name") as e:
        resolve_classes(["Sock"], names)
    assert "request.classes" in str(e.value) and "one of: T-shirt/top, Trouser, Bag" in str(e.value)


def test_read_ids_file(tmp_path: Path) -> None:
    f = tmp_path / "ids.txt"
    f.write_text("# forget these\nb\n\n a \nb\n   # indented comment\n")
    assert read_ids_file(f) == ["a", "b"]


def test_read_ids_file_hash_inside_an_id_is_not_a_comment(tmp_path: Path) -> None:
    # Only a line whose first non-blank character is '#' is a comment: image-folder ids are file
    # names, and `cat/a#1.png` must be requestable.
    f = tmp_path / "ids.txt"
    f.write_text("# comment\ncat/a#1.png\n  #also a comment\nissue#42 \n")
    assert read_ids_file(f) == ["cat/a#1.png", "issue#42"]


# -- split_dataset: bad inputs are refused and leave nothing behind ---------------------------------


def _leftovers(out_dir: Path) -> list[str]:
    parent = out_dir.parent
    if not parent.is_dir():
        return []
    return sorted(
        p.name for p in parent.iterdir() if p.name == out_dir.name or p.name.startswith(f".{out_dir.name}.")
    )


def _cfg(**overrides: object) -> RunConfig:
    return build_config("smoke", overrides=overrides)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_unknown_class(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    cfg = _cfg(data={"dataset": "digits"}, request={"classes": ["3", "eleven"]})
    with pytest.raises(DataError, match="unknown class name") as e:
        split_dataset(cfg, out)
    assert "'eleven'" in str(e.value)
    assert _leftovers(out) == []


def test_empty_forget_set(tmp_path: Path) -> None:
    # Class "b" exists but only in the test subset: nothing to forget from the training data.
    img = _png(np.zeros((4, 4), np.uint8))
    pq.write_table(
        pa.table(
            {
                "id": ["1", "2", "3"],
                "label": ["a", "a", "b"],
                "image": [img] * 3,
                "subset": ["train", "train", "test"],
            }
        ),
        tmp_path / "d.parquet",
    )
    out = tmp_path / "shards"
    with pytest.raises(DataError, match="empty forget set") as e:
        split_dataset(_cfg(data={"dataset": str(tmp_path / "d.parquet")}, request={"classes": ["b"]}), out)
    assert "at request" in str(e.value)
    assert _leftovers(out) == []


def test_class_without_held_out_images_is_refused_before_any_training(tmp_path: Path) -> None:
    # Class "b" only in the training subset: no held-out images to compare the models on.
    img = _png(np.zeros((4, 4), np.uint8))
    rows = {
        "id": ["1", "2", "3", "4"],
        "label": ["a", "a", "b", "b"],
        "subset": ["train", "test", "train", "train"],
    }
    pq.write_table(pa.table({**rows, "image": [img] * 4}), tmp_path / "d.parquet")
    out = tmp_path / "shards"
    with pytest.raises(DataError, match="no held-out images of the forgotten classes") as e:
        split_dataset(_cfg(data={"dataset": str(tmp_path / "d.parquet")}, request={"classes": ["b"]}), out)
    assert "at request.classes" in str(e.value) and "0 held-out images, 2 training images" in str(e.value)
    assert _leftovers(out) == []


def test_ids_not_in_data_set_never_prints_ids(tmp_path: Path) -> None:
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("digits-0001\nsecret-person-A\nsecret-person-B\n")
    out = tmp_path / "shards"
    cfg = _cfg(data={"dataset": "digits"}, request={"kind": "ids", "ids_file": str(ids_file)})
    with pytest.raises(DataError, match="ids not in the data set") as e:
        split_dataset(cfg, out)
    msg = str(e.value)
    assert "2 unknown ids" in msg and str(ids_file) in msg
    assert "secret-person" not in msg and "digits-0001" not in msg
    assert _leftovers(out) == []


def test_ids_file_with_only_comments_is_an_empty_forget_set(tmp_path: Path) -> None:
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# nothing yet\n\n")
    out = tmp_path / "shards"
    with pytest.raises(DataError, match="empty forget set"):
        split_dataset(
            _cfg(data={"dataset": "digits"}, request={"kind": "ids", "ids_file": str(ids_file)}), out
        )
    assert _leftovers(out) == []


def test_missing_ids_file(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    cfg = _cfg(data={"dataset": "digits"}, request={"kind": "ids", "ids_file": str(tmp_path / "none.txt")})
    with pytest.raises(DataError, match="ids file not found"):
        split_dataset(cfg, out)
    assert _leftovers(out) == []


def test_forget_covering_all_training_data(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    cfg = _cfg(data={"dataset": "digits"}, request={"classes": [str(i) for i in range(10)]})
    with pytest.raises(DataError, match="forget request covers all training data"):
        split_dataset(cfg, out)
    assert _leftovers(out) == []


def test_missing_data_folder(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    with pytest.raises(DataError, match="data set folder not found") as e:
        split_dataset(_cfg(data={"dataset": str(tmp_path / "no-such-data")}), out)
    assert str(tmp_path / "no-such-data") in str(e.value)
    assert _leftovers(out) == []


def test_unwritable_out_dir(tmp_path: Path) -> None:
    # A path under a regular file cannot be created, even by root (chmod would not stop root).
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    out = blocker / "shards"
    with pytest.raises(StorageError, match="cannot create the shards folder") as e:
        split_dataset(_cfg(data={"dataset": "digits"}, request={"classes": ["3"]}), out)
    assert str(out) in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_failed_split_keeps_an_earlier_good_one(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    with pytest.raises(DataError):
        split_dataset(_cfg(data={"dataset": "digits"}, request={"classes": ["nope"]}), out)
    assert _leftovers(out) == ["shards"] and (out / "manifest.json").read_text() == "{}"


# -- manifest and driver-side shard reads --------------------------------------------------------


def _manifest_with_shards(root: Path, rows: dict[str, int]) -> Manifest:
    rng = np.random.default_rng(0)
    shards = {}
    for name in SHARD_NAMES:
        n = rows.get(name, 0)
        folder = root / name
        folder.mkdir(parents=True)
        ids = [f"{name}-{i}" for i in range(n)]
        pixels = [rng.integers(0, 256, 2 * 3 * 1, dtype=np.uint8).tobytes() for _ in range(n)]
        table = pa.table(
            {"id": ids, "label": pa.array(range(n), pa.int64()), "pixels": pixels}, schema=SHARD_SCHEMA
        )
        # Two files, so ordering cannot come from file layout.
        pq.write_table(table.slice(0, n // 2), folder / "a.parquet")
        pq.write_table(table.slice(n // 2), folder / "b.parquet")
        shards[name] = ShardInfo(name, str(folder), n, "d")
    m = Manifest(
        "toy",
        "/toy",
        ["0"],
        2,
        3,
        1,
        {"kind": "classes", "classes": ["0"], "forget_labels": [0]},
        shards,
        "r",
        "t",
    )
    m.save(root)
    return m


def test_manifest_round_trip_and_relocation(tmp_path: Path) -> None:
    m = _manifest_with_shards(tmp_path / "a", {"forget": 3, "retain": 4})
    assert Manifest.from_json(m.to_json()) == m
    (tmp_path / "a").rename(tmp_path / "b")
    loaded = Manifest.load(tmp_path / "b")
    assert loaded.shards["retain"].path == str(tmp_path / "b" / "retain")
    assert loaded.shards["retain"].count == 4 and loaded.request == m.request
    assert read_shard_numpy(loaded, "retain")[0].shape == (4, 2, 3, 1)


def test_manifest_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no shards found; run `lethe split` first"):
        Manifest.load(tmp_path)


def test_read_shard_numpy_orders_by_id_hash_and_limits(tmp_path: Path) -> None:
    m = _manifest_with_shards(tmp_path, {"retain": 9})
    images, labels, ids = read_shard_numpy(m, "retain")
    assert images.shape == (9, 2, 3, 1) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert ids == sorted(ids, key=_sha)
    assert labels.tolist() == [int(i.split("-")[1]) for i in ids]
    table = pq.read_table(tmp_path / "retain")
    by_id = dict(zip(table.column("id").to_pylist(), table.column("pixels").to_pylist(), strict=True))
    assert all(images[k].tobytes() == by_id[i] for k, i in enumerate(ids))
    sub_images, _, sub_ids = read_shard_numpy(m, "retain", limit=4)
    assert sub_ids == ids[:4] and np.array_equal(sub_images, images[:4])


def test_read_empty_shard(tmp_path: Path) -> None:
    m = _manifest_with_shards(tmp_path, {"retain": 2})
    images, labels, ids = read_shard_numpy(m, "heldout_forget")
    assert images.shape == (0, 2, 3, 1) and images.dtype == np.uint8
    assert labels.shape == (0,) and labels.dtype == np.int64 and ids == []


def _unlearn_job(method: str = "encoder_noise", **kw):
    from lethe.execution.job import TrainJob

    base = dict(kind="unlearn", model_kind="mae", arch={}, batch_size=2, lr=1e-3, weight_decay=0.0)
    return TrainJob(**{**base, "warmup_frac": 0.1, "n_rows": 5, "method": method, "passes": 1.0, **kw})


def test_unlearn_inputs_hold_the_forget_shard_and_the_retain_rows_the_steps_draw(tmp_path: Path) -> None:
    from lethe.execution.fit import unlearn_inputs
    from lethe.execution.job import stage_budgets

    m = _manifest_with_shards(tmp_path, {"forget": 5, "retain": 40})
    forget, _, _ = read_shard_numpy(m, "forget")
    retain, _, _ = read_shard_numpy(m, "retain")
    job = _unlearn_job()
    # one pass over 5 forget rows at 2 rows x 1 worker per step: 3 steps, 6 retain rows drawn
    assert stage_budgets(job.to_config(), 1) == {"main": 3}
    got = unlearn_inputs(m, job, 1)
    assert np.array_equal(got["forget"], forget) and np.array_equal(got["retain"], retain[:6])
    # two workers: 2 steps, each worker draws 2 x 2 retain rows from its rank::2 share
    assert np.array_equal(unlearn_inputs(m, job, 2)["retain"], retain[:8])
    # a multi-stage method reads for every stage's budget (ascent + the switch step, retention)
    dec = _unlearn_job("decouple_retain", method_options={"max_ascent_steps": 4, "retain_steps": 7})
    assert stage_budgets(dec.to_config(), 1) == {"decouple": 5, "retain": 7}
    assert len(unlearn_inputs(m, dec, 1)["retain"]) == 24


def test_unlearn_inputs_need_a_row_per_worker(tmp_path: Path) -> None:
    from lethe.errors import LetheError
    from lethe.execution.fit import unlearn_inputs

    m = _manifest_with_shards(tmp_path, {"forget": 2, "retain": 40})
    with pytest.raises(LetheError, match=r"forget shard has fewer rows than Ray Train workers.*at least 3"):
        unlearn_inputs(m, _unlearn_job(n_rows=2), 3)


def test_unlearning_loop_refuses_inputs_that_are_not_arrays() -> None:
    from lethe.execution.worker import local_rows

    # fit() puts numpy inputs under config["arrays"]; a Ray Dataset leaves nothing there
    with pytest.raises(TypeError, match=r"unlearning input 'forget': expected a numpy array"):
        local_rows({"arrays": {}}, "forget", 0, 1, "cpu")
    with pytest.raises(TypeError, match="unlearn_inputs"):
        local_rows({}, "retain", 0, 1, "cpu")
