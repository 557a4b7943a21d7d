"""``livseg demo``: the whole job on a synthetic CT, with no data needed.

Makes a phantom CT with known liver and tumours (:func:`livseg.phantom.make_phantom`), segments
it with the shipped models (or given checkpoints), scores the result against the phantom's truth
with the LiTS metric set (:func:`livseg.metrics.lits.evaluate_case`) and writes into ``outdir``:

* ``phantom_ct.nii.gz`` and ``phantom_truth.nii.gz``: the input and its truth;
* the outputs of ``livseg segment`` for it (``phantom_ct_seg.nii.gz``, measurements JSON and
  lesion CSV, overlay PNG with the truth drawn dashed, HTML report);
* ``phantom_metrics.json``: the LiTS scores of the case.

The weights are checked before anything is generated or written; a missing shipped model is a
:class:`~livseg.infer.pretrained.MissingWeightsError` naming it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livseg.infer.cascade import Cascade
from livseg.infer.case import CaseProgress, Segmentation, SegmentOptions, output_paths
from livseg.infer.pretrained import DEFAULT_MODEL
from livseg.infer.run import segment_case
from livseg.io.atomic import check_folder_writable, check_writable, write_text_atomic

log = logging.getLogger("livseg.infer.demo")

DEMO_FILES = ("phantom_ct.nii.gz", "phantom_truth.nii.gz", "phantom_metrics.json")


@dataclass
class DemoResult:
    """Outcome of :func:`run_demo`.

    Attributes:
        outdir: the output folder.
        case: the segmentation of the phantom (saved).
        metrics: LiTS per-case scores (flat dict, ``CaseResult.row()`` keys).
        truth_liver_ml: true liver volume (ml).
        truth_tumour_ml: true tumour volume (ml).
        truth_lesions: number of true lesions (6-connected components of at least
            :data:`~livseg.report.measurements.MIN_LESION_VOLUME_ML`).
        seconds: total wall time.
    """

    outdir: Path
    case: Segmentation
    metrics: dict[str, Any]
    truth_liver_ml: float
    truth_tumour_ml: float
    truth_lesions: int
    seconds: float


def run_demo(
    outdir: str | Path = "livseg_demo",
    *,
    model: str = DEFAULT_MODEL,
    device: str = "auto",
    seed: int = 0,
    size: int = 256,
    overwrite: bool = False,
    options: SegmentOptions | None = None,
    cascade: Cascade | None = None,
    progress: CaseProgress | None = None,
) -> DemoResult:
    """Generate a phantom, segment it, evaluate it, write everything.

    Args:
        outdir: output folder (created when missing).
        model: liver model family, a key of :data:`~livseg.infer.pretrained.PAPER_CASCADE`
            (``"crunet"`` or ``"densefcn"``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        seed: phantom seed.
        size: phantom in-plane size (pixels).
        overwrite: replace existing outputs.
        options: model loading options (checkpoint folders instead of the shipped models...).
        cascade: an already loaded cascade (then ``model``, ``device``, ``options`` are
            ignored).
        progress: ``(case, stage, done, total)`` callback; the first stage is ``phantom``.

    Raises:
        MissingWeightsError: a shipped model is not installed (nothing is written).
        OutputExistsError: an output exists and ``overwrite`` is False (nothing is written).
        OutputError: ``outdir`` cannot be written (nothing is written).
    """
    from livseg.io import write_volume
    from livseg.phantom import make_phantom
    from livseg.report.measurements import measure

    t0 = time.perf_counter()
    outdir = Path(outdir)
    paths = [outdir / f for f in DEMO_FILES]
    check_folder_writable(outdir)
    for p in [*paths, *output_paths("phantom_ct", outdir).values()]:
        check_writable(p, overwrite)
    if cascade is None:
        cascade = (options or SegmentOptions()).load(model, device)
    if progress is not None:
        progress("phantom_ct", "phantom", 0, 1)
    image, truth = make_phantom(seed, size)
    ct_path, truth_path, metrics_path = paths
    write_volume(image, ct_path, overwrite=overwrite)
    write_volume(truth, truth_path, overwrite=overwrite)
    if progress is not None:
        progress("phantom_ct", "phantom", 1, 1)
    case = segment_case(
        cascade,
        ct_path,
        outdir,
        overwrite=overwrite,
        reference=truth_path,
        progress=progress,
        extra={"demo_seed": seed, "demo_size": size},
    )
    row = case.scores or {}
    tm = measure(truth)
    doc = {
        "seed": seed,
        "size": size,
        "liver_model": cascade.liver.name,
        "tumour_model": cascade.tumour.name if cascade.tumour else None,
        "truth": {
            "liver_ml": tm.liver_volume_ml,
            "tumour_ml": tm.tumour_volume_ml,
            "lesions": tm.lesion_count,
        },
        "scores": row,
    }
    write_text_atomic(metrics_path, json.dumps(doc, indent=2) + "\n", overwrite)
    return DemoResult(
        outdir,
        case,
        row,
        tm.liver_volume_ml,
        tm.tumour_volume_ml,
        tm.lesion_count,
        time.perf_counter() - t0,
    )
