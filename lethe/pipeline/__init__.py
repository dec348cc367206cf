"""The pipeline's steps, each usable alone (`lethe <step>`) or chained (`lethe run`), one module each.

Steps talk through the work-dir layout (layout.py) and the run state (state.py), so a step run alone,
in a KFP component or in a Ray job finds what the previous one left. What an image-to-image or a
generator family does differently is behind one interface (family_api.py: i2i.py, generator.py).
"""

from lethe.pipeline.lifecycle import STEPS, finish_pipeline, open_pipeline, record_failure, run_all, run_step

__all__ = ["STEPS", "finish_pipeline", "open_pipeline", "record_failure", "run_all", "run_step"]
