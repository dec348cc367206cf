"""oracle: retrain from scratch on retain only, with the source model's recipe (Ray Train).

Cached by KFP on (config, retain digest); lethe's own model cache is keyed the same way.
"""

from kfp import dsl
from kfp.dsl import Model, Output

from components import LETHE_IMAGE


@dsl.component(base_image=LETHE_IMAGE, install_kfp_package=False)
def oracle(config_json: str, workdir: str, retain_digest: str, oracle: Output[Model]):
    """Train the oracle.

    Args:
        config_json: lethe RunConfig as JSON.
        workdir: work dir shared by the pipeline's tasks.
        retain_digest: digest of the retain shard (from split): the cache key.
        oracle: the retrained model as a lethe checkpoint.
    """
    from lethe.orchestration import kfp_steps

    kfp_steps.oracle(config_json, workdir, retain_digest, oracle)
