"""Paired comparison of two predictions of the same cases against one reference.

For each mean of :data:`livseg.metrics.lits.INTERVAL_KEYS` (liver and tumour Dice per case, liver
and tumour ASSD): the per-case difference ``b - a``, the mean difference with its paired bootstrap
interval (:func:`livseg.metrics.bootstrap.paired_difference_interval`: cases resampled with both
predictions together; cases where either value is undefined are left out), and the cases that
changed most (largest ``|b - a|``, ties in case order). Positive Dice differences and negative
ASSD differences mean that ``b`` is better.

Outputs (:func:`write_comparison`, atomic, never overwriting unless asked): ``a/`` and ``b/``
hold each prediction's ``per_case.csv`` and ``summary.json``; ``comparison.csv`` has one row per
case (``case``, then ``<key>_a``, ``<key>_b``, ``<key>_diff`` for each key) and
``comparison.json`` the method, ``a`` and ``b`` folders, and for each key ``mean_a``, ``mean_b``,
``difference`` (``{"mean", "low", "high", "n"}``) and ``changed_most`` (``[{"case", "a", "b",
"diff"}]``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livseg.io.atomic import check_writable, write_text_atomic
from livseg.metrics.bootstrap import (
    CONFIDENCE,
    N_RESAMPLES,
    SEED,
    Interval,
    paired_difference_interval,
)
from livseg.metrics.evaluate import CSV_NAME, JSON_NAME, evaluate_folders, write_results
from livseg.metrics.lits import DEFAULT_PENALTY, INTERVAL_KEYS, CaseResult, EvaluationResult

log = logging.getLogger("livseg.metrics.compare")

COMPARISON_CSV = "comparison.csv"
COMPARISON_JSON = "comparison.json"
#: Sub-folders of the output holding each prediction's own results.
SIDES = ("a", "b")
#: Cases listed as "changed most" per metric.
TOP_CASES = 5


@dataclass(frozen=True)
class MetricChange:
    """One metric compared over the cases.

    Attributes:
        key: a key of :data:`livseg.metrics.lits.INTERVAL_KEYS`.
        mean_a, mean_b: the means of each prediction (NaN cases left out).
        difference: mean of ``b - a`` over the cases where both are defined, with its interval.
        changed_most: ``(case, a, b, b - a)`` for the cases of largest ``|b - a|``.
    """

    key: str
    mean_a: float
    mean_b: float
    difference: Interval
    changed_most: tuple[tuple[str, float, float, float], ...]


@dataclass(frozen=True)
class Comparison:
    """Two evaluations of the same cases and their paired comparison.

    Attributes:
        a, b: the two evaluations (same cases, same order).
        metrics: one :class:`MetricChange` per key of :data:`INTERVAL_KEYS`.
    """

    a: EvaluationResult
    b: EvaluationResult
    metrics: tuple[MetricChange, ...]

    @property
    def case_ids(self) -> list[str]:
        """The cases, in order."""
        return [c.case_id for c in self.a.cases]


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _changed_most(
    ids: list[str], a: np.ndarray, b: np.ndarray, top: int
) -> tuple[tuple[str, float, float, float], ...]:
    diff = b - a
    order = sorted(
        (k for k in range(len(ids)) if not math.isnan(diff[k])), key=lambda k: -abs(diff[k])
    )
    return tuple((ids[k], float(a[k]), float(b[k]), float(diff[k])) for k in order[:top])


def compare_results(
    a: EvaluationResult,
    b: EvaluationResult,
    *,
    top: int = TOP_CASES,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Comparison:
    """Compare two evaluations of the same cases (module docstring).

    Raises:
        ValueError: the evaluations hold different cases (or in a different order).
    """
    ids_a = [c.case_id for c in a.cases]
    ids_b = [c.case_id for c in b.cases]
    if ids_a != ids_b:
        raise ValueError(f"the two evaluations hold different cases: {ids_a} vs {ids_b}")
    metrics = []
    for key in INTERVAL_KEYS:
        va, vb = a.values(key), b.values(key)
        metrics.append(
            MetricChange(
                key=key,
                mean_a=_nanmean(va),
                mean_b=_nanmean(vb),
                difference=paired_difference_interval(
                    va, vb, confidence=confidence, n_resamples=n_resamples, seed=seed
                ),
                changed_most=_changed_most(ids_a, va, vb, top),
            )
        )
    return Comparison(a=a, b=b, metrics=tuple(metrics))


def compare_folders(
    pred_a: str | os.PathLike,
    pred_b: str | os.PathLike,
    ref_dir: str | os.PathLike,
    jobs: int = 1,
    penalty: float = DEFAULT_PENALTY,
    on_case: Callable[[CaseResult, int], None] | None = None,
    lesion_rule: str = "intended",
) -> Comparison:
    """Evaluate two prediction folders against one reference folder and compare them.

    Args:
        pred_a, pred_b: folders of predicted label files (paired with the references as
            :func:`livseg.metrics.evaluate.pair_files`).
        ref_dir: reference label files.
        jobs, penalty, lesion_rule: as :func:`livseg.metrics.evaluate.evaluate_folders`.
        on_case: called after each case of either evaluation, ``on_case(result, 2 * n_cases)``.

    Returns:
        The comparison, holding both evaluations.

    Raises:
        InputError: pairing or geometry problems in either folder.
    """

    def wrap(res: CaseResult, n: int) -> None:
        if on_case is not None:
            on_case(res, 2 * n)

    kwargs = {"jobs": jobs, "penalty": penalty, "on_case": wrap, "lesion_rule": lesion_rule}
    a = evaluate_folders(pred_a, ref_dir, **kwargs)
    b = evaluate_folders(pred_b, ref_dir, **kwargs)
    return compare_results(a, b)


def comparison_csv(comp: Comparison) -> str:
    """Per-case values and differences (columns in the module docstring)."""
    buf = io.StringIO()
    columns = ["case"] + [f"{k}_{s}" for k in INTERVAL_KEYS for s in ("a", "b", "diff")]
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    values = {k: (comp.a.values(k), comp.b.values(k)) for k in INTERVAL_KEYS}
    for i, case in enumerate(comp.case_ids):
        row: list[object] = [case]
        for key in INTERVAL_KEYS:
            va, vb = values[key]
            row += [repr(float(va[i])), repr(float(vb[i])), repr(float(vb[i] - va[i]))]
        writer.writerow(row)
    return buf.getvalue()


def comparison_json(comp: Comparison, sources: tuple[str, str] = ("", "")) -> str:
    """The comparison as JSON text (keys in the module docstring)."""
    doc = {
        "method": "paired percentile bootstrap over cases of b - a (livseg.metrics.bootstrap)",
        "confidence": CONFIDENCE,
        "resamples": N_RESAMPLES,
        "seed": SEED,
        "lesion_rule": comp.a.lesion_rule,
        "a": sources[0],
        "b": sources[1],
        "metrics": {
            m.key: {
                "mean_a": m.mean_a,
                "mean_b": m.mean_b,
                "difference": m.difference.as_dict(),
                "changed_most": [
                    {"case": c, "a": va, "b": vb, "diff": d} for c, va, vb, d in m.changed_most
                ],
            }
            for m in comp.metrics
        },
    }
    return json.dumps(doc, indent=2) + "\n"


def comparison_paths(out_dir: str | os.PathLike) -> list[Path]:
    """Every file :func:`write_comparison` writes into ``out_dir``."""
    out = Path(out_dir)
    files = [out / s / name for s in SIDES for name in (CSV_NAME, JSON_NAME)]
    return files + [out / COMPARISON_CSV, out / COMPARISON_JSON]


def write_comparison(
    comp: Comparison,
    out_dir: str | os.PathLike,
    overwrite: bool = False,
    sources: tuple[str, str] = ("", ""),
) -> list[Path]:
    """Write both evaluations and the comparison into ``out_dir`` (module docstring).

    Raises:
        OutputExistsError: a file exists and ``overwrite`` is False (nothing is written).
    """
    paths = comparison_paths(out_dir)
    for path in paths:
        check_writable(path, overwrite)
    out = Path(out_dir)
    for side, result in zip(SIDES, (comp.a, comp.b), strict=True):
        write_results(result, out / side, overwrite=overwrite)
    write_text_atomic(out / COMPARISON_CSV, comparison_csv(comp), overwrite)
    write_text_atomic(out / COMPARISON_JSON, comparison_json(comp, sources), overwrite)
    log.info("wrote the comparison into %s", out)
    return paths


def format_comparison(comp: Comparison, sources: tuple[str, str] = ("a", "b")) -> str:
    """A readable text summary: each metric's means, mean difference with its interval, and the
    cases that changed most."""
    lines = [
        f"a = {sources[0]}",
        f"b = {sources[1]}",
        f"{len(comp.case_ids)} case(s); difference = b - a, {CONFIDENCE:.0%} paired bootstrap "
        f"interval over cases (seed {SEED}, {N_RESAMPLES} resamples)",
        "",
        f"{'metric':<22} {'mean a':>10} {'mean b':>10} {'b - a':>10} {'interval':>22} {'n':>4}",
    ]
    for m in comp.metrics:
        d = m.difference
        lines.append(
            f"{m.key:<22} {m.mean_a:>10.4f} {m.mean_b:>10.4f} {d.mean:>+10.4f} "
            f"{f'[{d.low:+.4f}, {d.high:+.4f}]':>22} {d.n:>4}"
        )
    for m in comp.metrics:
        lines.append("")
        lines.append(f"changed most, {m.key} (case: a -> b, b - a):")
        for case, va, vb, diff in m.changed_most:
            lines.append(f"  {case:<24} {va:.4f} -> {vb:.4f}  {diff:+.4f}")
    return "\n".join(lines)
