"""lethe.evaluation.reconstruction: the evaluation with and without an oracle, and its progress."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from lethe.evaluation.reconstruction import EvalData, EvalSettings, evaluate_models
from lethe.execution.progress import InProcess
from lethe.models.checkpoint import build_model
from lethe.models.featnet import FeatNetArch


@pytest.fixture()
def setup(tiny_model, tmp_path: Path):
    torch.manual_seed(0)
    models = {"original": tiny_model("mae"), "unlearned": tiny_model("mae"), "oracle": tiny_model("mae")}
    featnet = build_model("featnet", FeatNetArch(16, 16, 1, 10, 4, 8).to_dict())
    x = torch.rand(24, 1, 16, 16)
    data = EvalData(
        retain=x[:10], forget=x[10:16], members=x[16:20], nonmembers=x[20:], show_forget=True,
        retain_labels=torch.randint(10, (10,)),
    )  # fmt: skip
    return models, featnet, data, tmp_path


def _settings(out_dir: Path, progress) -> EvalSettings:
    return EvalSettings(
        box_frac=0.5, grid_rows=2, out_dir=out_dir, batch_size=8, outpaint_frac=0.25, bootstrap=5,
        attack_masks=1, progress=progress,
    )  # fmt: skip


@pytest.mark.parametrize("with_oracle", [True, False])
def test_progress_counts_every_unit_and_ends_at_its_total(setup, with_oracle: bool) -> None:
    models, featnet, data, out = setup
    if not with_oracle:
        models = {k: v for k, v in models.items() if k != "oracle"}
    calls: list[tuple[int, int]] = []
    metrics, _grids, extra = evaluate_models(
        models, featnet, data, _settings(out, lambda d, t: calls.append((d, t)))
    )
    n = len(models)
    total = 2 * (2 * n * 2) + (n if with_oracle else 0)  # 2 masks x models x 2 splits, twice; the attack
    assert [d for d, _ in calls] == list(range(1, total + 1)) and {t for _, t in calls} == {total}
    assert set(metrics) == set(models)
    # Without the oracle: no attack (it is calibrated against it) and no distance to its outputs.
    assert bool(extra["attack"]) is with_oracle
    assert ("oracle_dist" in metrics["unlearned"]["forget"]) is with_oracle
    assert ("mia_auc" in metrics["unlearned"]["forget"]) is with_oracle


def test_a_one_image_forget_set_is_evaluated_beside_a_retain_set_with_intervals(setup) -> None:
    """A data subject's single image: no Frechet distance (nor its bootstrap) on forget, while the
    retain split, large enough, gets its FD and interval from the shared truth moments."""
    models, featnet, _, out = setup
    x = torch.rand(30, 1, 16, 16)
    data = EvalData(
        retain=x[:20], forget=x[20:21], members=x[20:21], nonmembers=x[21:], show_forget=False,
        retain_labels=torch.randint(10, (20,)),
    )  # fmt: skip
    metrics, _grids, extra = evaluate_models(models, featnet, data, _settings(out, None))
    assert extra["fd_min_samples"] == 16  # twice the feature net's 8 dimensions
    assert metrics["unlearned"]["forget"]["fd"] is None and metrics["unlearned"]["forget"]["fd_ci95"] is None
    lo, hi = metrics["unlearned"]["retain"]["fd_ci95"]
    assert lo <= hi and metrics["unlearned"]["retain"]["fd"] > 0


def test_in_process_progress_is_a_bar_on_a_terminal_and_quarter_lines_elsewhere() -> None:
    log = io.StringIO()
    report = InProcess("evaluate", log)
    for done in range(1, 21):
        report(done, 20)
    assert log.getvalue().splitlines() == [f"lethe: evaluate step {d}/20" for d in (1, 5, 10, 15, 20)]

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    report = InProcess("evaluate", screen)
    for done in range(1, 21):
        report(done, 20)
    assert "evaluate: 100%" in screen.getvalue() and "lethe: evaluate step" not in screen.getvalue()
