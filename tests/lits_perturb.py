"""Predictions made from real LiTS reference labels by perturbing them, in memory.

Used by the metric tests and by ``benchmarks/metrics_speed.py``; nothing is written into the
repository. A prediction is the reference with its liver eroded or dilated (18-neighbourhood) and
shifted, and each reference lesion kept, eroded, dilated, shifted or dropped at random (seeded);
one variant adds false-positive blobs and bridges lesions so that merges occur.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

#: (case number, variant) of the 8 pairs used by the tests and the benchmark.
PAIRS = ((0, "a"), (1, "a"), (2, "a"), (3, "a"), (4, "a"), (0, "b"), (1, "b"), (4, "b"))

_S18 = ndimage.generate_binary_structure(3, 2)


def read_reference(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A LiTS segmentation as livseg reads it: (Z, Y, X) uint8 and (sz, sy, sx) mm."""
    from livseg.io import read_volume

    vol = read_volume(path, kind="label")
    return vol.array, vol.spacing


def _lesion(mask: np.ndarray, op: str, rng: np.random.Generator) -> np.ndarray:
    if op == "erode":
        out = ndimage.binary_erosion(mask, _S18)
        return out if out.any() else mask
    if op == "dilate":
        return ndimage.binary_dilation(mask, _S18, iterations=int(rng.integers(1, 3)))
    if op == "shift":
        axis = int(rng.integers(1, 3))
        return np.roll(mask, int(rng.choice([-3, -2, 2, 3])), axis=axis)
    if op == "drop":
        return np.zeros_like(mask)
    return mask


def _box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    (box,) = ndimage.find_objects(mask.astype(np.uint8))
    return tuple(slice(max(s.start - pad, 0), s.stop + pad) for s in box)


def _bridge_and_add_blobs(tumour: np.ndarray, liver: np.ndarray, rng: np.random.Generator) -> None:
    """Close gaps of up to ~6 voxels between lesions (merges) and add two 3x7x7 blobs (FP)."""
    if tumour.any():
        box = _box(tumour, 4)
        tumour[box] |= ndimage.binary_closing(tumour[box], _S18, iterations=3)
    if not liver.any():
        return
    box = _box(liver, 0)
    core = np.argwhere(ndimage.binary_erosion(liver[box], _S18, iterations=6))
    origin = np.array([s.start for s in box])
    for z, y, x in core[rng.choice(len(core), size=min(2, len(core)), replace=False)] + origin:
        tumour[max(z - 1, 0) : z + 2, max(y - 3, 0) : y + 4, max(x - 3, 0) : x + 4] = True


def _largest(labels: np.ndarray, count: int) -> list[int]:
    sizes = np.bincount(labels.ravel())[1:]
    return [int(k) + 1 for k in np.argsort(-sizes, kind="stable")[:count]]


def _split_largest(tumour: np.ndarray, labels: np.ndarray) -> None:
    """Cut a 2-voxel gap (a y-plane through its centre) into the largest lesion: a split."""
    (k,) = _largest(labels, 1)
    y = int(np.argwhere(labels == k)[:, 1].mean())
    tumour[:, y : y + 2, :] &= labels[:, y : y + 2, :] != k


def _bridge_two_largest(tumour: np.ndarray, labels: np.ndarray) -> None:
    """Join the centres of the two largest lesions with a 3-voxel-wide tube: a merge."""
    if labels.max() < 2:
        return
    a, b = (np.argwhere(labels == k).mean(axis=0) for k in _largest(labels, 2))
    steps = int(np.abs(b - a).max()) + 1
    for t in np.linspace(0.0, 1.0, steps):
        z, y, x = np.round(a + t * (b - a)).astype(int)
        tumour[z, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = True


def perturb(ref: np.ndarray, case: int, variant: str) -> np.ndarray:
    """A perturbed copy of a (Z, Y, X) reference label map (0/1/2), deterministic per arguments.

    Variant ``"a"``: liver dilated by one voxel and shifted by 2 voxels in x; lesions perturbed
    one by one; the largest lesion cut in two (a split). Variant ``"b"``: liver eroded by one
    voxel and shifted by 1 voxel in y; lesions perturbed, neighbouring lesions bridged, the two
    largest joined by a tube (a merge), and two false-positive blobs added.
    """
    rng = np.random.default_rng(1000 * case + ord(variant))
    liver = ref >= 1
    if variant == "a":
        liver = np.roll(ndimage.binary_dilation(liver, _S18), 2, axis=2)
    else:
        liver = np.roll(ndimage.binary_erosion(liver, _S18), 1, axis=1)
    labels, n = ndimage.label(ref == 2)
    tumour = np.zeros(ref.shape, dtype=bool)
    ops = ("keep", "erode", "dilate", "shift", "drop")
    weights = (0.3, 0.2, 0.2, 0.2, 0.1)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        grown = tuple(slice(max(s.start - 4, 0), s.stop + 4) for s in box)
        lesion = labels[grown] == k
        tumour[grown] |= _lesion(lesion, str(rng.choice(ops, p=weights)), rng)
    if variant == "a" and n:
        _split_largest(tumour, labels)
    if variant == "b":
        _bridge_and_add_blobs(tumour, liver, rng)
        _bridge_two_largest(tumour, labels)
    pred = liver.astype(np.uint8)
    pred[tumour] = 2
    return pred
