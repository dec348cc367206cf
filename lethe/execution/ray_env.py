"""Connect to a Ray cluster, or start a local one sized for small machines; keep Ray's own output
(task tracebacks, Ray Data's execution lines, worker chatter) in a log file off the terminal."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from lethe.config import ResourcesConfig
from lethe.execution.progress import Bars

log = logging.getLogger("lethe.ray")

# Worker lines that stay on the terminal: lethe's progress (lethe.execution.worker.progress).
_OURS = "lethe: "
# Driver-side loggers whose console handlers Ray installs ("ray.data" does not propagate to "ray").
_RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune")
_started_here = False
_routed: dict[str, Any] = {}


def ray_log_path(workdir: str | os.PathLike[str]) -> Path:
    """Where Ray's own output of a run goes: <workdir>/logs/ray.log."""
    return Path(workdir) / "logs" / "ray.log"


# The GCS address of a Ray that a run started itself (no dashboard, so no State API), for this process
# and its children (kfp's local tasks join it): lethe.execution.ray_env.own_local_ray.
_OWN_RAY_ENV = "LETHE_OWN_RAY_ADDRESS"

# Read by ray._private.ray_constants at import: "0" makes a Ray that this process (or a child of it:
# kfp's local tasks) starts or joins use the loopback address for every node, so a local cluster
# binds and announces 127.0.0.1 only, never the machine's network address.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def prefer_loopback(res: ResourcesConfig) -> None:
    """Before Ray is imported: a local Ray of this run (no cluster address configured) stays on
    127.0.0.1. A run that joins a cluster, or a process that already imported Ray, is left alone."""
    if res.ray_address or os.environ.get("RAY_ADDRESS") or "ray" in sys.modules:
        return
    os.environ.setdefault(_LOOPBACK_ENV, "0")


def ensure_ray(res: ResourcesConfig, log_file: str | os.PathLike[str] | None = None) -> None:
    """Start or join Ray once per process; with `log_file`, route Ray's output there.

    A Ray this process did not start (a test session's, say) keeps its output where its owner put it.
    """
    global _started_here
    import ray

    if ray.is_initialized():
        if log_file is not None and _started_here:
            route_ray_output(Path(log_file))
        return
    _init_ray(res)
    _started_here = True
    # A new Ray installs its own worker-output handler again: route afresh even to the same file.
    _routed.pop("path", None)
    if log_file is not None:
        route_ray_output(Path(log_file))


def _init_ray(res: ResourcesConfig) -> None:
    import ray

    # Local clusters in this project never need Ray's token auth or usage reporting.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = res.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, log_to_driver=True)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray Train's controller notices a finished worker group at its next health check (every 2 s by
    # default, ~2.5 s of idle wall time measured per run here); polling a local cluster is cheap.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # Ray starts its workers at nice 15; a training worker's threads meet at OpenMP barriers, so
    # every nice-0 process that wakes (raylet, launcher, tracker) stalls both of them on 2 cores.
    # At nice 0 the demo MAE's Ray Train worker ran 7% faster (536 against 499 img/s, mean of four
    # interleaved pairs, faster in each; 2-core dev machine, 2026-12-07).
    os.environ.setdefault("RAY_worker_niceness", "0")
    cores = os.cpu_count() or 2
    # Train workers at 1 CPU each on 2 cores would leave Ray Data nothing to run on (deadlock):
    # oversubscribe logical CPUs so the data pipeline always has room.
    num_cpus = res.ray_num_cpus or max(4, 2 * cores)
    log.info("starting a local Ray with %d logical CPUs", num_cpus)
    ray.init(
        num_cpus=num_cpus,
        # A run's own Ray needs no dashboard (no job API, no web UI); its processes took ~4% of 2 cores
        # all through training (measured with `make run`). To watch a run, start a head with one and
        # pass its address (docs/ray.md).
        include_dashboard=False,
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    os.environ[_OWN_RAY_ENV] = ray.get_runtime_context().gcs_address


def own_local_ray() -> bool:
    """Is the Ray this process is connected to one that a run started for itself (this process or
    the one that started it): a local cluster without a dashboard, that ends with the run."""
    import ray

    own = os.environ.get(_OWN_RAY_ENV)
    return bool(own) and ray.is_initialized() and ray.get_runtime_context().gcs_address == own


def route_ray_output(path: Path) -> None:
    """Ray's driver-side log lines and its workers' output to `path`; lethe's lines stay on stderr.

    Ray Data logs a failed task's whole traceback on the driver (logger "ray.data") and Ray streams
    worker output to the driver's terminal (log_to_driver): both go to the file, except worker lines
    of lethe's own progress. With -v (lethe at DEBUG) everything keeps streaming to the terminal.
    """
    if logging.getLogger("lethe").isEnabledFor(logging.DEBUG) or _routed.get("path") == path:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    old = _routed.get("handler")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in _RAY_LOGGERS:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if h is old or (isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)):
                logger.removeHandler(h)
        logger.addHandler(handler)
    if old is not None:
        old.close()
    _routed.update(path=path, handler=handler)
    _route_worker_output(handler)
    log.info("Ray's own output goes to %s", path)


def _route_worker_output(handler: logging.Handler) -> None:
    # Ray's stream dispatcher is internal API: if it moves, worker output just stays on the terminal.
    try:
        from ray._private import worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)
    bars = Bars()
    file_logger = logging.getLogger("ray.workers")
    file_logger.propagate = False
    file_logger.handlers = [handler]
    file_logger.setLevel(logging.INFO)

    def emit(data: dict[str, Any]) -> None:
        lines = data.get("lines", [])
        if data.get("pid") == "autoscaler":  # its status tables every few seconds: events only
            lines = list(ray_worker.filter_autoscaler_events(lines))
        who = data.get("actor_name") or data.get("task_name") or ""
        for line in lines:
            file_logger.info("(%s pid=%s) %s", who, data.get("pid"), line)
        # On a terminal, training progress becomes a bar; lethe's other worker lines are printed.
        ours = [ln for ln in lines if ln.startswith(_OURS) and not bars.feed(ln)]
        if ours:
            ray_worker.print_to_stdstream({**data, "lines": ours}, ignore_prefix=ignore_prefix)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", emit)
    _route_raylet_notices(ray_worker, file_logger)


# Raylet notices that need nothing from a person: a short-lived task burst on a 2-core machine
# starts more Python workers than Ray expects, and Ray says so (with a link) each time.
_RAYLET_NOISE = ("PYTHON worker processes have been started",)


def _route_raylet_notices(ray_worker: Any, file_logger: logging.Logger) -> None:
    """Ray prints raylet messages (GCS error channel) with print_to_stdstream, past the dispatcher:
    the notices above go to the log file, every other one (an OOM kill, say) stays on the terminal."""
    original = getattr(ray_worker, "_lethe_print_to_stdstream", ray_worker.print_to_stdstream)
    ray_worker._lethe_print_to_stdstream = original

    def to_stdstream(data: dict[str, Any], ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet":
            noise = [ln for ln in data.get("lines", []) if any(n in ln for n in _RAYLET_NOISE)]
            for line in noise:
                file_logger.info("(raylet) %s", line)
            data = {**data, "lines": [ln for ln in data.get("lines", []) if ln not in noise]}
            if not data["lines"]:
                return
        original(data, ignore_prefix=ignore_prefix)

    ray_worker.print_to_stdstream = to_stdstream


def worker_threads(res: ResourcesConfig) -> int:
    if res.torch_threads:
        return res.torch_threads
    return max(1, (os.cpu_count() or 2) // res.num_workers)
