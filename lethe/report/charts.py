"""Small inline SVG charts for the HTML report (no plotting library: the report is one file)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape


def steps_chart_svg(
    points: Sequence[tuple[float, float]],
    marked_x: float | None,
    y_label: str,
    reference: tuple[str, float] | None = None,
    width: int = 420,
    height: int = 180,
) -> str:
    """A line of (step, value) points with the `marked_x` point ringed; axes show the ranges; a
    `reference` (label, value) is a dashed level across the chart."""
    if not points:
        return ""
    pad_l, pad_r, pad_t, pad_b = 56, 12, 12, 34
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    levels = ys + ([reference[1]] if reference else [])
    y0, y1 = min(0.0, min(levels)), max(levels)
    span_x, span_y = (x1 - x0) or 1.0, (y1 - y0) or 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        px = pad_l + (x - x0) / span_x * (width - pad_l - pad_r)
        py = height - pad_b - (y - y0) / span_y * (height - pad_t - pad_b)
        return round(px, 1), round(py, 1)

    line = " ".join(f"{px},{py}" for px, py in (at(x, y) for x, y in points))
    dots = []
    for x, y in points:
        px, py = at(x, y)
        kept = marked_x is not None and x == marked_x
        dots.append(
            f"<circle cx='{px}' cy='{py}' r='{6 if kept else 3}' fill='{'none' if kept else '#1f6feb'}' "
            f"stroke='{'#d1242f' if kept else '#1f6feb'}' stroke-width='2'><title>step {x:g}: "
            f"{y:.4g}</title></circle>"
        )
    bottom, left = height - pad_b, pad_l
    axes = (
        f"<line x1='{left}' y1='{pad_t}' x2='{left}' y2='{bottom}' stroke='#555'/>"
        f"<line x1='{left}' y1='{bottom}' x2='{width - pad_r}' y2='{bottom}' stroke='#555'/>"
        f"<text x='{left - 4}' y='{pad_t + 4}' text-anchor='end' font-size='11'>{y1:.3g}</text>"
        f"<text x='{left - 4}' y='{bottom}' text-anchor='end' font-size='11'>{y0:.3g}</text>"
        f"<text x='{left}' y='{bottom + 14}' font-size='11'>{x0:g}</text>"
        f"<text x='{width - pad_r}' y='{bottom + 14}' text-anchor='end' font-size='11'>{x1:g}</text>"
        f"<text x='{(left + width - pad_r) / 2}' y='{height - 4}' text-anchor='middle' font-size='11'>step</text>"
        f"<text x='12' y='{(pad_t + bottom) / 2}' font-size='11' text-anchor='middle' "
        f"transform='rotate(-90 12 {(pad_t + bottom) / 2})'>{escape(y_label)}</text>"
    )
    if reference:
        _, ry = at(x0, reference[1])
        axes += (
            f"<line x1='{left}' y1='{ry}' x2='{width - pad_r}' y2='{ry}' stroke='#888' "
            f"stroke-dasharray='4 3'/><text x='{width - pad_r}' y='{ry - 3}' text-anchor='end' "
            f"font-size='11' fill='#555'>{escape(reference[0])} {reference[1]:.3g}</text>"
        )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
        f"aria-label='{escape(y_label)} per step'>{axes}"
        f"<polyline points='{line}' fill='none' stroke='#1f6feb' stroke-width='1.5'/>{''.join(dots)}</svg>"
    )


def candidates_chart_svg(
    rows: Sequence[tuple[str, Sequence[tuple[float, bool]]]],
    best: tuple[str, float] | None,
    x_label: str,
    reference: tuple[str, float] | None = None,
    width: int = 520,
) -> str:
    """One row per candidate: (label, its trials as (value, competed for the choice)) as dots on a
    shared axis, trials that could not be chosen in grey, the `best` (label, value) ringed; a
    `reference` (label, value) is a dashed line down the chart."""
    values = [v for _, vs in rows for v, _ in vs] + ([reference[1]] if reference else [])
    if not values:
        return ""
    pad_l, pad_r, pad_t, row_h = 120, 16, 22, 22
    height = pad_t + row_h * len(rows) + 44
    x0, x1 = min(0.0, min(values)), max(values)
    span = (x1 - x0) or 1.0

    def px(v: float) -> float:
        return round(pad_l + (v - x0) / span * (width - pad_l - pad_r), 1)

    parts = []
    for i, (label, vs) in enumerate(rows):
        y = pad_t + row_h * i + row_h / 2
        parts.append(
            f"<text x='{pad_l - 6}' y='{y + 4}' text-anchor='end' font-size='11'>{escape(label)}</text>"
        )
        parts.append(f"<line x1='{pad_l}' y1='{y}' x2='{width - pad_r}' y2='{y}' stroke='#eee'/>")
        for v, competed in vs:
            ring = best is not None and label == best[0] and v == best[1]
            colour = "#1f6feb" if competed else "#999"
            parts.append(
                f"<circle cx='{px(v)}' cy='{y}' r='{6 if ring else 3}' fill='{'none' if ring else colour}' "
                f"stroke='{'#d1242f' if ring else colour}' stroke-width='2'><title>{escape(label)}: "
                f"{v:.4g}{'' if competed else ' (stopped before its end: not a candidate)'}</title></circle>"
            )
    bottom = pad_t + row_h * len(rows)
    parts.append(
        f"<line x1='{pad_l}' y1='{bottom}' x2='{width - pad_r}' y2='{bottom}' stroke='#555'/>"
        f"<text x='{pad_l}' y='{bottom + 14}' font-size='11'>{x0:.3g}</text>"
        f"<text x='{width - pad_r}' y='{bottom + 14}' text-anchor='end' font-size='11'>{x1:.3g}</text>"
        f"<text x='{(pad_l + width - pad_r) / 2}' y='{bottom + 26}' text-anchor='middle' "
        f"font-size='11'>{escape(x_label)}</text>"
        f"<text x='8' y='{bottom + 40}' font-size='11' fill='#555'>blue: a candidate; grey: stopped "
        "early, scored by its last step, not a candidate; ringed: chosen</text>"
    )
    if reference:
        rx = px(reference[1])
        # The label sits on the side of the line with room for it.
        anchor, tx = ("end", rx - 3) if rx > (pad_l + width) / 2 else ("start", rx + 3)
        parts.append(
            f"<line x1='{rx}' y1='{pad_t - 4}' x2='{rx}' y2='{bottom}' stroke='#888' stroke-dasharray='4 3'/>"
            f"<text x='{tx}' y='{pad_t - 8}' text-anchor='{anchor}' font-size='11' fill='#555'>"
            f"{escape(reference[0])} {reference[1]:.3g}</text>"
        )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
        f"aria-label='{escape(x_label)} per candidate'>{''.join(parts)}</svg>"
    )
