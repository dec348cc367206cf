"""split: forget / retain / held-out shards from the data set and the request (Ray Data)."""

from __future__ import annotations

from lethe.pipeline.context import Context


def step_split(ctx: Context):
    from lethe.data import split_dataset

    cfg = ctx.cfg
    with ctx.step("split", {"dataset": cfg.data.dataset, "request.kind": cfg.request.kind}):
        # Ray starts inside, once the data set's sample and the request have passed their checks:
        # bad input is refused before any Ray work (and without Ray's start-up on the terminal).
        ctx.configure_ray_data()
        man = split_dataset(cfg, ctx.lay.shards_uri)
        # The digests are keyed (HMAC-SHA256, lethe.digests): the key's public id, never the key.
        keyed = {"digest_algorithm": man.digest_algorithm, "digest_key_id": man.digest_key_id}
        for name, sh in man.shards.items():
            # Counts, digests and where the shards live: never ids or pixels.
            ctx.tracker.log_dataset(
                name,
                sh.digest,
                sh.count,
                sh.path,
                context=name,
                tags={"derived_from": man.source_uri, **keyed},
            )
        ctx.tracker.log_params(
            {
                "data_digest": man.data_digest,
                "request_digest": man.request_digest,
                **keyed,
                "source_uri": man.source_uri,
            }
        )
        ctx.tracker.log_metrics({f"{n}_count": float(s.count) for n, s in man.shards.items()})
        ctx.state.split = {"request_digest": man.request_digest}
    return man
