"""Original vs unlearned vs oracle on held-out data (plain PyTorch, in the driver).

Outputs are inpaintings under the headline mask: the centre box covering about 40% of each side
(metrics[model][split][name]). Outpainting under a border mask is reported beside it, under
metrics_by_mask["outpaint"][model][split][name]. Every output comes from the family's own sampler
(single pass, MaskGIT, DDIM) with seeds fixed per batch, so every model starts from the same noise
and a rerun gives the same numbers. Forget-set pixels are used to compute numbers only; pictures
show held-out images, and none of the forget set for id requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lethe import masks, metrics
from lethe.report.grids import image_grid, mask_overlay

MODEL_NAMES = ("original", "unlearned", "oracle")


@dataclass
class EvalData:
    retain: torch.Tensor  # (N_r, C, H, W) held-out retain images
    forget: torch.Tensor  # (N_f, C, H, W) held-out forget images, or the requested images (ids)
    members: torch.Tensor  # forget images the original model was trained on (MIA positives)
    nonmembers: torch.Tensor  # comparable images no model was trained on (MIA negatives)
    show_forget: bool  # False for id requests: no picture may show the requested images
    retain_labels: torch.Tensor  # (N_r,) for the feature net's sanity accuracy


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
    errs = []
    for i in range(0, len(x), bs):
        xb = x[i : i + bs]
        m = masks.expand(mask, len(xb))
        errs.append(metrics.masked_mse_per_image(model(xb, m, mode="predict"), xb, m))
    return torch.cat(errs).numpy()


def features(featnet: nn.Module, x: torch.Tensor, bs: int = 500) -> np.ndarray:
    """Feature-net features (N, D) of images on the CPU, for FD baselines."""
    return _features(featnet, x, bs)


@torch.no_grad()
def model_fd(
    model: nn.Module,
    featnet: nn.Module,
    x: torch.Tensor,
    box_frac: float,
    truth_feats: np.ndarray,
    bs: int = 500,
) -> float:
    """FD between a model's centre-box inpaintings of x and the features of x itself.

    Runs on the model's device (a Ray Train worker may hold it on a GPU); leaves the model in the
    train/eval mode it was in. Used for tuning, where it is computed many times on a small subset.
    """
    device = next(model.parameters()).device
    _, _, h, w = x.shape
    mask = masks.box_mask(h, w, box_frac, model.mask_cell).to(device)
    was_training = model.training
    model.eval()
    featnet.eval()
    feats = []
    try:
        for i in range(0, len(x), bs):
            xb = x[i : i + bs].to(device)
            out = model.inpaint(xb, masks.expand(mask, len(xb)))
            feats.append(featnet.features(out).cpu())
    finally:
        model.train(was_training)
    return metrics.frechet_distance(torch.cat(feats).numpy(), truth_feats)


def split_metrics(
    outputs: torch.Tensor, truth: torch.Tensor, featnet: nn.Module, truth_feats: np.ndarray, bs: int
) -> dict[str, float]:
    feats = _features(featnet, outputs, bs)
    return {
        "psnr": metrics.psnr(outputs, truth),
        "ssim": metrics.ssim(outputs, truth),
        "fd": metrics.frechet_distance(feats, truth_feats),
        "embed_cos": metrics.embed_cos(feats, truth_feats),
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


def evaluate_models(
    models: dict[str, nn.Module],
    featnet: nn.Module,
    data: EvalData,
    box_frac: float,
    grid_rows: int,
    out_dir: Path,
    batch_size: int = 500,
    *,
    outpaint_frac: float | None = None,
    seed: int = 0,
) -> tuple[dict, dict[str, Path], dict]:
    """Returns metrics[model][split][name] under the centre box, grid paths, and extra facts:
    feature-net accuracy, the masks, the sampler, and (when `outpaint_frac` is given)
    extra["metrics_by_mask"]["outpaint"][model][split][name] under the border mask."""
    any_model = next(iter(models.values()))
    _, c, h, w = data.retain.shape
    cell = any_model.mask_cell
    mask_sets = {"box": masks.box_mask(h, w, box_frac, cell)}  # (1,1,H,W)
    if outpaint_frac is not None:
        mask_sets["outpaint"] = masks.border_mask(h, w, outpaint_frac, cell)
    truth = {"retain": data.retain, "forget": data.forget}
    truth_feats = {k: _features(featnet, v, batch_size) for k, v in truth.items()}
    by_mask: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    outputs: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for kind, mask in mask_sets.items():
        by_mask[kind], outputs[kind] = {}, {}
        for name, model in models.items():
            by_mask[kind][name], outputs[kind][name] = {}, {}
            for split, x in truth.items():
                out = _inpaint(model, x, mask, batch_size, seed)
                outputs[kind][name][split] = out
                by_mask[kind][name][split] = split_metrics(out, x, featnet, truth_feats[split], batch_size)
    # Membership inference under the headline mask only (the contract puts mia_auc there).
    box = mask_sets["box"]
    for name, model in models.items():
        mem = _recon_errors(model, data.members, box, batch_size)
        non = _recon_errors(model, data.nonmembers, box, batch_size)
        by_mask["box"][name]["forget"]["mia_auc"] = metrics.mia_auc(
            metrics.mia_scores_from_errors(mem), metrics.mia_scores_from_errors(non)
        )

    grids: dict[str, Path] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind, mask in mask_sets.items():
        for split, x in truth.items():
            if split == "forget" and not data.show_forget:
                continue
            per_model = {name: outputs[kind][name][split] for name in models}
            path = _grid(f"{split}_{kind}", x, mask, per_model, grid_rows, out_dir)
            if path is not None:
                grids[f"{split}_{kind}"] = path

    with torch.no_grad():
        logits = torch.cat(
            [featnet(data.retain[i : i + batch_size]) for i in range(0, len(data.retain), batch_size)]
        )
    extra: dict = {
        "mask": {**_mask_facts("centre_box", box_frac, box, [c, h, w]), "box_frac": box_frac},
        # The FD instrument must itself be good: report its accuracy on held-out retain data.
        "featnet_retain_accuracy": float((logits.argmax(1) == data.retain_labels).float().mean()),
        "sampler": {**any_model.sampler_info(), "seed": seed, "seed_per_batch": "seed + batch index"},
    }
    if "outpaint" in mask_sets:
        extra["outpaint_mask"] = _mask_facts(
            "border", float(outpaint_frac or 0), mask_sets["outpaint"], [c, h, w]
        )
        extra["metrics_by_mask"] = {"outpaint": by_mask["outpaint"]}
    return by_mask["box"], grids, extra
