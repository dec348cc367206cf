"""cleanup: the pipeline's exit handler, run whether the other tasks succeeded or failed.

Deletes the forget shards and records their absence, writes the final report and the unlearning
certificate, and closes the pipeline's MLflow run as FINISHED or FAILED (with the reason); in the
nightly pipeline it also settles the claimed requests (applied / failed / queued again). KFP allows
one exit task per handler, so closing the run lives here; an exit task may not consume other tasks'
outputs, so the MLflow run id comes from the work dir.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Output

from components import LETHE_IMAGE


@dsl.component(base_image=LETHE_IMAGE, install_kfp_package=False)
def cleanup(
    config_json: str,
    workdir: str,
    status: dsl.PipelineTaskFinalStatus,
    certificate: Output[HTML],
    certificate_json: Output[Artifact],
    model: str = "",
):
    """Clean up, certify and close the run.

    Args:
        config_json: lethe RunConfig as JSON.
        workdir: work dir shared by the pipeline's tasks.
        status: final state of the pipeline's body (filled in by KFP).
        certificate: the unlearning certificate, readable.
        certificate_json: the unlearning certificate, JSON.
        model: the nightly pipeline's model (its claimed requests get their verdict here), or "".
    """
    from lethe.orchestration import kfp_steps

    kfp_steps.cleanup(
        config_json, workdir, status.state, status.error_message or "", certificate, certificate_json, model
    )
