"""The pipeline's steps, each usable alone (`lethe <step>`) or chained (`lethe run`), one module each.

Steps talk through the work-dir layout (layout.py) and the run state (state.py), so a step run alone,
in a KFP component or in a Ray job finds what the previous one left. What an image-to-image or a
generator family does differently is behind one interface (family_api.py: i2i.py, generator.py).
"""

from typing import Any

__all__ = ["STEPS", "finish_pipeline", "open_pipeline", "record_failure", "run_all", "run_step"]


def __getattr__(name: str) -> Any:
    # Lazily: a module of this package (the work-dir lock, the layout) imports without the steps, so a
    # KFP task that only registers or cleans up does not import torch for nothing.
    if name in __all__:
        from lethe.pipeline import lifecycle

        return getattr(lifecycle, name)
    raise AttributeError(f"module 'lethe.pipeline' has no attribute {name!r}")
