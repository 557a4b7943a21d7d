"""Cohorts: which inputs a torchrun rank segments, which are done, and the cohort table.

``torchrun --nnodes N --nproc_per_node P -m livseg segment INPUTS... -o OUT`` (or
:func:`livseg.infer.run.segment_cohort`) gives every rank the same argument list;
:func:`shard` deals the inputs out by sorted path, round robin, so the split is deterministic
and needs no communication. A case whose outputs all exist is *done* (:func:`is_done`) and is
skipped when resuming; its row of the cohort table is read back from its measurements JSON.

``cohort.csv`` (:data:`COHORT_FILE`) has one row per input, in the order given: the case's
measurements (liver and tumour volumes in ml, burden, lesion count, coverage), its status
(``segmented``, ``existing`` or ``failed``), seconds, warnings and, with references, the LiTS
Dice scores. Rank 0 gathers every rank's rows and writes it (atomically) at the end.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from livseg.infer.case import SaveOptions, Segmentation, output_paths

__all__ = [
    "COHORT_FILE",
    "COLUMNS",
    "shard",
    "is_done",
    "case_row",
    "existing_row",
    "failed_row",
    "cohort_csv",
]

COHORT_FILE = "cohort.csv"

#: the columns of ``cohort.csv``, in order
COLUMNS = (
    "case",
    "input",
    "status",
    "liver_found",
    "liver_ml",
    "tumour_ml",
    "tumour_burden",
    "lesions",
    "incomplete_coverage",
    "liver_dice",
    "tumour_dice",
    "seconds",
    "warnings",
    "error",
    "rank",
)


def shard(inputs: Sequence[str | Path], rank: int, world_size: int) -> list[int]:
    """The indices (into ``inputs``, ascending) of the inputs that rank ``rank`` segments.

    The inputs are sorted by path and dealt out round robin, so every rank computes the same
    split from the same arguments, whatever their order on the command line.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    order = sorted(range(len(inputs)), key=lambda i: (str(inputs[i]), i))
    return sorted(order[rank::world_size])


def is_done(name: str, outdir: Path, save: SaveOptions) -> bool:
    """Whether every output of case ``name`` (as ``save`` asks for them) exists."""
    return all(p.is_file() for p in output_paths(name, outdir, save).values())


def _row(case: str, source: str, status: str, rank: int, doc: dict[str, Any]) -> dict[str, Any]:
    """A cohort row from a measurements document (the ``_measurements.json`` contents)."""
    extra = doc.get("extra", {})
    scores = extra.get("scores") or {}
    timings = extra.get("timings_s") or {}
    burden = doc.get("tumour_burden")
    return {
        "case": case,
        "input": source,
        "status": status,
        "liver_found": doc.get("liver_found"),
        "liver_ml": _rounded(doc.get("liver_volume_ml"), 2),
        "tumour_ml": _rounded(doc.get("tumour_volume_ml"), 3),
        "tumour_burden": _rounded(burden, 5),
        "lesions": doc.get("lesion_count"),
        "incomplete_coverage": doc.get("incomplete_coverage"),
        "liver_dice": _rounded(scores.get("liver_dice"), 4),
        "tumour_dice": _rounded(scores.get("tumor_dice"), 4),
        "seconds": _rounded(sum(timings.values()), 2) if timings else None,
        "warnings": " | ".join(extra.get("warnings") or []),
        "error": "",
        "rank": rank,
    }


def _rounded(value: Any, digits: int) -> Any:
    return round(float(value), digits) if value is not None else None


def case_row(case: Segmentation, rank: int) -> dict[str, Any]:
    """The row of a case segmented now (from its written measurements JSON)."""
    doc = json.loads(case.outputs["measurements"].read_text(encoding="utf-8"))
    return _row(case.name, case.input.source, "segmented", rank, doc)


def existing_row(name: str, source: str, outdir: Path, rank: int) -> dict[str, Any]:
    """The row of a case segmented by an earlier run (its outputs exist)."""
    path = output_paths(name, outdir)["measurements"]
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return failed_row(name, source, f"{path}: unreadable measurements ({exc})", rank)
    return _row(name, source, "existing", rank, doc)


def failed_row(name: str, source: str, error: str, rank: int) -> dict[str, Any]:
    """The row of a case that failed (no outputs were written for it)."""
    row = dict.fromkeys(COLUMNS)
    row.update(case=name, input=source, status="failed", error=error, rank=rank, warnings="")
    return row


def cohort_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The text of ``cohort.csv``: a header and ``rows`` (missing values empty)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    return buf.getvalue()
