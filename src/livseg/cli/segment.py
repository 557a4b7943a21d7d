"""``livseg segment`` and ``livseg demo``: segmenting CTs with the shipped (or given) models."""

from __future__ import annotations

import argparse
import sys
import time

from livseg.cli import EXIT_ERROR, EXIT_OK, Register, progress


class _StageProgress:
    """Progress callback ``(case, stage, done, total)`` of ``segment`` and ``demo``.

    On a terminal: one bar per case and stage (its rate counts from the first report, so the
    first batch, which includes the model warm-up, does not give a nonsense rate). Otherwise
    (a log file, a pipe): one line per case and stage when it ends, with its elapsed time.
    """

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.bar = None
        self.key: tuple[str, str] | None = None
        self.start = time.perf_counter()

    def __call__(self, case: str, stage: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.key != (case, stage):
            self.close()
            self.key = (case, stage)
            if self.tty:
                unit = "slice" if stage in ("liver", "tumour") else "step"
                self.bar = progress(
                    total=total, initial=done, desc=f"{case} {stage}", unit=unit, leave=False
                )
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        if done >= total and not self.tty:
            now = time.perf_counter()
            count = f" {total} slices," if stage in ("liver", "tumour") else ""
            print(f"{case}: {stage}{count} {now - self.start:.1f} s", file=sys.stderr, flush=True)
            self.start = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from livseg.infer.pretrained import DEFAULT_MODEL, DEFAULT_PAPER, PAPER_CASCADE

    p.add_argument(
        "--model",
        choices=tuple(PAPER_CASCADE),
        default=DEFAULT_MODEL,
        help="liver model family of the shipped weights",
    )
    cascade = p.add_mutually_exclusive_group()
    cascade.add_argument(
        "--paper",
        dest="paper",
        action="store_true",
        default=DEFAULT_PAPER,
        help="the papers' cascade: the liver model on every slice, no coarse 3-D stage"
        + (" (the default)" if DEFAULT_PAPER else ""),
    )
    cascade.add_argument(
        "--livseg",
        dest="paper",
        action="store_false",
        help="livseg's cascade: a coarse 3-D stage places the liver, the liver model runs in "
        "its region, fold ensembles" + ("" if DEFAULT_PAPER else " (the default)"),
    )
    p.add_argument(
        "--coarse-model",
        metavar="DIR",
        default=None,
        help="coarse 3-D liver stage folder (a checkpoint or fold*/ ensemble) instead of the "
        "shipped one; also adds it to the papers' cascade",
    )
    p.add_argument(
        "--liver-model",
        metavar="DIR",
        default=None,
        help="liver checkpoint folder (model.safetensors + config.json) instead of the shipped one",
    )
    p.add_argument(
        "--tumour-model",
        "--tumor-model",
        metavar="DIR",
        default=None,
        help="tumour checkpoint folder instead of the shipped one",
    )
    p.add_argument(
        "--fold",
        dest="folds",
        type=int,
        action="append",
        metavar="K",
        default=None,
        help="use only fold K's models of each fold ensemble (repeatable; like nnU-Net's -f; "
        "default every fold): --fold 0 runs fold 0's coarse, liver and tumour models, the "
        "cascade cross-validation scored on its held-out cases, in half the time",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx", "bf16"),
        default="auto",
        help="how the networks run: ONNX Runtime (CPU, faster, same results; needs "
        'pip install "livseg[onnx]"), PyTorch, PyTorch in bfloat16 (faster on CPUs with '
        "AVX-512 BF16 or AMX and on GPUs; an approximation), or auto (ONNX Runtime on the CPU "
        "when installed)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _segment_options(args: argparse.Namespace):
    from livseg.infer.case import SegmentOptions

    return SegmentOptions(
        liver_model=args.liver_model,
        tumour_model=args.tumour_model,
        coarse_model=args.coarse_model,
        paper=args.paper,
        tta=getattr(args, "tta", False),
        batch_size=getattr(args, "batch_size", None),
        backend=args.backend,
        folds=tuple(args.folds) if args.folds else None,
    )


def _case_line(c) -> str:
    """One line of ``livseg segment``'s summary: volumes, lesions, scores, output."""
    m = c.measurements
    if not m.liver_found:
        return f"{c.name}: NO LIVER FOUND -> {c.outputs['labels']}"
    burden = f"{100 * m.tumour_burden:.1f}%" if m.tumour_burden is not None else "-"
    scores = ""
    if c.scores is not None:
        scores = (
            f", liver Dice {c.scores['liver_dice']:.3f} / tumour Dice "
            f"{c.scores['tumor_dice']:.3f} against the reference"
        )
    return (
        f"{c.name}: liver {m.liver_volume_ml:.0f} ml, tumour "
        f"{m.tumour_volume_ml:.1f} ml ({burden}), {m.lesion_count} lesion(s)"
        f"{', INCOMPLETE liver coverage' if m.incomplete_coverage else ''}{scores} "
        f"-> {c.outputs['labels']}"
    )


def _print_cohort(result) -> int:
    """The summary lines of ``livseg segment``; its exit status."""
    where = f"rank {result.rank}: " if result.world_size > 1 else ""
    for c in result.cases:
        print(where + _case_line(c))
    for name in result.skipped:
        print(f"{where}{name}: outputs exist, skipped")
    for name, error in result.failed.items():
        print(f"{where}{name}: FAILED: {error}")
    if result.table is not None:
        print(f"cohort table: {result.table} ({len(result.rows)} cases)")
    return EXIT_ERROR if result.failed else EXIT_OK


def _register_segment(p: argparse.ArgumentParser):
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="CT files (.nii/.nii.gz/.nrrd/.mha) or DICOM series folders",
    )
    p.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="OUTDIR",
        help="output folder: <name>_seg.nii.gz, <name>_measurements.json, "
        "<name>_lesions.csv, <name>_overlay.png, <name>_report.html",
    )
    _add_model_args(p)
    p.add_argument("--tta", action="store_true", help="left-right flip test-time augmentation")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="slices per forward pass (default: 8 on the CPU, 64 on a GPU)",
    )
    p.add_argument(
        "--dicom-seg",
        action="store_true",
        help="also write <name>_seg.dcm, a DICOM-SEG referencing the input series "
        "(DICOM inputs only)",
    )
    p.add_argument(
        "--ref",
        action="append",
        metavar="LABELS",
        default=None,
        help="reference labels (once per input, in order): drawn dashed in the overlay, and "
        "the case's LiTS scores go to the measurements JSON and the report",
    )
    p.add_argument(
        "--no-overlay", action="store_true", help="skip the PNG montage and the HTML report"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip inputs whose outputs all exist (after a crash, or to add cases to a "
        "cohort); implied under torchrun",
    )
    p.add_argument(
        "--series",
        metavar="UID",
        default=None,
        help="SeriesInstanceUID to read when a DICOM folder holds several series "
        "(without it such a folder is refused with the list of its series)",
    )

    def handler(args: argparse.Namespace) -> int:
        from livseg.distributed import shutdown_distributed
        from livseg.infer.case import SaveOptions
        from livseg.infer.run import segment_cohort

        bars = _StageProgress(args.quiet)
        done = False
        try:
            result = segment_cohort(
                args.inputs,
                args.out,
                model=args.model,
                device=args.device,
                options=_segment_options(args),
                save=SaveOptions(
                    overlay=not args.no_overlay,
                    dicom_seg=args.dicom_seg,
                    overwrite=args.overwrite,
                ),
                references=args.ref,
                series_uid=args.series,
                progress=bars,
                resume=args.resume,
            )
            done = True
        finally:
            bars.close()
            shutdown_distributed(sync=done)
        return _print_cohort(result)

    return handler


def _register_demo(p: argparse.ArgumentParser):
    p.add_argument("--out", default="livseg_demo", metavar="DIR", help="output folder")
    _add_model_args(p)
    p.add_argument("--seed", type=int, default=0, help="phantom seed")
    p.add_argument("--size", type=int, default=256, help="phantom in-plane size (pixels)")

    def handler(args: argparse.Namespace) -> int:
        from livseg.infer import run_demo

        bars = _StageProgress(args.quiet)
        try:
            r = run_demo(
                args.out,
                model=args.model,
                device=args.device,
                seed=args.seed,
                size=args.size,
                overwrite=args.overwrite,
                options=_segment_options(args),
                progress=bars,
            )
        finally:
            bars.close()
        m, s = r.case.measurements, r.metrics
        print(f"livseg demo: phantom CT (seed {args.seed}) segmented in {r.seconds:.1f} s")
        print(
            f"  liver : {m.liver_volume_ml:7.1f} ml (truth {r.truth_liver_ml:7.1f} ml), "
            f"Dice {s['liver_dice']:.3f}"
        )
        print(
            f"  tumour: {m.tumour_volume_ml:7.1f} ml (truth {r.truth_tumour_ml:7.1f} ml), "
            f"Dice {s['tumor_dice']:.3f}, lesions {m.lesion_count} (truth "
            f"{r.truth_lesions}), detected {s['lesion_tp']}"
        )
        print(f"  outputs in {r.outdir}/ (open phantom_ct_report.html)")
        return EXIT_OK

    return handler


COMMANDS: list[tuple[str, str, Register]] = [
    ("segment", "segment liver and liver tumours in CT files or DICOM series", _register_segment),
    ("demo", "segment a synthetic phantom CT with the shipped models and score it", _register_demo),
]
