"""The end of a run: the final report and the unlearning certificate (complete or incomplete)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lethe.pipeline.context import Context
from lethe.pipeline.provenance import redact
from lethe.pipeline.report import finalise_report, request_only_report

log = logging.getLogger("lethe")


def finalize(
    ctx: Context, orchestrator: str, status: str = "complete", error: str | None = None
) -> Path | None:
    """After cleanup: final report (timings, cleanup) and the unlearning certificate.

    The certificate goes to `<workdir>/certificate/`, to the pipeline's MLflow run (or the promote
    run when there is none) under `certificate/`, which is where the model version's
    `lethe.certificate_uri` tag points. Returns the certificate JSON path (None: nothing to certify).
    """
    from lethe.certificate import CERT_DIR, build_certificate, write_certificate
    from lethe.signing import load_signing_key, sign
    from lethe.tracking.certificates import previous_link

    report_path = ctx.lay.report_dir / "report.json"
    report: dict[str, Any] = {}
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        if status == "complete":
            finalise_report(ctx, report)
        elif ctx.state.run_id and report.get("run_id") != ctx.state.run_id:
            report = {}  # an earlier run's report: this run failed before its own evaluate
    if not report:
        report = request_only_report(ctx)
    if not report:
        return None  # the run failed before the split: nothing was requested, nothing to certify
    cfg, st = ctx.cfg, ctx.state
    hp = json.loads(json.dumps(cfg.unlearn.settings(cfg.method)))
    hp["alpha"] = st.unlearn.get("alpha", hp["alpha"])
    cert = build_certificate(
        report,
        st.to_dict(),
        hyperparameters=hp,
        tracking={"tracking_uri": redact(cfg.tracking_uri), "experiment": cfg.tracking.experiment},
        orchestrator=orchestrator,
        status=status,
        error=error,
    )
    cert["previous_certificate"] = previous_link(ctx.tracker, (st.pretrain.get("source") or {}).get("uri"))
    cert = sign(cert, load_signing_key(cfg.signing_key_path))
    json_path, html_path = write_certificate(cert, ctx.lay.certificate_dir)
    anchor = st.promote.get("certificate_run_id") or st.run_id
    if anchor:
        ctx.tracker.log_artifact_to(anchor, json_path, CERT_DIR)
        ctx.tracker.log_artifact_to(anchor, html_path, CERT_DIR)
    st.certificate = {"path": str(json_path), "status": status}
    ctx.save()
    log.warning("certificate: %s (%s)", json_path, status)
    return json_path
