"""The pipeline steps' generator-family branch (GAN / VAE feature unlearning, DESIGN.md 2.3).

lethe/steps.py asks `is_generator(cfg)` once per step and calls in here; everything a generator run
does differently from an image-to-image run is in this module: the pretraining and classifier jobs,
finding the feature direction, the unlearning job (no data: latents), the evaluation on samples and
the promotion gates.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from lethe.config import RunConfig
from lethe.errors import DataError

log = logging.getLogger("lethe")

MODEL_NAMES = ("original", "unlearned", "oracle")
# Seeds of the fixed latent sets, offset from the run seed so they never coincide with training's.
_LABEL_SEED, _EVAL_SEED, _ATTACK_SEED = 50_001, 60_001, 70_001


def is_generator(cfg: RunConfig) -> bool:
    from lethe.models.generator_families import family_kind

    return family_kind(cfg.family) == "generator"


def arch(cfg: RunConfig, man) -> dict[str, Any]:
    from lethe.models.generator_families import get_generator_family

    return get_generator_family(cfg.family).build_arch(
        cfg.model.section(cfg.family), man.height, man.width, man.channels
    )


def feature_labels(cfg: RunConfig, man) -> list[int]:
    """Class indices that carry the requested feature (the split's own resolution)."""
    from lethe.data.split import feature_labels as resolve

    return resolve(man.class_names, man.dataset, cfg.request.feature or "")


def pretrain_job(cfg: RunConfig, man, n_rows: int, common: dict[str, Any], meta: dict[str, Any]):
    from lethe.execution.train import TrainJob

    p = cfg.pretrain
    return TrainJob(
        kind="gen_pretrain",
        model_kind=cfg.family,
        arch=arch(cfg, man),
        batch_size=p.batch_size,
        lr=p.lr,
        weight_decay=p.weight_decay,
        warmup_frac=p.warmup_frac,
        n_rows=n_rows,
        epochs=p.epochs,
        **common,
        meta=meta,
    )


def classifier_job(cfg: RunConfig, man, n_rows: int, meta: dict[str, Any]):
    """The binary feature classifier: a FeatNet with two classes, trained on the training shards with
    label 1 for every class that carries the feature (label_map), 0 otherwise."""
    from lethe.steps import featnet_job

    fc = cfg.feature
    positive = set(feature_labels(cfg, man))
    label_map = [1 if i in positive else 0 for i in range(len(man.class_names))]
    return featnet_job(
        cfg,
        man,
        n_rows,
        meta,
        classes=2,
        width=fc.classifier_width,
        epochs=fc.classifier_epochs,
        label_map=label_map,
    )


def feature_prior(man) -> float:
    """Share of training images with the feature (forget / (forget + retain))."""
    n_f, n_r = man.shards["forget"].count, man.shards["retain"].count
    return n_f / max(1, n_f + n_r)


@torch.no_grad()
def find_direction(cfg: RunConfig, original, classifier, prior: float):
    """Sample n_label latents, label f(z) with the classifier, return (FeatureDirection, labelling).

    Labels are the classifier's verdict (logit > 0). When it flags none or all of the samples (an
    undertrained generator, e.g. the smoke preset), the samples are ranked by feature logit instead
    and the top `prior` share (the feature's share of the training data) is labelled positive; the
    report names the labelling used.
    """
    from lethe.feature_eval import feature_logits, generate
    from lethe.methods.latent_feature import feature_direction

    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + _LABEL_SEED)
    z = torch.randn(cfg.feature.n_label, original.latent_dim, generator=gen)
    logits = feature_logits(classifier, generate(original, z))
    positive = logits > 0
    labelling = "classifier"
    if not bool(positive.any()) or bool(positive.all()):
        k = min(len(z) - 1, max(1, round(prior * len(z))))
        positive = torch.zeros(len(z), dtype=torch.bool)
        positive[logits.argsort(descending=True)[:k]] = True
        labelling = "ranked"
        log.warning(
            "the classifier flags %s generated samples; labelling the top %d by feature logit",
            "all" if bool((logits > 0).all()) else "no",
            k,
        )
    try:
        return feature_direction(z, positive), labelling
    except ValueError as e:
        raise DataError(
            "cannot find the feature direction",
            where="feature.n_label",
            expected="generated samples both with and without the feature",
            seen=str(e),
        ) from None


def unlearn_job(cfg: RunConfig, arch_: dict[str, Any], u, direction, common: dict[str, Any], meta):
    from lethe.execution.train import TrainJob

    return TrainJob(
        kind="feature_unlearn",
        model_kind=cfg.family,
        arch=arch_,
        batch_size=u.batch_size,
        lr=u.lr,
        weight_decay=u.weight_decay,
        warmup_frac=u.warmup_frac,
        n_rows=0,
        **common,
        method=cfg.method,
        alpha=u.alpha,
        max_steps=u.max_steps,
        grad_clip=u.grad_clip,
        checkpoint_every=u.checkpoint_every,
        direction=direction.to_dict(),
        meta=meta,
    )


def _heldout(man, n_forget: int, n_retain: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out real images with the feature and without, capped at n_forget / n_retain."""
    from lethe.data import read_shard_numpy, to_chw_float

    def load(name: str, limit: int) -> torch.Tensor:
        imgs, _labels, _ids = read_shard_numpy(man, name, limit=limit)
        return torch.from_numpy(to_chw_float(imgs).copy())

    pos, neg = load("heldout_forget", n_forget), load("heldout_retain", n_retain)
    if len(pos) == 0 or len(neg) == 0:
        raise DataError(
            "nothing to evaluate on",
            where="heldout shards",
            expected="held-out images with and without the feature",
            seen=f"{len(pos)} / {len(neg)}",
        )
    return pos, neg


def _natural_mix(pos: torch.Tensor, neg: torch.Tensor, man) -> torch.Tensor:
    """Held-out images in the data set's proportion of images with / without the feature, so the
    FD reference is the distribution the original model was trained to match."""
    n_pos_all, n_neg_all = man.shards["heldout_forget"].count, man.shards["heldout_retain"].count
    share = n_pos_all / max(1, n_pos_all + n_neg_all)
    n = min(int(len(pos) / max(share, 1e-9)), int(len(neg) / max(1 - share, 1e-9)))
    k_pos = min(len(pos), round(n * share))
    return torch.cat([pos[:k_pos], neg[: min(len(neg), n - k_pos)]])


def evaluate(cfg: RunConfig, man, models: dict, featnet, classifier, direction, out_dir: Path):
    """Metrics per model on samples from fixed latents, the attack, grids; (metrics, grids, section)."""
    from lethe.feature_eval import (
        AttackSpec,
        featnet_outputs,
        feature_logits,
        flagged_share,
        generate,
        pgd_attack,
        sample_quality,
    )
    from lethe.report import image_grid

    fc, e = cfg.feature, cfg.eval
    bs = e.batch_size
    latent_dim = models["original"].latent_dim
    z = torch.randn(fc.n_eval, latent_dim, generator=torch.Generator().manual_seed(cfg.seed + _EVAL_SEED))
    z_attack = torch.randn(
        fc.attack_n, latent_dim, generator=torch.Generator().manual_seed(cfg.seed + _ATTACK_SEED)
    )
    spec = AttackSpec(eps=fc.attack_eps, step=fc.attack_step, steps=fc.attack_steps, n=fc.attack_n)
    pos, neg = _heldout(man, e.n_forget, e.n_retain)
    real = _natural_mix(pos, neg, man)
    real_feats, _ = featnet_outputs(featnet, real, bs)
    neg_feats, _ = featnet_outputs(featnet, neg, bs)
    # How well the classifier that defines "flagged" separates held-out real images.
    acc = float(
        torch.cat([(feature_logits(classifier, pos, bs) > 0), (feature_logits(classifier, neg, bs) <= 0)])
        .float()
        .mean()
    )
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    samples: dict[str, torch.Tensor] = {}
    attacks: dict[str, Any] = {}
    for name, model in models.items():
        x = generate(model, z, bs)
        samples[name] = x
        logits = feature_logits(classifier, x, bs)
        q = sample_quality(featnet, x, real_feats, neg_feats, bs)
        res = pgd_attack(model, classifier, z_attack, spec)
        attacks[name] = res
        metrics[name] = {
            "samples": {
                "flagged_share": flagged_share(logits),
                "fd": q["fd"],
                "class_score": q["class_score"],
                "attack_success": res.success_rate,
                "attack_mean_prob": res.mean_prob,
                "attack_start_logit": res.start_logit,
                "mean_feature_prob": float(torch.sigmoid(logits).mean()),
                "fd_without_feature": q["fd_without_feature"],
            }
        }
        log.warning("evaluate %s: %s", name, metrics[name]["samples"])
    grids = _grids(cfg, models, classifier, samples, attacks, out_dir, image_grid)
    section = {
        "feature": cfg.request.feature,
        "classes": [man.class_names[i] for i in feature_labels(cfg, man)],
        "direction": {
            "threshold": direction.threshold,
            "norm": float(direction.z_e.norm()),
            "n_pos": direction.n_pos,
            "n_neg": direction.n_neg,
            "sign": "mean(latents with the feature) - mean(latents without)",
            "n_label": fc.n_label,
        },
        "attack": {
            **spec.to_dict(),
            "ball": "L_inf around N(0, I) starts",
            "objective": "feature logit of g(z)",
        },
        "n_eval": fc.n_eval,
        "classifier": {
            "heldout_accuracy": acc,
            "n_heldout": len(pos) + len(neg),
            "arch": "FeatNet, 2 classes",
        },
        "fd_reference": f"{len(real)} held-out real images (with and without the feature, data-set proportion)",
        "ms_ssim": "pytorch_msssim, 3 px window, fewer scales for small images (see methods/latent_feature.py)",
    }
    return metrics, grids, section


def _grids(cfg, models, classifier, samples, attacks, out_dir: Path, image_grid) -> dict[str, Path]:
    """Generated samples only (no training images): the same latents for the three models, half of
    them ones where the original shows the feature, and each model's best attack samples."""
    from lethe.feature_eval import feature_logits, generate

    rows = cfg.eval.grid_rows * 2
    flagged = feature_logits(classifier, samples["original"]) > 0
    idx_pos = torch.nonzero(flagged).flatten()[: rows // 2]
    idx_neg = torch.nonzero(~flagged).flatten()[: rows - len(idx_pos)]
    idx = torch.cat([idx_pos, idx_neg])
    out_dir.mkdir(parents=True, exist_ok=True)
    grids = {
        "samples": image_grid(
            [(n, samples[n][idx].numpy()) for n in MODEL_NAMES], out_dir / "grid_samples.png"
        ),
    }
    k = min(cfg.eval.grid_rows, len(next(iter(attacks.values())).best_z))
    cols = [(n, generate(models[n], attacks[n].best_z[:k]).numpy()) for n in MODEL_NAMES]
    grids["attack"] = image_grid(cols, out_dir / "grid_attack.png")
    return grids


def promotion_inputs(cfg: RunConfig, model, report: dict[str, Any]):
    """(example input for the registry signature, gate decision) of a feature-unlearning run."""
    from lethe.gates import evaluate_feature_gates

    example = torch.randn(4, model.latent_dim)
    fc = cfg.feature
    decision = evaluate_feature_gates(report["metrics"], fc.flagged_oracle_tol, fc.fd_tol, fc.n_eval)
    return example, decision
