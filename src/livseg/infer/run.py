"""``livseg segment``: segment CT files or DICOM series and write every output of each case.

:func:`segment_files` segments a batch of inputs with one set of loaded models;
:func:`segment_case` reads, segments and saves one input given by its path, with the steps of
:mod:`livseg.infer.case`. Each input (a NIfTI/NRRD/MHA file or a DICOM series folder) is named
``<name>`` (:func:`~livseg.infer.case.case_name`: the file name without its extension, or the
folder name) and gets the outputs of :meth:`~livseg.infer.case.Segmentation.save` in ``outdir``
(``<name>_seg.nii.gz``, measurements JSON, lesion CSV, overlay PNG and HTML report, DICOM-SEG
when asked).

**Nothing half-done.** Before the first inference every input of the batch is read and checked
(readable, 3-D, CT-like: :func:`~livseg.infer.case.check_ct`; several at once, the first bad
one in input order reported), every reference is checked
against its input's geometry, and every output location is checked (exists, writable). A case's
outputs are written to temporary files and renamed together at the end, so a failing case
leaves nothing behind; existing outputs are refused unless ``overwrite=True``. The models are
loaded once for the whole batch.

**Cohorts.** :func:`segment_cohort` (what ``livseg segment`` calls) adds ``cohort.csv``, resuming
(``resume=True`` skips the cases whose outputs all exist) and torchrun sharding: every rank
segments its :func:`~livseg.infer.cohort.shard` of the inputs, the checks above run on every
rank before any inference and a failure on one rank stops all of them, a case failing later is
recorded in the table while the rank goes on, and rank 0 writes the table.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livseg.device import usable_cpus
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
from livseg.infer.cohort import (
    COHORT_FILE,
    case_row,
    cohort_csv,
    existing_row,
    failed_row,
    is_done,
    shard,
)
from livseg.infer.pretrained import DEFAULT_MODEL
from livseg.io.atomic import write_text_atomic

if TYPE_CHECKING:
    from livseg.distributed import DistInfo

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
    write: bool = True,
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
        write: False leaves the writing to the caller (:func:`save_case`); the outputs are
            still checked first.

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
    given = ct is not None
    t = time.perf_counter()
    if ct is None:
        ct = read_ct(path, series_uid, cascade.check_ct)
    ref = read_reference(reference, ct.image) if reference is not None else None
    # a CT read earlier (by the batch's checks) adds the time that reading took
    read_s = time.perf_counter() - t + (ct.seconds if given else 0.0)
    _stage(progress, name, "read", 1)
    case = segment_ct(cascade, ct, name=name, reference=ref, progress=progress)
    case.result.timings = {"read": read_s, **case.result.timings}
    case.meta.update(extra or {})
    if not write:
        return case
    return save_case(case, outdir, save, progress)


def save_case(
    case: Segmentation, outdir: Path, save: SaveOptions, progress: CaseProgress | None = None
) -> Segmentation:
    """Write a segmented case's outputs (:meth:`Segmentation.save`) with its ``write`` stage."""
    _stage(progress, case.name, "write", 0)
    case.save(outdir, overwrite=save.overwrite, overlay=save.overlay, dicom_seg=save.dicom_seg)
    _stage(progress, case.name, "write", 1)
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


MAX_CHECK_THREADS = 8
"""Most inputs read at once by the checks before the first inference (decompression, the voxel
checks and numpy release the GIL: on 2 cores the five LiTS cases' checks take 0.74 s in 2
threads against 1.18 s in one; a GPU host's many cores read a batch several times faster)."""

CHECK_MEMORY_PER_THREAD = 2 << 30
"""Memory set aside for each input read at once (a 512 x 512 x 1000 CT is 1 GB as float32, plus
its stored voxels while they are converted)."""


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``, else the free
    physical pages), or None when the system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_threads(n_inputs: int) -> int:
    """Threads for the checks: one per input, at most :data:`MAX_CHECK_THREADS`, the CPUs this
    process may use (shared with the other processes of this node under torchrun) and
    :data:`CHECK_MEMORY_PER_THREAD` per thread of the available memory (shared likewise)."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    processes = max(1, int(local) if local.isdigit() else 1)
    n = min(MAX_CHECK_THREADS, n_inputs, usable_cpus() // processes)
    memory = available_memory()
    if memory is not None:
        n = min(n, memory // processes // CHECK_MEMORY_PER_THREAD)
    return max(1, n)


def _check_input(
    path: Path, ref: str | Path | None, series_uid: str | None, intensities: bool, keep: bool
) -> CtInput | None:
    """Read and check one input (and its reference); the CT when ``keep``."""
    ct = read_ct(path, series_uid, intensities)
    if ref is not None:
        read_reference(ref, ct.image)
    return ct if keep else None


def _check_batch(
    inputs: list[Path],
    refs: list[str | Path | None],
    series_uid: str | None,
    check_intensities: bool,
) -> CtInput:
    """Read and check every input (and its reference) before any inference, several at once
    (:func:`check_threads`); the first failing input, in input order, raises.

    Only the first input is kept in memory (returned); the others are read again in turn.
    """
    pool = ThreadPoolExecutor(check_threads(len(inputs)), thread_name_prefix="livseg-check")
    try:
        checks = [
            pool.submit(_check_input, p, ref, series_uid, check_intensities, k == 0)
            for k, (p, ref) in enumerate(zip(inputs, refs, strict=True))
        ]
        first = checks[0].result()
        for check in checks[1:]:
            check.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after a failure: no more reading
    assert first is not None
    return first


@dataclass
class CohortResult:
    """What one process of :func:`segment_cohort` did.

    Attributes:
        cases: the cases this process segmented (saved), in input order.
        rows: the cohort table's rows: every input's on rank 0, this process's elsewhere.
        table: ``cohort.csv`` when this process wrote it, else None.
        skipped: names of this process's cases whose outputs existed (resume).
        failed: name -> error of this process's cases that failed (torchrun only: a cohort
            goes on past a failing case and records it; a single process stops there).
        rank: this process's torchrun rank (0 alone).
        world_size: number of processes.
    """

    cases: list[Segmentation] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    table: Path | None = None
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    rank: int = 0
    world_size: int = 1


def _join(device: str) -> DistInfo:
    """Join torchrun's process group when there is one (gloo: only rows are exchanged)."""
    from livseg.distributed import env_info, init_distributed

    info = env_info()
    if not info.enabled:
        return info
    import torch

    # a week: ranks wait for the slowest shard at the end, and resumed shards are uneven
    return init_distributed(torch.device("cpu"), backend="gloo", timeout_minutes=7 * 24 * 60)


def _agree(check: Callable[[], Any]) -> Any:
    """``check()`` on every rank; when it fails on any rank, every rank raises.

    Each rank checks its own shard before any inference, so one bad input anywhere stops the
    whole cohort before it starts, with the failing rank's message on every rank.
    """
    from livseg.distributed import active, all_gather_object

    try:
        value, error = check(), None
    except LivsegError as exc:
        value, error = None, exc
    if not active():
        if error is not None:
            raise error
        return value
    errors = all_gather_object(None if error is None else str(error))
    if error is not None:
        raise error
    first = next(((r, e) for r, e in enumerate(errors) if e is not None), None)
    if first is not None:
        raise LivsegError(f"rank {first[0]} stopped the cohort before any inference: {first[1]}")
    return value


def _gather_rows(rows: dict[int, dict[str, Any]], n: int) -> list[dict[str, Any]] | None:
    """Every input's row in input order on rank 0 (None on the other ranks)."""
    from livseg.distributed import all_gather_object, env_info

    parts = all_gather_object(rows)
    if not env_info().is_main:
        return None
    merged = {i: r for part in parts for i, r in part.items()}
    return [merged[i] for i in range(n) if i in merged]


@dataclass(frozen=True)
class _Plan:
    """The inputs of one process and how their outputs are handled."""

    inputs: list[Path]
    names: list[str]
    refs: list[str | Path | None]
    todo: list[int]
    done: list[int]
    save: SaveOptions
    table: Path | None


def _plan(
    inputs: list[Path],
    outdir: Path,
    save: SaveOptions,
    references: Sequence[str | Path] | None,
    info: DistInfo,
    resume: bool,
    table: bool | None,
) -> _Plan:
    """This rank's shard, split into the cases to segment and those already done."""
    names = _check_arguments(inputs, references, save.dicom_seg)
    refs = list(references) if references is not None else [None] * len(inputs)
    mine = shard(inputs, info.rank, info.world_size)
    done = [i for i in mine if resume and is_done(names[i], outdir, save)]
    todo = [i for i in mine if i not in done]
    # resuming replaces a case's partial outputs (a crash between two renames)
    save = replace(save, overwrite=save.overwrite or resume)
    if table is None:
        table = len(inputs) > 1 or info.enabled or resume
    return _Plan(inputs, names, refs, todo, done, save, outdir / COHORT_FILE if table else None)


def _check_plan(plan: _Plan, outdir: Path, series_uid: str | None, intensities: bool):
    """The cheap checks, then every input of the shard read; the first one read (or None)."""
    for i in plan.todo:
        check_outputs(
            output_paths(plan.names[i], outdir, plan.save).values(), outdir, plan.save.overwrite
        )
    if plan.table is not None and _is_main():
        check_outputs([plan.table], outdir, plan.save.overwrite)
    if not plan.todo:
        return None
    return _check_batch(
        [plan.inputs[i] for i in plan.todo],
        [plan.refs[i] for i in plan.todo],
        series_uid,
        intensities,
    )


def _is_main() -> bool:
    """Whether this process is rank 0 (always, without torchrun)."""
    from livseg.distributed import env_info

    return env_info().is_main


def segment_cohort(
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
    resume: bool = False,
    table: bool | None = None,
) -> CohortResult:
    """Segment a cohort: alone, or sharded over the ranks of ``torchrun``.

    Under torchrun (``WORLD_SIZE`` > 1) every rank is given the same ``inputs``; each segments
    its :func:`~livseg.infer.cohort.shard` with its own models (loaded once), skips cases whose
    outputs all exist (``resume`` is implied), records a failing case in the table and goes on;
    rank 0 writes ``cohort.csv``. Alone, it is :func:`segment_files` plus the table.

    Args:
        inputs, outdir, model, device, options, save, references, series_uid, progress,
            cascade: as :func:`segment_files`.
        resume: skip the cases whose outputs all exist (their rows are read back); a case with
            only some outputs is segmented again, replacing them.
        table: write ``cohort.csv`` (default: for more than one input, under torchrun, or when
            resuming).

    Returns:
        :class:`CohortResult`.

    Raises:
        LivsegError: as :func:`segment_files`, before any inference (on every rank when any
            rank's shard fails its checks).
    """
    inputs, outdir = [Path(p) for p in inputs], Path(outdir)
    info = _join(device)
    plan = _agree(
        lambda: _plan(
            inputs, outdir, save or SaveOptions(), references, info, resume or info.enabled, table
        )
    )
    intensities = cascade.check_ct if cascade is not None else True
    first = _agree(lambda: _check_plan(plan, outdir, series_uid, intensities))
    if cascade is None and plan.todo:
        cascade = _agree(lambda: (options or SegmentOptions()).load(model, device))
    result = CohortResult(rank=info.rank, world_size=info.world_size)
    rows: dict[int, dict[str, Any]] = {}
    if plan.todo:
        assert cascade is not None
        shard = _Shard(plan, outdir, cascade, series_uid, progress, result, info, rows)
        shard.run(first)
    for i in plan.done:
        log.info("%s: outputs exist in %s; skipped", plan.names[i], outdir)
        result.skipped.append(plan.names[i])
        rows[i] = existing_row(plan.names[i], str(plan.inputs[i]), outdir, info.rank)
    all_rows = _gather_rows(rows, len(inputs))
    result.rows = all_rows if all_rows is not None else [rows[i] for i in sorted(rows)]
    if plan.table is not None and all_rows is not None:
        write_text_atomic(plan.table, cohort_csv(all_rows), overwrite=True)
        result.table = plan.table
        log.info("cohort table: %s (%d cases)", plan.table, len(all_rows))
    return result


@dataclass
class _Shard:
    """One process's cases, segmented in turn. Reading and writing overlap the segmentation:
    while a case is segmented, the next one is read and the previous one's outputs are written,
    each in a background thread (decompression and compression release the GIL; the steps
    between the networks are single-threaded, and a GPU's work is not the CPU's). A case's
    failure (its reading, segmentation or writing) is reported as that case's, in input order.
    """

    plan: _Plan
    outdir: Path
    cascade: Cascade
    series_uid: str | None
    progress: CaseProgress | None
    result: CohortResult
    info: DistInfo
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)

    def run(self, first: CtInput | None) -> None:
        todo = self.plan.todo
        with (
            ThreadPoolExecutor(1, thread_name_prefix="livseg-read") as reader,
            ThreadPoolExecutor(1, thread_name_prefix="livseg-write") as writer,
        ):
            ahead = writing = None
            for k, i in enumerate(todo):
                this, ahead = ahead, self._read(reader, todo[k + 1]) if k + 1 < len(todo) else None
                try:
                    ct = first if this is None else this.result()  # its errors are this case's
                    case, error = self._segment(i, ct), None
                except LivsegError as exc:
                    case, error = None, exc
                self._finish(writing)  # the previous case's outputs, written meanwhile
                writing = None
                if case is None:
                    self._failed(i, error)
                    continue
                writing = (i, case, writer.submit(save_case, case, self.outdir, self.plan.save))
            self._finish(writing)

    def _read(self, pool: ThreadPoolExecutor, i: int) -> Future:
        return pool.submit(read_ct, self.plan.inputs[i], self.series_uid, self.cascade.check_ct)

    def _segment(self, i: int, ct: CtInput | None) -> Segmentation:
        save = self.plan.save
        return segment_case(
            self.cascade,
            self.plan.inputs[i],
            self.outdir,
            dicom_seg=save.dicom_seg,
            overwrite=save.overwrite,
            overlay=save.overlay,
            reference=self.plan.refs[i],
            name=self.plan.names[i],
            progress=self.progress,
            series_uid=self.series_uid,
            ct=ct,
            write=False,
        )

    def _finish(self, writing: tuple[int, Segmentation, Future] | None) -> None:
        """Wait for a case's outputs (its ``write`` stage) and record its row."""
        if writing is None:
            return
        i, case, done = writing
        _stage(self.progress, case.name, "write", 0)
        try:
            done.result()
        except LivsegError as exc:
            self._failed(i, exc)
            return
        _stage(self.progress, case.name, "write", 1)
        self.result.cases.append(case)
        self.rows[i] = case_row(case, self.info.rank)

    def _failed(self, i: int, exc: LivsegError) -> None:
        """Alone: raise. Under torchrun: log, record the failure and go on."""
        if not self.info.enabled:
            raise exc
        name = self.plan.names[i]
        log.error("%s: failed: %s", name, exc)
        self.result.failed[name] = str(exc)
        self.rows[i] = failed_row(name, str(self.plan.inputs[i]), str(exc), self.info.rank)


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
    """Segment several inputs with one set of loaded models.

    Everything that can be checked is checked before the first inference (module docstring).
    No cohort table is written; :func:`segment_cohort` (``livseg segment``) adds it, resuming
    and torchrun sharding.

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
    return segment_cohort(
        inputs,
        outdir,
        model=model,
        device=device,
        options=options,
        save=save,
        references=references,
        series_uid=series_uid,
        progress=progress,
        cascade=cascade,
        table=False,
    ).cases
