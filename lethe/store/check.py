"""Checking a deletion request against the data set when it is submitted, and resolving requests to
the training ids they forget (a night's forget set is the union over the model's lineage)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lethe.config import RunConfig
from lethe.data.loaders import DatasetInfo, id_hashes, open_source
from lethe.data.split import feature_labels, resolve_classes, train_mask
from lethe.errors import DataError
from lethe.store.lifecycle import payload_of
from lethe.store.schema import Request


class DataView:
    """The data set's ids, labels and training rows, read once in the driver (no pixels)."""

    def __init__(self, cfg: RunConfig) -> None:
        src = open_source(cfg.data.dataset)
        self.info: DatasetInfo = src.info
        self.ids: list[str] = src.meta.column("id").to_pylist()
        self.labels = src.meta.column("label").to_numpy()
        subsets: list[str] = src.meta.column("subset").to_pylist()
        self.is_train = train_mask(id_hashes(self.ids), subsets, "test" in subsets, cfg.data.heldout_fraction)
        self._index = {i: n for n, i in enumerate(self.ids)}

    def forget_mask(self, kind: str, payload: dict[str, Any]) -> np.ndarray:
        """Rows this request forgets: its ids (any subset, as the split does), or the training rows
        of its classes / of the classes that show its feature."""
        if kind == "ids":
            wanted: Sequence[str] = payload["ids"]
            unknown = sum(1 for i in wanted if i not in self._index)
            if unknown:
                # The count only: requested ids never reach a message.
                raise DataError(
                    "ids not in the data set",
                    where="--ids",
                    expected="ids of the data set",
                    seen=f"{unknown} unknown ids",
                )
            mask = np.zeros(len(self.ids), dtype=bool)
            mask[[self._index[i] for i in wanted]] = True
            return mask
        if kind == "classes":
            labels = resolve_classes(payload["classes"], self.info.class_names)
        else:
            labels = feature_labels(self.info.class_names, self.info.name, payload["feature"])
        return self.is_train & np.isin(self.labels, np.asarray(labels, dtype=np.int64))

    def ids_of(self, mask: np.ndarray) -> list[str]:
        return sorted(self.ids[n] for n in np.flatnonzero(mask))


def check_request(view: DataView, kind: str, payload: dict[str, Any], others: Sequence[Request]) -> None:
    """Refuse (DataError) a request that names unknown ids or classes, forgets no training row, or
    together with the model's other live requests would leave nothing to retain."""
    mine = view.forget_mask(kind, payload)
    if not (mine & view.is_train).any():
        raise DataError(
            "empty forget set",
            where="request",
            expected="at least one training row to forget",
            seen="0 training rows",
        )
    union = mine.copy()
    for r in others:
        union |= view.forget_mask(r.kind, payload_of(r))
    n_train = int(view.is_train.sum())
    left = int((view.is_train & ~union).sum())
    if left == 0:
        raise DataError(
            "forget requests would cover all training data",
            where="request",
            expected="some training rows left to retain",
            seen=f"{n_train} of {n_train} training rows forgotten with this model's other requests",
        )
