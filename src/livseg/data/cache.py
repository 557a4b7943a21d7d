"""Pre-processed slice caches on disk, keyed by the pre-processing settings.

Every training case is read, reoriented to the canonical layout and pre-processed **once**; its
selected slices are stored as memory-mapped ``.npy`` arrays so that training epochs never re-read
NIfTI files::

    <cache_root>/<pipeline>_s<size>_<hash>/      one folder per PreprocessSettings
        settings.json                             the settings (hash input)
        <case_id>/
            image.npy   (N, C, H, W) float32 or float16, values in [0, 1]
            label.npy   (N, H, W) uint8 {0, 1, 2}
            weight.npy  (N, H, W) (only with ``weight_map=True``), same float dtype as image
            meta.json   case id, source paths, original slice indices, geometry, settings

``N`` is the number of selected slices, ``C`` the channel count (1 for the liver pipelines, 3 for
the tumour windows) times ``2 * context + 1`` for 2.5-D input. Changing any setting gives a new
folder; the same settings reuse it. A case is built in a temporary folder and renamed into place,
so an interrupted build leaves no half-written case, and a case whose source files changed (size
or modification time) is rebuilt.

The pre-processing itself (:class:`~livseg.preprocess.pipeline.PreprocessSettings`,
:func:`~livseg.preprocess.pipeline.prepare_slices`) lives in :mod:`livseg.preprocess.pipeline`,
the one definition the predictor calls too.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from livseg.data.lock import folder_lock
from livseg.errors import InputError, LivsegError
from livseg.preprocess.intensity import data_range
from livseg.preprocess.orientation import Reorientation, to_canonical
from livseg.preprocess.pipeline import (
    Box,
    PreprocessSettings,
    context_indices,
    crop_box,
    liver_median_hu,
    prepare_slices,
)
from livseg.preprocess.resample import resize_slices
from livseg.preprocess.slices import select_slices
from livseg.volume import Volume

logger = logging.getLogger(__name__)

#: Bumped whenever the on-disk layout changes meaning (stored in every case's ``meta.json``; a
#: case of another format is rebuilt). Changes of the pre-processing itself bump
#: ``livseg.preprocess.pipeline.PREPROCESS_VERSION``, which keys the folder.
CACHE_FORMAT_VERSION = 1

_CHUNK = 16  # source slices pre-processed at a time (bounds memory for big volumes)


class CaseLike(Protocol):
    """Anything with ``case_id``, ``image`` and ``label`` (e.g. ``livseg.io.datasets.Case``)."""

    case_id: str
    image: Any
    label: Any


# --- reading ---------------------------------------------------------------------------------
def _read_volume(path: Path, kind: Literal["image", "label"]) -> Volume:
    """Read a volume through :func:`livseg.io.read_volume`."""
    from livseg.io import read_volume

    return read_volume(path, kind=kind)


def _source_stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


# --- building one case -----------------------------------------------------------------------
def _weight_maps(label: np.ndarray, s: PreprocessSettings) -> np.ndarray:
    """(N, H, W) border weight maps of the resized labels."""
    from livseg.preprocess.weight_map import border_weight_map  # owned by another module

    mask = (label == 2) if s.pipeline == "tumour" else (label >= 1)
    out = np.empty(label.shape, dtype=np.float32)
    for n in range(label.shape[0]):
        out[n] = border_weight_map(mask[n], w0=s.weight_w0, sigma=s.weight_sigma)
    return out


def _read_canonical(
    image_path: Path, label_path: Path
) -> tuple[Volume, Reorientation, np.ndarray, str]:
    """Read a training case and reorient it to the canonical layout.

    Returns:
        (canonical image Volume, its reorientation, canonical (Z, Y, X) uint8 label array, the
        input's orientation codes).

    Raises:
        InputError: image and label shapes differ, or label values above 2.
    """
    img = _read_volume(image_path, "image")
    lab = _read_volume(label_path, "label")
    if img.shape != lab.shape:
        raise InputError(
            f"{label_path}: label shape {lab.shape} (z, y, x) differs from the "
            f"image {image_path} shape {img.shape}"
        )
    mismatch = img.geometry_mismatch(lab, atol=1e-2)
    if mismatch:
        logger.warning(
            "%s: label geometry differs from the image (%s); using the image's",
            label_path,
            mismatch,
        )
    if lab.array.size and int(lab.array.max()) > 2:
        raise InputError(
            f"{label_path}: label values must be 0, 1, 2; found {int(lab.array.max())}"
        )
    img_c, reo = to_canonical(img)
    return img_c, reo, reo.apply(lab.array), img.orientation_codes()


def _case_box(label: np.ndarray, s: PreprocessSettings, label_path: Path) -> Box:
    """The case's in-plane crop (:func:`crop_box`); the whole slice when the liver is absent."""
    box = crop_box(label >= 1, s)
    if box is None:
        logger.warning(
            "%s: no liver in the label; the tumour crop falls back to the whole slice",
            label_path,
        )
        box = (0, label.shape[1], 0, label.shape[2])
    return box


def _prepare_needed(
    hu: np.ndarray,
    need: np.ndarray,
    s: PreprocessSettings,
    vrange: tuple[float, float],
    box: Box,
    liver_median: float | None = None,
) -> np.ndarray:
    """(len(need), C0, size, size) float32: :func:`prepare_slices` of the slices ``need``
    (``liver_median``: the reference liver's median HU, for settings with ``liver_hu``)."""
    size = int(s.size)
    pre = np.empty((need.size, s.base_channels, size, size), dtype=np.float32)
    for start in range(0, need.size, _CHUNK):
        idx = need[start : start + _CHUNK]
        pre[start : start + _CHUNK] = prepare_slices(hu[idx], s, vrange, box, liver_median)
    return pre


def _save_arrays(
    folder: Path, pre: np.ndarray, row_of: np.ndarray, lab_sel: np.ndarray, s: PreprocessSettings
) -> None:
    """Write image.npy (context rows of ``pre`` stacked as channels), label.npy, weight.npy."""
    n, size = int(row_of.shape[0]), int(s.size)
    dtype = np.dtype(s.dtype)
    image = np.lib.format.open_memmap(
        folder / "image.npy", mode="w+", dtype=dtype, shape=(n, s.channels, size, size)
    )
    for i in range(n):
        image[i] = pre[row_of[i]].reshape(s.channels, size, size)
    image.flush()
    del image
    np.save(folder / "label.npy", lab_sel.astype(np.uint8))
    if s.weight_map:
        np.save(folder / "weight.npy", _weight_maps(lab_sel, s).astype(dtype))


def _write_case(final: Path, save: Callable[[Path], None], meta: dict[str, Any], t0: float) -> None:
    """Write a case into a temporary folder (``save(folder)`` + meta.json), then rename it."""
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        save(tmp)
        meta["build_seconds"] = round(time.perf_counter() - t0, 3)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        _install(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _build_case(
    case_id: str, image_path: str, label_path: str, s: PreprocessSettings, cache_dir: str
) -> dict[str, Any]:
    """Pre-process one case into ``cache_dir/case_id`` atomically; returns its meta dict."""
    t0 = time.perf_counter()
    image_p, label_p = Path(image_path), Path(label_path)
    img_c, reo, label, input_codes = _read_canonical(image_p, label_p)
    hu = img_c.array
    sel = select_slices(label, s.margin, s.foreground)
    if sel.size == 0:
        logger.warning(
            "%s: no %s in the label; case %s contributes no slices",
            label_path,
            s.foreground,
            case_id,
        )
    src = context_indices(sel, s.context, hu.shape[0])  # (N, 2k+1)
    need = np.unique(src)
    box = _case_box(label, s, label_p)
    y0, y1, x0, x1 = box
    vrange = data_range(hu)
    liver_median = liver_median_hu(hu, label >= 1) if s.liver_hu is not None else None
    pre = _prepare_needed(hu, need, s, vrange, box, liver_median)
    row_of = np.searchsorted(need, src)  # (N, 2k+1) rows of `pre`
    size = int(s.size)
    lab_sel = resize_slices(label[sel][:, y0:y1, x0:x1], size, "label")
    sz, sy, sx = img_c.spacing
    meta = {
        "format": CACHE_FORMAT_VERSION,
        "case_id": case_id,
        "image": _source_stamp(image_p),
        "label": _source_stamp(label_p),
        "input_shape": list(reo.input_shape),
        "input_orientation": input_codes,
        "reorientation": {"perm": list(reo.perm), "flip": list(reo.flip)},
        "canonical_shape": list(hu.shape),
        "canonical_spacing": list(img_c.spacing),
        "slices": sel.tolist(),
        "n_slices": int(sel.size),
        "channels": s.channels,
        "crop_box": list(box),
        "working_spacing": [sz, sy * (y1 - y0) / size, sx * (x1 - x0) / size],
        "hu_range": list(vrange),
        "liver_median_hu": liver_median,
        "liver_pixels": (lab_sel >= 1).sum(axis=(1, 2)).tolist(),
        "tumour_pixels": (lab_sel == 2).sum(axis=(1, 2)).tolist(),
        "settings": s.to_dict(),
    }
    save = functools.partial(_save_arrays, pre=pre, row_of=row_of, lab_sel=lab_sel, s=s)
    _write_case(Path(cache_dir) / case_id, save, meta, t0)
    logger.info(
        "cached %s: %d slices (%s) in %.1f s",
        case_id,
        meta["n_slices"],
        s.key(),
        meta["build_seconds"],
    )
    return meta


def _install(tmp: Path, final: Path) -> None:
    """Rename a finished temp case folder into place, replacing a stale one."""
    if final.exists():
        trash = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        try:
            os.replace(tmp, final)
        except OSError:  # a concurrent builder installed it first: keep theirs
            if not (final / "meta.json").exists():
                raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _remove_leftovers(root: Path) -> None:
    """Delete temporary case folders of builds whose process is gone (interrupted builds)."""
    for p in root.glob(".tmp-*"):
        try:
            pid = int(p.name.rsplit("-", 2)[-2])
        except (ValueError, IndexError):
            continue
        if p.is_dir() and not _pid_alive(pid):
            logger.info("removing %s (left by an interrupted build)", p)
            shutil.rmtree(p, ignore_errors=True)


def _is_fresh(case_dir: Path, image: Path, label: Path, s: PreprocessSettings) -> bool:
    """True when ``case_dir`` holds a complete case built from the current source files."""
    meta_path = case_dir / "meta.json"
    if not meta_path.exists():
        return False
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    want = ["image.npy", "label.npy"] + (["weight.npy"] if s.weight_map else [])
    if not all((case_dir / w).exists() for w in want):
        return False
    try:
        return (
            meta.get("format") == CACHE_FORMAT_VERSION
            and meta["image"] == _source_stamp(image)
            and meta["label"] == _source_stamp(label)
        )
    except OSError:
        return False


# --- the cache --------------------------------------------------------------------------------
@dataclass
class CachedCase:
    """One case of a slice cache; arrays are opened read-only memory-mapped on first access.

    Attributes:
        case_id: The case's id.
        path: Its folder.
        meta: Contents of ``meta.json``.
    """

    case_id: str
    path: Path
    meta: dict[str, Any]
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def _open(self, name: str) -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is None:
            p = self.path / f"{name}.npy"
            try:
                arr = np.load(p, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise InputError(
                    f"{p}: cannot open cached array ({exc}); rebuild the cache"
                ) from exc
            self._arrays[name] = arr
        return arr

    @property
    def image(self) -> np.ndarray:
        """(N, C, H, W) memmap, float32/float16 in [0, 1]."""
        return self._open("image")

    @property
    def label(self) -> np.ndarray:
        """(N, H, W) uint8 memmap."""
        return self._open("label")

    @property
    def weight(self) -> np.ndarray | None:
        """(N, H, W) memmap of border weights, or None when not cached."""
        if not (self.path / "weight.npy").exists():
            return None
        return self._open("weight")

    @property
    def slices(self) -> np.ndarray:
        """(N,) canonical z index of every cached slice."""
        return np.asarray(self.meta["slices"], dtype=np.int64)

    @property
    def n_slices(self) -> int:
        return int(self.meta["n_slices"])

    def close(self) -> None:
        """Forget opened memmaps (they are reopened on the next access)."""
        self._arrays.clear()


class SliceCache:
    """A built slice cache folder: per-case memmaps and a flat (case, slice) index.

    Picklable without its open memmaps, so DataLoader workers reopen them lazily.

    Args:
        root: The settings-keyed folder (``cache_root / settings.key()``).
        case_ids: Cases to use (default: every complete case in the folder, sorted).

    Raises:
        InputError: The folder is not a slice cache, or a requested case is missing.
    """

    def __init__(self, root: str | os.PathLike, case_ids: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        spath = self.root / "settings.json"
        if not spath.exists():
            raise InputError(f"{self.root}: not a slice cache (no settings.json)")
        try:
            self.settings = PreprocessSettings.from_dict(
                json.loads(spath.read_text(encoding="utf-8"))
            )
        except (json.JSONDecodeError, TypeError) as exc:
            raise InputError(f"{spath}: unreadable cache settings ({exc})") from exc
        if case_ids is None:
            case_ids = sorted(
                p.name
                for p in self.root.iterdir()
                if p.is_dir() and not p.name.startswith(".") and (p / "meta.json").exists()
            )
        self.cases: dict[str, CachedCase] = {}
        for cid in case_ids:
            mpath = self.root / cid / "meta.json"
            if not mpath.exists():
                raise InputError(f"{self.root}: case {cid!r} is not in this slice cache")
            meta = json.loads(mpath.read_text(encoding="utf-8"))
            self.cases[cid] = CachedCase(cid, self.root / cid, meta)
        self.case_ids: list[str] = list(self.cases)
        counts = np.array([c.n_slices for c in self.cases.values()], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        #: (total, 2) int64: (case number in ``case_ids``, row in that case's arrays).
        self.index = np.zeros((int(counts.sum()), 2), dtype=np.int64)
        self.index[:, 0] = np.repeat(np.arange(counts.size), counts)
        self.index[:, 1] = np.arange(self.index.shape[0]) - np.repeat(self._offsets[:-1], counts)

    @classmethod
    def open(
        cls,
        settings: PreprocessSettings,
        cache_root: str | os.PathLike,
        case_ids: Sequence[str] | None = None,
    ) -> SliceCache:
        """Open the cache of ``settings`` under ``cache_root`` (must be built)."""
        return cls(Path(cache_root) / settings.key(), case_ids)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getitem__(self, case_id: str) -> CachedCase:
        try:
            return self.cases[case_id]
        except KeyError:
            raise InputError(f"{self.root}: case {case_id!r} is not in this slice cache") from None

    def locate(self, i: int) -> tuple[str, int]:
        """(case_id, row) of flat slice number ``i``."""
        c, row = self.index[i]
        return self.case_ids[int(c)], int(row)

    def subset(self, case_ids: Sequence[str]) -> SliceCache:
        """A view of the same folder restricted to ``case_ids`` (e.g. one fold's train cases)."""
        return SliceCache(self.root, case_ids)

    def slice_counts(self, foreground: Literal["liver", "tumour"]) -> np.ndarray:
        """(len(self),) foreground pixel count of every slice, in flat index order."""
        key = "liver_pixels" if foreground == "liver" else "tumour_pixels"
        parts = [np.asarray(c.meta[key], dtype=np.int64) for c in self.cases.values()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def nbytes(self) -> int:
        """Bytes on disk of the cases in this view."""
        return sum(f.stat().st_size for c in self.cases.values() for f in c.path.iterdir())

    def close(self) -> None:
        """Forget all opened memmaps."""
        for c in self.cases.values():
            c.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["cases"] = {
            cid: CachedCase(c.case_id, c.path, c.meta) for cid, c in self.cases.items()
        }
        return state

    def __repr__(self) -> str:
        return f"SliceCache({self.root}, cases={len(self.case_ids)}, slices={len(self)})"


def _case_fields(case: CaseLike) -> tuple[str, Path, Path]:
    cid = str(case.case_id)
    if not cid or "/" in cid or "\\" in cid or cid.startswith("."):
        raise InputError(f"case id {cid!r} cannot name a cache folder")
    if case.label is None:
        raise InputError(f"{case.image}: case {cid!r} has no label; a training cache needs one")
    image, label = Path(case.image), Path(case.label)
    for p in (image, label):
        if not p.exists():
            raise InputError(f"{p}: file not found (case {cid!r})")
    return cid, image, label


def build_slice_cache(
    cases: Iterable[CaseLike],
    settings: PreprocessSettings,
    cache_root: str | os.PathLike,
    jobs: int = 1,
    progress: Callable[..., Iterable] | None = None,
) -> SliceCache:
    """Pre-process cases into the slice cache of ``settings`` (reusing fresh cases).

    Args:
        cases: Objects with ``case_id``, ``image`` and ``label`` paths (e.g. from
            ``livseg.io.datasets.discover_cases``); case ids must be unique.
        settings: The pre-processing settings; they key the cache folder.
        cache_root: Folder holding caches (created if needed); the cache is
            ``cache_root / settings.key()``.
        jobs: Worker processes for building (1 = in this process).
        progress: Optional wrapper of an iterable for a progress bar, called as
            ``progress(iterable, total=n, desc=...)`` (e.g. ``livseg.cli.progress``).

    Returns:
        The :class:`SliceCache` of exactly these cases, in the given order.

    Raises:
        InputError: A case lacks a label, a file is missing or unreadable, or image and label
            shapes differ.
        LivsegError: ``settings.json`` of an existing folder contradicts ``settings``.
    """
    items = [_case_fields(c) for c in cases]
    ids = [i[0] for i in items]
    dup = sorted({c for c in ids if ids.count(c) > 1})
    if dup:
        raise InputError(f"duplicate case ids: {', '.join(dup)}")
    root = _settings_folder(Path(cache_root), settings)
    with folder_lock(root):  # a concurrent builder finishes first; then its cases are fresh
        _remove_leftovers(root)
        todo = [
            (cid, str(img), str(lab), settings, str(root))
            for cid, img, lab in items
            if not _is_fresh(root / cid, img, lab, settings)
        ]
        logger.info("slice cache %s: %d of %d cases to build", root, len(todo), len(items))
        if jobs <= 1 or len(todo) == 1:
            _build_here(todo, progress)
        else:
            _build_in_workers(todo, jobs, progress)
        return SliceCache(root, ids)


def _settings_folder(cache_root: Path, settings: PreprocessSettings) -> Path:
    """Create (or check) ``cache_root / settings.key()`` and its ``settings.json``."""
    root = cache_root / settings.key()
    root.mkdir(parents=True, exist_ok=True)
    spath = root / "settings.json"
    if spath.exists():
        existing = PreprocessSettings.from_dict(json.loads(spath.read_text(encoding="utf-8")))
        if existing != settings:
            raise LivsegError(f"{spath}: cache folder holds different settings; remove it")
    else:
        tmp = root / f".settings-{uuid.uuid4().hex[:8]}.json"
        tmp.write_text(json.dumps(settings.to_dict(), indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, spath)
    return root


def _build_here(args: list[tuple], progress: Callable[..., Iterable] | None) -> None:
    """Build the cases of ``args`` (:func:`_build_case` arguments) in this process."""
    if not args:
        return
    done: Iterable = (_build_case(*a) for a in args)
    if progress is not None:
        done = progress(done, total=len(args), desc="slice cache")
    for _ in done:
        pass


def _build_in_workers(
    args: list[tuple], jobs: int, progress: Callable[..., Iterable] | None
) -> None:
    """Build the cases of ``args`` in up to ``jobs`` worker processes."""
    if not args:
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=min(jobs, len(args))) as pool:
        futures = [pool.submit(_build_case, *a) for a in args]
        done: Iterable = as_completed(futures)
        if progress is not None:
            done = progress(done, total=len(futures), desc="slice cache")
        for fut in done:
            fut.result()
