"""split: apply the forget request and write forget / retain / held-out shards (Ray Data).

Never cached: the data set behind a name or path can change between runs. Its digests are string
outputs, which is what the cached downstream tasks are keyed on.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import LETHE_IMAGE


@dsl.component(base_image=LETHE_IMAGE, install_kfp_package=False)
def split(config_json: str, workdir: str, parent_run_id: str, shards: Output[Dataset]) -> NamedTuple(
    "SplitOutputs", [("data_digest", str), ("retain_digest", str), ("request_digest", str)]
):
    """Split the data set.

    Args:
        config_json: lethe RunConfig as JSON.
        workdir: work dir shared by the pipeline's tasks; the shards are written under it.
        parent_run_id: MLflow pipeline run (from begin).
        shards: the shard manifest (counts, content digests, source URI; never ids or pixels).

    Returns:
        data_digest: digest of all training data (forget + retain).
        retain_digest: digest of the retain shard.
        request_digest: digest of the forget request.
    """
    from lethe.orchestration import kfp_steps

    out = kfp_steps.split(config_json, workdir, parent_run_id, shards)
    return (out["data_digest"], out["retain_digest"], out["request_digest"])
