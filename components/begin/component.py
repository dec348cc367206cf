"""begin: check the request and open the pipeline's MLflow parent run.

Resolves the configured source model (`models:/NAME@ALIAS` -> `models:/NAME/VERSION`) once, so
every later task of the run uses the same version, and fails here, before anything is written, when
it does not exist. Every later step is an MLflow child run of the run opened here.
"""

from typing import NamedTuple

from kfp import dsl

from components import LETHE_IMAGE


@dsl.component(base_image=LETHE_IMAGE, install_kfp_package=False)
def begin(config_json: str, workdir: str, kfp_run_id: str = "") -> NamedTuple(
    "BeginOutputs", [("parent_run_id", str), ("source_model", str)]
):
    """Open the MLflow pipeline run.

    Args:
        config_json: lethe RunConfig as JSON.
        workdir: work dir shared by the pipeline's tasks (overrides the config's).
        kfp_run_id: the KFP run id, recorded as MLflow tag lethe.kfp_run_id.

    Returns:
        parent_run_id: the MLflow run every step attaches to.
        source_model: the source model pinned to a version, or "" when lethe pretrains it.
    """
    from lethe.orchestration import kfp_steps

    return kfp_steps.begin(config_json, workdir, kfp_run_id)
