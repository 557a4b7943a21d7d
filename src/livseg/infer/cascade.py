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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livseg.errors import InputError, LivsegError
from livseg.infer.postprocess import LIVER_STRUCTURE_RADIUS_MM, merge_labels, postprocess_liver
from livseg.infer.predictor import (
    SlicePredictor,
    VolumeStats,
    canonical_view,
    settings_from_config,
    volume_stats,
)
from livseg.volume import Volume

log = logging.getLogger("livseg.infer.cascade")

StageProgress = Callable[[str, int, int], None]
"""Progress callback ``(stage, done, total)``; stage is "liver" or "tumour", counts in slices."""

LIVER_MODELS = ("crunet", "densefcn")

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


def _load(checkpoint: str | Path, device: str, batch_size: int, tta: bool) -> SlicePredictor:
    from livseg.infer.pretrained import check_checkpoint_dir
    from livseg.train.checkpoint import load_model

    path = check_checkpoint_dir(checkpoint)
    model, config = load_model(path, device)
    settings = settings_from_config(config, str(path / "config.json"))
    return SlicePredictor(
        model, settings, device=device, batch_size=batch_size, tta=tta, name=str(path)
    )


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
        model: str = "crunet",
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
            model: liver model family, ``"crunet"`` or ``"densefcn"``; picks the shipped liver
                model when ``liver_model`` is None.
            liver_model: checkpoint folder of the liver model (overrides ``model``).
            tumour_model: checkpoint folder of the tumour model (default: shipped
                ``densefcn_tumour``).
            device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
            batch_size: slices per forward pass.
            tta: left-right flip test-time augmentation.
            tumour: False runs the liver stage only.
            **options: passed to :class:`Cascade` (``liver_radius_mm``, ``check_ct``).

        Raises:
            MissingWeightsError: a shipped model is needed but not installed (the message names
                every missing one) or a checkpoint folder is incomplete.
        """
        from livseg.infer.pretrained import (
            LIVER_MODEL_FOR,
            TUMOUR_MODEL,
            MissingWeightsError,
            locate,
            missing_models,
        )

        if model not in LIVER_MODELS:
            raise LivsegError(f"--model {model!r}: valid models are {', '.join(LIVER_MODELS)}")
        needed = []
        if liver_model is None:
            needed.append(LIVER_MODEL_FOR[model])
        if tumour and tumour_model is None:
            needed.append(TUMOUR_MODEL)
        missing = missing_models(needed)
        if missing:
            from livseg.infer.pretrained import WEIGHTS_DIR

            raise MissingWeightsError(
                f"{WEIGHTS_DIR}: shipped model(s) {', '.join(missing)} not installed; pass "
                "trained checkpoint folders with --liver-model/--tumour-model"
            )
        from livseg.train.device import resolve_device

        dev = resolve_device(device)
        liver_dir = Path(liver_model) if liver_model is not None else locate(needed[0])
        liver = _load(liver_dir, dev, batch_size, tta)
        tum = None
        if tumour:
            tumour_dir = Path(tumour_model) if tumour_model is not None else locate(TUMOUR_MODEL)
            tum = _load(tumour_dir, dev, batch_size, tta)
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
        t = time.perf_counter()
        hu, reo = canonical_view(volume)
        spacing = reo.canonical_geometry()[0]
        stats = volume_stats(hu)
        timings["reorient"] = time.perf_counter() - t
        if stats.n_nan:
            msg = f"{src}: {stats.n_nan} non-finite voxel(s) (NaN/inf) replaced by {-1024} HU (air)"
            log.warning(msg)
            warnings.append(msg)
        if self.check_ct:
            check_ct_intensities(stats, src)

        # 2. liver stage on every slice
        t = time.perf_counter()
        z = hu.shape[0]
        mask = np.zeros(hu.shape, dtype=np.uint8)
        above = 0
        psum = 0.0
        uncertain = 0
        pmax = 0.0
        cb = (lambda d, n: progress("liver", d, n)) if progress else None
        for ks, prob in self.liver.predict(hu, range(z), stats, None, cb):
            fg = prob > 0.5
            mask[ks] = fg
            n_fg = int(np.count_nonzero(fg))
            above += n_fg
            if n_fg:
                p_fg = prob[fg]
                psum += float(p_fg.sum(dtype=np.float64))
                uncertain += int(np.count_nonzero(p_fg < 0.75))
            pmax = max(pmax, float(prob.max()))
        summary = {
            "voxels_above_0_5": above,
            "mean_in_mask": psum / above if above else 0.0,
            "uncertain_fraction": uncertain / above if above else 0.0,
            "max": pmax,
        }
        timings["liver"] = time.perf_counter() - t

        # 3. post-processing
        t = time.perf_counter()
        liver = postprocess_liver(mask, spacing, self.liver_radius_mm)
        del mask
        timings["postprocess"] = time.perf_counter() - t
        liver_found = bool(liver.any())

        # 4.-5. tumour stage in the liver box, masked by the liver
        t = time.perf_counter()
        if not liver_found:
            msg = f"{src}: no liver found; the labels are all background (liver_found = false)"
            log.warning(msg)
            warnings.append(msg)
            labels_c = liver
        elif self.tumour is None:
            labels_c = liver
        else:
            labels_c = self._tumour_stage(hu, liver, stats, progress)
        timings["tumour"] = time.perf_counter() - t

        t = time.perf_counter()
        labels = Volume(
            reo.undo(labels_c), volume.spacing, volume.origin, volume.direction, "label"
        )
        timings["reorient"] += time.perf_counter() - t
        for k, v in timings.items():
            log.debug("%s: %s %.2f s", src, k, v)
        return SegmentationResult(labels, liver_found, summary, timings, warnings)

    def _tumour_stage(
        self, hu: np.ndarray, liver: np.ndarray, stats: VolumeStats, progress: StageProgress | None
    ) -> np.ndarray:
        """Run the tumour model on the liver slices inside the liver box; 0/1/2 labels."""
        from livseg.preprocess.slices import inplane_bbox

        assert self.tumour is not None
        s = self.tumour.settings
        if s.crop_to_liver:
            box = inplane_bbox(liver, int(s.crop_margin), square=True)
        else:
            box = (0, hu.shape[1], 0, hu.shape[2])
        y0, y1, x0, x1 = box
        ks = np.flatnonzero(liver.any(axis=(1, 2)))
        labels = liver  # uint8 0/1, turned into 0/1/2 in place
        cb = (lambda d, n: progress("tumour", d, n)) if progress else None
        for kb, prob in self.tumour.predict(hu, ks, stats, box, cb):
            sub = labels[kb, y0:y1, x0:x1]
            labels[kb, y0:y1, x0:x1] = merge_labels(sub >= 1, prob > 0.5)
        return labels
