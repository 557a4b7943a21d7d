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
"""

from __future__ import annotations

import dataclasses
import hashlib
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

from livseg.errors import InputError, LivsegError
from livseg.preprocess.intensity import (
    CRUNET_WINDOW,
    DEFAULT_HIST_BINS,
    DENSEFCN_LIVER_WINDOW,
    TUMOUR_WINDOWS,
    crunet_input,
    data_range,
    densefcn_liver_input,
    tumour_windows,
)
from livseg.preprocess.orientation import to_canonical
from livseg.preprocess.resample import resize_slices
from livseg.preprocess.slices import inplane_bbox, select_slices
from livseg.volume import Volume

logger = logging.getLogger(__name__)

#: Bumped whenever the on-disk layout or the pre-processing code changes meaning.
CACHE_FORMAT_VERSION = 1

Pipeline = Literal["crunet", "densefcn_liver", "tumour"]
PIPELINES: tuple[str, ...] = ("crunet", "densefcn_liver", "tumour")

_DEFAULT_WINDOWS: dict[str, tuple[tuple[float, float], ...]] = {
    "crunet": (CRUNET_WINDOW,),
    "densefcn_liver": (DENSEFCN_LIVER_WINDOW,),
    "tumour": TUMOUR_WINDOWS,
}
#: Default slice selection per pipeline: (foreground, margin in slices). The DenseNet-FCN paper
#: uses liver +-10 and tumour +-5; the CR-U-Net paper gives none (our default: liver +-10).
_DEFAULT_SELECTION: dict[str, tuple[str, int]] = {
    "crunet": ("liver", 10),
    "densefcn_liver": ("liver", 10),
    "tumour": ("tumour", 5),
}
_CHUNK = 16  # source slices pre-processed at a time (bounds memory for big volumes)


class CaseLike(Protocol):
    """Anything with ``case_id``, ``image`` and ``label`` (e.g. ``livseg.io.datasets.Case``)."""

    case_id: str
    image: Any
    label: Any


@dataclass(frozen=True)
class PreprocessSettings:
    """Everything that determines a slice cache's content (its folder is keyed by their hash).

    Attributes:
        pipeline: "crunet" (HU window + per-slice histogram equalisation), "densefcn_liver"
            (HU window + volume min-max) or "tumour" (3 HU windows, each volume min-max).
        size: Working in-plane resolution in pixels (e.g. 512, 256, 128); slices are resized
            to (size, size).
        foreground: Slice selection: "liver" (label >= 1), "tumour" (label == 2) or "all".
            None: the pipeline's default (liver for the liver models, tumour for the tumour one).
        margin: Slices kept above and below the foreground slices; None: pipeline default
            (10 for the liver models, 5 for the tumour model).
        context: 2.5-D context: k adjacent slices on each side stacked as channels
            (offset-major: channels of slice z-k first), replicating the end slices at the volume
            ends; 0 = single slice.
        weight_map: Also cache a border weight map (``border_weight_map`` of the liver mask, or
            of the tumour mask for the tumour pipeline) computed on the resized label.
        weight_w0: Weight map amplitude w0.
        weight_sigma: Weight map width sigma, in pixels of the cached (working-size) slices.
        crop_to_liver: Crop every slice to the in-plane bounding box of the case's liver (all
            slices together) + ``crop_margin``, squared, before resizing to ``size`` (the tumour
            stage of the cascade).
        crop_margin: Margin of the liver box in pixels of the canonical input slices.
        dtype: Stored image (and weight) dtype: "float32" or "float16" (half the disk).
        windows: HU windows (lo, hi): one for the liver pipelines, one per channel for the
            tumour pipeline; None: the pipeline's defaults from the papers.
        hist_bins: Histogram bins of the CR-U-Net equalisation.
        equalize: CR-U-Net only: False disables the histogram equalisation.
    """

    pipeline: Pipeline
    size: int = 256
    foreground: Literal["liver", "tumour", "all"] | None = None
    margin: int | None = None
    context: int = 0
    weight_map: bool = False
    weight_w0: float = 5.0
    weight_sigma: float = 5.0
    crop_to_liver: bool = False
    crop_margin: int = 10
    dtype: Literal["float32", "float16"] = "float32"
    windows: tuple[tuple[float, float], ...] | None = None
    hist_bins: int = DEFAULT_HIST_BINS
    equalize: bool = True

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise LivsegError(
                f"pre-processing pipeline {self.pipeline!r} is unknown; "
                f"valid: {', '.join(PIPELINES)}"
            )
        fg, margin = _DEFAULT_SELECTION[self.pipeline]
        if self.foreground is None:
            object.__setattr__(self, "foreground", fg)
        if self.margin is None:
            object.__setattr__(self, "margin", margin)
        if self.windows is None:
            object.__setattr__(self, "windows", _DEFAULT_WINDOWS[self.pipeline])
        else:
            object.__setattr__(
                self, "windows", tuple((float(lo), float(hi)) for lo, hi in self.windows)
            )
        if self.foreground not in ("liver", "tumour", "all"):
            raise LivsegError(
                f"foreground must be 'liver', 'tumour' or 'all', got {self.foreground!r}"
            )
        if int(self.size) < 8:
            raise LivsegError(f"size must be >= 8 pixels, got {self.size}")
        if self.margin < 0 or self.context < 0 or self.crop_margin < 0:
            raise LivsegError("margin, context and crop_margin must be >= 0")
        if self.dtype not in ("float32", "float16"):
            raise LivsegError(f"dtype must be 'float32' or 'float16', got {self.dtype!r}")
        n_win = len(self.windows)
        if self.pipeline != "tumour" and n_win != 1:
            raise LivsegError(f"pipeline {self.pipeline!r} takes one HU window, got {n_win}")
        for lo, hi in self.windows:
            if not hi > lo:
                raise LivsegError(f"HU window ({lo}, {hi}) must have lo < hi")

    @property
    def base_channels(self) -> int:
        """Channels of one pre-processed slice (3 for the tumour windows, else 1)."""
        return len(self.windows) if self.pipeline == "tumour" else 1

    @property
    def channels(self) -> int:
        """Channels C of a cached image: base channels x (2 * context + 1)."""
        return self.base_channels * (2 * self.context + 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (windows as lists)."""
        d = dataclasses.asdict(self)
        d["windows"] = [list(w) for w in self.windows]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSettings:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise LivsegError(f"unknown pre-processing settings: {', '.join(sorted(unknown))}")
        d = dict(d)
        if d.get("windows") is not None:
            d["windows"] = tuple(tuple(w) for w in d["windows"])
        return cls(**d)

    def key(self) -> str:
        """Cache folder name: ``<pipeline>_s<size>_<12 hex digits of the settings hash>``."""
        payload = json.dumps({"format": CACHE_FORMAT_VERSION, **self.to_dict()}, sort_keys=True)
        digest = hashlib.sha256(payload.encode()).hexdigest()[:12]
        return f"{self.pipeline}_s{self.size}_{digest}"


# --- reading ---------------------------------------------------------------------------------
def _read_volume(path: Path, kind: Literal["image", "label"]) -> Volume:
    """Read a volume through :func:`livseg.io.read_volume`."""
    from livseg.io import read_volume

    return read_volume(path, kind=kind)


def _source_stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


# --- building one case -----------------------------------------------------------------------
def preprocess_slices(
    hu: np.ndarray, s: PreprocessSettings, volume_range: tuple[float, float]
) -> np.ndarray:
    """Apply the pipeline of ``s`` to a chunk of axial slices (shared by training and inference).

    Args:
        hu: (n, H, W) slices in HU.
        s: the pre-processing settings (pipeline, HU windows, histogram equalisation).
        volume_range: the whole volume's (min, max) after clipping, for the pipelines that
            min-max normalise over the volume, so that chunks give identical results.

    Returns:
        (n, C, H, W) float32 at the input resolution (resizing is the caller's step).
    """
    if s.pipeline == "crunet":
        return crunet_input(hu, window=s.windows[0], bins=s.hist_bins, equalize=s.equalize)[:, None]
    if s.pipeline == "densefcn_liver":
        return densefcn_liver_input(hu, size=None, window=s.windows[0], volume_range=volume_range)[
            :, None
        ]
    return tumour_windows(hu, windows=s.windows, volume_range=volume_range)


def _weight_maps(label: np.ndarray, s: PreprocessSettings) -> np.ndarray:
    """(N, H, W) border weight maps of the resized labels."""
    from livseg.preprocess.weight_map import border_weight_map  # owned by another module

    mask = (label == 2) if s.pipeline == "tumour" else (label >= 1)
    out = np.empty(label.shape, dtype=np.float32)
    for n in range(label.shape[0]):
        out[n] = border_weight_map(mask[n], w0=s.weight_w0, sigma=s.weight_sigma)
    return out


def _build_case(
    case_id: str, image_path: str, label_path: str, s: PreprocessSettings, cache_dir: str
) -> dict[str, Any]:
    """Pre-process one case into ``cache_dir/case_id`` atomically; returns its meta dict."""
    t0 = time.perf_counter()
    image_path_p, label_path_p = Path(image_path), Path(label_path)
    img = _read_volume(image_path_p, "image")
    lab = _read_volume(label_path_p, "label")
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
    input_codes = img.orientation_codes()
    img_c, reo = to_canonical(img)
    hu = img_c.array
    label = reo.apply(lab.array)
    del img, lab

    z = hu.shape[0]
    sel = select_slices(label, s.margin, s.foreground)
    if sel.size == 0:
        logger.warning(
            "%s: no %s in the label; case %s contributes no slices",
            label_path,
            s.foreground,
            case_id,
        )
    k = s.context
    src = np.clip(sel[:, None] + np.arange(-k, k + 1)[None, :], 0, z - 1)  # (N, 2k+1)
    need = np.unique(src)
    box = None
    if s.crop_to_liver:
        box = inplane_bbox(label >= 1, s.crop_margin, square=True)
        if box is None:
            logger.warning(
                "%s: no liver in the label; the tumour crop falls back to the whole slice",
                label_path,
            )
    if box is None:
        box = (0, hu.shape[1], 0, hu.shape[2])
    y0, y1, x0, x1 = box
    vrange = data_range(hu)

    size = int(s.size)
    pre = np.empty((need.size, s.base_channels, size, size), dtype=np.float32)
    for start in range(0, need.size, _CHUNK):
        idx = need[start : start + _CHUNK]
        chunk = preprocess_slices(hu[idx], s, vrange)[..., y0:y1, x0:x1]
        pre[start : start + _CHUNK] = np.clip(resize_slices(chunk, size, "image"), 0.0, 1.0)
    row_of = np.searchsorted(need, src)  # (N, 2k+1) rows of `pre`
    lab_sel = resize_slices(label[sel][:, y0:y1, x0:x1], size, "label")

    cache_dir_p = Path(cache_dir)
    final = cache_dir_p / case_id
    tmp = cache_dir_p / f".tmp-{case_id}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        n = int(sel.size)
        dtype = np.dtype(s.dtype)
        image = np.lib.format.open_memmap(
            tmp / "image.npy", mode="w+", dtype=dtype, shape=(n, s.channels, size, size)
        )
        for i in range(n):
            image[i] = pre[row_of[i]].reshape(s.channels, size, size)
        image.flush()
        del image
        np.save(tmp / "label.npy", lab_sel.astype(np.uint8))
        if s.weight_map:
            np.save(tmp / "weight.npy", _weight_maps(lab_sel, s).astype(dtype))
        sz, sy, sx = img_c.spacing
        meta = {
            "format": CACHE_FORMAT_VERSION,
            "case_id": case_id,
            "image": _source_stamp(image_path_p),
            "label": _source_stamp(label_path_p),
            "input_shape": list(reo.input_shape),
            "input_orientation": input_codes,
            "reorientation": {"perm": list(reo.perm), "flip": list(reo.flip)},
            "canonical_shape": list(hu.shape),
            "canonical_spacing": list(img_c.spacing),
            "slices": sel.tolist(),
            "n_slices": n,
            "channels": s.channels,
            "crop_box": list(box),
            "working_spacing": [sz, sy * (y1 - y0) / size, sx * (x1 - x0) / size],
            "hu_range": list(vrange),
            "liver_pixels": (lab_sel >= 1).sum(axis=(1, 2)).tolist(),
            "tumour_pixels": (lab_sel == 2).sum(axis=(1, 2)).tolist(),
            "settings": s.to_dict(),
            "build_seconds": round(time.perf_counter() - t0, 3),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        _install(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("cached %s: %d slices (%s) in %.1f s", case_id, n, s.key(), meta["build_seconds"])
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
    root = Path(cache_root) / settings.key()
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

    _remove_leftovers(root)
    todo = [
        (cid, img, lab) for cid, img, lab in items if not _is_fresh(root / cid, img, lab, settings)
    ]
    logger.info("slice cache %s: %d of %d cases to build", root, len(todo), len(items))
    if todo:
        args = [(cid, str(img), str(lab), settings, str(root)) for cid, img, lab in todo]
        if jobs <= 1 or len(todo) == 1:
            done: Iterable = (_build_case(*a) for a in args)
            if progress is not None:
                done = progress(done, total=len(args), desc="slice cache")
            for _ in done:
                pass
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(max_workers=min(jobs, len(args))) as pool:
                futures = [pool.submit(_build_case, *a) for a in args]
                done = as_completed(futures)
                if progress is not None:
                    done = progress(done, total=len(futures), desc="slice cache")
                for fut in done:
                    fut.result()
    return SliceCache(root, ids)
