"""The unlearning certificate: what was forgotten, how well, who promoted what, and proof of cleanup.

One JSON document (machine-checked) plus a readable HTML page, written at the very end of a run
(after cleanup, so the proof is real), logged to MLflow and linked from the registered model
version by the tag `lethe.certificate_uri`. Plain Python: it reads report.json and the run state.

Privacy: a certificate holds counts, digests, class names, metrics and paths of deleted shards and
model files; never forget-set ids or pixels. `validate_certificate` refuses the keys that would carry ids. The
digests are keyed (HMAC-SHA256, lethe.digests): `request.digest` states the algorithm and the public
id of the key, so nobody without the key can match a digest against a data set's ids.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

from lethe.gates import oracle_audited
from lethe.report.schema import FORBIDDEN_KEYS, atomic_write_bytes
from lethe.report.summary import method_selection

KIND = "lethe.unlearning-certificate"
VERSION = 1
CERT_DIR = "certificate"
JSON_NAME = "certificate.json"
HTML_NAME = "certificate.html"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _forbidden(obj: Any, path: str) -> str | None:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if str(key) in FORBIDDEN_KEYS:
                return f"{path}.{key}"
            found = _forbidden(value, f"{path}.{key}")
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found = _forbidden(value, f"{path}[{i}]")
            if found:
                return found
    return None


def verify_cleanup(deleted: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check again, now, that every deleted shard is absent (local paths; other URIs as recorded)."""
    out = []
    for entry in deleted:
        uri = str(entry.get("uri", ""))
        local = "://" not in uri or uri.startswith("file://")
        path = uri.removeprefix("file://")
        absent_now = (not os.path.exists(path)) if local else bool(entry.get("absent_after"))
        out.append({**entry, "absent_at_issue": absent_now})
    return out


def _vs_source(metrics: Mapping[str, Any]) -> dict[str, Any]:
    def get(model: str, split: str, name: str) -> float | None:
        try:
            v = metrics[model][split][name]
        except (KeyError, TypeError):
            return None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b not in (None, 0.0) else None

    out: dict[str, Any] = {}
    for split in ("forget", "retain"):
        un, src = get("unlearned", split, "fd"), get("original", split, "fd")
        ps_un, ps_src = get("unlearned", split, "psnr"), get("original", split, "psnr")
        out[split] = {
            "fd_ratio": ratio(un, src),
            "psnr_drop_db": (ps_src - ps_un) if ps_un is not None and ps_src is not None else None,
        }
    return out


def _request_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """What the request says about the forget set: counts, digests and classes, never ids; and how
    the digests were made (a report without digest_key_id is from before digests were keyed)."""
    req = report.get("request", {})
    out = {
        k: req.get(k)
        for k in ("kind", "forget_count", "retain_count", "forget_digest", "request_digest", "classes")
        if k in req
    }
    if req.get("requests"):
        out["requests"] = _stored_requests(req["requests"])
    if req.get("digest_key_id"):
        out["digest"] = {
            "algorithm": req.get("digest_algorithm") or "hmac-sha256",
            "key_id": req["digest_key_id"],
        }
    else:
        out["digest"] = {"algorithm": "sha256", "key_id": None}
    return out


def _stored_requests(refs: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The store's requests this version forgets (lethe nightly), by uuid and keyed digest, with the
    days from receipt to this certificate and the margin left to each deadline."""
    issued = datetime.now(timezone.utc)

    def days(a: datetime, b: datetime) -> float:
        return round((b - a).total_seconds() / 86400, 2)

    return [
        {
            **dict(r),
            "days_received_to_applied": days(datetime.fromisoformat(r["received_at"]), issued),
            "days_left_to_deadline": days(issued, datetime.fromisoformat(r["deadline"])),
        }
        for r in refs
    ]


def _digest_line(digest: Mapping[str, Any] | None) -> str:
    if digest and digest.get("key_id"):
        algorithm = str(digest.get("algorithm") or "").upper()
        return f"keyed: {algorithm} under the key with id {digest['key_id']}"
    return "unkeyed SHA-256 (made before digests were keyed)"


def _digest_note(digest: Mapping[str, Any] | None) -> str:
    """The paragraph above the request table: what the digests are and what they do not reveal."""
    if digest and digest.get("key_id"):
        return (
            f"Counts and digests of the forget set, never its ids or pictures. The digests are "
            f"{_digest_line(digest)}: without that key they cannot be matched against candidate ids."
        )
    return (
        "Counts and digests of the forget set, never its ids or pictures; the digests are "
        f"{_digest_line(digest)}."
    )


def _request_rows(req: Mapping[str, Any]) -> str:
    return _rows(
        [
            (k, _digest_line(v) if k == "digest" else ", ".join(map(str, v)) if isinstance(v, list) else v)
            for k, v in req.items()
            if k != "requests"
        ]
    )


def _stored_request_rows(refs: list[Mapping[str, Any]]) -> str:
    if not refs:
        return ""
    head = (
        "<tr><th>request</th><th>night</th><th>received</th><th>deadline</th><th>days to apply</th>"
        "<th>days left</th><th>its images</th></tr>"
    )
    body = "".join(
        f"<tr><td><code>{_e(r['request_id'])}</code></td><td>{_e(r['night'])}</td><td>{_e(r['received_at'])}</td>"
        f"<td>{_e(r['deadline'])}</td><td>{_num(r['days_received_to_applied'])}</td>"
        f"<td class='{'ok' if r['days_left_to_deadline'] >= 0 else 'bad'}'>{_num(r['days_left_to_deadline'])}</td>"
        f"{_request_evidence_cell(r.get('evidence'))}</tr>"
        for r in refs
    )
    return (
        "<h3>Deletion requests</h3><p>Its images: each request's own images measured in this version "
        "(calibrated membership score against the oracle: about 0 when forgotten).</p>"
        f"<table>{head}{body}</table>"
    )


def _request_evidence_cell(ev: Mapping[str, Any] | None) -> str:
    if not ev:
        return "<td>not measured</td>"
    verdict = str(ev.get("verdict"))
    cls = {"forgotten": "ok", "remembered": "bad"}.get(verdict, "")
    ci = ev.get("unlearned_score_ci95")
    figure = f" (score {_num(ev['unlearned_score'])}, 95% CI {_num(ci[0])} .. {_num(ci[1])})" if ci else ""
    return f"<td class='{cls}' title='{_e(str(ev.get('reason', '')))}'>{_e(verdict)}, {ev['n_images']} images{figure}</td>"


def _source_model(state: Mapping[str, Any], source: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "uri": source.get("uri"),
        "requested": source.get("requested"),
        "pretrained_by_lethe": not source,
        "cache_key": ((state.get("pretrain") or {}).get("original") or {}).get("cache_key"),
    }


def _result_model(promote: Mapping[str, Any]) -> dict[str, Any]:
    name, version = promote.get("model_name"), promote.get("model_version")
    return {
        "name": name,
        "version": version,
        "uri": f"models:/{name}/{version}" if name and version else None,
        "alias": promote.get("alias"),
        "promoted": bool(promote.get("promoted")),
        "previous_alias_version": promote.get("previous_alias_version"),
    }


def _cleanup_proof(deleted: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "deleted": deleted,
        "all_absent": bool(deleted) and all(d.get("absent_after") and d["absent_at_issue"] for d in deleted),
        "verified_at": now_iso(),
    }


def _timestamps(state: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "started_at": state.get("started_at"),
        "finished_at": now_iso(),
        "steps": dict(state.get("steps_at") or {}),
        "timing_s": dict(state.get("timing_s") or {}),
    }


def _oracle(state: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    """Which yardstick this version was judged against: retrained in this run, reused (trained
    earlier on the same retain set, so on the same cumulative forget set), or none (cache.oracle =
    sample, a run not drawn for an audit; none, no training data to retrain on: the report's oracle
    record says so and why)."""
    o = dict(state.get("oracle") or {})
    audit = dict(report.get("oracle") or {})
    out = {
        "policy": audit.get("policy") or o.get("policy", "reuse"),
        "audited": oracle_audited(audit),
        "retrained_in_this_run": not o.get("cached", False) if o else None,
        "cache_key": o.get("cache_key"),
        "training_wall_s": o.get("train_wall_s"),
    }
    if not out["audited"]:
        out.update(retrained_in_this_run=None, cache_key=None, training_wall_s=None)
    out.update({k: audit[k] for k in ("share", "draw", "reason", "trained_on") if k in audit})
    return out


def _checkpoint(report: dict[str, Any]) -> dict[str, Any] | None:
    ck = (report.get("unlearn") or {}).get("checkpoint")
    if not isinstance(ck, dict):
        return None
    keep = ("kept", "step", "last_step", "objective", "last_objective", "source_objective", "rule", "reason")
    return {k: ck[k] for k in keep if k in ck}


def build_certificate(
    report: Mapping[str, Any],
    state: Mapping[str, Any],
    *,
    hyperparameters: Mapping[str, Any],
    tracking: Mapping[str, Any],
    orchestrator: str,
    status: str = "complete",
    error: str | None = None,
) -> dict[str, Any]:
    """Assemble the certificate from report.json and the run state (see module docstring)."""
    metrics = report.get("metrics", {})
    promote = dict(state.get("promote") or {})
    source = dict((state.get("pretrain") or {}).get("source") or {})
    cleanup = dict(state.get("cleanup") or {})
    deleted = verify_cleanup(list(cleanup.get("deleted", [])))
    request = _request_summary(report)
    cert: dict[str, Any] = {
        "kind": KIND,
        "version": VERSION,
        "status": status,
        "error": error,
        "issued_at": now_iso(),
        "code_version": report.get("code_version"),
        "pipeline": {
            "orchestrator": orchestrator,
            "mlflow_run_id": state.get("run_id") or report.get("run_id"),
            **{k: tracking.get(k) for k in ("tracking_uri", "experiment")},
        },
        "request": request,
        "dataset": {
            "name": report.get("dataset"),
            "source_uri": report.get("source_uri"),
            "heldout": report.get("heldout"),
        },
        "source_model": _source_model(state, source),
        "result_model": _result_model(promote),
        "method": {
            "family": report.get("family"),
            "name": report.get("method"),
            "hyperparameters": dict(hyperparameters),
            # which checkpoint of the run became the result, chosen on images the metrics never used
            "checkpoint": _checkpoint(report),
            # a proxy retain set stood in for the retain data in the unlearning loss (name, count)
            "proxy_retain": (report.get("unlearn") or {}).get("proxy_retain"),
            # method auto: the methods searched on validation images, and why this one was chosen
            "selection": method_selection(report),
        },
        "metrics": metrics,
        "oracle": _oracle(state, report),
        "vs_oracle": (report.get("oracle_gaps") or {}).get("unlearned"),
        "vs_source": _vs_source(metrics),
        "membership_inference": {
            "method": (report.get("evaluation") or {}).get("mia"),
            "auc": {m: (metrics.get(m, {}).get("forget", {}) or {}).get("mia_auc") for m in metrics},
            # passed | failed | inconclusive, with the power check's figures (lethe.evaluation.evidence)
            "evidence": (report.get("evidence") or {}).get("membership"),
        },
        "gates": promote.get("gates"),
        "cleanup": _cleanup_proof(deleted),
        "timestamps": _timestamps(state),
    }
    validate_certificate(cert)
    return cert


def validate_certificate(cert: Mapping[str, Any]) -> None:
    bad = _forbidden(cert, "certificate")
    if bad:
        raise ValueError(f"{bad}: forbidden key (forget ids never go into certificates)")
    for key in ("kind", "status", "request", "cleanup", "issued_at"):
        if key not in cert:
            raise ValueError(f"certificate.{key}: missing")


def _e(v: Any) -> str:
    return escape("-" if v is None else str(v), quote=True)


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return _e(v)
    return f"{float(v):.4g}"


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs)


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #bbb;padding:.2em .6em;"
    "text-align:left}.ok{color:#176b2c}.bad{color:#a40000}code{background:#f4f4f4}"
)


def _gate_rows(gates: Mapping[str, Any]) -> str:
    def verdict(g: Mapping[str, Any]) -> str:
        return str(g.get("verdict") or ("passed" if g["passed"] else "failed"))

    return "".join(
        f"<tr><td>{_e(g['name'])}</td><td class='{'ok' if verdict(g) == 'passed' else 'bad'}'>"
        f"{_e(verdict(g))}</td><td>{_num(g.get('value'))}</td><td>{_e(g['limit'])}</td>"
        f"<td>{_e(g.get('reason'))}</td></tr>"
        for g in gates.get("results", [])
    )


def _metric_rows(metrics: Mapping[str, Any]) -> str:
    rows = []
    for split in ("forget", "retain"):
        # Intervals (NAME_ci95) are shown next to their figure.
        names = sorted({n for m in metrics.values() for n in (m.get(split) or {}) if not n.endswith("_ci95")})
        for n in names:
            cells = "".join(
                f"<td>{_with_ci((metrics.get(m, {}).get(split) or {}), n)}</td>"
                for m in ("original", "unlearned", "oracle")
            )
            rows.append(f"<tr><td>{_e(split)}</td><td>{_e(n)}</td>{cells}</tr>")
    return "".join(rows)


def _with_ci(values: Mapping[str, Any], name: str) -> str:
    ci = values.get(f"{name}_ci95")
    text = _num(values.get(name))
    return text + (
        f" [{_num(ci[0])}, {_num(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
    )


def _deleted_what(d: Mapping[str, Any]) -> str:
    """A cleanup entry's name: a shard, or a copy of a model trained on the forget set."""
    if d.get("shard"):
        return f"shard {d['shard']}"
    return f"model {d.get('model')} ({d.get('copy')})"


def _cleanup_rows(deleted: list[Mapping[str, Any]]) -> str:
    return "".join(
        f"<tr><td>{_e(_deleted_what(d))}</td><td><code>{_e(d.get('uri'))}</code></td>"
        f"<td>{_e(d.get('absent_after'))}</td><td>{_e(d.get('absent_at_issue'))}</td></tr>"
        for d in deleted
    )


def _run_rows(cert: Mapping[str, Any]) -> str:
    return _rows(
        [
            ("issued at", cert["issued_at"]),
            ("code version", cert.get("code_version")),
            ("orchestrator", cert["pipeline"].get("orchestrator")),
            ("MLflow run", cert["pipeline"].get("mlflow_run_id")),
            ("tracking URI", cert["pipeline"].get("tracking_uri")),
        ]
    )


def _model_rows(src: Mapping[str, Any], res: Mapping[str, Any]) -> str:
    return _rows(
        [
            ("source model", src.get("uri") or "pretrained by lethe on the full data"),
            ("source requested as", src.get("requested")),
            ("result model", res.get("uri")),
            ("alias", res.get("alias")),
            ("promoted (alias moved)", res.get("promoted")),
            ("alias before", res.get("previous_alias_version")),
        ]
    )


def _method_rows(method: Mapping[str, Any]) -> str:
    ck = method.get("checkpoint") or {}
    kept = []
    if ck.get("kept") == "best":
        kept = [
            (
                "checkpoint",
                f"step {ck.get('step')} of {ck.get('last_step')}: the lowest validation objective "
                f"({_num(ck.get('objective'))}; last step {_num(ck.get('last_objective'))}), on "
                "held-out images no metric above uses",
            )
        ]
    elif ck.get("kept") == "last":
        kept = [("checkpoint", f"the last step ({ck.get('reason')})")]
    sel = method.get("selection")
    if sel:
        kept.append(("chosen by", f"method auto among {', '.join(sel['methods'])}: {sel['why']}"))
    proxy = method.get("proxy_retain")
    if proxy:
        kept.append(
            ("proxy retain", f"{proxy['images']} images of {proxy['dataset']} stood in for the retain data")
        )
    return _rows(
        [("family", method["family"]), ("method", method["name"])]
        + [(f"hp.{k}", v) for k, v in method["hyperparameters"].items()]
        + kept
    )


def _timestamp_rows(timestamps: Mapping[str, Any]) -> str:
    return _rows(
        [("started", timestamps.get("started_at")), ("finished", timestamps.get("finished_at"))]
        + [(f"{k} (s)", v) for k, v in timestamps.get("timing_s", {}).items()]
    )


def _oracle_note(o: Mapping[str, Any]) -> str:
    if not oracle_audited(o):
        share = f", share {o['share']}" if o.get("share") is not None else ""
        return (
            f"none: {o.get('reason', 'not drawn for an audit')} (policy {o.get('policy', 'sample')}{share})"
        )
    if o.get("retrained_in_this_run") is None:
        return "none in this run"
    how = (
        "retrained in this run"
        if o["retrained_in_this_run"]
        else "reused, trained earlier on the same retain set"
    )
    on = f" on {o['trained_on']}" if o.get("trained_on") else ""
    return f"{how}{on} (policy {o.get('policy')}; cache key {o.get('cache_key')})"


def render_html(cert: Mapping[str, Any]) -> str:
    req, src, res = cert["request"], cert["source_model"], cert["result_model"]
    gates = cert.get("gates") or {}
    gate_rows = _gate_rows(gates)
    metric_rows = _metric_rows(cert["metrics"])
    cleanup_rows = _cleanup_rows(cert["cleanup"]["deleted"])
    status = cert["status"]
    body = f"""
<h1>Unlearning certificate</h1>
<p class='{"ok" if status == "complete" else "bad"}'>Status: <strong>{_e(status)}</strong>
{("&mdash; " + _e(cert.get("error"))) if cert.get("error") else ""}</p>
<table>{_run_rows(cert)}</table>
<h2>What was forgotten</h2>
<p>{_e(_digest_note(req.get("digest")))}</p>
<table>{_request_rows(req)}</table>
{_stored_request_rows(req.get("requests") or [])}
<h2>Models</h2>
<table>{_model_rows(src, res)}</table>
<h2>Method</h2>
<table>{_method_rows(cert["method"])}</table>
<p>Oracle (the model retrained without the forget set): {_e(_oracle_note(cert.get("oracle") or {}))}</p>
<h2>Metrics (held-out data)</h2>
<table><tr><th>split</th><th>metric</th><th>source</th><th>unlearned</th><th>oracle</th></tr>
{metric_rows}</table>
<p>Membership inference: {_e(cert["membership_inference"].get("method"))}.</p>
<p>Membership evidence: <strong>{_e((cert["membership_inference"].get("evidence") or {}).get("verdict"))}</strong>
&mdash; {_e((cert["membership_inference"].get("evidence") or {}).get("reason"))}</p>
<h2>Promotion gates</h2>
<p>{_e(gates.get("summary", "no gate decision (model not registered)"))}</p>
<table><tr><th>gate</th><th>verdict</th><th>value</th><th>rule</th><th>reason</th></tr>{gate_rows}</table>
<h2>Cleanup proof</h2>
<p>Forget shards, and every copy of the models trained on them for the evaluation (feature net,
feature classifier), deleted at the end of the run and checked again when this certificate was issued.</p>
<table><tr><th>deleted</th><th>URI</th><th>absent after cleanup</th><th>absent at issue</th></tr>
{cleanup_rows}</table>
<p>All absent: <strong>{_e(cert["cleanup"]["all_absent"])}</strong></p>
<h2>Timestamps</h2>
<table>{_timestamp_rows(cert["timestamps"])}</table>
"""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>lethe unlearning certificate"
        f"</title><style>{_CSS}</style></head><body>{body}</body></html>\n"
    )


def write_certificate(cert: Mapping[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write certificate.json and certificate.html atomically into `folder`."""
    validate_certificate(cert)
    folder = Path(folder)
    from lethe.signing import canonical_bytes

    j = atomic_write_bytes(folder / JSON_NAME, canonical_bytes(cert))
    h = atomic_write_bytes(folder / HTML_NAME, render_html(cert).encode())
    return j, h


__all__ = [
    "CERT_DIR",
    "HTML_NAME",
    "JSON_NAME",
    "KIND",
    "build_certificate",
    "render_html",
    "validate_certificate",
    "verify_cleanup",
    "write_certificate",
]
