"""tune: choose the forget-loss weight alpha for the unlearn task.

Enabled, it runs lethe's tune step (`lethe tune`): a Ray Tune search over alpha and the learning rate
(ASHA early stopping, each trial a Ray Train unlearning run, one MLflow child run per trial) against
the oracle on held-out images, and returns the best trial's alpha; the best lr is recorded with it
(tune/best.json) and the unlearn step picks it up itself. Disabled (the pipeline default), it returns
the configured alpha straight away and trains nothing. The body is one call into
`lethe.orchestration.kfp_steps.tune`.
"""

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from components import LETHE_IMAGE


@dsl.component(base_image=LETHE_IMAGE, install_kfp_package=False)
def tune(
    config_json: str,
    workdir: str,
    parent_run_id: str,
    enabled: bool,
    original: Input[Model],
    featnet: Input[Model],
    oracle: Input[Model],
    trials: Output[Metrics],
) -> float:
    """Search alpha.

    Args:
        config_json: lethe RunConfig as JSON.
        workdir: work dir shared by the pipeline's tasks.
        parent_run_id: MLflow pipeline run (from begin).
        enabled: run the search; False returns the configured alpha.
        original: the source model.
        featnet: the feature network (the search's objective uses FD).
        oracle: the retrained model (the search's target).
        trials: alpha and the trials' metrics.

    Returns:
        The alpha the unlearn task uses.
    """
    from lethe.orchestration import kfp_steps

    return kfp_steps.tune(config_json, workdir, parent_run_id, enabled, original, featnet, oracle, trials)
