"""What a kind of family does differently in the pipeline's steps, behind one interface.

Image-to-image families (MAE, VQ-GAN, diffusion: masked images in, reconstructions out) and
generator families (GAN, VAE: latents in, samples out) pretrain, unlearn, evaluate and gate
differently; the step modules ask `lethe.pipeline.families.for_config(cfg)` for the family's
`StepFamily` once and never branch on the kind themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from lethe.config import RunConfig
from lethe.execution.job import TrainJob


@dataclass
class UnlearnPlan:
    job: TrainJob
    datasets: Any  # what fit() takes: a mapping of inputs, or a function that reads them
    settings: Any  # what names the Ray Train run (with the request, recipe and original model)
    extra_state: dict[str, Any] = field(default_factory=dict)  # recorded in the run state's unlearn
    on_done: Callable[[Any], None] | None = None  # called with fit's result
    # Best-checkpoint keeping: the evaluator's inputs (lethe.pipeline.validation) when the run scores
    # its checkpoints, and otherwise why not (for the report)
    eval_payload: dict[str, Any] | None = None
    no_selection: str | None = None


@dataclass
class Evaluation:
    metrics: dict[str, Any]  # metrics[model][split][name]
    grids: dict[str, Path]  # picture name -> PNG
    extra: dict[str, Any]  # the report's evaluation section (sampler, ...)
    complete: Callable[[dict[str, Any]], None] | None = None  # adds the kind's sections to the report


class StepFamily(Protocol):
    tunable: bool  # whether `lethe tune` has an objective for this kind

    def arch(self, cfg: RunConfig, man) -> dict[str, Any]: ...

    def model_info(self, cfg: RunConfig) -> dict[str, Any]: ...

    def pretrain_job(self, cfg: RunConfig, man, n_rows: int, meta: dict[str, Any]) -> TrainJob: ...

    def auxiliary_models(self, ctx, man) -> dict[str, Any]: ...

    def check_tunable(self, cfg: RunConfig) -> None: ...

    def unlearn_params(self, cfg: RunConfig, u: Any) -> dict[str, Any]: ...

    def plan_unlearn(
        self, ctx, man, arch: dict[str, Any], teacher: torch.nn.Module, u: Any, tuned: bool
    ) -> UnlearnPlan: ...

    def eval_params(self, cfg: RunConfig) -> dict[str, Any]: ...

    def evaluate(
        self, ctx, man, arch: dict[str, Any], models: dict[str, torch.nn.Module], featnet
    ) -> Evaluation: ...

    def promotion(
        self, cfg: RunConfig, man, model: torch.nn.Module, report: dict[str, Any]
    ) -> tuple[tuple, Any]: ...
