"""Run reports: the report.json contract, comparison image grids and the self-contained HTML page.

Plain numpy / PIL only, so the report can be written (and re-rendered) anywhere, without Ray or
MLflow installed.
"""

from __future__ import annotations

from lethe.report.grids import GUTTER, HEADER_H, grid_size, image_grid, mask_overlay
from lethe.report.html import IDS_NOTICE, format_number, write_html_report
from lethe.report.schema import (
    DISTANCE_NAMES,
    FEATURE_METRICS,
    FEATURE_SPLIT,
    MODELS,
    REQUEST_KINDS,
    REQUIRED_METRICS,
    SPLITS,
    distance_to_oracle,
    oracle_gaps,
    validate_report,
    write_report_json,
)

__all__ = [
    "DISTANCE_NAMES",
    "FEATURE_METRICS",
    "FEATURE_SPLIT",
    "distance_to_oracle",
    "GUTTER",
    "HEADER_H",
    "IDS_NOTICE",
    "MODELS",
    "REQUEST_KINDS",
    "REQUIRED_METRICS",
    "SPLITS",
    "format_number",
    "grid_size",
    "image_grid",
    "mask_overlay",
    "oracle_gaps",
    "validate_report",
    "write_html_report",
    "write_report_json",
]
