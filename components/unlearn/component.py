"""unlearn: run the configured unlearning method from the source model (Ray Train)."""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from components import LETHE_IMAGE


@dsl.component(base_image=LETHE_IMAGE, install_kfp_package=False)
def unlearn(
    config_json: str,
    workdir: str,
    parent_run_id: str,
    alpha: float,
    original: Input[Model],
    featnet: Input[Model],
    oracle: Input[Model],
    unlearned: Output[Model],
    metrics: Output[Metrics],
):
    """Unlearn the forget set.

    Args:
        config_json: lethe RunConfig as JSON.
        workdir: work dir shared by the pipeline's tasks.
        parent_run_id: MLflow pipeline run (from begin).
        alpha: forget-loss weight (from tune).
        original: the source model.
        featnet: the FD feature net (scores the run's checkpoints on validation images).
        oracle: the retrained oracle (the objective's yardstick when the best checkpoint is kept).
        unlearned: the unlearned model as a lethe checkpoint.
        metrics: final training losses and wall time.
    """
    from lethe.orchestration import kfp_steps

    kfp_steps.unlearn(
        config_json, workdir, parent_run_id, alpha, original, featnet, oracle, unlearned, metrics
    )
