"""Data sets, forget requests and the shards they split into."""

from lethe.data.loaders import DatasetInfo, load_dataset, resolve_dataset
from lethe.data.shards import (
    SHARD_NAMES,
    Manifest,
    ShardInfo,
    read_shard_numpy,
    shard_dataset,
    shard_digest,
    to_chw_float,
)
from lethe.data.split import feature_classes, split_dataset

__all__ = [
    "SHARD_NAMES",
    "DatasetInfo",
    "Manifest",
    "ShardInfo",
    "feature_classes",
    "load_dataset",
    "read_shard_numpy",
    "resolve_dataset",
    "shard_dataset",
    "shard_digest",
    "split_dataset",
    "to_chw_float",
]
