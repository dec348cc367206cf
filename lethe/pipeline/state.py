"""The run state: what one run records as it goes, kept in `<workdir>/state.json`.

Steps that run in separate processes (KFP components, Ray jobs) find the pipeline's MLflow run and
the earlier steps' results here. It holds counts, digests, timings and tracking ids: never ids or
pixels of the forget set. The JSON leaves out the sections no step has filled yet.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from lethe.pipeline.layout import Layout


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class RunState:
    timing_s: dict[str, float] = field(default_factory=dict)  # wall time per step (+ "total")
    steps_at: dict[str, dict[str, str]] = field(default_factory=dict)  # step -> started_at / finished_at
    started_at: str | None = None
    run_id: str | None = None  # the pipeline's MLflow run (None: a step run alone)
    orchestrator: str | None = None  # "lethe run", "kfp", ...
    source_requested: str | None = None  # --source-model as given (an alias, say)
    source_pinned: str | None = None  # ... and pinned to a version by the first step
    split: dict[str, Any] = field(default_factory=dict)
    pretrain: dict[str, Any] = field(default_factory=dict)  # original / featnet / source lineage
    oracle: dict[str, Any] = field(default_factory=dict)
    tune: dict[str, Any] = field(default_factory=dict)
    unlearn: dict[str, Any] = field(default_factory=dict)
    unlearned_meta: dict[str, Any] = field(default_factory=dict)  # the unlearned checkpoint's meta
    evaluate: dict[str, Any] = field(default_factory=dict)
    promote: dict[str, Any] = field(default_factory=dict)
    cleanup: dict[str, Any] = field(default_factory=dict)
    certificate: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, Any] = field(default_factory=dict)  # {step, error, at}: for the exit handler

    @classmethod
    def fresh(cls, source_requested: str | None) -> RunState:
        """The state a new pipeline run starts from (no later step can attach to an older run)."""
        return cls(started_at=now_iso(), source_requested=source_requested)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known and v is not None})

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in out.items() if v != {} or k == "timing_s"}

    def record_step(self, name: str, wall_s: float, started_at: str) -> None:
        self.timing_s[name] = round(wall_s, 3)
        self.steps_at[name] = {"started_at": started_at, "finished_at": now_iso()}


def load_state(lay: Layout) -> RunState:
    lay.fetch(lay.state)
    if lay.state.is_file():
        return RunState.from_dict(json.loads(lay.state.read_text()))
    return RunState()


def save_state(lay: Layout, state: RunState) -> None:
    tmp = lay.state.with_suffix(".tmp")
    tmp.write_text(json.dumps(state.to_dict(), indent=2, sort_keys=True))
    os.replace(tmp, lay.state)
    lay.publish(lay.state)
