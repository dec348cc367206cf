"""The lethe unlearning pipeline as a Kubeflow Pipelines (v2) DAG: the user-facing entry point.

The DAG is built by `lethe.orchestration.dag.build_pipeline` (components in `components/`);
`lethe pipeline compile | run --local | submit | schedule` drive it. Run as a script, this file
compiles it: `python pipelines/lethe_pipeline.py --output lethe-pipeline.yaml [lethe flags]`.
"""

import sys

from lethe.orchestration.dag import PIPELINE_DESCRIPTION, PIPELINE_NAME, TASKS, build_pipeline

__all__ = ["PIPELINE_DESCRIPTION", "PIPELINE_NAME", "TASKS", "build_pipeline"]

if __name__ == "__main__":
    from lethe.cli import main

    sys.exit(main(["pipeline", "compile", *sys.argv[1:]]))
