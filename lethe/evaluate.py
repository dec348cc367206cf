"""Original vs unlearned vs oracle on held-out data (plain PyTorch, in the driver).

Outputs are inpaintings under the headline mask: the centre box covering about 40% of each side.
Forget-set pixels are used to compute numbers only; pictures show held-out images, and none of the
forget set for id requests.
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
def _inpaint(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, bs: int) -> torch.Tensor:
    model.eval()
    out = [model.inpaint(x[i : i + bs], masks.expand(mask, len(x[i : i + bs]))) for i in range(0, len(x), bs)]
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


def evaluate_models(
    models: dict[str, nn.Module],
    featnet: nn.Module,
    data: EvalData,
    box_frac: float,
    grid_rows: int,
    out_dir: Path,
    batch_size: int = 500,
) -> tuple[dict, dict[str, Path], dict]:
    """Returns metrics[model][split][name], grid paths, and extra facts (feature-net accuracy, mask)."""
    any_model = next(iter(models.values()))
    _, c, h, w = data.retain.shape
    mask = masks.box_mask(h, w, box_frac, any_model.mask_cell)  # (1,1,H,W)
    truth = {"retain": data.retain, "forget": data.forget}
    truth_feats = {k: _features(featnet, v, batch_size) for k, v in truth.items()}
    result: dict[str, dict[str, dict[str, float]]] = {}
    outputs: dict[str, dict[str, torch.Tensor]] = {}
    for name, model in models.items():
        result[name], outputs[name] = {}, {}
        for split, x in truth.items():
            out = _inpaint(model, x, mask, batch_size)
            outputs[name][split] = out
            result[name][split] = split_metrics(out, x, featnet, truth_feats[split], batch_size)
        mem = _recon_errors(model, data.members, mask, batch_size)
        non = _recon_errors(model, data.nonmembers, mask, batch_size)
        result[name]["forget"]["mia_auc"] = metrics.mia_auc(
            metrics.mia_scores_from_errors(mem), metrics.mia_scores_from_errors(non)
        )

    grids: dict[str, Path] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, x in truth.items():
        if split == "forget" and not data.show_forget:
            continue
        k = min(grid_rows, len(x))
        if k == 0:
            continue
        cols = [
            ("masked input", mask_overlay(x[:k].numpy(), masks.expand(mask, k).numpy())),
            ("ground truth", x[:k].numpy()),
        ]
        cols += [(name, outputs[name][split][:k].numpy()) for name in models]
        grids[f"{split}_box"] = image_grid(cols, out_dir / f"grid_{split}_box.png")

    with torch.no_grad():
        logits = torch.cat(
            [featnet(data.retain[i : i + batch_size]) for i in range(0, len(data.retain), batch_size)]
        )
    extra = {
        "mask": {
            "kind": "centre_box",
            "box_frac": box_frac,
            "hidden_pixels": int(mask.sum()),
            "image": [c, h, w],
        },
        # The FD instrument must itself be good: report its accuracy on held-out retain data.
        "featnet_retain_accuracy": float((logits.argmax(1) == data.retain_labels).float().mean()),
    }
    return result, grids, extra
