"""``livseg segment``: segment CT files or DICOM series and write every output of each case.

:func:`segment_files` segments a batch of inputs with one set of loaded models;
:func:`segment_case` reads, segments and saves one input given by its path, with the steps of
:mod:`livseg.infer.case`. Each input (a NIfTI/NRRD/MHA file or a DICOM series folder) is named
``<name>`` (:func:`~livseg.infer.case.case_name`: the file name without its extension, or the
folder name) and gets the outputs of :meth:`~livseg.infer.case.Segmentation.save` in ``outdir``
(``<name>_seg.nii.gz``, measurements JSON, lesion CSV, overlay PNG and HTML report, DICOM-SEG
when asked).

**Nothing half-done.** Before the first inference every input of the batch is read and checked
(readable, 3-D, CT-like: :func:`~livseg.infer.case.check_ct`), every reference is checked
against its input's geometry, and every output location is checked (exists, writable). A case's
outputs are written to temporary files and renamed together at the end, so a failing case
leaves nothing behind; existing outputs are refused unless ``overwrite=True``. The models are
loaded once for the whole batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from livseg.errors import InputError, LivsegError
from livseg.infer.cascade import Cascade
from livseg.infer.case import (
    CaseProgress,
    CtInput,
    SaveOptions,
    Segmentation,
    SegmentOptions,
    case_name,
    check_outputs,
    output_paths,
    read_ct,
    read_reference,
    segment_ct,
)
from livseg.infer.pretrained import DEFAULT_MODEL

log = logging.getLogger("livseg.infer.run")


def _stage(progress: CaseProgress | None, name: str, stage: str, done: int) -> None:
    if progress is not None:
        progress(name, stage, done, 1)


def segment_case(
    cascade: Cascade,
    path: str | Path,
    outdir: str | Path,
    *,
    dicom_seg: bool = False,
    overwrite: bool = False,
    overlay: bool = True,
    reference: str | Path | None = None,
    name: str | None = None,
    progress: CaseProgress | None = None,
    extra: dict[str, Any] | None = None,
    series_uid: str | None = None,
    ct: CtInput | None = None,
) -> Segmentation:
    """Read, check, segment one input with a loaded cascade and write its outputs.

    Args:
        cascade: the loaded models.
        path: CT file or DICOM series folder.
        outdir: output folder.
        dicom_seg, overwrite, overlay: see :class:`SaveOptions`.
        reference: reference label file (same geometry): drawn in the overlay, scored.
        name: case name (default :func:`case_name` of ``path``).
        progress: ``(case, stage, done, total)`` callback.
        extra: additional facts for the measurements JSON.
        series_uid: SeriesInstanceUID for a DICOM folder holding several series.
        ct: ``path`` already read by :func:`read_ct` (it is then not read again).

    Raises:
        InputError: unreadable input, not CT, bad reference, ``dicom_seg`` for a non-DICOM
            input.
        OutputExistsError: an output exists and ``overwrite`` is False (checked first).
        OutputError: the output folder cannot be written.
    """
    path, outdir = Path(path), Path(outdir)
    name = name or case_name(path)
    save = SaveOptions(overlay=overlay, dicom_seg=dicom_seg, overwrite=overwrite)
    _check_dicom_seg(path, dicom_seg)
    check_outputs(output_paths(name, outdir, save).values(), outdir, overwrite)
    _stage(progress, name, "read", 0)
    t = time.perf_counter()
    if ct is None:
        ct = read_ct(path, series_uid, cascade.check_ct)
    ref = read_reference(reference, ct.image) if reference is not None else None
    read_s = time.perf_counter() - t
    _stage(progress, name, "read", 1)
    case = segment_ct(cascade, ct, name=name, reference=ref, progress=progress)
    case.result.timings = {"read": read_s, **case.result.timings}
    case.meta.update(extra or {})
    _stage(progress, name, "write", 0)
    case.save(outdir, overwrite=overwrite, overlay=overlay, dicom_seg=dicom_seg)
    _stage(progress, name, "write", 1)
    for k, v in case.timings.items():
        log.debug("%s: %s %.2f s", case.name, k, v)
    return case


# --- batches -------------------------------------------------------------------------------------


def _check_dicom_seg(path: Path, dicom_seg: bool) -> None:
    if dicom_seg and not path.is_dir():
        raise InputError(
            f"{path}: --dicom-seg needs a DICOM series folder as input; this is a file"
        )


def _unique_names(inputs: list[Path]) -> list[str]:
    """The case names of ``inputs``; several inputs with one name are an error."""
    names = [case_name(p) for p in inputs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise LivsegError(
            f"several inputs share the output name(s) {', '.join(dup)}; "
            "segment them into different --out folders"
        )
    return names


def _check_arguments(
    inputs: list[Path], references: Sequence[str | Path] | None, dicom_seg: bool
) -> list[str]:
    """Cheap checks of a batch's arguments; returns the case names."""
    if not inputs:
        raise LivsegError("no input given")
    if references is not None and len(references) != len(inputs):
        raise LivsegError(
            f"--ref given {len(references)} time(s) for {len(inputs)} input(s); "
            "give one reference per input"
        )
    names = _unique_names(inputs)
    for p in inputs:
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
        _check_dicom_seg(p, dicom_seg)
    return names


def _check_batch(
    inputs: list[Path],
    refs: list[str | Path | None],
    series_uid: str | None,
    check_intensities: bool,
) -> CtInput:
    """Read and check every input (and its reference) before any inference.

    Only the first input is kept in memory (returned); the others are read again in turn.
    """
    first = None
    for p, ref in zip(inputs, refs, strict=True):
        ct = read_ct(p, series_uid, check_intensities)
        if ref is not None:
            read_reference(ref, ct.image)
        first = first or ct
    assert first is not None
    return first


def segment_files(
    inputs: Sequence[str | Path],
    outdir: str | Path,
    *,
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    options: SegmentOptions | None = None,
    save: SaveOptions | None = None,
    references: Sequence[str | Path] | None = None,
    series_uid: str | None = None,
    progress: CaseProgress | None = None,
    cascade: Cascade | None = None,
) -> list[Segmentation]:
    """Segment several inputs with one set of loaded models (``livseg segment``).

    Everything that can be checked is checked before the first inference (module docstring).

    Args:
        inputs: NIfTI/NRRD/MHA files or DICOM series folders.
        outdir: output folder (created when missing).
        model: liver model family, a key of :data:`~livseg.infer.pretrained.PAPER_CASCADE`
            (``"crunet"`` or ``"densefcn"``; shipped weights).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        options: model loading options (checkpoint folders, TTA, batch size).
        save: which outputs, and whether to overwrite.
        references: reference label files, one per input: drawn in the overlays and scored.
        series_uid: SeriesInstanceUID to read from DICOM folders holding several series.
        progress: ``(case, stage, done, total)`` callback.
        cascade: an already loaded :class:`Cascade` (then ``model``, ``device`` and
            ``options`` are ignored).

    Returns:
        One :class:`Segmentation` per input, in order, each saved.

    Raises:
        LivsegError: bad arguments, missing weights, unreadable or non-CT inputs, existing
            or unwritable outputs (all checked before any inference), or a failing case (the
            cases before it are kept; the message names the input).
    """
    inputs = [Path(p) for p in inputs]
    outdir = Path(outdir)
    save = save or SaveOptions()
    names = _check_arguments(inputs, references, save.dicom_seg)
    for n in names:
        check_outputs(output_paths(n, outdir, save).values(), outdir, save.overwrite)
    refs = list(references) if references is not None else [None] * len(inputs)
    check_intensities = cascade.check_ct if cascade is not None else True
    first = _check_batch(inputs, refs, series_uid, check_intensities)
    if cascade is None:
        cascade = (options or SegmentOptions()).load(model, device)
    return [
        segment_case(
            cascade,
            p,
            outdir,
            dicom_seg=save.dicom_seg,
            overwrite=save.overwrite,
            overlay=save.overlay,
            reference=ref,
            name=n,
            progress=progress,
            series_uid=series_uid,
            ct=first if k == 0 else None,
        )
        for k, (p, n, ref) in enumerate(zip(inputs, names, refs, strict=True))
    ]
