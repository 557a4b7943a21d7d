"""``livseg segment``: segment CT files or DICOM series and write every output of a case.

For each input (a NIfTI/NRRD/MHA file or a DICOM series folder) named ``<name>`` (the file name
without its extension, or the folder name), ``segment_files`` writes into ``outdir``:

* ``<name>_seg.nii.gz``: labels 0/1/2 (uint8) in the input's exact geometry;
* ``<name>_measurements.json``: liver/tumour volumes (ml), burden, lesion list, coverage and
  ``liver_found`` flags, liver probability summary, per-stage timings, warnings;
* ``<name>_lesions.csv``: one row per lesion;
* ``<name>_overlay.png``: axial montage through the liver (``overlay=True``);
* ``<name>_report.html``: a self-contained page with the measurements, flags, lesion list and the
  montage embedded (``overlay=True``);
* ``<name>_seg.dcm``: DICOM-SEG referencing the input series (``dicom_seg=True``, DICOM only).

A case's outputs are written to temporary files and renamed together at the end, so a failing
case leaves nothing behind; existing outputs are refused before any work unless
``overwrite=True``. The models are loaded once for the whole batch.

When no liver is found the label file is written all background, ``liver_found`` is false in the
measurements and a warning is logged (the DICOM-SEG, which would be empty, is not written).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livseg.errors import InputError, LivsegError
from livseg.infer.cascade import Cascade, SegmentationResult, timed
from livseg.infer.pretrained import DEFAULT_MODEL
from livseg.io import READABLE_SUFFIXES
from livseg.io.atomic import atomic_path, check_writable
from livseg.volume import Volume

log = logging.getLogger("livseg.infer.run")

OUTPUT_SUFFIXES = {
    "labels": "_seg.nii.gz",
    "measurements": "_measurements.json",
    "lesions": "_lesions.csv",
    "overlay": "_overlay.png",
    "report": "_report.html",
    "dicom_seg": "_seg.dcm",
}

CaseProgress = Callable[[str, str, int, int], None]
"""Progress callback ``(case name, stage, done, total)``."""


@dataclass
class CaseOutput:
    """What :func:`segment_files` produced for one input.

    Attributes:
        input: the input path.
        name: the case name used for the output files.
        outputs: kind ("labels", "measurements", ...) -> written path.
        result: the segmentation result (labels in the input geometry).
        measurements: the measurements written to JSON.
        timings: seconds per stage: read, reorient, liver, postprocess, tumour, write, report.
    """

    input: Path
    name: str
    outputs: dict[str, Path]
    result: SegmentationResult
    measurements: Any
    timings: dict[str, float] = field(default_factory=dict)


def case_name(path: str | Path) -> str:
    """Output base name of an input: the file name without its image extension, or the
    folder name of a DICOM series."""
    path = Path(path)
    name = path.name
    if path.is_dir():
        return name or path.resolve().name
    low = name.lower()
    for suf in READABLE_SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)]
    return path.stem


def output_paths(name: str, outdir: Path, dicom_seg: bool, overlay: bool) -> dict[str, Path]:
    """The output files of case ``name`` in ``outdir``."""
    kinds = ["labels", "measurements", "lesions"]
    if overlay:
        kinds += ["overlay", "report"]
    if dicom_seg:
        kinds.append("dicom_seg")
    return {k: outdir / f"{name}{OUTPUT_SUFFIXES[k]}" for k in kinds}


def _read_reference(path: Path, image: Volume) -> Volume:
    from livseg.io import read_volume

    ref = read_volume(path, kind="label")
    why = image.geometry_mismatch(ref, atol=1e-3)
    if why:
        raise InputError(f"{path}: reference labels do not match the input geometry ({why})")
    return ref


def _check_dicom_seg(path: Path, dicom_seg: bool) -> None:
    if dicom_seg and not path.is_dir():
        raise InputError(
            f"{path}: --dicom-seg needs a DICOM series folder as input; this is a file"
        )


@dataclass
class _Case:
    """One input being segmented: what the output writers need."""

    path: Path
    name: str
    image: Volume
    reference: Volume | None
    series_uid: str | None
    result: SegmentationResult

    @property
    def is_dicom(self) -> bool:
        return self.path.is_dir()


def _read_input(
    path: Path, reference: str | Path | None, series_uid: str | None
) -> tuple[Volume, Volume | None]:
    """Read an input and its reference labels (checked against the input's geometry)."""
    from livseg.io import read_volume

    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    image = read_volume(path, kind="image", series_uid=series_uid)
    ref = _read_reference(Path(reference), image) if reference is not None else None
    log.info("%s: %r", path, image)
    return image, ref


def _check_result(case: _Case, dicom_seg: bool) -> None:
    """The labels keep the input geometry; a DICOM-SEG needs a liver."""
    result = case.result
    why = result.labels.geometry_mismatch(case.image)
    if why:  # the contract of this module: never flipped
        raise LivsegError(
            f"{case.path}: internal error, output geometry differs from the input ({why})"
        )
    if dicom_seg and not result.liver_found:
        raise LivsegError(
            f"{case.path}: no liver found, so there is nothing to store in a DICOM-SEG; "
            "nothing was written (run without --dicom-seg to get the "
            "all-background label file and measurements with liver_found false)"
        )


def _case_meta(
    case: _Case, cascade: Cascade, outs: dict[str, Path], extra: dict[str, Any] | None
) -> dict[str, Any]:
    """The ``extra`` facts of a case's measurements JSON (timings are added later)."""
    return {
        "input": str(case.path),
        "input_kind": "dicom" if case.is_dicom else "file",
        "shape_zyx": list(case.image.shape),
        "orientation": case.image.orientation_codes(),
        "liver_model": cascade.liver.name,
        "tumour_model": cascade.tumour.name if cascade.tumour else None,
        "tta": cascade.liver.tta,
        "liver_probability": case.result.liver_probability,
        "warnings": list(case.result.warnings),
        "outputs": {k: p.name for k, p in outs.items()},
        **(extra or {}),
    }


def _write_labels(case: _Case, tmp: dict[str, Path]) -> None:
    """The label file (and the DICOM-SEG when asked) into the temporary paths ``tmp``."""
    from livseg.io import write_volume

    labels = case.result.labels
    reference = case.image if case.is_dicom else case.path
    write_volume(labels, tmp["labels"], overwrite=True, reference=reference)
    if "dicom_seg" in tmp:
        from livseg.report.dicom_seg import write_dicom_seg

        write_dicom_seg(
            labels, case.path, tmp["dicom_seg"], overwrite=True, series_uid=case.series_uid
        )


def _write_reports(
    case: _Case, m: Any, meta: dict[str, Any], tmp: dict[str, Path], timings: dict[str, float]
) -> None:
    """Overlay PNG, measurements JSON + lesion CSV and HTML report into the paths ``tmp``."""
    from livseg.report.measurements import write_measurements

    with timed(timings, "report"):
        if "overlay" in tmp:
            from livseg.report.overlay import write_overlay

            write_overlay(
                case.image,
                case.result.labels,
                tmp["overlay"],
                reference=case.reference,
                overwrite=True,
                title=f"{case.name}  ({case.path.name})",
            )
    meta["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    write_measurements(m, tmp["measurements"], tmp["lesions"], overwrite=True, extra=meta)
    if "report" in tmp:
        from livseg.report.html import write_html_report

        write_html_report(
            tmp["report"], case.name, m, meta, overlay_png=tmp["overlay"], overwrite=True
        )


def _log_outcome(case: _Case, m: Any, outs: dict[str, Path], timings: dict[str, float]) -> None:
    for k, v in timings.items():
        log.debug("%s: %s %.2f s", case.name, k, v)
    if not m.liver_found:
        log.warning(
            "%s: no liver found: wrote an all-background label file; liver_found is false in %s",
            case.path,
            outs["measurements"].name,
        )
    elif m.incomplete_coverage:
        log.warning(
            "%s: the liver touches the first or last slice: coverage is incomplete, "
            "the liver volume is a lower bound",
            case.path,
        )


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
) -> CaseOutput:
    """Segment one input with a loaded cascade and write its outputs (see module docstring).

    Raises:
        InputError: unreadable input, not CT, bad reference, ``dicom_seg`` for a non-DICOM
            input.
        OutputExistsError: an output exists and ``overwrite`` is False (checked first).
    """
    from livseg.report.measurements import measure

    path, outdir = Path(path), Path(outdir)
    name = name or case_name(path)
    _check_dicom_seg(path, dicom_seg)
    outs = output_paths(name, outdir, dicom_seg, overlay)
    for p in outs.values():
        check_writable(p, overwrite)
    timings: dict[str, float] = {}
    with timed(timings, "read"):
        image, ref = _read_input(path, reference, series_uid)
    cb = (lambda stage, d, n: progress(name, stage, d, n)) if progress else None
    result = cascade.segment(image, cb, source=str(path))
    timings.update(result.timings)
    case = _Case(path, name, image, ref, series_uid, result)
    _check_result(case, dicom_seg)
    with contextlib.ExitStack() as stack:
        tmp = {k: stack.enter_context(atomic_path(p, overwrite)) for k, p in outs.items()}
        with timed(timings, "write"):
            _write_labels(case, tmp)
        with timed(timings, "report"):
            m = measure(case.result.labels)
            meta = _case_meta(case, cascade, outs, extra)
        _write_reports(case, m, meta, tmp, timings)
    _log_outcome(case, m, outs, timings)
    return CaseOutput(path, name, dict(outs), case.result, m, timings)


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


def _check_inputs(
    inputs: list[Path], references: Sequence[str | Path] | None, dicom_seg: bool
) -> list[str]:
    """Check a batch's inputs before any work; returns their case names."""
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


def _check_outputs(
    names: list[str], outdir: Path, dicom_seg: bool, overlay: bool, overwrite: bool
) -> None:
    """Refuse existing outputs of every case before any work."""
    if outdir.exists() and not outdir.is_dir():
        raise LivsegError(f"{outdir}: output path exists and is not a folder")
    for n in names:
        for p in output_paths(n, outdir, dicom_seg, overlay).values():
            check_writable(p, overwrite)


def segment_files(
    inputs: Sequence[str | Path],
    outdir: str | Path,
    model: str = DEFAULT_MODEL,
    device: str = "cpu",
    dicom_seg: bool = False,
    overwrite: bool = False,
    *,
    liver_model: str | Path | None = None,
    tumour_model: str | Path | None = None,
    tta: bool = False,
    batch_size: int = 8,
    overlay: bool = True,
    references: Sequence[str | Path] | None = None,
    progress: CaseProgress | None = None,
    cascade: Cascade | None = None,
    series_uid: str | None = None,
) -> list[CaseOutput]:
    """Segment several inputs with one set of loaded models (``livseg segment``).

    Args:
        inputs: NIfTI/NRRD/MHA files or DICOM series folders.
        outdir: output folder (created when missing).
        model: liver model family, a key of :data:`~livseg.infer.pretrained.LIVER_MODEL_FOR`
            (``"crunet"`` or ``"densefcn"``; shipped weights).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        dicom_seg: also write a DICOM-SEG per input (every input must be a DICOM folder).
        overwrite: replace existing outputs.
        liver_model: liver checkpoint folder (instead of the shipped one).
        tumour_model: tumour checkpoint folder (instead of the shipped one).
        tta: left-right flip test-time augmentation.
        batch_size: slices per forward pass.
        overlay: write the PNG montage and the HTML report.
        references: reference label files drawn in the overlays, one per input.
        progress: ``(case, stage, done, total)`` callback.
        cascade: an already loaded :class:`Cascade` (then the model options are ignored).
        series_uid: SeriesInstanceUID to read from DICOM folders holding several series.

    Returns:
        One :class:`CaseOutput` per input, in order.

    Raises:
        LivsegError: bad arguments, missing weights, existing outputs (checked for every case
            before any work), or a failing case (the cases before it are kept; the message
            names the input).
    """
    inputs = [Path(p) for p in inputs]
    outdir = Path(outdir)
    names = _check_inputs(inputs, references, dicom_seg)
    _check_outputs(names, outdir, dicom_seg, overlay, overwrite)
    if cascade is None:
        cascade = Cascade.load(
            model,
            liver_model=liver_model,
            tumour_model=tumour_model,
            device=device,
            batch_size=batch_size,
            tta=tta,
        )
    refs = list(references) if references is not None else [None] * len(inputs)
    return [
        segment_case(
            cascade,
            p,
            outdir,
            dicom_seg=dicom_seg,
            overwrite=overwrite,
            overlay=overlay,
            reference=ref,
            name=n,
            progress=progress,
            series_uid=series_uid,
        )
        for p, n, ref in zip(inputs, names, refs, strict=True)
    ]
