"""cleanup: delete the forget shards (training and held-out) and check they are gone."""

from __future__ import annotations

from typing import Any

from lethe import storage
from lethe.errors import StorageError
from lethe.pipeline.context import Context
from lethe.pipeline.layout import Layout
from lethe.pipeline.state import now_iso


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


def step_cleanup(ctx: Context) -> dict[str, Any]:
    with ctx.step("cleanup"):
        ctx.manifest()
        deleted = delete_forget_shards(ctx.lay)
        ctx.state.cleanup = {"deleted": deleted}
        ctx.tracker.log_dict({"deleted": deleted}, "cleanup.json")
        if not all(d["absent_after"] for d in deleted):
            raise StorageError("forget shards still present after cleanup", where=ctx.lay.shards_uri)
    return ctx.state.cleanup
