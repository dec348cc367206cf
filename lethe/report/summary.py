"""The results summary a person reads at the end of a run, on the terminal: what was asked, how the
three models did on forget and retain images, how far each is from the oracle, every gate's verdict,
what was registered, and where the report and certificate are. Counts and figures only: no ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lethe.gates import oracle_audited
from lethe.report.schema import FEATURE_SPLIT, MODELS

# (split, metric, column title) per request kind: the figures that say whether forgetting worked
_COLUMNS_I2I = (
    ("forget", "fd", "forget FD"),
    ("forget", "psnr", "forget PSNR"),
    ("retain", "fd", "retain FD"),
    ("retain", "psnr", "retain PSNR"),
)
_COLUMNS_FEATURE = (
    (FEATURE_SPLIT, "flagged_share", "flagged share"),
    (FEATURE_SPLIT, "attack_success", "PGD success"),
    (FEATURE_SPLIT, "fd_without_feature", "FD w/o feature"),
)


def _what(req: Mapping[str, Any]) -> str:
    kind = req.get("kind")
    if kind == "feature":
        return "a visual feature"
    n = len(req.get("requests") or [])
    if n:
        return f"{n} stored deletion request{'s' if n != 1 else ''}"
    return "a list of ids" if kind == "ids" else "classes"


def _num(v: Any) -> str:
    # four significant digits read at a glance on a terminal; the report keeps every digit
    return f"{float(v):.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _cell(v: Any, ci: Any = None) -> str:
    text = _num(v)
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        text += f" [{_num(ci[0])}, {_num(ci[1])}]"
    return text


def _table(report: Mapping[str, Any]) -> list[str]:
    metrics = report.get("metrics") or {}
    feature = (report.get("request") or {}).get("kind") == "feature"
    columns = _COLUMNS_FEATURE if feature else _COLUMNS_I2I
    dist = report.get("distance_to_oracle") or {}
    head = ["model", *(title for _, _, title in columns)] + ([] if feature else ["forget FD to oracle"])
    rows = [head]
    for model in (m for m in MODELS if m in metrics):  # no oracle row in a run without one
        vals = metrics.get(model) or {}
        row = [model]
        for split, name, _ in columns:
            per = vals.get(split) or {}
            row.append(_cell(per.get(name), per.get(f"{name}_ci95")))
        if not feature:
            row.append(_cell((dist.get(model) or {}).get("fd_rel")))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _gates(report: Mapping[str, Any]) -> list[str]:
    promo = report.get("promotion") or {}
    results = (promo.get("gates") or {}).get("results") or []
    lines = [
        f"  {r.get('name')}: {r.get('verdict', 'passed' if r.get('passed') else 'failed')}" for r in results
    ]
    membership = (report.get("evidence") or {}).get("membership")
    if membership:
        lines.append(f"  membership evidence: {membership.get('verdict')}")
    return lines


def _registry(report: Mapping[str, Any]) -> str:
    ml = report.get("mlflow") or {}
    promo = report.get("promotion") or {}
    version = ml.get("model_version")
    if not version:
        return "registered: no version"
    where = f"models:/{ml.get('model_name')}/{version}"
    alias = promo.get("alias")
    if promo.get("promoted"):
        return f"registered: {where}, promoted: @{alias} now points to it"
    return f"registered: {where}, not promoted: @{alias} left where it was"


def _checkpoint(report: Mapping[str, Any]) -> str | None:
    """Which checkpoint of the unlearning run became the unlearned model."""
    ck = (report.get("unlearn") or {}).get("checkpoint") or {}
    if ck.get("kept") == "best":
        return (
            f"checkpoint: kept step {ck.get('step')} of {ck.get('last_step')}, the best validation "
            f"objective ({_num(ck.get('objective'))}; last step {_num(ck.get('last_objective'))}; "
            f"untouched source {_num(ck.get('source_objective'))})"
            + (
                f", trained to it only: search trial {ck['replay']['trial_id']} scored the rest"
                if ck.get("replay")
                else ""
            )
        )
    if ck.get("kept") == "last":
        return f"checkpoint: the last step ({ck.get('reason')})"
    return None


def method_selection(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """method auto's choice as the report's tune section records it (the methods in the order
    searched, the chosen one, why), or what ran when it could not search; None for a fixed method."""
    fallback = (report.get("unlearn") or {}).get("auto")
    if fallback:
        return {"methods": list(fallback["methods"]), "chosen": fallback["chosen"], "why": fallback["why"]}
    tune = report.get("tune") or {}
    sel = tune.get("selection") or {}
    if not sel.get("auto"):
        return None
    methods = (tune.get("search") or {}).get("methods") or list(sel["by_method"])
    return {"methods": list(methods), "chosen": sel["chosen"], "why": sel["why"]}


def method_line(report: Mapping[str, Any]) -> str | None:
    """method auto: which method the search chose, among how many, and why."""
    sel = method_selection(report)
    if sel is None:
        return None
    if (report.get("unlearn") or {}).get("auto"):  # no search: the reason says what ran instead
        return f"method auto: {sel['why']}"
    return f"method auto: chose {sel['chosen']} among {len(sel['methods'])} methods: {sel['why']}"


def proxy_line(report: Mapping[str, Any]) -> str | None:
    """Says so when the unlearning loss saw a proxy retain set instead of the retain data."""
    proxy = (report.get("unlearn") or {}).get("proxy_retain")
    if not proxy:
        return None
    oracle = (
        "the oracle trained on the training data, and every metric uses its held-out images"
        if oracle_audited(report.get("oracle"))
        else "no oracle, and every metric uses the data set's held-out images"
    )
    return (
        f"proxy retain: the unlearning loss's retain side was {proxy['images']} images of "
        f"{proxy['dataset']}, not the training data; {oracle}"
    )


def lr_rule_line(report: Mapping[str, Any]) -> str | None:
    """Says so when the data-relative lr rule lowered the configured learning rate."""
    rule = (report.get("unlearn") or {}).get("lr_rule") or {}
    if rule.get("scale", 1.0) == 1.0:
        return None
    return f"lr rule: {rule['why']} (applied to {rule.get('applied_to', 'unlearn.lr')})"


def summary_lines(report: Mapping[str, Any], certificate: str | None = None) -> list[str]:
    """The summary, one line per entry (no trailing newline); `certificate`: its path, if written."""
    req = report.get("request") or {}
    lines = [
        f"result: {report.get('family')} / {report.get('method')} on {report.get('dataset')}: forgot "
        f"{req.get('forget_count')} training images ({_what(req)}), kept {req.get('retain_count')}",
        *_table(report),
    ]
    notes = (method_line(report), _checkpoint(report), lr_rule_line(report), proxy_line(report))
    lines += [line for line in notes if line]
    oracle = report.get("oracle") or {}
    if not oracle_audited(oracle):
        lines.append(f"oracle: none in this run ({oracle.get('reason')})")
    gates = _gates(report)
    if gates:
        lines += ["gates:", *gates]
    lines.append(_registry(report))
    if certificate:
        lines.append(f"certificate: {certificate}")
    return lines
