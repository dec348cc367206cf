"""The recipe sections: pretraining, unlearning (and its method-specific parts), the feature network,
evaluation and the Ray Tune search."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from lethe.catalogue import I2I_METHODS
from lethe.config.base import _Strict


class TrainConfig(_Strict):
    """Recipe shared by the original model and the oracle (the oracle must use the same one)."""

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1.5e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_frac: float = Field(0.1, ge=0, lt=1)
    mask_ratio: float = Field(0.5, gt=0, lt=1)
    # Share of pretraining batches masked with the evaluation box instead of random patches.
    box_mask_prob: float = Field(0.0, ge=0, le=1)


class DecoupleConfig(_Strict):
    """decouple_retain (Varshney & Torra 2025, DESIGN.md 2.2); ignored by the other methods.

    lambda = lambda_factor * (mean, or the lambda_quantile quantile, of the original model's
    per-image masked MSE on `calibration_images` held-out retain images it never saw).
    """

    lambda_factor: float = Field(1.0, gt=0, description="lambda = factor * the original's held-out error")
    lambda_quantile: float | None = Field(
        None, gt=0, lt=1, description="None: the mean of the per-image errors; else this quantile"
    )
    calibration_images: int = Field(256, ge=1, description="held-out retain images for the calibration")
    max_ascent_steps: int = Field(100, ge=1, description="decoupling always ends: at lambda or this cap")
    ascent_lr: float | None = Field(None, gt=0, description="lr of the ascent stage; None: unlearn.lr")
    # Measured on the demo (Fashion-MNIST, forget Trouser, MAE; benchmarks/methods_vs_oracle.py): 3
    # ascent steps reach lambda; then 141 retention steps with distill 1.0 pull the model back to the
    # original on forget too (forget FD 37 vs oracle 72, distance to the original 0.013 vs the
    # oracle's 0.074), while 30 steps without distillation end at forget FD 74.7 (oracle 72.4) with
    # retain FD x1.04. Distilling to the original on retain re-couples the forget behaviour.
    retain_steps: int | None = Field(
        30, ge=1, description="knowledge-retention steps; None: the usual unlearning step count"
    )
    distill: float = Field(0.0, ge=0, description="weight of distillation to the original on retain; 0: off")


class UnlearnConfig(_Strict):
    alpha: float = Field(0.2, ge=0)
    lr: float = Field(1e-3, gt=0)
    # lethe.pipeline.lr_rule: the demo's 47 steps at lr 1e-3 add 4.6% of its original's summed
    # pretraining lr; on 5,000-image data sets the same lr added 36-40% and left the model farther
    # from the oracle than doing nothing (docs/tuning.md). 0.05 keeps the demo at its measured lr.
    lr_rule: Literal["relative", "fixed"] = Field(
        "relative",
        description="relative: lr is at most lr_share of the original's pretraining (its summed lr), "
        "never above unlearn.lr, where lethe pretrained the original; fixed: unlearn.lr as given",
    )
    lr_share: float = Field(
        0.05, gt=0, le=1, description="relative lr rule: the unlearning's summed lr / the pretraining's"
    )
    batch_size: int = Field(64, ge=1, description="per side: forget and retain batches each")
    # Measured on the demo (Fashion-MNIST, forget Trouser, 2 cores, one original/oracle pair, see
    # docs/methods/encoder_noise.md): 1.5 passes at lr 5e-4: forget FD x5.66, retain FD x1.021, PSNR -0.06 dB,
    # unlearning/oracle loop time 0.15; 0.5 passes at lr 1e-3: forget FD x5.64, retain FD x1.023,
    # PSNR -0.15 dB, loop time 0.07; 0.5 at 5e-4: retain FD x1.069; 0.3 at 1e-3: retain FD x1.059.
    # The loop's compute is proportional to passes, so 0.5 at the higher rate is the default.
    forget_passes: float = Field(0.5, gt=0)
    max_steps: int | None = Field(None, ge=1)
    proxy_retain: str | None = Field(
        None,
        description="a data set (as --dataset takes) whose images stand in for the retain side of the "
        "unlearning loss (Li et al.'s proxy retain set), when the training data is no longer kept; "
        "evaluation, validation and the oracle still use the request's own shards",
    )
    # A request of a few images is one step by passes alone, and Adam's first step moves every weight
    # by about lr whatever the gradient (the retain term is still 0 then): on the demo one step for
    # 1 / 5 / 50 ids cost retain FD 1.77 / 2.0 / 2.18x the source's. At 30 steps the retain term pulls
    # back: 1 id, retain FD 0.88x, PSNR +0.1 dB, promoted (docs/evidence.md, requests of any size).
    min_steps: int | None = Field(30, ge=1, description="at least this many steps (max_steps still caps)")
    weight_decay: float = Field(0.05, ge=0)
    grad_clip: float = Field(3.0, gt=0)
    warmup_frac: float = Field(0.1, ge=0, lt=1)
    noise: Literal["gaussian", "uniform", "constant"] = "gaussian"
    # Random-cell masks (pretrain.mask_ratio of the cells), not the evaluation box: the gates then
    # measure the unlearning on masks it never trained on (the centre box and the outpainting border).
    mask: Literal["box", "random"] = "random"
    checkpoint_every: int = Field(50, ge=1)
    # Image-to-image families: the run scores its model on validation images every eval_every steps
    # with the tune objective and hands on the best of them, not the last (issue 14: a run that
    # over-forgets ends farther from the oracle than it was halfway).
    keep_best: bool = Field(
        True,
        description="keep the checkpoint with the best validation objective, not the last (needs the "
        "oracle and held-out forget images: class requests)",
    )
    eval_every: int = Field(5, ge=1, description="steps between validation scores when keep_best")
    decouple: DecoupleConfig = Field(default_factory=DecoupleConfig)

    def settings(self, method: str) -> dict[str, Any]:
        """What changes an unlearning run of `method`: method-specific sections only for their method
        (so adding one never renames, and re-trains, the runs of the others)."""
        d = self.model_dump()
        if method not in ("decouple_retain", "auto"):  # auto may choose decouple_retain
            d.pop("decouple")
        return d


class FeatNetConfig(_Strict):
    """The project's own classifier whose features define FD (never called FID)."""

    epochs: int = Field(2, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-3, gt=0)
    width: int = Field(32, ge=4)
    feat_dim: int = Field(128, ge=8)


class FeatureUnlearnConfig(_Strict):
    """Latent feature unlearning (DESIGN.md 2.3) and its evaluation; alpha, lr, batch size and
    max_steps come from `unlearn`."""

    n_label: int = Field(2000, ge=10, description="latents sampled and labelled to find the direction")
    classifier_epochs: int = Field(3, ge=1, description="binary feature classifier (feature vs not)")
    classifier_width: int = Field(32, ge=4)
    n_eval: int = Field(2000, ge=10, description="fixed seeded latents for flagged share, FD, class score")
    attack_n: int = Field(256, ge=1, description="PGD starts per model")
    attack_eps: float = Field(0.5, gt=0, description="L_inf radius around each N(0, I) start, latent units")
    attack_step: float = Field(0.05, gt=0)
    attack_steps: int = Field(20, ge=1)
    flagged_oracle_tol: float = Field(
        1.0,
        ge=0,
        description="gates: flagged share of the unlearned model <= (1 + x) * max(the oracle's, 1/n_eval), "
        "and the source's above that bound",
    )
    fd_tol: float = Field(
        0.2,
        ge=0,
        description="gate: sample FD vs held-out images without the feature, unlearned <= (1 + y) * original's",
    )


class EvalConfig(_Strict):
    box_frac: float = Field(12 / 28, gt=0, lt=1, description="side of the centre box as a share of each side")
    outpaint: bool = Field(True, description="also evaluate outpainting (border mask), under metrics_by_mask")
    outpaint_frac: float = Field(
        4 / 28, gt=0, lt=0.5, description="width of the hidden border as a share of each side"
    )
    n_forget: int = Field(1000, ge=2)
    n_retain: int = Field(2000, ge=2)
    n_mia: int = Field(1000, ge=2)
    grid_rows: int = Field(8, ge=1, le=32)
    batch_size: int = Field(500, ge=1)
    bootstrap: int = Field(200, ge=0, description="bootstrap resamples per 95% interval (0: no intervals)")
    attack_masks: int = Field(
        4, ge=0, description="random-cell masks per image besides the box in the membership attack"
    )
    mia_min_members: int = Field(
        20, ge=1, description="fewer forget images than this: membership evidence is inconclusive"
    )
    request_min_images: int = Field(
        5,
        ge=2,
        description="fewer of a stored request's images among the evaluated ones: its own evidence "
        "(still forgotten?) is inconclusive",
    )


SEARCH_ORDER: tuple[str, ...] = (
    "encoder_noise",
    "decouple_retain",
    "retain_label",
    "noisy_label",
    "finetune_retain",
    "max_loss",
    "random_encoder",
)


class TuneConfig(_Strict):
    """Ray Tune search over unlearning alpha and learning rate, ASHA early stopping.

    Objective (lower is better), on held-out validation images disjoint from the evaluation ones:
    |log(FD_forget(unlearned) / FD_forget(oracle))| + retain_weight * max(0, FD_retain(unlearned) /
    FD_retain(original) - 1) + psnr_weight * max(0, 10^((PSNR_retain(original) - PSNR_retain(unlearned))
    / 10) - 1), plus gate_weight times how far the retain figures pass ceilings at gate_margin of the
    retain gates' limits (lethe.metrics.retain_gate_excess).
    """

    enabled: bool = Field(
        False,
        description="`lethe run` tunes first and unlearns with the best config (always on for method auto)",
    )
    # method auto: the methods searched, in this order (a short budget reaches only the first ones):
    # the papers' two methods, then the baselines by their scores on the demo (docs/tuning.md), the
    # baselines that damage the most last. Each starts at the configured alpha / lr, then random ones.
    methods: tuple[str, ...] = Field(
        SEARCH_ORDER,
        min_length=1,
        description="method auto: the image-to-image methods it chooses among, in the order tried; the "
        "first also runs when there is nothing to search on",
    )
    samples_per_method: int = Field(2, ge=1, description="method auto: trials of each method")
    budget_frac: float | None = Field(
        0.5,
        gt=0,
        description="method auto: the search stops after this share of the oracle's training wall time "
        "(None: no time limit; every trial runs)",
    )
    min_budget_s: float = Field(
        60.0,
        ge=0,
        description="method auto: the search's budget is at least this (a trial's start-up alone takes "
        "seconds, so a share of an oracle trained in seconds would run nothing)",
    )
    num_samples: int = Field(8, ge=1)
    max_concurrent_trials: int = Field(2, ge=1)
    cpus_per_trial: float = Field(
        0.25,
        gt=0,
        description="the Tune function that runs a trial (a one-worker CPU trial also holds its cpus_per_worker)",
    )
    workers_per_trial: int = Field(1, ge=1, description="Ray Train workers of each trial")
    cpus_per_worker: float = Field(0.5, gt=0, description="fractional CPUs let trials share small machines")
    alpha_range: tuple[float, float] = (0.02, 2.0)
    lr_range: tuple[float, float] = (1e-4, 2e-3)
    grace_period: int = Field(1, ge=1, description="ASHA: evaluations a trial gets before it may be stopped")
    reduction_factor: int = Field(2, ge=2)
    retain_weight: float = Field(1.0, ge=0, description="w in the objective")
    psnr_weight: float = Field(
        1.0,
        ge=0,
        description="v in the objective: the retain PSNR drop, as the pixel-error ratio it stands for",
    )
    gate_margin: float = Field(
        0.8,
        gt=0,
        le=1,
        description="a validation retain figure past this share of its gate's limit (retain FD ratio - 1, "
        "PSNR drop) counts as a gate failure: validation images are not the evaluated ones",
    )
    gate_weight: float = Field(
        0.0,
        ge=0,
        description="what the objective adds per unit of retain excess past those ceilings, in its own "
        "units (0, the default: off, the soft retain terms alone; docs/tuning.md has when it helped and hurt)",
    )
    val_forget: int = Field(200, ge=8, description="validation images from the end of heldout_forget")
    val_retain: int = Field(400, ge=8, description="validation images from the end of heldout_retain")

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [m for m in v if m not in I2I_METHODS]
        if unknown or len(set(v)) != len(v):
            raise ValueError(
                f"expected distinct image-to-image methods ({', '.join(I2I_METHODS)}), got {list(v)}"
            )
        return v

    @field_validator("alpha_range", "lr_range")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo < hi:
            raise ValueError(
                f"expected [low, high] with 0 < low < high (searched on a log scale), got {list(v)}"
            )
        return v
