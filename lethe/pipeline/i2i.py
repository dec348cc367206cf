"""The image-to-image families (MAE, VQ-GAN, diffusion) in the pipeline's steps.

Masked images in, reconstructions out: pretraining draws the family's masks, unlearning runs one of
the image-to-image methods (DESIGN.md 2.1, 2.2) on the forget and retain shards, evaluation compares
reconstructions of held-out forget and retain images, and the reconstruction gates decide promotion.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from lethe.config import RunConfig
from lethe.errors import DataError
from lethe.execution.progress import InProcess
from lethe.pipeline.decouple import calibrate_decouple, decouple_check, decouple_summary, method_options
from lethe.pipeline.family_api import Evaluation, UnlearnPlan
from lethe.pipeline.jobs import (
    family_arch,
    fault_step,
    mask_spec,
    phases,
    pretrain_job,
    proxy_retain,
    unlearn_job,
    unlearned_meta,
)
from lethe.pipeline.oracle_audit import oracle_audit
from lethe.pipeline.params import flat_params, numeric, ratio, section_params

log = logging.getLogger("lethe")


def i2i_unlearn_job(
    cfg: RunConfig,
    man,
    arch: dict[str, Any],
    u,
    meta: dict[str, Any],
    calibration: dict[str, Any] | None = None,
):
    """The unlearning job of an image-to-image method (also each tuning trial's)."""
    options, stage_lr = method_options(u, calibration)
    return unlearn_job(
        cfg,
        "unlearn",
        arch,
        u,
        man.shards["forget"].count,
        meta,
        mask=mask_spec(cfg, arch),
        noise=u.noise,
        method_options=options,
        stage_lr=stage_lr,
        unlearn_mask=u.mask,
        passes=u.forget_passes,
        fail_at_step=fault_step(),
    )


def eval_data(cfg: RunConfig, man, where: str):
    """Held-out forget and retain images (and the MIA's members / non-members) for evaluation."""
    from lethe.data import read_shard_numpy, to_chw_float
    from lethe.evaluation.reconstruction import EvalData
    from lethe.pipeline.validation import evaluated, uses_validation

    e, t = cfg.eval, cfg.tune
    # Images that chose the model (tuning, best checkpoint) never grade it: evaluation leaves them out.
    validated = uses_validation(cfg, man)

    def load(name: str, limit: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        imgs, labels, ids = read_shard_numpy(man, name, limit=limit)
        return torch.from_numpy(to_chw_float(imgs).copy()), torch.from_numpy(labels.copy()), list(ids)

    def heldout(name: str, eval_n: int, val_n: int) -> int:
        return evaluated(man.shards[name].count, eval_n, val_n if validated else None)

    retain, retain_labels, _ = load("heldout_retain", heldout("heldout_retain", e.n_retain, t.val_retain))
    members, _, member_ids = load("forget", e.n_mia)
    if cfg.request.kind == "ids":
        # The requested images themselves are the forget split; MIA negatives are unseen retain-like images.
        forget = members
        nonmembers = retain[: e.n_mia]
    else:
        forget, _, _ = load("heldout_forget", heldout("heldout_forget", e.n_forget, t.val_forget))
        nonmembers = forget[: e.n_mia]
    if len(forget) == 0 or len(retain) == 0:
        raise DataError(
            "nothing to evaluate on",
            where=where,
            expected="held-out forget and retain images",
            seen=f"{len(forget)} / {len(retain)}",
        )
    return EvalData(
        retain=retain,
        forget=forget,
        members=members,
        nonmembers=nonmembers,
        show_forget=cfg.request.kind != "ids",
        retain_labels=retain_labels,
        member_ids=tuple(member_ids),
    )


def eval_settings(cfg: RunConfig, out_dir, progress=None):
    """The evaluation's settings (lethe.evaluation.reconstruction.EvalSettings) from the run config."""
    from lethe.evaluation.reconstruction import EvalSettings

    e = cfg.eval
    return EvalSettings(
        box_frac=e.box_frac,
        grid_rows=e.grid_rows,
        out_dir=out_dir,
        batch_size=e.batch_size,
        outpaint_frac=e.outpaint_frac if e.outpaint else None,
        seed=cfg.seed,
        bootstrap=e.bootstrap,
        attack_masks=e.attack_masks,
        attack_mask_ratio=cfg.pretrain.mask_ratio,
        progress=progress,
    )


def requests_evidence(
    cfg: RunConfig, member_ids: tuple[str, ...], scores: dict[str, Any], no_oracle: str
) -> dict[str, dict[str, Any]]:
    """A night's evidence per stored request (this night's and every earlier one): are its own
    images forgotten by the unlearned model? Keyed by request uuid; empty when the run is no night."""
    from lethe.evaluation.evidence import request_evidence, request_not_evaluated
    from lethe.pipeline.request_groups import read_groups

    groups = read_groups(cfg.request.ids_file) if cfg.request.refs else {}
    row = {i: k for k, i in enumerate(member_ids)}
    out = {}
    for n, ref in enumerate(cfg.request.refs):
        rows = [row[i] for i in groups.get(ref.request_id, []) if i in row]
        if not scores:  # no oracle, no calibrated scores
            out[ref.request_id] = request_not_evaluated(len(rows), no_oracle)
            continue
        out[ref.request_id] = request_evidence(
            scores["original"][rows],
            scores["unlearned"][rows],
            cfg.eval.bootstrap,
            cfg.seed + 404 + n,
            cfg.eval.request_min_images,
            "the source model"
            if ref.night == "this"
            else "this night's source, which had already forgotten them,",
        )
    return out


def _membership(
    cfg: RunConfig, attack: dict[str, Any], n_members: int, n_nonmembers: int, no_oracle: str
) -> dict[str, Any]:
    """The membership verdict from the calibrated attack (not evaluated in a run without an oracle)."""
    from lethe.evaluation.evidence import membership_not_evaluated, membership_verdict

    if "oracle" not in attack:
        return membership_not_evaluated(n_members, n_nonmembers, no_oracle)
    return membership_verdict(
        attack["original"],
        attack["unlearned"],
        attack["oracle"],
        n_members,
        n_nonmembers,
        cfg.gates.mia_auc_tol,
        cfg.eval.mia_min_members,
    )


class ImageToImage:
    tunable = True

    def arch(self, cfg: RunConfig, man) -> dict[str, Any]:
        return family_arch(cfg, man)

    def model_info(self, cfg: RunConfig) -> dict[str, Any]:
        return {"phases": ",".join(phases(cfg))}  # e.g. VQ-GAN: tokenizer,transformer,transformer

    def pretrain_job(self, cfg: RunConfig, man, n_rows: int, meta: dict[str, Any]):
        arch = self.arch(cfg, man)
        return pretrain_job(
            cfg, "pretrain", arch, n_rows, meta, mask=mask_spec(cfg, arch), phases=phases(cfg)
        )

    def auxiliary_models(self, ctx, man) -> dict[str, Any]:
        return {}

    def check_tunable(self, cfg: RunConfig) -> None:
        return None

    def unlearn_params(self, cfg: RunConfig, u) -> dict[str, Any]:
        return {"method": cfg.method, **flat_params("unlearn", u.settings(cfg.method))}

    def plan_unlearn(self, ctx, man, arch, teacher, u, tuned: bool) -> UnlearnPlan:
        from lethe.execution.fit import unlearn_inputs

        cfg = ctx.cfg
        calibration = None
        if cfg.method == "decouple_retain":
            calibration = calibrate_decouple(cfg, man, arch, teacher, u)
            ctx.tracker.log_params(
                {
                    "decouple.lambda": calibration["lambda"],
                    "decouple.lambda_rule": calibration["rule"],
                    "decouple.heldout_mse_mean": calibration["heldout_mse_mean"],
                }
            )
            log.warning("decouple_retain: %s = %.5g", calibration["rule"], calibration["lambda"])
        meta = unlearned_meta(cfg, man, u, tuned)
        if calibration is not None:
            meta["decouple_lambda"] = calibration["lambda"]
        job = i2i_unlearn_job(cfg, man, arch, u, meta, calibration)
        payload, why_not = self._selection(ctx, man, arch)
        if payload is not None:
            job.eval_every = u.eval_every
        world = cfg.resources.num_workers
        proxy, proxy_record = proxy_retain(cfg, man, job, world)

        def on_done(res) -> None:
            if calibration is not None:
                ctx.state.unlearn["decouple"] = decouple_summary(calibration, res.metrics)

        return UnlearnPlan(
            job=job,
            datasets=lambda: unlearn_inputs(man, job, world, retain=proxy),
            settings=u.settings(cfg.method),
            extra_state={"proxy_retain": proxy_record} if proxy_record else {},
            on_done=on_done,
            eval_payload=payload,
            no_selection=why_not,
        )

    @staticmethod
    def _selection(ctx, man, arch) -> tuple[dict[str, Any] | None, str | None]:
        """Best-checkpoint keeping: the validation payload the run scores its checkpoints with, or
        why it keeps the last one."""
        from lethe.pipeline.validation import load_models, selection_unavailable, validation_payload

        why_not = selection_unavailable(ctx.cfg, man)
        if why_not is not None:
            log.warning("unlearn: keeping the last checkpoint: %s", why_not)
            return None, why_not
        payload, _ = validation_payload(ctx, man, load_models(ctx, arch))
        return payload, None

    def eval_params(self, cfg: RunConfig) -> dict[str, Any]:
        return section_params("eval", cfg)

    def evaluate(self, ctx, man, arch, models, featnet) -> Evaluation:
        from lethe.evaluation.reconstruction import evaluate_models
        from lethe.pipeline.validation import held_back_counts
        from lethe.report import distance_to_oracle, oracle_gaps

        cfg = ctx.cfg
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        data = eval_data(cfg, man, str(ctx.lay.shards))
        settings = eval_settings(cfg, ctx.lay.report_dir, InProcess("evaluate"))
        metrics, grids, extra = evaluate_models(models, featnet, data, settings)
        # The validation images that chose the model (tuning, best checkpoint), left out of all the above.
        extra["validation_held_back"] = held_back_counts(cfg, man)
        attack, ratio_cis = extra.pop("attack"), extra.pop("fd_ratio_ci95")
        member_scores = extra.pop("member_scores")
        n_members, n_nonmembers = extra.pop("n_members"), extra.pop("n_nonmembers")
        # the same words as the gates that need the oracle (lethe.gates): the audit's reason
        no_oracle = f"no oracle in this run ({oracle_audit(cfg, man).get('reason')})"
        membership = _membership(cfg, attack, n_members, n_nonmembers, no_oracle)
        log.warning("evaluate: %s", membership["reason"])
        per_request = requests_evidence(cfg, data.member_ids, member_scores, no_oracle)
        by_mask = extra.pop("metrics_by_mask", {})
        for prefix, per_model in [("", metrics), *((f"{k}.", v) for k, v in by_mask.items())]:
            for model, splits in per_model.items():
                for split, vals in splits.items():
                    ctx.tracker.log_metrics(
                        {f"{prefix}{model}.{split}.{k}": v for k, v in numeric(vals).items()}
                    )

        def complete(report: dict[str, Any]) -> None:
            report["evidence"] = {
                "membership": membership,
                "fd_ratio_ci95": ratio_cis["box"],
                "fd_ratio_ci95_by_mask": {k: v for k, v in ratio_cis.items() if k != "box"},
                "bootstrap": extra["bootstrap"],
                "fd_min_samples": extra["fd_min_samples"],
            }
            if by_mask:
                # Other masks sit beside the headline metrics, never inside them (report.json contract).
                report["metrics_by_mask"] = by_mask
                report["fd_ratio_by_mask"] = {
                    kind: {
                        s: ratio(m["unlearned"][s]["fd"], m["original"][s]["fd"])
                        for s in ("forget", "retain")
                    }
                    for kind, m in by_mask.items()
                }
            for ref in report["request"].get("requests", []):
                ref["evidence"] = per_request[ref["request_id"]]
            report["oracle_gaps"] = oracle_gaps(metrics)
            if isinstance(report.get("decouple"), dict):
                report["decouple"].update(decouple_check(cfg, arch, models, data.forget))
            report["distance_to_oracle"] = distance_to_oracle(metrics)
            ctx.tracker.log_metrics(
                {
                    f"distance_to_oracle.{m}.{n}": v
                    for m, row in report["distance_to_oracle"].items()
                    for n, v in row.items()
                }
            )

        return Evaluation(metrics=metrics, grids=grids, extra=extra, complete=complete)

    def promotion(self, cfg: RunConfig, man, model, report: dict[str, Any]):
        from lethe import masks
        from lethe.gates import evaluate_gates

        decision = evaluate_gates(
            report["metrics"],
            cfg.gates,
            report.get("evidence"),
            report.get("metrics_by_mask"),
            report.get("oracle"),
        )
        h, w, c = man.height, man.width, man.channels
        mask = masks.expand(masks.box_mask(h, w, cfg.eval.box_frac, model.mask_cell), 4).contiguous()
        return (torch.rand(4, c, h, w), mask), decision
