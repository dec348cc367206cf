"""Evaluation of feature unlearning (DESIGN.md 2.3): plain PyTorch / NumPy, no Ray or MLflow.

* flagged share: the share of generated samples the binary feature classifier flags;
* FD of samples vs held-out real images in the project's own featnet space (never "FID");
* featnet class score: exp(E_x KL(p(y|x) || p(y))) on the featnet's class posteriors, the form of
  the Inception Score computed with the project's classifier (never called "IS");
* a PGD attack over the latent that maximises the classifier's feature logit of g(z).

The feature classifier is a FeatNet with two classes (0 = without the feature, 1 = with it); its
feature logit is logit_1 - logit_0, so "flagged" means logit > 0, i.e. p(feature) > 0.5.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from lethe.metrics import frechet_distance


def feature_logit(classifier: nn.Module, x: Tensor) -> Tensor:
    """(B, C, H, W) in [0, 1] -> (B,) log-odds of the feature."""
    out = classifier(x)
    return out[:, 1] - out[:, 0]


@torch.no_grad()
def generate(model: nn.Module, z: Tensor, bs: int = 500) -> Tensor:
    """Samples in [0, 1] for latents z, in batches, on the model's device; returned on the CPU."""
    dev = next(model.parameters()).device
    return torch.cat([model.sample(z[i : i + bs].to(dev)).cpu() for i in range(0, len(z), bs)])


@torch.no_grad()
def feature_logits(classifier: nn.Module, x: Tensor, bs: int = 500) -> Tensor:
    dev = next(classifier.parameters()).device
    return torch.cat([feature_logit(classifier, x[i : i + bs].to(dev)).cpu() for i in range(0, len(x), bs)])


def flagged_share(logits: Tensor) -> float:
    return float((logits > 0).float().mean())


@torch.no_grad()
def featnet_outputs(featnet: nn.Module, x: Tensor, bs: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features, class posteriors) as float64 arrays."""
    dev = next(featnet.parameters()).device
    feats, probs = [], []
    for i in range(0, len(x), bs):
        f = featnet.features(x[i : i + bs].to(dev))
        feats.append(f.cpu().double())
        probs.append(torch.softmax(featnet.cls(f), dim=1).cpu().double())
    return torch.cat(feats).numpy(), torch.cat(probs).numpy()


def class_score(probs: np.ndarray, eps: float = 1e-12) -> float:
    """exp(E_x KL(p(y|x) || p(y))): between 1 (every sample has the same posterior) and the number of
    classes (confident and evenly spread over the classes)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0)
    marginal = p.mean(0, keepdims=True)
    kl = (p * (np.log(p) - np.log(marginal))).sum(1)
    return float(np.exp(kl.mean()))


def sample_quality(
    featnet: nn.Module, samples: Tensor, real_feats: np.ndarray, without_feats: np.ndarray, bs: int = 500
) -> dict:
    """One feature-net pass over the samples: FD to held-out real images in the data set's
    proportion (`real_feats`) and to those without the feature (`without_feats`, the oracle's target
    distribution and the sample_fd gate's reference), and the class score."""
    feats, probs = featnet_outputs(featnet, samples, bs)
    return {
        "fd": frechet_distance(feats, real_feats),
        "fd_without_feature": frechet_distance(feats, without_feats),
        "class_score": class_score(probs),
    }


@dataclass(frozen=True)
class AttackSpec:
    """PGD over z, L_inf ball of radius eps around a random N(0, I) start (latent units)."""

    eps: float = 0.5
    step: float = 0.05
    steps: int = 20
    n: int = 256

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AttackResult:
    success_rate: float  # share of starts whose best latent is flagged
    mean_prob: float  # mean p(feature) of the best latent per start
    mean_logit: float
    start_logit: float  # mean feature logit at the starts, before the attack
    best_z: Tensor  # (n, latent_dim)
    best_logit: Tensor  # (n,)

    def summary(self) -> dict[str, float]:
        return {
            "success_rate": self.success_rate,
            "mean_prob": self.mean_prob,
            "mean_logit": self.mean_logit,
            "start_logit": self.start_logit,
        }


def pgd_attack(model: nn.Module, classifier: nn.Module, z0: Tensor, spec: AttackSpec) -> AttackResult:
    """Maximise the classifier's feature logit of g(z) by signed-gradient ascent, projected onto the
    L_inf ball around z0. Keeps, per start, the best latent seen (the start included). Gradients
    flow to z only; the models' parameters are untouched."""
    dev = next(model.parameters()).device
    z0 = z0.to(dev)
    req = [p.requires_grad for p in model.parameters()] + [p.requires_grad for p in classifier.parameters()]
    for p in [*model.parameters(), *classifier.parameters()]:
        p.requires_grad_(False)
    try:
        z = z0.clone()
        with torch.no_grad():
            best = feature_logit(classifier, model.sample(z))
        start = float(best.mean())
        best_z = z.clone()
        for _ in range(spec.steps):
            z.requires_grad_(True)
            score = feature_logit(classifier, model.sample(z))
            (grad,) = torch.autograd.grad(score.sum(), z)
            with torch.no_grad():
                z = z + spec.step * grad.sign()
                z = torch.max(torch.min(z, z0 + spec.eps), z0 - spec.eps)
                s = feature_logit(classifier, model.sample(z))
                better = s > best
                best = torch.where(better, s, best)
                best_z = torch.where(better[:, None], z, best_z)
    finally:
        for p, r in zip([*model.parameters(), *classifier.parameters()], req, strict=True):
            p.requires_grad_(r)
    best = best.cpu()
    return AttackResult(
        success_rate=float((best > 0).float().mean()),
        mean_prob=float(torch.sigmoid(best).mean()),
        mean_logit=float(best.mean()),
        start_logit=start,
        best_z=best_z.cpu(),
        best_logit=best,
    )
