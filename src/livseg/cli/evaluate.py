"""``livseg evaluate``: LiTS metrics of predicted label folders, or a paired comparison of two."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from livseg.cli import EXIT_OK, Register, _progress_enabled, progress

_EVALUATE_EPILOG = """\
examples:
  livseg evaluate --pred PRED --ref REF --out OUT
        per_case.csv and summary.json (LiTS metric set, 95 % bootstrap intervals over cases)
  livseg evaluate --pred PRED --ref REF --out OUT --lesion-rule codalab
        lesion detection and summary exactly as the official CodaLab scorer (bugs included)
  livseg evaluate --pred A --pred B --ref REF --out OUT
        compare two predictions of the same cases: OUT/a, OUT/b, comparison.csv/.json
        (per-case differences b - a, paired bootstrap interval, cases that changed most)
"""


def _register_evaluate(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    parser.epilog = _EVALUATE_EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--pred",
        required=True,
        action="append",
        metavar="DIR",
        help="folder of predicted label files (0 background, 1 liver, 2 tumour); give it twice "
        "(A then B) to compare two predictions",
    )
    parser.add_argument(
        "--ref",
        required=True,
        metavar="DIR",
        help="folder of reference label files (their spacing is used); pairs: "
        "same name, or LiTS segmentation-N <-> volume-N",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder for per_case.csv and summary.json (with two --pred: a/, b/, "
        "comparison.csv, comparison.json)",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="worker processes (default 1)"
    )
    parser.add_argument(
        "--penalty",
        type=float,
        default=None,
        help="value of RVD/ASSD/RMSD/MSD when a mask is empty (default: "
        "livseg.metrics.lits.DEFAULT_PENALTY = 9001, the official scorer's)",
    )
    parser.add_argument(
        "--lesion-rule",
        choices=("intended", "codalab"),
        default="intended",
        help="lesion detection counting: 'intended' (default; the scorer's author's fix, "
        "merged lesions counted individually) or 'codalab' (the official scorer's outputs, "
        "bugs included, for comparison with leaderboard figures)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    def handler(args: argparse.Namespace) -> int:
        from livseg.errors import LivsegError
        from livseg.metrics.lits import DEFAULT_PENALTY

        if args.jobs < 1:
            raise LivsegError(f"--jobs must be >= 1, got {args.jobs}")
        if len(args.pred) > 2:
            raise LivsegError(f"--pred may be given once or twice, got {len(args.pred)} times")
        options = {
            "jobs": args.jobs,
            "penalty": DEFAULT_PENALTY if args.penalty is None else args.penalty,
            "lesion_rule": args.lesion_rule,
        }
        with _CaseProgress(args) as on_case:
            if len(args.pred) == 1:
                return _evaluate_one(args, on_case, options)
            return _evaluate_two(args, on_case, options)

    return handler


class _CaseProgress:
    """Context manager giving an ``on_case(result, total)`` callback that drives a progress bar."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.bar = None

    def __enter__(self):
        def on_case(result, total):
            if self.bar is None:
                self.bar = progress(
                    total=total,
                    desc="evaluate",
                    unit="case",
                    disable=not _progress_enabled(self.args),
                )
            self.bar.update(1)
            self.bar.set_postfix_str(result.case_id)

        return on_case

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _evaluate_one(args: argparse.Namespace, on_case, options: dict) -> int:
    from pathlib import Path

    from livseg.io.atomic import check_writable
    from livseg.metrics.evaluate import (
        CSV_NAME,
        JSON_NAME,
        evaluate_folders,
        format_table,
        write_results,
    )

    for name in (CSV_NAME, JSON_NAME):  # fail before the work, not after
        check_writable(Path(args.out) / name, args.overwrite)
    result = evaluate_folders(args.pred[0], args.ref, on_case=on_case, **options)
    csv_path, json_path = write_results(result, args.out, overwrite=args.overwrite)
    print(format_table(result))
    print(f"\nwrote {csv_path} and {json_path}")
    return EXIT_OK


def _evaluate_two(args: argparse.Namespace, on_case, options: dict) -> int:
    from livseg.io.atomic import check_writable
    from livseg.metrics.compare import (
        compare_folders,
        comparison_paths,
        format_comparison,
        write_comparison,
    )
    from livseg.metrics.evaluate import format_table

    for path in comparison_paths(args.out):  # fail before the work, not after
        check_writable(path, args.overwrite)
    comp = compare_folders(args.pred[0], args.pred[1], args.ref, on_case=on_case, **options)
    sources = (str(args.pred[0]), str(args.pred[1]))
    write_comparison(comp, args.out, overwrite=args.overwrite, sources=sources)
    for side, result in (("a", comp.a), ("b", comp.b)):
        print(f"prediction {side}: {sources[side == 'b']}")
        print(format_table(result))
        print()
    print(format_comparison(comp, sources))
    print(f"\nwrote {args.out}/a, {args.out}/b, comparison.csv and comparison.json")
    return EXIT_OK


COMMANDS: list[tuple[str, str, Register]] = [
    (
        "evaluate",
        "LiTS metrics of predicted label files against references (per-case CSV + summary JSON "
        "with confidence intervals; two --pred: paired comparison)",
        _register_evaluate,
    ),
]
