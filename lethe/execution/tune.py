"""Ray Tune over the unlearning hyperparameters.

Every trial is a Tune *function* running lethe's unlearning loop. A one-worker CPU trial runs it in
the Tune actor itself and reports to Tune directly. A trial of several workers, or on GPUs, fits a
TorchTrainer (Train v2 trainers cannot be handed to a Tuner), whose RunConfig carries
`TuneReportCallback` to forward every `ray.train.report` of rank 0 to Tune. Either way the loop
reports the objective (lethe.metrics.unlearning_objective on validation images) at every checkpoint,
so ASHA can stop a poor trial at its first rungs. Stopping a trial kills its Tune actor, and with it
any TorchTrainer controller and workers it owns.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from lethe.errors import LetheError

log = logging.getLogger("lethe.tune")

METRIC = "objective"
OBJECTIVE_TEXT = (
    "the worst over the masks the gates judge (centre box; outpainting border when eval.outpaint) of "
    "|log(FD_forget(unlearned) / FD_forget(oracle))| + w * max(0, FD_retain(unlearned) / FD_retain(original) - 1)"
    " + v * max(0, 10^((PSNR_retain(original) - PSNR_retain(unlearned)) / 10) - 1)"
    " + g * (max(0, FD_retain ratio - (1 + m * y)) + max(0, 10^(drop / 10) - 10^(m * D / 10))), y and D"
    " the retain gates' limits"
)


@dataclass
class TrialOutcome:
    trial_id: str
    method: str
    alpha: float
    lr: float
    objective: float | None  # None: the trial failed before its first report
    status: str  # "finished" | "stopped_early" | "not_started" (the time budget ran out) | "error"
    iterations: int
    steps: int
    wall_s: float
    fd_forget: float | None = None
    fd_retain: float | None = None
    fd_forget_vs_oracle: float | None = None
    fd_retain_vs_original: float | None = None
    psnr_retain_drop: float | None = None  # dB below the original's retain PSNR (centre box)
    error: str | None = None
    # score_best: `objective` and the FD figures are those of the trial's best report (the unlearn
    # step keeps its best checkpoint too); its last report's objective is here, and the best's step.
    final_objective: float | None = None
    best_step: int | None = None
    # Every scored report: step, objective and the figures the unlearn step's history keeps, and
    # "ended" on the run's last one (lethe.pipeline.replay takes the chosen trial's as its own).
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class TuneOutcome:
    trials: list[TrialOutcome]
    best: TrialOutcome
    wall_s: float
    max_iterations: int
    # True: each trial's score is its best report, a checkpoint the unlearn step (keeping its best)
    # reaches too, so a trial stopped early competes with the rest; False: its last report.
    score_best: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "trials": [asdict(t) for t in self.trials],
            "best": asdict(self.best),
            "wall_s": self.wall_s,
            "max_iterations": self.max_iterations,
            "score_best": self.score_best,
            **self.extra,
        }


def _trial(
    config: dict[str, Any],
    *,
    jobs: dict[str, dict[str, Any]],
    inputs: dict[str, Any],
    teacher_state: dict[str, Any],
    eval_payload: dict[str, Any],
    fit_kwargs: dict[str, Any],
    name: str,
    in_actor: bool,
) -> None:
    """One Tune trial: unlearn with this trial's method, alpha and lr.

    A trial of one CPU worker (`in_actor`, decided by `_trainable`) runs the unlearning loop right
    here, in its Tune actor; others (DDP trials, GPU trials) run it as a Ray Train run. A Train run
    per trial starts a controller, a worker group and their helper actors, each a new process:
    measured on the demo on 2 cores, about 25 s of CPU per trial, against about 2 s of training in a
    trial that ASHA stops at its first rung.
    """
    import ray.tune

    from lethe.execution.fit import fit, retain_rows, train_config
    from lethe.execution.job import TrainJob
    from lethe.execution.loops import train_loop_per_worker
    from lethe.execution.worker import in_tune_actor

    job = jobs[config["method"]]
    train_job = TrainJob(**{**job, "alpha": float(config["alpha"]), "lr": float(config["lr"])})
    trial_id = ray.tune.get_context().get_trial_id()
    # The retain rows this method's own unlearning run reads (a prefix, in hash order, as
    # unlearn_inputs reads them; `inputs` holds the widest method's): a batch depends on how many
    # rows there are, so the trial then draws the unlearn step's batches, and its scores are the
    # scores of the unlearn step's own checkpoints.
    rows = retain_rows(train_job, fit_kwargs["num_workers"])
    data = {**inputs, "retain": inputs["retain"][:rows]}
    if in_actor:
        with in_tune_actor():
            train_loop_per_worker(train_config(train_job, data, teacher_state, eval_payload))
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    fit(
        train_job,
        data,
        name=f"{name}-{trial_id}",
        dest=None,
        teacher_state=teacher_state,
        eval_payload=eval_payload,
        callbacks=[TuneReportCallback()],
        reuse_finished=False,
        **fit_kwargs,
    )


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _trainable(
    *,
    jobs: dict[str, Any],
    inputs: dict[str, Any],
    teacher_state: dict[str, Any],
    eval_payload: dict[str, Any],
    tune_cfg: Any,
    storage_path: str,
    name: str,
    use_gpu: bool,
) -> Any:
    """`_trial` with everything but the searched config bound, and the CPUs a trial's actor holds
    (a one-worker trial trains in that actor; a Ray Train trial's workers hold their own)."""
    from ray import tune

    t = tune_cfg
    in_actor = t.workers_per_trial == 1 and not use_gpu
    fit_kwargs = {
        "num_workers": t.workers_per_trial,
        "use_gpu": use_gpu,
        "cpus_per_worker": t.cpus_per_worker,
        "storage_path": storage_path,
        "max_failures": 1,
    }
    return tune.with_resources(
        tune.with_parameters(
            _trial,
            jobs={m: job.to_config() for m, job in jobs.items()},
            inputs=inputs,
            teacher_state=teacher_state,
            eval_payload=eval_payload,
            fit_kwargs=fit_kwargs,
            name=name,
            in_actor=in_actor,
        ),
        # A trial that trains in its own actor holds its worker's CPUs too: as many trials share the
        # cluster as when each drove a worker group.
        {"cpu": t.cpus_per_trial + (t.cpus_per_worker if in_actor else 0.0)},
    )


def _storage_kwargs(storage_path: str) -> dict[str, Any]:
    """Where Tune keeps its results: RunConfig's storage_path, and an S3 filesystem for s3:// URIs."""
    from lethe import storage

    remote = storage.is_s3(storage_path)
    where: dict[str, Any] = {"storage_path": storage.fs_path(storage_path) if remote else storage_path}
    if remote:
        where["storage_filesystem"] = storage.s3_filesystem()
    return where


def _best_report(res: Any) -> dict[str, Any] | None:
    """The report (a row of the trial's metrics) with the lowest objective; None: none scored."""
    df = res.metrics_dataframe
    if df is None or METRIC not in df or df[METRIC].dropna().empty:
        return None
    return dict(df.loc[df[METRIC].astype(float).idxmin()])


def _history(res: Any) -> list[dict[str, float]]:
    """The trial's scored reports, in step order (see TrialOutcome.history)."""
    from lethe.execution.loops import SCORE_KEYS

    df = res.metrics_dataframe
    if df is None or METRIC not in df or "step" not in df:
        return []
    keys = [k for k in ("step", *SCORE_KEYS, "ended") if k in df]
    rows = [{k: float(v) for k, v in row.items()} for row in df[keys].to_dict("records")]
    return sorted(
        ({**r, "step": int(r["step"])} for r in rows if _num(r.get(METRIC)) is not None),
        key=lambda r: r["step"],
    )


def _trial_outcome(res: Any, max_iters: dict[str, int], score_best: bool) -> TrialOutcome | None:
    """One trial of the finished search (a ray.tune.Result) as a TrialOutcome; None for a trial the
    time budget left unstarted before Tune gave it a config (its Result holds nothing)."""
    if not (res.config or {}).get("method"):
        return None
    m = dict(res.metrics or {})
    iters = int(m.get("training_iteration", 0) or 0)
    final = _num(m.get(METRIC))
    best = _best_report(res) if score_best else None
    # The figures of the report the trial is scored by: its best one (score_best), else its last.
    at = m if best is None else best
    objective = _num(at.get(METRIC))
    method = str(res.config["method"])
    if res.error is not None:
        status = "error"
    elif iters == 0:
        status = "not_started"
    elif iters < max_iters[method] and not m.get("ended"):
        # max_iters counts reports over the step budget; a method that ends sooner says so ("ended")
        status = "stopped_early"
    else:
        status = "finished"
    err = None
    if res.error is not None:
        # Type and first line only: a traceback could carry paths, never data, but is noise here.
        err = f"{type(res.error).__name__}: {(str(res.error).strip().splitlines() or [''])[0][:200]}"
    return TrialOutcome(
        trial_id=str(m.get("trial_id") or res.path.rstrip("/").rpartition("/")[2]),
        method=method,
        alpha=float(res.config["alpha"]),
        lr=float(res.config["lr"]),
        objective=objective,
        status=status,
        iterations=iters,
        steps=int(m.get("step", 0) or 0),
        wall_s=float(m.get("time_total_s", 0.0) or 0.0),
        fd_forget=_num(at.get("fd_forget")),
        fd_retain=_num(at.get("fd_retain")),
        fd_forget_vs_oracle=_num(at.get("fd_forget_vs_oracle")),
        fd_retain_vs_original=_num(at.get("fd_retain_vs_original")),
        psnr_retain_drop=_num(at.get("psnr_retain_drop")),
        error=err,
        final_objective=final,
        best_step=None if best is None or _num(best.get("step")) is None else int(best["step"]),
        history=_history(res),
    )


def _best_trial(trials: list[TrialOutcome], name: str, score_best: bool, unstarted: int = 0) -> TrialOutcome:
    # Scored by its best report, a trial stopped early (by ASHA or the budget) ran the same first steps
    # as the whole run would (same length, same schedule), and the unlearn step keeps its best
    # checkpoint: its score is one the real run reaches, so every scored trial competes. Scored by its
    # last report, a stopped trial's score is of a shorter run than the unlearn step makes: the best is
    # picked among trials that ran their whole length when any did.
    scored = [x for x in trials if x.objective is not None]
    complete = scored if score_best else [x for x in scored if x.status == "finished"] or scored
    if not complete:
        first = next((x.error for x in trials if x.error), None)
        if first is None and (unstarted or any(x.status == "not_started" for x in trials)):
            raise LetheError(
                "no tuning trial reported within the search's time budget",
                where=f"{name} (tune.budget_frac)",
                expected="a larger tune.budget_frac, or null for no limit",
                seen=f"{len(trials)} trials, none scored",
            )
        raise LetheError(
            "every tuning trial failed", where=name, seen=first or "no trial reported an objective"
        )
    return min(complete, key=lambda x: x.objective)  # type: ignore[arg-type, return-value]


def _trials_done(total: int) -> Any:
    """A Tune callback that shows the search's progress as trials done (stopped early or not) of
    `total`: a bar on a terminal, progress lines elsewhere (lethe.execution.progress)."""
    from ray import tune

    from lethe.execution.progress import InProcess

    class TrialsDone(tune.Callback):
        def __init__(self) -> None:
            self.done, self.report = 0, InProcess("search", unit="trial")

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.done += 1
            self.report(min(self.done, total), total)

        on_trial_error = on_trial_complete

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            self.report.close()  # a search its budget cut ends its bar short of the total

    return TrialsDone()


def _max_iterations(jobs: dict[str, Any], total_steps: dict[str, int]) -> dict[str, int]:
    """ASHA counts reports (training_iteration): per method, those of a trial that runs its whole
    step budget."""
    from lethe.execution.job import scored_steps

    return {
        m: max(1, len(scored_steps(total_steps[m], job.checkpoint_every, job.eval_every)))
        for m, job in jobs.items()
    }


def run_tune(
    *,
    jobs: dict[str, Any],  # method -> its unlearning TrainJob; alpha and lr are searched
    inputs: dict[str, Any],  # lethe.execution.fit.unlearn_inputs: read once, shared by the trials
    teacher_state: dict[str, Any],
    eval_payload: dict[str, Any],
    tune_cfg: Any,  # lethe.config.TuneConfig
    total_steps: dict[str, int],  # method -> the most steps its job runs
    samples: int,  # trials per method
    time_budget_s: float | None,  # the whole search stops here (None: every trial runs)
    score_best: bool,  # a trial scores its best report (the unlearn step keeps its best checkpoint)
    start: dict[str, float],  # {"alpha", "lr"}: every method's first trial (the configured settings)
    storage_path: str,
    name: str,
    seed: int,
    use_gpu: bool,
) -> TuneOutcome:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    t = tune_cfg
    max_iters = _max_iterations(jobs, total_steps)
    max_iter = max(max_iters.values())
    trainable = _trainable(
        jobs=jobs,
        inputs=inputs,
        teacher_state=teacher_state,
        eval_payload=eval_payload,
        tune_cfg=t,
        storage_path=storage_path,
        name=name,
        use_gpu=use_gpu,
    )
    where = _storage_kwargs(storage_path)
    tuner = tune.Tuner(
        trainable,
        # Every method gets `samples` trials: the first at `start`, the others at their own random
        # alpha and lr. The configured settings are thus always among the first trials: a search cut
        # short by its budget has still tried what the configuration says.
        param_space={
            "method": tune.grid_search(list(jobs)),
            "alpha": tune.loguniform(*t.alpha_range),
            "lr": tune.loguniform(*t.lr_range),
        },
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="min",
            num_samples=samples,
            # Seeded: the same config draws the same alphas and learning rates. The concurrency
            # limit goes to the generator itself: Tune ignores TuneConfig(max_concurrent_trials)
            # when a BasicVariantGenerator is passed in.
            search_alg=BasicVariantGenerator(
                points_to_evaluate=[dict(start)], random_state=seed, max_concurrent=t.max_concurrent_trials
            ),
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                max_t=max_iter,
                grace_period=min(t.grace_period, max_iter),
                reduction_factor=t.reduction_factor,
            ),
            time_budget_s=time_budget_s,
            # A trial's actor is kept for the next trial: a new one imports torch and lethe and
            # fetches the shared inputs again, seconds of CPU per trial against the ~1 s of
            # training of a trial that ASHA stops at its first rung.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name, verbose=0, callbacks=[_trials_done(len(jobs) * samples)], **where
        ),
    )
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0

    outcomes = [_trial_outcome(res, max_iters, score_best) for res in grid]
    trials = sorted((x for x in outcomes if x is not None), key=lambda x: x.trial_id)
    best = _best_trial(trials, name, score_best, unstarted=outcomes.count(None))
    return TuneOutcome(trials=trials, best=best, wall_s=wall, max_iterations=max_iter, score_best=score_best)
