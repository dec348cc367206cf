"""Feature requests (DESIGN.md 2.3): the avataaars attribute data set and resolving a feature name."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lethe.cli import overrides_from_args, parser
from lethe.config import build_config
from lethe.data import avataaars
from lethe.data.loaders import open_source
from lethe.data.split import feature_classes, feature_labels, plan_split
from lethe.errors import ConfigError, DataError

NAMES = sorted(avataaars.CLASS_NAMES)  # the Parquet loader orders string labels


def test_a_face_is_a_function_of_its_index() -> None:
    a, b, c = avataaars.render_face(7), avataaars.render_face(7), avataaars.render_face(8)
    assert a == b and a[2] != c[2]
    img = np.asarray(Image.open(io.BytesIO(a[2])))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert a[1] in avataaars.CLASS_NAMES and a[0] == "face-000007"


def test_glasses_are_visible_in_the_small_face() -> None:
    """Same face stream, with and without eyewear: the eye region must differ at 32x32."""
    faces = [avataaars.render_face(i) for i in range(40)]
    counts = Counter(label for _, label, _ in faces)
    # about half the faces wear nothing, the rest some eyewear
    assert 10 <= counts["none"] <= 30 and sum(v for k, v in counts.items() if k != "none") >= 10

    def eyes(png: bytes) -> float:
        arr = np.asarray(Image.open(io.BytesIO(png)), dtype=np.float32) / 255
        return float(arr[10:18, 6:26].mean())  # the band the glasses sit in

    plain = np.mean([eyes(p) for _, lab, p in faces if lab == "none"])
    sunglasses = [eyes(p) for _, lab, p in faces if lab in ("sunglasses", "wayfarers")]
    assert sunglasses and np.mean(sunglasses) < plain  # dark lenses darken the eye band


def test_rendered_once_cached_as_parquet(tmp_path: Path) -> None:
    path = avataaars.ensure_rendered("avataaars:24", root=tmp_path, workers=1)
    table = pq.read_table(path)
    assert table.column_names == ["id", "label", "image", "subset"] and table.num_rows == 24
    assert set(table.column("subset").to_pylist()) <= {"train", "test"}
    mtime = path.stat().st_mtime_ns
    assert avataaars.ensure_rendered("avataaars:24", root=tmp_path) == path
    assert path.stat().st_mtime_ns == mtime  # not rendered again
    assert list(path.parent.glob("*.tmp-*")) == []


@pytest.mark.parametrize("spec", ["avataaars:5", "avataaars:x", "avataaars24"])
def test_bad_avataaars_spec(spec: str) -> None:
    if avataaars.is_spec(spec):
        with pytest.raises(DataError, match="too few faces"):
            avataaars.parse_count(spec)
    else:
        with pytest.raises(DataError, match="not an avataaars"):
            avataaars.parse_count(spec)


def test_feature_resolution() -> None:
    glasses = feature_classes(NAMES, "avataaars", "glasses")
    assert sorted(glasses) == sorted(avataaars.CLASS_NAMES[1:])
    assert feature_classes(NAMES, "avataaars", "Glasses") == glasses
    assert feature_labels(NAMES, "avataaars", "glasses") == [NAMES.index(n) for n in glasses]
    # class-as-feature: any class name, on any data set
    assert feature_labels(["T-shirt/top", "Trouser"], "fashion-mnist", "Trouser") == [1]
    assert feature_classes(NAMES, "avataaars", "sunglasses") == ["sunglasses"]


def test_bad_feature_name_says_what_exists() -> None:
    with pytest.raises(DataError) as e:
        feature_classes(NAMES, "avataaars", "hat")
    msg = str(e.value)
    assert "unknown feature" in msg and "request.feature" in msg and "'hat'" in msg and "glasses" in msg
    with pytest.raises(DataError, match="request.feature"):
        feature_classes(["T-shirt/top", "Trouser"], "fashion-mnist", "glasses")


def test_feature_request_needs_a_name() -> None:
    with pytest.raises(ConfigError, match="request.feature"):
        build_config("smoke", overrides={"request": {"kind": "feature"}})


def test_cli_forget_feature_and_exclusive_flags() -> None:
    p = parser()
    a = p.parse_args(["run", "--forget-feature", " glasses ", "--dataset", "avataaars:60"])
    cfg = build_config("smoke", overrides=overrides_from_args(a))
    assert cfg.request.kind == "feature" and cfg.request.feature == "glasses"
    with pytest.raises(SystemExit):
        p.parse_args(["run", "--forget-feature", "glasses", "--forget-classes", "Trouser"])


def test_feature_split_plan_forgets_every_eyewear_face(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LETHE_DATA_CACHE", str(tmp_path))
    cfg = build_config(
        "smoke",
        overrides={"data": {"dataset": "avataaars:40"}, "request": {"kind": "feature", "feature": "glasses"}},
    )
    src = open_source(cfg.data.dataset)
    assert src.info.name == "avataaars" and src.info.shape == (32, 32, 3)
    _plan, request, parts = plan_split(cfg, src.info, src.meta)
    assert request["kind"] == "feature" and request["feature"] == "glasses"
    labels = [src.info.class_names[i] for i in src.meta.column("label").to_numpy()]
    for part, label in zip(parts.tolist(), labels, strict=True):
        if part in ("forget", "heldout_forget"):
            assert label != "none"
        elif part in ("retain", "heldout_retain"):
            assert label == "none"
