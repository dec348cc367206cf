"""Registry promotion against real MLflow stores (SQLite, and `mlflow server`): all or nothing."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lethe import masks
from lethe.models import build_model, get_family
from lethe.models.mae import MAE
from lethe.pipeline.promote import register_and_promote
from lethe.tracking import Tracker, TrackingError

_n = itertools.count()


def _unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_n)}"


pytestmark = pytest.mark.usefixtures("restore_mlflow_globals")


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('promotion') / 'mlflow.db'}"


def _tiny_mae(seed: int = 0) -> MAE:
    torch.manual_seed(seed)
    section = {"dim": 16, "depth": 1, "heads": 2, "dec_dim": 8, "dec_depth": 1, "dec_heads": 2}
    return build_model("mae", get_family("mae").build_arch(section, 16, 16, 1))


def _register(
    tracker: Tracker, name: str, promote: bool, after=None, model: MAE | None = None
) -> tuple[str, bool, str | None]:
    model = model if model is not None else _tiny_mae()
    example = (torch.rand(4, 1, 16, 16), masks.box_mask(16, 16, 0.4, model.mask_cell))
    with tracker.step("promote"):
        return register_and_promote(
            tracker, model, name, example, {"lethe.method": "x"}, "d", "champion", promote, after
        )


def _scenario(tracker: Tracker) -> None:
    name = _unique("lethe-promo")
    assert _register(tracker, name, promote=True) == ("1", True, None)
    assert tracker.alias_version(name, "champion") == "1"

    # a failing gate: new version, alias untouched
    assert _register(tracker, name, promote=False) == ("2", False, "1")
    assert tracker.alias_version(name, "champion") == "1"

    # a failure after the version exists and the alias moved: both undone
    def boom(version: str, moved: bool, previous: str | None) -> None:
        assert (version, moved, previous) == ("3", True, "1")
        assert tracker.alias_version(name, "champion") == "3"
        raise RuntimeError("disk full while writing report.json")

    with pytest.raises(RuntimeError, match="disk full"):
        _register(tracker, name, promote=True, after=boom)
    assert tracker.alias_version(name, "champion") == "1"
    assert sorted(v.version for v in tracker.find_versions(name)) in (["1", "2"], [1, 2])

    # the same on a registered model that had no alias yet: the alias is removed again
    other = _unique("lethe-fresh")
    with pytest.raises(RuntimeError):
        _register(tracker, other, promote=True, after=lambda *_: (_ for _ in ()).throw(RuntimeError("x")))
    assert tracker.alias_version(other, "champion") is None
    assert tracker.find_versions(other) == []


def test_promotion_is_all_or_nothing_on_sqlite(sqlite_uri: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _scenario(Tracker(sqlite_uri, _unique("exp")))


@pytest.mark.slow
def test_promotion_is_all_or_nothing_on_a_server(mlflow_server: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _scenario(Tracker(mlflow_server, _unique("exp")))
    assert not (tmp_path / "mlruns").exists()


def test_source_model_resolution(sqlite_uri: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    tracker = Tracker(sqlite_uri, _unique("exp"))
    name = _unique("lethe-src")
    source = _tiny_mae(seed=3)
    _register(tracker, name, promote=True, model=source)
    by_alias = tracker.resolve_model_version(f"models:/{name}@champion")
    assert (by_alias.name, str(by_alias.version)) == (name, "1")
    assert str(tracker.resolve_model_version(f"models:/{name}/1").version) == "1"
    model = tracker.load_registered_model(name, "1")
    assert isinstance(model, MAE) and model.arch == source.arch
    # A process that never set a tracking URI (a serving team's script) loads it by alias and leaves
    # nothing in its working directory (MLflow's models:/ download created ./mlflow.db there).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "from lethe.tracking.model_format import load_lethe_model as m; "
        f"m('models:/{name}@champion', '{sqlite_uri}'); m('models:/{name}/1', '{sqlite_uri}')"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(elsewhere.iterdir()) == []
    for key, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key
    for bad in (f"models:/{name}@nope", f"models:/{name}/9", "models:/never-registered/1"):
        with pytest.raises(TrackingError, match="unknown source model") as e:
            tracker.resolve_model_version(bad)
        assert bad in e.value.line()
