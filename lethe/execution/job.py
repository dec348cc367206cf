"""What a Ray Train run is asked to do, shared by the driver (lethe.execution.fit) and the workers.

The driver builds a `TrainJob`; the workers receive it as a dict (`to_config`) and report lethe
checkpoints made of `MODEL_FILE` and `STATE_FILE`. `stage_budgets` is here because both sides use it:
the driver to size an unlearning run's inputs, the workers to run that many steps. Nothing here
imports Ray.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
# Written by lethe next to Ray Train's run folder once a run has finished: re-running the same run
# (same name and storage_path) returns this result instead of starting worker groups again.
FINISHED_FILE = "lethe_finished.json"
# Fault injection for tests and drills: rank 0 of an unlearning run dies (os._exit) at this step on
# the first attempt. An environment variable, not a config field, so it never changes run names.
FAULT_ENV = "LETHE_FAULT_UNLEARN_STEP"


@dataclass
class TrainJob:
    kind: str  # "pretrain" | "featnet" | "unlearn" | "gen_pretrain" | "feature_unlearn"
    model_kind: str  # a family of lethe.models.families, or "featnet"
    arch: dict[str, Any]
    batch_size: int
    lr: float
    weight_decay: float
    warmup_frac: float
    n_rows: int  # global rows of the main dataset ("train" or "forget")
    seed: int = 0
    threads: int = 1
    epochs: int = 1
    mask: dict[str, Any] = field(default_factory=dict)  # MaskSpec fields
    # pretraining: the family's phase of each epoch (VQ-GAN: tokenizer..., transformer...); empty = one
    phases: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # stored in the final checkpoint
    # unlearning only
    method: str = ""
    alpha: float = 0.0
    noise: str = "gaussian"
    # constructor settings of a method that has them (decouple_retain: lam, max_ascent_steps, ...)
    method_options: dict[str, Any] = field(default_factory=dict)
    stage_lr: dict[str, float] = field(default_factory=dict)  # per-stage lr overriding `lr`
    unlearn_mask: str = "box"
    passes: float = 1.0
    max_steps: int | None = None
    min_steps: int | None = None
    grad_clip: float | None = None
    checkpoint_every: int = 50
    # Best-checkpoint keeping: with an evaluator (fit's eval_payload), score every eval_every steps
    # too; fit then hands on the checkpoint with the lowest objective. None: checkpoint_every only.
    eval_every: int | None = None
    # Replaying a search trial (lethe.pipeline.replay): end after this step, scoring only it (the
    # trial scored the others). The step budget, and with it the lr schedule, stay the whole run's.
    stop_at: int | None = None
    checkpoint_interval_s: float = 0.0  # epochs: checkpoint when this long since the last; 0: each
    cache_mb: float = 1024.0  # keep a worker's shard in memory after one pass when it fits
    fail_at_step: int | None = None  # fault injection for tests: rank 0 exits once at this step
    # classifiers: class index -> training label (the binary feature classifier: 1 = has the feature)
    label_map: list[int] = field(default_factory=list)
    # feature unlearning: lethe.methods.latent_feature.FeatureDirection.to_dict()
    direction: dict[str, Any] = field(default_factory=dict)

    def to_config(self) -> dict[str, Any]:
        return asdict(self)


def reports_at(step: int, last: bool, checkpoint_every: int, eval_every: int | None) -> bool:
    """Does an unlearning run report (and, with an evaluator, score) after `step` steps: every
    checkpoint_every, every eval_every, and its last step. The one rule of the loop, the search's
    report count and the replay (lethe.execution.loops, lethe.execution.tune, lethe.pipeline.replay)."""
    return last or step % checkpoint_every == 0 or bool(eval_every) and step % eval_every == 0


def scored_steps(last: int, checkpoint_every: int, eval_every: int | None) -> list[int]:
    """The steps at which an unlearning run that ends after `last` steps reports (`reports_at`)."""
    return [s for s in range(1, last + 1) if reports_at(s, s == last, checkpoint_every, eval_every)]


def job_method(job: dict[str, Any]):
    """The unlearning method (lethe.methods) a job dict names, built with its noise and options."""
    from lethe.methods import get_method

    return get_method(job["method"], noise=job["noise"], options=job.get("method_options") or None)


def stage_budgets(job: dict[str, Any], world: int, method=None) -> dict[str, int]:
    """Step budget of each stage of an unlearning job on `world` workers (their sum is the most
    steps it runs: a multi-stage method may finish earlier). Driver and workers use this one rule."""
    from lethe.optim import unlearn_total_steps

    base = unlearn_total_steps(
        job["n_rows"], job["batch_size"], world, job["passes"], job["max_steps"], job.get("min_steps")
    )
    return dict((method or job_method(job)).stages(base))
