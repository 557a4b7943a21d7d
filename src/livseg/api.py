"""The Python API: ``livseg.segment``, ``livseg.Segmenter``, ``livseg.evaluate``.

For notebooks and scripts, the same steps as the command line with few, typed parameters::

    import livseg

    result = livseg.segment("scan.nii.gz")          # or a Volume, nibabel/SimpleITK image, array
    result.measurements.liver_volume_ml             # ml
    result.labels                                   # Volume, the input's exact geometry
    result.save("results/")                         # what `livseg segment` writes

    segmenter = livseg.Segmenter(model="crunet")    # models loaded once, reused
    results = [segmenter.segment(p) for p in paths]

    scores = livseg.evaluate("results/", "labels/")  # LiTS scores (folders or one pair)

    cohort = livseg.segment_cohort(paths, "results/", resume=True)   # + results/cohort.csv;
                                                    # sharded over the ranks under torchrun

The device defaults to ``"auto"`` (a CUDA GPU when there is one), as on the command line. Errors
a user can fix raise :class:`livseg.errors.LivsegError` subclasses with a one-line message.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from livseg.errors import InputError
from livseg.infer.case import (
    CtInput,
    Segmentation,
    SegmentOptions,
    read_ct,
    read_reference,
    segment_ct,
)
from livseg.infer.pretrained import DEFAULT_MODEL
from livseg.io import as_volume
from livseg.volume import Volume

__all__ = [
    "SegmentOptions",
    "Segmentation",
    "Segmenter",
    "evaluate",
    "segment",
    "segment_cohort",
]

log = logging.getLogger("livseg.api")

CtLike = Any
"""A CT: a path (file or DICOM folder), a :class:`~livseg.volume.Volume`, a nibabel image, a
SimpleITK image, or a numpy array (with ``spacing`` or ``affine``)."""


def _as_ct(ct: CtLike, spacing, affine, check_intensities: bool) -> tuple[CtInput, str]:
    """The checked input and its default case name."""
    from livseg.infer.case import case_name, check_ct, collect_warnings

    if isinstance(ct, (str, os.PathLike)):
        if spacing is not None or affine is not None:
            raise InputError(f"{ct}: spacing/affine are for numpy arrays; a file has its own")
        return read_ct(ct, check_intensities=check_intensities), case_name(ct)
    with collect_warnings() as warnings:
        image = as_volume(ct, spacing=spacing, affine=affine)
    source = f"<{type(ct).__name__}>"
    check_ct(image, source, check_intensities)
    return CtInput(image, source, None, warnings), "ct"


def _as_reference(reference, image: Volume) -> Volume:
    if isinstance(reference, (str, os.PathLike)):
        return read_reference(reference, image)
    ref = as_volume(reference, kind="label", source="<reference>")
    why = image.geometry_mismatch(ref, atol=1e-3)
    if why:
        raise InputError(f"<reference>: labels do not match the input geometry ({why})")
    return ref


class Segmenter:
    """Loaded liver and tumour models, reusable across CTs (load once, segment many).

    Args:
        model: liver model family of the shipped weights, a key of
            :data:`livseg.infer.pretrained.PAPER_CASCADE` (``"crunet"``, ``"densefcn"``).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:N]"``.
        options: checkpoint folders instead of the shipped models, TTA, batch size.

    Raises:
        LivsegError: unknown model (the message lists the valid ones), missing weights, or a
            device that is not available.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        device: str = "auto",
        options: SegmentOptions | None = None,
    ) -> None:
        self.cascade = (options or SegmentOptions()).load(model, device)

    def segment(
        self,
        ct: CtLike,
        *,
        spacing: tuple[float, float, float] | None = None,
        affine: Any = None,
        reference: CtLike | None = None,
        name: str | None = None,
    ) -> Segmentation:
        """Segment one CT.

        Args:
            ct: a path (NIfTI/NRRD/MHA file or DICOM series folder), a
                :class:`~livseg.volume.Volume`, a nibabel image, a SimpleITK image, or a numpy
                array: (Z, Y, X) with ``spacing``, or nibabel's (i, j, k) order with ``affine``.
            spacing: voxel size (sz, sy, sx) in mm of a (Z, Y, X) numpy array.
            affine: 4x4 NIfTI (RAS) affine of a numpy array in nibabel's (i, j, k) order.
            reference: reference labels in the same geometry (path, Volume, image or array):
                adds the LiTS scores (:attr:`Segmentation.scores`) and the dashed overlay.
            name: case name for :meth:`Segmentation.save` (default: the file name, or "ct").

        Returns:
            :class:`~livseg.infer.case.Segmentation`: ``labels`` (Volume, 0/1/2, the input's
            geometry), ``measurements``, ``warnings``, ``scores``, and ``save(dir)``.

        Raises:
            InputError: unreadable input, not 3-D, not CT-like (all NaN, constant, no air...),
                or a reference of another geometry.
        """
        ct_input, default_name = _as_ct(ct, spacing, affine, self.cascade.check_ct)
        ref = _as_reference(reference, ct_input.image) if reference is not None else None
        return segment_ct(self.cascade, ct_input, name=name or default_name, reference=ref)

    __call__ = segment


def segment(
    ct: CtLike,
    *,
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    options: SegmentOptions | None = None,
    spacing: tuple[float, float, float] | None = None,
    affine: Any = None,
    reference: CtLike | None = None,
) -> Segmentation:
    """Segment the liver and liver tumours of one CT (loads the models; for several CTs load
    them once with :class:`Segmenter`).

    Args: as :class:`Segmenter` (``model``, ``device``, ``options``) and
        :meth:`Segmenter.segment` (``ct``, ``spacing``, ``affine``, ``reference``).

    Returns:
        :class:`~livseg.infer.case.Segmentation`; ``.save(dir)`` writes what ``livseg segment``
        writes.
    """
    segmenter = Segmenter(model, device=device, options=options)
    return segmenter.segment(ct, spacing=spacing, affine=affine, reference=reference)


def segment_cohort(
    inputs: list[str | os.PathLike],
    outdir: str | os.PathLike,
    *,
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    options: SegmentOptions | None = None,
    overlay: bool = True,
    overwrite: bool = False,
    resume: bool = False,
):
    """Segment many CTs into ``outdir`` as ``livseg segment`` does, with ``cohort.csv``.

    Run under ``torchrun`` (every process given the same ``inputs``), the inputs are sharded
    over the ranks by sorted path, each rank loads the models once, cases whose outputs exist
    are skipped (``resume`` is implied) and rank 0 writes ``cohort.csv``.

    Args:
        inputs: CT files or DICOM series folders.
        outdir: output folder.
        model, device, options: as :class:`Segmenter`.
        overlay: also write the PNG montage and the HTML report of each case.
        overwrite: replace existing outputs.
        resume: skip the cases whose outputs all exist.

    Returns:
        :class:`~livseg.infer.run.CohortResult`: ``cases`` segmented by this process,
        ``rows`` of the table, ``table`` (the ``cohort.csv`` path on rank 0), ``skipped``,
        ``failed``.
    """
    from livseg.infer.case import SaveOptions
    from livseg.infer.run import segment_cohort as run_cohort

    return run_cohort(
        inputs,
        outdir,
        model=model,
        device=device,
        options=options,
        save=SaveOptions(overlay=overlay, overwrite=overwrite),
        resume=resume,
        table=True,
    )


def _label_volume(x: Any, what: str) -> Volume:
    if isinstance(x, Segmentation):
        return x.labels
    return as_volume(x, kind="label", source=what)


def evaluate(pred: Any, ref: Any, *, penalty: float | None = None, jobs: int = 1):
    """LiTS scores of predictions against references: two folders, or one pair.

    Args:
        pred: a folder of predicted label files (``livseg segment``'s output folder works as
            it is), or one prediction: a label file, a label Volume, or a
            :class:`~livseg.infer.case.Segmentation`.
        ref: the reference folder (a LiTS folder works as it is: its ``volume-N`` CTs are
            skipped), or one reference label file / Volume in the prediction's geometry.
        penalty: value of distance/volume metrics for empty masks (default: the official
            scorer's, :data:`livseg.metrics.lits.DEFAULT_PENALTY`).
        jobs: worker processes for folders.

    Returns:
        :class:`livseg.metrics.lits.EvaluationResult`: ``cases`` (one per pair, e.g.
        ``cases[0].liver.dice``), ``summary`` (data-set scores) and ``rows()``.

    Raises:
        InputError: pairing problems, unreadable files, shape/spacing/orientation mismatch.
    """
    from livseg.metrics.evaluate import evaluate_folders
    from livseg.metrics.lits import DEFAULT_PENALTY, evaluate_cases

    penalty = DEFAULT_PENALTY if penalty is None else penalty
    folders = [isinstance(x, (str, os.PathLike)) and Path(x).is_dir() for x in (pred, ref)]
    if all(folders):
        return evaluate_folders(pred, ref, jobs=jobs, penalty=penalty)
    if any(folders):
        raise InputError(f"evaluate: give two folders or two label volumes, got {pred} and {ref}")
    p, r = _label_volume(pred, "<prediction>"), _label_volume(ref, "<reference>")
    why = r.geometry_mismatch(p, atol=1e-3)
    if why:
        raise InputError(f"{pred}: the prediction's geometry differs from the reference's ({why})")
    for vol, what in ((p, pred), (r, ref)):
        top = int(vol.array.max(initial=0))
        if top > 2:
            raise InputError(f"{what}: label value {top}; expected 0, 1 (liver), 2 (tumour)")
    case_id = pred.name if isinstance(pred, Segmentation) else Path(str(pred)).name
    return evaluate_cases([(p.array, r.array, r.spacing)], penalty=penalty, case_ids=[case_id])
