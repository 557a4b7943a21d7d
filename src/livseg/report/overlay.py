"""Overlay montage: axial CT slices through the liver with liver/tumour contours (PNG).

Slices are drawn in the **radiological convention** (anterior at the top, the patient's left on
the image's right) whatever the input orientation: volumes are viewed in livseg's canonical
"LPS" layout (:mod:`livseg.preprocess.orientation`), in which ``array[k]`` shown with row 0 at
the top is exactly that view. The CT is shown with a soft-tissue window (W 400 / L 40 HU by
default), the pixel aspect follows the in-plane spacing, and each panel is labelled with its
slice index in the *input* array and its S-I position in mm.

Matplotlib is imported lazily and only its Agg canvas is used (no global backend change).
"""

from __future__ import annotations

import logging
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

COLOURS = {"liver": "#33dd33", "tumour": "#ff3030", "ref_liver": "#30c0ff", "ref_tumour": "#ffd000"}


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
    sp_z, sp_y, sp_x = reo.canonical_geometry()[0]
    origin_z = reo.canonical_geometry()[1][0]
    mask_for_slices = lab >= 1
    if not mask_for_slices.any() and ref is not None:
        mask_for_slices = ref >= 1
    picks = choose_slices(mask_for_slices, n_slices)
    ncol = max(1, min(columns, len(picks)))
    nrow = int(np.ceil(len(picks) / ncol))
    h, w = img.shape[1] * sp_y, img.shape[2] * sp_x
    panel_w = 3.0
    panel_h = panel_w * h / w
    fig = Figure(figsize=(panel_w * ncol, panel_h * nrow + (0.5 if title else 0.1)), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.patch.set_facecolor("black")
    for n, k in enumerate(picks):
        ax = fig.add_subplot(nrow, ncol, n + 1)
        ax.imshow(
            np.asarray(img[k], dtype=np.float32),
            cmap="gray",
            vmin=window[0],
            vmax=window[1],
            aspect=sp_y / sp_x,
            interpolation="nearest",
        )
        _contour(ax, lab[k] >= 1, COLOURS["liver"], "solid")
        _contour(ax, lab[k] == 2, COLOURS["tumour"], "solid")
        if ref is not None:
            _contour(ax, ref[k] >= 1, COLOURS["ref_liver"], "dashed")
            _contour(ax, ref[k] == 2, COLOURS["ref_tumour"], "dashed")
        input_k = (reo.input_shape[reo.perm[0]] - 1 - k) if reo.flip[0] else k
        ax.set_title(f"slice {input_k}  S {origin_z + k * sp_z:.0f} mm", color="white", fontsize=8)
        ax.text(0.02, 0.5, "R", color="yellow", fontsize=7, transform=ax.transAxes, va="center")
        ax.text(
            0.98,
            0.5,
            "L",
            color="yellow",
            fontsize=7,
            transform=ax.transAxes,
            ha="right",
            va="center",
        )
        ax.set_axis_off()
    legend = "liver green, tumour red"
    if ref is not None:
        legend += "; reference dashed: liver blue, tumour yellow"
    fig.suptitle(f"{title}\n{legend}" if title else legend, color="white", fontsize=9)
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.01, top=0.92 if title else 0.95, wspace=0.03, hspace=0.12
    )
    with atomic_path(path, overwrite) as tmp:
        fig.savefig(tmp, format="png", facecolor="black")
    log.debug("overlay %s: %d slices", path, len(picks))
    return Path(path)


def _contour(ax, mask: np.ndarray, colour: str, style: str) -> None:
    mask = np.asarray(mask)
    if mask.any():
        ax.contour(
            mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=0.8, linestyles=style
        )
