"""claim: the nightly pipeline's first task, which takes the model's queued deletion requests.

Claims them atomically in the request store (two runs at once never share one), writes the night's
forget set (those requests and every one applied to the model before) as an ids file in the work
dir, readable by its owner only, and returns the night's run configuration for the later tasks.
Nothing queued -> its count (`Output`) is 0 and the rest of the pipeline is skipped.
"""

from typing import NamedTuple

from kfp import dsl

from components import LETHE_IMAGE


@dsl.component(base_image=LETHE_IMAGE, install_kfp_package=False)
def claim(config_json: str, workdir: str, model: str, kfp_run_id: str = "") -> NamedTuple(
    # The count is called Output: kfp.local (2.17) resolves a condition on a task's output only for
    # `Output` (it reads "pipelinechannel--claim-claimed" as a pipeline parameter and skips the body).
    "ClaimOutputs",
    [("Output", int), ("config_json", str)],
):
    """Claim the queued requests of a registered model.

    Args:
        config_json: lethe RunConfig as JSON.
        workdir: work dir shared by the pipeline's tasks (overrides the config's).
        model: the registered model whose requests are applied (its champion is the source).
        kfp_run_id: the KFP run id, part of the claimer's name in the requests' audit trail.

    Returns:
        Output: how many requests this run claimed (0: nothing to do).
        config_json: the night's RunConfig as JSON (request uuids and keyed digests, no ids).
    """
    from lethe.orchestration import kfp_steps

    return kfp_steps.claim(config_json, workdir, model, kfp_run_id)
