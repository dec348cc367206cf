"""When a pretraining epoch reports a checkpoint (lethe.execution.worker.report_due, both epoch loops): every epoch by default in a
bare TrainJob, at most every `checkpoint_interval_s` from a run's config, always at the end."""

from __future__ import annotations

import pytest
import torch

from lethe.config import build_config
from lethe.execution.job import TrainJob
from lethe.execution.worker import report_due
from lethe.pipeline.jobs import job_common


def _job(interval: float, epochs: int = 10) -> dict:
    return {"checkpoint_interval_s": interval, "epochs": epochs}


def test_every_epoch_without_an_interval() -> None:
    phases = ["main"] * 10
    assert all(report_due(_job(0.0), phases, e, 0.0, "cpu") for e in range(10))
    assert TrainJob.__dataclass_fields__["checkpoint_interval_s"].default == 0.0


@pytest.mark.parametrize("phases", [["main"] * 10, None], ids=["phases", "generator"])
def test_short_epochs_report_once_the_interval_passed_and_always_at_the_end(phases) -> None:
    assert not report_due(_job(20.0), phases, 3, 5.0, "cpu")
    assert report_due(_job(20.0), phases, 3, 20.0, "cpu")
    assert report_due(_job(20.0), phases, 9, 0.1, "cpu")  # the last epoch: the model the run returns


def test_a_phase_always_ends_with_a_checkpoint() -> None:
    phases = ["tokenizer"] * 4 + ["transformer"] * 6
    assert report_due(_job(1e9), phases, 3, 0.0, "cpu")
    assert not report_due(_job(1e9), phases, 4, 0.0, "cpu")


def test_the_interval_comes_from_the_run_config() -> None:
    cfg = build_config(preset="smoke")
    assert job_common(cfg)["checkpoint_interval_s"] == cfg.resources.checkpoint_interval_s == 20.0


def test_preloaded_rows_are_ordered_by_content_not_by_arrival() -> None:
    """Ray Data hands a union of shards over in the order its reads finish; training must not depend
    on it (the same seed trained different models before)."""
    from lethe.execution.worker import content_order

    torch.manual_seed(0)
    x = torch.rand(50, 1, 8, 8)
    y = torch.randint(0, 10, (50,))
    shuffled = torch.randperm(50)
    a, b = content_order(x, y), content_order(x[shuffled], y[shuffled])
    assert torch.equal(x[a], x[shuffled][b]) and torch.equal(y[a], y[shuffled][b])
    assert sorted(a.tolist()) == list(range(50))


def test_workers_take_equal_disjoint_shares_of_the_training_arrays_in_content_order() -> None:
    """Data that fits the worker cache reaches the workers as object-store arrays (no Ray Data start):
    one worker trains on exactly the rows and order a preloaded Ray Data shard gave; several take
    disjoint shares of one size (DDP steps in lockstep), whatever order the driver read them in."""
    import numpy as np

    from lethe.data import to_chw_float
    from lethe.execution.worker import array_share, content_order

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (51, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, 51)
    x, y = torch.from_numpy(to_chw_float(images)), torch.from_numpy(labels)
    order = content_order(x, y)
    one_x, one_y = array_share(images, labels, 0, 1)
    assert torch.equal(one_x, x[order]) and torch.equal(one_y, y[order])

    perm = rng.permutation(51)
    shares = [array_share(images[perm], labels[perm], rank, 2) for rank in range(2)]
    assert [len(s[0]) for s in shares] == [25, 25]
    rows = {tuple(r.flatten().tolist()) for s in shares for r in s[0]}
    assert len(rows) == 50  # disjoint (random 8x8 images do not repeat)
    assert torch.equal(torch.cat([shares[0][0][:1], shares[1][0][:1]]), one_x[:2])
