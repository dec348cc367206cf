"""Uncertainty and power for the figures that decide (plain NumPy): bootstrap intervals, the
calibrated membership-inference attack, and its power check.

Intervals are percentile bootstraps over the evaluation images. One set of resampled indices per
split is shared by every model, so a ratio of two models' FDs is bootstrapped pairwise (the same
images in numerator and denominator) and its interval is not the loose product of two intervals.

The membership attack is calibrated per example (Carlini et al. 2022, "LiRA" in its offline,
one-reference form): the score of an image is the reference model's masked reconstruction error on it
minus the attacked model's, on the same image, masks and seeds. The reference is the oracle, which
never trained on the forget set, so an image's own difficulty cancels and what remains is how much
better the attacked model knows it than a model that never saw it. Attacking the oracle with itself
gives score 0 for every image: AUC 0.5 by construction, the null the unlearned model is held to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lethe.metrics import mia_auc

CI_LEVEL = 0.95


@dataclass(frozen=True)
class Resamples:
    """Bootstrap indices into one split's images: (B, N), row b = the b-th resample."""

    idx: np.ndarray

    @classmethod
    def draw(cls, n: int, b: int, seed: int) -> Resamples:
        rng = np.random.default_rng(seed)
        return cls(rng.integers(0, n, size=(b, n)) if n > 0 else np.zeros((b, 0), dtype=np.int64))


def percentile_ci(series: np.ndarray, level: float = CI_LEVEL) -> list[float] | None:
    """[low, high] of a bootstrap series (non-finite resamples dropped); None if none is finite."""
    s = np.asarray(series, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    a = (1.0 - level) / 2.0
    return [float(np.quantile(s, a)), float(np.quantile(s, 1.0 - a))]


def mean_series(values: np.ndarray, rs: Resamples) -> np.ndarray:
    """The mean of per-image values under every resample: shape (B,)."""
    v = np.asarray(values, dtype=np.float64)
    return v[rs.idx].mean(axis=1)


def _moments(feats: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = feats[idx]
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


@dataclass(frozen=True)
class TruthMoments:
    """The ground truth's moments under every resample of one split, shared by every model and mask
    scored against it: means (B, D), symmetric square roots of the covariances (B, D, D), traces (B,)."""

    rs: Resamples
    mu: np.ndarray
    root: np.ndarray
    trace: np.ndarray

    @classmethod
    def of(cls, feats_truth: np.ndarray, rs: Resamples) -> TruthMoments:
        t = np.asarray(feats_truth, dtype=np.float64)
        mus, roots, traces = [], [], []
        for idx in rs.idx:
            mu, st = _moments(t, idx)
            w, v = np.linalg.eigh(st)
            mus.append(mu)
            roots.append((v * np.sqrt(np.clip(w, 0.0, None))) @ v.T)
            traces.append(np.trace(st))
        d = t.shape[1]
        return cls(
            rs,
            np.array(mus).reshape(-1, d),
            np.array(roots).reshape(-1, d, d),
            np.array(traces, dtype=np.float64),
        )


def _fd_from_moments(
    mu_a: np.ndarray, sa: np.ndarray, mu_t: np.ndarray, root_t: np.ndarray, tr_t: float
) -> float:
    # Tr(sqrtm(Sa St)) = Tr(sqrtm(R Sa R)) with R = sqrtm(St): the eigenvalues of a symmetric matrix,
    # an order of magnitude faster than those of the non-symmetric Sa St, which is what B resamples
    # of three models under two masks need (R is computed once per resample, in TruthMoments).
    ev = np.linalg.eigvalsh(root_t @ sa @ root_t)
    diff = mu_a - mu_t
    fd = float(diff @ diff + np.trace(sa) + tr_t - 2.0 * np.sqrt(np.clip(ev, 0.0, None)).sum())
    return max(fd, 0.0)


def fd_series(
    feats_out: np.ndarray, feats_truth: np.ndarray, rs: Resamples, truth: TruthMoments | None = None
) -> np.ndarray:
    """FD between a model's outputs and the ground truth under every resample (paired rows). `truth`:
    the ground truth's moments under `rs`, when several models are scored against the same images."""
    a = np.asarray(feats_out, dtype=np.float64)
    if truth is not None and truth.rs is not rs:
        raise ValueError("fd_series: the truth's moments were taken under other resamples")
    t = truth if truth is not None else TruthMoments.of(feats_truth, rs)
    out = np.empty(len(rs.idx))
    for b, idx in enumerate(rs.idx):
        mu_a, sa = _moments(a, idx)
        out[b] = _fd_from_moments(mu_a, sa, t.mu[b], t.root[b], t.trace[b])
    return out


def ratio_ci(num: np.ndarray, den: np.ndarray) -> list[float] | None:
    """Interval of a ratio of two paired bootstrap series (same resamples)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return percentile_ci(np.asarray(num) / np.asarray(den))


# -- membership inference ------------------------------------------------------------------------
def calibrated_scores(errors_model: np.ndarray, errors_reference: np.ndarray) -> np.ndarray:
    """Membership score per image: reference error - model error (higher: more likely a member)."""
    return np.asarray(errors_reference, dtype=np.float64) - np.asarray(errors_model, dtype=np.float64)


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float = 0.01) -> float:
    """True-positive rate at the threshold where at most `fpr` of the non-members score above it.

    The threshold is the smallest score that no more than floor(fpr * N_non) non-members exceed;
    members must score strictly above it (ties count as negatives, so identical scores give 0)."""
    m = np.sort(np.asarray(member_scores, dtype=np.float64))
    nm = np.sort(np.asarray(nonmember_scores, dtype=np.float64))
    k = int(np.floor(fpr * nm.size))
    threshold = nm[nm.size - 1 - k] if k < nm.size else -np.inf
    return float((m > threshold).mean()) if m.size else 0.0


def _attack_series(
    members: np.ndarray,
    nonmembers: np.ndarray,
    b: int,
    seed: int,
    stat: Callable[[np.ndarray, np.ndarray], float],
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty(b)
    for i in range(b):
        out[i] = stat(
            members[rng.integers(0, members.size, members.size)],
            nonmembers[rng.integers(0, nonmembers.size, nonmembers.size)],
        )
    return out


@dataclass(frozen=True)
class AttackFigures:
    auc: float
    auc_ci95: list[float] | None
    tpr_at_1pct_fpr: float
    tpr_at_1pct_fpr_ci95: list[float] | None

    def as_metrics(self) -> dict[str, object]:
        return {
            "mia_auc": self.auc,
            "mia_auc_ci95": self.auc_ci95,
            "mia_tpr_at_1pct_fpr": self.tpr_at_1pct_fpr,
            "mia_tpr_at_1pct_fpr_ci95": self.tpr_at_1pct_fpr_ci95,
        }


def attack_figures(
    member_scores: np.ndarray, nonmember_scores: np.ndarray, b: int, seed: int
) -> AttackFigures:
    """AUC and TPR at 1% FPR of the attack, each with a bootstrap interval (members and non-members
    resampled independently: they are two samples)."""
    m = np.asarray(member_scores, dtype=np.float64)
    nm = np.asarray(nonmember_scores, dtype=np.float64)
    return AttackFigures(
        auc=mia_auc(m, nm),
        auc_ci95=percentile_ci(_attack_series(m, nm, b, seed, mia_auc)),
        tpr_at_1pct_fpr=tpr_at_fpr(m, nm),
        tpr_at_1pct_fpr_ci95=percentile_ci(_attack_series(m, nm, b, seed + 1, tpr_at_fpr)),
    )


NOT_EVALUATED = "not evaluated"


def membership_not_evaluated(n_members: int, n_nonmembers: int, why: str) -> dict[str, object]:
    """evidence.membership of a run without an oracle: the attack is calibrated against the oracle,
    and without that reference it has no power (the source's own AUC is about 0.5), so no verdict."""
    return {
        "attack": "calibrated loss attack: needs the oracle as its reference",
        "reference": None,
        "n_members": n_members,
        "n_nonmembers": n_nonmembers,
        "power": False,
        "verdict": NOT_EVALUATED,
        "reason": f"membership not evaluated: {why}",
    }


def request_not_evaluated(n_images: int, why: str) -> dict[str, object]:
    """A stored request's evidence in a run without an oracle (its score is measured against it)."""
    return {"n_images": n_images, "verdict": NOT_EVALUATED, "reason": f"not evaluated: {why}"}


def membership_verdict(
    source: AttackFigures,
    unlearned: AttackFigures,
    oracle: AttackFigures,
    n_members: int,
    n_nonmembers: int,
    tol: float,
    min_members: int,
) -> dict[str, object]:
    """evidence.membership: passed | failed | inconclusive, the reason, and the figures behind it.

    Power check first: the attack must tell members from non-members on the source model (its AUC
    interval lies above 0.5) on enough members; otherwise it is "inconclusive", never "passed" --
    except an unlearned AUC below the band, which fails whatever the source: over-forgotten images
    stand out even where the source never leaked. Then the unlearned AUC must lie inside the
    oracle's interval widened by `tol` on both sides: too low fails as surely as too high (an image
    the model now reconstructs worse than a model that never saw it marks whom a request was for).
    """
    o_lo, o_hi = oracle.auc_ci95 or [oracle.auc, oracle.auc]
    band = [max(0.0, o_lo - tol), min(1.0, o_hi + tol)]
    figures: dict[str, object] = {
        "attack": "calibrated loss attack: score = oracle's masked error - model's, same image, masks, seeds",
        "reference": "oracle",
        "n_members": n_members,
        "n_nonmembers": n_nonmembers,
        "source_auc": source.auc,
        "source_auc_ci95": source.auc_ci95,
        "unlearned_auc": unlearned.auc,
        "unlearned_auc_ci95": unlearned.auc_ci95,
        "band": band,
        "min_members": min_members,
    }
    lo = (source.auc_ci95 or [source.auc])[0]
    if n_members < min_members:
        return {
            **figures,
            "power": False,
            "verdict": "inconclusive",
            "reason": f"membership evidence inconclusive: {n_members} forget images are too few for a "
            f"membership test (at least {min_members})",
        }
    if lo <= 0.5 and unlearned.auc >= band[0]:
        return {
            **figures,
            "power": False,
            "verdict": "inconclusive",
            "reason": "membership evidence inconclusive: the source model does not measurably leak "
            f"membership of these images (its AUC {source.auc:.3f}, interval from {lo:.3f}, includes chance)",
        }
    auc = unlearned.auc
    if band[0] <= auc <= band[1]:
        verdict, why = "passed", f"within the oracle's band [{band[0]:.3f}, {band[1]:.3f}]"
    elif auc > band[1]:
        verdict, why = (
            "failed",
            f"above the oracle's band [{band[0]:.3f}, {band[1]:.3f}]: still leaks membership",
        )
    else:
        verdict, why = (
            "failed",
            f"below the oracle's band [{band[0]:.3f}, {band[1]:.3f}]: over-forgotten, the images stand out",
        )
    power = lo > 0.5
    note = "shows the attack has power" if power else "does not leak: only over-forgetting can be seen"
    reason = f"membership: unlearned AUC {auc:.3f} {why} (the source's {source.auc:.3f} {note})"
    return {**figures, "power": power, "verdict": verdict, "reason": reason}


def request_evidence(
    source_scores: np.ndarray,
    unlearned_scores: np.ndarray,
    b: int,
    seed: int,
    min_images: int,
    source: str = "the source model",
) -> dict[str, object]:
    """Whether one stored request's images are still forgotten (a night re-forgets every request
    applied before): the mean calibrated membership score over its images, for the source and the
    unlearned model, each with a bootstrap interval. The oracle never saw the images, so a model
    that has forgotten them scores about 0; one that still knows them scores above 0.

    forgotten: the unlearned model's interval reaches 0 or below; remembered: it lies above 0;
    inconclusive: too few images, or the source itself is not measurably better than the oracle on
    them (its interval reaches 0), so the test would pass a model that forgot nothing. `source` names
    the source in that reason (a night's source has already forgotten the earlier requests).
    """
    s = np.asarray(source_scores, dtype=np.float64)
    u = np.asarray(unlearned_scores, dtype=np.float64)
    n = int(s.size)
    out: dict[str, object] = {"n_images": n}
    if n < min_images:
        return {
            **out,
            "verdict": "inconclusive",
            "reason": f"{n} of its images were evaluated; at least {min_images} are needed",
        }
    rs = Resamples.draw(n, b, seed) if b else None
    s_ci = percentile_ci(mean_series(s, rs)) if rs else None
    u_ci = percentile_ci(mean_series(u, rs)) if rs else None
    out |= {
        "source_score": float(s.mean()),
        "source_score_ci95": s_ci,
        "unlearned_score": float(u.mean()),
        "unlearned_score_ci95": u_ci,
    }
    if s_ci is None or u_ci is None or s_ci[0] <= 0.0:
        return {
            **out,
            "verdict": "inconclusive",
            "reason": f"{source} does not reconstruct these images measurably better than the oracle: "
            "no power to tell",
        }
    if u_ci[0] > 0.0:
        return {
            **out,
            "verdict": "remembered",
            "reason": "the unlearned model still reconstructs these images better than the oracle (interval above 0)",
        }
    return {
        **out,
        "verdict": "forgotten",
        "reason": "the unlearned model reconstructs these images no better than the oracle, which never saw them",
    }
