"""The generator families (GAN, VAE: feature unlearning, DESIGN.md 2.3) in the pipeline's steps.

Latents in, samples out: pretraining also trains the binary feature classifier that labels samples,
unlearning finds the feature's latent direction and fine-tunes the generator on sampled latents (no
data), evaluation measures samples from fixed latents (flagged share, FD, class score, a PGD attack),
and the feature gates decide promotion.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from lethe.config import RunConfig
from lethe.errors import ConfigError, DataError
from lethe.evaluation.reconstruction import MODEL_NAMES
from lethe.pipeline.cleanup import forget_trained_model
from lethe.pipeline.family_api import Evaluation, UnlearnPlan
from lethe.pipeline.jobs import family_arch, featnet_job, pretrain_job, unlearn_job, unlearned_meta
from lethe.pipeline.keys import feature_classifier_key
from lethe.pipeline.model_cache import train_or_reuse
from lethe.pipeline.params import prefixed, section_params

log = logging.getLogger("lethe")

# Seeds of the fixed latent sets, offset from the run seed so they never coincide with training's.
_LABEL_SEED, _EVAL_SEED, _ATTACK_SEED = 50_001, 60_001, 70_001


def feature_labels(cfg: RunConfig, man) -> list[int]:
    """Class indices that carry the requested feature (the split's own resolution)."""
    from lethe.data.split import feature_labels as resolve

    return resolve(man.class_names, man.dataset, cfg.request.feature or "")


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
    from lethe.evaluation.samples import feature_logits, generate
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


def evaluate_samples(cfg: RunConfig, man, models: dict, featnet, classifier, direction, out_dir: Path):
    """Metrics per model on samples from fixed latents, the attack, grids; (metrics, grids, section)."""
    from lethe.evaluation.samples import (
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
    section = _section(cfg, man, direction, spec, acc, len(pos) + len(neg), len(real))
    return metrics, grids, section


def _section(cfg: RunConfig, man, direction, spec, acc: float, n_heldout: int, n_real: int) -> dict[str, Any]:
    """The report's `feature` section: what was removed, how it was found, how it was attacked."""
    fc = cfg.feature
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
            "n_heldout": n_heldout,
            "arch": "FeatNet, 2 classes",
        },
        "fd_reference": f"{n_real} held-out real images (with and without the feature, data-set proportion)",
        "ms_ssim": "pytorch_msssim, 3 px window, fewer scales for small images (see methods/latent_feature.py)",
    }
    return section


def _grids(cfg, models, classifier, samples, attacks, out_dir: Path, image_grid) -> dict[str, Path]:
    """Generated samples only (no training images): the same latents for the three models, half of
    them ones where the original shows the feature, and each model's best attack samples."""
    from lethe.evaluation.samples import feature_logits, generate

    rows = cfg.eval.grid_rows * 2
    flagged = feature_logits(classifier, samples["original"]) > 0
    idx_pos = torch.nonzero(flagged).flatten()[: rows // 2]
    idx_neg = torch.nonzero(~flagged).flatten()[: rows - len(idx_pos)]
    idx = torch.cat([idx_pos, idx_neg])
    out_dir.mkdir(parents=True, exist_ok=True)
    grids = {
        "samples": image_grid(
            [(n, samples[n][idx].numpy()) for n in MODEL_NAMES if n in models], out_dir / "grid_samples.png"
        ),
    }
    k = min(cfg.eval.grid_rows, len(next(iter(attacks.values())).best_z))
    cols = [(n, generate(models[n], attacks[n].best_z[:k]).numpy()) for n in MODEL_NAMES if n in models]
    grids["attack"] = image_grid(cols, out_dir / "grid_attack.png")
    return grids


def classifier_job(cfg: RunConfig, man, n_rows: int, meta: dict[str, Any]):
    """The binary feature classifier: a FeatNet with two classes, trained on the training shards with
    label 1 for every class that carries the feature (label_map), 0 otherwise."""
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


class Generator:
    tunable = False

    def arch(self, cfg: RunConfig, man) -> dict[str, Any]:
        return family_arch(cfg, man)

    def model_info(self, cfg: RunConfig) -> dict[str, Any]:
        return {}

    def pretrain_job(self, cfg: RunConfig, man, n_rows: int, meta: dict[str, Any]):
        return pretrain_job(cfg, "gen_pretrain", self.arch(cfg, man), n_rows, meta)

    def auxiliary_models(self, ctx, man) -> dict[str, Any]:
        """The binary classifier that labels generated samples (feature vs not)."""
        key = feature_classifier_key(ctx.cfg, man)
        _, info = train_or_reuse(
            ctx,
            "feature_clf",
            ("forget", "retain"),
            key,
            "feature_clf",
            lambda n_rows, meta: classifier_job(ctx.cfg, man, n_rows, meta),
        )
        return prefixed("feature_clf", info)

    def check_tunable(self, cfg: RunConfig) -> None:
        # The tune objective is FD on held-out forget / retain reconstructions, which a generator
        # does not make; a feature objective (flagged share vs oracle, sample FD) is not built yet.
        raise ConfigError(
            "tuning is not supported for generator families",
            where="lethe tune",
            expected="family mae, vqgan or diffusion (set unlearn.alpha / unlearn.lr by hand for gan / vae)",
            seen=repr(cfg.family),
        )

    def unlearn_params(self, cfg: RunConfig, u) -> dict[str, Any]:
        return {
            "method": cfg.method,
            **{f"unlearn.{k}": v for k, v in u.model_dump().items()},
            **section_params("feature", cfg),
        }

    def plan_unlearn(self, ctx, man, arch, teacher, u, tuned: bool) -> UnlearnPlan:
        """Label sampled latents, find the feature direction; the job fine-tunes g on latents."""
        from lethe.models.checkpoint import load_checkpoint

        cfg, lay = ctx.cfg, ctx.lay
        classifier, _ = load_checkpoint(forget_trained_model(lay, "feature_clf"), expected_kind="featnet")
        direction, labelling = find_direction(cfg, teacher.eval(), classifier.eval(), feature_prior(man))
        ctx.tracker.log_metrics(
            {
                "direction.threshold": direction.threshold,
                "direction.norm": float(direction.z_e.norm()),
                "direction.n_pos": float(direction.n_pos),
                "direction.n_neg": float(direction.n_neg),
            }
        )
        meta = unlearned_meta(cfg, man, u, False, feature=cfg.request.feature or "")
        job = unlearn_job(cfg, "feature_unlearn", arch, u, 0, meta, direction=direction.to_dict())
        return UnlearnPlan(
            job=job,
            datasets={},  # no data: latents are sampled per step
            settings=[u.model_dump(), cfg.feature.model_dump()],
            extra_state={"direction": direction.to_dict(), "labelling": labelling},
        )

    def eval_params(self, cfg: RunConfig) -> dict[str, Any]:
        return {**section_params("eval", cfg), **section_params("feature", cfg)}

    def evaluate(self, ctx, man, arch, models, featnet) -> Evaluation:
        """A generator's feature unlearning on samples (flagged share, FD, class score, PGD)."""
        from lethe.methods.latent_feature import FeatureDirection
        from lethe.models.checkpoint import load_checkpoint

        cfg, lay = ctx.cfg, ctx.lay
        models = {n: m.eval() for n, m in models.items()}
        classifier, _ = load_checkpoint(forget_trained_model(lay, "feature_clf"), expected_kind="featnet")
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        saved = ctx.state.unlearn
        if saved.get("direction"):
            direction, labelling = FeatureDirection.from_dict(saved["direction"]), saved.get("labelling")
        else:
            direction, labelling = find_direction(
                cfg, models["original"], classifier.eval(), feature_prior(man)
            )
        metrics, grids, section = evaluate_samples(
            cfg, man, models, featnet.eval(), classifier.eval(), direction, lay.report_dir
        )
        for model, splits in metrics.items():
            for split, vals in splits.items():
                ctx.tracker.log_metrics({f"{model}.{split}.{k}": v for k, v in vals.items()})
        ctx.tracker.log_metrics(
            {"feature.classifier_heldout_accuracy": section["classifier"]["heldout_accuracy"]}
        )

        def complete(report: dict[str, Any]) -> None:
            report["feature"] = {**section, "direction": {**section["direction"], "labelling": labelling}}
            report["evaluation"] = {
                "sampler": report.get("sampler", {}),
                "fd_feature_space": "project feature net (penultimate layer); not Inception, not FID",
                "class_score": "exp(E KL(p(y|x) || p(y))) on the project feature net's class posteriors; not IS",
                "flagged": "binary feature classifier (project FeatNet, 2 classes): p(feature) > 0.5",
            }

        extra = {"sampler": {"name": "generator", "steps": 1}}
        return Evaluation(metrics=metrics, grids=grids, extra=extra, complete=complete)

    def promotion(self, cfg: RunConfig, man, model, report: dict[str, Any]):
        """(example input for the registry signature, gate decision) of a feature-unlearning run."""
        from lethe.gates import evaluate_feature_gates

        fc = cfg.feature
        decision = evaluate_feature_gates(
            report["metrics"], fc.flagged_oracle_tol, fc.fd_tol, fc.n_eval, report.get("oracle")
        )
        return (torch.randn(4, model.latent_dim),), decision
