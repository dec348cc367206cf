"""The lethe unlearning pipeline as a Kubeflow Pipelines (v2) DAG.

    begin -> split -> resolve-or-pretrain -> oracle -> tune -> unlearn -> evaluate -> promote
    (all inside an ExitHandler whose exit task, cleanup, deletes the forget shards, writes the
    certificate and closes the MLflow run whether the body succeeded or failed)

The nightly pipeline of a registered model (`--model NAME`) starts with `claim` (the model's queued
deletion requests) and runs the body above only when it claimed some, on the night's configuration
(the claim's output); its cleanup settles the requests (applied / failed / queued again).

The tasks run one after the other: they share the work dir and its state file, and the parallelism
is inside each step (Ray). Caching: split never (its input can change under the same name);
resolve-or-pretrain and oracle are keyed on (config, data digests, pinned source model version)
because those are their only inputs; the tasks with side effects (MLflow runs, registry, deletion)
never. Retries: every task talks to MLflow (and to S3 / a Ray cluster when configured), so each
gets `retries` retries with exponential back-off; a promotion that fails half-way rolls itself back,
so retrying it is safe.

`lethe pipeline compile | run --local | submit | schedule` build it with `build_pipeline`
(lethe.orchestration.kfp_client); the components come from the `components` package, installed with
lethe (pyproject.toml), so the DAG is importable wherever lethe is.
"""

from typing import Any

from kfp import dsl

from components.begin import begin
from components.claim import claim
from components.cleanup import cleanup
from components.evaluate import evaluate
from components.oracle import oracle
from components.promote import promote
from components.source_model import resolve_or_pretrain
from components.split import split
from components.tune import tune as tune_component
from components.unlearn import unlearn

PIPELINE_NAME = "lethe-unlearning"
PIPELINE_DESCRIPTION = (
    "Apply a deletion request to an image generative model: split, source model, oracle, unlearning, "
    "evaluation against the oracle, gated promotion in the MLflow registry, cleanup and certificate."
)
# Task names in the compiled spec, one per step (the tests check them all).
TASKS = (
    "begin",
    "split",
    "resolve-or-pretrain",
    "oracle",
    "tune",
    "unlearn",
    "evaluate",
    "promote",
    "cleanup",
)
# The nightly pipeline (`--model NAME`) claims the model's queued requests first, and runs the rest
# only when it claimed some.
NIGHTLY_TASKS = ("claim", *TASKS)
# Kubernetes requests per task on a cluster (ignored by the local runner, so not set there).
_HEAVY = {"cpu": "2", "memory": "6G"}
_LIGHT = {"cpu": "500m", "memory": "1G"}


def mount_volume(task: Any, pvc: str, mount_path: str) -> Any:
    """Mount an existing PersistentVolumeClaim in the task's pod (KFP's Kubernetes platform spec).

    The same structure `kfp.kubernetes.mount_pvc` writes; set directly because kfp-kubernetes
    2.17.3 requires kfp >= 2.17.3, which lethe cannot pin (see PLATFORM-NOTES).
    """
    mounts = task.platform_config.setdefault("kubernetes", {}).setdefault("pvcMount", [])
    mounts.append(
        {"mountPath": mount_path, "constant": pvc, "pvcNameParameter": {"runtimeValue": {"constant": pvc}}}
    )
    return task


def _task(task: Any, retries: int, cache: bool, resources: dict | None, volume: tuple | None = None) -> Any:
    if volume:
        mount_volume(task, *volume)
    task.set_caching_options(enable_caching=cache)
    if retries > 0:
        task.set_retry(
            num_retries=retries, backoff_duration="30s", backoff_factor=2.0, backoff_max_duration="600s"
        )
    if resources:
        task.set_cpu_request(resources["cpu"]).set_memory_request(resources["memory"])
    return task


def _body(step: Any, config: Any, tune: Any, light: dict | None) -> None:
    """begin .. promote, every task on `config`: the pipeline's, or the night's from `claim`."""
    b = step(begin, size=light, config_json=config, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    run_id = b.outputs["parent_run_id"]
    s = step(split, config_json=config, parent_run_id=run_id)
    p = step(
        resolve_or_pretrain,
        cache=True,
        config_json=config,
        data_digest=s.outputs["data_digest"],
        source_model=b.outputs["source_model"],
    )
    o = step(oracle, cache=True, config_json=config, retain_digest=s.outputs["retain_digest"]).after(p)
    models = {"original": p.outputs["original"], "featnet": p.outputs["featnet"]}
    t = step(
        tune_component,
        config_json=config,
        parent_run_id=run_id,
        enabled=tune,
        oracle=o.outputs["oracle"],
        **models,
    )
    u = step(
        unlearn,
        config_json=config,
        parent_run_id=run_id,
        alpha=t.outputs["Output"],
        oracle=o.outputs["oracle"],
        **models,
    )
    e = step(
        evaluate,
        config_json=config,
        parent_run_id=run_id,
        oracle=o.outputs["oracle"],
        unlearned=u.outputs["unlearned"],
        **models,
    )
    step(
        promote,
        size=light,
        config_json=config,
        parent_run_id=run_id,
        unlearned=u.outputs["unlearned"],
        report_json=e.outputs["report_json"],
    )


def build_pipeline(
    config_json: str,
    workdir: str,
    retries: int = 2,
    cluster: bool = True,
    tune_enabled: bool = False,
    pvc: str | None = None,
    pvc_mount: str | None = None,
    model: str = "",
) -> Any:
    """The pipeline function, with this run configuration as its parameters' defaults.

    `retries`: retries per task (0 locally: a failure there is a bug or bad input, not a flaky
    service). `cluster`: also set Kubernetes resource requests. `pvc`: an existing
    PersistentVolumeClaim (ReadWriteMany) mounted at `pvc_mount` in every task: the shared work dir.
    `model`: the nightly pipeline of that registered model (its queued deletion requests, from its
    champion); the model is part of the pipeline, not a run parameter, so a run of one model's
    pipeline can never settle another's requests.
    """
    heavy = _HEAVY if cluster else None
    light = _LIGHT if cluster else None
    vol = (pvc, pvc_mount) if pvc else None

    @dsl.pipeline(name=PIPELINE_NAME, description=PIPELINE_DESCRIPTION)
    def lethe_pipeline(config_json: str = config_json, workdir: str = workdir, tune: bool = tune_enabled):
        def step(component: Any, cache: bool = False, size: dict | None = heavy, **inputs: Any) -> Any:
            # Every task reads the run configuration and the shared work dir.
            inputs.setdefault("config_json", config_json)
            task = component(workdir=workdir, **inputs)
            return _task(task, retries, cache, size, vol)

        with dsl.ExitHandler(step(cleanup, size=light, model=model), name="unlearning"):
            if not model:
                _body(step, config_json, tune, light)
            else:
                c = step(claim, size=light, model=model, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
                with dsl.If(c.outputs["Output"] > 0, name="requests-claimed"):  # how many it claimed
                    _body(step, c.outputs["config_json"], tune, light)

    return lethe_pipeline


__all__ = ["NIGHTLY_TASKS", "PIPELINE_NAME", "TASKS", "build_pipeline"]
