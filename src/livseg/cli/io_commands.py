"""``livseg info``, ``livseg convert`` and ``livseg phantom``: reading, converting and making CTs."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from livseg.cli import EXIT_OK, Register, _progress_enabled, log, progress

_CONVERT_EPILOG = """\
examples:
  livseg convert SERIES_DIR ct.nii.gz               DICOM series -> NIfTI (int16 HU when lossless)
  livseg convert STUDY_DIR ct.nii.gz --series UID   pick one series of a folder holding several
  livseg convert SERIES_DIR seg.nii.gz --seg liver.dcm --seg tumour.dcm
        DICOM-SEG objects -> LiTS label (0 background, 1 liver, 2 tumour) on the grid of the
        CT series they were drawn on; liver/tumour is read from each segment's label or
        property type, or given explicitly: --seg liver=FILE, --seg tumour=FILE, --seg 2=FILE
        (every segment of FILE gets that value). Where SEGs overlap the larger value wins.
  livseg convert volume.nrrd volume.nii.gz          between NIfTI, NRRD and MHA
"""

_SEG_NAMES = {"liver": 1, "tumour": 2, "tumor": 2}


def _parse_seg_spec(text: str):
    """'FILE', 'liver=FILE', 'tumour=FILE' or 'N=FILE' -> (path, label or None)."""
    name, sep, rest = text.partition("=")
    if sep and name.strip().lower() in _SEG_NAMES:
        return rest, _SEG_NAMES[name.strip().lower()]
    if sep and name.strip().isdigit():
        value = int(name)
        if not 0 < value <= 255:
            raise argparse.ArgumentTypeError(f"label value must be 1..255 in {text!r}")
        return rest, value
    return text, None


def _register_info(p: argparse.ArgumentParser):
    p.add_argument("path", help="NIfTI/NRRD/MHA file or DICOM series folder")
    p.add_argument(
        "--series",
        metavar="UID",
        help="SeriesInstanceUID, when the folder holds "
        "several series (the error message lists them)",
    )
    p.add_argument(
        "--kind",
        choices=("image", "label"),
        help="read as image or label (default: guessed from name and values)",
    )
    p.add_argument("--json", action="store_true", help="print the information as JSON")

    def handler(args: argparse.Namespace) -> int:
        import json

        from livseg.info import format_info, volume_info

        info = volume_info(args.path, series_uid=args.series, kind=args.kind)
        print(json.dumps(info, indent=2) if args.json else format_info(info))
        return EXIT_OK

    return handler


def _register_convert(p: argparse.ArgumentParser):
    p.epilog = _CONVERT_EPILOG
    p.add_argument("source", help="DICOM series folder or NIfTI/NRRD/MHA file")
    p.add_argument("output", help="output file: .nii, .nii.gz, .nrrd or .mha")
    p.add_argument(
        "--series", metavar="UID", help="SeriesInstanceUID, when the folder holds several series"
    )
    p.add_argument(
        "--seg",
        metavar="[liver=|tumour=|N=]SEG.dcm",
        action="append",
        type=_parse_seg_spec,
        default=[],
        help="DICOM-SEG to place on the grid of SOURCE (repeatable); the output is "
        "then the LiTS label volume",
    )
    p.add_argument(
        "--kind",
        choices=("image", "label"),
        help="read SOURCE as image or label (default: guessed); ignored with --seg",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")

    def handler(args: argparse.Namespace) -> int:
        from livseg.io import convert

        out = convert(
            args.source,
            args.output,
            series_uid=args.series,
            segs=args.seg or None,
            kind=args.kind,
            overwrite=args.overwrite,
        )
        log.info("wrote %s", out)
        return EXIT_OK

    return handler


def _register_phantom(p: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    p.add_argument(
        "outdir",
        help="output folder (volume-N.nii.gz, segmentation-N.nii.gz, phantom.json, dicom/case-N/)",
    )
    p.add_argument("--cases", type=int, default=1, help="number of cases (default 1)")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="dataset seed (default 0); case N uses a seed derived from (seed, N)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=256,
        help="in-plane matrix size in pixels (default 256; spacing about 350/size mm)",
    )
    p.add_argument(
        "--slices",
        type=int,
        default=None,
        help="slices covering 240 mm (default 64 at size 256, scaled with the size)",
    )
    p.add_argument("--dicom", action="store_true", help="also write each CT as a DICOM series")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    def handler(args: argparse.Namespace) -> int:
        from livseg.phantom import write_phantom_dataset

        def bar(cases):
            return progress(
                cases,
                total=args.cases,
                desc="phantom",
                unit="case",
                disable=not _progress_enabled(args),
            )

        paths = write_phantom_dataset(
            args.outdir,
            cases=args.cases,
            seed=args.seed,
            size=args.size,
            slices=args.slices,
            dicom=args.dicom,
            overwrite=args.overwrite,
            progress=bar,
        )
        log.info("wrote %d cases to %s (%d outputs)", args.cases, args.outdir, len(paths))
        return EXIT_OK

    return handler


COMMANDS: list[tuple[str, str, Register]] = [
    ("info", "show the geometry and values of a CT/label file or DICOM series", _register_info),
    ("convert", "convert a DICOM series (or DICOM-SEG) to NIfTI/NRRD/MHA", _register_convert),
    (
        "phantom",
        "write a synthetic abdominal CT dataset with liver/tumour labels (LiTS file names)",
        _register_phantom,
    ),
]
