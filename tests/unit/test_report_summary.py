"""lethe.report.summary: the lines a person reads at the end of a run."""

from __future__ import annotations

from typing import Any

from lethe.report.summary import summary_lines


def _report(**over: Any) -> dict[str, Any]:
    def split(fd: float, psnr: float) -> dict[str, Any]:
        return {"fd": fd, "fd_ci95": [fd * 0.9, fd * 1.1], "psnr": psnr, "ssim": 0.5, "embed_cos": 0.9}

    report: dict[str, Any] = {
        "family": "mae",
        "method": "encoder_noise",
        "dataset": "fashion-mnist",
        "request": {"kind": "classes", "forget_count": 6000, "retain_count": 54000},
        "metrics": {
            "original": {"forget": split(10.0, 20.0), "retain": split(5.0, 21.0)},
            "unlearned": {"forget": split(30.0, 15.0), "retain": split(5.5, 20.5)},
            "oracle": {"forget": split(33.0, 14.0), "retain": split(5.2, 20.8)},
        },
        "distance_to_oracle": {"original": {"fd_rel": 0.697}, "unlearned": {"fd_rel": 0.0909}},
        "evidence": {"membership": {"verdict": "inconclusive"}},
        "mlflow": {"model_name": "lethe-mae", "model_version": "3"},
        "promotion": {
            "alias": "champion",
            "promoted": True,
            "gates": {
                "results": [
                    {"name": "forget_vs_oracle", "verdict": "passed"},
                    {"name": "retain_fd", "verdict": "failed"},
                ]
            },
        },
    }
    return {**report, **over}


def test_summary_says_what_was_forgotten_how_each_model_did_and_what_was_registered() -> None:
    lines = summary_lines(_report(), "/w/certificate/certificate.json")
    assert lines[0] == (
        "result: mae / encoder_noise on fashion-mnist: forgot 6000 training images (classes), kept 54000"
    )
    head, original, unlearned, oracle = lines[1:5]
    assert head.split() == ["model", "forget", "FD", "forget", "PSNR", "retain", "FD", "retain", "PSNR"] + [
        "forget", "FD", "to", "oracle"
    ]  # fmt: skip
    assert unlearned.split()[:4] == ["unlearned", "30", "[27,", "33]"]
    assert original.split()[-1] == "0.697" and oracle.split()[-1] == "-"
    assert lines[5:9] == [
        "gates:",
        "  forget_vs_oracle: passed",
        "  retain_fd: failed",
        "  membership evidence: inconclusive",
    ]
    assert lines[9] == "registered: models:/lethe-mae/3, promoted: @champion now points to it"
    assert lines[10] == "certificate: /w/certificate/certificate.json"
    widths = {len(line) for line in lines[1:5]}
    assert len(widths) <= 4  # a table: the columns line up (rows may end early)


def test_summary_of_a_run_that_was_not_promoted_and_of_stored_requests() -> None:
    report = _report(request={"kind": "ids", "forget_count": 20, "retain_count": 1400, "requests": [{}, {}]})
    report["promotion"]["promoted"] = False
    lines = summary_lines(report)
    assert "(2 stored deletion requests)" in lines[0]
    assert lines[-1] == "registered: models:/lethe-mae/3, not promoted: @champion left where it was"
    assert not any(line.startswith("certificate:") for line in lines)
    assert summary_lines(_report(mlflow={}))[-1] == "registered: no version"


def test_feature_requests_show_the_generator_figures() -> None:
    samples = {"flagged_share": 0.062, "attack_success": 0.34, "fd_without_feature": 100.3}
    report = _report(
        request={"kind": "feature", "forget_count": 6000, "retain_count": 54000},
        metrics={m: {"samples": samples} for m in ("original", "unlearned", "oracle")},
    )
    lines = summary_lines(report)
    assert "(a visual feature)" in lines[0]
    assert lines[1].split() == ["model", "flagged", "share", "PGD", "success", "FD", "w/o", "feature"]
    assert lines[2].split() == ["original", "0.062", "0.34", "100.3"]


def test_summary_says_which_checkpoint_became_the_unlearned_model() -> None:
    best = {"kept": "best", "step": 20, "last_step": 47, "objective": 0.1234, "last_objective": 0.4567}
    lines = summary_lines(_report(unlearn={"checkpoint": {**best, "source_objective": 0.669}}))
    assert lines[5] == (
        "checkpoint: kept step 20 of 47, the best validation objective (0.1234; last step 0.4567; "
        "untouched source 0.669)"
    )
    last = {"kept": "last", "reason": "unlearn.keep_best is off"}
    assert summary_lines(_report(unlearn={"checkpoint": last}))[5] == (
        "checkpoint: the last step (unlearn.keep_best is off)"
    )
    assert not any(line.startswith("checkpoint:") for line in summary_lines(_report()))


def test_summary_says_when_the_lr_rule_lowered_the_lr() -> None:
    from types import SimpleNamespace

    from lethe.config import build_config
    from lethe.pipeline.lr_rule import lr_rule

    man = SimpleNamespace(
        shards={"retain": SimpleNamespace(count=3767), "forget": SimpleNamespace(count=400)}
    )
    rule = {**lr_rule(build_config("demo"), man), "applied_to": "unlearn.lr"}
    lines = summary_lines(_report(unlearn={"lr_rule": rule}))
    line = next(ln for ln in lines if ln.startswith("lr rule: "))
    assert "of the original's pretraining (51 steps" in line and line.endswith("(applied to unlearn.lr)")
    same = {**lr_rule(build_config("demo"), SimpleNamespace(shards={
        "retain": SimpleNamespace(count=54000), "forget": SimpleNamespace(count=6000)})), "applied_to": "unlearn.lr"}  # fmt: skip
    assert not any(ln.startswith("lr rule: ") for ln in summary_lines(_report(unlearn={"lr_rule": same})))
