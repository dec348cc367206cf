"""lethe.evaluation.selection: the objective that chooses among models, under every mask the gates judge."""

from __future__ import annotations

import math

import pytest
import torch

from lethe.evaluation.reconstruction import model_fd
from lethe.evaluation.selection import masks_of, source_objective, validation_scores
from lethe.metrics import unlearning_objective
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


def test_the_objective_averages_the_box_and_the_border(parts) -> None:
    models, x_f, x_r = parts
    p = evaluator_payload(models, x_f, x_r, 0.5, 8, 1.0, border_frac=0.25)
    assert masks_of(p) == ["box", "border"]
    scores = validation_scores(models["original"], models["featnet"], p)
    # the border is scored under its own mask, against the oracle's FD under that mask
    fd_border = model_fd(
        models["original"], models["featnet"], x_f, 0.25, p["forget_feats"], 8, kind="border"
    )
    assert fd_border != pytest.approx(p["fd_forget_original"])
    expected_border = abs(math.log(fd_border / p["border_fd_forget_oracle"]))
    assert scores["objective_border"] == pytest.approx(expected_border, rel=1e-6)
    assert scores["objective"] == pytest.approx((scores["objective_box"] + scores["objective_border"]) / 2)
    # the untouched original scores the source objective: nothing moved, no retain penalty
    assert source_objective(p) == pytest.approx(scores["objective"], rel=1e-6)
    # the oracle itself is at 0 on the forget side under both masks
    at_oracle = validation_scores(models["oracle"], models["featnet"], p)
    assert at_oracle["objective_box"] == pytest.approx(
        unlearning_objective(1, 1, at_oracle["fd_retain"], p["fd_retain_original"], 1.0), abs=1e-6
    )


def test_without_outpainting_only_the_box_is_scored(parts) -> None:
    models, x_f, x_r = parts
    p = evaluator_payload(models, x_f, x_r, 0.5, 8, 1.0)
    assert masks_of(p) == ["box"] and "border_fd_forget_oracle" not in p
    scores = validation_scores(models["original"], models["featnet"], p)
    assert scores["objective"] == scores["objective_box"] and "objective_border" not in scores
