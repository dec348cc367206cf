"""Comparison pictures for the report: one row per sample, one column per model.

Layout (all in pixels, `cell = (H*scale, W*scale)`):

    width  = GUTTER + n_cols * (W*scale + GUTTER)
    height = HEADER_H + n_rows * (H*scale + GUTTER)

The header band holds the column titles; each image row is followed by a GUTTER-high white line
and each column is framed by GUTTER-wide white lines. `grid_size` computes the same numbers so
callers and tests need not repeat the arithmetic.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lethe.report.schema import atomic_write_bytes

__all__ = ["GUTTER", "HEADER_H", "grid_size", "image_grid", "mask_overlay"]

GUTTER = 2
HEADER_H = 16
"""Height of the title band; PIL's default font is ~11 px tall, so 16 leaves a little air."""

_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)


def _to_numpy(x: Any) -> np.ndarray:
    # Accept torch tensors (possibly on GPU) without importing torch in the report layer.
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def grid_size(n_rows: int, n_cols: int, h: int, w: int, scale: int = 3) -> tuple[int, int]:
    """(width, height) in pixels of the PNG that `image_grid` writes for this shape."""
    return GUTTER + n_cols * (w * scale + GUTTER), HEADER_H + n_rows * (h * scale + GUTTER)


def _fit_title(draw: ImageDraw.ImageDraw, font: Any, title: str, max_w: int) -> str:
    """Shorten a title with '..' until it fits the column, so titles never overlap neighbours."""
    if draw.textlength(title, font=font) <= max_w:
        return title
    for cut in range(len(title) - 1, 0, -1):
        candidate = title[:cut] + ".."
        if draw.textlength(candidate, font=font) <= max_w:
            return candidate
    return ""


def _to_rgb_uint8(images: np.ndarray) -> np.ndarray:
    """(N,C,H,W) float in [0,1] -> (N,H,W,3) uint8; grey is repeated to RGB, NaN shown as black."""
    arr = np.nan_to_num(images.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    arr = np.clip(arr, 0.0, 1.0)
    if arr.shape[1] == 1:
        arr = np.repeat(arr, 3, axis=1)
    return np.round(arr * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)


def image_grid(columns: list[tuple[str, np.ndarray]], path: Path, scale: int = 3) -> Path:
    """Write a PNG comparison grid; columns are (title, images (N,C,H,W) float in [0,1]).

    Every column must have the same N, H and W; C may be 1 or 3 per column. Images are upscaled by
    `scale` with nearest-neighbour so 28x28 digits stay crisp and visible. Returns `path`.
    """
    if not columns:
        raise ValueError("image_grid: no columns given")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"image_grid: scale must be a positive integer, got {scale!r}")
    arrays: list[tuple[str, np.ndarray]] = []
    for title, images in columns:
        arr = _to_numpy(images)
        if arr.ndim != 4 or arr.shape[1] not in (1, 3):
            raise ValueError(f"image_grid: column {title!r} must be (N,C,H,W) with C in 1/3, got {arr.shape}")
        arrays.append((str(title), arr))
    n, _, h, w = arrays[0][1].shape
    for title, arr in arrays:
        if (arr.shape[0], arr.shape[2], arr.shape[3]) != (n, h, w):
            raise ValueError(
                f"image_grid: column {title!r} has shape {arr.shape}, expected N,H,W = {n},{h},{w}"
            )
    if n == 0:
        raise ValueError("image_grid: columns hold no images")

    width, height = grid_size(n, len(arrays), h, w, scale)
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    cell_w, cell_h = w * scale, h * scale
    for col, (title, arr) in enumerate(arrays):
        x0 = GUTTER + col * (cell_w + GUTTER)
        text = _fit_title(draw, font, title, cell_w)
        # Centre the title in its column, vertically in the header band.
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tx = x0 + (cell_w - (right - left)) // 2 - left
        ty = (HEADER_H - (bottom - top)) // 2 - top
        draw.text((tx, ty), text, fill=_TEXT, font=font)
        pixels = _to_rgb_uint8(arr)
        for row in range(n):
            tile = Image.fromarray(pixels[row]).resize((cell_w, cell_h), Image.Resampling.NEAREST)
            canvas.paste(tile, (x0, HEADER_H + row * (cell_h + GUTTER)))

    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return atomic_write_bytes(Path(path), buf.getvalue())


def mask_overlay(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The "masked input" picture: hidden region (mask 1, shape (N,1,H,W)) painted mid-grey 0.5.

    Mid-grey rather than black/white so the hole is visible on both dark (MNIST) and light images.
    A soft mask blends linearly. Returns float32 (N,C,H,W).
    """
    img = _to_numpy(images).astype(np.float32)
    m = _to_numpy(mask).astype(np.float32)
    if (
        img.ndim != 4
        or m.ndim != 4
        or m.shape[1] != 1
        or m.shape[0] != img.shape[0]
        or m.shape[2:] != img.shape[2:]
    ):
        raise ValueError(
            f"mask_overlay: expected images (N,C,H,W) and mask (N,1,H,W), got {img.shape} and {m.shape}"
        )
    return (img * (1.0 - m) + 0.5 * m).astype(np.float32)
