"""Promotion gates: may the unlearned model replace the source model behind the registry alias?

Plain Python over report.json's `metrics[model][split][name]` and `evidence` (no MLflow, no torch),
so the decision is testable in milliseconds and identical wherever it runs. Three questions, one gate
each (four checks); every gate ends passed, failed or inconclusive:

* forget_vs_oracle: does the unlearned model treat the forget data like a model that never saw it?
  FD_unlearned / FD_oracle on held-out forget data must lie in [1/(1+x), 1+x]. The band is
  symmetric in log space on purpose: staying close to the source model (under-forgetting, ratio
  well below 1) fails just like destroying the forget data (over-forgetting, ratio well above 1)
  -- "close to the oracle", not "as bad as possible" (DESIGN.md 2.2). Forget sets too small for a
  Frechet distance (lethe.metrics.fd_min_samples) are judged per image instead: |PSNR_unlearned -
  PSNR_oracle| <= forget_psnr_tol_db. Power check: when the untouched source already lies in the
  band, the gate cannot tell a model that forgot from one that did not: inconclusive, unless the
  unlearned model lies beyond the band on the over-forgetting side, which fails whatever the source
  (the forgotten images then stand out: on the demo a 5-id request lost 3.8 dB against the oracle).
* retain_fd / retain_psnr: is the retain data still served as well as by the source model?
  FD_unlearned / FD_source on held-out retain data <= 1 + y, and PSNR_source - PSNR_unlearned
  <= retain_psnr_drop_db.
* mia: can a calibrated membership-inference attack still tell the forget set from unseen data?
  evidence.membership (lethe.evaluation.evidence): inconclusive when the attack has no power on the
  source model, else the unlearned AUC must lie in the oracle's interval widened by z.

A run without an oracle (cache.oracle = sample, a night not drawn for an audit; report.json's
`oracle.audited` is false) cannot answer the questions asked against the oracle: those gates are
"not evaluated", which, like inconclusive, does not stop promotion and is never called passed. Only
that explicit record makes them so: an oracle that should be there and is missing fails.

A gate whose metric is missing or not finite fails (a broken evaluation must never promote). An
inconclusive gate does not stop promotion (the request is still honoured), but the decision, the
registry tags, the report and the certificate say "inconclusive", never "passed". Where a bootstrap
interval exists, the reason says where it lies against the band.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

GATE_NAMES = ("forget_vs_oracle", "retain_fd", "retain_psnr", "mia")


class GateThresholds(Protocol):
    """What `evaluate_gates` reads; lethe.config.GatesConfig is one."""

    forget_oracle_tol: float
    retain_fd_tol: float
    retain_psnr_drop_db: float
    mia_auc_tol: float
    forget_psnr_tol_db: float


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool  # False only for a failed gate: an inconclusive one does not block promotion
    value: float | None
    limit: str  # the rule, with the configured numbers
    reason: str  # one line: why it passed, failed or was inconclusive
    inconclusive: bool = False  # the gate cannot tell the source from the oracle (power check)
    interval: list[float] | None = None  # bootstrap 95% interval of `value`, when there is one
    not_evaluated: bool = False  # no oracle in this run to compare with (cache.oracle = sample)

    @property
    def verdict(self) -> str:
        if self.not_evaluated:
            return "not evaluated"
        return "inconclusive" if self.inconclusive else ("passed" if self.passed else "failed")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict
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

    @property
    def verdict(self) -> str:
        """failed if any gate failed, else inconclusive if any was, else passed."""
        if not self.passed:
            return "failed"
        return "inconclusive" if any(r.inconclusive or r.not_evaluated for r in self.results) else "passed"

    def summary(self) -> str:
        """One line for logs, tags and descriptions."""
        if not self.passed:
            return "gates failed: " + "; ".join(r.reason for r in self.failures)
        if self.verdict == "inconclusive":
            unsure = [r for r in self.results if r.inconclusive or r.not_evaluated]
            return "no gate failed, evidence inconclusive: " + "; ".join(r.reason for r in unsure)
        return "all gates passed: " + "; ".join(r.reason for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "verdict": self.verdict,
            "summary": self.summary(),
            "results": [r.to_dict() for r in self.results],
        }

    def tags(self, prefix: str = "lethe.gate") -> dict[str, str]:
        """Registry / run tags: one pass|fail|inconclusive per gate plus the measured value."""
        out: dict[str, str] = {}
        for r in self.results:
            out[f"{prefix}.{r.name}"] = {
                "passed": "pass",
                "failed": "fail",
                "not evaluated": "not_evaluated",
            }.get(r.verdict, r.verdict)
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


# The gates that compare with the oracle (per mask, `<gate>.<mask>` too).
ORACLE_GATES = frozenset({"forget_vs_oracle", "mia", "flagged_vs_oracle", "source_has_feature"})


def oracle_audited(oracle: Mapping[str, Any] | None) -> bool:
    """report.json's `oracle` record: only an explicit audited = false means "no oracle by design"."""
    return not (isinstance(oracle, Mapping) and oracle.get("audited") is False)


def _without_oracle(result: GateResult, oracle: Mapping[str, Any] | None) -> GateResult:
    """The gate as a run without an oracle reports it: not evaluated, the reason and rule kept."""
    if oracle_audited(oracle) or result.name.split(".")[0] not in ORACLE_GATES:
        return result
    return GateResult(
        result.name,
        True,
        None,
        result.limit,
        f"{result.name}: not evaluated: no oracle in this run ({(oracle or {}).get('reason', 'cache.oracle = sample')})",
        not_evaluated=True,
    )


def _where(interval: list[float] | None, lo: float, hi: float) -> str:
    """Where a bootstrap interval lies against the band [lo, hi], for the reason line."""
    if not interval:
        return ""
    a, b = interval
    if lo <= a and b <= hi:
        place = "inside the band"
    elif b < lo:
        place = "below the band"
    elif a > hi:
        place = "above the band"
    else:
        place = (
            "across the "
            + (" and ".join(e for e, x in (("lower", a < lo), ("upper", b > hi)) if x))
            + " edge"
        )
    return f"; 95% interval [{a:.3g}, {b:.3g}] {place}"


def _ratio_ci(evidence: Mapping[str, Any] | None, split: str, key: str) -> list[float] | None:
    ci = ((evidence or {}).get("fd_ratio_ci95") or {}).get(split, {}).get(key)
    return [float(ci[0]), float(ci[1])] if isinstance(ci, (list, tuple)) and len(ci) == 2 else None


def _forget_psnr(metrics: Mapping[str, Any], tol_db: float) -> GateResult:
    """forget_vs_oracle on a forget set too small for FD: per-image PSNR against the oracle's."""
    name = "forget_vs_oracle"
    limit = f"|PSNR_unlearned - PSNR_oracle| on forget <= {tol_db:.3g} dB (too few images for FD)"
    un, orc = _metric(metrics, "unlearned", "forget", "psnr"), _metric(metrics, "oracle", "forget", "psnr")
    src = _metric(metrics, "original", "forget", "psnr")
    if un is None or orc is None or src is None:
        return _missing(name, limit, "forget PSNR of the unlearned model, the source or the oracle")
    gap = un - orc
    # No power to see under-forgetting, but over-forgetting is visible whatever the source did.
    if abs(src - orc) <= tol_db and gap >= -tol_db:
        return GateResult(
            name,
            True,
            gap,
            limit,
            f"{name}: inconclusive: the source already reconstructs these images within {tol_db:.3g} dB "
            f"of the oracle ({src - orc:+.3g} dB) at this sample size",
            inconclusive=True,
        )
    ok = abs(gap) <= tol_db
    side = "within" if ok else ("above: under-forgetting" if gap > 0 else "below: over-forgetting")
    return GateResult(name, ok, gap, limit, f"{name}: forget PSNR {gap:+.3g} dB from the oracle's ({side})")


def forget_vs_oracle(
    metrics: Mapping[str, Any],
    tol: float,
    evidence: Mapping[str, Any] | None = None,
    psnr_tol_db: float = 1.0,
) -> GateResult:
    name = "forget_vs_oracle"
    hi = 1.0 + tol
    lo = 1.0 / hi
    limit = f"FD_unlearned/FD_oracle on forget in [{lo:.3g}, {hi:.3g}]"
    un_fd, orc_fd = _metric(metrics, "unlearned", "forget", "fd"), _metric(metrics, "oracle", "forget", "fd")
    if un_fd is None and orc_fd is None and _fd_undefined(metrics, "forget"):
        return _forget_psnr(metrics, psnr_tol_db)
    ratio = _ratio(un_fd, orc_fd)
    if ratio is None:
        return _missing(name, limit, "forget FD of the unlearned model or the oracle")
    ci = _ratio_ci(evidence, "forget", "unlearned_vs_oracle")
    where = _where(ci, lo, hi)
    source = _ratio(_metric(metrics, "original", "forget", "fd"), orc_fd)
    # No power to see under-forgetting, but over-forgetting is visible whatever the source did.
    if source is not None and lo <= source <= hi and ratio <= hi:
        return GateResult(
            name,
            True,
            ratio,
            limit,
            f"{name}: inconclusive: the source already behaves like the oracle on these images at this "
            f"sample size (source {source:.3g}x, unlearned {ratio:.3g}x the oracle's forget FD){where}",
            inconclusive=True,
            interval=ci,
        )
    ok = lo <= ratio <= hi
    if ok:
        reason = f"{name}: forget FD is {ratio:.3g}x the oracle's (within [{lo:.3g}, {hi:.3g}]){where}"
    elif ratio < lo:
        reason = (
            f"{name}: forget FD is {ratio:.3g}x the oracle's, below {lo:.3g}: the model still "
            f"reconstructs the forget data better than a model that never saw it (under-forgetting){where}"
        )
    else:
        reason = (
            f"{name}: forget FD is {ratio:.3g}x the oracle's, above {hi:.3g}: the model damages the "
            f"forget data more than a model that never saw it (over-forgetting){where}"
        )
    return GateResult(name, ok, ratio, limit, reason, interval=ci)


def _fd_undefined(metrics: Mapping[str, Any], split: str) -> bool:
    """Every model reports fd as null on `split`: too few images for a Frechet distance."""
    try:
        return all(metrics[m][split]["fd"] is None for m in ("original", "unlearned", "oracle"))
    except (KeyError, TypeError):
        return False


def retain_fd(
    metrics: Mapping[str, Any], tol: float, evidence: Mapping[str, Any] | None = None
) -> GateResult:
    name = "retain_fd"
    hi = 1.0 + tol
    limit = f"FD_unlearned/FD_source on retain <= {hi:.3g}"
    if _fd_undefined(metrics, "retain"):
        return GateResult(
            name,
            True,
            None,
            limit,
            f"{name}: inconclusive: too few held-out retain images for FD",
            inconclusive=True,
        )
    ratio = _ratio(
        _metric(metrics, "unlearned", "retain", "fd"), _metric(metrics, "original", "retain", "fd")
    )
    if ratio is None:
        return _missing(name, limit, "retain FD of the unlearned or the source model")
    ok = ratio <= hi
    verdict = "within" if ok else "above"
    ci = _ratio_ci(evidence, "retain", "unlearned_vs_original")
    return GateResult(
        name,
        ok,
        ratio,
        limit,
        f"{name}: retain FD is {ratio:.3g}x the source's ({verdict} {hi:.3g}){_where(ci, 0.0, hi)}",
        interval=ci,
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


def mia(metrics: Mapping[str, Any], tol: float, evidence: Mapping[str, Any] | None = None) -> GateResult:
    """The calibrated attack's verdict (evidence.membership); without it, the point rule
    |AUC - 0.5| <= z on the unlearned model (reports written before the attack had a power check)."""
    name = "mia"
    membership = (evidence or {}).get("membership")
    auc = _metric(metrics, "unlearned", "forget", "mia_auc")
    if auc is None:
        return _missing(name, "MIA AUC", "membership-inference AUC of the unlearned model")
    if isinstance(membership, Mapping) and membership.get("verdict") in ("passed", "failed", "inconclusive"):
        band = membership.get("band") or [0.5 - tol, 0.5 + tol]
        limit = f"calibrated MIA AUC in the oracle's interval widened by {tol:.3g}: [{band[0]:.3g}, {band[1]:.3g}]"
        ci = membership.get("unlearned_auc_ci95")
        verdict = membership["verdict"]
        reason = f"{name}: {membership.get('reason', verdict)}{_where(ci, band[0], band[1])}"
        return GateResult(
            name, verdict != "failed", auc, limit, reason, inconclusive=verdict == "inconclusive", interval=ci
        )
    limit = f"|MIA AUC - 0.5| <= {tol:.3g}"
    gap = abs(auc - 0.5)
    ok = gap <= tol
    verdict = "within" if ok else "more than"
    return GateResult(
        name, ok, auc, limit, f"{name}: MIA AUC {auc:.3g} is {gap:.3g} from chance ({verdict} {tol:.3g})"
    )


def _quality_gates(
    metrics: Mapping[str, Any], thresholds: GateThresholds, evidence: Mapping[str, Any] | None
) -> list[GateResult]:
    """The forget and retain gates of one mask (the membership test runs on the headline mask only)."""
    return [
        forget_vs_oracle(
            metrics, thresholds.forget_oracle_tol, evidence, getattr(thresholds, "forget_psnr_tol_db", 1.0)
        ),
        retain_fd(metrics, thresholds.retain_fd_tol, evidence),
        retain_psnr(metrics, thresholds.retain_psnr_drop_db),
    ]


def _on_mask(result: GateResult, kind: str) -> GateResult:
    name = f"{result.name}.{kind}"
    reason = result.reason.replace(f"{result.name}:", f"{name}:", 1)
    return replace(result, name=name, limit=f"{result.limit} ({kind} mask)", reason=reason)


def evaluate_gates(
    metrics: Mapping[str, Any],
    thresholds: GateThresholds,
    evidence: Mapping[str, Any] | None = None,
    by_mask: Mapping[str, Any] | None = None,
    oracle: Mapping[str, Any] | None = None,
) -> GateDecision:
    """The four checks in GATE_NAMES order on the headline mask, then the forget and retain gates
    again on every other evaluated mask (`by_mask`: report.json's metrics_by_mask, e.g. the
    outpainting border), named `<gate>.<mask>`; the decision passes only if none fails. `oracle`:
    report.json's oracle record (audited false: the oracle's gates are not evaluated)."""
    results = _quality_gates(metrics, thresholds, evidence)
    results.append(mia(metrics, thresholds.mia_auc_tol, evidence))
    for kind, per_model in (by_mask or {}).items():
        cis = ((evidence or {}).get("fd_ratio_ci95_by_mask") or {}).get(kind)
        results += [_on_mask(r, kind) for r in _quality_gates(per_model, thresholds, {"fd_ratio_ci95": cis})]
    return GateDecision([_without_oracle(r, oracle) for r in results])


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
    metrics: Mapping[str, Any],
    flagged_tol: float,
    fd_tol: float,
    n_eval: int,
    oracle: Mapping[str, Any] | None = None,
) -> GateDecision:
    """The gates of a feature-unlearning run (generator families), in FEATURE_GATE_NAMES order."""
    results = [
        flagged_vs_oracle(metrics, flagged_tol, n_eval),
        sample_fd(metrics, fd_tol),
        attack(metrics),
        source_has_feature(metrics, flagged_tol, n_eval),
    ]
    return GateDecision([_without_oracle(r, oracle) for r in results])


__all__ = [
    "FEATURE_GATE_NAMES",
    "GATE_NAMES",
    "evaluate_feature_gates",
    "GateDecision",
    "GateResult",
    "GateThresholds",
    "ORACLE_GATES",
    "evaluate_gates",
    "oracle_audited",
    "forget_vs_oracle",
    "mia",
    "retain_fd",
    "retain_psnr",
]
