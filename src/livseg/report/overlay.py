"""Overlay montage: axial CT slices through the liver with liver/tumour contours (PNG).

Slices are drawn in the **radiological convention** (anterior at the top, the patient's left on
the image's right) whatever the input orientation: volumes are viewed in livseg's canonical
"LPS" layout (:mod:`livseg.preprocess.orientation`), in which ``array[k]`` shown with row 0 at
the top is exactly that view. The CT is shown with a soft-tissue window (W 400 / L 40 HU by
default), the pixel aspect follows the in-plane spacing, and each panel is labelled with its
slice index in the *input* array and its S-I position in mm. The panels are cropped to the liver
(prediction and reference) with a margin; predicted contours are solid and thick (liver green,
tumour red), reference contours dashed (liver blue, tumour yellow).

Matplotlib is imported lazily and only its Agg canvas is used (no global backend change).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livseg.errors import InputError
from livseg.io.atomic import atomic_path
from livseg.preprocess.bbox import bounding_box
from livseg.preprocess.orientation import canonical_view
from livseg.volume import Volume

log = logging.getLogger("livseg.report.overlay")

SOFT_TISSUE_WINDOW: tuple[float, float] = (-160.0, 240.0)
"""(lo, hi) HU display window: width 400, level 40."""

COLOURS = {"liver": "#33dd33", "tumour": "#ff2a2a", "ref_liver": "#3cb4ff", "ref_tumour": "#ffd400"}
"""Contour colours: prediction green/red (solid), reference blue/yellow (dashed)."""

PRED_WIDTH = 2.0
"""Line width of predicted contours (points)."""

REF_WIDTH = 1.6
"""Line width of reference contours (points, dashed)."""

CROP_MARGIN_MM = 25.0
"""Margin (mm) kept around the liver when the panels are cropped to it."""

PANEL_WIDTH_IN = 3.2
"""Width of one panel (inches); a single panel is drawn twice as wide."""

MIN_FIGURE_WIDTH_IN = 5.0
"""The figure is at least this wide (inches), so that the title and legend fit."""


def choose_slices(liver: np.ndarray, n_slices: int) -> list[int]:
    """Up to ``n_slices`` canonical slice indices spread evenly over the liver's S-I extent.

    Args:
        liver: (Z, Y, X) binary mask in canonical layout (may be empty: then the slices are
            spread over the middle half of the scan).
        n_slices: maximum number of panels (>= 1).

    Returns:
        Sorted from superior to inferior (descending canonical z), without duplicates.
    """
    z = liver.shape[0]
    box = bounding_box(liver)
    lo, hi = (box[0].start, box[0].stop - 1) if box else (z // 4, max(z // 4, 3 * z // 4 - 1))
    picks = np.unique(np.round(np.linspace(lo, hi, num=max(1, n_slices))).astype(int))
    return sorted((int(p) for p in picks), reverse=True)


@dataclass(frozen=True)
class _Layout:
    """Figure geometry in inches: a header band (title, legend) above a grid of panels."""

    ncol: int
    nrow: int
    panel_w: float
    panel_h: float
    header_h: float
    pad: float = 0.06

    @property
    def size(self) -> tuple[float, float]:
        width = max(self.ncol * (self.panel_w + self.pad) + self.pad, MIN_FIGURE_WIDTH_IN)
        return width, self.header_h + self.nrow * (self.panel_h + self.pad) + self.pad

    def panel_rect(self, n: int) -> list[float]:
        """[left, bottom, width, height] of panel ``n`` as figure fractions."""
        fw, fh = self.size
        row, col = divmod(n, self.ncol)
        x0 = (fw - self.ncol * (self.panel_w + self.pad) + self.pad) / 2
        left = x0 + col * (self.panel_w + self.pad)
        top = fh - self.header_h - row * (self.panel_h + self.pad)
        return [left / fw, (top - self.panel_h) / fh, self.panel_w / fw, self.panel_h / fh]


def _crop_box(masks: list[np.ndarray], shape: tuple[int, int], margin_px: tuple[int, int]):
    """In-plane (rows, cols) slices covering every mask of the whole volume plus a margin; the
    whole slice when all masks are empty."""
    union = np.zeros(shape, bool)
    for m in masks:
        union |= m.any(axis=0)
    box = bounding_box(union)
    if box is None:
        return slice(0, shape[0]), slice(0, shape[1])
    (r, c), (mr, mc) = box, margin_px
    return (
        slice(max(0, r.start - mr), min(shape[0], r.stop + mr)),
        slice(max(0, c.start - mc), min(shape[1], c.stop + mc)),
    )


def _legend_handles(with_reference: bool) -> list:
    from matplotlib.lines import Line2D

    def line(colour: str, style: str, width: float, label: str):
        return Line2D([], [], color=colour, linestyle=style, linewidth=width, label=label)

    handles = [
        line(COLOURS["liver"], "solid", PRED_WIDTH, "liver"),
        line(COLOURS["tumour"], "solid", PRED_WIDTH, "tumour"),
    ]
    if with_reference:
        handles += [
            line(COLOURS["ref_liver"], (0, (3, 2)), REF_WIDTH, "reference liver"),
            line(COLOURS["ref_tumour"], (0, (3, 2)), REF_WIDTH, "reference tumour"),
        ]
    return handles


def _draw_header(fig, layout: _Layout, title: str | None, with_reference: bool) -> None:
    """Title on the first line of the header band, the legend (line samples) below it."""
    fw, fh = layout.size
    y = 1.0 - 0.08 / fh
    if title:
        fig.text(0.5, y, title, color="white", fontsize=10, ha="center", va="top")
        y -= 0.3 / fh
    handles = _legend_handles(with_reference)
    legend = fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, y),
        ncol=len(handles) if fw >= 7 else 2,
        frameon=False,
        fontsize=8,
        labelcolor="white",
        handlelength=2.6,
        columnspacing=1.4,
        borderaxespad=0.0,
    )
    legend.set_in_layout(False)


def _label_panel(ax, text: str) -> None:
    """Slice label in the panel's top-left corner and R/L markers, on dark boxes."""
    box = {"facecolor": "black", "alpha": 0.6, "edgecolor": "none", "pad": 1.5}
    ax.text(
        0.02,
        0.98,
        text,
        color="white",
        fontsize=7,
        transform=ax.transAxes,
        ha="left",
        va="top",
        bbox=box,
    )
    for x, side, ha in ((0.02, "R", "left"), (0.98, "L", "right")):
        ax.text(
            x,
            0.5,
            side,
            color="yellow",
            fontsize=7,
            transform=ax.transAxes,
            ha=ha,
            va="center",
            bbox=box,
        )


def write_overlay(
    image: Volume,
    labels: Volume,
    path: str | Path,
    *,
    reference: Volume | None = None,
    n_slices: int = 12,
    columns: int = 4,
    window: tuple[float, float] = SOFT_TISSUE_WINDOW,
    title: str | None = None,
    overwrite: bool = False,
    dpi: int = 100,
) -> Path:
    """Write a PNG montage of axial slices through the liver with contours.

    The panels are cropped (all to the same box) to the liver of the labels and the reference
    plus :data:`CROP_MARGIN_MM`; predicted contours are solid and thick, reference contours
    dashed in other colours. The title and the legend sit in a band above the panels, each
    panel's slice label inside its top-left corner: nothing overlaps, even with one panel.

    Args:
        image: CT image Volume (HU).
        labels: predicted label Volume (0/1/2), same geometry as ``image``.
        path: output ``.png`` path.
        reference: optional reference label Volume (same geometry); drawn dashed.
        n_slices: maximum number of panels.
        columns: panels per row.
        window: (lo, hi) HU display window.
        title: figure title.
        overwrite: replace an existing file.
        dpi: output resolution.

    Returns:
        The written path.

    Raises:
        InputError: ``labels``/``reference`` geometry differs from ``image``.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    for name, other in (("labels", labels), ("reference", reference)):
        if other is not None:
            why = image.geometry_mismatch(other)
            if why:
                raise InputError(
                    f"{path}: cannot draw overlay, {name} geometry differs from the image ({why})"
                )
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    img, reo = canonical_view(image)
    lab, _ = canonical_view(labels)
    ref = canonical_view(reference)[0] if reference is not None else None
    (sp_z, sp_y, sp_x), origin = reo.canonical_geometry()[:2]
    livers = [lab >= 1] + ([ref >= 1] if ref is not None else [])
    picks = choose_slices(livers[0] if livers[0].any() else livers[-1], n_slices)
    margin = (round(CROP_MARGIN_MM / sp_y), round(CROP_MARGIN_MM / sp_x))
    rows, cols = _crop_box(livers, img.shape[1:], margin)
    h, w = (rows.stop - rows.start) * sp_y, (cols.stop - cols.start) * sp_x
    ncol = max(1, min(columns, len(picks)))
    panel_w = PANEL_WIDTH_IN if ncol > 1 else 2 * PANEL_WIDTH_IN
    layout = _Layout(
        ncol,
        int(np.ceil(len(picks) / ncol)),
        panel_w,
        panel_w * h / w,
        (0.4 if title else 0.1) + (0.3 if ref is None or panel_w * ncol >= 7 else 0.5),
    )
    fig = Figure(figsize=layout.size, dpi=dpi)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("black")
    for n, k in enumerate(picks):
        ax = fig.add_axes(layout.panel_rect(n))
        ax.imshow(
            np.asarray(img[k, rows, cols], dtype=np.float32),
            cmap="gray",
            vmin=window[0],
            vmax=window[1],
            aspect=sp_y / sp_x,
            interpolation="nearest",
        )
        _draw_contours(ax, lab[k, rows, cols], ref[k, rows, cols] if ref is not None else None)
        input_k = (reo.input_shape[reo.perm[0]] - 1 - k) if reo.flip[0] else k
        _label_panel(ax, f"slice {input_k}  S {origin[0] + k * sp_z:.0f} mm")
        ax.set_axis_off()
    _draw_header(fig, layout, title, ref is not None)
    with atomic_path(path, overwrite) as tmp:
        # zlib level 1: the same pixels, files no larger here, and 3x less time than PIL's
        # default level 6 (the PNG encoding was a third of the overlay's time)
        fig.savefig(tmp, format="png", facecolor="black", pil_kwargs={"compress_level": 1})
    log.debug("overlay %s: %d slices", path, len(picks))
    return Path(path)


def _draw_contours(ax, lab: np.ndarray, ref: np.ndarray | None) -> None:
    """Predicted contours solid and thick, reference contours dashed, on one panel."""
    _contour(ax, lab >= 1, COLOURS["liver"], "solid", PRED_WIDTH)
    _contour(ax, lab == 2, COLOURS["tumour"], "solid", PRED_WIDTH)
    if ref is not None:
        _contour(ax, ref >= 1, COLOURS["ref_liver"], (0, (3, 2)), REF_WIDTH)
        _contour(ax, ref == 2, COLOURS["ref_tumour"], (0, (3, 2)), REF_WIDTH)


def _contour(ax, mask: np.ndarray, colour: str, style, width: float) -> None:
    mask = np.asarray(mask)
    if mask.any():
        ax.contour(
            mask.astype(np.float32),
            levels=[0.5],
            colors=[colour],
            linewidths=width,
            linestyles=[style],
        )
