"""Ray Train runs with 2 DDP workers fed by Ray Data shards, as lethe's steps run them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from lethe.config import build_config
from lethe.data import shard_dataset, split_dataset
from lethe.execution.fit import fit, unlearn_inputs
from lethe.execution.job import MODEL_FILE, TrainJob
from lethe.models import load_checkpoint
from lethe.models.mae import MAEArch, auto_patch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits_shards(tmp_path_factory, ray_session):
    cfg = build_config("smoke", overrides={"data": {"dataset": "digits"}, "request": {"classes": ["3"]}})
    return split_dataset(cfg, tmp_path_factory.mktemp("split") / "shards")


def _arch(man) -> dict:
    p = auto_patch(man.height, man.width)
    return MAEArch(
        man.height, man.width, man.channels, p, dim=16, depth=1, heads=2, dec_dim=8, dec_depth=1, dec_heads=2
    ).to_dict()


def _mask(arch: dict) -> dict:
    return {
        "height": arch["height"],
        "width": arch["width"],
        "cell": arch["patch"],
        "box_frac": 0.5,
        "ratio": 0.5,
    }


def _unlearn_job(man, arch: dict, mask: dict, **kw) -> TrainJob:
    base = dict(kind="unlearn", model_kind="mae", arch=arch, batch_size=16, lr=1e-3, weight_decay=0.05)
    base |= dict(warmup_frac=0.1, n_rows=man.shards["forget"].count, mask=mask, threads=1, grad_clip=3.0)
    return TrainJob(**{**base, "method": "encoder_noise", "alpha": 0.2, **kw})


def test_two_worker_pretrain_then_unlearn(digits_shards, tmp_path: Path) -> None:
    man = digits_shards
    arch = _arch(man)
    n = man.shards["forget"].count + man.shards["retain"].count
    ds = shard_dataset(man, "forget").union(shard_dataset(man, "retain"))
    pre = TrainJob(
        kind="pretrain",
        model_kind="mae",
        arch=arch,
        batch_size=64,
        lr=2e-3,
        weight_decay=0.05,
        warmup_frac=0.1,
        n_rows=n,
        epochs=2,
        mask=_mask(arch),
        threads=1,
        cache_mb=64,
    )
    common = {
        "num_workers": 2,
        "use_gpu": False,
        "cpus_per_worker": 1.0,
        "storage_path": str(tmp_path / "ray"),
    }
    res = fit(pre, {"train": ds}, name="pre", dest=tmp_path / "orig.pt", **common)
    assert res.metrics["epoch"] == 1 and res.metrics["loss"] < 0.2
    # both epochs were checkpointed to storage_path, and the final model loads with weights_only
    # (beside them Ray keeps its checkpoint_manager_snapshot.json, the resume bookkeeping)
    ckpts = sorted(c for c in (tmp_path / "ray" / "pre").glob("checkpoint_*") if c.is_dir())
    assert len(ckpts) == 2 and all((c / MODEL_FILE).is_file() for c in ckpts)
    original, _ = load_checkpoint(tmp_path / "orig.pt", expected_kind="mae", expected_arch=arch)

    # ~10 steps over the digits' forget class at 2 x 16 per step: max_steps decides
    un = _unlearn_job(man, arch, _mask(arch), passes=2.0, max_steps=6, checkpoint_every=3)
    res = fit(
        un,
        unlearn_inputs(man, un, 2),
        name="un",
        dest=tmp_path / "un.pt",
        teacher_state=original.state_dict(),
        **common,
    )
    assert res.metrics["step"] == 6 and res.metrics["loss_forget"] > 0
    unlearned, meta = load_checkpoint(tmp_path / "un.pt", expected_kind="mae", expected_arch=arch)
    enc = {id(p) for p in unlearned.encoder_parameters()}
    o_state = dict(original.named_parameters())
    changed = frozen_same = 0
    for name, p in unlearned.named_parameters():
        same = torch.equal(p, o_state[name])
        if id(p) in enc:
            changed += not same
        else:
            assert same, f"decoder parameter {name} moved during encoder re-targeting"
            frozen_same += 1
    assert changed > 0 and frozen_same > 0


def test_two_worker_vqgan_phases_then_unlearning(digits_shards, tmp_path: Path) -> None:
    """The two-phase family under DDP: unused sub-networks per phase, EMA codebook statistics
    all-reduced across workers, then encoder re-targeting with the tokenizer frozen."""
    from lethe.models.families import get_family

    man = digits_shards
    fam = get_family("vqgan")
    section = {"ch": 4, "codebook_size": 16, "code_dim": 4, "disc_ch": 4, "adv_start_step": 2}
    section |= {"dim": 16, "depth": 1, "heads": 2, "dec_dim": 8, "dec_depth": 1, "dec_heads": 2}
    arch = fam.build_arch(section, man.height, man.width, man.channels)
    mask = {**_mask({**arch, "patch": fam.cell(arch)}), "schedule": fam.mask_schedule}
    common = {
        "num_workers": 2,
        "use_gpu": False,
        "cpus_per_worker": 1.0,
        "storage_path": str(tmp_path / "ray"),
    }
    pre = TrainJob(
        kind="pretrain",
        model_kind="vqgan",
        arch=arch,
        batch_size=64,
        lr=2e-3,
        weight_decay=0.0,
        warmup_frac=0.1,
        n_rows=man.shards["forget"].count + man.shards["retain"].count,
        epochs=2,
        mask=mask,
        phases=fam.phases(section, 2),
        threads=1,
        cache_mb=64,
    )
    ds = shard_dataset(man, "forget").union(shard_dataset(man, "retain"))
    res = fit(pre, {"train": ds}, name="vq", dest=tmp_path / "vq.pt", **common)
    # two tiny epochs: the token CE is near ln(16) = 2.77 (2.79-2.82 depending on the data order);
    # this checks the phases ran and did not diverge, not what they learnt
    assert res.metrics["epoch"] == 1 and res.metrics["loss"] < 2.9
    original, _ = load_checkpoint(tmp_path / "vq.pt", expected_kind="vqgan", expected_arch=arch)
    assert bool(original.quantizer.initted) and int(original.tok_step) > 2

    un = _unlearn_job(man, arch, mask, model_kind="vqgan", passes=1.0, max_steps=4, checkpoint_every=2)
    fit(
        un,
        unlearn_inputs(man, un, 2),
        name="vq-un",
        dest=tmp_path / "vq-un.pt",
        teacher_state=original.state_dict(),
        **common,
    )
    unlearned, _ = load_checkpoint(tmp_path / "vq-un.pt", expected_kind="vqgan", expected_arch=arch)
    enc = {n for n, p in unlearned.named_parameters() if any(p is q for q in unlearned.encoder_parameters())}
    before, after = original.state_dict(), unlearned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k not in enc)
    assert any(not torch.equal(before[k], after[k]) for k in enc)


def test_two_worker_decouple_retain_switches_together_and_resumes(digits_shards, tmp_path: Path) -> None:
    """decouple_retain under DDP: the measured distance is all-reduced, so both workers switch stage
    on the same step; a worker killed in the retention stage resumes there (stage and counters ride
    in the checkpointed progress) and ends where an uninterrupted run ends."""
    from lethe.models import build_model

    man = digits_shards
    arch = _arch(man)
    torch.manual_seed(0)
    teacher = build_model("mae", arch)
    job = _unlearn_job(
        man,
        arch,
        _mask(arch),
        method="decouple_retain",
        # any move away from the teacher reaches lambda: one ascent step, the switch on step 2
        method_options={"lam": 1e-9, "max_ascent_steps": 5, "retain_steps": 5, "distill": 0.5},
        passes=1.0,
        checkpoint_every=2,
    )
    common = {
        "num_workers": 2,
        "use_gpu": False,
        "cpus_per_worker": 1.0,
        "storage_path": str(tmp_path / "ray"),
        "teacher_state": teacher.state_dict(),
    }
    data = unlearn_inputs(man, job, 2)
    a = fit(job, data, name="dec-a", dest=tmp_path / "a.pt", **common)
    # 1 ascent step + the switch step + 5 retention steps; the budget (6 + 5) is only a cap
    assert a.metrics["step"] == 7, a.metrics
    assert a.metrics["method_ascent_steps"] == 1 and a.metrics["method_retain_done"] == 5
    assert a.metrics["method_reached"] is True and a.metrics["method_distance"] >= 1e-9
    b = fit(
        dataclasses.replace(job, fail_at_step=5),
        data,
        name="dec-b",
        dest=tmp_path / "b.pt",
        max_failures=1,
        **common,
    )
    assert b.metrics["step"] == 7 and b.metrics["method_retain_done"] == 5
    assert b.metrics["loss"] == pytest.approx(a.metrics["loss"], rel=1e-4)
    wa, _ = load_checkpoint(tmp_path / "a.pt", expected_kind="mae", expected_arch=arch)
    wb, _ = load_checkpoint(tmp_path / "b.pt", expected_kind="mae", expected_arch=arch)
    for (name, pa), pb in zip(wa.state_dict().items(), wb.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, rtol=1e-4, atol=1e-6), name


def test_unlearning_that_diverges_hands_on_its_best_scored_checkpoint(digits_shards, tmp_path: Path) -> None:
    """Best-checkpoint keeping: gradient ascent at a learning rate that wrecks the model scores every
    step on validation images; the model handed on is the lowest-objective step, not the last, and
    the selection history survives a worker killed mid-run (it rides in the checkpointed state)."""
    from lethe.execution.tune import METRIC
    from lethe.models import build_model
    from lethe.models.featnet import FeatNetArch
    from lethe.pipeline.validation import evaluator_payload, validation_images

    man = digits_shards
    arch = _arch(man)
    torch.manual_seed(0)
    teacher = build_model("mae", arch)
    featnet = build_model("featnet", FeatNetArch(man.height, man.width, man.channels, 10, 8, 16).to_dict())
    x_f = validation_images(man, "heldout_forget", 16, 0)
    x_r = validation_images(man, "heldout_retain", 16, 0)
    # the teacher stands in for the oracle: the untouched model scores 0, every move costs
    models = {"original": teacher, "oracle": teacher, "featnet": featnet}
    payload = evaluator_payload(models, x_f, x_r, box_frac=0.5, bs=16, retain_weight=1.0)
    job = _unlearn_job(
        man, arch, _mask(arch), method="max_loss", lr=0.05, warmup_frac=0.0, passes=2.0, max_steps=6,
        checkpoint_every=6, eval_every=1, fail_at_step=4,
    )  # fmt: skip
    where = {
        "num_workers": 1,
        "use_gpu": False,
        "cpus_per_worker": 1.0,
        "storage_path": str(tmp_path / "ray"),
        "select_metric": METRIC,
    }
    res = fit(
        job,
        unlearn_inputs(man, job, 1),
        name="diverge",
        dest=tmp_path / "un.pt",
        teacher_state=teacher.state_dict(),
        eval_payload=payload,
        max_failures=1,
        **where,
    )
    sel = res.selection
    history = sel["history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]  # once each, across the restart
    best = min(history, key=lambda h: h["objective"])
    assert sel["step"] == best["step"] == res.metrics["step"] and sel["objective"] == best["objective"]
    assert sel["last_step"] == 6 and sel["step"] < 6, history
    assert sel["last_objective"] > sel["objective"]
    _, meta = load_checkpoint(tmp_path / "un.pt", expected_kind="mae", expected_arch=arch)
    assert meta["step"] == sel["step"] and meta["validation_objective"] == pytest.approx(sel["objective"])
    # a re-run returns the finished run's choice without training
    again = fit(job, {}, name="diverge", dest=tmp_path / "again.pt", **where)
    assert again.reused and again.selection == sel
    assert (tmp_path / "again.pt").read_bytes() == (tmp_path / "un.pt").read_bytes()
