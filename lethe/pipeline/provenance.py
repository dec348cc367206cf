"""What a run says about where it came from: code version, redacted URIs, its cost against retraining."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from lethe import __version__
from lethe.errors import redact_userinfo
from lethe.pipeline.params import ratio


def code_version() -> str:
    """Package version plus the git commit: from the checkout, or baked into the image (infra/Dockerfile)."""
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


def redact(uri: str) -> str:
    """URIs may embed credentials (user:pass@host); never write them into reports. (The configuration
    refuses such URIs; this is the second line of defence, the same one error lines go through.)"""
    return redact_userinfo(uri)


def cost_ratios(unlearn: dict[str, Any], oracle: dict[str, Any]) -> dict[str, float | None]:
    """Unlearning cost against retraining the oracle, in training-loop time and in wall time.

    The wall time of each Ray Train run includes a fixed start-up (~20 s on 2 cores) that does not
    grow with the data; the loop time is what scales. The oracle's numbers exist only when it was
    trained in this work dir's history (a cached oracle keeps the numbers of the run that trained it).
    """
    return {
        "loop": ratio(unlearn.get("loop_s"), oracle.get("final_loop_s")),
        "wall": ratio(unlearn.get("train_wall_s"), oracle.get("train_wall_s")),
        "unlearn_loop_s": unlearn.get("loop_s"),
        "oracle_loop_s": oracle.get("final_loop_s"),
        "unlearn_wall_s": unlearn.get("train_wall_s"),
        "oracle_wall_s": oracle.get("train_wall_s"),
    }
