"""decouple_retain (Varshney & Torra 2025): loss terms, the stage switch, lambda calibration, state."""

from __future__ import annotations

import math

import pytest
import torch
from test_methods import batch, pair  # the same tiny MAE pair and batch as the other methods' tests

from lethe import masks
from lethe.config import RunConfig, UnlearnConfig
from lethe.methods import DecoupleRetain, calibrate_lambda, get_method, output_distance
from lethe.models.layers import masked_mse
from lethe.optim import make_optimizer, optimizer_step, unlearn_step
from lethe.report import distance_to_oracle


def run(method: DecoupleRetain, steps: int, lr: float = 3e-2, pair_=None) -> list[tuple[str, float]]:
    """The training loops' stage handling, in plain PyTorch: (stage before, distance) per step."""
    teacher, student = pair_ or pair()
    params = method.trainable_parameters(student)
    budgets = dict(method.stages(5))
    opt, sched = make_optimizer(params, lr, 0.0, budgets[method.stage], 0.0)
    trace = []
    for s in range(steps):
        if method.finished():
            break
        b = batch(s)
        stage = method.stage
        loss, _ = unlearn_step(method, student, teacher, b.x_r, b.x_f, b.mask, 0.0, b.generator)
        trace.append((stage, method.distance))
        if method.stage != stage:
            opt, sched = make_optimizer(params, lr, 0.0, budgets[method.stage], 0.0)
        else:
            optimizer_step(loss, opt, sched, params, clip=3.0)
    return trace


def test_decoupling_is_gradient_ascent_on_the_forget_error() -> None:
    teacher, student = pair()
    method = DecoupleRetain(lam=math.inf, max_ascent_steps=10)
    b = batch(0)
    loss, parts = method.loss(student, teacher, b, alpha=0.0)
    assert loss.item() == pytest.approx(-parts["forget"], rel=1e-6)
    assert method.distance == pytest.approx(0.0, abs=1e-12)  # untouched student == teacher

    def forget_error() -> float:
        b = batch(0)
        with torch.no_grad():
            m = b.mask.expand(4, -1, -1, -1)
            return masked_mse(student(b.x_f, m, mode="predict"), b.x_f, m).mean().item()

    before = forget_error()
    run(method, 6, pair_=(teacher, student))
    assert method.stage == "decouple" and method.ascent_steps == 7  # the call above + 6
    assert forget_error() > before


def test_stage_switches_exactly_when_the_distance_reaches_lambda() -> None:
    distances = [d for _, d in run(DecoupleRetain(lam=math.inf, max_ascent_steps=20), 8)]
    assert all(b > a for a, b in zip(distances[1:], distances[2:], strict=False)), distances
    lam = (distances[4] + distances[5]) / 2  # reached first at the 6th measurement
    method = DecoupleRetain(lam=lam, max_ascent_steps=20, retain_steps=3)
    trace = run(method, 8)
    stages = [s for s, _ in trace]
    assert stages[:6] == ["decouple"] * 6 and stages[6] == "retain"
    assert method.ascent_steps == 5 and method.reached
    assert method.distance >= lam and all(d < lam for _, d in trace[:5])


def test_switch_step_applies_no_update_and_starts_retention() -> None:
    teacher, student = pair()
    method = DecoupleRetain(lam=0.0)
    b = batch(0)
    loss, _ = method.loss(student, teacher, b, alpha=0.0)
    assert method.stage == "retain" and method.reached and method.ascent_steps == 0
    assert loss.item() == 0.0 and loss.requires_grad  # DDP still gets its backward


def test_the_cap_always_ends_decoupling() -> None:
    method = DecoupleRetain(lam=math.inf, max_ascent_steps=3, retain_steps=2)
    trace = run(method, 20)
    assert [s for s, _ in trace] == ["decouple"] * 4 + ["retain"] * 2
    assert method.finished() and not method.reached and method.ascent_steps == 3


@pytest.mark.parametrize("distill", [0.0, 0.5])
def test_retention_uses_only_retain_data_plus_distillation(distill: float) -> None:
    teacher, student = pair()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.02)
    method = DecoupleRetain(lam=0.0, distill=distill)
    method.stage = "retain"
    b = batch(0)
    loss, parts = method.loss(student, teacher, b, alpha=0.0)
    other = batch(0)
    other.x_f = torch.zeros_like(other.x_f)  # the forget batch must not matter
    again = DecoupleRetain(lam=0.0, distill=distill)
    again.stage = "retain"
    loss2, _ = again.loss(student, teacher, other, alpha=0.0)
    assert loss.item() == pytest.approx(loss2.item(), rel=1e-6)
    b = batch(0)
    m = b.mask.expand(6, -1, -1, -1)
    with torch.no_grad():
        p_r = student(b.x_r, m, mode="predict")
        want = (
            masked_mse(p_r, b.x_r, m).mean()
            + distill * masked_mse(p_r, teacher(b.x_r, m, mode="predict"), m).mean()
        )
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert parts["forget"] == 0.0 and parts["retain"] > 0


def test_retention_gradient_ignores_forget_images() -> None:
    teacher, student = pair()
    method = DecoupleRetain(lam=0.0)
    method.stage = "retain"
    b = batch(0)
    b.x_f.requires_grad_(True)
    loss, _ = method.loss(student, teacher, b, alpha=0.0)
    loss.backward()
    assert b.x_f.grad is None


def test_lambda_calibration_follows_the_rule() -> None:
    teacher, _ = pair()
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    box = masks.box_mask(8, 8, 0.5, 2)
    with torch.no_grad():
        errs = masked_mse(
            teacher(x, box.expand(10, -1, -1, -1), mode="predict"), x, box.expand(10, -1, -1, -1)
        )
    cal = calibrate_lambda(teacher, x, box, factor=1.5, batch_size=4)
    assert cal["lambda"] == pytest.approx(1.5 * errs.mean().item(), rel=1e-5)
    assert cal["heldout_mse_mean"] == pytest.approx(errs.mean().item(), rel=1e-5) and cal["n_images"] == 10
    q = calibrate_lambda(teacher, x, box, factor=1.0, quantile=0.9)
    assert q["lambda"] == pytest.approx(torch.quantile(errs.double(), 0.9).item(), rel=1e-5)
    with pytest.raises(ValueError, match="at least one"):
        calibrate_lambda(teacher, x[:0], box)


def test_state_round_trips_through_the_checkpointed_progress(tmp_path) -> None:
    method = DecoupleRetain(lam=math.inf, max_ascent_steps=2, retain_steps=4)
    run(method, 4)
    assert method.stage == "retain" and method.retain_done == 1
    path = tmp_path / "state.pt"
    torch.save({"step": 4, "method": method.state()}, path)
    progress = torch.load(path, weights_only=True)  # what the Ray loop restores with
    resumed = DecoupleRetain(lam=math.inf, max_ascent_steps=2, retain_steps=4)
    resumed.stages(5)
    resumed.load_state(progress["method"])
    assert resumed.state() == method.state()
    assert not resumed.finished()
    resumed.retain_done = 4
    assert resumed.finished()


def test_retention_budget_defaults_to_the_usual_step_count() -> None:
    m = DecoupleRetain(max_ascent_steps=7)
    assert m.stages(30) == [("decouple", 8), ("retain", 30)]
    assert DecoupleRetain(max_ascent_steps=7, retain_steps=5).stages(30) == [("decouple", 8), ("retain", 5)]
    assert not get_method("decouple_retain").uses_alpha
    assert get_method("decouple_retain", options={"lam": 0.3}).lam == 0.3
    assert get_method("encoder_noise").stages(9) == [("main", 9)]


@pytest.mark.parametrize("family", ["mae", "vqgan", "diffusion"])
def test_decouple_retain_runs_on_every_family(tiny_model, family: str) -> None:
    student, teacher = tiny_model(family), tiny_model(family).eval()
    g = torch.Generator().manual_seed(0)
    box = masks.box_mask(16, 16, 0.5, student.mask_cell)
    x_held = torch.rand(8, 1, 16, 16, generator=g)
    cal = calibrate_lambda(teacher, x_held, box)
    assert cal["lambda"] > 0 and math.isfinite(cal["lambda"])
    method = DecoupleRetain(lam=cal["lambda"], max_ascent_steps=3, retain_steps=2)
    params = method.trainable_parameters(student)
    budgets = dict(method.stages(4))
    opt, sched = make_optimizer(params, 1e-2, 0.0, budgets[method.stage], 0.0)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    steps = 0
    while not method.finished():
        x_r, x_f = torch.rand(6, 1, 16, 16, generator=g), torch.rand(4, 1, 16, 16, generator=g)
        stage = method.stage
        loss, parts = unlearn_step(method, student, teacher, x_r, x_f, box, 0.0, g)
        assert torch.isfinite(loss) and set(parts) == {"retain", "forget"}
        if method.stage != stage:
            loss.backward()
            opt, sched = make_optimizer(params, 1e-2, 0.0, budgets[method.stage], 0.0)
        else:
            optimizer_step(loss, opt, sched, params, clip=3.0)
        steps += 1
        assert steps <= sum(budgets.values())
    assert method.retain_done == 2
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_decouple_config_is_typed_and_only_names_its_own_runs() -> None:
    u = UnlearnConfig()
    assert u.decouple.lambda_factor == 1.0 and u.decouple.max_ascent_steps >= 1
    assert "decouple" in u.settings("decouple_retain") and "decouple" not in u.settings("encoder_noise")
    with pytest.raises(ValueError):
        UnlearnConfig(decouple={"lambda_factor": 0})
    with pytest.raises(ValueError):
        UnlearnConfig(decouple={"lambda_quantile": 1.5})
    assert RunConfig(method="decouple_retain").method == "decouple_retain"


def test_distance_to_oracle_is_unsigned_and_zero_for_the_oracle() -> None:
    metrics = {
        "original": {"forget": {"fd": 2.0, "psnr": 20.0, "ssim": 0.8}},
        "unlearned": {"forget": {"fd": 6.0, "psnr": 15.0, "ssim": 0.5}},
        "oracle": {"forget": {"fd": 4.0, "psnr": 16.0, "ssim": 0.6}},
    }
    d = distance_to_oracle(metrics)
    assert d["original"]["fd_rel"] == pytest.approx(0.5) and d["unlearned"]["fd_rel"] == pytest.approx(0.5)
    assert d["unlearned"]["psnr_abs"] == pytest.approx(1.0) and d["original"]["psnr_abs"] == pytest.approx(
        4.0
    )
    assert d["oracle"] == {"fd_rel": 0.0, "psnr_abs": 0.0, "ssim_abs": 0.0}
    assert "embed_cos_abs" not in d["unlearned"]


def test_output_distance_matches_the_in_training_measure() -> None:
    teacher, student = pair()
    assert output_distance(student, teacher, batch(0).x_f, batch(0).mask) == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05)
    b = batch(0)
    method = DecoupleRetain(lam=math.inf)
    method.loss(student, teacher, b, alpha=0.0)
    x = batch(0).x_f
    assert output_distance(student, teacher, x, b.mask, batch_size=3) == pytest.approx(
        method.distance, rel=1e-5
    )
