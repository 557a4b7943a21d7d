"""Finding the (image, label) cases of a dataset on disk.

Layouts understood by :func:`discover_cases` (tried in this order):

* **CSV list** (a ``.csv`` file): header with columns ``image``, ``label`` and optionally
  ``case_id``; an empty ``label`` means no label. Relative paths are resolved against the CSV's
  folder.
* **JSON list** (a ``.json`` file): a list of ``[image, label]`` pairs or of objects with keys
  ``image``, ``label`` (may be null) and optionally ``case_id``; or an MSD ``dataset.json``
  (object with a ``"training"`` list). Relative paths are resolved against the JSON's folder.
* **MSD / nnU-Net** folder: ``imagesTr/`` (+ ``labelsTr/``). If ``dataset.json`` holds a
  ``"training"`` list it is used; otherwise files are matched by name, an nnU-Net channel suffix
  ``_0000`` on the image being removed (other channels are an error: CT is single-channel).
* **LiTS** folder: ``volume-N.nii[.gz]`` and ``segmentation-N.nii[.gz]``, searched recursively
  (the LiTS release splits them over "Training Batch" sub-folders).

Hidden files (``._liver_0.nii.gz`` from macOS archives) are ignored. Case ids are the image
file name without extension and without the ``_0000`` suffix (``volume-3``, ``liver_12``), unless
a list gives ``case_id``. Cases are sorted naturally (``volume-2`` before ``volume-10``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from livseg.errors import InputError
from livseg.io import READABLE_SUFFIXES

log = logging.getLogger("livseg.io.datasets")

_LITS_IMAGE = re.compile(r"^volume-(\d+)\.nii(\.gz)?$", re.I)
_LITS_LABEL = re.compile(r"^segmentation-(\d+)\.nii(\.gz)?$", re.I)
_CHANNEL = re.compile(r"^(?P<stem>.+)_(?P<ch>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One case of a dataset.

    Attributes:
        case_id: unique name of the case (e.g. ``volume-3``, ``liver_12``).
        image: CT file (or DICOM series folder).
        label: label file, or None when the dataset has none for this case.
    """

    case_id: str
    image: Path
    label: Path | None = None


def natural_key(text: str) -> list:
    """Sort key splitting digits out, so "case2" < "case10"."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def _strip_suffix(name: str) -> str:
    low = name.lower()
    for suf in READABLE_SUFFIXES:
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


def _is_volume_file(path: Path) -> bool:
    return (
        path.is_file()
        and not path.name.startswith(".")
        and path.name.lower().endswith(READABLE_SUFFIXES)
    )


def _finish(cases: list[Case], require_labels: bool, source: Path) -> list[Case]:
    if not cases:
        raise InputError(f"{source}: no cases found")
    seen: dict[str, Case] = {}
    for case in cases:
        if case.case_id in seen:
            raise InputError(
                f"{source}: case id '{case.case_id}' appears twice "
                f"({seen[case.case_id].image} and {case.image})"
            )
        seen[case.case_id] = case
        if not case.image.exists():
            raise InputError(f"{source}: case '{case.case_id}': image {case.image} not found")
        if case.label is None:
            if require_labels:
                raise InputError(
                    f"{source}: case '{case.case_id}' has no label (image {case.image})"
                )
        elif not case.label.exists():
            raise InputError(f"{source}: case '{case.case_id}': label {case.label} not found")
    return sorted(cases, key=lambda c: natural_key(c.case_id))


def discover_cases(path: str | os.PathLike, require_labels: bool = True) -> list[Case]:
    """Find the cases of a dataset folder or list file (layouts in the module docstring).

    Args:
        path: dataset folder, or a ``.csv``/``.json`` list file.
        require_labels: every case must have a label (training/evaluation). With False, cases
            without a label get ``label=None``.

    Returns:
        Cases sorted naturally by case id.

    Raises:
        InputError: missing path, unknown layout, a case without label (when required), a
            label without image, duplicate case ids, listed files that do not exist.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: dataset folder or list file not found")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return _finish(_from_csv(path), require_labels, path)
        if suffix == ".json":
            return _finish(_from_json(path), require_labels, path)
        raise InputError(f"{path}: a dataset is a folder, a .csv or a .json list")
    if (path / "imagesTr").is_dir():
        return _finish(_from_msd(path, require_labels), require_labels, path)
    lits = _from_lits(path)
    if lits is not None:
        return _finish(lits, require_labels, path)
    raise InputError(
        f"{path}: unknown dataset layout: expected LiTS files (volume-N.nii[.gz] + "
        "segmentation-N.nii[.gz]), an MSD/nnU-Net folder (imagesTr/ + labelsTr/), or a CSV/JSON "
        "list of image,label pairs"
    )


def _from_lits(folder: Path) -> list[Case] | None:
    images: dict[int, Path] = {}
    labels: dict[int, Path] = {}
    for f in sorted(folder.rglob("*")):
        if f.name.startswith(".") or not f.is_file():
            continue
        _add_lits_file(folder, f, images, labels)
    if not images and not labels:
        return None
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise InputError(
            f"{folder}: segmentation file(s) without a volume: "
            + ", ".join(str(labels[n]) for n in orphans)
        )
    return [Case(_strip_suffix(images[n].name), images[n], labels.get(n)) for n in images]


def _add_lits_file(folder: Path, f: Path, images: dict[int, Path], labels: dict[int, Path]) -> None:
    """File ``f`` into ``images`` or ``labels`` by case number when it has a LiTS name."""
    for pattern, table, what in (
        (_LITS_IMAGE, images, "volume"),
        (_LITS_LABEL, labels, "segmentation"),
    ):
        m = pattern.match(f.name)
        if m:
            n = int(m.group(1))
            if n in table:
                raise InputError(f"{folder}: {what}-{n} found twice: {table[n]} and {f}")
            table[n] = f


def _msd_case_id(image: Path) -> str:
    stem = _strip_suffix(image.name)
    m = _CHANNEL.match(stem)
    if m:
        if m.group("ch") != "0000":
            raise InputError(
                f"{image}: channel {m.group('ch')} of a multi-channel case; livseg "
                "reads single-channel CT (only _0000)"
            )
        return m.group("stem")
    return stem


def _msd_training_list(folder: Path) -> list | None:
    """The ``"training"`` list of the folder's ``dataset.json``, or None when there is none."""
    dataset_json = folder / "dataset.json"
    if not dataset_json.is_file():
        return None
    try:
        meta = json.loads(dataset_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{dataset_json}: not valid JSON ({exc})") from exc
    if isinstance(meta, dict) and isinstance(meta.get("training"), list):
        return meta["training"]
    return None


def _volume_files_by_stem(folder: Path) -> dict[str, Path]:
    """Readable volume files of a folder (not recursive) by name without suffix; {} if none."""
    if not folder.is_dir():
        return {}
    return {_strip_suffix(f.name): f for f in sorted(folder.iterdir()) if _is_volume_file(f)}


def _from_msd(folder: Path, require_labels: bool) -> list[Case]:
    training = _msd_training_list(folder)
    if training is not None:
        return _pairs(training, folder, folder / "dataset.json")
    images_dir, labels_dir = folder / "imagesTr", folder / "labelsTr"
    labels = _volume_files_by_stem(labels_dir)
    cases = []
    for f in filter(_is_volume_file, sorted(images_dir.iterdir())):
        stem = _strip_suffix(f.name)
        case_id = stem if stem in labels else _msd_case_id(f)
        cases.append(Case(case_id, f, labels.pop(case_id, None)))
    if labels:
        raise InputError(
            f"{labels_dir}: label file(s) without an image in {images_dir}: "
            + ", ".join(str(p.name) for p in labels.values())
        )
    if not labels_dir.is_dir() and require_labels:
        raise InputError(f"{folder}: imagesTr/ without labelsTr/ (no labels for any case)")
    return cases


def _resolve(value, base: Path, source: Path, what: str) -> Path | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise InputError(f"{source}: {what} must be a path string, got {value!r}")
    p = Path(value.strip())
    return p if p.is_absolute() else (base / p)


def _pairs(entries: list, base: Path, source: Path) -> list[Case]:
    cases = []
    for n, entry in enumerate(entries, 1):
        case_id = None
        if isinstance(entry, dict):
            if "image" not in entry:
                raise InputError(f"{source}: entry {n} has no 'image'")
            image, label, case_id = entry.get("image"), entry.get("label"), entry.get("case_id")
        elif isinstance(entry, (list, tuple)) and len(entry) in (1, 2):
            image, label = entry[0], entry[1] if len(entry) == 2 else None
        else:
            raise InputError(
                f"{source}: entry {n} must be [image, label] or {{'image': ..., 'label': ...}}"
            )
        image_path = _resolve(image, base, source, f"entry {n} image")
        if image_path is None:
            raise InputError(f"{source}: entry {n} has an empty image path")
        label_path = _resolve(label, base, source, f"entry {n} label")
        cid = str(case_id) if case_id else _strip_suffix(image_path.name)
        cases.append(Case(cid, image_path, label_path))
    return cases


def _csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV list, keys stripped and lower-cased; it must have an ``image`` column."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            if "image" not in fields:
                raise InputError(
                    f"{path}: CSV needs a header with columns image,label"
                    f"[,case_id]; found {reader.fieldnames}"
                )
            return [{(k or "").strip().lower(): v for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the CSV ({exc})") from exc


def _from_csv(path: Path) -> list[Case]:
    entries = [
        {
            "image": r.get("image"),
            "label": r.get("label"),
            "case_id": (r.get("case_id") or "").strip() or None,
        }
        for r in _csv_rows(path)
    ]
    return _pairs(entries, path.parent, path)


def _from_json(path: Path) -> list[Case]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if isinstance(data, dict) and isinstance(data.get("training"), list):
        data = data["training"]
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of [image, label] pairs")
    return _pairs(data, path.parent, path)


def check_case_geometry(case: Case, atol: float = 1e-3) -> str | None:
    """Compare image and label geometry from their headers only (no voxel data read).

    Args:
        case: the case (its label may be None: nothing to compare).
        atol: tolerance in mm (origin, spacing) and direction cosines.

    Returns:
        None when they agree (or no label), else a sentence naming the case and the difference.

    Raises:
        InputError: a header cannot be read.
    """
    from livseg.io import read_header

    if case.label is None:
        return None
    if case.image.is_dir():
        from livseg.io import read_volume

        image_geom = read_volume(case.image)
    else:
        image_geom = read_header(case.image).geometry()
    label_geom = read_header(case.label).geometry()
    mismatch = image_geom.geometry_mismatch(label_geom, atol=atol)
    if mismatch is None:
        return None
    return f"case '{case.case_id}': image {case.image.name} and label {case.label.name}: {mismatch}"


def validate_cases(cases: list[Case], atol: float = 1e-3, raise_error: bool = True) -> list[str]:
    """Check every case's image/label geometry (headers only); see :func:`check_case_geometry`.

    Args:
        cases: cases to check.
        atol: tolerance in mm / cosines.
        raise_error: raise one InputError listing all problems instead of returning them.

    Returns:
        One message per mismatching case (empty when all agree).

    Raises:
        InputError: with ``raise_error``, when any case mismatches.
    """
    problems = [msg for case in cases if (msg := check_case_geometry(case, atol)) is not None]
    for msg in problems:
        log.warning("%s", msg)
    if problems and raise_error:
        raise InputError(
            f"{len(problems)} case(s) with image/label geometry mismatch:\n  "
            + "\n  ".join(problems)
        )
    return problems
