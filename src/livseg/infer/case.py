"""One CT case: read and check it, segment it, measure and score it, write its outputs.

:func:`read_ct` reads a NIfTI/NRRD/MHA file or a DICOM series folder into a checked
:class:`CtInput` (:func:`check_ct`: readable, 3-D, CT-like); :func:`segment_ct` runs a loaded
cascade on it and returns a :class:`Segmentation` (labels, measurements, warnings, LiTS scores
against reference labels); :meth:`Segmentation.save` writes, for a case named ``<name>``, into
``outdir``:

* ``<name>_seg.nii.gz``: labels 0/1/2 (uint8) in the input's exact geometry;
* ``<name>_measurements.json``: liver/tumour volumes (ml), burden, lesion list, coverage and
  ``liver_found`` flags, liver probability summary, per-stage timings, every warning raised while
  reading and segmenting, the DICOM series UID, and the LiTS scores against ``--ref`` labels;
* ``<name>_lesions.csv``: one row per lesion;
* ``<name>_overlay.png``: axial montage through the liver (``overlay=True``);
* ``<name>_report.html``: a self-contained page with the measurements, flags, warnings, scores,
  lesion list and the montage embedded (``overlay=True``);
* ``<name>_seg.dcm``: DICOM-SEG referencing the input series (``dicom_seg=True``, DICOM only).

A case's outputs are written to temporary files and renamed together at the end, so a failing
case leaves nothing behind; existing outputs are refused unless ``overwrite=True``.

When no liver is found the label file is written all background, ``liver_found`` is false in the
measurements and a warning is recorded (the DICOM-SEG, which would be empty, is not written).

These steps serve ``livseg segment`` (:mod:`livseg.infer.run`, batches of files) and the Python
API (:mod:`livseg.api`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livseg.errors import InputError, LivsegError
from livseg.infer.cascade import Cascade, SegmentationResult, check_ct_intensities, timed
from livseg.infer.pretrained import DEFAULT_MODEL, DEFAULT_PAPER
from livseg.io import READABLE_SUFFIXES, SEGMENT_SUFFIX
from livseg.io.atomic import atomic_path, check_folder_writable, check_writable
from livseg.volume import Volume

log = logging.getLogger("livseg.infer.case")

OUTPUT_SUFFIXES = {
    "labels": f"{SEGMENT_SUFFIX}.nii.gz",
    "measurements": "_measurements.json",
    "lesions": "_lesions.csv",
    "overlay": "_overlay.png",
    "report": "_report.html",
    "dicom_seg": f"{SEGMENT_SUFFIX}.dcm",
}

MAX_NON_FINITE_FRACTION = 0.5
"""A CT with a larger share of non-finite voxels (NaN/inf) is refused; fewer are repaired (set to
-1024 HU, air) with a recorded warning."""

CaseProgress = Callable[[str, str, int, int], None]
"""Progress callback ``(case name, stage, done, total)``. Stages, in order: ``read`` (0/1 then
1/1), ``liver`` and ``tumour`` (slices), ``write`` (0/1 then 1/1)."""


@dataclass(frozen=True)
class SegmentOptions:
    """How the models are loaded (the model family and device are separate arguments).

    Attributes:
        liver_model: liver checkpoint folder instead of the shipped model of the family.
        tumour_model: tumour checkpoint folder instead of the shipped tumour model.
        coarse_model: coarse 3-D liver stage folder instead of the shipped one.
        paper: the papers' cascade (no coarse stage unless ``coarse_model``) instead of
            livseg's; default :data:`~livseg.infer.pretrained.DEFAULT_PAPER`.
        tta: left-right flip test-time augmentation.
        batch_size: slices per forward pass (None: 8 on the CPU, 64 on a GPU).
        backend: ``"auto"``, ``"torch"``, ``"onnx"`` or ``"bf16"`` (:mod:`livseg.infer.backend`).
        folds: only these folds of each fold ensemble (``--fold``; None: all of them).
    """

    liver_model: str | Path | None = None
    tumour_model: str | Path | None = None
    coarse_model: str | Path | None = None
    paper: bool = DEFAULT_PAPER
    tta: bool = False
    batch_size: int | None = None
    backend: str = "auto"
    folds: tuple[int, ...] | None = None

    def load(self, model: str = DEFAULT_MODEL, device: str = "auto") -> Cascade:
        """The cascade of ``model`` (``crunet`` or ``densefcn``, see
        :func:`~livseg.infer.pretrained.cascade_models`)."""
        if self.batch_size is not None and self.batch_size < 1:
            raise LivsegError(f"batch size must be >= 1, got {self.batch_size}")
        return Cascade.load(
            model,
            liver_model=self.liver_model,
            tumour_model=self.tumour_model,
            coarse_model=self.coarse_model,
            paper=self.paper,
            device=device,
            batch_size=self.batch_size,
            tta=self.tta,
            backend=self.backend,
            folds=self.folds,
        )


@dataclass(frozen=True)
class SaveOptions:
    """Which outputs a case writes, and whether existing ones are replaced.

    Attributes:
        overlay: write the PNG montage and the HTML report.
        dicom_seg: also write a DICOM-SEG (DICOM series inputs only).
        overwrite: replace existing outputs.
    """

    overlay: bool = True
    dicom_seg: bool = False
    overwrite: bool = False


@dataclass
class CtInput:
    """A CT read and checked (:func:`read_ct`), with what reading it said.

    Attributes:
        image: the CT (float32 HU), any orientation.
        source: the input as named in messages (path, or ``<numpy.ndarray>``...).
        path: the file or DICOM folder read (None for an in-memory input).
        warnings: warnings raised while reading (dropped DICOM slices, non-finite voxels...).
        series: DICOM facts (``series_uid``, ``series_description``, ``dropped_files``) or {}.
        seconds: time taken to read and check it.
    """

    image: Volume
    source: str
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def is_dicom(self) -> bool:
        return self.path is not None and self.path.is_dir()


@dataclass
class Segmentation:
    """One segmented CT: labels, measurements, warnings, scores; :meth:`save` writes the outputs.

    Attributes:
        name: the case name (output files ``<name>_seg.nii.gz``...).
        input: the CT and what reading it said.
        result: the cascade's result (labels in the input geometry).
        measurements: :class:`~livseg.report.measurements.Measurements` of the labels.
        reference: reference labels (same geometry), or None.
        scores: LiTS per-case scores against ``reference`` (``CaseResult.row()`` keys,
            non-finite values as None), or None.
        meta: the facts the measurements JSON records beside them (models, input...).
        outputs: kind ("labels", "measurements", ...) -> path, once saved.
    """

    name: str
    input: CtInput
    result: SegmentationResult
    measurements: Any
    reference: Volume | None = None
    scores: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def labels(self) -> Volume:
        """Label Volume (uint8: 0 background, 1 liver, 2 tumour) in the input's geometry."""
        return self.result.labels

    @property
    def warnings(self) -> list[str]:
        """Every warning of reading and segmenting this CT, each once, in order."""
        return list(dict.fromkeys([*self.input.warnings, *self.result.warnings]))

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per stage: read, reorient, liver, postprocess, tumour, write, report."""
        return self.result.timings

    def save(
        self,
        outdir: str | Path,
        *,
        overwrite: bool = False,
        overlay: bool = True,
        dicom_seg: bool = False,
    ) -> dict[str, Path]:
        """Write what ``livseg segment`` writes for this case into ``outdir``.

        Args:
            outdir: output folder (created when missing).
            overwrite: replace existing outputs.
            overlay: write the PNG montage and the HTML report.
            dicom_seg: also write ``<name>_seg.dcm`` (only for a DICOM series input).

        Returns:
            kind -> written path (also kept in :attr:`outputs`).

        Raises:
            OutputExistsError: an output exists and ``overwrite`` is False (nothing written).
            OutputError: the folder cannot be written (permission, disk full...).
            InputError: ``dicom_seg`` for an input that is not a DICOM series.
        """
        save = SaveOptions(overlay=overlay, dicom_seg=dicom_seg, overwrite=overwrite)
        if dicom_seg and not self.input.is_dicom:
            raise InputError(
                f"{self.input.source}: a DICOM-SEG needs a DICOM series folder as input"
            )
        outs = output_paths(self.name, Path(outdir), save)
        check_outputs(outs.values(), Path(outdir), overwrite)
        _check_dicom_seg_liver(self, dicom_seg)
        with contextlib.ExitStack() as stack:
            tmp = {k: stack.enter_context(atomic_path(p, overwrite)) for k, p in outs.items()}
            with timed(self.result.timings, "write"):
                _write_labels(self, tmp)
            _write_reports(self, outs, tmp)
        self.outputs = dict(outs)
        return self.outputs


# --- names and paths -----------------------------------------------------------------------------


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


def output_paths(name: str, outdir: Path, save: SaveOptions | None = None) -> dict[str, Path]:
    """The output files of case ``name`` in ``outdir``."""
    save = save or SaveOptions()
    kinds = ["labels", "measurements", "lesions"]
    if save.overlay:
        kinds += ["overlay", "report"]
    if save.dicom_seg:
        kinds.append("dicom_seg")
    return {k: outdir / f"{name}{OUTPUT_SUFFIXES[k]}" for k in kinds}


def check_outputs(paths, outdir: Path, overwrite: bool) -> None:
    """Every output can be created: the folder is (or can be) a writable folder, no file
    exists unless ``overwrite``.

    Raises:
        OutputExistsError: an output exists and ``overwrite`` is False.
        OutputError: ``outdir`` is not a folder or cannot be written.
    """
    check_folder_writable(outdir)
    for p in paths:
        check_writable(p, overwrite)


# --- reading and checking ------------------------------------------------------------------------


class _WarningLog(logging.Handler):
    """Collects the messages of WARNING (and above) records of the ``livseg`` loggers logged by
    the thread that created it (a batch reads the next case in another thread meanwhile)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """Record every warning logged by livseg in this thread inside the ``with`` block (they are
    still logged).

    Yields:
        The list the messages are appended to.
    """
    handler = _WarningLog()
    logger = logging.getLogger("livseg")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def check_ct(image: Volume, source: str, check_intensities: bool = True) -> None:
    """Refuse a volume that cannot be a CT, before any inference.

    Refused: a label volume; no finite voxel (all NaN/inf); more than
    :data:`MAX_NON_FINITE_FRACTION` non-finite voxels; a constant volume (every finite voxel the
    same value); and, when ``check_intensities``, intensities that are not HU
    (:func:`~livseg.infer.cascade.check_ct_intensities`: no air, 8-bit or MR-like ranges).
    A few non-finite voxels are accepted: the cascade sets them to air and records a warning.

    Raises:
        InputError: naming ``source`` and the problem.
    """
    from livseg.infer.predictor import volume_stats

    if image.kind != "image":
        raise InputError(f"{source}: a label volume was given where a CT image is needed")
    stats = volume_stats(image.array)
    n = image.array.size
    if stats.n_nan == n:
        raise InputError(f"{source}: no finite voxel (all NaN or infinite); not a CT")
    if stats.n_nan > MAX_NON_FINITE_FRACTION * n:
        raise InputError(
            f"{source}: {100 * stats.n_nan / n:.0f}% of the voxels are NaN or infinite "
            f"(at most {100 * MAX_NON_FINITE_FRACTION:.0f}% can be repaired); not a usable CT"
        )
    if stats.hu_max <= stats.hu_min:
        raise InputError(
            f"{source}: every voxel has the value {stats.hu_min:g}; a constant volume is not a CT"
        )
    if check_intensities:
        check_ct_intensities(stats, source)


def _read_dicom(path: Path, series_uid: str | None) -> tuple[Volume, dict[str, Any]]:
    """A DICOM series and its facts (UID, description, dropped files)."""
    from livseg.io import dicom

    series = dicom.select_series(dicom.scan_dicom_folder(path), series_uid, path)
    stack = dicom.plan_stack(series, path)
    facts = {
        "series_uid": series.uid,
        "series_description": series.description,
        "dropped_files": [{"file": str(p), "reason": r} for p, r in stack.dropped],
    }
    return dicom.load_stack(stack), facts


def read_ct(
    path: str | Path, series_uid: str | None = None, check_intensities: bool = True
) -> CtInput:
    """Read a CT file or DICOM series folder and check it (:func:`check_ct`).

    Args:
        path: NIfTI/NRRD/MHA file or DICOM series folder.
        series_uid: SeriesInstanceUID when the folder holds several series.
        check_intensities: refuse intensities that are not HU.

    Raises:
        InputError: missing, unreadable, not 3-D, not CT (the message names ``path``).
    """
    from livseg.io import read_volume

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    start = time.perf_counter()
    series: dict[str, Any] = {}
    with collect_warnings() as warnings:
        if path.is_dir():
            image, series = _read_dicom(path, series_uid)
        else:
            image = read_volume(path, kind="image")
    check_ct(image, str(path), check_intensities)
    log.debug("%s: %r", path, image)
    return CtInput(image, str(path), path, warnings, series, time.perf_counter() - start)


def read_reference(path: str | Path, image: Volume) -> Volume:
    """Reference labels for ``image``, checked to have its geometry.

    Raises:
        InputError: unreadable labels or a geometry different from ``image``'s.
    """
    from livseg.io import read_volume

    ref = read_volume(path, kind="label")
    why = image.geometry_mismatch(ref, atol=1e-3)
    if why:
        raise InputError(f"{path}: reference labels do not match the input geometry ({why})")
    return ref


# --- segmenting ----------------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """A JSON-ready scalar: numpy scalars as Python, non-finite floats as None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def case_scores(labels: Volume, reference: Volume, name: str) -> dict[str, Any]:
    """LiTS per-case scores of ``labels`` against ``reference`` (same geometry), JSON-ready."""
    from livseg.metrics.lits import evaluate_case

    scores = evaluate_case(labels.array, reference.array, reference.spacing, case_id=name)
    return {k: _clean(v) for k, v in scores.row().items()}


def _model_meta(cascade: Cascade) -> dict[str, Any]:
    return {
        "liver_model": cascade.liver.name,
        "tumour_model": cascade.tumour.name if cascade.tumour else None,
        "tta": cascade.liver.tta,
        "members": {
            stage: len(p.models)
            for stage, p in (
                ("coarse", cascade.coarse),
                ("liver", cascade.liver),
                ("tumour", cascade.tumour),
            )
            if p is not None
        },
    }


def segment_ct(
    cascade: Cascade,
    ct: CtInput,
    *,
    name: str,
    reference: Volume | None = None,
    progress: CaseProgress | None = None,
) -> Segmentation:
    """Segment a checked CT with a loaded cascade, measure it and score it (nothing written).

    Args:
        cascade: the loaded models.
        ct: the CT (from :func:`read_ct` or :func:`livseg.io.as_volume`).
        name: the case name.
        reference: reference labels in the CT's geometry: adds the LiTS scores.
        progress: ``(case, stage, done, total)`` callback.

    Raises:
        InputError: the CT is not usable (:func:`check_ct`).
    """
    from livseg.report.measurements import measure

    check_ct(ct.image, ct.source, cascade.check_ct)
    cb = (lambda stage, d, n: progress(name, stage, d, n)) if progress else None
    with collect_warnings() as seen:
        result = cascade.segment(ct.image, cb, source=ct.source)
    why = result.labels.geometry_mismatch(ct.image)
    if why:  # the contract of this module: never flipped
        raise LivsegError(f"{ct.source}: internal error, output geometry differs ({why})")
    with timed(result.timings, "report"):
        m = measure(result.labels)
        scores = case_scores(result.labels, reference, name) if reference is not None else None
    if m.liver_found and m.incomplete_coverage:
        msg = (
            f"{ct.source}: the liver touches the first or last slice: coverage is incomplete, "
            "the liver volume is a lower bound"
        )
        log.warning(msg)
        seen.append(msg)
    result.warnings[:] = list(dict.fromkeys([*result.warnings, *seen]))
    return Segmentation(name, ct, result, m, reference, scores, _model_meta(cascade))


def _check_dicom_seg_liver(case: Segmentation, dicom_seg: bool) -> None:
    if dicom_seg and not case.result.liver_found:
        raise LivsegError(
            f"{case.input.source}: no liver found, so there is nothing to store in a DICOM-SEG; "
            "nothing was written (run without --dicom-seg to get the "
            "all-background label file and measurements with liver_found false)"
        )


# --- writing -------------------------------------------------------------------------------------


def _case_meta(case: Segmentation, outs: dict[str, Path]) -> dict[str, Any]:
    """The ``extra`` facts of a case's measurements JSON."""
    image = case.input.image
    meta = {
        "input": case.input.source,
        "input_kind": "dicom" if case.input.is_dicom else "file" if case.input.path else "memory",
        **case.input.series,
        "shape_zyx": list(image.shape),
        "spacing_zyx_mm": list(image.spacing),
        "orientation": image.orientation_codes(),
        **case.meta,
        "liver_probability": case.result.liver_probability,
        "warnings": case.warnings,
        "outputs": {k: p.name for k, p in outs.items()},
    }
    if case.scores is not None:
        meta["scores"] = case.scores
    meta["timings_s"] = {k: round(v, 3) for k, v in case.timings.items()}
    return meta


def _write_labels(case: Segmentation, tmp: dict[str, Path]) -> None:
    """The label file (and the DICOM-SEG when asked) into the temporary paths ``tmp``."""
    from livseg.io import write_volume
    from livseg.io.nifti import is_nifti

    path = case.input.path
    reference = path if path is not None and is_nifti(path) else case.input.image
    write_volume(case.labels, tmp["labels"], overwrite=True, reference=reference)
    if "dicom_seg" in tmp:
        from livseg.report.dicom_seg import write_dicom_seg

        write_dicom_seg(
            case.labels,
            path,
            tmp["dicom_seg"],
            overwrite=True,
            series_uid=case.input.series.get("series_uid"),
        )


def _write_reports(case: Segmentation, outs: dict[str, Path], tmp: dict[str, Path]) -> None:
    """Overlay PNG, measurements JSON + lesion CSV and HTML report into the paths ``tmp``."""
    from livseg.report.measurements import write_measurements

    with timed(case.result.timings, "report"):
        if "overlay" in tmp:
            from livseg.report.overlay import write_overlay

            title = (
                case.name if case.input.path is None else f"{case.name}  ({case.input.path.name})"
            )
            write_overlay(
                case.input.image,
                case.labels,
                tmp["overlay"],
                reference=case.reference,
                overwrite=True,
                title=title,
            )
    meta = _case_meta(case, outs)
    write_measurements(
        case.measurements, tmp["measurements"], tmp["lesions"], overwrite=True, extra=meta
    )
    if "report" in tmp:
        from livseg.report.html import write_html_report

        write_html_report(
            tmp["report"],
            case.name,
            case.measurements,
            meta,
            overlay_png=tmp["overlay"],
            overwrite=True,
        )
