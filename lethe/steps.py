"""The pipeline's steps, each usable alone (`lethe <step>`) or chained (`lethe run`).

Steps communicate through a fixed layout under the work dir, so a step run alone finds what the
previous one left:

    <workdir>/shards/            manifest.json + forget / retain / heldout_* Parquet shards
    <workdir>/models/            original.pt, featnet.pt, oracle.pt, unlearned.pt
    <workdir>/report/            report.json, report.html, grid_*.png
    <workdir>/certificate/       certificate.json, certificate.html (written after cleanup)
    <workdir>/ray/               Ray Train / Tune storage_path (checkpoints)
    <workdir>/tune/              best.json (the tuned alpha and lr) and result.json (every trial)
    <workdir>/state.json         timings and tracking ids of the last run (also how steps run in
                                 separate processes, e.g. KFP components, find the pipeline's MLflow run)
    <cache_dir>/models/          original / oracle / feature net, keyed by data digest + config

With `storage.uri` set (e.g. s3://bucket/run), shards and Ray checkpoints live only there, and models,
reports, tune results and state are published there after each step (the same relative layout) and
fetched from there by the next step, so steps can run on different machines. The work dir keeps
local copies, the local MLflow store and the model cache.
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

STEPS = ("split", "pretrain", "oracle", "tune", "unlearn", "evaluate", "promote", "cleanup")


# ----------------------------------------------------------------------------------------------
# layout and state
# ----------------------------------------------------------------------------------------------
@dataclass
class Layout:
    root: Path
    cache: Path
    remote: str | None = None  # storage.uri: where shards, checkpoints and published outputs live

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def manifest(self) -> Path:
        return self.shards / "manifest.json"

    @property
    def shards_uri(self) -> str:
        return self.uri(self.shards)

    @property
    def manifest_uri(self) -> str:
        return self.uri(self.manifest)

    def model(self, name: str) -> Path:
        return self.root / "models" / f"{name}.pt"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def ray_storage(self) -> Path:
        return self.root / "ray"

    @property
    def ray_storage_uri(self) -> str:
        return self.uri(self.ray_storage)

    @property
    def tune_dir(self) -> Path:
        return self.root / "tune"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def certificate_dir(self) -> Path:
        return self.root / "certificate"

    def cached(self, kind: str, key: str) -> Path:
        return self.cache / "models" / f"{kind}-{key}.pt"

    # -- remote storage ------------------------------------------------------------------------
    def uri(self, path: Path) -> str:
        """Where a layout path lives: the same relative path under storage.uri, or the path itself."""
        if not self.remote:
            return str(path)
        from lethe import storage

        return storage.join(self.remote, *Path(path).relative_to(self.root).parts)

    def publish(self, path: Path) -> None:
        """Upload a local output (file, or every file of a folder) to storage.uri."""
        if not self.remote:
            return
        from lethe import storage

        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
        for f in files:
            storage.upload_file(f, self.uri(f))

    def fetch(self, path: Path) -> Path:
        """The local copy of a layout file, downloaded from storage.uri when that is where it lives."""
        if self.remote:
            from lethe import storage

            if storage.is_file(self.uri(path)):
                storage.download_file(self.uri(path), path)
        return path

    def exists(self, path: Path) -> bool:
        if not self.remote:
            return path.exists()
        from lethe import storage

        return storage.is_file(self.uri(path))


def layout(cfg: RunConfig) -> Layout:
    from lethe import storage

    remote = storage.normalize(cfg.storage.uri) if cfg.storage.uri else None
    return Layout(cfg.workdir_path, cfg.cache_path, remote)


def check_workdir(cfg: RunConfig) -> Layout:
    """Fail early, before any work, when the work dir (or storage.uri) cannot be written."""
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
    if lay.remote:
        from lethe import storage

        storage.check_writable(lay.remote)
    return lay


def load_state(lay: Layout) -> dict[str, Any]:
    lay.fetch(lay.state)
    if lay.state.is_file():
        return json.loads(lay.state.read_text())
    return {"timing_s": {}}


def save_state(lay: Layout, state: dict[str, Any]) -> None:
    tmp = lay.state.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, lay.state)
    lay.publish(lay.state)


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
    from lethe import storage
    from lethe.data import Manifest

    if not storage.is_file(ctx.lay.manifest_uri):
        raise DataError("no shards found", where=ctx.lay.shards_uri, expected="run `lethe split` first")
    return Manifest.load(ctx.lay.manifest_uri)


def _arch(cfg: RunConfig, man) -> dict[str, Any]:
    """The family's architecture for this data (shape from the manifest), via the registry."""
    from lethe import generative_steps
    from lethe.models.families import get_family

    if generative_steps.is_generator(cfg):
        return generative_steps.arch(cfg, man)

    return get_family(cfg.family).build_arch(
        cfg.model.section(cfg.family), man.height, man.width, man.channels
    )


def _mask_spec(cfg: RunConfig, arch: dict[str, Any]) -> dict[str, Any]:
    from lethe.models.families import get_family

    fam = get_family(cfg.family)
    return {
        "height": arch["height"],
        "width": arch["width"],
        "cell": fam.cell(arch),
        "box_frac": cfg.eval.box_frac,
        "ratio": cfg.pretrain.mask_ratio,
        "box_prob": cfg.pretrain.box_mask_prob,
        "schedule": fam.mask_schedule,
    }


def _phases(cfg: RunConfig) -> list[str]:
    from lethe.models.families import get_family

    return get_family(cfg.family).phases(cfg.model.section(cfg.family), cfg.pretrain.epochs)


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
        "storage_path": lay.ray_storage_uri,
    }


def _ray(cfg: RunConfig) -> None:
    import sys

    import ray.data

    from lethe.execution.ray_env import ensure_ray

    ensure_ray(cfg.resources)
    # Ray Data's bars are live progress on a terminal but thousands of lines in a CI log.
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()


def featnet_job(
    cfg: RunConfig,
    man,
    n_rows: int,
    meta: dict[str, Any],
    *,
    classes: int,
    width: int,
    epochs: int,
    label_map: list[int] | None = None,
):
    """A FeatNet classifier's training job: the FD feature network (every class) or, for generator
    runs, the binary feature classifier (label_map: class index -> 1 if it has the feature)."""
    from lethe.execution.train import TrainJob
    from lethe.models.featnet import FeatNetArch

    f = cfg.featnet
    return TrainJob(
        kind="featnet",
        model_kind="featnet",
        arch=FeatNetArch(man.height, man.width, man.channels, classes, width, f.feat_dim).to_dict(),
        batch_size=f.batch_size,
        lr=f.lr,
        weight_decay=0.0,
        warmup_frac=0.0,
        n_rows=n_rows,
        epochs=epochs,
        label_map=list(label_map or []),
        **_job_common(cfg),
        meta=meta,
    )


def _train_model(
    ctx: Context, kind: str, shard_names: tuple[str, ...], cache_key: str, dest_name: str
) -> tuple[Path, dict[str, Any]]:
    """Pretrain a reconstruction or generator model (original/oracle), the feature net or the binary
    feature classifier ("feature_clf", generator runs), or reuse the cache."""
    import ray.data

    from lethe import generative_steps
    from lethe.data import shard_dataset
    from lethe.execution.train import TrainJob, fit

    cfg, lay = ctx.cfg, ctx.lay
    man = _manifest(ctx)
    cached = lay.cached(kind, cache_key)
    dest = lay.model(dest_name)
    # Training numbers live beside the cached model, so a reused oracle still has its retrain cost.
    sidecar = cached.with_suffix(".json")
    info: dict[str, Any] = {"cache_key": cache_key, "cached": cached.is_file()}
    generator = generative_steps.is_generator(cfg)
    if kind not in ("featnet", "feature_clf") and not generator:
        info["phases"] = ",".join(_phases(cfg))  # e.g. VQ-GAN: tokenizer,transformer,transformer
    if cached.is_file():
        log.warning("%s: reusing cached model %s", dest_name, cached.name)
        if sidecar.is_file():
            info.update(json.loads(sidecar.read_text()))
    else:
        _ray(cfg)
        parts = [shard_dataset(man, s) for s in shard_names]
        ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
        n_rows = sum(man.shards[s].count for s in shard_names)
        meta = {"role": dest_name, "cache_key": cache_key, "train_rows": n_rows}
        if kind == "feature_clf":
            job = generative_steps.classifier_job(cfg, man, n_rows, meta)
        elif generator and kind != "featnet":
            job = generative_steps.pretrain_job(cfg, man, n_rows, _job_common(cfg), meta)
        elif kind == "featnet":
            f = cfg.featnet
            meta = {"role": "featnet", "cache_key": cache_key}
            job = featnet_job(
                cfg, man, n_rows, meta, classes=len(man.class_names), width=f.width, epochs=f.epochs
            )
        else:
            arch = _arch(cfg, man)
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
                phases=_phases(cfg),
                meta={"role": dest_name, "cache_key": cache_key, "train_rows": n_rows},
            )
        assert isinstance(ds, ray.data.Dataset)
        res = fit(job, {"train": ds}, name=f"{kind}-{cache_key}", dest=cached, **_fit_kwargs(cfg, lay))
        trained = {"train_wall_s": res.wall_s, **{f"final_{k}": v for k, v in res.metrics.items()}}
        sidecar.write_text(json.dumps(trained, indent=2))
        info.update(trained)
        log.warning("%s: trained in %.1f s (%s)", dest_name, res.wall_s, res.metrics)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, dest)
    lay.publish(dest)
    return dest, info


# ----------------------------------------------------------------------------------------------
# steps
# ----------------------------------------------------------------------------------------------
def step_split(ctx: Context):
    from lethe.data import split_dataset

    cfg = ctx.cfg
    with ctx.step("split", {"dataset": cfg.data.dataset, "request.kind": cfg.request.kind}):
        _ray(cfg)
        man = split_dataset(cfg, ctx.lay.shards_uri)
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
    want, got = _arch(cfg, man), model.arch.to_dict()
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
    from lethe import generative_steps

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
        if generative_steps.is_generator(cfg):
            # The binary classifier that labels generated samples (feature vs not); it depends on the
            # request (which classes carry the feature), so its key includes the request digest.
            key_clf = _key(man.data_digest, man.request_digest, cfg.digest("featnet", "feature", "seed"))
            _, cinfo = _train_model(ctx, "feature_clf", ("forget", "retain"), key_clf, "feature_clf")
            finfo = {**finfo, **_prefix("feature_clf", cinfo)}
        ctx.tracker.log_params(
            {
                "original.cache_key": key_orig or "",
                "featnet.cache_key": key_feat,
                "original.phases": info.get("phases", ""),
            }
        )
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


def file_digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def calibrate_decouple(
    cfg: RunConfig, man, arch: dict[str, Any], teacher: torch.nn.Module, u
) -> dict[str, Any]:
    """decouple_retain's lambda from the original model (driver side, plain PyTorch, a small sample).

    The rule (lethe.methods.calibrate_lambda): lambda = lambda_factor * mean (or lambda_quantile)
    of the original's per-image masked MSE, in "predict" mode and with the mask kind the unlearning
    uses, on the first `calibration_images` held-out retain images (never trained on). Only a scalar
    leaves this function; no image or id is logged.
    """
    from lethe import masks
    from lethe.data import read_shard_numpy, to_chw_float
    from lethe.methods import calibrate_lambda

    d = u.decouple
    imgs, _labels, _ids = read_shard_numpy(man, "heldout_retain", limit=d.calibration_images)
    if len(imgs) == 0:
        raise DataError(
            "decouple_retain needs held-out retain images to calibrate lambda",
            where="heldout_retain",
            expected="at least one image",
            seen="0",
        )
    x = torch.from_numpy(to_chw_float(imgs).copy())
    spec = _mask_spec(cfg, arch)
    h, w, cell = spec["height"], spec["width"], spec["cell"]
    if u.mask == "box":
        mask = masks.box_mask(h, w, spec["box_frac"], cell)
    else:
        mask = masks.random_mask(len(x), h, w, cell, spec["ratio"], torch.Generator().manual_seed(cfg.seed))
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    cal = calibrate_lambda(teacher, x, mask, d.lambda_factor, d.lambda_quantile, seed=cfg.seed)
    rule = (
        f"lambda = {d.lambda_factor:g} x "
        + ("mean" if d.lambda_quantile is None else f"q{d.lambda_quantile:g} quantile")
        + f" of the original model's per-image masked MSE ({u.mask} mask, predict mode) on "
        f"{cal['n_images']} held-out retain images"
    )
    return {**cal, "rule": rule, "quantile": d.lambda_quantile}


def _method_options(u, calibration: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, float]]:
    """Constructor options and per-stage learning rates of the run's method, for the TrainJob."""
    if calibration is None:
        return {}, {}
    d = u.decouple
    options = {
        "lam": float(calibration["lambda"]),
        "max_ascent_steps": d.max_ascent_steps,
        "retain_steps": d.retain_steps,
        "distill": d.distill,
    }
    return options, ({"decouple": d.ascent_lr} if d.ascent_lr else {})


def _unlearn_job(
    cfg: RunConfig,
    man,
    arch: dict[str, Any],
    u,
    meta: dict[str, Any],
    calibration: dict[str, Any] | None = None,
):
    from lethe.execution.train import FAULT_ENV, TrainJob

    fault = os.environ.get(FAULT_ENV, "").strip()
    if fault and not fault.isdigit():
        from lethe.errors import ConfigError

        raise ConfigError(
            "invalid fault-injection step", where=FAULT_ENV, expected="a step number", seen=fault
        )
    options, stage_lr = _method_options(u, calibration)
    return TrainJob(
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
        method_options=options,
        stage_lr=stage_lr,
        unlearn_mask=u.mask,
        passes=u.forget_passes,
        max_steps=u.max_steps,
        grad_clip=u.grad_clip,
        checkpoint_every=u.checkpoint_every,
        fail_at_step=int(fault) if fault else None,
        meta=meta,
    )


def effective_unlearn(ctx: Context, man=None) -> tuple[Any, dict[str, Any] | None]:
    """The unlearning settings to use: the config's, or with the tuned alpha and lr (tune.enabled)."""
    from lethe.errors import ConfigError

    cfg, lay = ctx.cfg, ctx.lay
    if not cfg.tune.enabled:
        return cfg.unlearn, None
    man = man or _manifest(ctx)
    best_path = lay.fetch(lay.tune_dir / "best.json")
    if not best_path.is_file():
        raise ConfigError(
            "tune.enabled but no tuning result",
            where=lay.uri(best_path),
            expected="run `lethe tune` first (or `lethe run --tune`)",
        )
    best = json.loads(best_path.read_text())
    original = lay.fetch(lay.model("original"))
    if best.get("request_digest") != man.request_digest or best.get("original_digest") != file_digest(
        original
    ):
        raise ConfigError(
            "the tuning result belongs to another forget request or original model",
            where=lay.uri(best_path),
            expected="run `lethe tune` again",
        )
    return cfg.unlearn.model_copy(update={"alpha": float(best["alpha"]), "lr": float(best["lr"])}), best


def step_unlearn(ctx: Context) -> Path:
    from lethe import generative_steps
    from lethe.execution.train import unlearn_inputs
    from lethe.models.checkpoint import load_checkpoint

    cfg, lay = ctx.cfg, ctx.lay
    man = _manifest(ctx)
    if generative_steps.is_generator(cfg):
        return _unlearn_feature(ctx, man)
    u, tuned = effective_unlearn(ctx, man)
    params = {"method": cfg.method, **_flat_params("unlearn", u.settings(cfg.method))}
    with ctx.step("unlearn", {**params, "tuned": tuned is not None}):
        arch = _arch(cfg, man)
        original = lay.fetch(lay.model("original"))
        teacher, _ = load_checkpoint(original, expected_kind=cfg.family, expected_arch=arch)
        calibration = None
        if cfg.method == "decouple_retain":
            calibration = calibrate_decouple(cfg, man, arch, teacher, u)
            ctx.tracker.log_params(
                {
                    "decouple.lambda": calibration["lambda"],
                    "decouple.lambda_rule": calibration["rule"],
                    "decouple.heldout_mse_mean": calibration["heldout_mse_mean"],
                }
            )
            log.warning("decouple_retain: %s = %.5g", calibration["rule"], calibration["lambda"])
        _ray(cfg)
        meta = {
            "role": "unlearned",
            "method": cfg.method,
            "alpha": u.alpha,
            "lr": u.lr,
            "tuned": tuned is not None,
            "forget_digest": man.shards["forget"].digest,
        }
        if calibration is not None:
            meta["decouple_lambda"] = calibration["lambda"]
        job = _unlearn_job(cfg, man, arch, u, meta, calibration)
        res = _fit_unlearned(
            ctx,
            man,
            job,
            lambda: unlearn_inputs(man, job, cfg.resources.num_workers),
            u.settings(cfg.method),
            original,
            teacher,
        )
        if calibration is not None:
            ctx.state["unlearn"]["decouple"] = decouple_summary(calibration, res.metrics)
    return lay.model("unlearned")


def _fit_unlearned(
    ctx: Context,
    man,
    job,
    datasets: Any,
    settings: Any,
    original: Path,
    teacher: torch.nn.Module,
    extra_state: dict[str, Any] | None = None,
) -> Any:
    """Run an unlearning job on Ray Train, publish the model, record it in ctx.state["unlearn"] and
    MLflow; returns fit's result.

    Same request, recipe, method settings and original model => same run name: a re-run resumes
    the crashed run or returns the finished one (see lethe.execution.train.fit).
    """
    import hashlib

    from lethe.execution.train import fit

    cfg, lay = ctx.cfg, ctx.lay
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    name = "unlearn-" + _key(
        man.request_digest,
        cfg.digest("family", "model", "pretrain", "method", "seed"),
        digest,
        file_digest(original),
    )
    res = fit(
        job,
        datasets,
        name=name,
        dest=lay.model("unlearned"),
        teacher_state=teacher.state_dict(),
        **_fit_kwargs(cfg, lay),
    )
    lay.publish(lay.model("unlearned"))
    ctx.tracker.log_metrics(_numeric({"train_wall_s": res.wall_s, **res.metrics}))
    ctx.tracker.set_tags({"lethe.ray_run": name, "lethe.reused_finished_run": str(res.reused).lower()})
    ctx.state["unlearn"] = {
        "train_wall_s": res.wall_s,
        "reused": res.reused,
        **_numeric(res.metrics),
        "alpha": job.alpha,
        **(extra_state or {}),
    }
    log.warning("unlearned in %.1f s (%s)", res.wall_s, res.metrics)
    return res


def _unlearn_feature(ctx: Context, man) -> Path:
    """Feature unlearning of a generator: label sampled latents, find the direction, fine-tune g."""
    from lethe import generative_steps
    from lethe.models.checkpoint import load_checkpoint

    cfg, lay = ctx.cfg, ctx.lay
    u = cfg.unlearn
    params = {"method": cfg.method, **{f"unlearn.{k}": v for k, v in u.model_dump().items()}}
    with ctx.step("unlearn", {**params, **_flat("feature", cfg), "tuned": False}):
        arch = _arch(cfg, man)
        original = lay.fetch(lay.model("original"))
        teacher, _ = load_checkpoint(original, expected_kind=cfg.family, expected_arch=arch)
        classifier, _ = load_checkpoint(lay.fetch(lay.model("feature_clf")), expected_kind="featnet")
        direction, labelling = generative_steps.find_direction(
            cfg, teacher.eval(), classifier.eval(), generative_steps.feature_prior(man)
        )
        ctx.tracker.log_metrics(
            {
                "direction.threshold": direction.threshold,
                "direction.norm": float(direction.z_e.norm()),
                "direction.n_pos": float(direction.n_pos),
                "direction.n_neg": float(direction.n_neg),
            }
        )
        _ray(cfg)
        meta = {
            "role": "unlearned",
            "method": cfg.method,
            "alpha": u.alpha,
            "lr": u.lr,
            "tuned": False,
            "feature": cfg.request.feature or "",
            "forget_digest": man.shards["forget"].digest,
        }
        job = generative_steps.unlearn_job(cfg, arch, u, direction, _job_common(cfg), meta)
        _fit_unlearned(
            ctx,
            man,
            job,
            {},  # no data: latents are sampled per step
            [u.model_dump(), cfg.feature.model_dump()],
            original,
            teacher,
            {"direction": direction.to_dict(), "labelling": labelling},
        )
    return lay.model("unlearned")


def _tune_prerequisites(ctx: Context) -> None:
    """`lethe tune` alone: run split / pretrain / oracle first when their outputs are missing."""
    from lethe import storage

    lay = ctx.lay
    if not storage.is_file(lay.manifest_uri):
        step_split(ctx)
    if not (lay.exists(lay.model("original")) and lay.exists(lay.model("featnet"))):
        step_pretrain(ctx)
    if not lay.exists(lay.model("oracle")):
        step_oracle(ctx)


def _validation(man, name: str, n: int, eval_n: int) -> tuple[torch.Tensor, int]:
    """The last n images of a held-out shard in id-hash order (evaluation takes the first ones)."""
    from lethe.data import read_shard_numpy, to_chw_float

    imgs, _, _ = read_shard_numpy(man, name)
    take = min(n, len(imgs))
    overlap = max(0, min(eval_n, len(imgs)) + take - len(imgs))
    x = torch.from_numpy(to_chw_float(imgs[len(imgs) - take :]).copy())
    return x, overlap


def _check_tunable(cfg: RunConfig) -> None:
    from lethe import generative_steps
    from lethe.errors import ConfigError

    if generative_steps.is_generator(cfg):
        # The tune objective is FD on held-out forget / retain reconstructions, which a generator
        # does not make; a feature objective (flagged share vs oracle, sample FD) is not built yet.
        raise ConfigError(
            "tuning is not supported for generator families",
            where="lethe tune",
            expected="family mae, vqgan or diffusion (set unlearn.alpha / unlearn.lr by hand for gan / vae)",
            seen=repr(cfg.family),
        )


def step_tune(ctx: Context) -> Path:
    from lethe.evaluate import features, model_fd
    from lethe.execution.tune import OBJECTIVE_TEXT, run_tune
    from lethe.models.checkpoint import load_checkpoint

    cfg, lay = ctx.cfg, ctx.lay
    _check_tunable(cfg)
    t = cfg.tune
    with ctx.step("tune", {f"tune.{k}": v for k, v in t.model_dump().items() if k != "enabled"}):
        man = _manifest(ctx)
        arch = _arch(cfg, man)
        paths = {n: lay.fetch(lay.model(n)) for n in ("original", "oracle", "featnet")}
        digests = {n: file_digest(p) for n, p in paths.items()}
        base = {k: v for k, v in cfg.unlearn.settings(cfg.method).items() if k not in ("alpha", "lr")}
        key = _key(
            man.request_digest,
            json.dumps(base, sort_keys=True),
            json.dumps(t.model_dump(exclude={"enabled"}), sort_keys=True),
            cfg.method,
            str(cfg.seed),
            *digests.values(),
        )
        best_path, result_path = lay.tune_dir / "best.json", lay.tune_dir / "result.json"
        lay.fetch(best_path)
        lay.fetch(result_path)
        if (
            best_path.is_file()
            and result_path.is_file()
            and json.loads(best_path.read_text()).get("key") == key
        ):
            # Same request, models and search: the finished search is returned, not run again.
            log.warning("tune: reusing the finished search in %s", lay.uri(lay.tune_dir))
            result = json.loads(result_path.read_text())
            ctx.state["tune"] = {"best": result["best"], "reused": True}
            return best_path

        teacher, _ = load_checkpoint(paths["original"], expected_kind=cfg.family, expected_arch=arch)
        oracle, _ = load_checkpoint(paths["oracle"], expected_kind=cfg.family, expected_arch=arch)
        featnet, fmeta = load_checkpoint(paths["featnet"], expected_kind="featnet")
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        e = cfg.eval
        x_f, overlap_f = _validation(man, "heldout_forget", t.val_forget, e.n_forget)
        x_r, overlap_r = _validation(man, "heldout_retain", t.val_retain, e.n_retain)
        if len(x_f) < 2 or len(x_r) < 2:
            raise DataError(
                "too few held-out images to tune on",
                where=lay.shards_uri,
                expected="at least 2 held-out forget and retain images (class requests)",
                seen=f"{len(x_f)} / {len(x_r)}",
            )
        if overlap_f or overlap_r:
            log.warning(
                "tune: validation images overlap the evaluation images (%d forget, %d retain): "
                "the held-out shards are smaller than eval.n_* + tune.val_*",
                overlap_f,
                overlap_r,
            )
        bs = e.batch_size
        feats_f, feats_r = features(featnet, x_f, bs), features(featnet, x_r, bs)
        baselines = {
            "fd_forget_oracle": model_fd(oracle, featnet, x_f, e.box_frac, feats_f, bs),
            "fd_retain_original": model_fd(teacher, featnet, x_r, e.box_frac, feats_r, bs),
            "fd_forget_original": model_fd(teacher, featnet, x_f, e.box_frac, feats_f, bs),
        }
        payload = {
            "featnet_arch": featnet.arch.to_dict(),
            "featnet_state": featnet.state_dict(),
            "x_forget": x_f,
            "x_retain": x_r,
            "forget_feats": feats_f,
            "retain_feats": feats_r,
            "box_frac": e.box_frac,
            "batch_size": bs,
            "retain_weight": t.retain_weight,
            **baselines,
        }
        _ray(cfg)
        from lethe.execution.train import stage_budgets, unlearn_inputs

        u = cfg.unlearn
        calibration = (
            calibrate_decouple(cfg, man, arch, teacher, u) if cfg.method == "decouple_retain" else None
        )
        job = _unlearn_job(cfg, man, arch, u, {"role": "tune-trial", "method": cfg.method}, calibration)
        job.fail_at_step = None  # fault drills target the unlearn step, not every trial
        # Trials share the machine: split the cores between the workers that run at once.
        running = t.max_concurrent_trials * t.workers_per_trial
        job.threads = cfg.resources.torch_threads or max(1, (os.cpu_count() or 2) // running)
        # A multi-stage method (decouple_retain) runs up to the sum of its stage budgets: ASHA's
        # max_t must not stop a trial before its last stage. The tuned lr does not change them.
        total = sum(stage_budgets(job.to_config(), t.workers_per_trial).values())
        outcome = run_tune(
            job=job,
            inputs=unlearn_inputs(man, job, t.workers_per_trial),
            teacher_state=teacher.state_dict(),
            eval_payload=payload,
            tune_cfg=t,
            total_steps=total,
            storage_path=lay.ray_storage_uri,
            name=f"tune-{key}",
            seed=cfg.seed,
            use_gpu=cfg.resources.use_gpu,
        )
        # One child run per trial, logged from the driver: params, objective, FD ratios, how it ended.
        for trial in outcome.trials:
            with ctx.tracker.step(f"tune-trial-{trial.trial_id}", {"alpha": trial.alpha, "lr": trial.lr}):
                ctx.tracker.set_tags({"lethe.trial_id": trial.trial_id, "lethe.trial_status": trial.status})
                ctx.tracker.log_metrics(
                    _numeric(
                        {
                            "objective": trial.objective,
                            "fd_forget_vs_oracle": trial.fd_forget_vs_oracle,
                            "fd_retain_vs_original": trial.fd_retain_vs_original,
                            "iterations": trial.iterations,
                            "steps": trial.steps,
                            "trial_wall_s": trial.wall_s,
                        }
                    )
                )
        best = outcome.best
        result = {
            **outcome.to_json(),
            "key": key,
            "objective": OBJECTIVE_TEXT,
            "retain_weight": t.retain_weight,
            "scheduler": {
                "kind": "ASHA",
                "time_attr": "training_iteration",
                "grace_period": min(t.grace_period, outcome.max_iterations),
                "reduction_factor": t.reduction_factor,
                "max_t": outcome.max_iterations,
            },
            "search": {
                "alpha": {"low": t.alpha_range[0], "high": t.alpha_range[1], "scale": "log"},
                "lr": {"low": t.lr_range[0], "high": t.lr_range[1], "scale": "log"},
                "num_samples": t.num_samples,
                "max_concurrent_trials": t.max_concurrent_trials,
            },
            "validation": {
                "forget_count": len(x_f),
                "retain_count": len(x_r),
                "overlaps_evaluation": {"forget": overlap_f, "retain": overlap_r},
            },
            "baselines": baselines,
        }
        best_doc = {
            "key": key,
            "alpha": best.alpha,
            "lr": best.lr,
            "objective": best.objective,
            "trial_id": best.trial_id,
            "request_digest": man.request_digest,
            "original_digest": digests["original"],
            "method": cfg.method,
        }
        from lethe import storage

        storage.write_json(str(result_path), result)
        storage.write_json(str(best_path), best_doc)
        lay.publish(lay.tune_dir)
        ctx.tracker.log_params({"best.alpha": best.alpha, "best.lr": best.lr, "best.trial_id": best.trial_id})
        ctx.tracker.log_metrics(_numeric({"best.objective": best.objective, "tune_wall_s": outcome.wall_s}))
        ctx.tracker.log_dict(result, "tune/result.json")
        ctx.state["tune"] = {"best": result["best"], "reused": False, "wall_s": outcome.wall_s}
        for trial in outcome.trials:
            log.warning(
                "tune trial %s: alpha %.4g lr %.3g objective %s (%s)",
                trial.trial_id,
                trial.alpha,
                trial.lr,
                "-" if trial.objective is None else f"{trial.objective:.4f}",
                trial.status,
            )
        log.warning("tune: best alpha %.4g, lr %.3g, objective %.4f", best.alpha, best.lr, best.objective)
    return best_path


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
    from lethe import generative_steps
    from lethe.evaluate import MODEL_NAMES, evaluate_models
    from lethe.models.checkpoint import load_checkpoint
    from lethe.report import distance_to_oracle, oracle_gaps, write_html_report, write_report_json

    cfg, lay = ctx.cfg, ctx.lay
    if generative_steps.is_generator(cfg):
        return _evaluate_feature(ctx)
    with ctx.step("evaluate", _flat("eval", cfg)) as run_id:
        man = _manifest(ctx)
        arch = _arch(cfg, man)
        loaded = {
            n: load_checkpoint(lay.fetch(lay.model(n)), expected_kind=cfg.family, expected_arch=arch)
            for n in MODEL_NAMES
        }
        models = {n: m for n, (m, _) in loaded.items()}
        ctx.state["unlearned_meta"] = _numeric_or_str(loaded["unlearned"][1])
        featnet, _ = load_checkpoint(lay.fetch(lay.model("featnet")), expected_kind="featnet")
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        data = _eval_data(ctx)
        metrics, grids, extra = evaluate_models(
            models,
            featnet,
            data,
            cfg.eval.box_frac,
            cfg.eval.grid_rows,
            lay.report_dir,
            cfg.eval.batch_size,
            outpaint_frac=cfg.eval.outpaint_frac if cfg.eval.outpaint else None,
            seed=cfg.seed,
        )
        by_mask = extra.pop("metrics_by_mask", {})
        for prefix, per_model in [("", metrics), *((f"{k}.", v) for k, v in by_mask.items())]:
            for model, splits in per_model.items():
                for split, vals in splits.items():
                    ctx.tracker.log_metrics({f"{prefix}{model}.{split}.{k}": v for k, v in vals.items()})
        ctx.state["evaluate"] = {"run_id": run_id}
        report = build_report(ctx, man, metrics, extra)
        if by_mask:
            # Other masks sit beside the headline metrics, never inside them (report.json contract).
            report["metrics_by_mask"] = by_mask
            report["fd_ratio_by_mask"] = {
                kind: {
                    s: _ratio(m["unlearned"][s]["fd"], m["original"][s]["fd"]) for s in ("forget", "retain")
                }
                for kind, m in by_mask.items()
            }
        report["oracle_gaps"] = oracle_gaps(metrics)
        if isinstance(report.get("decouple"), dict):
            report["decouple"].update(_decouple_check(cfg, arch, models, data.forget))
        report["distance_to_oracle"] = distance_to_oracle(metrics)
        ctx.tracker.log_metrics(
            {
                f"distance_to_oracle.{m}.{n}": v
                for m, row in report["distance_to_oracle"].items()
                for n, v in row.items()
            }
        )
        report_path = write_report_json(report, lay.report_dir / "report.json")
        html = write_html_report(report, grids, lay.report_dir / "report.html")
        ctx.tracker.log_artifact(report_path, "report")
        ctx.tracker.log_artifact(html, "report")
        for g in grids.values():
            ctx.tracker.log_artifact(g, "report")
        lay.publish(lay.report_dir)
    return report_path


def _evaluate_feature(ctx: Context) -> Path:
    """Evaluate a generator's feature unlearning on samples (flagged share, FD, class score, PGD)."""
    from lethe import generative_steps
    from lethe.methods.latent_feature import FeatureDirection
    from lethe.models.checkpoint import load_checkpoint
    from lethe.report import write_html_report, write_report_json

    cfg, lay = ctx.cfg, ctx.lay
    with ctx.step("evaluate", {**_flat("eval", cfg), **_flat("feature", cfg)}) as run_id:
        man = _manifest(ctx)
        arch = _arch(cfg, man)
        loaded = {
            n: load_checkpoint(lay.fetch(lay.model(n)), expected_kind=cfg.family, expected_arch=arch)
            for n in generative_steps.MODEL_NAMES
        }
        models = {n: m.eval() for n, (m, _) in loaded.items()}
        ctx.state["unlearned_meta"] = _numeric_or_str(loaded["unlearned"][1])
        featnet, _ = load_checkpoint(lay.fetch(lay.model("featnet")), expected_kind="featnet")
        classifier, _ = load_checkpoint(lay.fetch(lay.model("feature_clf")), expected_kind="featnet")
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        saved = ctx.state.get("unlearn") or {}
        if saved.get("direction"):
            direction, labelling = FeatureDirection.from_dict(saved["direction"]), saved.get("labelling")
        else:
            direction, labelling = generative_steps.find_direction(
                cfg, models["original"], classifier.eval(), generative_steps.feature_prior(man)
            )
        metrics, grids, section = generative_steps.evaluate(
            cfg, man, models, featnet.eval(), classifier.eval(), direction, lay.report_dir
        )
        for model, splits in metrics.items():
            for split, vals in splits.items():
                ctx.tracker.log_metrics({f"{model}.{split}.{k}": v for k, v in vals.items()})
        ctx.tracker.log_metrics(
            {"feature.classifier_heldout_accuracy": section["classifier"]["heldout_accuracy"]}
        )
        ctx.state["evaluate"] = {"run_id": run_id}
        report = build_report(ctx, man, metrics, {"sampler": {"name": "generator", "steps": 1}})
        report["feature"] = {**section, "direction": {**section["direction"], "labelling": labelling}}
        report["evaluation"] = {
            "sampler": report.get("sampler", {}),
            "fd_feature_space": "project feature net (penultimate layer); not Inception, not FID",
            "class_score": "exp(E KL(p(y|x) || p(y))) on the project feature net's class posteriors; not IS",
            "flagged": "binary feature classifier (project FeatNet, 2 classes): p(feature) > 0.5",
        }
        report_path = write_report_json(report, lay.report_dir / "report.json")
        html = write_html_report(report, grids, lay.report_dir / "report.html")
        ctx.tracker.log_artifact(report_path, "report")
        ctx.tracker.log_artifact(html, "report")
        for g in grids.values():
            ctx.tracker.log_artifact(g, "report")
        lay.publish(lay.report_dir)
    return report_path


def _decouple_check(
    cfg: RunConfig, arch: dict[str, Any], models: dict[str, torch.nn.Module], x_forget: torch.Tensor
) -> dict[str, float]:
    """How the lambda rule compares with the truth it stands for: the oracle's distance from the
    original on held-out forget data (same measure, centre box), beside the unlearned model's."""
    from lethe import masks
    from lethe.methods import output_distance

    spec = _mask_spec(cfg, arch)
    box = masks.box_mask(spec["height"], spec["width"], spec["box_frac"], spec["cell"])
    x = x_forget[: cfg.unlearn.decouple.calibration_images]
    orig = models["original"]
    return {
        "oracle_distance_to_original": output_distance(models["oracle"], orig, x, box, seed=cfg.seed),
        "unlearned_distance_to_original": output_distance(models["unlearned"], orig, x, box, seed=cfg.seed),
    }


def _numeric_or_str(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool))}


def _tune_section(ctx: Context) -> dict[str, Any] | None:
    """Every trial's objective for the report, when the unlearned model used the tuned settings."""
    lay = ctx.lay
    if not ctx.cfg.tune.enabled or not ctx.state.get("unlearned_meta", {}).get("tuned"):
        return None
    path = lay.fetch(lay.tune_dir / "result.json")
    if not path.is_file():
        return None
    return {**tune_summary(json.loads(path.read_text())), "used_by_unlearned_model": True}


def tune_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The report's `tune` key from tune/result.json: every trial, the best, how it was searched."""
    keep = ("trials", "best", "objective", "retain_weight", "scheduler", "search", "validation", "baselines")
    return {k: result[k] for k in keep if k in result} | {"wall_s": result.get("wall_s")}


def build_report(ctx: Context, man, metrics: dict, extra: dict) -> dict[str, Any]:
    cfg = ctx.cfg
    st = ctx.state
    # The pipeline run when there is one; the evaluate step's own run when it ran alone.
    run_id = st.get("run_id") or st["evaluate"]["run_id"]
    request: dict[str, Any] = {
        "kind": cfg.request.kind,
        "forget_count": man.shards["forget"].count,
        "retain_count": man.shards["retain"].count,
        "forget_digest": man.shards["forget"].digest,
        "request_digest": man.request_digest,
    }
    if cfg.request.kind == "classes":
        request["classes"] = list(cfg.request.classes)
    if cfg.request.kind == "feature":
        request["feature"] = cfg.request.feature
    # Per split of the metrics (forget / retain; "samples" for a generator's feature unlearning).
    fd = {
        s: _ratio(metrics["unlearned"][s].get("fd"), metrics["original"][s].get("fd"))
        for s in metrics["unlearned"]
    }
    meta = st.get("unlearned_meta", {})
    report: dict[str, Any] = {
        "run_id": run_id,
        "dataset": man.dataset,
        "source_uri": _redact(man.source_uri),
        "family": cfg.family,
        "method": cfg.method,
        # What the unlearned model was trained with (the tuned values when tuning was on).
        "alpha": float(meta.get("alpha", cfg.unlearn.alpha)),
        "unlearn": {
            "alpha": float(meta.get("alpha", cfg.unlearn.alpha)),
            "lr": float(meta.get("lr", cfg.unlearn.lr)),
            "tuned": bool(meta.get("tuned", False)),
        },
        "storage_uri": ctx.lay.remote or str(ctx.lay.root),
        "preset": cfg.preset,
        "request": request,
        "heldout": {
            "forget_count": man.shards["heldout_forget"].count,
            "retain_count": man.shards["heldout_retain"].count,
        },
        "metrics": metrics,
        "fd_ratio_unlearned_vs_original": fd,
        # Which sampler produced every output, and with how many steps (MaskGIT / DDIM / one pass).
        "sampler": extra.get("sampler", {}),
        "evaluation": {
            **extra,
            "fd_feature_space": "project feature net (penultimate layer); not Inception, not FID",
            "mia": "loss-based: lower masked reconstruction error => member; AUC 0.5 = chance",
        },
        "timing_s": dict(st.get("timing_s", {})),
        "unlearn_vs_oracle_time": _cost_ratios(st),
        "mlflow": {
            "tracking_uri": _redact(cfg.tracking_uri),
            "run_id": run_id,
            "model_name": cfg.model_name,
            "model_version": st.get("promote", {}).get("model_version"),
        },
        "code_version": code_version(),
        "source_model": (st.get("pretrain") or {}).get("source", {}).get("uri"),
    }
    tune = _tune_section(ctx)
    if tune is not None:
        report["tune"] = tune
    dec = st.get("unlearn", {}).get("decouple")
    if cfg.method == "decouple_retain" and isinstance(dec, dict):
        report["decouple"] = dec
    return report


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
    from lethe import generative_steps, masks
    from lethe.certificate import CERT_DIR, JSON_NAME
    from lethe.gates import evaluate_gates
    from lethe.models.checkpoint import load_checkpoint

    cfg, lay = ctx.cfg, ctx.lay
    alias = cfg.tracking.alias
    params = {"model_name": cfg.model_name, "alias": alias, **_flat("gates", cfg)}
    with ctx.step("promote", params) as run_id:
        man = _manifest(ctx)
        arch = _arch(cfg, man)
        unlearned = lay.fetch(lay.model("unlearned"))
        model, meta = load_checkpoint(unlearned, expected_kind=cfg.family, expected_arch=arch)
        if not cfg.tracking.register_model:
            log.warning("promote: registration disabled (tracking.register_model=false)")
            return None
        report = _read_report(ctx)
        if generative_steps.is_generator(cfg):
            z, decision = generative_steps.promotion_inputs(cfg, model, report)
            example: tuple = (z,)
        else:
            decision = evaluate_gates(report["metrics"], cfg.gates)
            h, w, c = man.height, man.width, man.channels
            mask = masks.expand(masks.box_mask(h, w, cfg.eval.box_frac, model.mask_cell), 4).contiguous()
            example = (torch.rand(4, c, h, w), mask)
        digest = _state_digest(model)
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
            "lethe.model_digest": digest,
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
            _record_promotion(ctx, report, st["promote"])

        same = [v for v in ctx.tracker.find_versions(name) if v.tags.get("lethe.model_digest") == digest]
        if same:
            # A re-run that returned the finished unlearning run has the same weights: no duplicate version.
            first = min(same, key=lambda v: int(v.version))
            version = str(first.version)
            on_alias = ctx.tracker.alias_version(name, alias)
            ctx.tracker.set_tags({"lethe.promote": "already registered", "lethe.model_version": version})
            # The version keeps the certificate and gate verdict of the run that registered it.
            st["promote"] = {
                "model_name": name,
                "model_version": version,
                "alias": alias,
                "reused": True,
                "promoted": on_alias == version,
                "previous_alias_version": on_alias,
                "gates": decision.to_dict(),
                "run_id": run_id,
                "certificate_run_id": anchor,
                "certificate_uri": first.tags.get("lethe.certificate_uri", cert_uri),
            }
            _record_promotion(ctx, report, st["promote"])
            log.warning("%s version %s already holds this model (digest %s)", name, version, digest[:12])
            return version
        version, _moved, _previous = register_and_promote(
            ctx.tracker, model, name, example, tags, description, alias, decision.passed, bookkeeping
        )
    return version


def _record_promotion(ctx: Context, report: dict[str, Any], promo: dict[str, Any]) -> None:
    """report.json was written before registration: record the version and decision in it."""
    from lethe.report import write_report_json

    report["mlflow"]["model_version"] = promo["model_version"]
    report["promotion"] = {k: promo[k] for k in ("alias", "promoted", "previous_alias_version", "gates")}
    rp = write_report_json(report, ctx.lay.report_dir / "report.json")
    ctx.tracker.log_artifact(rp, "report")
    ctx.lay.publish(rp)


def _state_digest(model: torch.nn.Module) -> str:
    """sha256 over the weights (names, dtypes, shapes, bytes): equal models, equal digests."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def delete_forget_shards(lay: Layout) -> list[dict[str, Any]]:
    """Delete the forget shards (training and held-out) and any temp prefix of an interrupted split to
    S3 (those hold forget pixels too), then check each is gone. Needs no tracking store."""
    from lethe import storage
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
        _manifest(ctx)
        deleted = delete_forget_shards(ctx.lay)
        ctx.state["cleanup"] = {"deleted": deleted}
        ctx.tracker.log_dict({"deleted": deleted}, "cleanup.json")
        if not all(d["absent_after"] for d in deleted):
            raise StorageError("forget shards still present after cleanup", where=ctx.lay.shards_uri)
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
        "tune.enabled": cfg.tune.enabled,
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
        if cfg.tune.enabled:
            step_tune(ctx)
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
    ctx.lay.publish(ctx.lay.report_dir)
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
    hp = json.loads(json.dumps(ctx.cfg.unlearn.settings(ctx.cfg.method)))
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
    "tune": step_tune,
    "unlearn": step_unlearn,
    "evaluate": step_evaluate,
    "promote": step_promote,
    "cleanup": step_cleanup,
}


def run_step(cfg: RunConfig, name: str) -> Any:
    ctx = make_context(cfg)
    ctx.state.pop("run_id", None)  # a step run alone belongs to no pipeline run
    if name == "tune":
        _check_tunable(cfg)  # before the prerequisites: fail before training anything
        _tune_prerequisites(ctx)
    out = RUNNERS[name](ctx)
    if name == "tune":
        _add_tune_to_report(ctx)
    if name == "cleanup":
        # Cleanup ends a run made of single steps too: certify it.
        finalize(ctx, orchestrator="lethe steps")
    return out


def _add_tune_to_report(ctx: Context) -> None:
    """`lethe tune` alone: show the search in an existing report (it cannot have used it yet)."""
    from lethe.report import write_html_report, write_report_json

    rp = ctx.lay.fetch(ctx.lay.report_dir / "report.json")
    result = ctx.lay.tune_dir / "result.json"
    if not rp.is_file() or not result.is_file():
        return
    report = json.loads(rp.read_text())
    report["tune"] = {
        **tune_summary(json.loads(result.read_text())),
        "used_by_unlearned_model": bool(report.get("unlearn", {}).get("tuned")),
    }
    write_report_json(report, rp)
    grids = {p.stem.removeprefix("grid_"): p for p in sorted(rp.parent.glob("grid_*.png"))}
    write_html_report(report, grids, rp.parent / "report.html")
    ctx.lay.publish(ctx.lay.report_dir)


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


def _cost_ratios(st: dict[str, Any]) -> dict[str, float | None]:
    """Unlearning cost against retraining the oracle, in training-loop time and in wall time.

    The wall time of each Ray Train run includes a fixed start-up (~20 s on 2 cores) that does not
    grow with the data; the loop time is what scales. The oracle's numbers exist only when it was
    trained in this work dir's history (a cached oracle keeps the numbers of the run that trained it).
    """
    un, orc = st.get("unlearn", {}), st.get("oracle", {})
    return {
        "loop": _ratio(un.get("loop_s"), orc.get("final_loop_s")),
        "wall": _ratio(un.get("train_wall_s"), orc.get("train_wall_s")),
        "unlearn_loop_s": un.get("loop_s"),
        "oracle_loop_s": orc.get("final_loop_s"),
        "unlearn_wall_s": un.get("train_wall_s"),
        "oracle_wall_s": orc.get("train_wall_s"),
    }


def _key(*parts: str) -> str:
    import hashlib

    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _ratio(a: float | None, b: float | None) -> float | None:
    return float(a) / float(b) if a is not None and b not in (None, 0) else None


def _flat_params(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    """Nested settings as flat MLflow params: unlearn.decouple.lambda_factor, ..."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_params(f"{prefix}.{k}", v))
        else:
            out[f"{prefix}.{k}"] = v
    return out


def decouple_summary(calibration: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """What report.json says about a decouple_retain run: lambda, its rule, how decoupling ended."""
    return {
        "lambda": float(calibration["lambda"]),
        "lambda_rule": str(calibration["rule"]),
        "heldout_mse_mean": float(calibration["heldout_mse_mean"]),
        "calibration_images": int(calibration["n_images"]),
        "ascent_steps": int(metrics.get("method_ascent_steps", 0)),
        "lambda_reached": bool(metrics.get("method_reached", False)),
        "final_distance": float(metrics.get("method_distance", 0.0)),
        "retain_steps": int(metrics.get("method_retain_done", 0)),
    }


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
