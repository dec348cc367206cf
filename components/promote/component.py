"""register-and-promote: a new registry version with lineage tags; the alias moves only if the
promotion gates pass (lethe.gates). All or nothing: a failure after the version exists deletes it
and puts the alias back."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components import LETHE_IMAGE


@dsl.component(base_image=LETHE_IMAGE, install_kfp_package=False)
def promote(
    config_json: str,
    workdir: str,
    parent_run_id: str,
    unlearned: Input[Model],
    report_json: Input[Artifact],
    gates: Output[Metrics],
) -> NamedTuple("PromoteOutputs", [("model_version", str), ("promoted", bool)]):
    """Register the unlearned model and apply the gates.

    Args:
        config_json: lethe RunConfig as JSON.
        workdir: work dir shared by the pipeline's tasks.
        parent_run_id: MLflow pipeline run (from begin).
        unlearned: the unlearned model.
        report_json: report.json from evaluate (the gates read its metrics).
        gates: each gate's value and pass/fail.

    Returns:
        model_version: the new registered version ("" when registration is disabled).
        promoted: whether the alias moved to it.
    """
    from lethe.orchestration import kfp_steps

    out = kfp_steps.promote(config_json, workdir, parent_run_id, unlearned, report_json, gates)
    return (out["model_version"], out["promoted"])
