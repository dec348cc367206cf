"""cleanup: delete the forget data and check it is gone: the forget shards (training and held-out)
and the models trained on them that are not the run's product (the FD feature net and a
generator's feature classifier), wherever they were copied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lethe import storage
from lethe.catalogue import is_generator
from lethe.config import RunConfig
from lethe.errors import CheckpointError, StorageError
from lethe.pipeline.context import Context
from lethe.pipeline.layout import Layout
from lethe.pipeline.state import RunState, now_iso

# Models trained on the forget images (lethe/pipeline/pretrain.py, generator.py) that only serve the
# evaluation: kept until cleanup, then deleted like the shards. Their cache keys do not change, so the
# next run trains them again. (The original is the model being unlearned; the oracle never saw them.)
FORGET_TRAINED = {"featnet": "the FD feature net", "feature_clf": "the feature classifier"}


def delete_forget_shards(lay: Layout) -> list[dict[str, Any]]:
    """Delete the forget shards (training and held-out) and any temp prefix of an interrupted split to
    S3 (those hold forget pixels too), then check each is gone. Needs no tracking store."""
    from lethe.data import Manifest
    from lethe.data.split import temp_prefixes

    man = Manifest.load(lay.manifest_uri)
    targets = [(name, man.shards[name].path) for name in ("forget", "heldout_forget")]
    targets += [("interrupted-split", t) for t in (temp_prefixes(lay.shards_uri) if lay.remote else [])]
    deleted = []
    for name, uri in targets:
        storage.delete(uri)
        deleted.append(
            {"shard": name, "uri": uri, "absent_after": not storage.list_files(uri), "at": now_iso()}
        )
    return deleted


def _model_keys(cfg: RunConfig, lay: Layout, state: RunState, name: str) -> list[str]:
    """Cache keys of a forget-trained model: the one pretrain recorded, and the one this config and
    manifest give (pretrain may have trained and cached it, then failed before recording it)."""
    from lethe.data import Manifest
    from lethe.pipeline.keys import featnet_key, feature_classifier_key

    info = state.pretrain.get("featnet") or {}
    keys = [info.get("cache_key" if name == "featnet" else f"{name}.cache_key")]
    if storage.is_file(lay.manifest_uri):
        man = Manifest.load(lay.manifest_uri)
        keys.append(featnet_key(cfg, man) if name == "featnet" else feature_classifier_key(cfg, man))
    return list(dict.fromkeys(k for k in keys if k))


def _model_targets(cfg: RunConfig, lay: Layout, state: RunState) -> list[tuple[str, str, str]]:
    """(model, which copy, URI) of every place a forget-trained model may lie."""
    from lethe.execution.worker import checkpoint_temp_dirs

    def leftovers(path: Path) -> list[tuple[str, str, str]]:
        # Temp files of an interrupted atomic write (save_checkpoint, stage_file, fit's copy).
        return [(name, "temp copy", str(p)) for p in sorted(path.parent.glob(f".{path.name}.*"))]

    names = ["featnet", *(["feature_clf"] if is_generator(cfg.family) else [])]
    out = []
    for name in names:
        work = lay.model(name)
        out += [(name, "work dir", str(work)), *leftovers(work)]
        if lay.remote:
            out.append((name, "storage", lay.uri(work)))  # published by lay.publish
        for key in _model_keys(cfg, lay, state, name):
            cached = lay.cached(name, key)
            out += [(name, "model cache", str(cached)), *leftovers(cached)]
            out.append((name, "model cache numbers", str(cached.with_suffix(".json"))))
            # Where a Ray Train run of it left checkpoints (weights) and its finished marker, which
            # would otherwise hand the same weights back: lethe trained the classifiers that way
            # before they moved to one Ray task (lethe.execution.task), which checkpoints nothing.
            out.append((name, "ray checkpoints", storage.join(lay.ray_storage_uri, f"{name}-{key}")))
            # a checkpoint a killed worker staged on this node and never handed to Ray
            out += [(name, "worker temp copy", str(d)) for d in checkpoint_temp_dirs(f"{name}-{key}")]
    return out


def delete_forget_models(cfg: RunConfig, lay: Layout, state: RunState) -> list[dict[str, Any]]:
    """Delete the models trained on the forget set (work dir, storage.uri, model cache, Ray Train
    checkpoints) and check each copy is gone. Needs no tracking store."""
    deleted = []
    for name, copy, uri in _model_targets(cfg, lay, state):
        existed = bool(storage.list_files(uri))
        if existed:
            storage.delete(uri)
        deleted.append(
            {
                "model": name,
                "copy": copy,
                "uri": uri,
                "existed": existed,
                "absent_after": not storage.list_files(uri),
                "at": now_iso(),
            }
        )
    return deleted


def delete_forget_data(cfg: RunConfig, lay: Layout, state: RunState) -> list[dict[str, Any]]:
    """Everything cleanup deletes: the forget shards, then the models trained on them."""
    return delete_forget_shards(lay) + delete_forget_models(cfg, lay, state)


def forget_trained_model(lay: Layout, name: str) -> Path:
    """The work-dir copy of a forget-trained model; one clear line when cleanup has deleted it."""
    path = lay.fetch(lay.model(name))
    if not path.is_file():
        raise CheckpointError(
            f"{FORGET_TRAINED[name]} is missing (cleanup deletes it: it was trained on the forget set)",
            where=str(path),
            expected="`lethe split` then `lethe pretrain` first (they train it again)",
        )
    return path


def step_cleanup(ctx: Context) -> dict[str, Any]:
    with ctx.step("cleanup"):
        ctx.manifest()
        deleted = delete_forget_data(ctx.cfg, ctx.lay, ctx.state)
        ctx.state.cleanup = {"deleted": deleted}
        ctx.save()  # the record of what was deleted survives a tracking failure just below
        ctx.tracker.log_dict({"deleted": deleted}, "cleanup.json")
        if not all(d["absent_after"] for d in deleted):
            raise StorageError("forget data still present after cleanup", where=ctx.lay.shards_uri)
    return ctx.state.cleanup
