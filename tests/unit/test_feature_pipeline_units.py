"""Feature unlearning around the math: config rules, bad feature names, report schema, gates."""

from __future__ import annotations

import copy

import pytest
import torch

from lethe.config import build_config
from lethe.data import feature_classes
from lethe.errors import ConfigError, DataError
from lethe.gates import FEATURE_GATE_NAMES, evaluate_feature_gates
from lethe.report import validate_report

FEATURE_RUN = {
    "family": "vae",
    "method": "latent_feature",
    "request": {"kind": "feature", "feature": "glasses"},
}
AVATAAARS = ["none", "kurt", "prescription_01", "prescription_02", "round", "sunglasses", "wayfarers"]


def test_feature_names_resolve_to_classes() -> None:
    assert feature_classes(AVATAAARS, "avataaars", "glasses") == AVATAAARS[1:]
    assert feature_classes(["T-shirt/top", "Trouser"], "fashion-mnist", "trouser") == ["Trouser"]


def test_bad_feature_name_is_a_clear_error() -> None:
    with pytest.raises(DataError) as e:
        feature_classes(AVATAAARS, "avataaars", "beard")
    msg = str(e.value)
    assert "request.feature" in msg and "'beard'" in msg and "glasses" in msg


def test_generator_runs_need_the_feature_method_and_request() -> None:
    cfg = build_config("smoke", None, FEATURE_RUN)
    assert cfg.family == "vae" and cfg.unlearn.max_steps
    with pytest.raises(ConfigError, match="latent_feature"):
        build_config("smoke", None, {**FEATURE_RUN, "method": "encoder_noise"})
    with pytest.raises(ConfigError, match="generator family"):
        build_config("smoke", None, {**FEATURE_RUN, "family": "mae"})
    with pytest.raises(ConfigError, match="request.kind 'classes'"):
        build_config("smoke", None, {"family": "gan", "method": "latent_feature"})
    with pytest.raises(ConfigError, match="request.feature"):
        build_config("smoke", None, {**FEATURE_RUN, "request": {"kind": "feature"}})
    with pytest.raises(ConfigError, match="tuning is not supported"):
        build_config("smoke", None, {**FEATURE_RUN, "tune": {"enabled": True}})


def _samples(flagged: float, fd: float, success: float) -> dict:
    return {
        "samples": {
            "flagged_share": flagged,
            "fd": 2 * fd,  # vs images in the data set's proportion: reported, not gated
            "fd_without_feature": fd,
            "class_score": 3.0,
            "attack_success": success,
            "attack_mean_prob": success,
        }
    }


METRICS = {
    "original": _samples(0.30, 10.0, 0.9),
    "unlearned": _samples(0.05, 11.0, 0.4),
    "oracle": _samples(0.04, 12.0, 0.3),
}


def _report() -> dict:
    return {
        "run_id": "r",
        "dataset": "avataaars",
        "family": "gan",
        "method": "latent_feature",
        "request": {"kind": "feature", "forget_count": 5, "retain_count": 7, "forget_digest": "sha256:ab"},
        "metrics": copy.deepcopy(METRICS),
        "feature": {
            "feature": "glasses",
            "classes": AVATAAARS[1:],
            "direction": {"threshold": 0.1, "norm": 2.0, "n_pos": 10, "n_neg": 20},
            "attack": {"eps": 0.5, "step": 0.05, "steps": 20, "n": 64},
            "n_eval": 100,
        },
        "timing_s": {"split": 1.0},
        "mlflow": {
            "tracking_uri": "sqlite:///x",
            "run_id": "r",
            "model_name": "lethe-gan",
            "model_version": None,
        },
    }


def test_feature_report_validates_and_names_missing_keys() -> None:
    validate_report(_report())
    bad = _report()
    del bad["metrics"]["oracle"]["samples"]["flagged_share"]
    with pytest.raises(ValueError, match=r"report.metrics.oracle.samples.flagged_share: missing"):
        validate_report(bad)
    bad = _report()
    del bad["feature"]["attack"]["eps"]
    with pytest.raises(ValueError, match=r"report.feature.attack.eps: missing"):
        validate_report(bad)


def test_feature_gates() -> None:
    d = evaluate_feature_gates(METRICS, flagged_tol=1.0, fd_tol=0.2, n_eval=100)
    assert [r.name for r in d.results] == list(FEATURE_GATE_NAMES) and d.passed
    worse = copy.deepcopy(METRICS)
    worse["unlearned"]["samples"]["flagged_share"] = 0.2  # 5x the oracle's
    worse["unlearned"]["samples"]["fd_without_feature"] = 13.0  # 1.3x the source's
    d = evaluate_feature_gates(worse, flagged_tol=1.0, fd_tol=0.2, n_eval=100)
    assert {r.name for r in d.failures} == {"flagged_vs_oracle", "sample_fd"}
    missing = copy.deepcopy(METRICS)
    del missing["original"]["samples"]["attack_success"]
    assert not evaluate_feature_gates(missing, 1.0, 0.2, 100).passed


def test_feature_gates_without_an_oracle() -> None:
    no_oracle = {k: v for k, v in copy.deepcopy(METRICS).items() if k != "oracle"}
    record = {"policy": "sample", "audited": False, "reason": "not audited: not drawn"}
    d = evaluate_feature_gates(no_oracle, 1.0, 0.2, 100, record)
    assert [r.verdict for r in d.results] == ["not evaluated", "passed", "passed", "not evaluated"]
    assert d.passed and d.verdict == "inconclusive"
    no_oracle["unlearned"]["samples"]["fd_without_feature"] = 13.0  # the quality gate still bites
    assert [r.name for r in evaluate_feature_gates(no_oracle, 1.0, 0.2, 100, record).failures] == [
        "sample_fd"
    ]
    assert not evaluate_feature_gates(no_oracle, 1.0, 0.2, 100).passed  # no record: a lost oracle fails


def test_feature_gates_gate_fd_on_images_without_the_feature() -> None:
    m = copy.deepcopy(METRICS)
    m["unlearned"]["samples"]["fd"] = 3 * m["original"]["samples"]["fd"]  # the removal itself
    assert evaluate_feature_gates(m, 1.0, 0.2, 100).passed
    m["unlearned"]["samples"]["fd_without_feature"] = 1.25 * m["original"]["samples"]["fd_without_feature"]
    (failed,) = evaluate_feature_gates(m, 1.0, 0.2, 100).failures
    assert failed.name == "sample_fd" and failed.value == pytest.approx(1.25)


def test_source_that_never_makes_the_feature_fails_its_gate() -> None:
    # A source at the evaluation's resolution (1 sample in 2000, oracle none) is "unlearned" by any
    # model: every other gate passes, this one says the run showed nothing.
    m = copy.deepcopy(METRICS)
    m["original"]["samples"]["flagged_share"] = 1 / 2000
    m["oracle"]["samples"]["flagged_share"] = 0.0
    m["unlearned"]["samples"]["flagged_share"] = 0.0
    d = evaluate_feature_gates(m, 1.0, 0.2, n_eval=2000)
    assert [r.name for r in d.failures] == ["source_has_feature"]
    assert d.failures[0].value == pytest.approx(1.0) and "cannot show" in d.failures[0].reason
    m["original"]["samples"]["flagged_share"] = 3 / 2000  # above (1 + x) x 1/2000
    assert evaluate_feature_gates(m, 1.0, 0.2, n_eval=2000).passed
    # measured against the oracle when it flags more than one sample in n_eval
    m["oracle"]["samples"]["flagged_share"] = 0.01
    (failed,) = evaluate_feature_gates(m, 1.0, 0.2, n_eval=2000).failures
    assert failed.name == "source_has_feature" and failed.value == pytest.approx(0.15)
    del m["original"]["samples"]["flagged_share"]
    assert "source_has_feature" in {r.name for r in evaluate_feature_gates(m, 1.0, 0.2, 2000).failures}


def test_flagged_gate_floors_a_zero_oracle_share_at_one_sample() -> None:
    m = copy.deepcopy(METRICS)
    m["oracle"]["samples"]["flagged_share"] = 0.0
    m["unlearned"]["samples"]["flagged_share"] = 1 / 2000  # one sample: not resolved from zero
    gate = evaluate_feature_gates(m, 1.0, 0.2, n_eval=2000).results[0]
    assert gate.passed and gate.value == pytest.approx(1.0)
    m["unlearned"]["samples"]["flagged_share"] = 3 / 2000
    gate = evaluate_feature_gates(m, 1.0, 0.2, n_eval=2000).results[0]
    assert not gate.passed and gate.value == pytest.approx(3.0) and "1/2000" in gate.reason
    # a coarser evaluation resolves less: 3 flagged of 2000 is under 2 samples in 500
    assert evaluate_feature_gates(m, 1.0, 0.2, n_eval=500).results[0].passed


class _Never(torch.nn.Module):
    """A classifier that flags nothing (an undertrained generator's samples)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((1, 2, 3)) - 10.0 + self.w
        return torch.stack([-s, s], dim=1)


def test_direction_falls_back_to_ranked_labels_when_nothing_is_flagged() -> None:
    from lethe.models import VAE, VAEArch
    from lethe.pipeline.generator import find_direction

    cfg = build_config("smoke", None, FEATURE_RUN)
    torch.manual_seed(0)
    model = VAE(VAEArch(16, 16, 1, latent_dim=8, ch=8)).eval()
    d, labelling = find_direction(cfg, model, _Never(), prior=0.1)
    assert labelling == "ranked"
    assert d.n_pos == round(0.1 * cfg.feature.n_label) and d.n_pos + d.n_neg == cfg.feature.n_label


def test_lethe_tune_refuses_generator_families_before_any_work(tmp_path) -> None:
    from lethe.pipeline import run_step

    cfg = build_config("smoke", None, {**FEATURE_RUN, "workdir": str(tmp_path / "w")})
    with pytest.raises(ConfigError, match="tuning is not supported for generator families"):
        run_step(cfg, "tune")
    assert not (tmp_path / "w" / "shards").exists()
