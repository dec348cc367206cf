"""decouple_retain (Varshney & Torra, DESIGN.md 2.2) in the pipeline: lambda's calibration from the
original model, the method's job options, and what the report says about how decoupling went."""

from __future__ import annotations

import os
from typing import Any

import torch

from lethe.config import RunConfig
from lethe.errors import DataError
from lethe.pipeline.jobs import mask_spec


def calibrate_decouple(
    cfg: RunConfig, man, arch: dict[str, Any], teacher: torch.nn.Module, u
) -> dict[str, Any]:
    """decouple_retain's lambda from the original model (driver side, plain PyTorch, a small sample).

    The rule (lethe.methods.calibrate_lambda): lambda = lambda_factor * mean (or lambda_quantile)
    of the original's per-image masked MSE, in "predict" mode and with the mask kind the unlearning
    uses, on the first `calibration_images` held-out retain images (never trained on). Only a scalar
    leaves this function; no image or id is logged.
    """
    from lethe import masks
    from lethe.data import read_shard_numpy, to_chw_float
    from lethe.methods import calibrate_lambda

    d = u.decouple
    imgs, _labels, _ids = read_shard_numpy(man, "heldout_retain", limit=d.calibration_images)
    if len(imgs) == 0:
        raise DataError(
            "decouple_retain needs held-out retain images to calibrate lambda",
            where="heldout_retain",
            expected="at least one image",
            seen="0",
        )
    x = torch.from_numpy(to_chw_float(imgs).copy())
    spec = mask_spec(cfg, arch)
    h, w, cell = spec["height"], spec["width"], spec["cell"]
    if u.mask == "box":
        mask = masks.box_mask(h, w, spec["box_frac"], cell)
    else:
        mask = masks.random_mask(len(x), h, w, cell, spec["ratio"], torch.Generator().manual_seed(cfg.seed))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    cal = calibrate_lambda(teacher, x, mask, d.lambda_factor, d.lambda_quantile, seed=cfg.seed)
    rule = (
        f"lambda = {d.lambda_factor:g} x "
        + ("mean" if d.lambda_quantile is None else f"q{d.lambda_quantile:g} quantile")
        + f" of the original model's per-image masked MSE ({u.mask} mask, predict mode) on "
        f"{cal['n_images']} held-out retain images"
    )
    return {**cal, "rule": rule, "quantile": d.lambda_quantile}


def method_options(u, calibration: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, float]]:
    """Constructor options and per-stage learning rates of the run's method, for the TrainJob."""
    if calibration is None:
        return {}, {}
    d = u.decouple
    options = {
        "lam": float(calibration["lambda"]),
        "max_ascent_steps": d.max_ascent_steps,
        "retain_steps": d.retain_steps,
        "distill": d.distill,
    }
    return options, ({"decouple": d.ascent_lr} if d.ascent_lr else {})


def decouple_summary(calibration: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """What report.json says about a decouple_retain run: lambda, its rule, how decoupling ended."""
    return {
        "lambda": float(calibration["lambda"]),
        "lambda_rule": str(calibration["rule"]),
        "heldout_mse_mean": float(calibration["heldout_mse_mean"]),
        "calibration_images": int(calibration["n_images"]),
        "ascent_steps": int(metrics.get("method_ascent_steps", 0)),
        "lambda_reached": bool(metrics.get("method_reached", False)),
        "final_distance": float(metrics.get("method_distance", 0.0)),
        "retain_steps": int(metrics.get("method_retain_done", 0)),
    }


def decouple_check(
    cfg: RunConfig, arch: dict[str, Any], models: dict[str, torch.nn.Module], x_forget: torch.Tensor
) -> dict[str, float]:
    """How the lambda rule compares with the truth it stands for: the oracle's distance from the
    original on held-out forget data (same measure, centre box), beside the unlearned model's."""
    from lethe import masks
    from lethe.methods import output_distance

    spec = mask_spec(cfg, arch)
    box = masks.box_mask(spec["height"], spec["width"], spec["box_frac"], spec["cell"])
    x = x_forget[: cfg.unlearn.decouple.calibration_images]
    orig = models["original"]
    return {
        "oracle_distance_to_original": output_distance(models["oracle"], orig, x, box, seed=cfg.seed),
        "unlearned_distance_to_original": output_distance(models["unlearned"], orig, x, box, seed=cfg.seed),
    }
