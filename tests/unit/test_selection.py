"""lethe.evaluation.selection: the objective that chooses among models, under every mask the gates judge."""

from __future__ import annotations

import math

import pytest
import torch

from lethe.evaluation.reconstruction import model_scores
from lethe.evaluation.selection import masks_of, source_objective, validation_scores
from lethe.metrics import retain_gate_excess, unlearning_objective
from lethe.models import build_model
from lethe.models.featnet import FeatNetArch
from lethe.pipeline.validation import evaluator_payload


@pytest.fixture
def parts(tiny_model):
    original, oracle = tiny_model("mae"), tiny_model("mae", dim=16)  # two different models
    torch.manual_seed(1)
    oracle.load_state_dict({k: v + 0.05 * torch.randn_like(v) for k, v in oracle.state_dict().items()})
    featnet = build_model("featnet", FeatNetArch(16, 16, 1, 10, 8, 8).to_dict())
    g = torch.Generator().manual_seed(2)
    x_f, x_r = torch.rand(24, 1, 16, 16, generator=g), torch.rand(24, 1, 16, 16, generator=g)
    return {"original": original, "oracle": oracle, "featnet": featnet}, x_f, x_r


def test_the_objective_is_the_worse_of_the_box_and_the_border(parts) -> None:
    models, x_f, x_r = parts
    p = evaluator_payload(models, x_f, x_r, 0.5, 8, 1.0, border_frac=0.25)
    assert masks_of(p) == ["box", "border"]
    scores = validation_scores(models["original"], models["featnet"], p)
    # the border is scored under its own mask, against the oracle's FD under that mask
    fd_border, _ = model_scores(
        models["original"], models["featnet"], x_f, 0.25, p["forget_feats"], 8, kind="border"
    )
    assert fd_border != pytest.approx(p["fd_forget_original"])
    expected_border = abs(math.log(fd_border / p["border_fd_forget_oracle"]))
    assert scores["objective_border"] == pytest.approx(expected_border, rel=1e-6)
    # the worst mask decides (every mask's gates must pass), not the mean of two different scores
    assert scores["objective_box"] != pytest.approx(scores["objective_border"], rel=1e-3)
    assert scores["objective"] == max(scores["objective_box"], scores["objective_border"])
    # the untouched original scores the source objective: nothing moved, no retain penalty
    assert source_objective(p) == pytest.approx(scores["objective"], rel=1e-6)
    # the oracle itself is at 0 on the forget side under both masks
    at_oracle = validation_scores(models["oracle"], models["featnet"], p)
    drop = at_oracle["psnr_retain_drop"]
    assert drop == pytest.approx(p["psnr_retain_original"] - model_scores(
        models["oracle"], models["featnet"], x_r, 0.5, p["retain_feats"], 8)[1])  # fmt: skip
    assert at_oracle["objective_box"] == pytest.approx(
        unlearning_objective(1, 1, at_oracle["fd_retain"], p["fd_retain_original"], 1.0, drop, 1.0), abs=1e-6
    )


def test_a_retain_psnr_drop_costs_its_pixel_error_ratio(parts) -> None:
    """The same model scored against an original 1 dB better on retain: the box's objective rises by
    v * (10^(1/10) - 1), and a model better than the original pays nothing."""
    models, x_f, x_r = parts
    p = evaluator_payload(models, x_f, x_r, 0.5, 8, 1.0, psnr_weight=2.0)
    base = validation_scores(models["original"], models["featnet"], p)
    assert base["psnr_retain_drop"] == pytest.approx(0.0, abs=1e-9)
    worse = validation_scores(
        models["original"], models["featnet"], {**p, "psnr_retain_original": p["psnr_retain_original"] + 1.0}
    )
    assert worse["objective"] - base["objective"] == pytest.approx(2.0 * (10**0.1 - 1), rel=1e-6)
    better = validation_scores(
        models["original"], models["featnet"], {**p, "psnr_retain_original": p["psnr_retain_original"] - 1.0}
    )
    assert better["objective"] == pytest.approx(base["objective"], rel=1e-9)
    # without the PSNR weight the drop is still reported, and costs nothing
    flat = validation_scores(
        models["original"],
        models["featnet"],
        {**p, "psnr_weight": 0.0, "psnr_retain_original": p["psnr_retain_original"] + 1.0},
    )
    assert flat["objective"] == pytest.approx(base["objective"], rel=1e-9) and flat[
        "psnr_retain_drop"
    ] == pytest.approx(1.0)


def test_retain_figures_past_the_ceilings_cost_the_gate_weight() -> None:
    """Below the ceilings nothing; past them the excess in the objective's units, per figure."""
    assert retain_gate_excess(1.1, 1.0, 0.7, 1.12, 0.8) == 0.0
    assert retain_gate_excess(1.2, 1.0, 0.5, 1.12, 0.8) == pytest.approx(0.08)
    assert retain_gate_excess(1.0, 1.0, 1.05, 1.12, 0.8) == pytest.approx(10**0.105 - 10**0.08)
    assert retain_gate_excess(1.0, 1.0, float("nan"), 1.12, 0.8) == float("inf")


def test_a_model_past_a_retain_ceiling_ranks_below_one_that_forgets_less(parts) -> None:
    """Scored against an original 1.05 dB better on retain, the same model pays the soft PSNR term and,
    past a 0.8 dB ceiling, gate_weight times the excess; inside the ceiling, or with the weight at 0,
    only the soft term."""
    models, x_f, x_r = parts
    plain = evaluator_payload(models, x_f, x_r, 0.5, 8, 1.0)
    gated = evaluator_payload(models, x_f, x_r, 0.5, 8, 1.0, retain_ceilings=(1.12, 0.8), gate_weight=10.0)
    base = validation_scores(models["original"], models["featnet"], gated)
    assert base["objective"] == pytest.approx(
        validation_scores(models["original"], models["featnet"], plain)["objective"], rel=1e-9
    )
    worse = {"psnr_retain_original": gated["psnr_retain_original"] + 1.05}
    soft = validation_scores(models["original"], models["featnet"], {**plain, **worse})["objective"]
    hard = validation_scores(models["original"], models["featnet"], {**gated, **worse})["objective"]
    assert soft - base["objective"] == pytest.approx(10**0.105 - 1, rel=1e-6)
    assert hard - soft == pytest.approx(10.0 * (10**0.105 - 10**0.08), rel=1e-6)
    # the steep term outweighs a forget term 0.5 better: the refused model ranks last
    assert hard - base["objective"] > 0.5 + (soft - base["objective"])
    inside = {"psnr_retain_original": gated["psnr_retain_original"] + 0.7}
    assert validation_scores(models["original"], models["featnet"], {**gated, **inside})[
        "objective"
    ] == pytest.approx(
        validation_scores(models["original"], models["featnet"], {**plain, **inside})["objective"]
    )
    off = validation_scores(models["original"], models["featnet"], {**gated, **worse, "gate_weight": 0.0})
    assert off["objective"] == pytest.approx(soft, rel=1e-9)


def test_without_outpainting_only_the_box_is_scored(parts) -> None:
    models, x_f, x_r = parts
    p = evaluator_payload(models, x_f, x_r, 0.5, 8, 1.0)
    assert masks_of(p) == ["box"] and "border_fd_forget_oracle" not in p
    scores = validation_scores(models["original"], models["featnet"], p)
    assert scores["objective"] == scores["objective_box"] and "objective_border" not in scores


def test_too_few_forget_images_for_fd_are_scored_by_their_psnr_gap_to_the_oracle(parts) -> None:
    """Six forget images and 8 feature dimensions: FD's covariance is singular, so the forget term is
    the PSNR gap to the oracle (as the gate then judges), its band's edge costing what FD's does."""
    models, x_f, x_r = parts
    p = evaluator_payload(models, x_f[:6], x_r, 0.5, 8, 1.0, forget_psnr_scale=math.log(2.0) / 1.0)
    assert (
        p["forget_measure"] == "psnr"
        and evaluator_payload(models, x_f, x_r, 0.5, 8, 1.0)["forget_measure"] == "fd"
    )
    at_oracle = validation_scores(models["oracle"], models["featnet"], p)
    drop = at_oracle["psnr_retain_drop"]
    retain_only = unlearning_objective(1, 1, at_oracle["fd_retain"], p["fd_retain_original"], 1.0, drop, 1.0)
    assert at_oracle["objective"] == pytest.approx(retain_only, abs=1e-6)  # the oracle's own gap is 0
    gap = p["psnr_forget_original"] - p["psnr_forget_oracle"]
    assert abs(gap) > 0.01
    # the untouched original: only its forget PSNR gap costs, ln 2 per dB at a 1 dB tolerance
    assert source_objective(p) == pytest.approx(math.log(2.0) * abs(gap), rel=1e-6)
    assert validation_scores(models["original"], models["featnet"], p)["objective"] == pytest.approx(
        source_objective(p), rel=1e-6
    )
    # an FD the size of the noise does not enter: the FD arguments may even be non-finite
    assert unlearning_objective(float("nan"), 0.0, 1.0, 1.0, forget_psnr_gap_db=-2.0) == pytest.approx(
        2 * math.log(2.0)
    )
