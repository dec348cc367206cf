"""tune: choose the forget-loss weight alpha for the unlearn task.

lethe has no tune step yet (`lethe tune` / `steps.step_tune` is being added on another branch).
Until it lands this component, when enabled, calls the unlearn step with the configured alpha as the
only trial (an MLflow run `tune` with the trial as its child) and returns that alpha; disabled (the
pipeline default) it returns the configured alpha straight away. The body is one call into
`lethe.orchestration.kfp_steps.tune`, which switches to `steps.step_tune` as soon as it exists.
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
