"""`lethe pipeline compile | run --local | submit | schedule`: the pipeline, built and driven.

The DAG is built in `lethe/orchestration/dag.py` from the components in `components/` (installed
with lethe); `pipelines/lethe_pipeline.py` is its user-facing entry point (DESIGN.md 4). Everything a user can get wrong (config, source model,
cron, unreachable servers, unwritable output) is checked before any work starts or anything is
written, and reported as one LetheError line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lethe
from lethe.config import RunConfig
from lethe.errors import LetheError, StorageError
from lethe.pipeline.nightly import Night, forget_last_night, last_pipeline_night

log = logging.getLogger("lethe.pipeline")

DEFAULT_EXPERIMENT = "lethe"


class PipelineError(LetheError):
    """The pipeline could not be built, run, submitted or scheduled."""


def source_root() -> Path:
    """The source tree holding lethe/ (and components/ in a checkout)."""
    return Path(lethe.__file__).resolve().parent.parent


def _dag():
    """The DAG builder; its components come from the `components` package installed with lethe."""
    try:
        from lethe.orchestration import dag
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("components"):
            raise
        raise PipelineError(
            "the KFP components are not installed",
            where="components",
            expected="lethe installed from its source tree (pip install -e . installs components/ too)",
            seen=str(e),
        ) from None
    return dag


def pipeline_arguments(cfg: RunConfig, tune: bool = False, cluster: bool = False) -> dict[str, Any]:
    """The pipeline's run parameters for this configuration.

    Locally the work dir is resolved against this machine's current directory; for a cluster it
    must already be absolute: a path on the volume every task mounts.
    """
    if cluster:
        if not Path(cfg.workdir).is_absolute():
            raise PipelineError(
                "on a cluster the work dir must be an absolute path on a volume mounted in every task",
                where="--workdir",
                expected="e.g. /mnt/lethe/nightly",
                seen=repr(cfg.workdir),
            )
        workdir = cfg.workdir
    else:
        workdir = str(cfg.workdir_path)
    return {"config_json": cfg.model_dump_json(), "workdir": workdir, "tune": bool(tune)}


@dataclass
class Volume:
    """An existing PersistentVolumeClaim mounted in every task; the work dir must lie on it."""

    pvc: str
    mount_path: str | None = None  # default: the work dir's parent (so the model cache is on it too)

    def resolve(self, workdir: str) -> tuple[str, str]:
        mount = self.mount_path or str(Path(workdir).parent)
        inside = Path(workdir) == Path(mount) or Path(mount) in Path(workdir).parents
        if not Path(mount).is_absolute() or not inside:
            raise PipelineError(
                "the work dir must lie on the mounted volume",
                where="--pvc-mount",
                expected=f"an absolute path containing {workdir}",
                seen=repr(mount),
            )
        return self.pvc, mount


def build(
    cfg: RunConfig,
    retries: int = 2,
    cluster: bool = True,
    tune: bool = False,
    volume: Volume | None = None,
    model: str = "",
):
    mod = _dag()
    args = pipeline_arguments(cfg, tune, cluster=cluster)
    pvc, mount = volume.resolve(args["workdir"]) if volume else (None, None)
    return mod.build_pipeline(
        args["config_json"],
        args["workdir"],
        retries=retries,
        cluster=cluster,
        tune_enabled=tune,
        pvc=pvc,
        pvc_mount=mount,
        model=model,
    )


def compile_pipeline(
    cfg: RunConfig,
    output: str | os.PathLike[str],
    retries: int = 2,
    tune: bool = False,
    volume: Volume | None = None,
    model: str = "",
) -> Path:
    """Write the pipeline's IR YAML (this config as the parameters' defaults); atomic."""
    from kfp import compiler

    pipeline = build(cfg, retries=retries, tune=tune, volume=volume, model=model)  # bad arguments fail first
    out = Path(output).expanduser().resolve()
    if out.suffix not in (".yaml", ".yml", ".json"):
        raise PipelineError("pipeline file must end in .yaml, .yml or .json", where=str(out))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=out.suffix)
        os.close(fd)
    except OSError as e:
        raise StorageError(
            "cannot write the pipeline file", where=str(out), seen=e.strerror or str(e)
        ) from None
    try:
        compiler.Compiler().compile(pipeline_func=pipeline, package_path=tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


# -- local runner -----------------------------------------------------------------------------------


def _importable_in_subprocesses() -> None:
    """kfp's SubprocessRunner starts each task with this interpreter: make lethe (and the
    components package the tasks' code lives in) importable there even from a plain checkout."""
    root = str(source_root())
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *parts])


def _start_shared_ray(cfg: RunConfig) -> bool:
    """One local Ray for the whole local run, joined by every task through RAY_ADDRESS.

    Each task would otherwise start (and tear down) a Ray of its own, which costs more than most
    smoke-sized steps. Nothing to do when the config names a cluster or one is already set.
    """
    if cfg.resources.ray_address or os.environ.get("RAY_ADDRESS"):
        return False
    import ray

    from lethe.execution.ray_env import ensure_ray, ray_log_path

    ensure_ray(cfg.resources, ray_log_path(cfg.workdir_path))
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    return True


def _screen(cfg: RunConfig):
    """kfp's runner output to <workdir>/logs/pipeline.log and a line per task on the terminal; with
    -v (lethe at DEBUG) everything streams to the terminal as kfp prints it."""
    from lethe.orchestration.local_screen import task_lines

    if logging.getLogger("lethe").isEnabledFor(logging.DEBUG):
        return contextlib.nullcontext()
    path = cfg.workdir_path / "logs" / "pipeline.log"
    logging.getLogger("lethe").warning("the pipeline's full log: %s (-v shows it here)", path)
    return task_lines(path)


@dataclass
class LocalResult:
    report: Path | None  # None: a nightly run with nothing queued
    certificate: Path | None
    run_id: str | None
    night: Night | None = None  # the nightly pipeline's verdict on its requests


def run_local(
    cfg: RunConfig,
    tune: bool = False,
    cache: bool = True,
    retries: int = 0,
    pipeline_root: str | None = None,
    model: str = "",
) -> LocalResult:
    """Run the pipeline with kfp's local SubprocessRunner (each task a subprocess of this Python).

    The whole run holds the work dir's lock; the tasks inherit it (LETHE_WORKDIR_LOCK in their env).
    """
    from lethe.pipeline.workdir_lock import hold

    with hold(cfg):
        return _run_local(cfg, tune, cache, retries, pipeline_root, model)


def _run_local(
    cfg: RunConfig, tune: bool, cache: bool, retries: int, pipeline_root: str | None, model: str
) -> LocalResult:
    from lethe.pipeline.context import make_context, preflight
    from lethe.pipeline.layout import layout
    from lethe.pipeline.state import load_state

    ctx = make_context(cfg)  # work dir writable, MLflow reachable
    preflight(ctx)  # unknown source model: fail now, before any task runs
    import kfp.local

    _importable_in_subprocesses()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    root = Path(pipeline_root) if pipeline_root else cfg.workdir_path / "kfp"
    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        raise_on_error=True,
        enable_caching=cache,
        cache_root=str(cfg.cache_path / "kfp"),
    )
    pipeline = build(cfg, retries=retries, cluster=False, tune=tune, model=model)
    if model:
        forget_last_night(cfg)  # what run_local reports afterwards is this run's verdict, not an older one
    failure: BaseException | None = None
    shared_ray = _start_shared_ray(cfg)
    screen = _screen(cfg)
    try:
        with screen, warnings.catch_warnings():
            # "lethe:0.1.0" is not a python image name: expected, the local runner uses this interpreter.
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            try:
                pipeline(**pipeline_arguments(cfg, tune))
            except RuntimeError as e:  # kfp.local: "Pipeline ... finished with status FAILURE"
                failure = e
    finally:
        if shared_ray:
            import ray

            ray.shutdown()
            os.environ.pop("RAY_ADDRESS", None)
    state = load_state(layout(cfg))
    night = last_pipeline_night(cfg) if model else None
    if night is not None and not night.claimed:
        return LocalResult(report=None, certificate=None, run_id=None, night=night)
    if failure is not None or state.failed:
        f = state.failed
        if f:
            raise PipelineError(f"pipeline failed at step {f.get('step')}: {f.get('error')}")
        raise PipelineError("pipeline failed", seen=str(failure).splitlines()[0][:300] if failure else "")
    report = cfg.workdir_path / "report" / "report.json"
    cert = state.certificate.get("path")
    return LocalResult(
        report=report, certificate=Path(cert) if cert else None, run_id=state.run_id, night=night
    )


# -- a KFP server -----------------------------------------------------------------------------------


def _client(host: str, namespace: str | None = None):
    import kfp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            if namespace:
                return kfp.Client(host=host, namespace=namespace)
            return kfp.Client(host=host)
        except Exception as e:  # noqa: BLE001 - urllib3 / kfp_server_api / TimeoutError
            raise PipelineError(
                "cannot reach the Kubeflow Pipelines API",
                where=host,
                expected="the KFP API endpoint, e.g. http://localhost:8080 (kubectl port-forward svc/ml-pipeline-ui)",
                seen=_short(e),
            ) from None


def _short(e: BaseException) -> str:
    status = getattr(e, "status", None)
    reason = getattr(e, "reason", None)
    if status or reason:
        return f"HTTP {status} {reason}".strip()
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:300]


def _api(what: str, host: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except LetheError:
        raise
    except Exception as e:  # noqa: BLE001
        raise PipelineError(f"Kubeflow Pipelines refused to {what}", where=host, seen=_short(e)) from None


def submit(
    cfg: RunConfig,
    host: str,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    tune: bool = False,
    retries: int = 2,
    namespace: str | None = None,
    pipeline_root: str | None = None,
    volume: Volume | None = None,
    model: str = "",
) -> str:
    """One run on a KFP server; returns its run id."""
    with tempfile.TemporaryDirectory(prefix="lethe-kfp-") as d:
        package = compile_pipeline(
            cfg, Path(d) / "lethe-pipeline.yaml", retries=retries, tune=tune, volume=volume, model=model
        )
        client = _client(host, namespace)
        result = _api(
            "create the run",
            host,
            client.create_run_from_pipeline_package,
            str(package),
            arguments=pipeline_arguments(cfg, tune, cluster=True),
            run_name=run_name or (f"lethe-nightly-{model}" if model else f"lethe-{cfg.family}-{cfg.method}"),
            experiment_name=experiment,
            namespace=namespace,
            pipeline_root=pipeline_root,
        )
    return str(result.run_id)


@dataclass
class Schedule:
    recurring_run_id: str
    experiment_id: str
    pipeline_id: str
    version_id: str
    cron: str


def _find_version(client, pipeline_id: str, name: str) -> str | None:
    flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    resp = client.list_pipeline_versions(pipeline_id, page_size=1, filter=flt)
    versions = getattr(resp, "pipeline_versions", None) or []
    return versions[0].pipeline_version_id if versions else None


def _pipeline_id(
    client, host: str, package: Path, pipeline_name: str, description: str, namespace: str | None
):
    """The id of the pipeline called `pipeline_name`, uploading `package` as it if there is none."""
    pipeline_id = _api("look up the pipeline", host, client.get_pipeline_id, pipeline_name)
    if pipeline_id is None:
        uploaded = _api(
            "upload the pipeline",
            host,
            client.upload_pipeline,
            str(package),
            pipeline_name=pipeline_name,
            description=description,
            namespace=namespace,
        )
        pipeline_id = uploaded.pipeline_id
    return pipeline_id


def _version_id(client, host: str, package: Path, pipeline_id: str, version_name: str, digest: str):
    """The id of the pipeline's version called `version_name`, uploading `package` as it if there is none."""
    version_id = _api("look up the pipeline version", host, _find_version, client, pipeline_id, version_name)
    if version_id is None:
        version = _api(
            "upload the pipeline version",
            host,
            client.upload_pipeline_version,
            str(package),
            version_name,
            pipeline_id=pipeline_id,
            description=f"lethe {lethe.__version__}, spec sha256 {digest}",
        )
        version_id = version.pipeline_version_id
    return version_id


def schedule(
    cfg: RunConfig,
    host: str,
    cron: str,
    experiment: str = DEFAULT_EXPERIMENT,
    job_name: str | None = None,
    pipeline_name: str | None = None,
    tune: bool = False,
    retries: int = 2,
    namespace: str | None = None,
    max_concurrency: int = 1,
    catchup: bool = False,
    volume: Volume | None = None,
    model: str = "",
) -> Schedule:
    """A recurring run of a pinned pipeline version on a KFP server.

    The compiled pipeline is uploaded once per content (version name `<pipeline>-<lethe version>-
    <spec digest>`), so scheduling the same pipeline twice reuses the version; the recurring run
    refers to that version, with this config as its parameters. No catch-up and at most one run at
    a time by default: runs of one pipeline share the work dir.
    """
    from lethe.orchestration.cron import to_kfp_cron

    cron6 = to_kfp_cron(cron)  # a bad cron fails here, before any request
    mod = _dag()
    pipeline_name = pipeline_name or mod.PIPELINE_NAME
    with tempfile.TemporaryDirectory(prefix="lethe-kfp-") as d:
        package = compile_pipeline(
            cfg, Path(d) / "lethe-pipeline.yaml", retries=retries, tune=tune, volume=volume, model=model
        )
        digest = hashlib.sha256(package.read_bytes()).hexdigest()[:12]
        version_name = f"{pipeline_name}-{lethe.__version__}-{digest}"
        client = _client(host, namespace)
        exp = _api(
            "create the experiment", host, client.create_experiment, name=experiment, namespace=namespace
        )
        pipeline_id = _pipeline_id(client, host, package, pipeline_name, mod.PIPELINE_DESCRIPTION, namespace)
        version_id = _version_id(client, host, package, pipeline_id, version_name, digest)
        rr = _api(
            "create the recurring run",
            host,
            client.create_recurring_run,
            experiment_id=exp.experiment_id,
            job_name=job_name or f"{pipeline_name}-{cfg.family}-{cfg.method}",
            description=f"lethe {cfg.method} unlearning of {model or cfg.model_name}, cron {cron6}"
            + (" (nightly: its queued deletion requests)" if model else ""),
            cron_expression=cron6,
            max_concurrency=max_concurrency,
            no_catchup=not catchup,
            params=pipeline_arguments(cfg, tune, cluster=True),
            pipeline_id=pipeline_id,
            version_id=version_id,
            enabled=True,
        )
    return Schedule(
        recurring_run_id=str(rr.recurring_run_id),
        experiment_id=str(exp.experiment_id),
        pipeline_id=str(pipeline_id),
        version_id=str(version_id),
        cron=cron6,
    )


__all__ = [
    "LocalResult",
    "PipelineError",
    "Schedule",
    "Volume",
    "build",
    "compile_pipeline",
    "pipeline_arguments",
    "run_local",
    "schedule",
    "source_root",
    "submit",
]
