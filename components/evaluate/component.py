"""evaluate: source vs unlearned vs oracle on held-out forget and retain data; the run's report."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Model, Output

from components import LETHE_IMAGE


@dsl.component(base_image=LETHE_IMAGE, install_kfp_package=False)
def evaluate(
    config_json: str,
    workdir: str,
    parent_run_id: str,
    original: Input[Model],
    featnet: Input[Model],
    oracle: Input[Model],
    unlearned: Input[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    report_json: Output[Artifact],
):
    """Evaluate and write report.json / report.html.

    Args:
        config_json: lethe RunConfig as JSON.
        workdir: work dir shared by the pipeline's tasks.
        parent_run_id: MLflow pipeline run (from begin).
        original: the source model.
        featnet: the feature network for FD.
        oracle: the retrained model.
        unlearned: the unlearned model.
        metrics: metrics[model][split][name] flattened to model.split.name.
        report: the HTML report with image grids (held-out images only).
        report_json: report.json.
    """
    from lethe.orchestration import kfp_steps

    kfp_steps.evaluate(
        config_json,
        workdir,
        parent_run_id,
        original,
        featnet,
        oracle,
        unlearned,
        metrics,
        report,
        report_json,
    )
