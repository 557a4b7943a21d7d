"""K-fold cross-validation splits by patient, saved as JSON.

Cases of one patient (e.g. two contrast phases of one person) always fall in the same fold, so
validation never sees a patient the model trained on.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from livseg.errors import InputError, LivsegError
from livseg.io.atomic import write_text_atomic

logger = logging.getLogger(__name__)

SPLITS_FORMAT = "livseg-splits-1"

Split = dict[str, list[str]]


def _patient_function(
    ids: list[str], patient_of: Mapping[str, str] | Callable[[str], str] | None
) -> Callable[[str], str]:
    """case id -> patient id from ``patient_of`` (default: every case is its own patient).

    Raises:
        LivsegError: A mapping that lacks some of ``ids``.
    """
    if patient_of is None:
        return str
    if isinstance(patient_of, Mapping):
        missing = [c for c in ids if c not in patient_of]
        if missing:
            raise LivsegError(f"no patient given for cases: {', '.join(sorted(missing))}")
        return lambda c: str(patient_of[c])
    return lambda c: str(patient_of(c))


def kfold_by_patient(
    case_ids: Sequence[str],
    n_folds: int,
    seed: int = 0,
    patient_of: Mapping[str, str] | Callable[[str], str] | None = None,
) -> list[Split]:
    """Split cases into ``n_folds`` folds so that no patient is in two folds.

    Patients (sorted, then shuffled with ``numpy.random.default_rng(seed)``) are dealt into folds
    as evenly as possible; the result depends only on the set of case ids, ``n_folds``, ``seed``
    and ``patient_of``, not on the input order.

    Args:
        case_ids: Unique case ids.
        n_folds: Number of folds, 2 <= n_folds <= number of patients.
        seed: Shuffle seed.
        patient_of: Mapping or function case_id -> patient id; default: every case is its own
            patient.

    Returns:
        One dict per fold: ``{"train": [...], "val": [...]}`` (sorted case ids); the "val" lists
        partition the cases.

    Raises:
        LivsegError: Duplicate case ids, n_folds < 2 or more folds than patients, or a case
            missing from ``patient_of``.
    """
    ids = [str(c) for c in case_ids]
    if len(set(ids)) != len(ids):
        dup = sorted({c for c in ids if ids.count(c) > 1})
        raise LivsegError(f"duplicate case ids: {', '.join(dup)}")
    patient = _patient_function(ids, patient_of)
    patients = sorted({patient(c) for c in ids})
    if n_folds < 2:
        raise LivsegError(f"n_folds must be >= 2, got {n_folds}")
    if n_folds > len(patients):
        raise LivsegError(f"n_folds={n_folds} exceeds the number of patients ({len(patients)})")
    order = np.random.default_rng(seed).permutation(len(patients))
    fold_of = {patients[p]: k % n_folds for k, p in enumerate(order)}
    case_fold = {c: fold_of[patient(c)] for c in ids}
    return [_fold(case_fold, f) for f in range(n_folds)]


def _fold(case_fold: dict[str, int], f: int) -> Split:
    """Fold ``f``: its cases validate, the others train (sorted case ids)."""
    return {
        "train": sorted(c for c, k in case_fold.items() if k != f),
        "val": sorted(c for c, k in case_fold.items() if k == f),
    }


def save_splits(
    splits: Sequence[Split], path: str | os.PathLike, overwrite: bool = False, **info
) -> Path:
    """Write splits to JSON atomically.

    Args:
        splits: As returned by :func:`kfold_by_patient`.
        path: Output .json file.
        overwrite: Replace an existing file.
        **info: Extra JSON-serialisable fields recorded with the splits (e.g. seed).

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    doc = {
        "format": SPLITS_FORMAT,
        **info,
        "folds": [{"train": list(s["train"]), "val": list(s["val"])} for s in splits],
    }
    return write_text_atomic(path, json.dumps(doc, indent=1) + "\n", overwrite)


def load_splits(path: str | os.PathLike) -> list[Split]:
    """Read splits written by :func:`save_splits` (a bare list of folds is accepted too).

    Raises:
        InputError: Missing or malformed file, or a fold whose train and val lists overlap.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: splits file not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read splits ({exc})") from exc
    folds = doc.get("folds") if isinstance(doc, dict) else doc
    if not isinstance(folds, list) or not folds:
        raise InputError(f"{path}: no 'folds' list")
    out: list[Split] = []
    for k, f in enumerate(folds):
        if not (
            isinstance(f, dict)
            and isinstance(f.get("train"), list)
            and isinstance(f.get("val"), list)
        ):
            raise InputError(f"{path}: fold {k} must have 'train' and 'val' lists")
        train, val = [str(c) for c in f["train"]], [str(c) for c in f["val"]]
        both = set(train) & set(val)
        if both:
            raise InputError(
                f"{path}: fold {k} has cases in both train and val: {', '.join(sorted(both))}"
            )
        out.append({"train": train, "val": val})
    return out
