"""method auto (lethe.pipeline.auto): the configuration it needs, the search's time budget, the choice
and why, and the later steps running the chosen method; the trial scores it chooses on
(lethe.execution.tune) and how the choice is shown (summary, HTML picture, certificate)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from lethe.catalogue import I2I_METHODS
from lethe.config import build_config
from lethe.errors import ConfigError, LetheError
from lethe.execution.tune import TrialOutcome, _best_trial, _trial_outcome
from lethe.pipeline.auto import method_choice, no_search, resolve_method, search_budget, searched_methods
from lethe.pipeline.oracle_audit import oracle_audit
from lethe.report.charts import candidates_chart_svg
from lethe.report.html import _method_choice
from lethe.report.summary import method_line, method_selection


def test_auto_is_a_search_over_the_image_to_image_methods() -> None:
    cfg = build_config("smoke", overrides={"method": "auto"})
    assert cfg.tune.enabled  # auto always tunes: the search is where the method comes from
    # every image-to-image method, the papers' two first (a short budget reaches only the first ones)
    assert sorted(searched_methods(cfg)) == sorted(I2I_METHODS)
    assert searched_methods(cfg)[:2] == ("encoder_noise", "decouple_retain")
    assert cfg.tune.samples_per_method == 1 and cfg.tune.budget_frac is None  # the smoke preset's
    fixed = build_config("smoke", overrides={"method": "max_loss"})
    assert not fixed.tune.enabled and searched_methods(fixed) == ("max_loss",)
    demo = build_config(
        "demo", overrides={"method": "auto", "tune": {"methods": ["max_loss", "encoder_noise"]}}
    )
    assert searched_methods(demo) == ("max_loss", "encoder_noise") and demo.tune.budget_frac == 0.5


def test_auto_is_the_default_of_the_demo_preset_and_of_the_image_to_image_families() -> None:
    assert (
        build_config("demo").method == "auto"
        and build_config("demo", overrides={"family": "vqgan"}).method == "auto"
    )
    # a generator family's default is its feature method (auto searches image-to-image methods)
    gan = build_config("demo", overrides={"family": "gan", "request": {"kind": "feature", "feature": "x"}})
    assert gan.method == "latent_feature" and not gan.tune.enabled
    # the smoke preset runs a fixed method: a search takes longer than a smoke run
    assert build_config("smoke").method == "encoder_noise" and not build_config("smoke").tune.enabled


def _man(heldout_forget: int | None, retain_digest: str = "r" * 64) -> SimpleNamespace:
    shards = {
        "retain": SimpleNamespace(digest=retain_digest, count=500),
        "heldout_retain": SimpleNamespace(count=500),
    }
    if heldout_forget is not None:
        shards["heldout_forget"] = SimpleNamespace(count=heldout_forget)
    return SimpleNamespace(shards=shards)


def test_auto_without_a_search_runs_its_first_method_and_says_why() -> None:
    auto = build_config("demo", overrides={"tune": {"methods": ["retain_label", "encoder_noise"]}})
    assert no_search(auto, _man(300)) is None  # a class request with an oracle: it searches
    assert no_search(build_config("demo", overrides={"method": "max_loss"}), _man(0)) is None  # fixed
    ids = build_config(
        "demo",
        overrides={"request": {"kind": "ids", "ids_file": "ids.txt"}, "tune": {"methods": ["retain_label"]}},
    )
    fb = no_search(ids, _man(0))
    assert fb == {
        "searched": False,
        "methods": ["retain_label"],
        "chosen": "retain_label",
        "why": "no search: an id request has no held-out images to choose on apart from the graded ones; "
        "ran retain_label with the configured settings",
    }
    # too few validation images for a score that means anything (as the unlearn step's own rule)
    assert "5 / 100 held-out forget / retain images to validate on" in no_search(auto, _man(25))["why"]
    assert no_search(auto, _man(40)) is None
    # cache.oracle = sample, not drawn: method auto does not force an oracle (a fixed method's tuning
    # does), it runs unsearched instead
    sample = {"cache": {"oracle": "sample", "oracle_audit_share": 1e-9}}
    auto_sampled = build_config("demo", overrides=sample)
    assert not oracle_audit(auto_sampled, _man(300))["audited"]
    assert "no oracle to compare with" in no_search(auto_sampled, _man(300))["why"]
    tuned = build_config("demo", overrides={**sample, "method": "max_loss", "tune": {"enabled": True}})
    assert oracle_audit(tuned, _man(300))["audited"]
    # the later steps: an untuned run of that method, so the oracle audit answers as it did
    ctx = SimpleNamespace(cfg=auto_sampled, state=SimpleNamespace(unlearn={}, tune={}))
    ctx.state.tune = {"best": {"method": "encoder_noise"}, "no_search": no_search(auto_sampled, _man(300))}
    resolve_method(ctx)
    assert ctx.cfg.method == "encoder_noise" and not ctx.cfg.tune.enabled
    assert not oracle_audit(ctx.cfg, _man(300))["audited"]
    report = {"method": "encoder_noise", "unlearn": {"auto": ctx.state.tune["no_search"]}}
    assert method_line(report) == "method auto: " + ctx.state.tune["no_search"]["why"]
    assert method_selection(report)["methods"] == ["encoder_noise"]
    # cache.oracle = none (the training data is gone): never a search, and the run goes on untuned
    gone = build_config("demo", overrides={"cache": {"oracle": "none"}})
    assert (
        "no oracle to compare with (cache.oracle = none: the training data is not kept"
        in no_search(gone, _man(300))["why"]
    )
    ctx = SimpleNamespace(
        cfg=gone, state=SimpleNamespace(unlearn={}, tune={"no_search": no_search(gone, _man(300))})
    )
    resolve_method(ctx, "encoder_noise")  # as the unlearn step calls it
    assert ctx.cfg.method == "encoder_noise" and not ctx.cfg.tune.enabled


@pytest.mark.parametrize(
    ("over", "line"),
    [
        ({"tune": {"methods": ["encoder_noise", "forget_all"]}}, "tune.methods"),
        ({"tune": {"methods": ["max_loss", "max_loss"]}}, "tune.methods"),
        ({"tune": {"methods": []}}, "tune.methods"),
        ({"family": "gan", "request": {"kind": "feature", "feature": "Trouser"}}, "method auto searches"),
    ],
)
def test_bad_auto_settings_are_one_line(over: dict[str, Any], line: str) -> None:
    with pytest.raises(ConfigError, match=line):
        build_config("smoke", overrides={"method": "auto", **over})


def test_the_budget_is_a_share_of_the_oracles_training_time() -> None:
    auto = build_config("demo", overrides={"method": "auto"})
    assert search_budget(auto, {"train_wall_s": 200.0}) == {
        "frac": 0.5,
        "oracle_train_s": 200.0,
        "time_budget_s": 100.0,
    }
    # An oracle trained in seconds (a small data set): the floor, or no trial would even start.
    assert search_budget(auto, {"train_wall_s": 13.0})["time_budget_s"] == 60.0
    # Unknown oracle time (no oracle trained in this run or recorded): no limit, and it says so.
    assert search_budget(auto, {})["time_budget_s"] is None
    # A fixed method's tuning keeps its trial count as its only bound.
    fixed = build_config("demo", overrides={"method": "encoder_noise", "tune": {"enabled": True}})
    assert search_budget(fixed, {"train_wall_s": 200.0})["time_budget_s"] is None


def _trial(tid: str, method: str, objective: float | None, status: str = "finished") -> TrialOutcome:
    return TrialOutcome(tid, method, 0.2, 1e-3, objective, status, 4 if objective is not None else 0, 6, 3.0)


@dataclass
class _Outcome:
    trials: list[TrialOutcome]
    score_best: bool = False  # trials scored by their last report
    best: TrialOutcome = field(init=False)

    def __post_init__(self) -> None:
        self.best = _best_trial(self.trials, "tune-x", self.score_best)


def test_the_choice_is_the_lowest_objective_and_says_why() -> None:
    cfg = build_config("smoke", overrides={"method": "auto", "tune": {"methods": list(I2I_METHODS[:3])}})
    m1, m2, m3 = I2I_METHODS[:3]
    outcome = _Outcome(
        [
            _trial("t1", m1, 0.40),
            _trial("t2", m2, 0.10),
            _trial("t3", m2, 0.05, "stopped_early"),  # stopped by ASHA: not comparable with finished ones
            _trial("t4", m3, None, "not_started"),
        ]
    )
    choice = method_choice(cfg, outcome, source=0.9)
    assert choice["auto"] and choice["chosen"] == m2 and outcome.best.trial_id == "t2"
    assert choice["by_method"][m2] == {
        "trials": 2,
        "scored": 2,
        "best_objective": 0.05,
        "best_trial": "t3",
        "best_finished_objective": 0.10,
    }
    assert choice["by_method"][m3]["scored"] == 0
    assert f"next best that ran its whole length: {m1} at 0.4" in choice["why"]
    assert f"not scored within the budget: {m3}" in choice["why"]
    assert "doing nothing scores 0.9" in choice["why"] and "better than every trial" not in choice["why"]
    near = method_choice(cfg, outcome, source=0.01)  # the source already behaves like the oracle
    assert "doing nothing scores 0.01 (better than every trial: the source is already close" in near["why"]
    assert "stopped before its end" not in choice["why"]  # m2's own stopped trial is no other method


def test_a_lower_score_of_a_method_stopped_early_is_named_but_not_chosen() -> None:
    methods = ["retain_label", "decouple_retain"]
    cfg = build_config("smoke", overrides={"method": "auto", "tune": {"methods": methods}})
    outcome = _Outcome(
        [_trial("t1", "retain_label", 0.30), _trial("t2", "decouple_retain", 0.24, "stopped_early")]
    )
    choice = method_choice(cfg, outcome, source=None)
    assert choice["chosen"] == "retain_label"
    assert "lower but stopped before its end (ASHA or the budget): decouple_retain at 0.24" in choice["why"]
    assert "next best" not in choice["why"] and "doing nothing" not in choice["why"]


def test_scored_by_their_best_checkpoint_trials_stopped_early_compete() -> None:
    """A trial's best report is a checkpoint the unlearn step reaches too (it runs the same steps and
    keeps its best), so a lower score of a trial ASHA or the budget stopped wins."""
    methods = ["encoder_noise", "noisy_label", "decouple_retain"]
    cfg = build_config("smoke", overrides={"method": "auto", "tune": {"methods": methods}})
    trials = [
        _trial("t1", "encoder_noise", 0.44),
        _trial("t2", "noisy_label", 0.35, "stopped_early"),
        _trial("t3", "decouple_retain", 0.22, "stopped_early"),
    ]
    trials[2].best_step = 35
    outcome = _Outcome(trials, score_best=True)
    choice = method_choice(cfg, outcome, source=1.76)
    assert choice["chosen"] == "decouple_retain" and outcome.best.trial_id == "t3"
    assert choice["why"].startswith(
        "lowest validation objective of any trial's best checkpoint, 0.22 (trial t3 at step 35, stopped_early)"
    )
    assert "next best: noisy_label at 0.35" in choice["why"] and "stopped before its end" not in choice["why"]
    # the same trials scored by their last report: only the trial that ran its whole length counts
    assert method_choice(cfg, _Outcome(trials), source=1.76)["chosen"] == "encoder_noise"


def test_a_budget_that_scored_nothing_is_one_clear_error() -> None:
    with pytest.raises(LetheError, match="no tuning trial reported within the search's time budget"):
        _best_trial([_trial("t1", "max_loss", None, "not_started")], "tune-x", True)
    with pytest.raises(LetheError, match="every tuning trial failed"):
        _best_trial(
            [TrialOutcome("t1", "max_loss", 0.2, 1e-3, None, "error", 0, 0, 1.0, error="E: x")], "t", False
        )


def _result(objectives: list[float], method: str = "max_loss") -> Any:
    df = pd.DataFrame(
        {
            "objective": objectives,
            "step": [2 * (i + 1) for i in range(len(objectives))],
            "fd_forget_vs_oracle": [1.0 + v for v in objectives],
        }
    )
    return SimpleNamespace(
        metrics={
            "objective": objectives[-1],
            "training_iteration": len(objectives),
            "step": 2 * len(objectives),
        },
        metrics_dataframe=df,
        config={"method": method, "alpha": 0.3, "lr": 1e-3},
        error=None,
        path="/x/trial_1",
    )


def test_a_trial_scores_its_best_report_when_the_unlearn_step_keeps_its_best_checkpoint() -> None:
    res = _result([0.5, 0.2, 0.35])  # over-forgets after step 4: the kept checkpoint would be step 4
    best = _trial_outcome(res, {"max_loss": 3}, score_best=True)
    assert (best.objective, best.final_objective, best.best_step, best.status) == (0.2, 0.35, 4, "finished")
    assert best.fd_forget_vs_oracle == 1.2  # the FD figures are the best report's too, not the last one's
    last = _trial_outcome(res, {"max_loss": 3}, score_best=False)
    assert last.objective == 0.35 and last.best_step is None
    assert _trial_outcome(_result([0.5]), {"max_loss": 3}, True).status == "stopped_early"


def test_a_trial_whose_method_ended_before_its_step_budget_finished() -> None:
    # decouple_retain ends once its retain stage is done: 7 reports of a 27-report budget, not ASHA's stop
    ended = _result([0.5, 0.3], "decouple_retain")
    ended.metrics["ended"] = 1.0
    assert _trial_outcome(ended, {"decouple_retain": 27}, True).status == "finished"
    ended.metrics["ended"] = 0.0
    assert _trial_outcome(ended, {"decouple_retain": 27}, True).status == "stopped_early"


def test_a_trial_the_budget_left_without_a_config_is_skipped_and_counts_as_unstarted() -> None:
    # Tune's Result of a trial still pending when the budget ran out holds no metrics and no config
    pending = SimpleNamespace(metrics={}, config=None, metrics_dataframe=None, error=None, path="/x/t9")
    assert _trial_outcome(pending, {"max_loss": 3}, True) is None
    with pytest.raises(LetheError, match="no tuning trial reported within the search's time budget"):
        _best_trial([], "tune-x", True, unstarted=2)


def test_later_steps_run_report_and_certify_the_chosen_method() -> None:
    auto = build_config("smoke", overrides={"method": "auto"})
    ctx = SimpleNamespace(cfg=auto, state=SimpleNamespace(unlearn={}, tune={}))
    resolve_method(ctx)
    assert ctx.cfg.method == "auto"  # nothing chosen yet: a run that failed before is certified as auto
    ctx.state.tune = {"best": {"method": "retain_label"}}
    resolve_method(ctx)
    assert ctx.cfg.method == "retain_label" and ctx.cfg.tune.enabled
    ctx.cfg, ctx.state.unlearn = auto, {"method": "max_loss"}  # what the unlearn step ran wins
    resolve_method(ctx)
    assert ctx.cfg.method == "max_loss"
    fixed = SimpleNamespace(cfg=build_config("smoke"), state=ctx.state)
    resolve_method(fixed, "max_loss")
    assert fixed.cfg.method == "encoder_noise"


def _tune_report(auto: bool = True) -> dict[str, Any]:
    trials = [
        {
            "trial_id": "t1",
            "method": "max_loss",
            "objective": 0.4,
            "alpha": 0.1,
            "lr": 1e-3,
            "status": "finished",
        },
        {
            "trial_id": "t2",
            "method": "retain_label",
            "objective": 0.1,
            "alpha": 0.2,
            "lr": 1e-3,
            "status": "finished",
        },
    ]
    return {
        "method": "retain_label",
        "tune": {
            "trials": trials,
            "best": trials[1],
            "baselines": {"source_objective": 0.9},
            "search": {"methods": ["retain_label", "max_loss"]},  # the order searched, not sorted
            "budget": {"frac": 0.25, "oracle_train_s": 200.0, "time_budget_s": 50.0, "spent_s": 48.0},
            "selection": {
                "auto": auto,
                "chosen": "retain_label",
                "why": "lowest validation objective, 0.1",
                "by_method": {"max_loss": {}, "retain_label": {}},
            },
        },
    }


def test_the_choice_is_shown_in_words_and_as_a_picture() -> None:
    report = _tune_report()
    assert method_line(report) == (
        "method auto: chose retain_label among 2 methods: lowest validation objective, 0.1"
    )
    html = _method_choice(report["tune"])
    assert "method auto chose retain_label" in html
    assert escape("The search took 48 s; its budget was 50 s (25% of the oracle's 200 s training).") in html
    assert html.count("<circle") == 2 and "r='6'" in html and "doing nothing" in html
    assert method_selection(report) == {
        "methods": ["retain_label", "max_loss"],
        "chosen": "retain_label",
        "why": "lowest validation objective, 0.1",
    }
    fixed = _tune_report(auto=False)
    assert (
        method_line(fixed) is None and _method_choice(fixed["tune"]) == "" and method_selection(fixed) is None
    )


def test_the_candidates_chart_rings_only_the_chosen_trial() -> None:
    svg = candidates_chart_svg(
        [("a", [(0.3, True), (0.1, False)]), ("b", [(0.1, True)])], ("b", 0.1), "objective"
    )
    assert svg.count("r='6'") == 1 and svg.count("<circle") == 3
    ringed = svg[svg.index("r='6'") :]
    assert "<title>b: 0.1</title>" in ringed.split("</circle>")[0]
    assert "<title>a: 0.1 (stopped before its end: not a candidate)</title>" in svg
    assert svg.count("fill='#999'") == 1
    assert candidates_chart_svg([], None, "objective") == ""


def test_a_run_without_a_search_leaves_no_earlier_search_behind(tmp_path: Path) -> None:
    """An id request after a class request in the same work dir: the class request's tune/*.json are
    not this run's and go (nothing reads them then, but a person or a later step could)."""
    from lethe.pipeline.layout import Layout
    from lethe.pipeline.tune import step_tune

    lay = Layout(tmp_path / "work", tmp_path / "cache")
    lay.tune_dir.mkdir(parents=True)
    for name in ("best.json", "result.json", "other.txt"):
        (lay.tune_dir / name).write_text("{}")
    cfg = build_config("demo", overrides={"request": {"kind": "ids", "ids_file": "ids.txt"}})
    ctx = SimpleNamespace(
        cfg=cfg, lay=lay, state=SimpleNamespace(tune={}), manifest=lambda: _man(0), save=lambda: None
    )
    step_tune(ctx)
    assert sorted(p.name for p in lay.tune_dir.iterdir()) == ["other.txt"]
    assert ctx.state.tune["no_search"]["chosen"] == "encoder_noise"


def test_the_report_chart_colours_a_stopped_trial_by_whether_it_competed() -> None:
    """Scored by best checkpoints, a trial ASHA stopped is a candidate (blue); scored by last
    reports it is not (grey)."""
    report = _tune_report()
    report["tune"]["trials"][0]["status"] = "stopped_early"
    assert _method_choice(report["tune"]).count("fill='#999'") == 1
    report["tune"]["score_best"] = True
    assert "fill='#999'" not in _method_choice(report["tune"])
