"""The pipeline's steps, each usable alone (`lethe <step>`) or chained (`lethe run`).

Steps communicate through a fixed layout under the work dir, so a step run alone finds what the
previous one left:

    <workdir>/shards/            manifest.json + forget / retain / heldout_* Parquet shards
    <workdir>/models/            original.pt, featnet.pt, oracle.pt, unlearned.pt
    <workdir>/report/            report.json, report.html, grid_*.png
    <workdir>/ray/               Ray Train storage_path (checkpoints)
    <workdir>/state.json         timings and tracking ids of the last run
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
from pathlib import Path
from typing import Any

import torch

from lethe import __version__
from lethe.config import RunConfig
from lethe.errors import CheckpointError, DataError, StorageError

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

    @contextmanager
    def step(self, name: str, params: dict[str, Any] | None = None):
        t0 = time.perf_counter()
        log.warning("== %s", name)
        with self.tracker.step(name, params) as run_id:
            yield run_id
            dt = time.perf_counter() - t0
            self.state.setdefault("timing_s", {})[name] = round(dt, 3)
            self.tracker.log_metrics({"wall_s": dt})
            save_state(self.lay, self.state)


def make_context(cfg: RunConfig) -> Context:
    from lethe.tracking import Tracker

    lay = check_workdir(cfg)
    tracker = Tracker(cfg.tracking_uri, cfg.tracking.experiment)
    return Context(cfg=cfg, lay=lay, tracker=tracker, state=load_state(lay))


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _manifest(ctx: Context):
    from lethe.data import Manifest

    if not ctx.lay.manifest.is_file():
        raise DataError("no shards found", where=str(ctx.lay.shards), expected="run `lethe split` first")
    return Manifest.load(ctx.lay.manifest)


def _arch(cfg: RunConfig, man) -> dict[str, Any]:
    """The family's architecture for this data (shape from the manifest), via the registry."""
    from lethe.models.families import get_family

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
    # Training numbers live beside the cached model, so a reused oracle still has its retrain cost.
    sidecar = cached.with_suffix(".json")
    info: dict[str, Any] = {"cache_key": cache_key, "cached": cached.is_file()}
    if kind != "featnet":
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
            ctx.tracker.log_dataset(name, sh.digest, sh.count, sh.path, context=name)
        ctx.tracker.log_params({"data_digest": man.data_digest, "request_digest": man.request_digest})
        ctx.tracker.log_metrics({f"{n}_count": float(s.count) for n, s in man.shards.items()})
        ctx.state["split"] = {"request_digest": man.request_digest}
    return man


def step_pretrain(ctx: Context) -> Path:
    cfg = ctx.cfg
    with ctx.step("pretrain", {"family": cfg.family, **_flat("pretrain", cfg)}):
        man = _manifest(ctx)
        key_orig = _key(man.data_digest, cfg.digest("family", "model", "pretrain", "eval", "seed"))
        path, info = _train_model(ctx, cfg.family, ("forget", "retain"), key_orig, "original")
        key_feat = _key(man.data_digest, cfg.digest("featnet", "seed"))
        _, finfo = _train_model(ctx, "featnet", ("forget", "retain"), key_feat, "featnet")
        ctx.tracker.log_params(
            {"original.cache_key": key_orig, "featnet.cache_key": key_feat, "original.phases": info["phases"]}
        )
        ctx.tracker.log_metrics(_numeric({**_prefix("original", info), **_prefix("featnet", finfo)}))
        ctx.state["pretrain"] = {"original": info, "featnet": finfo}
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
        arch = _arch(cfg, man)
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
        ctx.state["unlearn"] = {"train_wall_s": res.wall_s, **_numeric(res.metrics)}
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
        arch = _arch(cfg, man)
        models = {
            n: load_checkpoint(lay.model(n), expected_kind=cfg.family, expected_arch=arch)[0]
            for n in MODEL_NAMES
        }
        featnet, _ = load_checkpoint(lay.model("featnet"), expected_kind="featnet")
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
    fd = {
        s: _ratio(metrics["unlearned"][s]["fd"], metrics["original"][s]["fd"]) for s in ("forget", "retain")
    }
    return {
        "run_id": run_id,
        "dataset": man.dataset,
        "source_uri": man.source_uri,
        "family": cfg.family,
        "method": cfg.method,
        "alpha": cfg.unlearn.alpha,
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
    }


def step_promote(ctx: Context) -> str | None:
    from lethe.models.checkpoint import load_checkpoint

    cfg, lay = ctx.cfg, ctx.lay
    with ctx.step("promote", {"model_name": cfg.model_name}):
        man = _manifest(ctx)
        arch = _arch(cfg, man)
        model, meta = load_checkpoint(lay.model("unlearned"), expected_kind=cfg.family, expected_arch=arch)
        if not cfg.tracking.register_model:
            log.warning("promote: registration disabled (tracking.register_model=false)")
            return None
        h, w, c = man.height, man.width, man.channels
        example = torch.rand(4, c, h, w)
        from lethe import masks

        mask = masks.expand(masks.box_mask(h, w, cfg.eval.box_frac, model.mask_cell), 4).contiguous()
        tags = {
            "lethe.method": cfg.method,
            "lethe.alpha": str(cfg.unlearn.alpha),
            "lethe.family": cfg.family,
            "lethe.forget_digest": man.shards["forget"].digest,
            "lethe.forget_count": str(man.shards["forget"].count),
            "lethe.retain_count": str(man.shards["retain"].count),
            "lethe.request_digest": man.request_digest,
            "lethe.code_version": code_version(),
        }
        version = ctx.tracker.register_model(
            model,
            cfg.model_name,
            (example, mask),
            tags,
            description=f"lethe {cfg.method} unlearning of {cfg.family}",
        )
        ctx.state["promote"] = {"model_version": version}
        # report.json was written before registration: record the version in it now.
        rp = lay.report_dir / "report.json"
        if rp.is_file():
            from lethe.report import write_report_json

            report = json.loads(rp.read_text())
            report["mlflow"]["model_version"] = version
            write_report_json(report, rp)
            ctx.tracker.log_artifact(rp, "report")
        log.warning("registered %s version %s", cfg.model_name, version)
    return version


def step_cleanup(ctx: Context) -> dict[str, Any]:
    with ctx.step("cleanup"):
        man = _manifest(ctx)
        deleted = []
        for name in ("forget", "heldout_forget"):
            p = Path(man.shards[name].path)
            if p.exists():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            deleted.append({"shard": name, "uri": str(p), "absent_after": not p.exists()})
        ctx.state["cleanup"] = {"deleted": deleted}
        ctx.tracker.log_dict({"deleted": deleted}, "cleanup.json")
        if not all(d["absent_after"] for d in deleted):
            raise StorageError("forget shards still present after cleanup", where=str(ctx.lay.shards))
    return ctx.state["cleanup"]


# ----------------------------------------------------------------------------------------------
# the whole pipeline
# ----------------------------------------------------------------------------------------------
def run_all(cfg: RunConfig) -> Path:
    ctx = make_context(cfg)
    ctx.state = {"timing_s": {}}
    params = {
        "family": cfg.family,
        "method": cfg.method,
        "dataset": cfg.data.dataset,
        "preset": cfg.preset,
        "request.kind": cfg.request.kind,
        "alpha": cfg.unlearn.alpha,
        "seed": cfg.seed,
    }
    tags = {"lethe.code_version": code_version(), "lethe.pipeline": "lethe run"}
    t0 = time.perf_counter()
    with ctx.tracker.pipeline_run(f"lethe-{cfg.family}-{cfg.method}", params, tags) as run_id:
        ctx.state["run_id"] = run_id
        step_split(ctx)
        step_pretrain(ctx)
        step_oracle(ctx)
        step_unlearn(ctx)
        report_path = step_evaluate(ctx)
        step_promote(ctx)
        step_cleanup(ctx)
        ctx.state["timing_s"]["total"] = round(time.perf_counter() - t0, 3)
        _finalise_report(ctx, report_path)
    save_state(ctx.lay, ctx.state)
    return report_path


def _finalise_report(ctx: Context, report_path: Path) -> None:
    """The report is written in `evaluate`; timings of later steps and cleanup are known only now."""
    from lethe.report import write_html_report, write_report_json

    report = json.loads(report_path.read_text())
    report["timing_s"] = dict(ctx.state["timing_s"])
    report["run_id"] = ctx.state["run_id"]
    report["mlflow"]["run_id"] = ctx.state["run_id"]
    report["cleanup"] = ctx.state.get("cleanup", {})
    write_report_json(report, report_path)
    grids = {p.stem.removeprefix("grid_"): p for p in sorted(report_path.parent.glob("grid_*.png"))}
    html = write_html_report(report, grids, report_path.parent / "report.html")
    ctx.tracker.log_artifact(report_path, "report")
    ctx.tracker.log_artifact(html, "report")


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
    ctx.state.pop("run_id", None)  # a step run alone belongs to no pipeline run
    return RUNNERS[name](ctx)


# ----------------------------------------------------------------------------------------------
# small utilities
# ----------------------------------------------------------------------------------------------
def code_version() -> str:
    import subprocess

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
