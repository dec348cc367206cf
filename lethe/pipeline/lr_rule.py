"""The unlearning learning rate, relative to how far training moved the model (issue 14 item 3).

A constant learning rate means different things on different data: the demo's original took 705
pretraining steps (60,000 images, 3 epochs at batch 256) and its 47 unlearning steps at lr 1e-3 add
4.6% of its training's summed learning rate; a 5,000-image data set's original took 60 steps, and
the same 30-odd unlearning steps add 36%: eight times the move, on a model that is also less settled.
Measured on avataaars (docs/tuning.md), every trial at lr 1e-3 left the model farther from the oracle
than doing nothing, at 2e-4 and 5e-5 far less so.

The rule: the unlearning's summed learning rate (lr times the sum of its warm-up / cosine multipliers
over its steps) is at most `unlearn.lr_share` of the original's pretraining (pretrain.lr times the sum
of its multipliers over epochs x steps per epoch), and never above the configured lr. The share is
set so the demo keeps its measured lr. It applies where lethe knows the original's recipe: a model it
pretrained itself on this request's data set, an image-to-image family. A `--source-model` was trained
elsewhere: its configured lr stands. Method auto's search range scales with it.
"""

from __future__ import annotations

import math
from typing import Any

from lethe.catalogue import is_generator
from lethe.config import RunConfig
from lethe.optim import unlearn_total_steps, warmup_cosine


def _lr_sum(steps: int, warmup_frac: float) -> float:
    """Sum of the warm-up / cosine multipliers over `steps` steps (about steps / 2)."""
    f = warmup_cosine(steps, warmup_frac)
    return float(sum(f(k) for k in range(steps)))


def lr_rule(cfg: RunConfig, man) -> dict[str, Any]:
    """What the rule makes of this run's unlearning lr: {rule, configured_lr, lr, scale, why, and for
    the relative rule the figures it used}. A pure function of the config and the manifest."""
    u, p = cfg.unlearn, cfg.pretrain
    out: dict[str, Any] = {"rule": u.lr_rule, "configured_lr": u.lr, "lr": u.lr, "scale": 1.0}
    if u.lr_rule == "fixed":
        out["why"] = "unlearn.lr_rule = fixed: the configured lr"
        return out
    if cfg.source_model or is_generator(cfg.family):
        out["rule"] = "fixed"
        out["why"] = (
            "the source model was trained elsewhere (its recipe is unknown): the configured lr"
            if cfg.source_model
            else f"family {cfg.family} unlearns features: the configured lr"
        )
        return out
    world = cfg.resources.num_workers
    n_train = man.shards["retain"].count + man.shards["forget"].count
    pre_steps = p.epochs * math.ceil(n_train / (p.batch_size * world))
    pretrain_sum = p.lr * _lr_sum(pre_steps, p.warmup_frac)
    steps = unlearn_total_steps(
        man.shards["forget"].count, u.batch_size, world, u.forget_passes, u.max_steps, u.min_steps
    )
    ceiling = u.lr_share * pretrain_sum / max(_lr_sum(steps, u.warmup_frac), 1e-12)
    lr = min(u.lr, ceiling)
    out.update(
        lr=lr,
        scale=lr / u.lr,
        share=u.lr_share,
        pretrain_steps=pre_steps,
        pretrain_lr_sum=round(pretrain_sum, 6),
        unlearn_steps=steps,
        why=(
            f"at most {u.lr_share:g} of the original's pretraining ({pre_steps} steps, summed lr "
            f"{pretrain_sum:.3g}) over {steps} unlearning steps: lr {lr:.3g}"
            + (" (the configured lr)" if lr == u.lr else f", {lr / u.lr:.3g}x the configured {u.lr:g}")
        ),
    )
    return out


def lr_scaled(cfg: RunConfig, man) -> RunConfig:
    """A copy of cfg whose unlearn.lr (and decoupling's ascent lr), and the search's lr range, are
    scaled by the rule; cfg itself unchanged (a step may call this more than once)."""
    scale = lr_rule(cfg, man)["scale"]
    if scale == 1.0:
        return cfg
    u, t = cfg.unlearn, cfg.tune
    d = u.decouple
    decouple = d if d.ascent_lr is None else d.model_copy(update={"ascent_lr": d.ascent_lr * scale})
    unlearn = u.model_copy(update={"lr": u.lr * scale, "decouple": decouple})
    tune = t.model_copy(update={"lr_range": (t.lr_range[0] * scale, t.lr_range[1] * scale)})
    return cfg.model_copy(update={"unlearn": unlearn, "tune": tune})
