"""The pipeline's steps, each usable alone (`lethe <step>`) or chained (`lethe run`).

Steps communicate through a fixed layout under the work dir, so a step run alone finds what the
previous one left:

    <workdir>/shards/            manifest.json + forget / retain / heldout_* Parquet shards
    <workdir>/models/            original.pt, featnet.pt, oracle.pt, unlearned.pt
    <workdir>/report/            report.json, report.html, grid_*.png
    <workdir>/certificate/       certificate.json, certificate.html (written after cleanup)
    <workdir>/ray/               Ray Train storage_path (checkpoints)
    <workdir>/state.json         timings and tracking ids of the last run (also how steps run in
                                 separate processes, e.g. KFP components, find the pipeline's MLflow run)
    <cache_dir>/models/          original / oracle / feature net, keyed by data digest + config
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from lethe import __version__
from lethe.config import RunConfig
from lethe.errors import CheckpointError, DataError, LetheError, StorageError

log = logging.getLogger("lethe")

STEPS = ("split", "pretrain", "oracle", "unlearn", "evaluate", "promote", "cleanup")


# ----------------------------------------------------------------------------------------------
# layout and state
# ----------------------------------------------------------------------------------------------
@dataclass
class Layout:
    root: Path
    cache: Path

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def manifest(self) -> Path:
        return self.shards / "manifest.json"

    def model(self, name: str) -> Path:
        return self.root / "models" / f"{name}.pt"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def ray_storage(self) -> Path:
        return self.root / "ray"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def certificate_dir(self) -> Path:
        return self.root / "certificate"

    def cached(self, kind: str, key: str) -> Path:
        return self.cache / "models" / f"{kind}-{key}.pt"


def layout(cfg: RunConfig) -> Layout:
    return Layout(cfg.workdir_path, cfg.cache_path)


def check_workdir(cfg: RunConfig) -> Layout:
    """Fail early, before any work, when the work dir cannot be written."""
    lay = layout(cfg)
    for d in (lay.root, lay.cache):
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".write-probe-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise StorageError(
                "work dir is not writable", where=str(d), seen=e.strerror or type(e).__name__
            ) from None
    return lay


def load_state(lay: Layout) -> dict[str, Any]:
    if lay.state.is_file():
        return json.loads(lay.state.read_text())
    return {"timing_s": {}}


def save_state(lay: Layout, state: dict[str, Any]) -> None:
    tmp = lay.state.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, lay.state)


@dataclass
class Context:
    """What the steps of one invocation share: config, layout, tracker, timings."""

    cfg: RunConfig
    lay: Layout
    tracker: Any  # lethe.tracking.Tracker
    state: dict[str, Any] = field(default_factory=dict)
    # The pipeline's MLflow run when it was opened in another process (KFP components); None: the
    # active run of this process (`lethe run`), or no parent (a step run alone).
    parent_run_id: str | None = None

    @contextmanager
    def step(self, name: str, params: dict[str, Any] | None = None):
        t0 = time.perf_counter()
        started = now_iso()
        log.warning("== %s", name)
        with self.tracker.step(name, params, parent_run_id=self.parent_run_id) as run_id:
            yield run_id
            dt = time.perf_counter() - t0
            self.state.setdefault("timing_s", {})[name] = round(dt, 3)
            self.state.setdefault("steps_at", {})[name] = {"started_at": started, "finished_at": now_iso()}
            self.tracker.log_metrics({"wall_s": dt})
            save_state(self.lay, self.state)


def make_context(cfg: RunConfig, parent_run_id: str | None = None) -> Context:
    from lethe.tracking import Tracker

    lay = check_workdir(cfg)
    tracker = Tracker(cfg.tracking_uri, cfg.tracking.experiment)
    return Context(cfg=cfg, lay=lay, tracker=tracker, state=load_state(lay), parent_run_id=parent_run_id)


def preflight(ctx: Context) -> str | None:
    """Checks that need no data, before anything is written: the source model must exist.

    Returns the source model pinned to a version (`models:/NAME/VERSION`), or None when lethe
    pretrains the source model itself. An alias is resolved once here so that every later step of
    the same run uses the same version even if the alias moves meanwhile.
    """
    if not ctx.cfg.source_model:
        return None
    mv = ctx.tracker.resolve_model_version(ctx.cfg.source_model)
    return f"models:/{mv.name}/{mv.version}"


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _manifest(ctx: Context):
    from lethe.data import Manifest

    if not ctx.lay.manifest.is_file():
        raise DataError("no shards found", where=str(ctx.lay.shards), expected="run `lethe split` first")
    return Manifest.load(ctx.lay.manifest)


def _mae_arch(cfg: RunConfig, man) -> dict[str, Any]:
    from lethe.models.mae import MAEArch, auto_patch

    m = cfg.model
    patch = m.patch or auto_patch(man.height, man.width)
    return MAEArch(
        height=man.height,
        width=man.width,
        channels=man.channels,
        patch=patch,
        dim=m.dim,
        depth=m.depth,
        heads=m.heads,
        mlp_ratio=m.mlp_ratio,
        dec_dim=m.dec_dim,
        dec_depth=m.dec_depth,
        dec_heads=m.dec_heads,
    ).to_dict()


def _mask_spec(cfg: RunConfig, arch: dict[str, Any]) -> dict[str, Any]:
    return {
        "height": arch["height"],
        "width": arch["width"],
        "cell": arch["patch"],
        "box_frac": cfg.eval.box_frac,
        "ratio": cfg.pretrain.mask_ratio,
        "box_prob": cfg.pretrain.box_mask_prob,
    }


def _job_common(cfg: RunConfig) -> dict[str, Any]:
    from lethe.execution.ray_env import worker_threads

    return {
        "seed": cfg.seed,
        "threads": worker_threads(cfg.resources),
        "cache_mb": cfg.resources.worker_cache_mb,
    }


def _fit_kwargs(cfg: RunConfig, lay: Layout) -> dict[str, Any]:
    r = cfg.resources
    return {
        "num_workers": r.num_workers,
        "use_gpu": r.use_gpu,
        "cpus_per_worker": r.cpus_per_worker,
        "storage_path": str(lay.ray_storage),
    }


def _ray(cfg: RunConfig) -> None:
    import sys

    import ray.data

    from lethe.execution.ray_env import ensure_ray

    ensure_ray(cfg.resources)
    # Ray Data's bars are live progress on a terminal but thousands of lines in a CI log.
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()


def _train_model(
    ctx: Context, kind: str, shard_names: tuple[str, ...], cache_key: str, dest_name: str
) -> tuple[Path, dict[str, Any]]:
    """Pretrain a reconstruction model (original/oracle) or the feature net, or reuse the cache."""
    import ray.data

    from lethe.data import shard_dataset
    from lethe.execution.train import TrainJob, fit

    cfg, lay = ctx.cfg, ctx.lay
    man = _manifest(ctx)
    cached = lay.cached(kind, cache_key)
    dest = lay.model(dest_name)
    info: dict[str, Any] = {"cache_key": cache_key, "cached": cached.is_file()}
    if cached.is_file():
        log.warning("%s: reusing cached model %s", dest_name, cached.name)
    else:
        _ray(cfg)
        parts = [shard_dataset(man, s) for s in shard_names]
        ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
        n_rows = sum(man.shards[s].count for s in shard_names)
        if kind == "featnet":
            from lethe.models.featnet import FeatNetArch

            f = cfg.featnet
            arch = FeatNetArch(man.height, man.width, man.channels, len(man.class_names), f.width, f.feat_dim)
            job = TrainJob(
                kind="featnet",
                model_kind="featnet",
                arch=arch.to_dict(),
                batch_size=f.batch_size,
                lr=f.lr,
                weight_decay=0.0,
                warmup_frac=0.0,
                n_rows=n_rows,
                epochs=f.epochs,
                **_job_common(cfg),
                meta={"role": "featnet", "cache_key": cache_key},
            )
        else:
            arch = _mae_arch(cfg, man)
            p = cfg.pretrain
            job = TrainJob(
                kind="pretrain",
                model_kind=cfg.family,
                arch=arch,
                batch_size=p.batch_size,
                lr=p.lr,
                weight_decay=p.weight_decay,
                warmup_frac=p.warmup_frac,
                n_rows=n_rows,
                epochs=p.epochs,
                **_job_common(cfg),
                mask=_mask_spec(cfg, arch),
                meta={"role": dest_name, "cache_key": cache_key, "train_rows": n_rows},
            )
        assert isinstance(ds, ray.data.Dataset)
        res = fit(job, {"train": ds}, name=f"{kind}-{cache_key}", dest=cached, **_fit_kwargs(cfg, lay))
        info.update({"train_wall_s": res.wall_s, **{f"final_{k}": v for k, v in res.metrics.items()}})
        log.warning("%s: trained in %.1f s (%s)", dest_name, res.wall_s, res.metrics)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, dest)
    return dest, info


# ----------------------------------------------------------------------------------------------
# steps
# ----------------------------------------------------------------------------------------------
def step_split(ctx: Context):
    from lethe.data import split_dataset

    cfg = ctx.cfg
    with ctx.step("split", {"dataset": cfg.data.dataset, "request.kind": cfg.request.kind}):
        _ray(cfg)
        man = split_dataset(cfg, ctx.lay.shards)
        for name, sh in man.shards.items():
            # Counts, digests and where the shards live: never ids or pixels.
            ctx.tracker.log_dataset(
                name, sh.digest, sh.count, sh.path, context=name, tags={"derived_from": man.source_uri}
            )
        ctx.tracker.log_params(
            {
                "data_digest": man.data_digest,
                "request_digest": man.request_digest,
                "source_uri": man.source_uri,
            }
        )
        ctx.tracker.log_metrics({f"{n}_count": float(s.count) for n, s in man.shards.items()})
        ctx.state["split"] = {"request_digest": man.request_digest}
    return man


def _resolve_source(ctx: Context, man) -> tuple[Path, dict[str, Any]]:
    """Load the registered source model through MLflow and save it as the lethe checkpoint."""
    from lethe.models.checkpoint import save_checkpoint
    from lethe.models.mae import MAE

    cfg, lay = ctx.cfg, ctx.lay
    mv = ctx.tracker.resolve_model_version(cfg.source_model)
    name, version = mv.name, str(mv.version)
    uri = f"models:/{name}/{version}"
    model = ctx.tracker.load_registered_model(name, version)
    if not isinstance(model, MAE) or model.family != cfg.family:
        raise CheckpointError(
            "source model is not a lethe model of the configured family",
            where=uri,
            expected=f"a {cfg.family} model registered by lethe",
            seen=type(model).__name__,
        )
    want, got = _mae_arch(cfg, man), model.arch.to_dict()
    diff = [k for k in want if got.get(k) != want[k]]
    if diff:
        k = diff[0]
        raise CheckpointError(
            f"source model architecture differs from the configuration in {k} (set model.{k} to match)",
            where=uri,
            expected=repr(want[k]),
            seen=repr(got.get(k)),
        )
    dest = save_checkpoint(lay.model("original"), model, {"role": "original", "source_model": uri})
    requested = ctx.state.get("source_requested") or cfg.source_model
    info = {"uri": uri, "requested": requested, "name": name, "version": version, "run_id": mv.run_id}
    log.warning("pretrain: source model %s (requested as %s)", uri, requested)
    return dest, info


def step_pretrain(ctx: Context) -> Path:
    """Resolve-or-pretrain: the registered `source_model` when set, else train the original here."""
    cfg = ctx.cfg
    params = {"family": cfg.family, "source_model": cfg.source_model or "pretrain"}
    if not cfg.source_model:
        params.update(_flat("pretrain", cfg))
    with ctx.step("pretrain", params):
        man = _manifest(ctx)
        source: dict[str, Any] = {}
        if cfg.source_model:
            path, source = _resolve_source(ctx, man)
            info: dict[str, Any] = {"cache_key": None, "cached": False}
            ctx.tracker.set_tags(
                {"lethe.source_model": source["uri"], "lethe.source_model_requested": source["requested"]}
            )
            key_orig = None
        else:
            key_orig = _key(man.data_digest, cfg.digest("family", "model", "pretrain", "eval", "seed"))
            path, info = _train_model(ctx, cfg.family, ("forget", "retain"), key_orig, "original")
        key_feat = _key(man.data_digest, cfg.digest("featnet", "seed"))
        _, finfo = _train_model(ctx, "featnet", ("forget", "retain"), key_feat, "featnet")
        ctx.tracker.log_params({"original.cache_key": key_orig or "", "featnet.cache_key": key_feat})
        ctx.tracker.log_metrics(_numeric({**_prefix("original", info), **_prefix("featnet", finfo)}))
        ctx.state["pretrain"] = {"original": info, "featnet": finfo, "source": source}
    return path


def step_oracle(ctx: Context) -> Path:
    cfg = ctx.cfg
    with ctx.step("oracle", {"family": cfg.family}):
        man = _manifest(ctx)
        key = _key(man.shards["retain"].digest, cfg.digest("family", "model", "pretrain", "eval", "seed"))
        path, info = _train_model(ctx, cfg.family, ("retain",), key, "oracle")
        ctx.tracker.log_params({"oracle.cache_key": key})
        ctx.tracker.log_metrics(_numeric(_prefix("oracle", info)))
        ctx.state["oracle"] = info
    return path


def step_unlearn(ctx: Context) -> Path:
    from lethe.data import shard_dataset
    from lethe.execution.train import TrainJob, fit
    from lethe.models.checkpoint import load_checkpoint

    cfg, lay = ctx.cfg, ctx.lay
    u = cfg.unlearn
    with ctx.step("unlearn", {"method": cfg.method, **_flat("unlearn", cfg)}):
        man = _manifest(ctx)
        arch = _mae_arch(cfg, man)
        teacher, _ = load_checkpoint(lay.model("original"), expected_kind=cfg.family, expected_arch=arch)
        _ray(cfg)
        job = TrainJob(
            kind="unlearn",
            model_kind=cfg.family,
            arch=arch,
            batch_size=u.batch_size,
            lr=u.lr,
            weight_decay=u.weight_decay,
            warmup_frac=u.warmup_frac,
            n_rows=man.shards["forget"].count,
            **_job_common(cfg),
            mask=_mask_spec(cfg, arch),
            method=cfg.method,
            alpha=u.alpha,
            noise=u.noise,
            unlearn_mask=u.mask,
            passes=u.forget_passes,
            max_steps=u.max_steps,
            grad_clip=u.grad_clip,
            checkpoint_every=u.checkpoint_every,
            meta={
                "role": "unlearned",
                "method": cfg.method,
                "alpha": u.alpha,
                "forget_digest": man.shards["forget"].digest,
            },
        )
        name = f"unlearn-{_key(man.request_digest, cfg.digest('family', 'model', 'pretrain', 'unlearn', 'method', 'seed'))}"
        datasets = {"forget": shard_dataset(man, "forget"), "retain": shard_dataset(man, "retain")}
        res = fit(
            job,
            datasets,
            name=name,
            dest=lay.model("unlearned"),
            teacher_state=teacher.state_dict(),
            **_fit_kwargs(cfg, lay),
        )
        ctx.tracker.log_metrics(_numeric({"train_wall_s": res.wall_s, **res.metrics}))
        ctx.state["unlearn"] = {"train_wall_s": res.wall_s, **_numeric(res.metrics), "alpha": u.alpha}
        log.warning("unlearned in %.1f s (%s)", res.wall_s, res.metrics)
    return lay.model("unlearned")


def _eval_data(ctx: Context):
    from lethe.data import read_shard_numpy, to_chw_float
    from lethe.evaluate import EvalData

    cfg, man = ctx.cfg, _manifest(ctx)
    e = cfg.eval

    def load(name: str, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
        imgs, labels, _ids = read_shard_numpy(man, name, limit=limit)
        return torch.from_numpy(to_chw_float(imgs).copy()), torch.from_numpy(labels.copy())

    retain, retain_labels = load("heldout_retain", e.n_retain)
    members, _ = load("forget", e.n_mia)
    if cfg.request.kind == "ids":
        # The requested images themselves are the forget split; MIA negatives are unseen retain-like images.
        forget = members
        nonmembers = retain[: e.n_mia]
    else:
        forget, _ = load("heldout_forget", e.n_forget)
        nonmembers = forget[: e.n_mia]
    if len(forget) == 0 or len(retain) == 0:
        raise DataError(
            "nothing to evaluate on",
            where=str(ctx.lay.shards),
            expected="held-out forget and retain images",
            seen=f"{len(forget)} / {len(retain)}",
        )
    return EvalData(
        retain=retain,
        forget=forget,
        members=members,
        nonmembers=nonmembers,
        show_forget=cfg.request.kind != "ids",
        retain_labels=retain_labels,
    )


def step_evaluate(ctx: Context) -> Path:
    from lethe.evaluate import MODEL_NAMES, evaluate_models
    from lethe.models.checkpoint import load_checkpoint
    from lethe.report import oracle_gaps, write_html_report, write_report_json

    cfg, lay = ctx.cfg, ctx.lay
    with ctx.step("evaluate", _flat("eval", cfg)) as run_id:
        man = _manifest(ctx)
        arch = _mae_arch(cfg, man)
        models = {
            n: load_checkpoint(lay.model(n), expected_kind=cfg.family, expected_arch=arch)[0]
            for n in MODEL_NAMES
        }
        featnet, _ = load_checkpoint(lay.model("featnet"), expected_kind="featnet")
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        data = _eval_data(ctx)
        metrics, grids, extra = evaluate_models(
            models, featnet, data, cfg.eval.box_frac, cfg.eval.grid_rows, lay.report_dir, cfg.eval.batch_size
        )
        for model, splits in metrics.items():
            for split, vals in splits.items():
                ctx.tracker.log_metrics({f"{model}.{split}.{k}": v for k, v in vals.items()})
        report = build_report(ctx, man, metrics, extra)
        report["oracle_gaps"] = oracle_gaps(metrics)
        ctx.state["evaluate"] = {"run_id": run_id}
        report_path = write_report_json(report, lay.report_dir / "report.json")
        html = write_html_report(report, grids, lay.report_dir / "report.html")
        ctx.tracker.log_artifact(report_path, "report")
        ctx.tracker.log_artifact(html, "report")
        for g in grids.values():
            ctx.tracker.log_artifact(g, "report")
    return report_path


def build_report(ctx: Context, man, metrics: dict, extra: dict) -> dict[str, Any]:
    cfg = ctx.cfg
    st = ctx.state
    request: dict[str, Any] = {
        "kind": cfg.request.kind,
        "forget_count": man.shards["forget"].count,
        "retain_count": man.shards["retain"].count,
        "forget_digest": man.shards["forget"].digest,
        "request_digest": man.request_digest,
    }
    if cfg.request.kind == "classes":
        request["classes"] = list(cfg.request.classes)
    fd = {
        s: _ratio(metrics["unlearned"][s]["fd"], metrics["original"][s]["fd"]) for s in ("forget", "retain")
    }
    return {
        "run_id": st.get("run_id") or st.get("evaluate", {}).get("run_id") or "",
        "dataset": man.dataset,
        "source_uri": man.source_uri,
        "family": cfg.family,
        "method": cfg.method,
        "alpha": st.get("unlearn", {}).get("alpha", cfg.unlearn.alpha),
        "preset": cfg.preset,
        "request": request,
        "heldout": {
            "forget_count": man.shards["heldout_forget"].count,
            "retain_count": man.shards["heldout_retain"].count,
        },
        "metrics": metrics,
        "fd_ratio_unlearned_vs_original": fd,
        "evaluation": {
            **extra,
            "fd_feature_space": "project feature net (penultimate layer); not Inception, not FID",
            "mia": "loss-based: lower masked reconstruction error => member; AUC 0.5 = chance",
        },
        "timing_s": dict(st.get("timing_s", {})),
        "unlearn_vs_oracle_time": _ratio(
            st.get("unlearn", {}).get("train_wall_s"), st.get("oracle", {}).get("train_wall_s")
        ),
        "mlflow": {
            "tracking_uri": _redact(cfg.tracking_uri),
            "run_id": st.get("run_id") or "",
            "model_name": cfg.model_name,
            "model_version": st.get("promote", {}).get("model_version"),
        },
        "code_version": code_version(),
        "source_model": (st.get("pretrain") or {}).get("source", {}).get("uri"),
    }


def _read_report(ctx: Context) -> dict[str, Any]:
    rp = ctx.lay.report_dir / "report.json"
    if not rp.is_file():
        raise DataError("no evaluation report found", where=str(rp), expected="run `lethe evaluate` first")
    return json.loads(rp.read_text())


def _gap_tags(report: dict[str, Any]) -> dict[str, str]:
    """Oracle gaps of the unlearned model as registry tags (FD ratio, PSNR and MIA differences)."""
    gaps = (report.get("oracle_gaps") or {}).get("unlearned", {})
    out: dict[str, str] = {}
    for split, names in gaps.items():
        for name, g in names.items():
            if name in ("fd", "psnr", "mia_auc"):
                out[f"lethe.oracle_gap.{split}.{name}"] = f"{g['diff']:.6g}"
                if g.get("ratio") is not None:
                    out[f"lethe.oracle_gap.{split}.{name}_ratio"] = f"{g['ratio']:.6g}"
    return out


def register_and_promote(
    tracker: Any,
    model: torch.nn.Module,
    name: str,
    example: tuple,
    tags: dict[str, str],
    description: str,
    alias: str,
    promote: bool,
    after: Any = None,
) -> tuple[str, bool, str | None]:
    """Register `model` as a new version of `name`; move `alias` to it only if `promote`.

    All or nothing: if moving the alias or `after(version, moved, previous)` (the caller's
    bookkeeping) fails, the alias goes back to where it was and the new version is deleted.
    Returns (version, moved, previous alias target).
    """
    previous = tracker.alias_version(name, alias)
    version = tracker.register_model(model, name, example, tags, description=description)
    moved = False
    try:
        if promote:
            tracker.set_alias(name, alias, version)
            moved = True
        if after is not None:
            after(version, moved, previous)
    except BaseException:
        try:
            if moved:
                tracker.restore_alias(name, alias, previous)
            tracker.delete_version(name, version)
        except Exception:  # noqa: BLE001 - report the original failure, not the rollback's
            log.error("promote: rollback of %s version %s failed; delete it by hand", name, version)
        raise
    return version, moved, previous


def step_promote(ctx: Context) -> str | None:
    """Register the unlearned model with its lineage; move the alias only if the gates pass."""
    from lethe import masks
    from lethe.certificate import CERT_DIR, JSON_NAME
    from lethe.gates import evaluate_gates
    from lethe.models.checkpoint import load_checkpoint

    cfg, lay = ctx.cfg, ctx.lay
    alias = cfg.tracking.alias
    params = {"model_name": cfg.model_name, "alias": alias, **_flat("gates", cfg)}
    with ctx.step("promote", params) as run_id:
        man = _manifest(ctx)
        arch = _mae_arch(cfg, man)
        model, meta = load_checkpoint(lay.model("unlearned"), expected_kind=cfg.family, expected_arch=arch)
        if not cfg.tracking.register_model:
            log.warning("promote: registration disabled (tracking.register_model=false)")
            return None
        report = _read_report(ctx)
        decision = evaluate_gates(report["metrics"], cfg.gates)
        h, w, c = man.height, man.width, man.channels
        example = torch.rand(4, c, h, w)
        mask = masks.expand(masks.box_mask(h, w, cfg.eval.box_frac, model.mask_cell), 4).contiguous()
        st = ctx.state
        source = (st.get("pretrain") or {}).get("source") or {}
        alpha = st.get("unlearn", {}).get("alpha", cfg.unlearn.alpha)
        # The certificate is written after cleanup, into the pipeline run (or this run when the
        # step runs alone); its address is fixed now so the version is complete when created.
        anchor = st.get("run_id") or run_id
        cert_uri = f"runs:/{anchor}/{CERT_DIR}/{JSON_NAME}"
        name = cfg.model_name
        verdict = "passed" if decision.passed else "failed"
        tags = {
            "lethe.method": cfg.method,
            "lethe.alpha": str(alpha),
            "lethe.family": cfg.family,
            "lethe.forget_digest": man.shards["forget"].digest,
            "lethe.forget_count": str(man.shards["forget"].count),
            "lethe.retain_count": str(man.shards["retain"].count),
            "lethe.request_digest": man.request_digest,
            "lethe.data_digest": man.data_digest,
            "lethe.dataset": man.dataset,
            "lethe.code_version": code_version(),
            "lethe.source_model": source.get("uri") or "pretrained by lethe",
            "lethe.pipeline_run_id": st.get("run_id") or "",
            "lethe.alias": alias,
            "lethe.gates": verdict,
            "lethe.gates.summary": decision.summary(),
            "lethe.certificate_uri": cert_uri,
            **({"lethe.source_model_requested": source["requested"]} if source.get("requested") else {}),
            **decision.tags(),
            **_gap_tags(report),
        }
        if decision.passed:
            description = f"lethe {cfg.method} unlearning of {cfg.family}; gates passed, promoted to @{alias}"
        else:
            description = (
                f"lethe {cfg.method} unlearning of {cfg.family}; NOT promoted to @{alias}: "
                f"{decision.summary()}"
            )

        def bookkeeping(version: str, moved: bool, previous: str | None) -> None:
            if moved:
                log.warning("promote: %s version %s is now @%s (was %s)", name, version, alias, previous)
            else:
                log.warning(
                    "promote: %s version %s registered but NOT promoted; @%s stays on %s: %s",
                    name,
                    version,
                    alias,
                    f"version {previous}" if previous else "no version",
                    decision.summary(),
                )
            run_tags = {
                "lethe.promoted": str(moved).lower(),
                "lethe.gates": verdict,
                "lethe.gates.summary": decision.summary(),
                "lethe.model_version": version,
            }
            ctx.tracker.set_tags({**run_tags, "mlflow.note.content": description})
            if anchor != run_id:
                ctx.tracker.set_run_tags(anchor, run_tags)
            ctx.tracker.log_dict(decision.to_dict(), "gates.json")
            ctx.tracker.log_metrics(
                {f"gate.{r.name}.value": r.value for r in decision.results if r.value is not None}
            )
            st["promote"] = {
                "model_name": name,
                "model_version": version,
                "alias": alias,
                "promoted": moved,
                "previous_alias_version": previous,
                "gates": decision.to_dict(),
                "run_id": run_id,
                "certificate_run_id": anchor,
                "certificate_uri": cert_uri,
            }
            # report.json was written before registration: record the version and decision in it.
            from lethe.report import write_report_json

            report["mlflow"]["model_version"] = version
            report["promotion"] = {
                "alias": alias,
                "promoted": moved,
                "previous_alias_version": previous,
                "gates": decision.to_dict(),
            }
            rp = write_report_json(report, lay.report_dir / "report.json")
            ctx.tracker.log_artifact(rp, "report")

        version, _moved, _previous = register_and_promote(
            ctx.tracker, model, name, (example, mask), tags, description, alias, decision.passed, bookkeeping
        )
    return version


def delete_forget_shards(lay: Layout) -> list[dict[str, Any]]:
    """Delete the forget shards (training and held-out) and check they are gone; no tracking needed."""
    from lethe.data import Manifest

    man = Manifest.load(lay.manifest)
    deleted = []
    for name in ("forget", "heldout_forget"):
        p = Path(man.shards[name].path)
        if p.exists():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        deleted.append({"shard": name, "uri": str(p), "absent_after": not p.exists(), "at": now_iso()})
    return deleted


def step_cleanup(ctx: Context) -> dict[str, Any]:
    with ctx.step("cleanup"):
        _manifest(ctx)
        deleted = delete_forget_shards(ctx.lay)
        ctx.state["cleanup"] = {"deleted": deleted}
        ctx.tracker.log_dict({"deleted": deleted}, "cleanup.json")
        if not all(d["absent_after"] for d in deleted):
            raise StorageError("forget shards still present after cleanup", where=str(ctx.lay.shards))
    return ctx.state["cleanup"]


# ----------------------------------------------------------------------------------------------
# the whole pipeline
# ----------------------------------------------------------------------------------------------
def _pipeline_params(cfg: RunConfig) -> dict[str, Any]:
    return {
        "family": cfg.family,
        "method": cfg.method,
        "dataset": cfg.data.dataset,
        "preset": cfg.preset,
        "request.kind": cfg.request.kind,
        "alpha": cfg.unlearn.alpha,
        "seed": cfg.seed,
        "source_model": cfg.source_model or "pretrain",
    }


def run_all(cfg: RunConfig) -> Path:
    """`lethe run`: every step in this process, one MLflow parent run with a child run per step."""
    ctx = make_context(cfg)
    ctx.state = {"timing_s": {}, "started_at": now_iso(), "source_requested": cfg.source_model}
    preflight(ctx)  # an unknown source model fails here, before anything is written
    tags = {"lethe.code_version": code_version(), "lethe.pipeline": "lethe run"}
    t0 = time.perf_counter()
    with ctx.tracker.pipeline_run(f"lethe-{cfg.family}-{cfg.method}", _pipeline_params(cfg), tags) as run_id:
        ctx.state["run_id"] = run_id
        step_split(ctx)
        step_pretrain(ctx)
        step_oracle(ctx)
        step_unlearn(ctx)
        report_path = step_evaluate(ctx)
        step_promote(ctx)
        step_cleanup(ctx)
        ctx.state["timing_s"]["total"] = round(time.perf_counter() - t0, 3)
        finalize(ctx, orchestrator="lethe run")
    save_state(ctx.lay, ctx.state)
    return report_path


def _finalise_report(ctx: Context, report_path: Path) -> None:
    """The report is written in `evaluate`; timings of later steps and cleanup are known only now."""
    from lethe.report import write_html_report, write_report_json

    report = json.loads(report_path.read_text())
    report["timing_s"] = dict(ctx.state.get("timing_s", {}))
    run_id = ctx.state.get("run_id")
    if run_id:
        report["run_id"] = run_id
        report["mlflow"]["run_id"] = run_id
    report["cleanup"] = ctx.state.get("cleanup", {})
    if ctx.state.get("promote"):
        report["certificate_uri"] = ctx.state["promote"]["certificate_uri"]
    write_report_json(report, report_path)
    grids = {p.stem.removeprefix("grid_"): p for p in sorted(report_path.parent.glob("grid_*.png"))}
    html = write_html_report(report, grids, report_path.parent / "report.html")
    if run_id:
        ctx.tracker.log_artifact_to(run_id, report_path, "report")
        ctx.tracker.log_artifact_to(run_id, html, "report")


def _request_only_report(ctx: Context) -> dict[str, Any]:
    """What a certificate can say when the run failed before `evaluate`: the request, from the manifest."""
    if not ctx.lay.manifest.is_file():
        return {}
    man = _manifest(ctx)
    return {
        "dataset": man.dataset,
        "source_uri": man.source_uri,
        "family": ctx.cfg.family,
        "method": ctx.cfg.method,
        "request": {
            "kind": ctx.cfg.request.kind,
            "forget_count": man.shards["forget"].count,
            "retain_count": man.shards["retain"].count,
            "forget_digest": man.shards["forget"].digest,
            "request_digest": man.request_digest,
        },
        "metrics": {},
        "code_version": code_version(),
    }


def finalize(
    ctx: Context, orchestrator: str, status: str = "complete", error: str | None = None
) -> Path | None:
    """After cleanup: final report (timings, cleanup) and the unlearning certificate.

    The certificate goes to `<workdir>/certificate/`, to the pipeline's MLflow run (or the promote
    run when there is none) under `certificate/`, which is where the model version's
    `lethe.certificate_uri` tag points. Returns the certificate JSON path (None: nothing to certify).
    """
    from lethe.certificate import CERT_DIR, build_certificate, write_certificate

    report_path = ctx.lay.report_dir / "report.json"
    report: dict[str, Any] = {}
    if report_path.is_file():
        if status == "complete":
            _finalise_report(ctx, report_path)
        report = json.loads(report_path.read_text())
    if not report:
        report = _request_only_report(ctx)
    if not report:
        return None  # the run failed before the split: nothing was requested, nothing to certify
    hp = ctx.cfg.unlearn.model_dump(mode="json")
    hp["alpha"] = ctx.state.get("unlearn", {}).get("alpha", hp["alpha"])
    cert = build_certificate(
        report,
        ctx.state,
        hyperparameters=hp,
        tracking={"tracking_uri": _redact(ctx.cfg.tracking_uri), "experiment": ctx.cfg.tracking.experiment},
        orchestrator=orchestrator,
        status=status,
        error=error,
    )
    json_path, html_path = write_certificate(cert, ctx.lay.certificate_dir)
    anchor = (ctx.state.get("promote") or {}).get("certificate_run_id") or ctx.state.get("run_id")
    if anchor:
        ctx.tracker.log_artifact_to(anchor, json_path, CERT_DIR)
        ctx.tracker.log_artifact_to(anchor, html_path, CERT_DIR)
    ctx.state["certificate"] = {"path": str(json_path), "status": status}
    save_state(ctx.lay, ctx.state)
    log.warning("certificate: %s (%s)", json_path, status)
    return json_path


def open_pipeline(cfg: RunConfig, orchestrator: str, tags: dict[str, str] | None = None) -> tuple[str, str]:
    """First step of a pipeline run spread over processes (KFP): check, then open the MLflow run.

    Resets the work dir's state (so no later step can attach to an older run), opens the parent
    run, which stays RUNNING until `finish_pipeline`, and records its id in state.json. Returns
    (run id, source model pinned to a version or "").
    """
    ctx = make_context(cfg)
    ctx.state = {"timing_s": {}, "started_at": now_iso(), "source_requested": cfg.source_model}
    save_state(ctx.lay, ctx.state)
    pinned = preflight(ctx) or ""
    all_tags = {"lethe.code_version": code_version(), "lethe.pipeline": orchestrator, **(tags or {})}
    run_id = ctx.tracker.open_run(f"lethe-{cfg.family}-{cfg.method}", _pipeline_params(cfg), all_tags)
    ctx.state.update({"run_id": run_id, "orchestrator": orchestrator, "source_pinned": pinned})
    save_state(ctx.lay, ctx.state)
    log.warning("pipeline run %s opened (%s)", run_id, orchestrator)
    return run_id, pinned


def record_failure(cfg: RunConfig, step: str, exc: BaseException) -> None:
    """Note in state.json which step failed and why (one line; no data), for the exit handler."""
    from lethe.errors import find_lethe_error

    ours = find_lethe_error(exc)
    line = ours.line() if ours is not None else f"internal error {type(exc).__name__} (see the step's log)"
    lay = layout(cfg)
    if not lay.root.is_dir():
        return
    state = load_state(lay)
    state["failed"] = {"step": step, "error": line, "at": now_iso()}
    save_state(lay, state)


def finish_pipeline(cfg: RunConfig, succeeded: bool, error: str | None = None) -> dict[str, Any]:
    """Last step of a pipeline run spread over processes, run whatever happened before (KFP exit
    handler): delete the forget shards, write the final report and certificate, and close the
    pipeline's MLflow run as FINISHED or FAILED with the reason. Raises if cleanup failed."""
    try:
        ctx = make_context(cfg)
    except LetheError:
        # No tracking store (or no work dir access through it): still delete the forget data.
        lay = layout(cfg)
        if lay.manifest.is_file():
            state = load_state(lay)
            state["cleanup"] = {"deleted": delete_forget_shards(lay)}
            save_state(lay, state)
        raise
    run_id = ctx.state.get("run_id")
    ctx.parent_run_id = run_id
    orchestrator = ctx.state.get("orchestrator", "kfp")
    cleanup_error: LetheError | None = None
    if ctx.lay.manifest.is_file():
        try:
            step_cleanup(ctx)
        except LetheError as e:
            cleanup_error = e
    failed = ctx.state.get("failed")
    # The step's own one-line error beats the orchestrator's generic one ("Task exit-handler-1 failed.").
    reason = (f"{failed['step']}: {failed['error']}" if failed else None) or error
    if cleanup_error is not None:
        reason = f"{reason + '; ' if reason else ''}cleanup: {cleanup_error.line()}"
    ok = succeeded and failed is None and cleanup_error is None
    if "started_at" in ctx.state:
        t0 = datetime.fromisoformat(ctx.state["started_at"])
        ctx.state.setdefault("timing_s", {})["total"] = round(
            (datetime.now(timezone.utc) - t0).total_seconds(), 3
        )
    cert = None
    try:
        cert = finalize(
            ctx, orchestrator, status="complete" if ok else "incomplete", error=None if ok else reason
        )
    finally:
        if run_id:
            status = "FINISHED" if ok else "FAILED"
            tags = {"lethe.status": "succeeded" if ok else "failed"}
            if not ok:
                tags["lethe.error"] = reason or "a step failed (see the pipeline's logs)"
                tags["mlflow.note.content"] = f"lethe pipeline failed: {tags['lethe.error']}"
            ctx.tracker.close_run(run_id, status, tags)
    if cleanup_error is not None:
        raise cleanup_error
    return {"succeeded": ok, "reason": reason, "certificate": str(cert) if cert else None, "run_id": run_id}


RUNNERS = {
    "split": step_split,
    "pretrain": step_pretrain,
    "oracle": step_oracle,
    "unlearn": step_unlearn,
    "evaluate": step_evaluate,
    "promote": step_promote,
    "cleanup": step_cleanup,
}


def run_step(cfg: RunConfig, name: str) -> Any:
    ctx = make_context(cfg)
    out = RUNNERS[name](ctx)
    if name == "cleanup":
        # Cleanup ends a run made of single steps too: certify it.
        finalize(ctx, orchestrator="lethe steps")
    return out


# ----------------------------------------------------------------------------------------------
# small utilities
# ----------------------------------------------------------------------------------------------
def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def code_version() -> str:
    """Package version plus the git commit: from the checkout, or baked into the image (infra/Dockerfile)."""
    import subprocess

    baked = os.environ.get("LETHE_CODE_VERSION_COMMIT", "").strip()
    if baked:
        return f"{__version__}+{baked}"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def _key(*parts: str) -> str:
    import hashlib

    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _ratio(a: float | None, b: float | None) -> float | None:
    return float(a) / float(b) if a is not None and b not in (None, 0) else None


def _flat(section: str, cfg: RunConfig) -> dict[str, Any]:
    return {f"{section}.{k}": v for k, v in getattr(cfg, section).model_dump().items()}


def _prefix(p: str, d: dict[str, Any]) -> dict[str, Any]:
    return {f"{p}.{k}": v for k, v in d.items()}


def _numeric(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _redact(uri: str) -> str:
    """Tracking URIs may embed credentials (user:pass@host); never write them into reports."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password or parts.username:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


__all__ = ["STEPS", "run_all", "run_step", "CheckpointError"]
