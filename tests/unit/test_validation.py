"""lethe.pipeline.validation: the images that choose a model never grade it."""

from __future__ import annotations

import pytest

from lethe.pipeline.validation import evaluated, held_back


@pytest.mark.parametrize(
    ("count", "eval_n", "val_n", "val", "ev"),
    [
        (1000, 1000, 200, 200, 800),  # demo, forget Trouser: the shard is the evaluation size
        (9000, 2000, 400, 400, 2000),  # room for both: evaluation keeps its full size
        (85, 1000, 200, 17, 68),  # a small shard: a fifth validates, the rest is graded
        (2100, 2000, 400, 400, 1700),  # some spare room, not enough
        (3, 64, 32, 0, 3),  # too small to hold back anything
    ],
)
def test_validation_and_evaluation_images_are_disjoint(count, eval_n, val_n, val, ev) -> None:
    assert held_back(count, eval_n, val_n) == val
    assert evaluated(count, eval_n, val_n) == ev
    # evaluation takes the first `ev` images in hash order, validation the last `val`
    assert ev + val <= count
    assert evaluated(count, eval_n, None) == min(eval_n, count)  # a run that validates on nothing
