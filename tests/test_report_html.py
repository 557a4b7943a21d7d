"""The per-case HTML report: values from the measurements, flags, escaping, no clobbering."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from livseg.errors import OutputExistsError
from livseg.report.html import report_html, write_html_report
from livseg.report.measurements import measure
from livseg.volume import Volume


def _labels(liver_touches_edge: bool = False) -> Volume:
    lab = np.zeros((6, 20, 20), dtype=np.uint8)
    lab[1:5, 4:16, 4:16] = 1
    lab[2:4, 6:9, 6:9] = 2  # lesion 1: 18 voxels
    lab[3, 12:14, 12:14] = 2  # lesion 2: 4 voxels
    if liver_touches_edge:
        lab[0, 8:10, 8:10] = 1
    return Volume(lab, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), "label")


def test_report_shows_measurements_lesions_and_picture():
    m = measure(_labels(), min_lesion_ml=0.0)  # list every component: lesion 2 is 0.008 ml
    png = b"\x89PNG\r\n\x1a\nfake"
    page = report_html(
        "case <1>",
        m,
        {
            "input": "/data/a&b.nii.gz",
            "shape_zyx": [6, 20, 20],
            "liver_model": "crunet_liver",
            "tta": False,
            "warnings": ["<script>x</script>"],
            "timings_s": {"liver": 1.5},
        },
        png,
    )
    # liver 4 x 12 x 12 voxels of 2 mm^3 = 1.152 ml; tumour 22 voxels = 0.044 ml
    assert "<td class='num'>1.2</td>" in page and "<td class='num'>0.04</td>" in page
    assert m.lesion_count == 2 and page.count("<tr><td class='num'>") == 2
    # burden 22 / 576 = 3.82 %
    assert "3.82" in page
    assert base64.b64encode(png).decode() in page
    # input-derived text is escaped, never live markup
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "case &lt;1&gt;" in page and "a&amp;b" in page
    assert not re.search(r"(src|href)=['\"]https?:", page)  # self-contained


def test_report_flags_missing_liver_and_incomplete_coverage():
    empty = measure(
        Volume(np.zeros((3, 8, 8), np.uint8), (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3), "label")
    )
    assert "No liver was found" in report_html("e", empty)
    edge = measure(_labels(liver_touches_edge=True))
    assert edge.incomplete_coverage
    assert "coverage is incomplete" in report_html("c", edge)
    assert "coverage is incomplete" not in report_html("c", measure(_labels()))


def test_write_refuses_to_overwrite(tmp_path):
    m = measure(_labels())
    path = write_html_report(tmp_path / "r.html", "r", m)
    assert path.read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(OutputExistsError):
        write_html_report(path, "r", m)
    write_html_report(path, "r2", m, overwrite=True)
    assert "livseg report: r2" in path.read_text()
