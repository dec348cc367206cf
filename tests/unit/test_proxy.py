"""A proxy retain set: another data set's images stand in for the retain side of the unlearning loss,
and every place a person reads (report, terminal, HTML, certificate) says so."""

from __future__ import annotations

import numpy as np
import pytest
from test_report import _report
from test_report_summary import _report as _summary_report

from lethe.certificate import build_certificate, render_html
from lethe.data.loaders import open_source
from lethe.data.proxy import proxy_images
from lethe.errors import DataError
from lethe.report import validate_report, write_html_report
from lethe.report.summary import summary_lines

PROXY = {"dataset": "mnist-5k", "images": 1536}


def test_the_proxy_images_are_the_first_rows_of_the_other_data_set() -> None:
    images, name = proxy_images("digits", (8, 8, 1), 100)
    assert name == "digits" and images.shape == (100, 8, 8, 1) and images.dtype == np.uint8
    assert np.array_equal(images, open_source("digits").state["images"][:100])
    # a limit above the data set's size gives what there is
    assert len(proxy_images("digits", (8, 8, 1), 10**6)[0]) == 1797


def test_a_proxy_of_another_image_shape_is_refused_in_one_line() -> None:
    with pytest.raises(DataError) as e:
        proxy_images("digits", (28, 28, 1), 10)
    line = e.value.line()
    assert "proxy retain images differ in shape" in line and "expected 28x28x1 images" in line
    assert "got 8x8x1" in line and "\n" not in line


def test_the_report_terminal_html_and_certificate_say_a_proxy_was_used(tmp_path) -> None:
    rep = _report()
    rep["unlearn"] = {**rep.get("unlearn", {}), "proxy_retain": PROXY}
    validate_report(rep)
    page = write_html_report(rep, {}, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "1536 images of mnist-5k" in page
    lines = summary_lines(_summary_report(unlearn={"proxy_retain": PROXY}))
    assert (
        "proxy retain: the unlearning loss's retain side was 1536 images of mnist-5k, not the training data"
        in ("\n".join(lines))
    )
    assert not any(line.startswith("proxy retain") for line in summary_lines(_summary_report()))
    for bad in ({"dataset": "x", "images": 0}, {"images": 3}):
        rep["unlearn"]["proxy_retain"] = bad
        with pytest.raises(ValueError, match="unlearn.proxy_retain"):
            validate_report(rep)
    rep["unlearn"]["proxy_retain"] = PROXY
    cert = build_certificate(rep, {}, hyperparameters={}, tracking={}, orchestrator="lethe run")
    assert cert["method"]["proxy_retain"] == PROXY
    assert "1536 images of mnist-5k stood in for the retain data" in render_html(cert)
