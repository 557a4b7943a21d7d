"""Slice-wise prediction of a foreground probability over a canonical CT volume, in batches.

A :class:`SlicePredictor` wraps one trained network and the pre-processing it was trained with
(:class:`livseg.preprocess.pipeline.PreprocessSettings`, saved in the checkpoint's
``config.json``). For a batch of axial slices it calls the same pipeline as the training slice
cache (:mod:`livseg.preprocess.pipeline`): gather each slice with its 2.5-D context
(offset-major channels, end slices replicated), apply the intensity pipeline on the full slices
(per-slice histogram equalisation, or volume min-max with the *whole volume's* HU range), crop
the in-plane box (the whole slice for the liver stage, the liver box for the tumour stage),
resize to ``(size, size)`` (:meth:`SlicePredictor.network_input`); then it runs the network,
takes the foreground probability and resizes it back to the box. Only one batch is ever held in
float: memory does not grow with the number of slices (512x512x1000 volumes work). Non-finite
voxels are replaced by :data:`livseg.preprocess.intensity.AIR_HU` before the pipeline.

Optional test-time augmentation (``tta=True``) averages the probabilities of the slice and of its
left-right mirror.

On a GPU (``device_prep``) only the gathering of the HU slices stays on the host: the intensity
pipeline, the resizing both ways and the members' mean run on the device, in torch
(:mod:`livseg.preprocess.device`, the same values to float32 rounding).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from livseg.errors import LivsegError
from livseg.preprocess.intensity import AIR_HU
from livseg.preprocess.pipeline import (
    Box,
    PreprocessSettings,
    context_indices,
    needs_whole_slices,
    prepare_slices,
)
from livseg.preprocess.resample import resize_slices

log = logging.getLogger("livseg.infer.predictor")

Progress = Callable[[int, int], None]
"""Progress callback ``(done, total)`` in slices."""


@dataclass(frozen=True)
class VolumeStats:
    """Whole-volume intensity statistics, computed once in chunks (NaN ignored).

    Attributes:
        hu_min: minimum HU over the finite voxels.
        hu_max: maximum HU over the finite voxels.
        n_nan: number of non-finite voxels (replaced by :data:`AIR_HU` in every batch).
        liver_median: median HU of the case's liver, for models whose windows follow the
            liver (``PreprocessSettings.liver_hu``); None until a liver is known.
    """

    hu_min: float
    hu_max: float
    n_nan: int
    liver_median: float | None = None

    @property
    def value_range(self) -> tuple[float, float]:
        """(min, max) HU, as the min-max pipelines take it."""
        return self.hu_min, self.hu_max


def volume_stats(array: np.ndarray, chunk: int = 32) -> VolumeStats:
    """Min, max and non-finite count of a (Z, Y, X) array, streamed over ``chunk`` slices.

    Args:
        array: (Z, Y, X) HU (a view is fine).
        chunk: slices per step (bounds the temporary memory).

    Returns:
        :class:`VolumeStats`; min = max = AIR_HU when no voxel is finite.
    """
    if array.size and np.issubdtype(array.dtype, np.floating):
        lo, hi = float(array.min()), float(array.max())  # NaN or +-inf would show here
        if np.isfinite(lo) and np.isfinite(hi):  # every voxel finite: two passes, no copies
            return VolumeStats(lo, hi, 0)
    lo, hi, bad = np.inf, -np.inf, 0
    for start in range(0, array.shape[0], chunk):
        block = np.asarray(array[start : start + chunk], dtype=np.float32)
        finite = np.isfinite(block)
        n_bad = int(block.size - np.count_nonzero(finite))
        bad += n_bad
        if n_bad:
            block = block[finite]
        if block.size:
            lo = min(lo, float(block.min()))
            hi = max(hi, float(block.max()))
    if not np.isfinite(lo):
        lo = hi = AIR_HU
    return VolumeStats(lo, hi, bad)


def _mean(probs: Iterator[Any], n: int) -> Any:
    """The mean of ``n`` members' float32 probabilities (numpy arrays or tensors), summed in
    member order."""
    total = None
    for prob in probs:
        total = prob if total is None else total + prob
    return total / np.float32(n)


def size_multiple(model: Any) -> int:
    """The divisor a network needs for H and W (``2**depth``), from its attributes."""
    if hasattr(model, "multiple"):
        return int(model.multiple)
    if hasattr(model, "levels"):
        return 2 ** int(model.levels)
    if hasattr(model, "depth"):
        return 2 ** int(model.depth)
    return 1


class SlicePredictor:
    """Foreground probability of axial slices with one trained network or an ensemble.

    Args:
        model: network returning logits (B, C, H', W'), or a sequence of such networks trained
            with the same pre-processing (a fold ensemble: their probabilities are averaged);
            put in eval mode here.
        settings: the pre-processing it was trained with (``PreprocessSettings``).
        device: torch device to run on.
        batch_size: slices per forward pass.
        tta: average with the left-right mirrored prediction.
        name: name used in log messages (e.g. the checkpoint folder).
        bf16: run the networks under bfloat16 autocast (``--backend bf16``).
        device_prep: pre-process the slices and resize the probabilities back on the networks'
            device, in torch (:mod:`livseg.preprocess.device`); None = on a GPU only.
    """

    def __init__(
        self,
        model,
        settings: PreprocessSettings,
        device: Any = "cpu",
        batch_size: int = 8,
        tta: bool = False,
        name: str = "model",
        bf16: bool = False,
        device_prep: bool | None = None,
    ) -> None:
        from livseg.infer.backend import numpy_networks

        if batch_size < 1:
            raise LivsegError(f"batch size must be >= 1, got {batch_size}")
        members = list(model) if isinstance(model, list | tuple) else [model]
        if not members:
            raise LivsegError(f"{name}: an ensemble needs at least one network")
        self.numpy = numpy_networks(members, bf16)  # ONNX Runtime: no torch at all
        if self.numpy:
            self.device, self.models = device, members
        else:
            import torch

            self.device = torch.device(device)
            self.models = [m.to(self.device).eval() for m in members]
        self.settings = settings
        self.batch_size = int(batch_size)
        self.tta = bool(tta)
        self.name = name
        self.bf16 = bool(bf16)
        if device_prep is None:  # on a GPU: the host's numpy work was most of a case's time
            device_prep = not self.numpy and self.device.type != "cpu"
        if device_prep and self.numpy:
            raise LivsegError(f"{name}: pre-processing on the device needs torch networks")
        self.device_prep = bool(device_prep)
        size = int(settings.size)
        mult = max(size_multiple(m) for m in self.models)
        if size % mult:
            raise LivsegError(
                f"{name}: working size {size} is not divisible by {mult}, which the network needs"
            )

    @property
    def context(self) -> int:
        return int(self.settings.context)

    def _gather(
        self, hu: np.ndarray, ks: np.ndarray, stats: VolumeStats, box: Box | None = None
    ) -> np.ndarray:
        """(b,) slice indices -> (b * (2c+1), H, W) float32 HU with context (only the in-plane
        ``box`` when given), NaN replaced."""
        src = context_indices(ks, self.context, hu.shape[0]).ravel()
        if box is None:
            block = np.asarray(hu[src], dtype=np.float32)  # fancy indexing: a copy
        else:
            block = np.asarray(hu[src, box[0] : box[1], box[2] : box[3]], dtype=np.float32)
        if stats.n_nan:
            np.nan_to_num(block, copy=False, nan=AIR_HU, posinf=AIR_HU, neginf=AIR_HU)
        return block

    def network_input(
        self, hu: np.ndarray, ks: np.ndarray, stats: VolumeStats, box: Box
    ) -> np.ndarray:
        """Exactly what the network is fed for slices ``ks`` (what the slice cache stores).

        Args:
            hu: (Z, Y, X) HU array in canonical layout (a view is fine; it is not modified).
            ks: (b,) canonical slice indices.
            stats: whole-volume statistics (:func:`volume_stats`).
            box: in-plane crop (y0, y1, x0, x1), exclusive ends, in pixels.

        Returns:
            (b, C, size, size) float32 in [0, 1], C = ``settings.channels`` (context slices
            stacked offset-major).
        """
        whole = needs_whole_slices(self.settings)
        block = self._gather(hu, np.asarray(ks, dtype=np.int64), stats, None if whole else box)
        if not whole:  # the block is the box already
            box = (0, block.shape[1], 0, block.shape[2])
        chan = prepare_slices(
            block, self.settings, stats.value_range, box, stats.liver_median
        )  # (b*n, C0, s, s)
        size = int(self.settings.size)
        return chan.reshape(len(ks), -1, size, size)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """(b, C, size, size) network input -> (b, size, size) mean foreground probability of
        the members (each the mean with its mirrored prediction under ``tta``)."""
        return _mean(self._member_probabilities(x), len(self.models))

    def _member_probabilities(self, x: np.ndarray) -> Iterator[np.ndarray]:
        """Each member's float32 probability, in numpy (ONNX Runtime: torch is not imported)."""
        if self.numpy:
            from livseg.infer.backend import foreground_probability_np

            x = np.ascontiguousarray(x, dtype=np.float32)
            for model in self.models:
                prob = foreground_probability_np(model(x))
                if self.tta:
                    flipped = foreground_probability_np(model(np.ascontiguousarray(x[..., ::-1])))
                    prob = 0.5 * (prob + flipped[..., ::-1])
                yield prob
            return
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
            for prob in self._member_tensors(t):
                yield prob.cpu().numpy()

    def _member_tensors(self, t: Any) -> Iterator[Any]:
        """Each member's float32 probability (b, size, size) as a tensor on the device, for the
        network input ``t`` (b, C, size, size) there (torch networks; in inference mode)."""
        import torch

        from livseg.infer.backend import autocast
        from livseg.models import foreground_probability

        with autocast(self.device, self.bf16):
            if t.dim() == 4:  # faster convolutions (oneDNN); the results are the same
                t = t.contiguous(memory_format=torch.channels_last)
            for model in self.models:
                prob = foreground_probability(model(t)).float()
                if self.tta:
                    flipped = foreground_probability(model(torch.flip(t, dims=[-1]))).float()
                    prob = 0.5 * (prob + torch.flip(flipped, dims=[-1]))
                yield prob[:, 0] if prob.dim() == 4 else prob

    def _predict_on_device(
        self, hu: np.ndarray, ks: np.ndarray, stats: VolumeStats, box: Box
    ) -> np.ndarray:
        """:meth:`network_input`, the members' mean and its resizing to ``box``, with all but
        the gathering on the device: (b, y1-y0, x1-x0) float32 in [0, 1]."""
        import torch

        from livseg.preprocess import device as dev

        whole = needs_whole_slices(self.settings)
        block = self._gather(hu, ks, stats, None if whole else box)
        y0, y1, x0, x1 = box if whole else (0, block.shape[1], 0, block.shape[2])
        size = int(self.settings.size)
        with torch.inference_mode():
            t = torch.from_numpy(block).to(self.device)
            x = dev.prepare_slices(
                t, self.settings, stats.value_range, (y0, y1, x0, x1), stats.liver_median
            ).reshape(len(ks), -1, size, size)
            prob = _mean(self._member_tensors(x), len(self.models))[:, None]
            prob = dev.resize(prob, (y1 - y0, x1 - x0)).clamp_(0.0, 1.0)
            return prob[:, 0].cpu().numpy()

    def predict(
        self,
        hu: np.ndarray,
        slices: Sequence[int],
        stats: VolumeStats,
        box: tuple[int, int, int, int] | None = None,
        progress: Progress | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Predict slices batch by batch.

        Args:
            hu: (Z, Y, X) HU array in canonical layout (a view is fine; it is not modified).
            slices: canonical slice indices to predict.
            stats: whole-volume statistics (:func:`volume_stats`).
            box: in-plane crop (y0, y1, x0, x1), exclusive ends, in pixels; None = whole slice.
            progress: called with (slices done, total) after each batch.

        Yields:
            (indices (b,), probability (b, y1-y0, x1-x0) float32 in [0, 1]) per batch.
        """
        ks_all = np.asarray(list(slices), dtype=np.int64)
        box = box if box is not None else (0, hu.shape[1], 0, hu.shape[2])
        y0, y1, x0, x1 = box
        total = int(ks_all.size)
        for start in range(0, total, self.batch_size):
            ks = ks_all[start : start + self.batch_size]
            if self.device_prep:
                yield ks, self._predict_on_device(hu, ks, stats, box)
            else:
                prob = self._forward(self.network_input(hu, ks, stats, box))  # (b, h', w')
                prob = resize_slices(prob, (y1 - y0, x1 - x0), "image")
                yield ks, np.clip(prob, 0.0, 1.0)
            if progress is not None:
                progress(min(start + self.batch_size, total), total)
