"""Does latent feature unlearning work? One process, no Ray: the same models, loss and metrics as the
pipeline (lethe.models.vae / gan, lethe.methods.latent_feature, lethe.evaluation.samples) on
Fashion-MNIST with a class as the feature (default Trouser).

    python benchmarks/feature_unlearning.py [--family vae|gan] [--feature Trouser] [--train 12000]
        [--epochs 6] [--steps 300] [--alpha 1.0] [--ch 16] [--gan-loss hinge|nonsat] [--out FILE]

Trains the original (all classes), the oracle (without the feature's class), the project's feature
net (10 classes, for FD / class score) and the binary feature classifier; unlearns; prints and writes
(default benchmarks/results/feature_unlearning_<family>.json) flagged share, sample FD, class score
and the PGD attack for original / unlearned / oracle, and the grids.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lethe.config import FeatureUnlearnConfig
from lethe.data.loaders import read_idx_pair
from lethe.evaluation.samples import (
    AttackSpec,
    featnet_outputs,
    feature_logits,
    flagged_share,
    generate,
    pgd_attack,
    sample_quality,
)
from lethe.gates import evaluate_feature_gates
from lethe.methods.latent_feature import feature_direction, latent_feature_loss
from lethe.models.families import get_family
from lethe.models.featnet import FeatNet, FeatNetArch
from lethe.report import image_grid

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def load(n_train: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    tr, te = read_idx_pair(FASHION, "train"), read_idx_pair(FASHION, "t10k")
    assert tr is not None and te is not None
    g = np.random.default_rng(seed)
    idx = g.permutation(len(tr[0]))[:n_train]

    def t(x: np.ndarray) -> torch.Tensor:
        x = x.reshape(len(x), 1, 28, 28) if x.ndim < 4 else x.transpose(0, 3, 1, 2)
        return torch.from_numpy(x.astype(np.float32) / 255.0)

    return (
        t(tr[0][idx]),
        torch.from_numpy(tr[1][idx].astype(np.int64)),
        t(te[0]),
        torch.from_numpy(te[1].astype(np.int64)),
    )


def batches(n: int, bs: int, g: torch.Generator):
    perm = torch.randperm(n, generator=g)
    for i in range(0, n, bs):
        yield perm[i : i + bs]


def train_generator(family: str, section: dict, x: torch.Tensor, epochs: int, lr: float, seed: int):
    fam = get_family(family)
    torch.manual_seed(seed)
    model = fam.model_cls(fam.arch_cls(**fam.build_arch(section, 28, 28, 1)))
    opts = {k: torch.optim.Adam(p, lr=lr, betas=model.betas) for k, p in model.train_groups().items()}
    g = torch.Generator().manual_seed(seed)
    model.train()
    for ep in range(epochs):
        tot = {k: 0.0 for k in opts}
        for idx in batches(len(x), 64, g):
            for k, opt in opts.items():
                loss = model.group_loss(k, x[idx], g)
                opt.zero_grad()
                loss.backward()
                opt.step()
                tot[k] += loss.item() * len(idx)
        print(
            f"  {family} epoch {ep + 1}/{epochs}: "
            + ", ".join(f"{k} {v / len(x):.4f}" for k, v in tot.items())
        )
    return model.eval()


def train_classifier(x: torch.Tensor, y: torch.Tensor, classes: int, epochs: int, seed: int) -> FeatNet:
    torch.manual_seed(seed)
    net = FeatNet(FeatNetArch(28, 28, 1, classes, 16, 64))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in batches(len(x), 128, g):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--family", default="vae", choices=["vae", "gan"])
    p.add_argument("--feature", default="Trouser")
    p.add_argument("--train", type=int, default=12000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ch", type=int, default=16, help="generator (and GAN discriminator) width")
    p.add_argument("--gan-loss", default="hinge", choices=["hinge", "nonsat"])
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(2)
    out = Path(a.out or f"benchmarks/results/feature_unlearning_{a.family}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    section: dict = {"latent_dim": 16, "ch": a.ch}
    if a.family == "gan":
        section |= {"disc_ch": a.ch, "loss": a.gan_loss}
    lr_pre = 1e-3 if a.family == "vae" else 2e-4
    feat = CLASSES.index(a.feature)
    x, y, xt, yt = load(a.train, a.seed)
    t0 = time.perf_counter()
    timing: dict[str, float] = {}
    print("original:")
    original = train_generator(a.family, section, x, a.epochs, lr_pre, a.seed)
    timing["original_s"] = time.perf_counter() - t0
    print("oracle:")
    t1 = time.perf_counter()
    oracle = train_generator(a.family, section, x[y != feat], a.epochs, lr_pre, a.seed)
    timing["oracle_s"] = time.perf_counter() - t1
    featnet = train_classifier(x, y, 10, 2, a.seed)
    clf = train_classifier(x, (y == feat).long(), 2, 2, a.seed)
    acc = float(((feature_logits(clf, xt) > 0).long() == (yt == feat).long()).float().mean())
    print(f"feature classifier held-out accuracy {acc:.4f}")

    # the method: label sampled latents, direction, fine-tune g toward f(z_hat)
    t2 = time.perf_counter()
    gl = torch.Generator().manual_seed(a.seed + 50_001)
    zl = torch.randn(2000, original.latent_dim, generator=gl)
    logits = feature_logits(clf, generate(original, zl))
    pos = logits > 0
    labelling = "classifier"
    if not bool(pos.any()) or bool(pos.all()):
        # as the pipeline does (lethe.pipeline.generator.find_direction): rank by feature logit
        k = max(1, round(float((y == feat).float().mean()) * len(zl)))
        pos = torch.zeros(len(zl), dtype=torch.bool)
        pos[logits.argsort(descending=True)[:k]] = True
        labelling = "ranked"
    d = feature_direction(zl, pos)
    print(
        f"direction: {d.n_pos} positive / {d.n_neg} negative, |z_e| {float(d.z_e.norm()):.3f}, t {d.threshold:.3f}"
    )
    g = copy.deepcopy(original).train()
    f = original
    for q in g.parameters():
        q.requires_grad_(False)
    params = g.generator_parameters()
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=a.lr)
    for step in range(a.steps):
        gz = torch.Generator().manual_seed(a.seed * 7919 + step)
        z = torch.randn(64, g.latent_dim, generator=gz)
        parts = latent_feature_loss(g.sample, f.sample, z, d, a.alpha)
        opt.zero_grad()
        parts.total.backward()
        opt.step()
        if (step + 1) % 50 == 0:
            print(f"  unlearn step {step + 1}: {parts.as_dict()}")
    unlearned = g.eval()
    timing["unlearn_s"] = time.perf_counter() - t2

    # evaluation on fixed latents and held-out real images (test split)
    models = {"original": original, "unlearned": unlearned, "oracle": oracle}
    z = torch.randn(a.n_eval, original.latent_dim, generator=torch.Generator().manual_seed(a.seed + 60_001))
    za = torch.randn(128, original.latent_dim, generator=torch.Generator().manual_seed(a.seed + 70_001))
    spec = AttackSpec(eps=0.5, step=0.05, steps=20, n=128)
    real_feats, _ = featnet_outputs(featnet, xt[:3000])
    neg_feats, _ = featnet_outputs(featnet, xt[yt != feat][:3000])
    results: dict[str, dict[str, float]] = {}
    samples, attacks = {}, {}
    for name, m in models.items():
        s = generate(m, z)
        samples[name] = s
        q = sample_quality(featnet, s, real_feats, neg_feats)
        r = pgd_attack(m, clf, za, spec)
        attacks[name] = r
        results[name] = {
            "flagged_share": flagged_share(feature_logits(clf, s)),
            "fd": q["fd"],
            "class_score": q["class_score"],
            "attack_success": r.success_rate,
            "attack_mean_prob": r.mean_prob,
            "attack_start_logit": r.start_logit,
            "fd_without_feature": q["fd_without_feature"],
        }
        print(name, {k: round(v, 4) for k, v in results[name].items()})
    flagged = feature_logits(clf, samples["original"]) > 0
    idx = torch.cat([torch.nonzero(flagged).flatten()[:6], torch.nonzero(~flagged).flatten()[:6]])
    grid_dir = out.parent
    image_grid([(n, samples[n][idx].numpy()) for n in models], grid_dir / f"feature_{a.family}_samples.png")
    image_grid(
        [(n, generate(models[n], attacks[n].best_z[:8]).numpy()) for n in models],
        grid_dir / f"feature_{a.family}_attack.png",
    )
    tol = FeatureUnlearnConfig()
    summary = {
        "family": a.family,
        "feature": a.feature,
        "train_rows": a.train,
        "epochs": a.epochs,
        "steps": a.steps,
        "alpha": a.alpha,
        "lr": a.lr,
        "classifier_heldout_accuracy": acc,
        "direction": {
            "labelling": labelling,
            "n_pos": d.n_pos,
            "n_neg": d.n_neg,
            "norm": float(d.z_e.norm()),
            "threshold": d.threshold,
        },
        "attack": spec.to_dict(),
        "metrics": results,
        "fd_unlearned_vs_original": results["unlearned"]["fd"] / results["original"]["fd"],
        # the pipeline's promotion gates at their default tolerances, on these numbers
        "gates": evaluate_feature_gates(
            {k: {"samples": v} for k, v in results.items()}, tol.flagged_oracle_tol, tol.fd_tol, a.n_eval
        ).to_dict(),
        "timing_s": timing,
    }
    out.write_text(json.dumps(summary, indent=2))
    print(summary["gates"]["summary"])


if __name__ == "__main__":
    main()
