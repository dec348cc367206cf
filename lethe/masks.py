"""Pixel-space masks aligned to a model's cell grid (patch / token size).

A mask is a float tensor (N, 1, H, W) with 1 where the input is hidden. Every family reads the same
pixel mask and converts it to its own granularity, so an image and its noise partner always share
one mask (DESIGN.md 2.1).
"""

from __future__ import annotations

import math

import torch


def grid_shape(height: int, width: int, cell: int) -> tuple[int, int]:
    return math.ceil(height / cell), math.ceil(width / cell)


def box_mask(height: int, width: int, frac: float, cell: int = 1) -> torch.Tensor:
    """Centre box covering about `frac` of each side, snapped to whole cells: (1, 1, H, W)."""
    gh, gw = grid_shape(height, width, cell)
    bh, bw = max(1, round(frac * gh)), max(1, round(frac * gw))
    top, left = (gh - bh) // 2, (gw - bw) // 2
    cells = torch.zeros(gh, gw)
    cells[top : top + bh, left : left + bw] = 1.0
    return _cells_to_pixels(cells[None], height, width, cell)[:, None]


def border_mask(height: int, width: int, frac: float, cell: int = 1) -> torch.Tensor:
    """Outpainting: a frame about `frac` of each side wide hidden on every side, snapped to whole
    cells, at least one cell and always leaving a visible centre: (1, 1, H, W)."""
    gh, gw = grid_shape(height, width, cell)
    bh = min(max(1, round(frac * gh)), (gh - 1) // 2)
    bw = min(max(1, round(frac * gw)), (gw - 1) // 2)
    cells = torch.ones(gh, gw)
    cells[bh : gh - bh, bw : gw - bw] = 0.0
    return _cells_to_pixels(cells[None], height, width, cell)[:, None]


def random_mask(
    n: int, height: int, width: int, cell: int, ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """Exactly round(ratio * cells) random cells hidden per image, so every row hides the same count."""
    gh, gw = grid_shape(height, width, cell)
    total = gh * gw
    k = min(total - 1, max(1, round(ratio * total)))
    order = torch.rand(n, total, generator=generator).argsort(dim=1)
    cells = torch.zeros(n, total)
    cells.scatter_(1, order[:, :k], 1.0)
    return _cells_to_pixels(cells.view(n, gh, gw), height, width, cell)[:, None]


def _cells_to_pixels(cells: torch.Tensor, height: int, width: int, cell: int) -> torch.Tensor:
    # (N, gh, gw) -> (N, H, W): each cell covers cell x cell pixels, the last row/col cropped.
    px = cells.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)
    return px[:, :height, :width].contiguous()


def expand(mask: torch.Tensor, n: int) -> torch.Tensor:
    """Broadcast a (1,1,H,W) mask to a batch of n."""
    return mask.expand(n, -1, -1, -1) if mask.shape[0] == 1 else mask
