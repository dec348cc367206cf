"""lethe.evaluation.evidence: bootstrap intervals, the calibrated attack and its power check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lethe.evaluation.evidence import (
    AttackFigures,
    Resamples,
    TruthMoments,
    attack_figures,
    calibrated_scores,
    fd_series,
    membership_verdict,
    percentile_ci,
    ratio_ci,
    request_evidence,
    tpr_at_fpr,
)
from lethe.evaluation.reconstruction import attack_errors, attack_masks
from lethe.metrics import frechet_distance


def test_percentile_interval_covers_the_mean_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 2000):
        x = rng.normal(1.0, 1.0, n)
        rs = Resamples.draw(n, 300, seed=1)
        lo, hi = percentile_ci(x[rs.idx].mean(axis=1))
        assert lo < 1.0 < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 4  # ~ 1/sqrt(n): sqrt(40) ~ 6.3


def test_bootstrap_fd_agrees_with_the_point_fd_and_pairs_ratios() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(400, 8))
    near, far = truth + rng.normal(0, 0.1, truth.shape), truth + rng.normal(0.5, 0.3, truth.shape)
    rs = Resamples.draw(400, 100, seed=2)
    s_near, s_far = fd_series(near, truth, rs), fd_series(far, truth, rs)
    lo, hi = percentile_ci(s_far)
    assert lo <= frechet_distance(far, truth) * 1.1 and hi >= frechet_distance(far, truth) * 0.9
    r_lo, r_hi = ratio_ci(s_far, s_near)
    assert r_lo > 1.0  # "far" is farther on every resample: the paired ratio never crosses 1


def test_each_resample_fd_is_the_fd_of_its_rows_also_with_shared_truth_moments() -> None:
    """The fast form (the truth's covariance square root, once per resample, shared by every model) is
    the Frechet distance of the resampled rows; a rank-deficient truth covariance (a dead feature)
    included."""
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(300, 16))
    truth[:, 5] = 0.25  # a feature that never varies: the covariance is singular
    out = truth @ rng.normal(0, 0.3, (16, 16)) + rng.normal(0.2, 0.5, truth.shape)
    rs = Resamples.draw(300, 12, seed=4)
    shared = TruthMoments.of(truth, rs)
    series = fd_series(out, truth, rs, shared)
    direct = [frechet_distance(out[idx], truth[idx]) for idx in rs.idx]
    np.testing.assert_allclose(series, direct, rtol=1e-6)
    np.testing.assert_array_equal(series, fd_series(out, truth, rs))
    with pytest.raises(ValueError, match="other resamples"):
        fd_series(out, truth, Resamples.draw(300, 12, seed=5), shared)


def test_tpr_at_one_percent_fpr() -> None:
    non = np.arange(1000, dtype=float)  # 1% of them (990..999) may score above the threshold, 989
    assert tpr_at_fpr(np.array([995.0, 2000.0, 985.0, 10.0]), non) == pytest.approx(0.5)
    assert tpr_at_fpr(np.zeros(5), np.zeros(100)) == 0.0  # ties are not positives


def test_calibration_removes_per_image_difficulty() -> None:
    """Members are reconstructed slightly better than a reference does; non-members like the
    reference. Per-image difficulty varies far more than that margin: the raw loss attack cannot see
    it, the calibrated one can."""
    rng = np.random.default_rng(0)
    difficulty = rng.lognormal(0, 1.0, 400)
    ref_m, ref_n = difficulty[:200], difficulty[200:]
    model_m, model_n = ref_m * 0.9, ref_n * 1.0
    raw = attack_figures(-model_m, -model_n, 200, seed=0)
    cal = attack_figures(calibrated_scores(model_m, ref_m), calibrated_scores(model_n, ref_n), 200, seed=0)
    assert raw.auc_ci95[0] <= 0.5 <= raw.auc_ci95[1]
    assert cal.auc > 0.9 and cal.auc_ci95[0] > 0.5


def _fig(auc: float, lo: float, hi: float) -> AttackFigures:
    return AttackFigures(auc, [lo, hi], 0.0, [0.0, 0.0])


def test_membership_verdict_power_check_and_band() -> None:
    oracle = _fig(0.5, 0.5, 0.5)
    leaky = _fig(0.8, 0.75, 0.85)
    v = membership_verdict(_fig(0.52, 0.47, 0.57), _fig(0.5, 0.45, 0.55), oracle, 200, 200, 0.1, 20)
    assert v["verdict"] == "inconclusive" and "does not measurably leak" in v["reason"] and not v["power"]
    # no power on the source, but an unlearned AUC below the band: the images stand out, failed
    v = membership_verdict(_fig(0.52, 0.47, 0.57), _fig(0.25, 0.2, 0.3), oracle, 200, 200, 0.1, 20)
    assert v["verdict"] == "failed" and "over-forgotten" in v["reason"] and not v["power"]
    v = membership_verdict(_fig(0.52, 0.47, 0.57), _fig(0.7, 0.65, 0.75), oracle, 200, 200, 0.1, 20)
    assert v["verdict"] == "inconclusive"  # above the band without power: nothing to compare
    v = membership_verdict(leaky, _fig(0.8, 0.75, 0.85), oracle, 200, 200, 0.1, 20)
    assert v["verdict"] == "failed" and "still leaks" in v["reason"]
    v = membership_verdict(leaky, _fig(0.3, 0.25, 0.35), oracle, 200, 200, 0.1, 20)
    assert v["verdict"] == "failed" and "over-forgotten" in v["reason"]  # too low fails too
    v = membership_verdict(leaky, _fig(0.55, 0.5, 0.6), oracle, 200, 200, 0.1, 20)
    assert v["verdict"] == "passed" and v["band"] == [0.4, 0.6]
    v = membership_verdict(leaky, _fig(0.55, 0.5, 0.6), oracle, 5, 200, 0.1, 20)
    assert v["verdict"] == "inconclusive" and "too few" in v["reason"]


def _train(model, x: torch.Tensor, steps: int, seed: int) -> None:
    from lethe.optim import MaskSpec, make_optimizer, optimizer_step, training_loss

    torch.manual_seed(seed)
    params = list(model.parameters())
    opt, sched = make_optimizer(params, 3e-3, 0.0, steps, 0.05)
    spec = MaskSpec(height=8, width=8, cell=2, box_frac=0.5, ratio=0.5)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        xb = x[torch.randint(0, len(x), (64,), generator=gen)]
        optimizer_step(training_loss(model, xb, spec.sample(len(xb), gen), gen), opt, sched, params)
    model.eval()


@pytest.fixture(scope="module")
def digits_models():
    """Tiny MAEs on sklearn's 8x8 digits: the oracle (the attack's reference) trained on other
    images; a source that is the oracle fine-tuned on the 60 members until it memorised them; and a
    model fine-tuned the same way on 60 other images, which never saw the members."""
    import copy

    from sklearn.datasets import load_digits

    from lethe.models import build_model, get_family

    x = torch.tensor(load_digits().images / 16.0, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8)
    members, nonmembers, other, rest = x[:60], x[60:260], x[260:320], x[320:720]
    torch.set_num_threads(2)
    torch.manual_seed(1)
    sec = {"dim": 64, "depth": 2, "heads": 2, "dec_dim": 16, "dec_depth": 1, "dec_heads": 2, "patch": 2}
    oracle = build_model("mae", get_family("mae").build_arch(sec, 8, 8, 1))
    _train(oracle, rest, 200, seed=1)
    source, unseen = copy.deepcopy(oracle), copy.deepcopy(oracle)
    _train(source, members, 200, seed=0)
    _train(unseen, other, 200, seed=2)
    return members, nonmembers, source, oracle, unseen


def _attack(model, ref, members, nonmembers) -> AttackFigures:
    from lethe import masks

    box = masks.box_mask(8, 8, 0.5, 2)
    mm = attack_masks(members, box, 2, 0.5, 4, seed=7)
    mn = attack_masks(nonmembers, box, 2, 0.5, 4, seed=8)
    return attack_figures(
        calibrated_scores(attack_errors(model, members, mm, 256), attack_errors(ref, members, mm, 256)),
        calibrated_scores(attack_errors(model, nonmembers, mn, 256), attack_errors(ref, nonmembers, mn, 256)),
        200,
        seed=0,
    )


def test_power_shown_on_a_model_that_memorised(digits_models) -> None:
    members, nonmembers, source, oracle, _ = digits_models
    fig = _attack(source, oracle, members, nonmembers)
    null = _attack(oracle, oracle, members, nonmembers)
    assert fig.auc_ci95[0] > 0.5, fig
    v = membership_verdict(fig, fig, null, len(members), len(nonmembers), 0.1, 20)
    # The attack has power, and a "forgetting" that changed nothing fails.
    assert v["power"] and v["verdict"] == "failed"


def test_inconclusive_on_a_model_that_never_saw_the_images(digits_models) -> None:
    members, nonmembers, _, oracle, unseen = digits_models
    fig = _attack(unseen, oracle, members, nonmembers)
    null = _attack(oracle, oracle, members, nonmembers)
    v = membership_verdict(fig, fig, null, len(members), len(nonmembers), 0.1, 20)
    assert v["verdict"] == "inconclusive" and not v["power"], v["reason"]


def _scores(model, ref, images) -> np.ndarray:
    from lethe import masks

    mm = attack_masks(images, masks.box_mask(8, 8, 0.5, 2), 2, 0.5, 4, seed=9)
    return calibrated_scores(attack_errors(model, images, mm, 256), attack_errors(ref, images, mm, 256))


def test_a_request_is_remembered_forgotten_or_inconclusive_on_real_models(digits_models) -> None:
    """One request's 12 images (a night re-checks every earlier request): a model that still knows
    them is caught, one that never saw them passes, and a source that never learnt them proves nothing."""
    members, _, source, oracle, unseen = digits_models
    request = members[:12]
    knows, never = _scores(source, oracle, request), _scores(unseen, oracle, request)
    remembered = request_evidence(knows, knows, 200, seed=0, min_images=5)
    assert remembered["verdict"] == "remembered", remembered
    assert remembered["unlearned_score_ci95"][0] > 0 and remembered["n_images"] == 12
    forgotten = request_evidence(knows, never, 200, seed=0, min_images=5)
    assert forgotten["verdict"] == "forgotten", forgotten
    assert forgotten["unlearned_score_ci95"][0] <= 0 < forgotten["source_score_ci95"][0]
    assert request_evidence(never, never, 200, seed=0, min_images=5)["verdict"] == "inconclusive"
    few = request_evidence(knows[:3], knows[:3], 200, seed=0, min_images=5)
    assert few["verdict"] == "inconclusive" and "3 of its images" in few["reason"]
    assert "source_score" not in few  # no figure from too few images
