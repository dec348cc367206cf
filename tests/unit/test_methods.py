"""Losses of the unlearning methods and what each one is allowed to train."""

from __future__ import annotations

import copy

import pytest
import torch
from lethe_tiny_family import PLUGIN_FAMILY  # a third-party family defined only in tests/plugins

from lethe import masks
from lethe.catalogue import I2I_FAMILIES
from lethe.methods import Batch, get_method, matched_noise, method_names
from lethe.models import MAE, MAEArch
from lethe.optim import make_optimizer, optimizer_step, unlearn_step, unlearn_total_steps, warmup_cosine


def pair():
    torch.manual_seed(0)
    teacher = MAE(MAEArch(8, 8, 1, 2, dim=16, depth=1, heads=2, dec_dim=8, dec_depth=1, dec_heads=2)).eval()
    return teacher, copy.deepcopy(teacher)


def batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        x_r=torch.rand(6, 1, 8, 8, generator=g),
        x_f=torch.rand(4, 1, 8, 8, generator=g),
        mask=masks.box_mask(8, 8, 0.5, 2),
        generator=g,
    )


def test_encoder_noise_loss_is_zero_on_retain_for_an_untouched_student() -> None:
    teacher, student = pair()
    loss, parts = get_method("encoder_noise").loss(student, teacher, batch(), alpha=0.2)
    assert parts["retain"] == pytest.approx(0.0, abs=1e-10)
    assert parts["forget"] > 0  # noise and images give different embeddings
    assert loss.item() == pytest.approx(0.2 * parts["forget"], rel=1e-5)


def test_encoder_noise_matches_the_formula() -> None:
    teacher, student = pair()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01)
    b = batch()
    loss, _ = get_method("encoder_noise").loss(student, teacher, b, alpha=0.5)
    # recompute with a fresh generator in the same state
    b2 = batch()
    m = b2.mask.expand(4, -1, -1, -1)
    with torch.no_grad():
        n = matched_noise(b2.x_f, "gaussian", b2.generator)
        want = (
            (
                student.encode(b2.x_r, b2.mask.expand(6, -1, -1, -1))
                - teacher.encode(b2.x_r, b2.mask.expand(6, -1, -1, -1))
            )
            ** 2
        ).mean()
        want = want + 0.5 * ((student.encode(b2.x_f, m) - teacher.encode(n, m)) ** 2).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_matched_noise_follows_batch_statistics_and_valid_range() -> None:
    x = torch.rand(64, 1, 8, 8) * 0.5 + 0.25
    n = matched_noise(x, "gaussian", torch.Generator().manual_seed(1))
    assert n.min() >= 0 and n.max() <= 1
    assert n.mean().item() == pytest.approx(x.mean().item(), abs=0.02)
    assert torch.all(matched_noise(x, "constant", torch.Generator()) == x.mean().clamp(0, 1))


@pytest.mark.parametrize("name", method_names())
def test_every_method_trains_only_its_part(name: str) -> None:
    teacher, student = pair()
    method = get_method(name)
    params = method.trainable_parameters(student)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    opt, sched = make_optimizer(params, 1e-2, 0.0, 3, 0.0)
    for s in range(3):
        b = batch(s)
        loss, parts = unlearn_step(method, student, teacher, b.x_r, b.x_f, b.mask, 0.5, b.generator)
        assert torch.isfinite(loss) and set(parts) == {"retain", "forget"}
        optimizer_step(loss, opt, sched, params, clip=3.0)
    enc = {id(p) for p in student.encoder_parameters()}
    names = {id(p): n for n, p in student.named_parameters()}
    after = student.state_dict()
    changed = {
        names[id(p)]
        for p in student.parameters()
        if not torch.equal(before[names[id(p)]], after[names[id(p)]])
    }
    if method.trains == "encoder":
        frozen = [n for n, p in student.named_parameters() if id(p) not in enc]
        assert all(torch.equal(before[n], after[n]) for n in frozen), "decoder must stay bit-identical"
        assert changed and changed <= {names[i] for i in enc}
    else:
        assert any(n.startswith(("dec_", "head")) for n in changed)
    # the teacher is never touched
    t_state = teacher.state_dict()
    assert all(torch.equal(t_state[k], v) for k, v in pair()[0].state_dict().items())


def test_max_loss_ascends_on_forget() -> None:
    teacher, student = pair()
    loss, parts = get_method("max_loss").loss(student, teacher, batch(), alpha=1.0)
    assert loss.item() == pytest.approx(parts["retain"] - parts["forget"], rel=1e-5)


def test_finetune_retain_ignores_forget_and_alpha() -> None:
    teacher, student = pair()
    a, _ = get_method("finetune_retain").loss(student, teacher, batch(), alpha=0.0)
    b, _ = get_method("finetune_retain").loss(student, teacher, batch(), alpha=10.0)
    assert a.item() == b.item()


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")


def test_schedule_warms_up_then_decays_to_zero() -> None:
    f = warmup_cosine(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(50) < 1.0 and f(99) < 0.01 and f(500) == pytest.approx(0.0)


def test_unlearn_steps_are_the_same_on_every_worker() -> None:
    assert unlearn_total_steps(6000, 64, 1, 1.5, None) == 141
    assert unlearn_total_steps(6000, 64, 2, 1.5, None) == 71
    assert unlearn_total_steps(6000, 64, 1, 1.5, 10) == 10
    # a one-image request: one step by passes alone, min_steps lifts it, max_steps still caps
    assert unlearn_total_steps(1, 64, 1, 0.5, None) == 1
    assert unlearn_total_steps(1, 64, 1, 0.5, None, min_steps=30) == 30
    assert unlearn_total_steps(1, 64, 1, 0.5, 6, min_steps=30) == 6
    assert unlearn_total_steps(6000, 64, 1, 1.5, None, min_steps=30) == 141


@pytest.mark.parametrize("family", [*I2I_FAMILIES, PLUGIN_FAMILY])
@pytest.mark.parametrize("name", method_names())
def test_every_method_runs_on_every_family(tiny_model, family: str, name: str) -> None:
    """Same method code for every family: finite losses, and only the allowed part moves."""
    student, teacher = tiny_model(family), tiny_model(family).eval()
    method = get_method(name)
    params = method.trainable_parameters(student)
    allowed = {n for n, p in student.named_parameters() if p.requires_grad}
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt, sched = make_optimizer(params, 1e-2, 0.0, 2, 0.0)
    g = torch.Generator().manual_seed(0)
    for mask in (
        masks.box_mask(16, 16, 0.5, student.mask_cell),
        masks.border_mask(16, 16, 0.2, student.mask_cell),
    ):
        x_r, x_f = torch.rand(6, 1, 16, 16, generator=g), torch.rand(4, 1, 16, 16, generator=g)
        loss, parts = unlearn_step(method, student, teacher, x_r, x_f, mask, 0.5, g)
        assert torch.isfinite(loss) and set(parts) == {"retain", "forget"}
        optimizer_step(loss, opt, sched, params, clip=3.0)
    after = student.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= allowed, sorted(changed - allowed)
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
