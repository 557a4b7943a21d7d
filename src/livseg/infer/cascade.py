"""The liver -> crop -> tumour cascade at inference (SPEC section 3).

1. The CT is viewed in the canonical "LPS" layout (a permuted/flipped *view*, no copy).
2. Liver stage (CR-U-Net or liver DenseFCN) on every axial slice, batched; the binary mask
   (probability > 0.5) is kept as uint8, never a float volume.
3. Liver post-processing: erosion -> largest 3-D component -> dilation
   (:func:`livseg.infer.postprocess.postprocess_liver`).
4. Tumour stage (3-window DenseFCN) on the slices holding liver, inside the in-plane bounding
   box of the liver plus a margin (the tumour model's own ``crop_margin``, squared, exactly as
   it was trained), pasted back.
5. Tumour kept only inside the liver; labels 0/1/2 (uint8) mapped back to the input's own array
   layout and geometry.

If no liver is found, the labels are all background, ``liver_found`` is False and a warning is
logged (no tumour stage is run): the caller still gets a valid, honest result.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livseg.device import resolve_device
from livseg.errors import InputError, LivsegError
from livseg.infer.postprocess import LIVER_STRUCTURE_RADIUS_MM, merge_labels, postprocess_liver
from livseg.infer.predictor import SlicePredictor, VolumeStats, volume_stats
from livseg.infer.pretrained import (
    DEFAULT_MODEL,
    LIVER_MODEL_FOR,
    TUMOUR_MODEL,
    WEIGHTS_DIR,
    MissingWeightsError,
    check_checkpoint_dir,
    locate,
    missing_models,
)
from livseg.preprocess.intensity import AIR_HU
from livseg.preprocess.orientation import canonical_view
from livseg.preprocess.pipeline import crop_box
from livseg.volume import Volume

log = logging.getLogger("livseg.infer.cascade")

StageProgress = Callable[[str, int, int], None]
"""Progress callback ``(stage, done, total)``; stage is "liver" or "tumour", counts in slices."""

CT_MIN_AIR_HU = -900.0
"""A CT must contain air: some voxel below this (HU)."""


@dataclass
class SegmentationResult:
    """Result of :meth:`Cascade.segment`.

    Attributes:
        labels: label Volume (uint8, 0 background / 1 liver / 2 tumour) in the input's geometry.
        liver_found: False when the liver stage found no liver (labels all background).
        liver_probability: summary of the liver stage's probabilities before post-processing:
            ``voxels_above_0_5`` (count), ``mean_in_mask`` (mean probability of those voxels),
            ``uncertain_fraction`` (share of voxels with 0.5 < p < 0.75 among them),
            ``max`` (highest probability).
        timings: seconds per stage ("reorient", "liver", "postprocess", "tumour").
        warnings: human-readable warnings raised while segmenting (also logged).
    """

    labels: Volume
    liver_found: bool
    liver_probability: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def check_ct_intensities(stats: VolumeStats, source: str = "input") -> None:
    """Refuse volumes whose intensities do not look like CT in HU.

    Rejected: no voxel below -900 HU (a CT always holds air, about -1000 HU), or a range
    inside (-500, 300) (8-bit images 0..255, MR-like or normalised values).

    Raises:
        InputError: naming ``source`` and the range found.
    """
    lo, hi = stats.hu_min, stats.hu_max
    if (lo > -500.0 and hi < 300.0) or lo > CT_MIN_AIR_HU:
        raise InputError(
            f"{source}: intensities [{lo:g}, {hi:g}] do not look like CT in Hounsfield units "
            f"(no air below {CT_MIN_AIR_HU:g} HU); is it an MR, an 8-bit export or an image "
            "without its rescale slope/intercept?"
        )


def _load(checkpoint: str | Path, device: Any, batch_size: int, tta: bool) -> SlicePredictor:
    """A predictor of the checkpoint folder ``checkpoint`` (torch is imported here)."""
    from livseg.models.checkpoint import load_model

    path = check_checkpoint_dir(checkpoint)
    model, spec = load_model(path, device)
    return SlicePredictor(
        model, spec.preprocess, device=device, batch_size=batch_size, tta=tta, name=str(path)
    )


def _checkpoint_dirs(
    model: str, liver_model: str | Path | None, tumour_model: str | Path | None, tumour: bool
) -> tuple[Path, Path | None]:
    """The liver and tumour checkpoint folders: the given ones, else the shipped models.

    Every shipped model needed is checked before any is loaded, so one error names them all.

    Raises:
        LivsegError: ``model`` is not a liver model family.
        MissingWeightsError: a needed shipped model is not installed.
    """
    if model not in LIVER_MODEL_FOR:
        raise LivsegError(f"--model {model!r}: valid models are {', '.join(LIVER_MODEL_FOR)}")
    needed = []
    if liver_model is None:
        needed.append(LIVER_MODEL_FOR[model])
    if tumour and tumour_model is None:
        needed.append(TUMOUR_MODEL)
    missing = missing_models(needed)
    if missing:
        raise MissingWeightsError(
            f"{WEIGHTS_DIR}: shipped model(s) {', '.join(missing)} not installed; pass "
            "trained checkpoint folders with --liver-model/--tumour-model"
        )
    liver_dir = Path(liver_model) if liver_model is not None else locate(LIVER_MODEL_FOR[model])
    if not tumour:
        return liver_dir, None
    return liver_dir, Path(tumour_model) if tumour_model is not None else locate(TUMOUR_MODEL)


@contextlib.contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds spent in the ``with`` block to ``timings[key]`` (wall clock)."""
    t = time.perf_counter()
    yield
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - t


class _LiverSummary:
    """Running summary of the liver stage's probabilities (see :class:`SegmentationResult`)."""

    def __init__(self) -> None:
        self.above, self.psum, self.uncertain, self.pmax = 0, 0.0, 0, 0.0

    def add(self, prob: np.ndarray, fg: np.ndarray) -> None:
        """Count one batch: probabilities (b, H, W) and their mask ``prob > 0.5``."""
        n_fg = int(np.count_nonzero(fg))
        self.above += n_fg
        if n_fg:
            p_fg = prob[fg]
            self.psum += float(p_fg.sum(dtype=np.float64))
            self.uncertain += int(np.count_nonzero(p_fg < 0.75))
        self.pmax = max(self.pmax, float(prob.max()))

    def as_dict(self) -> dict[str, float]:
        above = self.above
        return {
            "voxels_above_0_5": above,
            "mean_in_mask": self.psum / above if above else 0.0,
            "uncertain_fraction": self.uncertain / above if above else 0.0,
            "max": self.pmax,
        }


def _stage_callback(progress: StageProgress | None, stage: str) -> Callable | None:
    return (lambda d, n: progress(stage, d, n)) if progress else None


class Cascade:
    """Loaded liver and tumour models; segments volumes one after another.

    Args:
        liver: predictor of the liver stage (pipeline ``crunet`` or ``densefcn_liver``).
        tumour: predictor of the tumour stage (pipeline ``tumour``), or None for liver only.
        liver_radius_mm: radius of the liver post-processing element (mm).
        check_ct: refuse inputs whose intensities do not look like CT (see
            :func:`check_ct_intensities`).
    """

    def __init__(
        self,
        liver: SlicePredictor,
        tumour: SlicePredictor | None = None,
        *,
        liver_radius_mm: float = LIVER_STRUCTURE_RADIUS_MM,
        check_ct: bool = True,
    ) -> None:
        if liver.settings.pipeline == "tumour":
            raise LivsegError(f"{liver.name}: this is a tumour model, not a liver model")
        if tumour is not None and tumour.settings.pipeline != "tumour":
            raise LivsegError(
                f"{tumour.name}: this is a {tumour.settings.pipeline} model, not a tumour model"
            )
        self.liver = liver
        self.tumour = tumour
        self.liver_radius_mm = float(liver_radius_mm)
        self.check_ct = bool(check_ct)

    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        *,
        liver_model: str | Path | None = None,
        tumour_model: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 8,
        tta: bool = False,
        tumour: bool = True,
        **options: Any,
    ) -> Cascade:
        """Load the cascade from checkpoint folders or the shipped weights.

        Args:
            model: liver model family, a key of
                :data:`~livseg.infer.pretrained.LIVER_MODEL_FOR` (``"crunet"`` or
                ``"densefcn"``); picks the shipped liver model when ``liver_model`` is None.
            liver_model: checkpoint folder of the liver model (overrides ``model``).
            tumour_model: checkpoint folder of the tumour model (default: the shipped
                :data:`~livseg.infer.pretrained.TUMOUR_MODEL`).
            device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
            batch_size: slices per forward pass.
            tta: left-right flip test-time augmentation.
            tumour: False runs the liver stage only.
            **options: passed to :class:`Cascade` (``liver_radius_mm``, ``check_ct``).

        Raises:
            MissingWeightsError: a shipped model is needed but not installed (the message names
                every missing one) or a checkpoint folder is incomplete.
        """
        liver_dir, tumour_dir = _checkpoint_dirs(model, liver_model, tumour_model, tumour)
        dev = resolve_device(device)
        liver = _load(liver_dir, dev, batch_size, tta)
        tum = _load(tumour_dir, dev, batch_size, tta) if tumour_dir is not None else None
        log.info(
            "loaded liver model %s%s on %s",
            liver.name,
            f" and tumour model {tum.name}" if tum else "",
            dev,
        )
        return cls(liver, tum, **options)

    # --- the cascade ----------------------------------------------------------------------------
    def segment(
        self, volume: Volume, progress: StageProgress | None = None, source: str | None = None
    ) -> SegmentationResult:
        """Segment the liver and liver tumours of a CT volume.

        Args:
            volume: CT image Volume (float32 HU), any orientation; (Z, Y, X) with Z >= 1.
            progress: optional ``(stage, done, total)`` callback.
            source: name of the input for messages (default: the volume's repr).

        Returns:
            :class:`SegmentationResult`; its labels have exactly the input geometry.

        Raises:
            InputError: not an image volume, or intensities that are not CT (``check_ct``).
        """
        src = source or repr(volume)
        if volume.kind != "image":
            raise InputError(f"{src}: segment needs a CT image, got a label volume")
        timings: dict[str, float] = {}
        warnings: list[str] = []
        with timed(timings, "reorient"):
            hu, reo = canonical_view(volume)
            spacing = reo.canonical_geometry()[0]
            stats = volume_stats(hu)
        self._check_input(stats, src, warnings)
        with timed(timings, "liver"):  # 2. liver stage on every slice
            mask, summary = self._liver_stage(hu, stats, progress)
        with timed(timings, "postprocess"):  # 3. post-processing
            liver = postprocess_liver(mask, spacing, self.liver_radius_mm)
            del mask
        liver_found = bool(liver.any())
        with timed(timings, "tumour"):  # 4.-5. tumour stage in the liver box
            labels_c = self._tumour_stage(hu, liver, stats, progress, src, warnings)
        with timed(timings, "reorient"):
            labels = Volume(
                reo.undo(labels_c), volume.spacing, volume.origin, volume.direction, "label"
            )
        for k, v in timings.items():
            log.debug("%s: %s %.2f s", src, k, v)
        return SegmentationResult(labels, liver_found, summary, timings, warnings)

    def _check_input(self, stats: VolumeStats, src: str, warnings: list[str]) -> None:
        """Warn about non-finite voxels; refuse non-CT intensities when ``check_ct``."""
        if stats.n_nan:
            msg = (
                f"{src}: {stats.n_nan} non-finite voxel(s) (NaN/inf) replaced by "
                f"{AIR_HU:g} HU (air)"
            )
            log.warning(msg)
            warnings.append(msg)
        if self.check_ct:
            check_ct_intensities(stats, src)

    def _liver_stage(
        self, hu: np.ndarray, stats: VolumeStats, progress: StageProgress | None
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Liver model on every slice: uint8 mask (probability > 0.5) and probability summary."""
        mask = np.zeros(hu.shape, dtype=np.uint8)
        summary = _LiverSummary()
        cb = _stage_callback(progress, "liver")
        for ks, prob in self.liver.predict(hu, range(hu.shape[0]), stats, None, cb):
            fg = prob > 0.5
            mask[ks] = fg
            summary.add(prob, fg)
        return mask, summary.as_dict()

    def _tumour_stage(
        self,
        hu: np.ndarray,
        liver: np.ndarray,
        stats: VolumeStats,
        progress: StageProgress | None,
        src: str,
        warnings: list[str],
    ) -> np.ndarray:
        """0/1/2 labels: the tumour model on the liver slices inside the liver box, masked by
        the liver (the liver alone without a tumour model; all background without liver)."""
        if not liver.any():
            msg = f"{src}: no liver found; the labels are all background (liver_found = false)"
            log.warning(msg)
            warnings.append(msg)
            return liver
        if self.tumour is None:
            return liver
        box = crop_box(liver, self.tumour.settings)
        y0, y1, x0, x1 = box
        ks = np.flatnonzero(liver.any(axis=(1, 2)))
        labels = liver  # uint8 0/1, turned into 0/1/2 in place
        cb = _stage_callback(progress, "tumour")
        for kb, prob in self.tumour.predict(hu, ks, stats, box, cb):
            sub = labels[kb, y0:y1, x0:x1]
            labels[kb, y0:y1, x0:x1] = merge_labels(sub >= 1, prob > 0.5)
        return labels
