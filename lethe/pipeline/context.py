"""The step context: what the steps of one invocation share (config, layout, tracker, run state)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from lethe import storage
from lethe.config import RunConfig
from lethe.errors import DataError
from lethe.pipeline.layout import Layout, check_workdir
from lethe.pipeline.state import RunState, load_state, now_iso, save_state

log = logging.getLogger("lethe")


@dataclass
class Context:
    cfg: RunConfig
    lay: Layout
    tracker: Any  # lethe.tracking.Tracker
    state: RunState = field(default_factory=RunState)
    # The pipeline's MLflow run when it was opened in another process (KFP components); None: the
    # active run of this process (`lethe run`), or no parent (a step run alone).
    parent_run_id: str | None = None

    @contextmanager
    def step(self, name: str, params: dict[str, Any] | None = None) -> Iterator[str]:
        t0 = time.perf_counter()
        started = now_iso()
        log.warning("== %s", name)
        with self.tracker.step(name, params, parent_run_id=self.parent_run_id) as run_id:
            yield run_id
            dt = time.perf_counter() - t0
            log.warning("   %s done in %.1f s", name, dt)
            self.state.record_step(name, dt, started)
            self.tracker.log_metrics({"wall_s": dt})
            self.save()

    def save(self) -> None:
        save_state(self.lay, self.state)

    def manifest(self):
        """The split's manifest (lethe.data.Manifest); a clear line when there are no shards yet."""
        from lethe.data import Manifest

        if not storage.is_file(self.lay.manifest_uri):
            raise DataError("no shards found", where=self.lay.shards_uri, expected="run `lethe split` first")
        return Manifest.load(self.lay.manifest_uri)

    def start_ray(self) -> None:
        """Join the configured Ray cluster, or start a local one, before the first Ray work."""
        from lethe.execution.ray_env import ensure_ray, ray_log_path

        self.configure_ray_data()
        # Every step, alone or in `lethe run`: Ray's own output (task tracebacks) goes to the log file.
        ensure_ray(self.cfg.resources, ray_log_path(self.lay.root))

    def configure_ray_data(self) -> None:
        """Ray Data's settings for this process (no Ray started): its bars are live progress on a
        terminal but thousands of lines in a CI log."""
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()


def make_context(cfg: RunConfig, parent_run_id: str | None = None) -> Context:
    from lethe.tracking import Tracker

    lay = check_workdir(cfg)
    tracker = Tracker(cfg.tracking_uri, cfg.tracking.experiment, retry_s=cfg.tracking.retry_s)
    return Context(cfg=cfg, lay=lay, tracker=tracker, state=load_state(lay), parent_run_id=parent_run_id)


def preflight(ctx: Context) -> str | None:
    """Checks that need no data, before anything is written: the source model must exist.

    Returns the source model pinned to a version (`models:/NAME/VERSION`; a save_pretrained folder
    as given), or None when lethe pretrains the source model itself. An alias is resolved once
    here so that every later step of the same run uses the same version even if the alias moves
    meanwhile.
    """
    if not ctx.cfg.source_model:
        return None
    from lethe.pipeline.source import check_folder, is_folder_source

    if is_folder_source(ctx.cfg):  # a save_pretrained folder: readable, and a model of the family
        return check_folder(ctx.cfg)
    mv = ctx.tracker.resolve_model_version(ctx.cfg.source_model)
    return f"models:/{mv.name}/{mv.version}"
