"""The pieces the pipeline's steps share (lethe/pipeline/): run state, job builder, keys, family kinds."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from lethe.config import build_config
from lethe.pipeline.families import for_config
from lethe.pipeline.generator import Generator
from lethe.pipeline.i2i import ImageToImage, i2i_unlearn_job
from lethe.pipeline.jobs import featnet_job, mask_spec, pretrain_job
from lethe.pipeline.keys import oracle_key, original_key, tune_key
from lethe.pipeline.layout import Layout
from lethe.pipeline.state import RunState, load_state, save_state


def _manifest(retain_digest: str = "r" * 64) -> SimpleNamespace:
    shard = SimpleNamespace
    return SimpleNamespace(
        height=28,
        width=28,
        channels=1,
        class_names=[str(i) for i in range(10)],
        data_digest="d" * 64,
        request_digest="q" * 64,
        shards={"forget": shard(count=12, digest="f" * 64), "retain": shard(count=100, digest=retain_digest)},
    )


def test_run_state_round_trips_through_state_json(tmp_path: Path) -> None:
    lay = Layout(tmp_path, tmp_path / "cache")
    st = RunState.fresh("models:/m@champion")
    st.run_id = "abc"
    st.record_step("split", 1.23456, st.started_at)
    st.pretrain = {"original": {"cache_key": "k", "phases": "main"}, "source": {}}
    save_state(lay, st)
    doc = json.loads(lay.state.read_text())
    # Sections no step filled are left out; what the steps wrote keeps its old keys.
    assert "promote" not in doc and "failed" not in doc
    assert doc["timing_s"] == {"split": 1.235} and doc["pretrain"]["original"]["phases"] == "main"
    back = load_state(lay)
    assert back == st
    # An older or newer state.json with keys this version does not know still loads.
    lay.state.write_text(json.dumps({**doc, "from_the_future": 1}))
    assert load_state(lay).run_id == "abc"


def test_missing_state_is_an_empty_run(tmp_path: Path) -> None:
    st = load_state(Layout(tmp_path, tmp_path / "cache"))
    assert st.run_id is None and st.timing_s == {} and not st.failed


def test_each_family_kind_gets_its_step_interface() -> None:
    assert isinstance(for_config(build_config("smoke")), ImageToImage)
    gan = build_config(
        "smoke",
        None,
        {"family": "gan", "method": "latent_feature", "request": {"kind": "feature", "feature": "Trouser"}},
    )
    assert isinstance(for_config(gan), Generator)
    assert ImageToImage.tunable and not Generator.tunable


def test_jobs_take_each_kinds_recipe_from_its_config_section() -> None:
    cfg = build_config("smoke", None, {"pretrain": {"lr": 3e-3}, "unlearn": {"lr": 7e-4, "alpha": 0.3}})
    man = _manifest()
    fam = for_config(cfg)
    arch = fam.arch(cfg, man)
    pre = pretrain_job(cfg, "pretrain", arch, 112, {"role": "original"}, mask=mask_spec(cfg, arch))
    assert (pre.lr, pre.epochs, pre.n_rows, pre.seed) == (3e-3, cfg.pretrain.epochs, 112, cfg.seed)
    assert pre.mask["box_frac"] == cfg.eval.box_frac and pre.mask["height"] == 28
    un = i2i_unlearn_job(cfg, man, arch, cfg.unlearn, {"role": "unlearned"})
    assert (un.kind, un.lr, un.alpha, un.n_rows, un.method) == ("unlearn", 7e-4, 0.3, 12, cfg.method)
    assert un.passes == cfg.unlearn.forget_passes and un.fail_at_step is None
    feat = featnet_job(cfg, man, 112, {}, classes=10, width=8, epochs=1)
    assert (feat.model_kind, feat.lr, feat.weight_decay, feat.arch["num_classes"]) == (
        "featnet",
        cfg.featnet.lr,
        0.0,
        10,
    )


def test_fault_step_must_be_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    from lethe.errors import ConfigError
    from lethe.execution.job import FAULT_ENV

    cfg = build_config("smoke")
    man = _manifest()
    arch = for_config(cfg).arch(cfg, man)
    monkeypatch.setenv(FAULT_ENV, "7")
    assert i2i_unlearn_job(cfg, man, arch, cfg.unlearn, {}).fail_at_step == 7
    monkeypatch.setenv(FAULT_ENV, "soon")
    with pytest.raises(ConfigError, match="invalid fault-injection step"):
        i2i_unlearn_job(cfg, man, arch, cfg.unlearn, {})


def test_cache_keys_follow_the_data_and_the_recipe() -> None:
    cfg = build_config("smoke")
    man = _manifest()
    assert original_key(cfg, man) == original_key(build_config("smoke"), _manifest())
    # The oracle is keyed on the retain shard: another request's retain set is another oracle.
    assert oracle_key(cfg, man) != oracle_key(cfg, _manifest(retain_digest="s" * 64))
    longer = build_config("smoke", None, {"pretrain": {"epochs": cfg.pretrain.epochs + 1}})
    assert original_key(longer, man) != original_key(cfg, man)
    # The tuned alpha / lr are outputs of the search, not part of its key.
    assert tune_key(cfg, man, ["a"]) == tune_key(
        build_config("smoke", None, {"unlearn": {"alpha": 0.9}}), man, ["a"]
    )
    assert tune_key(cfg, man, ["a"]) != tune_key(cfg, man, ["b"])
    # the objective's retain ceilings follow the gates' limits: other limits, another search
    stricter = build_config("smoke", None, {"gates": {"retain_psnr_drop_db": 0.5}})
    assert tune_key(stricter, man, ["a"]) != tune_key(cfg, man, ["a"])


def test_a_family_revision_retrains_what_was_cached_before_it(monkeypatch) -> None:
    from lethe.pipeline import keys

    man = _manifest()
    vit, mae = build_config("smoke", None, {"family": "hf-vitmae"}), build_config("smoke")
    before = {"vit": original_key(vit, man), "oracle": oracle_key(vit, man), "mae": original_key(mae, man)}
    monkeypatch.setitem(keys.FAMILY_REVISION, "hf-vitmae", keys.FAMILY_REVISION["hf-vitmae"] + 1)
    assert original_key(vit, man) != before["vit"] and oracle_key(vit, man) != before["oracle"]
    assert original_key(mae, man) == before["mae"]  # another family's cache is untouched
