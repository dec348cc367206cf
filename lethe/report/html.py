"""The human-readable report: one self-contained HTML file per run.

Pictures are embedded as base64 data URIs so the single file works when opened from MLflow's
artifact view (which serves one file, not a folder). All text from the report is escaped.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from lethe.gates import oracle_audited
from lethe.report.charts import candidates_chart_svg, steps_chart_svg
from lethe.report.schema import (
    DISTANCE_NAMES,
    FEATURE_METRICS,
    FEATURE_SPLIT,
    MODELS,
    REQUIRED_METRICS,
    SPLITS,
    atomic_write_bytes,
    distance_to_oracle,
    oracle_gaps,
    validate_report,
)
from lethe.report.summary import lr_rule_line, method_line, method_selection, proxy_line

__all__ = ["write_html_report", "format_number", "GRID_CAPTIONS", "IDS_NOTICE"]

IDS_NOTICE = "forget-set pictures are never shown for id requests"

GRID_CAPTIONS: dict[str, str] = {
    "retain_box": "Retain split (held out), centre-box mask: masked input, then each model's reconstruction.",
    "forget_box": "Forget split (held out), centre-box mask: masked input, then each model's reconstruction. "
    "A good unlearned model looks like the oracle here, not like the original.",
    "retain_outpaint": "Retain split (held out), border mask (outpainting): masked input, then each model's output.",
    "forget_outpaint": "Forget split (held out), border mask (outpainting): masked input, then each model's output.",
    "samples": "Samples from the same latents, one column per model; the unlearned model should keep the "
    "sample and drop the feature where the original shows it.",
    "attack": "PGD over the latent toward the feature classifier: each model's best sample per start.",
}

_DIGEST_SHOWN = 12

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 80em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child, td.name { text-align: left; }
thead th { background: #eee; }
.callout { background: #fff6d5; border-left: 4px solid #e0b000; padding: 0.5em 1em; }
.notice { background: #eef3ff; border-left: 4px solid #4060c0; padding: 0.5em 1em; }
figure { margin: 1em 0; }
figure img { image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { font-size: 0.9em; color: #444; }
code { background: #f4f4f4; padding: 0 0.2em; }
pre { background: #f8f8f8; padding: 0.5em; overflow-x: auto; }
"""


def format_number(value: Any) -> str:
    """Fixed 4 decimals for ordinary magnitudes, scientific for very large/small ones, '-' for none."""
    if value is None:
        return "-"
    v = float(value)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.3e}"
    return f"{v:.4f}"


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _short_digest(digest: str) -> str:
    """First 12 hex characters, keeping an 'algo:' prefix such as 'sha256:' whole."""
    prefix, sep, rest = digest.rpartition(":")
    head = f"{prefix}{sep}" if sep else ""
    return digest if len(rest) <= _DIGEST_SHOWN else f"{head}{rest[:_DIGEST_SHOWN]}..."


def _metric_names(metrics: dict, split: str) -> list[str]:
    """Required names first (contract order), then any extras that some model reports."""
    names = list(REQUIRED_METRICS[split])
    for model in MODELS:
        for name in metrics.get(model, {}).get(split, {}):
            # An interval is shown in its figure's cell, not as a row of its own.
            if name not in names and not name.endswith("_ci95"):
                names.append(name)
    return names


def _with_interval(values: dict, name: str) -> str:
    """'value [low, high]' when the figure has a 95% interval, else the value alone."""
    text = _e(format_number(values.get(name)))
    ci = values.get(f"{name}_ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        text += f" <small>[{_e(format_number(ci[0]))}, {_e(format_number(ci[1]))}]</small>"
    return text


def _metrics_table(metrics: dict) -> str:
    gaps = oracle_gaps(metrics)
    head = (
        "<tr><th>split</th><th>metric</th><th>original</th><th>unlearned</th><th>oracle</th>"
        "<th>unlearned &minus; oracle</th><th>original &minus; oracle</th></tr>"
    )
    rows: list[str] = []
    for split in SPLITS:
        for name in _metric_names(metrics, split):
            cells = [f"<td class='name'>{_e(split)}</td>", f"<td class='name'>{_e(name)}</td>"]
            for model in MODELS:
                cells.append(f"<td>{_with_interval(metrics.get(model, {}).get(split, {}), name)}</td>")
            for model in ("unlearned", "original"):
                gap = gaps.get(model, {}).get(split, {}).get(name)
                cells.append(f"<td>{_e(format_number(gap['diff'] if gap else None))}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _other_masks_section(by_mask: dict) -> str:
    """metrics_by_mask[kind][model][split][name]: one plain table per extra mask."""
    parts: list[str] = []
    for kind, per_model in by_mask.items():
        head = "<tr><th>split</th><th>metric</th>" + "".join(f"<th>{_e(m)}</th>" for m in MODELS) + "</tr>"
        rows: list[str] = []
        for split in SPLITS:
            names: list[str] = []
            for model in MODELS:
                names += [n for n in per_model.get(model, {}).get(split, {}) if n not in names]
            for name in names:
                cells = [f"<td class='name'>{_e(split)}</td>", f"<td class='name'>{_e(name)}</td>"]
                cells += [
                    f"<td>{_e(format_number(per_model.get(m, {}).get(split, {}).get(name)))}</td>"
                    for m in MODELS
                ]
                rows.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f"<h3>{_e(kind)}</h3><table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>")
    return "".join(parts)


def _feature_section(report: dict) -> list[str]:
    """Feature unlearning of a generator: sample metrics per model, the direction and the attack."""
    feat, metrics = report["feature"], report["metrics"]
    head = "<tr><th>metric</th>" + "".join(f"<th>{_e(m)}</th>" for m in MODELS) + "</tr>"
    names = list(FEATURE_METRICS) + [
        n for n in metrics.get("original", {}).get(FEATURE_SPLIT, {}) if n not in FEATURE_METRICS
    ]
    rows = [
        f"<tr><td class='name'>{_e(n)}</td>"
        + "".join(
            f"<td>{_e(format_number(metrics.get(m, {}).get(FEATURE_SPLIT, {}).get(n)))}</td>" for m in MODELS
        )
        + "</tr>"
        for n in names
    ]
    d, a = feat["direction"], feat["attack"]
    return [
        f"<p>Feature <strong>{_e(feat['feature'])}</strong> (classes: {_e(', '.join(feat['classes']))}). "
        f"Every model generates from the same {_e(feat['n_eval'])} seeded latents. The oracle is the same "
        "generator trained without the images that show the feature.</p>",
        f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>",
        "<div class='callout'>flagged_share: share of samples the binary feature classifier flags. "
        "fd: Frechet distance of samples vs held-out real images in the project's own classifier feature "
        "space (not FID). class_score: exp(E KL(p(y|x) || p(y))) on that classifier's class posteriors "
        "(the Inception-Score form, not IS). attack: PGD over z maximising the feature logit of g(z), "
        f"L_inf radius {_e(a['eps'])} around N(0, I) starts, step {_e(a['step'])}, {_e(a['steps'])} steps, "
        f"{_e(a['n'])} starts; success = the best latent's sample is flagged.</div>",
        f"<p>Direction: z_e = mean(latents with the feature) &minus; mean(without), |z_e| = "
        f"{_e(format_number(d['norm']))}, threshold {_e(format_number(d['threshold']))}, from "
        f"{_e(d['n_pos'])} positive and {_e(d['n_neg'])} negative labelled latents.</p>",
    ]


def _sampler_line(sampler: dict) -> str:
    if not sampler:
        return ""
    facts = ", ".join(f"{_e(k)} {_e(v)}" for k, v in sampler.items() if k != "name")
    return f"<p>Sampler: <strong>{_e(sampler.get('name', '?'))}</strong> ({facts}).</p>"


def _fd_callout(metrics: dict) -> str:
    """FD of unlearned relative to original per split: >1 on forget (and ~1 on retain) is the goal."""
    parts: list[str] = []
    for split in SPLITS:
        un = metrics.get("unlearned", {}).get(split, {}).get("fd")
        orig = metrics.get("original", {}).get(split, {}).get("fd")
        if un is None or orig is None or float(orig) <= 0:
            text = "n/a"
        else:
            text = f"{float(un) / float(orig):.3f}&times;"
        parts.append(f"<li>{_e(split)}: FD unlearned / original = {text}</li>")
    return (
        "<div class='callout'><strong>FD ratios (unlearned / original)</strong>"
        f"<ul>{''.join(parts)}</ul>"
        "FD is the Frechet distance in the project's own classifier feature space (not FID); "
        "unlearning should raise it on forget and leave it near 1&times; on retain.</div>"
    )


def _no_oracle_note(report: dict) -> list[str]:
    """A run without an oracle (cache.oracle = sample or none) says so where the oracle's column is empty."""
    oracle = report.get("oracle") or {}
    if oracle_audited(oracle):
        return []
    return [
        f"<p class='verdict-inconclusive'><strong>No oracle in this run</strong>: {_e(oracle.get('reason'))}</p>"
    ]


def _distance_table(metrics: dict) -> str:
    """Unsigned distance to the oracle on forget, one row per model (schema.distance_to_oracle)."""
    dist = distance_to_oracle(metrics)
    head = "<tr><th>model</th>" + "".join(f"<th>{_e(n)}</th>" for n in DISTANCE_NAMES) + "</tr>"
    rows = [
        f"<tr><td class='name'>{_e(m)}</td>"
        + "".join(f"<td>{_e(format_number(dist.get(m, {}).get(n)))}</td>" for n in DISTANCE_NAMES)
        + "</tr>"
        for m in MODELS
    ]
    return (
        "<p>Held-out forget data. fd_rel = |FD &minus; FD<sub>oracle</sub>| / FD<sub>oracle</sub>; the "
        "others are absolute differences. Lower is better: 0 means the model treats the forget data "
        "exactly like a model that never saw it.</p>"
        f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _evidence_section(report: dict) -> list[str]:
    """The membership test's verdict with its power check, and each gate's verdict and reason."""
    parts: list[str] = []
    mem = (report.get("evidence") or {}).get("membership")
    if isinstance(mem, dict):
        rows = [
            ("verdict", mem.get("verdict")),
            ("reason", mem.get("reason")),
            ("attack", mem.get("attack")),
            ("members / non-members", f"{mem.get('n_members')} / {mem.get('n_nonmembers')}"),
            ("source AUC [95%]", _pair(mem.get("source_auc"), mem.get("source_auc_ci95"))),
            ("unlearned AUC [95%]", _pair(mem.get("unlearned_auc"), mem.get("unlearned_auc_ci95"))),
            ("band (oracle's interval, widened)", _pair(None, mem.get("band"))),
        ]
        body = "".join(
            f"<tr><td class='name'>{_e(k)}</td><td class='name'>{_e(v)}</td></tr>" for k, v in rows
        )
        parts += [
            f"<p class='verdict-{_e(mem.get('verdict'))}'>Membership evidence: <strong>{_e(mem.get('verdict'))}</strong></p>",
            f"<table><tbody>{body}</tbody></table>",
        ]
    gates = ((report.get("promotion") or {}).get("gates") or {}).get("results") or []
    if gates:
        head = "<tr><th>gate</th><th>verdict</th><th>value</th><th>95% interval</th><th>reason</th></tr>"
        rows = [
            f"<tr><td class='name'>{_e(g.get('name'))}</td><td class='name'>{_e(g.get('verdict', 'passed' if g.get('passed') else 'failed'))}</td>"
            f"<td>{_e(format_number(g.get('value')))}</td><td>{_e(_pair(None, g.get('interval')))}</td>"
            f"<td class='name'>{_e(g.get('reason'))}</td></tr>"
            for g in gates
        ]
        parts.append(f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>")
    return parts


def _pair(value, interval) -> str:
    text = "" if value is None else format_number(value)
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        text += f" [{format_number(interval[0])}, {format_number(interval[1])}]"
    return text.strip() or "-"


def _decouple_section(dec: dict) -> str:
    """How decouple_retain's decoupling stage ended and where lambda came from."""
    rows = [
        ("lambda", format_number(dec.get("lambda"))),
        ("lambda rule", dec.get("lambda_rule", "?")),
        ("ascent steps", dec.get("ascent_steps")),
        ("lambda reached", dec.get("lambda_reached")),
        ("distance at the switch", format_number(dec.get("final_distance"))),
        ("retention steps", dec.get("retain_steps")),
        (
            "oracle's distance to the original (held-out forget)",
            format_number(dec.get("oracle_distance_to_original")),
        ),
        (
            "unlearned model's distance to the original",
            format_number(dec.get("unlearned_distance_to_original")),
        ),
    ]
    body = "".join(f"<tr><td class='name'>{_e(k)}</td><td class='name'>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table><tbody>{body}</tbody></table>"


def _checkpoint_section(ck: dict) -> str:
    """Which checkpoint of the unlearning run became the unlearned model, and the objective of every
    scored step as a picture (the kept one ringed)."""
    if ck.get("kept") != "best":
        return f"<p>The last step's model was kept: {_e(ck.get('reason', '-'))}.</p>"
    history = [h for h in ck.get("history") or [] if isinstance(h, dict)]
    points = [(float(h["step"]), float(h["objective"])) for h in history]
    source = ck.get("source_objective")
    reference = ("untouched source", float(source)) if isinstance(source, (int, float)) else None
    chart = steps_chart_svg(points, float(ck["step"]), "validation objective", reference)
    return (
        f"<p>The run scored its model every few steps on held-out validation images (not the ones "
        f"evaluated above) with the tuning objective, lower is better, and kept step "
        f"<strong>{_e(ck.get('step'))}</strong> of {_e(ck.get('last_step'))} "
        f"(objective {_e(format_number(ck.get('objective')))}; the last step's "
        f"{_e(format_number(ck.get('last_objective')))}; the untouched source's "
        f"{_e(format_number(source))}).</p>{_replay_note(ck.get('replay'))}<figure>{chart}</figure>"
    )


def _replay_note(replay: Any) -> str:
    """A replayed search trial (lethe.pipeline.replay): whose scores the picture shows."""
    if not isinstance(replay, dict):
        return ""
    return (
        f"<p>The steps' scores are those of search trial {_e(replay.get('trial_id'))}, which trained this "
        f"method with these settings on the same batches and scored every step this run scores: this run "
        f"trained only to the kept step and scored it once (the trial scored it "
        f"{_e(format_number(replay.get('trial_objective')))}).</p>"
    )


def _timing_table(timing: dict) -> str:
    rows = [
        f"<tr><td class='name'>{_e(step)}</td><td>{float(sec):.2f}</td></tr>" for step, sec in timing.items()
    ]
    total = sum(float(sec) for sec in timing.values())
    rows.append(f"<tr><td class='name'><strong>total</strong></td><td><strong>{total:.2f}</strong></td></tr>")
    return (
        f"<table><thead><tr><th>step</th><th>seconds</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _tune_table(tune: dict) -> str:
    """Every trial's alpha, lr and objective; the best one in bold."""
    best = tune.get("best", {}) or {}
    head = (
        "<tr><th>trial</th><th>method</th><th>alpha</th><th>lr</th><th>objective</th><th>FD forget / oracle</th>"
        "<th>FD retain / original</th><th>retain PSNR drop (dB)</th><th>reports</th><th>status</th></tr>"
    )
    rows = []
    for t in sorted(
        tune.get("trials", []), key=lambda t: (t.get("objective") is None, t.get("objective") or 0)
    ):
        cells = [
            f"<td class='name'>{_e(t.get('trial_id'))}</td>",
            f"<td class='name'>{_e(t.get('method', '-'))}</td>",
            f"<td>{_e(format_number(t.get('alpha')))}</td>",
            f"<td>{_e(format_number(t.get('lr')))}</td>",
            f"<td>{_e(format_number(t.get('objective')))}</td>",
            f"<td>{_e(format_number(t.get('fd_forget_vs_oracle')))}</td>",
            f"<td>{_e(format_number(t.get('fd_retain_vs_original')))}</td>",
            f"<td>{_e(format_number(t.get('psnr_retain_drop')))}</td>",
            f"<td>{_e(t.get('iterations', '-'))}</td>",
            f"<td class='name'>{_e(t.get('status'))}</td>",
        ]
        row = "".join(cells)
        if t.get("trial_id") == best.get("trial_id"):
            row = row.replace("<td", "<td style='font-weight:bold'")
        rows.append(f"<tr>{row}</tr>")
    used = tune.get("used_by_unlearned_model")
    note = (
        ""
        if used is None
        else (
            " The unlearned model used the best trial's settings."
            if used
            else " The unlearned model in this report did not use them."
        )
    )
    return (
        _method_choice(tune)
        + f"<p>Objective (lower is better): <code>{_e(tune.get('objective', ''))}</code>, "
        f"w = {_e(tune.get('retain_weight', '-'))}, v = {_e(tune.get('psnr_weight', '-'))}, "
        f"g = {_e(tune.get('gate_weight', '-'))}, m = {_e(tune.get('gate_margin', '-'))}, on held-out "
        "validation images. "
        f"Best: alpha {_e(format_number(best.get('alpha')))}, lr {_e(format_number(best.get('lr')))}.{_e(note)}</p>"
        f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _notes(report: dict) -> list[str]:
    """Under the request: a proxy retain set, method auto that could not search (what ran), and the
    lr rule when it lowered the configured lr."""
    out = [f"<p class='verdict-inconclusive'>{_e(proxy_line(report))}</p>"] if proxy_line(report) else []
    if lr_rule_line(report):
        out.append(f"<p>{_e(lr_rule_line(report))}</p>")
    if (report.get("unlearn") or {}).get("auto"):
        out.append(f"<p>{_e(method_line(report))}</p>")
    return out


def _method_choice(tune: dict) -> str:
    """method auto: the method chosen and why, and every trial's objective per method as a picture."""
    sel = method_selection({"tune": tune})
    if sel is None:
        return ""
    trials = tune.get("trials", [])
    # Scored by their best checkpoint, trials stopped early compete too (the unlearn step reaches
    # their score); scored by their last report, only those that ran their whole length.
    score_best = bool(tune.get("score_best"))
    rows = [
        (
            m,
            [
                (t["objective"], score_best or t.get("status") == "finished")
                for t in trials
                if t.get("method") == m and t.get("objective") is not None
            ],
        )
        for m in sel["methods"]
    ]
    best = tune.get("best") or {}
    source = (tune.get("baselines") or {}).get("source_objective")
    chart = candidates_chart_svg(
        rows,
        (best.get("method"), best.get("objective")) if best.get("objective") is not None else None,
        "validation objective (lower is better)",
        ("doing nothing", source) if isinstance(source, int | float) else None,
    )
    budget = tune.get("budget") or {}
    spent = (
        f" The search took {budget['spent_s']:.0f} s; its budget was {budget['time_budget_s']:.0f} s "
        f"({budget['frac']:.0%} of the oracle's {budget['oracle_train_s']:.0f} s training)."
        if budget.get("time_budget_s") and budget.get("spent_s") is not None
        else ""
    )
    return (
        f"<p><b>method auto chose {_e(sel['chosen'])}</b>: {_e(sel['why'])}.{_e(spent)}</p><div>{chart}</div>"
    )


def _image_data_uri(path: Path) -> str:
    mime = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}.get(
        path.suffix.lower(), "image/png"
    )
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _grids_section(grids: dict[str, Path], kind: str) -> str:
    parts: list[str] = []
    for key, grid_path in grids.items():
        # Id requests are typically about specific people's pictures; re-publishing them in a
        # report would defeat the request, so forget grids are dropped whatever the caller passed.
        if kind == "ids" and str(key).startswith("forget"):
            continue
        caption = GRID_CAPTIONS.get(str(key), str(key).replace("_", " "))
        p = Path(grid_path)
        if not p.is_file():
            parts.append(f"<p class='notice'>Picture {_e(key)} is missing ({_e(p.name)}).</p>")
            continue
        parts.append(
            f"<figure id='grid-{_e(key)}'><img alt='{_e(key)}' src='{_image_data_uri(p)}'>"
            f"<figcaption><strong>{_e(key)}</strong>: {_e(caption)}</figcaption></figure>"
        )
    if kind == "ids":
        parts.insert(0, f"<p class='notice'>Note: {_e(IDS_NOTICE)}.</p>")
    return "".join(parts)


def _mlflow_section(ml: dict) -> str:
    uri = ml.get("tracking_uri") or ""
    run_id = ml.get("run_id") or ""
    rows = "".join(
        f"<tr><td class='name'>{_e(k)}</td><td class='name'><code>{_e(ml.get(k) if ml.get(k) is not None else '-')}</code></td></tr>"
        for k in ("tracking_uri", "run_id", "model_name", "model_version")
    )
    link = ""
    if str(uri).startswith(("http://", "https://")) and run_id:
        # MLflow's UI resolves /#/runs/<id> to the run page without needing the experiment id.
        exp = ml.get("experiment_id")
        route = f"#/experiments/{exp}/runs/{run_id}" if exp else f"#/runs/{run_id}"
        href = f"{str(uri).rstrip('/')}/{route}"
        link = f"<p><a href='{_e(href)}'>Open the run in MLflow</a></p>"
    return f"<table><tbody>{rows}</tbody></table>{link}"


def write_html_report(
    report: dict,
    grids: dict[str, Path],
    path: Path,
    extra_sections: list[tuple[str, str]] | None = None,
) -> Path:
    """Write the self-contained HTML report for a validated report dict; returns `path`.

    `grids` maps keys such as "retain_box" / "forget_box" to PNG files. `extra_sections` are
    (title, plain text) pairs; the text is escaped and shown preformatted (it is not HTML).
    """
    # Validating here too keeps the privacy guard (no ids keys) on the HTML path as well.
    validate_report(report)
    req = report["request"]
    kind = str(req["kind"])
    digest = str(req["forget_digest"])
    short = _short_digest(digest)
    title = f"lethe report: {report['dataset']} / {report['family']} / {report['method']}"

    body: list[str] = [
        f"<h1>{_e(title)}</h1>",
        f"<p>Run <code>{_e(report['run_id'])}</code></p>",
        "<h2>Request</h2>",
        "<table><tbody>"
        f"<tr><td class='name'>kind</td><td class='name'>{_e(kind)}</td></tr>"
        f"<tr><td class='name'>forget count</td><td>{_e(req['forget_count'])}</td></tr>"
        f"<tr><td class='name'>retain count</td><td>{_e(req['retain_count'])}</td></tr>"
        f"<tr><td class='name'>forget digest</td><td class='name'><code>{_e(short)}</code></td></tr>"
        "</tbody></table>",
        *_notes(report),
        "<h2>Metrics</h2>",
        *(
            [*_no_oracle_note(report), *_feature_section(report)]
            if kind == "feature"
            else [
                "<p>Held-out data, centre-box mask. The oracle is retrained from scratch without the "
                "forget set; the closer the unlearned model is to it, the better.</p>",
                *_no_oracle_note(report),
                _sampler_line(report.get("sampler") or {}),
                _metrics_table(report["metrics"]),
                _fd_callout(report["metrics"]),
                "<h2>Distance to the oracle</h2>",
                _distance_table(report["metrics"]),
                *(["<h2>Evidence</h2>", *_evidence_section(report)] if _evidence_section(report) else []),
                *(
                    ["<h2>Decoupling + knowledge retention</h2>", _decouple_section(report["decouple"])]
                    if isinstance(report.get("decouple"), dict)
                    else []
                ),
            ]
        ),
        *(
            ["<h2>Other masks</h2>", _other_masks_section(report["metrics_by_mask"])]
            if report.get("metrics_by_mask")
            else []
        ),
        *(
            ["<h2>Unlearning checkpoint</h2>", _checkpoint_section(report["unlearn"]["checkpoint"])]
            if isinstance((report.get("unlearn") or {}).get("checkpoint"), dict)
            else []
        ),
        "<h2>Pictures</h2>",
        _grids_section(grids, kind),
        "<h2>Timing</h2>",
        _timing_table(report["timing_s"]),
        "<h2>MLflow</h2>",
        _mlflow_section(report["mlflow"]),
    ]
    if isinstance(report.get("tune"), dict):
        body += ["<h2>Tuning (Ray Tune)</h2>", _tune_table(report["tune"])]
    for section_title, text in extra_sections or []:
        body.append(f"<h2>{_e(section_title)}</h2><pre>{_e(text)}</pre>")

    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    return atomic_write_bytes(Path(path), page.encode("utf-8"))
