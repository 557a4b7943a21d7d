"""A self-contained HTML report of one segmented case, to check a result at a glance.

One file, no external resources (the overlay montage is embedded as a base64 PNG, no scripts, no
network): it opens in any browser, can be archived beside the labels and attached to an e-mail.
It shows, from the same :class:`~livseg.report.measurements.Measurements` that go to the JSON:

* the input (path, kind, shape and spacing in (x, y, z) order as ``livseg info`` shows them,
  orientation, DICOM series UID) and the models used;
* liver volume (ml), tumour volume (ml), tumour burden, lesion count (and the tumour components
  below the lesion minimum size, not listed), and the flags a reader must not miss: no liver
  found, incomplete liver coverage, every warning raised while reading and segmenting;
* the LiTS scores against reference labels, when the case was segmented with ``--ref``;
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
    """The boxes a reader must not miss: no liver, incomplete coverage, and every warning
    recorded while reading and segmenting (a flag already said by a warning is not repeated)."""
    said = " ".join(warnings).lower()
    flags = []
    if not m.liver_found:
        flags.append(("bad", "No liver was found: the label file is all background."))
    elif m.incomplete_coverage and "coverage is incomplete" not in said:
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
    note = (
        f"<p class='muted'>Lesions are tumour components of at least "
        f"{m.lesion_min_volume_ml:g} ml. {m.small_tumour_components} smaller component(s) "
        f"({m.small_tumour_components_ml:.3f} ml) are not listed; they stay in the label file "
        "and in the tumour volume.</p>"
        if m.small_tumour_components
        else f"<p class='muted'>Lesions are tumour components of at least "
        f"{m.lesion_min_volume_ml:g} ml.</p>"
    )
    return f"<h2>Measurements</h2><table>{_rows(rows)}</table>{note}"


_SCORE_ROWS = (
    ("Liver Dice", "liver_dice", ".3f"),
    ("Liver VOE", "liver_voe", ".3f"),
    ("Liver RVD", "liver_rvd", ".3f"),
    ("Liver ASSD (mm)", "liver_assd", ".2f"),
    ("Liver MSD (mm)", "liver_msd", ".2f"),
    ("Tumour Dice", "tumor_dice", ".3f"),
    ("Lesions reference / predicted", None, None),
    ("Lesions detected (TP / FP / FN, IoU > 0.5)", None, None),
)


def _scores_table(scores: Mapping[str, Any] | None) -> str:
    """The LiTS scores against the reference labels ('' without a reference)."""
    if not scores:
        return ""
    rows = [(label, _num(scores.get(key), fmt)) for label, key, fmt in _SCORE_ROWS if key]
    rows.append(
        (_SCORE_ROWS[6][0], f"{scores.get('lesions_ref', '-')} / {scores.get('lesions_pred', '-')}")
    )
    rows.append(
        (
            _SCORE_ROWS[7][0],
            f"{scores.get('lesion_tp', '-')} / {scores.get('lesion_fp', '-')} / "
            f"{scores.get('lesion_fn', '-')}",
        )
    )
    return (
        "<h2>Scores against the reference labels (LiTS)</h2>"
        f"<table>{_rows(rows)}</table><p class='muted'>All scores of the case are in the "
        "measurements JSON (<code>extra.scores</code>).</p>"
    )


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
    """Input and models; shape and spacing in (x, y, z) order, as ``livseg info`` shows them."""
    sz, sy, sx = m.spacing_mm
    shape = _e(" x ".join(str(v) for v in meta["shape_zyx"][::-1])) if "shape_zyx" in meta else "-"
    scan = [
        ("Shape (x, y, z)", shape),
        ("Spacing (mm, x y z)", f"{sx:.3g} x {sy:.3g} x {sz:.3g}"),
        ("Orientation", _e(meta.get("orientation", "-"))),
        ("Input kind", _e(meta.get("input_kind", "-"))),
        ("Liver model", _e(meta.get("liver_model", "-"))),
        ("Tumour model", _e(meta.get("tumour_model") or "none")),
        ("Flip TTA", _e(meta.get("tta", "-"))),
    ]
    if meta.get("series_uid"):
        scan.insert(4, ("DICOM series UID", _e(meta["series_uid"])))
        if meta.get("series_description"):
            scan.insert(5, ("Series description", _e(meta["series_description"])))
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
            ``shape_zyx``, ``orientation``, ``series_uid``, ``series_description``,
            ``liver_model``, ``tumour_model``, ``tta``, ``warnings``, ``scores``,
            ``timings_s``, ``outputs``); missing keys are left out.
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
        _scores_table(meta.get("scores")),
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
