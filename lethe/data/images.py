"""Image bytes to pixels: decoding (transparency on white, 16-bit scaled), shape checks, sample checks."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lethe.errors import DataError

MAX_SIDE = 64

# Pillow modes decoded to one grey channel; every other mode becomes RGB.
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# 16-bit (and 32-bit integer) grey modes: scaled from 0..65535 to 0..255, never clipped at 255.
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = 255


def decode_image(data: bytes | None, where: str) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (H,W,C): 1 channel for grey images, 3 (RGB) for everything else.

    Grey means Pillow modes 1, L, LA, I, I;16* and F; colour, palette (P, even with grey entries)
    and CMYK images become RGB. Two rules keep the pixels what a viewer shows:

    * Transparency is composited on white: RGBA, LA, PA and images with a tRNS colour key
      (P, L, RGB, 16-bit grey) become ``round(c * a / 255 + 255 * (1 - a / 255))``, so a fully
      transparent pixel is white whatever colour it stores. Alpha is then dropped.
    * 16-bit grey (I;16, I;16B, I;16L, and mode I as older Pillow reports 16-bit PNGs) is scaled,
      not clipped: ``round(v * 255 / 65535)``, with mode I values clipped to 0..65535 first.
      Pillow decodes 16-bit RGB(A) PNGs to 8 bits itself (keeping the high byte), so those are
      already on the 0..255 scale.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise DataError("cannot decode image", where=where, expected="a PNG or JPEG image", seen="no bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            arr = _to_uint8(img, "L" if img.mode in _GREY_MODES else "RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError("cannot decode image", where=where, expected="a PNG or JPEG image") from e
    return arr[..., None] if arr.ndim == 2 else arr


def _to_uint8(img: Any, mode: str) -> np.ndarray:
    """A loaded Pillow image -> uint8 (H,W) for mode "L" or (H,W,3) for "RGB"; see `decode_image`."""
    from PIL import Image

    key = img.info.get("transparency")
    if img.mode in _WIDE_MODES:
        wide = np.asarray(img).astype(np.int64)
        grey = (np.clip(wide, 0, 65535) * 255 + 65535 // 2) // 65535
        if isinstance(key, int):
            grey = np.where(wide == key, _WHITE, grey)
        return grey.astype(np.uint8)
    if img.mode in _ALPHA_MODES or (key is not None and img.mode in ("1", "L", "P", "RGB")):
        rgba = np.asarray(img.convert("RGBA")).astype(np.uint32)
        alpha = rgba[..., 3:]
        rgb = ((rgba[..., :3] * alpha + _WHITE * (255 - alpha) + 127) // 255).astype(np.uint8)
        if mode == "RGB":
            return rgb
        # Pillow's RGB -> L weights sum to exactly 1, so grey inputs (LA) keep their exact value.
        return np.asarray(Image.fromarray(rgb).convert(mode), dtype=np.uint8)
    return np.asarray(img.convert(mode), dtype=np.uint8)


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def check_shape(shape: Sequence[int], expected: Sequence[int], where: str) -> None:
    if tuple(shape) == tuple(expected):
        return
    what = (
        "images of mixed sizes"
        if tuple(shape[:2]) != tuple(expected[:2])
        else "images of mixed channel counts"
    )
    raise DataError(
        what, where=where, expected=f"{_fmt(expected)} (HxWxC of the first image)", seen=_fmt(shape)
    )


def check_max_side(shape: Sequence[int], where: str) -> None:
    if shape[0] > MAX_SIDE or shape[1] > MAX_SIDE:
        raise DataError(
            "images are too large",
            where=where,
            expected=f"at most {MAX_SIDE} pixels a side",
            seen=_fmt(shape),
        )


# Images decoded in the driver before any Ray work: enough to catch a folder that mixes sizes or
# modes in seconds, few enough that a large folder on S3 opens quickly.
SAMPLE_SIZE = 64


def sample_indices(labels: Sequence[int], limit: int = SAMPLE_SIZE) -> list[int]:
    """Rows to check before the full read: the first row, every class's first row, and up to
    `limit` rows spread evenly over the rest. Sorted, distinct, deterministic; starts with 0."""
    n = len(labels)
    if n == 0:
        return []
    lab = np.asarray(labels)
    firsts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    spread = np.linspace(0, n - 1, num=min(limit, n)).round().astype(np.int64)
    return sorted({0, *firsts.tolist(), *spread.tolist()})


def check_sample(read: Callable[[str], bytes], paths: Sequence[str], picks: Sequence[int]) -> tuple[int, ...]:
    """Decode the images at `picks` (the first sets the data set's shape); the shape, or a DataError
    naming the first file that cannot be decoded or does not match."""
    first = decode_image(read(paths[picks[0]]), paths[picks[0]])
    check_max_side(first.shape, paths[picks[0]])
    for i in picks[1:]:
        check_shape(decode_image(read(paths[i]), paths[i]).shape, first.shape, paths[i])
    return tuple(first.shape)
