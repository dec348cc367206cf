"""Promotion gates: may the unlearned model replace the source model behind the registry alias?

Plain Python over report.json's `metrics[model][split][name]` (no MLflow, no torch), so the decision
is testable in milliseconds and identical wherever it runs. Three questions, one gate each (four
checks):

* forget_vs_oracle: does the unlearned model treat the forget data like a model that never saw it?
  FD_unlearned / FD_oracle on held-out forget data must lie in [1/(1+x), 1+x]. The band is
  symmetric in log space on purpose: staying close to the source model (under-forgetting, ratio
  well below 1) fails just like destroying the forget data (over-forgetting, ratio well above 1)
  -- "close to the oracle", not "as bad as possible" (DESIGN.md 2.2). This is the documented
  equivalent of |FD_unlearned / FD_oracle - 1| <= x, which could never fail an under-forgetting
  model once x >= 1.
* retain_fd / retain_psnr: is the retain data still served as well as by the source model?
  FD_unlearned / FD_source on held-out retain data <= 1 + y, and PSNR_source - PSNR_unlearned
  <= retain_psnr_drop_db.
* mia: can a membership-inference attack still tell the forget set from unseen data?
  |AUC_unlearned - 0.5| <= z.

A gate whose metric is missing or not finite fails (a broken evaluation must never promote).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

GATE_NAMES = ("forget_vs_oracle", "retain_fd", "retain_psnr", "mia")


class GateThresholds(Protocol):
    """What `evaluate_gates` reads; lethe.config.GatesConfig is one."""

    forget_oracle_tol: float
    retain_fd_tol: float
    retain_psnr_drop_db: float
    mia_auc_tol: float


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    value: float | None
    limit: str  # the rule, with the configured numbers
    reason: str  # one line: why it passed or failed

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # JSON has no inf/NaN: an unbounded ratio is reported as null next to its failing reason.
        if d["value"] is not None and not math.isfinite(d["value"]):
            d["value"] = None
        return d


@dataclass(frozen=True)
class GateDecision:
    results: list[GateResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failures(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def summary(self) -> str:
        """One line for logs, tags and descriptions."""
        if self.passed:
            return "all gates passed: " + "; ".join(r.reason for r in self.results)
        return "gates failed: " + "; ".join(r.reason for r in self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "summary": self.summary(),
            "results": [r.to_dict() for r in self.results],
        }

    def tags(self, prefix: str = "lethe.gate") -> dict[str, str]:
        """Registry / run tags: one pass|fail per gate plus the measured value."""
        out: dict[str, str] = {}
        for r in self.results:
            out[f"{prefix}.{r.name}"] = "pass" if r.passed else "fail"
            out[f"{prefix}.{r.name}.value"] = "missing" if r.value is None else f"{r.value:.6g}"
        return out


def _metric(metrics: Mapping[str, Any], model: str, split: str, name: str) -> float | None:
    try:
        value = metrics[model][split][name]
    except (KeyError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None:
        return None
    if den <= 0:
        # Zero distance for the reference: equal only if the candidate is zero too.
        return 1.0 if num <= 0 else math.inf
    return num / den


def _missing(name: str, limit: str, what: str) -> GateResult:
    return GateResult(name, False, None, limit, f"{name}: {what} is missing or not finite")


def forget_vs_oracle(metrics: Mapping[str, Any], tol: float) -> GateResult:
    name = "forget_vs_oracle"
    hi = 1.0 + tol
    lo = 1.0 / hi
    limit = f"FD_unlearned/FD_oracle on forget in [{lo:.3g}, {hi:.3g}]"
    ratio = _ratio(_metric(metrics, "unlearned", "forget", "fd"), _metric(metrics, "oracle", "forget", "fd"))
    if ratio is None:
        return _missing(name, limit, "forget FD of the unlearned model or the oracle")
    ok = lo <= ratio <= hi
    if ok:
        reason = f"{name}: forget FD is {ratio:.3g}x the oracle's (within [{lo:.3g}, {hi:.3g}])"
    elif ratio < lo:
        reason = (
            f"{name}: forget FD is {ratio:.3g}x the oracle's, below {lo:.3g}: the model still "
            "reconstructs the forget data better than a model that never saw it (under-forgetting)"
        )
    else:
        reason = (
            f"{name}: forget FD is {ratio:.3g}x the oracle's, above {hi:.3g}: the model damages the "
            "forget data more than a model that never saw it (over-forgetting)"
        )
    return GateResult(name, ok, ratio, limit, reason)


def retain_fd(metrics: Mapping[str, Any], tol: float) -> GateResult:
    name = "retain_fd"
    hi = 1.0 + tol
    limit = f"FD_unlearned/FD_source on retain <= {hi:.3g}"
    ratio = _ratio(
        _metric(metrics, "unlearned", "retain", "fd"), _metric(metrics, "original", "retain", "fd")
    )
    if ratio is None:
        return _missing(name, limit, "retain FD of the unlearned or the source model")
    ok = ratio <= hi
    verdict = "within" if ok else "above"
    return GateResult(
        name, ok, ratio, limit, f"{name}: retain FD is {ratio:.3g}x the source's ({verdict} {hi:.3g})"
    )


def retain_psnr(metrics: Mapping[str, Any], max_drop_db: float) -> GateResult:
    name = "retain_psnr"
    limit = f"PSNR_source - PSNR_unlearned on retain <= {max_drop_db:.3g} dB"
    src = _metric(metrics, "original", "retain", "psnr")
    new = _metric(metrics, "unlearned", "retain", "psnr")
    if src is None or new is None:
        return _missing(name, limit, "retain PSNR of the unlearned or the source model")
    drop = src - new
    ok = drop <= max_drop_db
    verdict = "within" if ok else "more than"
    return GateResult(
        name, ok, drop, limit, f"{name}: retain PSNR dropped {drop:.3g} dB ({verdict} {max_drop_db:.3g} dB)"
    )


def mia(metrics: Mapping[str, Any], tol: float) -> GateResult:
    name = "mia"
    limit = f"|MIA AUC - 0.5| <= {tol:.3g}"
    auc = _metric(metrics, "unlearned", "forget", "mia_auc")
    if auc is None:
        return _missing(name, limit, "membership-inference AUC of the unlearned model")
    gap = abs(auc - 0.5)
    ok = gap <= tol
    verdict = "within" if ok else "more than"
    return GateResult(
        name, ok, auc, limit, f"{name}: MIA AUC {auc:.3g} is {gap:.3g} from chance ({verdict} {tol:.3g})"
    )


def evaluate_gates(metrics: Mapping[str, Any], thresholds: GateThresholds) -> GateDecision:
    """All four checks, in GATE_NAMES order; the decision passes only if every one passes."""
    return GateDecision(
        [
            forget_vs_oracle(metrics, thresholds.forget_oracle_tol),
            retain_fd(metrics, thresholds.retain_fd_tol),
            retain_psnr(metrics, thresholds.retain_psnr_drop_db),
            mia(metrics, thresholds.mia_auc_tol),
        ]
    )


FEATURE_GATE_NAMES = ("flagged_vs_oracle", "sample_fd", "attack", "source_has_feature")
_S = "samples"  # lethe.report.schema.FEATURE_SPLIT (gates import no report code)


def _flagged_gate(
    metrics: Mapping[str, Any], name: str, model: str, who: str, tol: float, n_eval: int, above: bool
) -> GateResult:
    """`model`'s flagged share against (1 + tol) x the oracle's, the oracle's floored at one sample
    in `n_eval`: the evaluation cannot tell 0 of 2000 from 1 of 2000, and an oracle that flags
    nothing would otherwise make any single flagged sample an unbounded ratio. `above`: the share
    must exceed the bound, else stay within it."""
    hi = 1.0 + tol
    op = ">" if above else "<="
    limit = f"flagged share of the {who} {op} {hi:.3g} x max(the oracle's, 1/{n_eval})"
    share, orc = _metric(metrics, model, _S, "flagged_share"), _metric(metrics, "oracle", _S, "flagged_share")
    if share is None or orc is None:
        return _missing(name, limit, f"flagged share of the {who} or the oracle")
    ratio = share / max(orc, 1.0 / max(int(n_eval), 1))
    ok = ratio > hi if above else ratio <= hi
    vacuous = ": the evaluation cannot show that the feature was removed" if above and not ok else ""
    return GateResult(
        name,
        ok,
        ratio,
        limit,
        f"{name}: the {who} flags {share:.3g} of samples vs the oracle's {orc:.3g} "
        f"({ratio:.3g}x of max(oracle, 1/{n_eval}), limit {op} {hi:.3g}x){vacuous}",
    )


def flagged_vs_oracle(metrics: Mapping[str, Any], tol: float, n_eval: int) -> GateResult:
    """Feature unlearning: the unlearned model's flagged share <= (1 + x) * the oracle's."""
    return _flagged_gate(
        metrics, "flagged_vs_oracle", "unlearned", "unlearned model", tol, n_eval, above=False
    )


def sample_fd(metrics: Mapping[str, Any], tol: float) -> GateResult:
    """Feature unlearning: sample FD of the unlearned model <= (1 + y) * the original's, both
    measured against held-out images WITHOUT the feature.

    That reference is the distribution the oracle is trained on. Against held-out images in the
    data set's proportion, a generator that stops making the feature moves away by construction
    (on Fashion-MNIST, class as feature, the oracle itself is ~1.5x the original), so that ratio
    measures the removal, not the loss of quality this gate guards against."""
    name = "sample_fd"
    hi = 1.0 + tol
    limit = f"sample FD (vs held-out images without the feature) of the unlearned model <= {hi:.3g} x the source's"
    ratio = _ratio(
        _metric(metrics, "unlearned", _S, "fd_without_feature"),
        _metric(metrics, "original", _S, "fd_without_feature"),
    )
    if ratio is None:
        return _missing(name, limit, "sample FD without the feature of the unlearned or the source model")
    ok = ratio <= hi
    return GateResult(
        name,
        ok,
        ratio,
        limit,
        f"{name}: sample FD vs images without the feature is {ratio:.3g}x the source's (limit {hi:.3g}x)",
    )


def attack(metrics: Mapping[str, Any]) -> GateResult:
    """Feature unlearning: PGD over z succeeds no more often than on the source model."""
    name = "attack"
    limit = "PGD success rate of the unlearned model <= the source's"
    un, src = (
        _metric(metrics, "unlearned", _S, "attack_success"),
        _metric(metrics, "original", _S, "attack_success"),
    )
    if un is None or src is None:
        return _missing(name, limit, "attack success rate of the unlearned or the source model")
    ok = un <= src
    return GateResult(
        name, ok, un, limit, f"{name}: PGD succeeds on {un:.3g} of starts vs the source's {src:.3g}"
    )


def source_has_feature(metrics: Mapping[str, Any], tol: float, n_eval: int) -> GateResult:
    """Feature unlearning: the source model makes the feature measurably more often than the oracle.

    Otherwise every other gate passes without showing anything: a source that (like a GAN that
    dropped the mode) never makes the feature is "unlearned" by any model. The bound is
    flagged_vs_oracle's, so a passing run has the source above it and the unlearned model within it."""
    return _flagged_gate(metrics, "source_has_feature", "original", "source model", tol, n_eval, above=True)


def evaluate_feature_gates(
    metrics: Mapping[str, Any], flagged_tol: float, fd_tol: float, n_eval: int
) -> GateDecision:
    """The gates of a feature-unlearning run (generator families), in FEATURE_GATE_NAMES order."""
    return GateDecision(
        [
            flagged_vs_oracle(metrics, flagged_tol, n_eval),
            sample_fd(metrics, fd_tol),
            attack(metrics),
            source_has_feature(metrics, flagged_tol, n_eval),
        ]
    )


__all__ = [
    "FEATURE_GATE_NAMES",
    "GATE_NAMES",
    "evaluate_feature_gates",
    "GateDecision",
    "GateResult",
    "GateThresholds",
    "evaluate_gates",
    "forget_vs_oracle",
    "mia",
    "retain_fd",
    "retain_psnr",
]
