"""Original vs unlearned vs oracle on held-out data (plain PyTorch, in the driver).

Outputs are inpaintings under the headline mask: the centre box covering about 40% of each side
(metrics[model][split][name]). Outpainting under a border mask is reported beside it, under
metrics_by_mask["outpaint"][model][split][name]. Every output comes from the family's own sampler
(single pass, MaskGIT, DDIM) with seeds fixed per batch, so every model starts from the same noise
and a rerun gives the same numbers. Forget-set pixels are used to compute numbers only; pictures
show held-out images, and none of the forget set for id requests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from lethe import masks, metrics
from lethe.evaluation import evidence
from lethe.report.grids import image_grid, mask_overlay

T = TypeVar("T")

MODEL_NAMES = ("original", "unlearned", "oracle")


@dataclass
class EvalData:
    retain: torch.Tensor  # (N_r, C, H, W) held-out retain images
    forget: torch.Tensor  # (N_f, C, H, W) held-out forget images, or the requested images (ids)
    members: torch.Tensor  # forget images the original model was trained on (MIA positives)
    nonmembers: torch.Tensor  # comparable images no model was trained on (MIA negatives)
    show_forget: bool  # False for id requests: no picture may show the requested images
    retain_labels: torch.Tensor  # (N_r,) for the feature net's sanity accuracy
    member_ids: tuple[str, ...] = ()  # ids of `members`, row by row (kept out of every output)


@torch.no_grad()
def _inpaint(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, bs: int, seed: int = 0) -> torch.Tensor:
    """The family's sampler, batch by batch; batch k uses seed + k whatever the model."""
    model.eval()
    out = [
        model.inpaint(x[i : i + bs], masks.expand(mask, len(x[i : i + bs])), seed=seed + k)
        for k, i in enumerate(range(0, len(x), bs))
    ]
    return torch.cat(out) if out else x.clone()


@torch.no_grad()
def _features(featnet: nn.Module, x: torch.Tensor, bs: int) -> np.ndarray:
    featnet.eval()
    return torch.cat([featnet.features(x[i : i + bs]) for i in range(0, len(x), bs)]).numpy()


@torch.no_grad()
def _recon_errors(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, bs: int) -> np.ndarray:
    """Per-image masked MSE of the single-pass prediction; mask (1,1,H,W) or one per image (N,1,H,W)."""
    errs = []
    for i in range(0, len(x), bs):
        xb = x[i : i + bs]
        m = masks.expand(mask, len(xb)) if mask.shape[0] == 1 else mask[i : i + bs]
        errs.append(metrics.masked_mse_per_image(model(xb, m, mode="predict"), xb, m))
    return torch.cat(errs).numpy()


def attack_masks(x: torch.Tensor, box: torch.Tensor, cell: int, ratio: float, n_random: int, seed: int):
    """The membership attack's masks: the headline box plus `n_random` random-cell masks per image,
    drawn from a fixed seed so every model is measured on the same ones."""
    gen = torch.Generator().manual_seed(seed)
    _, _, h, w = x.shape
    return [box] + [masks.random_mask(len(x), h, w, cell, ratio, gen) for _ in range(n_random)]


def attack_errors(model: nn.Module, x: torch.Tensor, mask_set: list[torch.Tensor], bs: int) -> np.ndarray:
    """Per-image reconstruction error averaged over the attack's masks: shape (N,)."""
    return np.mean([_recon_errors(model, x, m, bs) for m in mask_set], axis=0)


def features(featnet: nn.Module, x: torch.Tensor, bs: int = 500) -> np.ndarray:
    """Feature-net features (N, D) of images on the CPU, for FD baselines."""
    return _features(featnet, x, bs)


@torch.no_grad()
def model_scores(
    model: nn.Module,
    featnet: nn.Module,
    x: torch.Tensor,
    box_frac: float,
    truth_feats: np.ndarray,
    bs: int = 500,
    kind: str = "box",
) -> tuple[float, float]:
    """FD between a model's centre-box inpaintings of x (kind "border": outpaintings of a border
    `box_frac` of each side wide) and the features of x itself, and the mean per-image PSNR of those
    outputs against x (dB, as the retain PSNR gate measures it).

    Runs on the model's device (a Ray Train worker may hold it on a GPU); leaves the model in the
    train/eval mode it was in. Used for tuning, where it is computed many times on a small subset.
    """
    device = next(model.parameters()).device
    _, _, h, w = x.shape
    shape = masks.border_mask if kind == "border" else masks.box_mask
    mask = shape(h, w, box_frac, model.mask_cell).to(device)
    was_training = model.training
    model.eval()
    featnet.eval()
    feats, psnr = [], []
    try:
        for i in range(0, len(x), bs):
            xb = x[i : i + bs].to(device)
            out = model.inpaint(xb, masks.expand(mask, len(xb)))
            feats.append(featnet.features(out).cpu())
            psnr.append(metrics.psnr_per_image(out, xb))
    finally:
        model.train(was_training)
    return metrics.frechet_distance(torch.cat(feats).numpy(), truth_feats), float(np.concatenate(psnr).mean())


@dataclass
class Measured:
    """One model on one split under one mask: per-image values, FD and its bootstrap series."""

    per_image: dict[str, np.ndarray]  # psnr, ssim, embed_cos, oracle_dist: shape (N,)
    fd: float | None  # None: too few images for a Frechet distance (metrics.fd_min_samples)
    fd_series: np.ndarray | None  # FD under every bootstrap resample


def measure(
    out: torch.Tensor,
    truth: torch.Tensor,
    oracle_out: torch.Tensor | None,
    mask: torch.Tensor,
    featnet: nn.Module,
    truth_feats: np.ndarray,
    rs: evidence.Resamples | None,
    bs: int,
    truth_moments: evidence.TruthMoments | None = None,
) -> Measured:
    feats = _features(featnet, out, bs)
    m = masks.expand(mask, len(out))
    per_image = {
        "psnr": metrics.psnr_per_image(out, truth),
        "ssim": metrics.ssim_per_image(out, truth),
        "embed_cos": metrics.embed_cos_per_image(feats, truth_feats),
    }
    if oracle_out is not None:
        # How far each output is from what a model that never saw the image draws (hidden pixels).
        per_image["oracle_dist"] = metrics.masked_mse_per_image(out, oracle_out, m).double().numpy()
    if len(out) < metrics.fd_min_samples(feats.shape[1]):
        return Measured(per_image, None, None)
    fd = metrics.frechet_distance(feats, truth_feats)
    series = None if rs is None else evidence.fd_series(feats, truth_feats, rs, truth_moments)
    return Measured(per_image, fd, series)


def summarise(m: Measured, rs: evidence.Resamples | None) -> dict[str, object]:
    """metrics[model][split]: each figure, and with resamples its 95% interval as NAME_ci95."""
    out: dict[str, object] = {"fd": m.fd}
    for name, values in m.per_image.items():
        out[name] = float(values.mean())
    if rs is not None:
        out["fd_ci95"] = None if m.fd_series is None else evidence.percentile_ci(m.fd_series)
        for name, values in m.per_image.items():
            out[f"{name}_ci95"] = evidence.percentile_ci(evidence.mean_series(values, rs))
    return out


def fd_ratio_ci95(measured: dict[str, dict[str, Measured]]) -> dict[str, dict[str, list[float] | None]]:
    """Paired intervals of the FD ratios the gates read (same resamples in both models)."""

    def ci(split: str, a: str, b: str) -> list[float] | None:
        if a not in measured or b not in measured:  # no oracle in this run (cache.oracle = sample)
            return None
        sa, sb = measured[a][split].fd_series, measured[b][split].fd_series
        return None if sa is None or sb is None else evidence.ratio_ci(sa, sb)

    return {
        "forget": {
            "unlearned_vs_oracle": ci("forget", "unlearned", "oracle"),
            "original_vs_oracle": ci("forget", "original", "oracle"),
        },
        "retain": {"unlearned_vs_original": ci("retain", "unlearned", "original")},
    }


def _mask_facts(kind: str, frac: float, mask: torch.Tensor, shape: list[int]) -> dict:
    return {"kind": kind, "frac": frac, "hidden_pixels": int(mask.sum()), "image": shape}


def _grid(
    name: str, x: torch.Tensor, mask: torch.Tensor, outputs: dict[str, torch.Tensor], rows: int, out_dir: Path
) -> Path | None:
    k = min(rows, len(x))
    if k == 0:
        return None
    cols = [
        ("masked input", mask_overlay(x[:k].numpy(), masks.expand(mask, k).numpy())),
        ("ground truth", x[:k].numpy()),
    ]
    cols += [(model, out[:k].numpy()) for model, out in outputs.items()]
    return image_grid(cols, out_dir / f"grid_{name}.png")


@dataclass
class EvalSettings:
    box_frac: float
    grid_rows: int
    out_dir: Path
    batch_size: int = 500
    outpaint_frac: float | None = None
    seed: int = 0
    bootstrap: int = 200  # resamples per interval (0: no intervals)
    attack_masks: int = 4  # random-cell masks besides the box in the membership attack
    attack_mask_ratio: float = 0.5
    # progress(done, total) after each unit of work (a model's inpaintings or measures of one split
    # under one mask, a model's membership attack): the caller's progress bar; None: silent.
    progress: Callable[[int, int], None] | None = None


class _Ticks:
    """Counts units of work for EvalSettings.progress; `tick(x)` returns x, so it wraps a result."""

    def __init__(self, report: Callable[[int, int], None] | None, total: int) -> None:
        self.report, self.total, self.done = report, total, 0

    def __call__(self, result: T) -> T:
        self.done += 1
        if self.report is not None:
            self.report(min(self.done, self.total), self.total)
        return result


def _inpaint_all(models, truth, mask_sets, bs: int, seed: int, tick: _Ticks):
    """outputs[mask kind][model][split]: every model's inpaintings under every mask."""
    return {
        kind: {
            name: {split: tick(_inpaint(model, x, mask, bs, seed)) for split, x in truth.items()}
            for name, model in models.items()
        }
        for kind, mask in mask_sets.items()
    }


def _membership(
    models, data: EvalData, box: torch.Tensor, st: EvalSettings, tick: _Ticks
) -> tuple[dict[str, evidence.AttackFigures], dict[str, np.ndarray]]:
    """The calibrated attack on every model, the oracle as the reference (its score is 0: AUC 0.5);
    and every model's per-member scores (N_members,), row by row as data.members. No oracle, no
    reference: no attack (an uncalibrated one has no power here, see lethe.evaluation.evidence)."""
    if "oracle" not in models:
        return {}, {}
    cell = next(iter(models.values())).mask_cell
    mask_mem = attack_masks(data.members, box, cell, st.attack_mask_ratio, st.attack_masks, st.seed + 101)
    mask_non = attack_masks(data.nonmembers, box, cell, st.attack_mask_ratio, st.attack_masks, st.seed + 202)
    errs = {
        name: tick(
            (
                attack_errors(m, data.members, mask_mem, st.batch_size),
                attack_errors(m, data.nonmembers, mask_non, st.batch_size),
            )
        )
        for name, m in models.items()
    }
    ref_mem, ref_non = errs["oracle"]
    member_scores = {name: evidence.calibrated_scores(e_mem, ref_mem) for name, (e_mem, _) in errs.items()}
    figures = {
        name: evidence.attack_figures(
            member_scores[name], evidence.calibrated_scores(e_non, ref_non), st.bootstrap, st.seed + 303
        )
        for name, (_, e_non) in errs.items()
    }
    return figures, member_scores


def _grids(data: EvalData, mask_sets, outputs, models, st: EvalSettings) -> dict[str, Path]:
    truth = {"retain": data.retain, "forget": data.forget}
    grids: dict[str, Path] = {}
    st.out_dir.mkdir(parents=True, exist_ok=True)
    for kind, mask in mask_sets.items():
        for split, x in truth.items():
            if split == "forget" and not data.show_forget:
                continue
            per_model = {name: outputs[kind][name][split] for name in models}
            path = _grid(f"{split}_{kind}", x, mask, per_model, st.grid_rows, st.out_dir)
            if path is not None:
                grids[f"{split}_{kind}"] = path
    return grids


def _resamples(truth: dict[str, torch.Tensor], truth_feats: dict[str, np.ndarray], st: EvalSettings):
    """Per split: the bootstrap resamples every model shares, and the truth's moments under them
    (every model under every mask is compared with the same truth under the same resamples); no
    moments for a split too small for a Frechet distance (one image: no covariance at all)."""
    resamples = {
        split: evidence.Resamples.draw(len(x), st.bootstrap, st.seed + i) if st.bootstrap else None
        for i, (split, x) in enumerate(truth.items())
    }
    moments = {
        split: evidence.TruthMoments.of(truth_feats[split], rs)
        if rs is not None and len(truth_feats[split]) >= metrics.fd_min_samples(truth_feats[split].shape[1])
        else None
        for split, rs in resamples.items()
    }
    return resamples, moments


def evaluate_models(
    models: dict[str, nn.Module], featnet: nn.Module, data: EvalData, st: EvalSettings
) -> tuple[dict, dict[str, Path], dict]:
    """Returns metrics[model][split][name] under the centre box (with NAME_ci95 intervals), grid
    paths, and extra facts: feature-net accuracy, the masks, the sampler, the membership attack's
    figures (extra["attack"][model]), the paired FD-ratio intervals (extra["fd_ratio_ci95"][mask]),
    and with `outpaint_frac` extra["metrics_by_mask"]["outpaint"][model][split][name]."""
    any_model = next(iter(models.values()))
    _, c, h, w = data.retain.shape
    cell = any_model.mask_cell
    mask_sets = {"box": masks.box_mask(h, w, st.box_frac, cell)}  # (1,1,H,W)
    if st.outpaint_frac is not None:
        mask_sets["outpaint"] = masks.border_mask(h, w, st.outpaint_frac, cell)
    truth = {"retain": data.retain, "forget": data.forget}
    truth_feats = {k: _features(featnet, v, st.batch_size) for k, v in truth.items()}
    resamples, truth_moments = _resamples(truth, truth_feats, st)
    per_pass = len(mask_sets) * len(models) * len(truth)  # inpainting, then measuring
    tick = _Ticks(st.progress, 2 * per_pass + (len(models) if "oracle" in models else 0))
    outputs = _inpaint_all(models, truth, mask_sets, st.batch_size, st.seed, tick)
    by_mask: dict[str, dict] = {}
    ratio_cis: dict[str, dict] = {}
    for kind, mask in mask_sets.items():
        measured = {
            name: {
                split: tick(
                    measure(
                        outputs[kind][name][split],
                        x,
                        outputs[kind]["oracle"][split] if "oracle" in models else None,
                        mask,
                        featnet,
                        truth_feats[split],
                        resamples[split],
                        st.batch_size,
                        truth_moments[split],
                    )
                )
                for split, x in truth.items()
            }
            for name in models
        }
        # Intervals on the headline mask; the other masks' figures are points.
        by_mask[kind] = {
            name: {
                split: summarise(m, resamples[split] if kind == "box" else None) for split, m in per.items()
            }
            for name, per in measured.items()
        }
        ratio_cis[kind] = fd_ratio_ci95(measured)
    attack, member_scores = _membership(models, data, mask_sets["box"], st, tick)
    for name, fig in attack.items():
        by_mask["box"][name]["forget"].update(fig.as_metrics())
    grids = _grids(data, mask_sets, outputs, models, st)
    with torch.no_grad():
        logits = torch.cat(
            [featnet(data.retain[i : i + st.batch_size]) for i in range(0, len(data.retain), st.batch_size)]
        )
    box = mask_sets["box"]
    extra: dict = {
        "mask": {**_mask_facts("centre_box", st.box_frac, box, [c, h, w]), "box_frac": st.box_frac},
        # The FD instrument must itself be good: report its accuracy on held-out retain data.
        "featnet_retain_accuracy": float((logits.argmax(1) == data.retain_labels).float().mean()),
        "sampler": {**any_model.sampler_info(), "seed": st.seed, "seed_per_batch": "seed + batch index"},
        "fd_min_samples": metrics.fd_min_samples(truth_feats["retain"].shape[1]),
        "bootstrap": {"resamples": st.bootstrap, "interval": "percentile, 95%", "unit": "evaluation image"},
        "attack": attack,
        "member_scores": member_scores,  # per image: for per-request evidence, never for the report
        "fd_ratio_ci95": ratio_cis,
        "n_members": len(data.members),
        "n_nonmembers": len(data.nonmembers),
    }
    if "outpaint" in mask_sets:
        extra["outpaint_mask"] = _mask_facts(
            "border", float(st.outpaint_frac or 0), mask_sets["outpaint"], [c, h, w]
        )
        extra["metrics_by_mask"] = {"outpaint": by_mask["outpaint"]}
    return by_mask["box"], grids, extra
