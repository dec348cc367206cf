"""resolve-or-pretrain: the source model to unlearn from, and the feature net used for FD.

With a source model (pinned to `models:/NAME/VERSION` by begin) it is loaded through MLflow;
otherwise lethe pretrains one on all training data. Cached by KFP on (config, data digest, source
model version): a rerun on the same data reuses the models. It therefore takes no per-run input and
finds the pipeline's MLflow run in the work dir when it does run.
"""

from kfp import dsl
from kfp.dsl import Model, Output

from components import LETHE_IMAGE


@dsl.component(base_image=LETHE_IMAGE, install_kfp_package=False)
def resolve_or_pretrain(
    config_json: str,
    workdir: str,
    data_digest: str,
    source_model: str,
    original: Output[Model],
    featnet: Output[Model],
):
    """Resolve the registered source model or pretrain one.

    Args:
        config_json: lethe RunConfig as JSON.
        workdir: work dir shared by the pipeline's tasks.
        data_digest: digest of the training data (from split): part of the cache key.
        source_model: models:/NAME/VERSION, or "" to pretrain.
        original: the source model as a lethe checkpoint.
        featnet: the feature network whose features define FD.
    """
    from lethe.orchestration import kfp_steps

    kfp_steps.resolve_or_pretrain(config_json, workdir, data_digest, source_model, original, featnet)
