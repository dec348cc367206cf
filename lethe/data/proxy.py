"""A proxy retain set (Li et al. 2024): images of another data set that stand in for the retain side
of the unlearning loss, for a team that holds the model but no longer keeps its training data.

Only the unlearning loss sees them. Evaluation, best-checkpoint validation and the oracle still use
the request's own held-out and retain shards when the data set has them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lethe.errors import DataError


def open_proxy(spec: str, shape: tuple[int, int, int]) -> Any:
    """The proxy data set, opened (metadata only); refused in one line when its images are not of
    `shape`, the request's data. The split checks this before any work, the unlearn step again."""
    from lethe.data.loaders import open_source

    src = open_source(spec)
    if src.info.shape != tuple(shape):
        h, w, c = shape
        raise DataError(
            "proxy retain images differ in shape from the data set's",
            where=spec,
            expected=f"{h}x{w}x{c} images",
            seen="{}x{}x{}".format(*src.info.shape),
        )
    return src


def proxy_images(spec: str, shape: tuple[int, int, int], limit: int) -> tuple[np.ndarray, str]:
    """The first `limit` images of data set `spec` as uint8 (N, H, W, C), and the data set's name."""
    src = open_proxy(spec, shape)
    if src.kind == "arrays":  # IDX folders, digits: in memory already
        images = np.asarray(src.state["images"][:limit], dtype=np.uint8)
    else:  # image folders, Parquet: decoded by Ray Data, only the rows needed
        rows = src.to_ray().limit(limit).take_all()
        images = np.stack([np.frombuffer(r["pixels"], np.uint8).reshape(src.info.shape) for r in rows])
    if len(images) == 0:
        raise DataError("proxy retain data set has no images", where=spec, expected="at least one image")
    # its name, not its path (a path can say more about the team than the report should)
    name = str(src.info.name).rstrip("/").rsplit("/", 1)[-1]
    return images.reshape(len(images), *shape).copy(), name
