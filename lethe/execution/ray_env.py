"""Connect to a Ray cluster, or start a local one sized for small machines."""

from __future__ import annotations

import logging
import os

from lethe.config import ResourcesConfig

log = logging.getLogger("lethe.ray")


def ensure_ray(res: ResourcesConfig) -> None:
    import ray

    if ray.is_initialized():
        return
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
    cores = os.cpu_count() or 2
    # Train workers at 1 CPU each on 2 cores would leave Ray Data nothing to run on (deadlock):
    # oversubscribe logical CPUs so the data pipeline always has room.
    num_cpus = res.ray_num_cpus or max(4, 2 * cores)
    log.info("starting a local Ray with %d logical CPUs", num_cpus)
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )


def worker_threads(res: ResourcesConfig) -> int:
    if res.torch_threads:
        return res.torch_threads
    return max(1, (os.cpu_count() or 2) // res.num_workers)
