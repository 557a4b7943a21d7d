"""Folder-level LiTS evaluation: pair files, check geometry, score, write CSV + JSON.

**Pairing rule.** Every volume file in the reference folder (``.nii``, ``.nii.gz``, ``.nrrd``,
``.nhdr``, ``.mha``, ``.mhd``; hidden files ignored; not recursive) is one case, named by its file
name without extension -- except that when the folder holds LiTS ``segmentation-N`` files, its
``volume-N`` files are the CT images and are skipped (``--ref`` may be a whole LiTS folder). Its
prediction is the file of the prediction folder whose name without
extension is

1. identical to the reference's (``segmentation-3.nii`` <-> ``segmentation-3.nii.gz``), or
2. for LiTS names, the other member of the pair ``segmentation-N`` <-> ``volume-N``
   (challenge submissions name predictions after the reference ``segmentation-N``; some tools
   name them after the CT, ``volume-N``);
3. either of these followed by ``_seg``, the label files of ``livseg segment``
   (``volume-3_seg.nii.gz`` <-> ``segmentation-3.nii``; ``case_7_seg.nii.gz`` <-> ``case_7.nii``),
   so ``livseg evaluate --pred`` takes ``livseg segment``'s output folder as it is
   (:func:`prediction_stems`).

Exactly one prediction must match (any supported extension); none or several is an
:class:`~livseg.errors.InputError` naming the case. Prediction files without a reference are
ignored with a warning.

**Checks.** Prediction and reference must have the same shape, spacing (within 1e-3 mm) and
direction (within 1e-3); otherwise an :class:`~livseg.errors.InputError` names the case and both
files. A different origin only logs a warning (voxels are compared index by index). Label values
above 2 are an error. The spacing used for distances is the reference's.

**Outputs** (:func:`write_results`, atomic, never overwriting unless asked): ``per_case.csv``
(columns :data:`livseg.metrics.lits.CASE_COLUMNS` + ``prediction``, ``reference``) and
``summary.json`` (keys :data:`livseg.metrics.lits.SUMMARY_KEYS` and counts at the top level,
plus ``definitions_version``, ``lesion_rule``, ``penalty``, ``confidence_intervals`` -- method,
confidence, resamples, seed and ``{"mean", "low", "high", "n"}`` for each mean of
:data:`livseg.metrics.lits.INTERVAL_KEYS` -- and ``cases``: the file pairs). Non-finite values
are written as JSON ``NaN``/``Infinity`` (Python's json module reads them).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livseg.errors import InputError
from livseg.io import READABLE_SUFFIXES, SEGMENT_SUFFIX
from livseg.io.atomic import check_writable, write_text_atomic
from livseg.metrics.bootstrap import CONFIDENCE, N_RESAMPLES, SEED
from livseg.metrics.lesions import check_rule
from livseg.metrics.lits import (
    CASE_COLUMNS,
    DEFAULT_PENALTY,
    SUMMARY_KEYS,
    CaseResult,
    EvaluationResult,
    evaluate_case,
    summarize,
)

log = logging.getLogger("livseg.metrics.evaluate")

CSV_NAME = "per_case.csv"
JSON_NAME = "summary.json"
_LITS = re.compile(r"^(segmentation|volume)-(\d+)$", re.I)


@dataclass(frozen=True)
class CasePair:
    """A prediction file and its reference file."""

    case_id: str
    pred: Path
    ref: Path


def _stem(path: Path) -> str | None:
    name = path.name
    for suffix in READABLE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _volume_files(folder: Path) -> dict[Path, str]:
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    out = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        stem = _stem(path)
        if stem is not None:
            out[path] = stem
    return out


def _is_lits(stem: str, kind: str) -> bool:
    m = _LITS.match(stem)
    return bool(m) and m.group(1).lower() == kind


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _reference_files(ref_dir: Path) -> dict[Path, str]:
    refs = _volume_files(ref_dir)
    if any(_is_lits(stem, "segmentation") for stem in refs.values()):
        # A LiTS folder holds the CT images (volume-N) beside the references: skip the images.
        refs = {p: s for p, s in refs.items() if not _is_lits(s, "volume")}
    if not refs:
        raise InputError(f"{ref_dir}: no reference label file ({', '.join(READABLE_SUFFIXES)})")
    return refs


def prediction_stems(ref_stem: str) -> list[str]:
    """The prediction names (without extension) that pair with reference ``ref_stem``.

    The reference's own name, the other member of a LiTS pair (``segmentation-N`` <->
    ``volume-N``), and each of these with the ``_seg`` suffix of ``livseg segment``'s label
    files (``volume-3_seg``), in that order.
    """
    stems = [ref_stem]
    m = _LITS.match(ref_stem)
    if m:
        other = "volume" if m.group(1).lower() == "segmentation" else "segmentation"
        stems.append(f"{other}-{m.group(2)}")
    return stems + [f"{s}{SEGMENT_SUFFIX}" for s in stems]


def _find_prediction(pred_dir: Path, ref: Path, stem: str, by_stem: dict[str, list[Path]]) -> Path:
    wanted = prediction_stems(stem)
    found = [p for w in wanted for p in by_stem.get(w.lower(), [])]
    if not found:
        raise InputError(
            f"{pred_dir}: no prediction for reference {ref.name} (looked for "
            f"{' or '.join(wanted)} with extension {', '.join(READABLE_SUFFIXES)})"
        )
    if len(found) > 1:
        raise InputError(
            f"{pred_dir}: several predictions for reference {ref.name}: "
            f"{', '.join(p.name for p in found)}"
        )
    return found[0]


def pair_files(pred_dir: str | os.PathLike, ref_dir: str | os.PathLike) -> list[CasePair]:
    """Pair every reference file with its prediction (rule in the module docstring).

    Args:
        pred_dir: folder of predicted label files.
        ref_dir: folder of reference label files.

    Returns:
        One pair per reference file, sorted naturally by case name.

    Raises:
        InputError: a folder is missing, holds no reference, or a reference has no or several
            predictions.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    refs = _reference_files(ref_dir)
    preds = _volume_files(pred_dir)
    by_stem: dict[str, list[Path]] = {}
    for path, stem in preds.items():
        by_stem.setdefault(stem.lower(), []).append(path)
    pairs = [
        CasePair(stem, _find_prediction(pred_dir, ref, stem, by_stem), ref)
        for ref, stem in refs.items()
    ]
    used = {p.pred for p in pairs}
    unused = sorted(p.name for p in preds if p not in used)
    if unused:
        log.warning(
            "%s: %d prediction file(s) without a reference ignored: %s",
            pred_dir,
            len(unused),
            ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else ""),
        )
    pairs.sort(key=lambda p: _natural(p.case_id))
    return pairs


def load_pair(pair: CasePair) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Read a pair as label arrays and check their geometry.

    Returns:
        ``(pred, ref, spacing)``: (Z, Y, X) uint8 arrays and the reference's (sz, sy, sx) mm.

    Raises:
        InputError: unreadable file, shape/spacing/direction mismatch, labels above 2.
    """
    from livseg.io import read_volume

    ref = read_volume(pair.ref, kind="label")
    pred = read_volume(pair.pred, kind="label")
    what = f"case {pair.case_id} (prediction {pair.pred}, reference {pair.ref})"
    if pred.shape != ref.shape:
        raise InputError(f"{what}: shape {pred.shape} != reference shape {ref.shape}")
    if not np.allclose(pred.spacing, ref.spacing, rtol=0, atol=1e-3):
        raise InputError(f"{what}: spacing {pred.spacing} mm != reference spacing {ref.spacing} mm")
    if not np.allclose(pred.direction, ref.direction, rtol=0, atol=1e-3):
        raise InputError(
            f"{what}: orientation (direction matrix) differs from the reference; "
            "resample or reorient the prediction onto the reference grid"
        )
    if not np.allclose(pred.origin, ref.origin, rtol=0, atol=1e-2):
        log.warning(
            "%s: origin %s differs from the reference's %s; comparing voxel by voxel",
            what,
            pred.origin,
            ref.origin,
        )
    for vol, path in ((pred, pair.pred), (ref, pair.ref)):
        top = int(vol.array.max(initial=0))
        if top > 2:
            raise InputError(
                f"{path}: label value {top} found; expected 0 background, 1 liver, 2 tumour"
            )
    return pred.array, ref.array, ref.spacing


def _evaluate_pair(pair: CasePair, penalty: float, lesion_rule: str) -> CaseResult:
    pred, ref, spacing = load_pair(pair)
    return evaluate_case(
        pred, ref, spacing, penalty=penalty, case_id=pair.case_id, lesion_rule=lesion_rule
    )


def _evaluate_pairs(
    pairs: list[CasePair],
    jobs: int,
    penalty: float,
    lesion_rule: str,
    on_case: Callable[[CaseResult, int], None] | None,
) -> dict[str, CaseResult]:
    """Evaluate pairs in this process (jobs = 1) or in a pool; results by case id."""
    results: dict[str, CaseResult] = {}

    def done(res: CaseResult) -> None:
        results[res.case_id] = res
        if on_case is not None:
            on_case(res, len(pairs))

    if jobs == 1 or len(pairs) == 1:
        for pair in pairs:
            done(_evaluate_pair(pair, penalty, lesion_rule))
        return results
    with ProcessPoolExecutor(max_workers=min(jobs, len(pairs))) as pool:
        futures = [pool.submit(_evaluate_pair, pair, penalty, lesion_rule) for pair in pairs]
        try:
            for fut in as_completed(futures):
                done(fut.result())
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return results


def evaluate_folders(
    pred_dir: str | os.PathLike,
    ref_dir: str | os.PathLike,
    jobs: int = 1,
    penalty: float = DEFAULT_PENALTY,
    on_case: Callable[[CaseResult, int], None] | None = None,
    lesion_rule: str = "intended",
) -> EvaluationResult:
    """Evaluate a folder of predictions against a folder of references (LiTS metric set).

    Args:
        pred_dir: predicted label files (0/1/2).
        ref_dir: reference label files; their spacing is used for distances (mm).
        jobs: number of worker processes (1 = in this process).
        penalty: value of undefined distance/volume metrics (see :mod:`livseg.metrics.lits`).
        on_case: called as ``on_case(case_result, n_cases)`` after each case (any order), e.g.
            to drive a progress bar.
        lesion_rule: ``"intended"`` (default) or ``"codalab"`` (:mod:`livseg.metrics.lesions`).

    Returns:
        Per-case results (sorted by case name), the summary and the file pairs.

    Raises:
        InputError: pairing or geometry problems (module docstring).
        ValueError: ``jobs`` < 1 or unknown lesion rule.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    check_rule(lesion_rule)
    pairs = pair_files(pred_dir, ref_dir)
    log.info("evaluating %d case(s) with %d job(s)", len(pairs), jobs)
    results = _evaluate_pairs(pairs, jobs, penalty, lesion_rule, on_case)
    cases = tuple(results[p.case_id] for p in pairs)
    return EvaluationResult(
        cases=cases,
        summary=summarize(cases, penalty),
        penalty=float(penalty),
        pairs=tuple((str(p.pred), str(p.ref)) for p in pairs),
        lesion_rule=lesion_rule,
    )


def _csv_value(value: object) -> object:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return value


def results_csv(result: EvaluationResult) -> str:
    """The per-case CSV text (one row per case)."""
    buf = io.StringIO()
    columns = list(CASE_COLUMNS) + (["prediction", "reference"] if result.pairs else [])
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for k, row in enumerate(result.rows()):
        if result.pairs:
            row = {**row, "prediction": result.pairs[k][0], "reference": result.pairs[k][1]}
        writer.writerow({c: _csv_value(row[c]) for c in columns})
    return buf.getvalue()


def intervals_doc(result: EvaluationResult) -> dict[str, object]:
    """The ``confidence_intervals`` entry of ``summary.json`` (method and one entry per mean)."""
    return {
        "method": "percentile bootstrap over cases (livseg.metrics.bootstrap)",
        "confidence": CONFIDENCE,
        "resamples": N_RESAMPLES,
        "seed": SEED,
        "metrics": {k: v.as_dict() for k, v in result.intervals().items()},
    }


def results_json(result: EvaluationResult) -> str:
    """The summary JSON text (keys documented in the module docstring)."""
    doc: dict[str, object] = {
        "definitions_version": result.definitions_version,
        "lesion_rule": result.lesion_rule,
        "penalty": result.penalty,
    }
    doc.update(result.summary)
    doc["confidence_intervals"] = intervals_doc(result)
    doc["cases"] = [
        {
            "case": c.case_id,
            **(
                {"prediction": result.pairs[k][0], "reference": result.pairs[k][1]}
                if result.pairs
                else {}
            ),
        }
        for k, c in enumerate(result.cases)
    ]
    return json.dumps(doc, indent=2) + "\n"


def write_results(
    result: EvaluationResult, out_dir: str | os.PathLike, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``per_case.csv`` and ``summary.json`` into ``out_dir`` (created if needed).

    Raises:
        OutputExistsError: a file exists and ``overwrite`` is False (nothing is written).
    """
    out_dir = Path(out_dir)
    csv_path, json_path = out_dir / CSV_NAME, out_dir / JSON_NAME
    check_writable(csv_path, overwrite)
    check_writable(json_path, overwrite)
    write_text_atomic(csv_path, results_csv(result), overwrite)
    write_text_atomic(json_path, results_json(result), overwrite)
    log.info("wrote %s and %s", csv_path, json_path)
    return csv_path, json_path


def format_table(result: EvaluationResult) -> str:
    """A readable text table: one line per case, then the summary with its intervals."""
    head = (
        f"{'case':<20} {'liver Dice':>10} {'ASSD mm':>8} {'MSD mm':>8} {'tumour Dice':>11} "
        f"{'lesions ref/pred':>16} {'TP':>4} {'FP':>4} {'FN':>4}"
    )
    lines = [head, "-" * len(head)]
    for c in result.cases:
        m = c.lesion_matching
        lines.append(
            f"{c.case_id[:20]:<20} {c.liver.dice:>10.4f} {c.liver.assd:>8.2f} "
            f"{c.liver.msd:>8.2f} {c.tumor.dice:>11.4f} "
            f"{f'{m.n_ref}/{m.n_pred}':>16} {c.detection.tp:>4} {c.detection.fp:>4} "
            f"{c.detection.fn:>4}"
        )
    lines.append("")
    lines.append(
        f"summary over {len(result.cases)} case(s) ({result.definitions_version}, lesion rule "
        f"{result.lesion_rule}, penalty {result.penalty:g}); [{CONFIDENCE:.0%} bootstrap "
        f"interval over cases, seed {SEED}]:"
    )
    intervals = result.intervals()
    for key in SUMMARY_KEYS:
        ci = intervals.get(key)
        extra = f"  [{ci.low:.4f}, {ci.high:.4f}] (n={ci.n})" if ci is not None else ""
        lines.append(f"  {key:<32} {result.summary[key]:.4f}{extra}")
    return "\n".join(lines)
