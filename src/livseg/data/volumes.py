"""Coarse whole-CT volumes for training the 3-D liver stage: a cache and a patch dataset.

Every case is read once, put in the canonical orientation, resampled to the coarse grid with
:func:`livseg.preprocess.coarse.coarse_image` / :func:`~livseg.preprocess.coarse.coarse_labels`
(the same functions inference uses) and stored as ``<root>/<key>/<case_id>/{image,label}.npy``
(image float16 in [0, 1], labels uint8) with a ``meta.json``. ``key`` is the settings' key
(:meth:`livseg.preprocess.pipeline.PreprocessSettings.key`, pipeline ``coarse``), so changing
the spacing or the window builds a new cache; a case is rebuilt when its source files
change (size and mtime recorded). Writes are atomic (temporary folder, then rename), and
builders sharing a cache take turns (:func:`livseg.data.lock.folder_lock`).

:class:`VolumeDataset` draws random augmented patches (:class:`~livseg.data.augment3d.
Augmentation3D`) for training and gives whole padded volumes for validation.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from livseg.data.augment3d import Augmentation3D, random_patch
from livseg.data.lock import folder_lock
from livseg.preprocess.coarse import (
    coarse_image,
    coarse_labels,
    coarse_spacing,
    pad_to,
)
from livseg.preprocess.pipeline import PreprocessSettings

logger = logging.getLogger(__name__)

__all__ = ["VolumeCache", "VolumeDataset", "build_volume_cache"]


def _stamp(path: Path) -> dict[str, Any]:
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _build_case(case_id: str, image: Path, label: Path, s: PreprocessSettings, dest: Path) -> None:
    from livseg.io import read_volume
    from livseg.preprocess.orientation import canonical_view

    img = read_volume(image, kind="image")
    lab = read_volume(label, kind="label")
    if img.array.shape != lab.array.shape:
        raise ValueError(f"{label}: shape {lab.array.shape} differs from the image's")
    hu, reo = canonical_view(img)
    lab_c, _ = canonical_view(lab)
    spacing = reo.canonical_geometry()[0]
    x = coarse_image(hu, spacing, s.spacing_mm, s.windows[0])
    y = coarse_labels(lab_c, spacing, s.spacing_mm)
    tmp = Path(tempfile.mkdtemp(prefix=f".{case_id}-", dir=dest.parent))
    try:
        np.save(tmp / "image.npy", x.astype(np.float16))
        np.save(tmp / "label.npy", y)
        meta = {
            "case_id": case_id,
            "spacing": coarse_spacing(hu.shape, x.shape, spacing),
            "source_shape": list(hu.shape),
            "image": _stamp(image),
            "label": _stamp(label),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fresh(dest: Path, image: Path, label: Path) -> bool:
    try:
        meta = json.loads((dest / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("image") == _stamp(image) and meta.get("label") == _stamp(label)


class VolumeCache:
    """A built coarse volume cache (arrays loaded in memory: a few MB per case).

    Attributes:
        root: The cache folder (``<root>/<settings key>``).
        case_ids: The cases, in order.
        images: ``case_id -> (D, H, W) float16`` image in [0, 1].
        labels: ``case_id -> (D, H, W) uint8`` labels 0/1/2.
        spacing: ``case_id -> (sd, sh, sw)`` mm of the coarse grid.
    """

    def __init__(self, folder: Path, case_ids: Sequence[str]) -> None:
        self.root = Path(folder)
        self.case_ids = list(case_ids)
        self.images: dict[str, np.ndarray] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.spacing: dict[str, tuple[float, float, float]] = {}
        for cid in self.case_ids:
            self.images[cid] = np.load(self.root / cid / "image.npy")
            self.labels[cid] = np.load(self.root / cid / "label.npy")
            meta = json.loads((self.root / cid / "meta.json").read_text())
            self.spacing[cid] = tuple(float(v) for v in meta["spacing"])

    def subset(self, case_ids: Sequence[str]) -> VolumeCache:
        """A view on some of the cases (no copy)."""
        out = object.__new__(VolumeCache)
        out.root, out.case_ids = self.root, list(case_ids)
        out.images = {c: self.images[c] for c in case_ids}
        out.labels = {c: self.labels[c] for c in case_ids}
        out.spacing = {c: self.spacing[c] for c in case_ids}
        return out


def build_volume_cache(cases: Sequence[Any], root: str | os.PathLike, s: PreprocessSettings):
    """Build (or reuse) the coarse volumes of ``cases`` under ``root``.

    Args:
        cases: Objects with ``case_id``, ``image`` and ``label`` paths
            (:class:`livseg.io.datasets.Case`); every case needs a label.
        root: Cache root folder.
        s: The settings (pipeline ``coarse``).

    Returns:
        :class:`VolumeCache` with every case.
    """
    folder = Path(root) / s.key()
    for case in cases:
        if case.label is None:
            raise ValueError(f"{case.image}: case {case.case_id} has no label to train on")
    with folder_lock(folder):  # a concurrent builder finishes first; then its cases are fresh
        for case in cases:
            dest = folder / case.case_id
            if not _fresh(dest, Path(case.image), Path(case.label)):
                logger.info("coarse cache: building %s", case.case_id)
                _build_case(case.case_id, Path(case.image), Path(case.label), s, dest)
        return VolumeCache(folder, [c.case_id for c in cases])


class VolumeDataset(Dataset):
    """Random patches of coarse volumes (training) or whole volumes (validation).

    Args:
        cache: The built coarse volume cache.
        case_ids: Cases to draw from (default: all of the cache).
        patch: Patch (d, h, w) in coarse voxels.
        augment: Augmentation, or None for plain random crops.
        samples_per_epoch: Dataset length (patches per epoch); the case of sample ``i`` is
            ``case_ids[i % n_cases]``.
        seed: Base seed; sample ``i`` of epoch ``e`` is drawn from ``(seed, e, i)``.
    """

    def __init__(
        self,
        cache: VolumeCache,
        case_ids: Sequence[str] | None = None,
        patch: tuple[int, int, int] = (48, 80, 80),
        augment: Augmentation3D | None = None,
        samples_per_epoch: int = 0,
        seed: int = 0,
    ) -> None:
        self.cache = cache if case_ids is None else cache.subset(case_ids)
        self.patch = tuple(int(p) for p in patch)
        self.augment = augment
        self.length = int(samples_per_epoch) or len(self.cache.case_ids)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        cid = self.cache.case_ids[i % len(self.cache.case_ids)]
        image = self.cache.images[cid].astype(np.float32)
        label = self.cache.labels[cid]
        rng = np.random.default_rng((self.seed, self.epoch, int(i)))
        if self.augment is not None:
            x, y = self.augment(image, label, self.patch, rng)
        else:
            x, y = random_patch(image, label, self.patch, rng)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(x))[None],
            "label": torch.from_numpy(y.astype(np.int64)),
            "case_id": cid,
        }

    def whole(self, case_id: str, multiple: int) -> tuple[torch.Tensor, np.ndarray, tuple]:
        """A whole volume for validation: ((1, 1, D', H', W') padded tensor, labels, crop)."""
        image, crop = pad_to(
            self.cache.images[case_id].astype(np.float32), multiple, minimum=2 * multiple
        )
        return torch.from_numpy(image)[None, None], self.cache.labels[case_id], crop
