"""lethe.report: the report.json contract, the image grids and the HTML page."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from lethe.report import (
    GUTTER,
    HEADER_H,
    IDS_NOTICE,
    MODELS,
    REQUIRED_METRICS,
    SPLITS,
    format_number,
    grid_size,
    image_grid,
    mask_overlay,
    oracle_gaps,
    validate_report,
    write_html_report,
    write_report_json,
)


def _report(kind: str = "classes") -> dict[str, Any]:
    # Distinct values per cell so the HTML test can find each number.
    metrics: dict[str, Any] = {}
    for mi, model in enumerate(MODELS):
        metrics[model] = {}
        for si, split in enumerate(SPLITS):
            metrics[model][split] = {
                name: round(1.0 + mi + 0.1 * si + 0.01 * ni + 0.0003, 4)
                for ni, name in enumerate(REQUIRED_METRICS[split])
            }
    return {
        "run_id": "run-123",
        "dataset": "fashion-mnist",
        "family": "mae",
        "method": "encoder_noise",
        "request": {
            "kind": kind,
            "forget_count": 6000,
            "retain_count": 54000,
            "forget_digest": "sha256:0123456789abcdef0123456789abcdef",
        },
        "metrics": metrics,
        "timing_s": {"split": 1.5, "pretrain": 30.25, "unlearn": 4.0, "oracle": 29.0, "evaluate": 2.0},
        "mlflow": {
            "tracking_uri": "http://mlflow.local:5000",
            "run_id": "abc123",
            "model_name": "lethe-mae",
            "model_version": None,
        },
    }


def _required_paths() -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = [("run_id",), ("dataset",), ("family",), ("method",), ("request",)]
    paths += [("request", k) for k in ("kind", "forget_count", "retain_count", "forget_digest")]
    paths += [("metrics",)] + [("metrics", m) for m in MODELS]
    paths += [("metrics", m, s) for m in MODELS for s in SPLITS]
    paths += [("metrics", m, s, n) for m in MODELS for s in SPLITS for n in REQUIRED_METRICS[s]]
    paths += [("timing_s",), ("mlflow",)]
    paths += [("mlflow", k) for k in ("tracking_uri", "run_id", "model_name", "model_version")]
    return paths


# --- schema -------------------------------------------------------------------------------------


def test_valid_report_passes() -> None:
    validate_report(_report())
    validate_report(_report("ids"))


@pytest.mark.parametrize("path", _required_paths(), ids=lambda p: ".".join(p))
def test_validate_report_names_missing_key(path: tuple[str, ...]) -> None:
    rep = _report()
    parent: Any = rep
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    with pytest.raises(ValueError) as err:
        validate_report(rep)
    msg = str(err.value)
    assert msg == "report." + ".".join(path) + ": missing"
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("mutate", "key_path"),
    [
        (lambda r: r["request"].__setitem__("forget_count", "6000"), "report.request.forget_count"),
        (lambda r: r["request"].__setitem__("retain_count", True), "report.request.retain_count"),
        (lambda r: r["request"].__setitem__("kind", "everything"), "report.request.kind"),
        (lambda r: r.__setitem__("run_id", 7), "report.run_id"),
        (
            lambda r: r["metrics"]["oracle"]["forget"].__setitem__("fd", float("nan")),
            "report.metrics.oracle.forget.fd",
        ),
        (
            lambda r: r["metrics"]["unlearned"]["retain"].__setitem__("psnr", "high"),
            "report.metrics.unlearned.retain.psnr",
        ),
        (lambda r: r["metrics"].__setitem__("original", []), "report.metrics.original"),
        (lambda r: r["timing_s"].__setitem__("unlearn", "slow"), "report.timing_s.unlearn"),
        (lambda r: r["mlflow"].__setitem__("tracking_uri", None), "report.mlflow.tracking_uri"),
        (lambda r: r["mlflow"].__setitem__("model_name", None), "report.mlflow.model_name"),
    ],
)
def test_validate_report_rejects_invalid_values(mutate: Any, key_path: str) -> None:
    rep = _report()
    mutate(rep)
    with pytest.raises(ValueError, match=f"^{key_path.replace('.', '[.]')}: "):
        validate_report(rep)


def test_validate_report_accepts_numpy_numbers_and_model_version() -> None:
    rep = _report()
    rep["metrics"]["oracle"]["retain"]["psnr"] = np.float32(21.5)
    rep["request"]["forget_count"] = np.int64(3)
    rep["mlflow"]["model_version"] = "4"
    validate_report(rep)


def test_validate_report_checks_the_digest_key_id() -> None:
    rep = _report()
    validate_report(rep)  # a report from before keyed digests names no key
    rep["request"].update(digest_algorithm="hmac-sha256", digest_key_id="0123456789abcdef")
    validate_report(rep)
    for algo, kid, bad in [
        ("hmac-sha256", None, "digest_key_id"),
        ("hmac-sha256", "0123", "digest_key_id"),
        ("hmac-sha256", "0123456789ABCDEF", "digest_key_id"),
        ("sha256", "0123456789abcdef", "digest_key_id"),
        (None, "0123456789abcdef", "digest_algorithm"),
        ("md5", None, "digest_algorithm"),
    ]:
        rep["request"].update(digest_algorithm=algo, digest_key_id=kid)
        with pytest.raises(ValueError, match=rf"^report\.request\.{bad}: "):
            validate_report(rep)
    rep["request"].update(digest_algorithm="sha256", digest_key_id=None)
    validate_report(rep)


@pytest.mark.parametrize(
    ("where", "key"),
    [
        (("request",), "ids"),
        ((), "forget_ids"),
        (("metrics", "unlearned"), "ids"),
    ],
)
def test_validate_report_rejects_id_keys(where: tuple[str, ...], key: str) -> None:
    rep = _report()
    parent: Any = rep
    for k in where:
        parent = parent[k]
    parent[key] = [1, 2, 3]
    with pytest.raises(ValueError, match="forbidden") as err:
        validate_report(rep)
    assert str(err.value).startswith(".".join(("report", *where, key)) + ":")


def test_validate_report_rejects_ids_nested_in_lists() -> None:
    rep = _report()
    rep["extra"] = {"masks": [{"name": "box"}, {"forget_ids": [4]}]}
    with pytest.raises(ValueError, match=r"^report\.extra\.masks\[1\]\.forget_ids: forbidden"):
        validate_report(rep)


def test_oracle_gaps_diff_and_fd_ratio() -> None:
    metrics = {
        "original": {"forget": {"fd": 2.0, "psnr": 30.0}, "retain": {"fd": 1.0}},
        "unlearned": {"forget": {"fd": 6.0, "psnr": 20.0}, "retain": {"fd": 0.5}},
        "oracle": {"forget": {"fd": 4.0, "psnr": 21.0}, "retain": {"fd": 0.0}},
    }
    gaps = oracle_gaps(metrics)
    assert gaps["unlearned"]["forget"]["fd"] == {"diff": 2.0, "ratio": 1.5}
    assert gaps["original"]["forget"]["fd"] == {"diff": -2.0, "ratio": 0.5}
    assert gaps["unlearned"]["forget"]["psnr"] == {"diff": -1.0, "ratio": None}
    assert gaps["original"]["retain"]["fd"] == {"diff": 1.0, "ratio": None}  # oracle 0: no ratio


def test_write_report_json_roundtrip(tmp_path: Path) -> None:
    rep = _report()
    rep["metrics"]["unlearned"]["forget"]["mia_auc"] = np.float64(0.51)
    out = write_report_json(rep, tmp_path / "sub" / "report.json")
    text = out.read_text()
    loaded = json.loads(text)
    assert loaded["metrics"]["unlearned"]["forget"]["mia_auc"] == pytest.approx(0.51)
    assert loaded["request"] == rep["request"]
    assert text == json.dumps(loaded, indent=2, sort_keys=True) + "\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.json"]  # no temp files left


def test_write_report_json_refuses_invalid_report(tmp_path: Path) -> None:
    rep = _report()
    rep["request"]["ids"] = [1]
    with pytest.raises(ValueError, match="report.request.ids"):
        write_report_json(rep, tmp_path / "report.json")
    assert not (tmp_path / "report.json").exists()
    rep = _report()
    rep["extra"] = {"other_mask": {"psnr": float("inf")}}
    with pytest.raises(ValueError, match=r"report\.extra\.other_mask\.psnr"):
        write_report_json(rep, tmp_path / "report.json")


# --- grids --------------------------------------------------------------------------------------


def test_image_grid_size_and_pixels(tmp_path: Path) -> None:
    n, h, w, scale = 4, 28, 28, 3
    black = np.zeros((n, 1, h, w), dtype=np.float32)
    white_rgb = np.ones((n, 3, h, w), dtype=np.float32)
    red = np.zeros((n, 3, h, w), dtype=np.float32)
    red[:, 0] = 1.0
    out = image_grid(
        [("masked input", black), ("original", white_rgb), ("a very long column title indeed", red)],
        tmp_path / "grid.png",
        scale=scale,
    )
    img = Image.open(out).convert("RGB")
    # Layout: 2 px gutter left of every column and at the right edge; a header band, then each row
    # followed by a 2 px gutter.
    expected_w = 2 + 3 * (w * scale + 2)
    expected_h = HEADER_H + n * (h * scale + 2)
    assert GUTTER == 2
    assert img.size == (expected_w, expected_h) == grid_size(n, 3, h, w, scale)
    cell = w * scale + GUTTER
    # First pixel of row 0 col 0 is black; col 2 row 3 is red; the gutter beside it is white.
    assert img.getpixel((GUTTER, HEADER_H)) == (0, 0, 0)
    assert img.getpixel((GUTTER + 2 * cell, HEADER_H + 3 * (h * scale + GUTTER))) == (255, 0, 0)
    assert img.getpixel((GUTTER + w * scale, HEADER_H + 5)) == (255, 255, 255)
    # The header holds some dark title text.
    header = np.asarray(img.crop((0, 0, expected_w, HEADER_H)))
    assert header.min() < 128


def test_image_grid_rejects_mismatched_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected N,H,W"):
        image_grid([("a", np.zeros((2, 1, 8, 8))), ("b", np.zeros((3, 1, 8, 8)))], tmp_path / "g.png")
    with pytest.raises(ValueError, match="C in 1/3"):
        image_grid([("a", np.zeros((2, 2, 8, 8)))], tmp_path / "g.png")


def test_mask_overlay_paints_hidden_region_grey() -> None:
    images = np.ones((2, 3, 6, 6), dtype=np.float32)
    mask = np.zeros((2, 1, 6, 6), dtype=np.float32)
    mask[:, :, 1:3, 1:3] = 1.0
    out = mask_overlay(images, mask)
    assert out.shape == images.shape
    np.testing.assert_allclose(out[:, :, 1:3, 1:3], 0.5)
    assert out[:, :, 4:, 4:].min() == 1.0
    assert images.min() == 1.0  # input untouched


# --- HTML ---------------------------------------------------------------------------------------


def _grid(tmp_path: Path, name: str) -> Path:
    return image_grid([("x", np.full((2, 1, 8, 8), 0.3))], tmp_path / f"{name}.png", scale=1)


def test_html_report_has_numbers_grids_and_timing(tmp_path: Path) -> None:
    rep = _report()
    rep["dataset"] = "<script>alert(1)</script>"
    grids = {"retain_box": _grid(tmp_path, "retain"), "forget_box": _grid(tmp_path, "forget")}
    out = write_html_report(rep, grids, tmp_path / "report.html", extra_sections=[("Notes", "a < b")])
    page = out.read_text(encoding="utf-8")
    for model in MODELS:
        for split in SPLITS:
            for value in rep["metrics"][model][split].values():
                assert format_number(value) in page
    assert (
        format_number(rep["metrics"]["unlearned"]["forget"]["fd"] - rep["metrics"]["oracle"]["forget"]["fd"])
        in page
    )
    assert page.count("data:image/png;base64,") == 2
    assert "grid-forget_box" in page and "grid-retain_box" in page
    for step in rep["timing_s"]:
        assert f"<td class='name'>{step}</td>" in page
    assert "FD unlearned / original" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "a &lt; b" in page
    # Digest is shortened; the MLflow run is linked.
    assert "sha256:0123456789ab..." in page and rep["request"]["forget_digest"] not in page
    assert "http://mlflow.local:5000/#/runs/abc123" in page


def test_html_report_never_shows_forget_grid_for_id_requests(tmp_path: Path) -> None:
    rep = _report("ids")
    grids = {"retain_box": _grid(tmp_path, "retain"), "forget_box": _grid(tmp_path, "forget")}
    page = write_html_report(rep, grids, tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 1
    assert "grid-forget_box" not in page and "grid-retain_box" in page
    assert IDS_NOTICE in page


def test_html_report_refuses_ids_keys(tmp_path: Path) -> None:
    rep = copy.deepcopy(_report("ids"))
    rep["request"]["forget_ids"] = [1, 2]
    with pytest.raises(ValueError, match="forbidden"):
        write_html_report(rep, {}, tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()


def test_html_report_shows_distance_to_oracle_and_the_decoupling(tmp_path: Path) -> None:
    from lethe.report import distance_to_oracle

    rep = _report()
    rep["decouple"] = {
        "lambda": 0.0599,
        "lambda_rule": "lambda = 1 x mean of the original model's per-image masked MSE",
        "ascent_steps": 4,
        "lambda_reached": True,
        "final_distance": 0.071,
        "retain_steps": 141,
    }
    page = write_html_report(rep, {}, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Distance to the oracle" in page and "fd_rel" in page
    fd_rel = distance_to_oracle(rep["metrics"])["unlearned"]["fd_rel"]
    assert format_number(fd_rel) in page
    assert "Decoupling + knowledge retention" in page and "lambda reached" in page
    assert "Decoupling" not in write_html_report(_report(), {}, tmp_path / "plain.html").read_text("utf-8")


def _no_oracle_report() -> dict[str, Any]:
    rep = _report("ids")
    del rep["metrics"]["oracle"]
    for model in rep["metrics"].values():
        del model["forget"]["mia_auc"]
    rep["oracle"] = {"policy": "sample", "audited": False, "reason": "not audited: not drawn (0.8 >= 0.25)"}
    return rep


def test_a_run_without_an_oracle_says_so_and_carries_no_oracle_figures(tmp_path: Path) -> None:
    validate_report(_no_oracle_report())
    # Audited (or a report from before the policy): the oracle's figures and the attack's are required.
    for record in ({"policy": "reuse", "audited": True}, None):
        rep = _no_oracle_report()
        rep.pop("oracle") if record is None else rep.update(oracle=record)
        with pytest.raises(ValueError, match=r"report.metrics.original.forget.mia_auc: missing"):
            validate_report(rep)
    rep = _no_oracle_report()
    rep["metrics"]["oracle"] = copy.deepcopy(rep["metrics"]["original"])
    with pytest.raises(
        ValueError, match=r"report.metrics.oracle: present, but report.oracle.audited is false"
    ):
        validate_report(rep)
    rep = _no_oracle_report()
    rep["oracle"]["audited"] = "no"
    with pytest.raises(ValueError, match=r"report.oracle.audited: expected true or false"):
        validate_report(rep)
    page = write_html_report(_no_oracle_report(), {}, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "No oracle in this run</strong>: not audited: not drawn (0.8 &gt;= 0.25)" in page


def _kept_best() -> dict[str, Any]:
    history = [{"step": s, "objective": o} for s, o in ((10, 0.5), (20, 0.125), (30, 0.75))]
    return {"kept": "best", "step": 20, "last_step": 30, "objective": 0.125, "last_objective": 0.75,
            "history": history, "source_objective": 1.5}  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda c: c.update(kept="first"), "report.unlearn.checkpoint.kept: expected 'best' or 'last'"),
        (lambda c: c.update(step=2.5), "report.unlearn.checkpoint.step: expected an integer step"),
        (lambda c: c.update(history=[]), "report.unlearn.checkpoint.history: expected a non-empty list"),
        (
            lambda c: c["history"][1].pop("objective"),
            "report.unlearn.checkpoint.history[1].objective: missing",
        ),
        (lambda c: c.update(objective=float("nan")), "report.unlearn.checkpoint.objective"),
    ],
)
def test_validate_report_checks_the_kept_checkpoint(mutate: Any, needle: str) -> None:
    rep = _report()
    rep["unlearn"] = {"checkpoint": _kept_best()}
    validate_report(rep)
    mutate(rep["unlearn"]["checkpoint"])
    with pytest.raises(ValueError, match=re.escape(needle)):
        validate_report(rep)
    rep["unlearn"] = {"checkpoint": {"kept": "last"}}
    with pytest.raises(ValueError, match=re.escape("report.unlearn.checkpoint.reason: missing")):
        validate_report(rep)


def test_html_report_pictures_the_objective_of_every_scored_step(tmp_path: Path) -> None:
    rep = _report()
    rep["unlearn"] = {"checkpoint": _kept_best()}
    page = write_html_report(rep, {}, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<h2>Unlearning checkpoint</h2>" in page and "kept step <strong>20</strong> of 30" in page
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert svg.count("<circle") == 3
    # the kept step is the ringed one, drawn at the lowest point of the line
    ringed = [c for c in svg.split("<circle")[1:] if "fill='none'" in c]
    assert len(ringed) == 1 and "step 20: 0.125" in ringed[0]
    ys = {
        c.split("<title>")[1].split(":")[0]: float(c.split("cy='")[1].split("'")[0])
        for c in svg.split("<circle")[1:]
    }
    assert ys["step 20"] > ys["step 10"] > ys["step 30"]  # SVG y grows downwards: lower is better
    # doing nothing, for scale: a dashed level above every scored step
    level = svg[svg.index("stroke-dasharray") :]
    assert "untouched source 1.5" in level and "the untouched source's 1.5" in page
    assert float(svg.split("stroke-dasharray")[0].rsplit("y1='", 1)[1].split("'")[0]) < ys["step 30"]
    rep["unlearn"] = {"checkpoint": {"kept": "last", "reason": "an id request has no held-out forget images"}}
    page = write_html_report(rep, {}, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "The last step's model was kept: an id request" in page and "<svg" not in page
