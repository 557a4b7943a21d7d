"""A self-contained HTML report of one segmented case, to check a result at a glance.

One file, no external resources (the overlay montage is embedded as a base64 PNG, no scripts, no
network): it opens in any browser, can be archived beside the labels and attached to an e-mail.
It shows, from the same :class:`~livseg.report.measurements.Measurements` that go to the JSON:

* the input (path, kind, shape, orientation, spacing) and the models used;
* liver volume (ml), tumour volume (ml), tumour burden, lesion count, and the flags a reader must
  not miss: no liver found, incomplete liver coverage, warnings raised while segmenting;
* the lesion list (volume, longest axial diameter, LPS centroid, axial slice);
* the overlay montage (when one was drawn) and the per-stage timings.

Every value coming from the input (paths, warnings, model names) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from livseg.io.atomic import write_text_atomic
from livseg.report.measurements import Measurements

log = logging.getLogger("livseg.report.html")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;
color:#222;max-width:1100px}
h1{font-size:1.4em;margin-bottom:.2em} h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left} th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.flag{background:#fff3cd;border:1px solid #e0b000;padding:.5em .8em;margin:.4em 0}
.bad{background:#f8d7da;border-color:#c0392b}
img{max-width:100%;border:1px solid #ccc} .muted{color:#777;font-size:.9em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _rows(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{_e(k)}</th><td class='num'>{v}</td></tr>" for k, v in pairs)


def _flags(m: Measurements, warnings) -> str:
    """The boxes a reader must not miss: no liver, incomplete coverage, segmentation warnings."""
    flags = []
    if not m.liver_found:
        flags.append(("bad", "No liver was found: the label file is all background."))
    elif m.incomplete_coverage:
        flags.append(
            (
                "",
                "The liver touches the first or last slice of the scan: coverage is "
                "incomplete and the liver volume is a lower bound.",
            )
        )
    flags += [("", w) for w in warnings]
    return "".join(f"<div class='flag {cls}'>{_e(text)}</div>" for cls, text in flags)


def _measurements_table(m: Measurements) -> str:
    burden = None if m.tumour_burden is None else 100.0 * m.tumour_burden
    rows = [
        ("Liver volume (ml)", _num(m.liver_volume_ml, ".1f")),
        ("Tumour volume (ml)", _num(m.tumour_volume_ml, ".2f")),
        ("Tumour burden (% of liver)", _num(burden, ".2f")),
        ("Lesions", str(m.lesion_count)),
    ]
    return f"<h2>Measurements</h2><table>{_rows(rows)}</table>"


def _lesion_table(m: Measurements) -> str:
    """The lesion list ('' when there is no lesion)."""
    if not m.lesions:
        return ""
    parts = [
        "<h2>Lesions</h2><table><tr><th>#</th><th>volume (ml)</th>"
        "<th>longest axial diameter (mm)</th><th>centroid x, y, z (mm, LPS)</th>"
        "<th>axial slice</th></tr>"
    ]
    for les in m.lesions:
        x, y, z = les.centroid_lps_mm
        parts.append(
            f"<tr><td class='num'>{les.lesion}</td>"
            f"<td class='num'>{les.volume_ml:.3f}</td>"
            f"<td class='num'>{les.longest_axial_diameter_mm:.1f}</td>"
            f"<td class='num'>{x:.1f}, {y:.1f}, {z:.1f}</td>"
            f"<td class='num'>{les.axial_slice}</td></tr>"
        )
    parts.append("</table>")
    return "".join(parts)


def _overlay(name: str, overlay_png: bytes | None) -> str:
    """The embedded overlay montage ('' without one)."""
    if not overlay_png:
        return ""
    data = base64.b64encode(overlay_png).decode("ascii")
    return (
        "<h2>Axial slices through the liver</h2><p class='muted'>Radiological "
        "convention (patient's right on the left); the legend is in the picture.</p>"
        f"<img alt='overlay montage of {_e(name)}' src='data:image/png;base64,"
        f"{data}'>"
    )


def _scan_table(m: Measurements, meta: Mapping[str, Any]) -> str:
    sz, sy, sx = m.spacing_mm
    shape = _e(" x ".join(str(v) for v in meta["shape_zyx"])) if "shape_zyx" in meta else "-"
    scan = [
        ("Shape (z, y, x)", shape),
        ("Spacing (mm, z y x)", f"{sz:.3g} x {sy:.3g} x {sx:.3g}"),
        ("Orientation", _e(meta.get("orientation", "-"))),
        ("Input kind", _e(meta.get("input_kind", "-"))),
        ("Liver model", _e(meta.get("liver_model", "-"))),
        ("Tumour model", _e(meta.get("tumour_model") or "none")),
        ("Flip TTA", _e(meta.get("tta", "-"))),
    ]
    return f"<h2>Scan and models</h2><table>{_rows(scan)}</table>"


def _timings_table(timings: Mapping[str, Any]) -> str:
    """Per-stage timings in seconds ('' when none were recorded)."""
    if not timings:
        return ""
    rows = _rows([(k, f"{float(v):.2f}") for k, v in timings.items()])
    return f"<h2>Timings (s)</h2><table>{rows}</table>"


def report_html(
    name: str,
    m: Measurements,
    meta: Mapping[str, Any] | None = None,
    overlay_png: bytes | None = None,
) -> str:
    """The HTML text of one case's report.

    Args:
        name: case name (title).
        m: the case's measurements.
        meta: what ``livseg segment`` records beside them (``input``, ``input_kind``,
            ``shape_zyx``, ``orientation``, ``liver_model``, ``tumour_model``, ``tta``,
            ``warnings``, ``timings_s``, ``outputs``); missing keys are left out.
        overlay_png: the overlay montage as PNG bytes, embedded when given.

    Returns:
        A complete HTML5 document (str).
    """
    from livseg import __version__

    meta = dict(meta or {})
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>livseg: {_e(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>livseg report: {_e(name)}</h1>",
        f"<p class='muted'>{_e(meta.get('input', ''))}</p>",
        _flags(m, meta.get("warnings", [])),
        _measurements_table(m),
        _lesion_table(m),
        _overlay(name, overlay_png),
        _scan_table(m, meta),
        _timings_table(meta.get("timings_s") or {}),
        f"<p class='muted'>livseg {_e(__version__)}. Research use only; not a medical "
        "device. Check every result before using it.</p></body></html>\n",
    ]
    return "".join(parts)


def write_html_report(
    path: str | Path,
    name: str,
    m: Measurements,
    meta: Mapping[str, Any] | None = None,
    overlay_png: str | Path | bytes | None = None,
    overwrite: bool = False,
) -> Path:
    """Write :func:`report_html` to ``path`` atomically.

    Args:
        path: output ``.html`` file.
        name: case name.
        m: measurements.
        meta: see :func:`report_html`.
        overlay_png: PNG bytes or the path of the PNG to embed; None for no picture.
        overwrite: replace an existing file.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    if overlay_png is not None and not isinstance(overlay_png, bytes):
        overlay_png = Path(overlay_png).read_bytes()
    return write_text_atomic(path, report_html(name, m, meta, overlay_png), overwrite)
