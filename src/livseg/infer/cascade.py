"""The liver -> crop -> tumour cascade at inference (SPEC section 3).

1. The CT is viewed in the canonical "LPS" layout (a permuted/flipped *view*, no copy).
1b. Coarse 3-D liver stage (when loaded; :mod:`livseg.infer.coarse`): the whole CT at about 4 mm
   gives the region (box) where the liver is. The liver stage then runs on the region's slices
   only (in the region's in-plane box for a liver model trained on liver crops), and what it
   labels outside the region is dropped: heart, kidney and bowel far from the liver go. With the
   gate (the coarse liver on the input grid, ``gate_mm``) only what lies in it is kept, so the
   liver stage runs only on the slices the gate reaches. Every mask from here on is an array of
   the region's box grown by the liver dilation's reach (``Cascade._work_box``), where all the
   labels lie, not of the whole CT (the crops are still placed against the slices' edges).
   Without a coarse stage the cascade is exactly the papers' (every slice, whole field of view).
2. Liver stage (CR-U-Net or liver DenseFCN) on every axial slice, batched; the binary mask
   (probability > 0.5) is kept as uint8, never a float volume. Every stage may be a fold
   ensemble (mean probability of its members).
3. Liver post-processing: erosion -> largest 3-D component -> dilation
   (:func:`livseg.infer.postprocess.postprocess_liver`).
4. Tumour stage (3-window DenseFCN or the tumour R-U-Net) on the slices of the **tumour
   region**, inside its in-plane bounding box plus a margin (the tumour model's own
   ``crop_margin``, squared, exactly as it was trained), pasted back. The tumour region is the
   liver; with a coarse stage it is the liver *or* the coarse stage's gate (``tumour_in_gate``),
   because the fine liver models leave out large hypodense tumours at the liver's edge, which the
   liver label must include (cross-validated: tumour Dice global 0.14 -> 0.29, see the model
   card).
5. Tumour kept only inside the tumour region; a tumour voxel is a liver voxel too, so tumour
   found outside the fine liver extends the liver. In livseg's cascade the tumour label is closed
   with a box of ``tumour_closing_mm`` each way inside the tumour region
   (:func:`livseg.infer.postprocess.close_lesions`: a slice the 2-D models missed between two
   where they found a lesion, gaps between pieces of one lesion). Tumour components below
   ``min_lesion_mm3``
   become liver inside the fine liver and background outside it. Labels 0/1/2 (uint8) mapped
   back to the input's own array layout and geometry.

If no liver is found, the labels are all background, ``liver_found`` is False and a warning is
logged (no tumour stage is run): the caller still gets a valid, honest result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livseg.device import no_cuda_here, resolve_device
from livseg.errors import InputError, LivsegError
from livseg.infer.backend import resolve_backend
from livseg.infer.coarse import CoarseRegion, CoarseStage
from livseg.infer.postprocess import (
    LIVER_STRUCTURE_RADIUS_MM,
    MIN_LESION_MM3,
    TUMOUR_CLOSING_MM,
    close_lesions,
    drop_gate_lesions,
    postprocess_liver,
    remove_small_lesions,
    structuring_element,
)
from livseg.infer.predictor import SlicePredictor, VolumeStats, volume_stats
from livseg.infer.pretrained import (
    DEFAULT_MODEL,
    DEFAULT_PAPER,
    WEIGHTS_DIR,
    MissingWeightsError,
    cascade_models,
    check_checkpoint_dir,
    ensemble_members,
    locate,
    missing_models,
    select_folds,
)
from livseg.preprocess.bbox import square_box
from livseg.preprocess.intensity import AIR_HU
from livseg.preprocess.orientation import canonical_view
from livseg.preprocess.pipeline import SLICE_PIPELINES, crop_box, liver_median_hu
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


def _member_specs(
    checkpoint: str | Path, folds: Sequence[int] | None = None
) -> tuple[list[Path], Any, Path]:
    """The members of a model folder (one checkpoint or a fold ensemble; only ``folds`` of it
    when given), their common :class:`~livseg.checkpoint_spec.ModelSpec` and the folder; no
    weights are read.

    Raises:
        LivsegError: ensemble members trained with different pre-processing or networks, or
            ``folds`` that the folder does not have.
    """
    from livseg.checkpoint_spec import CONFIG_FILE, model_spec, read_config_json

    path = check_checkpoint_dir(checkpoint)
    members = select_folds(ensemble_members(path), folds, path)
    specs = [model_spec(read_config_json(m), str(m / CONFIG_FILE)) for m in members]
    if any(sp.preprocess != specs[0].preprocess or sp.name != specs[0].name for sp in specs):
        raise LivsegError(f"{path}: the ensemble's members differ in network or pre-processing")
    return members, specs[0], path


def _torch_network(checkpoint: Path, device: Any) -> Any:
    """The torch network of one checkpoint (imports torch)."""
    from livseg.models.checkpoint import load_model

    return load_model(checkpoint, device)[0]


def _device(device: str, backend: str) -> Any:
    """The device to run on: ``"cpu"`` when ONNX Runtime will run every network on the CPU,
    decided without importing torch (:func:`~livseg.device.no_cuda_here`), else
    :func:`~livseg.device.resolve_device`."""
    from livseg.infer.backend import onnx_available

    if backend in ("auto", "onnx") and no_cuda_here(device) and onnx_available():
        return "cpu"
    return resolve_device(device)


def _load(
    checkpoint: str | Path,
    device: Any,
    batch_size: int,
    tta: bool,
    backend: str = "torch",
    folds: Sequence[int] | None = None,
) -> SlicePredictor:
    """A slice predictor of a model folder (one checkpoint or a fold ensemble), its networks
    run by ``backend`` (``"torch"``, ``"bf16"`` or ``"onnx"``: :mod:`livseg.infer.backend`; with a
    warm export cache the ONNX networks are built without reading the weights)."""
    from livseg.infer.backend import channels_last, onnx_networks

    members, spec, path = _member_specs(checkpoint, folds)
    if spec.preprocess.pipeline not in SLICE_PIPELINES:
        raise LivsegError(f"{path}: a {spec.preprocess.pipeline} model is not a slice model")
    size = int(spec.preprocess.size)
    shape = (1, int(spec.preprocess.channels), size, size)
    if backend == "onnx":
        models = onnx_networks(members, shape, lambda k: _torch_network(members[k], device))
    else:
        models = channels_last([_torch_network(m, device) for m in members])
    return SlicePredictor(
        models,
        spec.preprocess,
        device=device,
        batch_size=batch_size,
        tta=tta,
        name=str(path),
        bf16=backend == "bf16",
    )


def _load_coarse(
    checkpoint: str | Path,
    device: Any,
    backend: str = "torch",
    folds: Sequence[int] | None = None,
) -> CoarseStage:
    """The coarse 3-D stage of a model folder (one checkpoint or a fold ensemble), its networks
    run by ``backend`` (``"torch"``, ``"bf16"`` or ``"onnx"``: exported with any input size)."""
    from livseg.infer.backend import channels_last, onnx_networks

    members, spec, path = _member_specs(checkpoint, folds)
    s = spec.preprocess
    if s.pipeline != "coarse":
        raise LivsegError(f"{path}: a {s.pipeline} model is not a coarse 3-D liver model")
    shape = (1, 1, None, None, None)  # any size

    def example(multiple: int) -> tuple[int, ...]:  # the smallest input the stage gives them
        return (1, 1, *(2 * multiple,) * 3)

    if backend == "onnx" and "depth" in spec.options:  # no weights read with a warm cache
        multiple = 2 ** int(spec.options["depth"])
        models = onnx_networks(
            members, shape, lambda k: _torch_network(members[k], device), example(multiple)
        )
    else:
        models = [_torch_network(m, device) for m in members]
        multiple = max(2 ** int(m.depth) for m in models)
        if backend == "onnx":
            models = onnx_networks(members, shape, models.__getitem__, example(multiple))
        elif backend == "bf16":
            models = channels_last(models, 5)
    bf16 = backend == "bf16"
    return CoarseStage(models, s.spacing_mm, s.windows[0], multiple, device=device, bf16=bf16)


CPU_BATCH_SIZE = 8
"""Slices per forward pass on the CPU: fast in cache (measured with ONNX Runtime on 2 cores)."""
GPU_BATCH_SIZE = 64
"""Slices per forward pass on a GPU: a whole liver in one or two passes of each network, since
there the launch of each layer, not its arithmetic, takes the time (measured on an H200)."""


def _overlap(
    box: tuple[int, int, int, int], work: tuple[slice, slice, slice]
) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Where an in-plane box of the slices (y0, y1, x0, x1) and the box ``work`` meet: as
    (y, x) slices of ``work``'s arrays and of arrays over the in-plane box."""
    y0, y1, x0, x1 = box
    into, part = [], []
    for lo, hi, w in ((y0, y1, work[1]), (x0, x1, work[2])):
        a = max(lo, w.start)
        b = max(min(hi, w.stop), a)  # an empty overlap ends where it starts
        into.append(slice(a - w.start, b - w.start))
        part.append(slice(a - lo, b - lo))
    return (into[0], into[1]), (part[0], part[1])


def default_batch_size(device: Any) -> int:
    """:data:`CPU_BATCH_SIZE` on the CPU, :data:`GPU_BATCH_SIZE` on a GPU."""
    return CPU_BATCH_SIZE if getattr(device, "type", str(device)) == "cpu" else GPU_BATCH_SIZE


def _checkpoint_dirs(
    model: str, paper: bool, given: dict[str, str | Path | None], tumour: bool
) -> dict[str, Path | None]:
    """The coarse, liver and tumour model folders: the given ones, else the shipped models of
    the chosen cascade (:func:`~livseg.infer.pretrained.cascade_models`).

    Every shipped model needed is checked before any is loaded, so one error names them all.

    Args:
        model: liver model family (``--model``).
        paper: the papers' cascade (no coarse stage) instead of livseg's.
        given: ``{"coarse": ..., "liver": ..., "tumour": ...}`` folders given by the caller
            (None: use the shipped one).
        tumour: False skips the tumour stage.

    Raises:
        LivsegError: ``model`` is not a liver model family.
        MissingWeightsError: a needed shipped model is not installed.
    """
    shipped = dict(zip(("coarse", "liver", "tumour"), cascade_models(model, paper), strict=True))
    if not tumour:
        shipped["tumour"] = None
    if paper and given.get("coarse") is None:
        shipped["coarse"] = None
    needed = {k: v for k, v in shipped.items() if v is not None and given.get(k) is None}
    missing = missing_models(list(needed.values()))
    if missing:
        raise MissingWeightsError(
            f"{WEIGHTS_DIR}: shipped model(s) {', '.join(missing)} not installed; pass trained "
            "checkpoint folders (--coarse-model/--liver-model/--tumour-model)"
            + ("" if paper else " or run the papers' cascade (--paper)")
        )
    return {
        k: Path(given[k]) if given.get(k) is not None else (locate(v) if v else None)
        for k, v in shipped.items()
    }


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
        coarse: the coarse 3-D liver stage placing the liver stage, or None (the papers'
            cascade; then the liver model must work on whole slices).
        gate_mm: with a coarse stage, keep only liver voxels inside the coarse liver widened by
            this (:meth:`~livseg.infer.coarse.CoarseStage.gate`); None: the region's box only.
        min_lesion_mm3: tumour components smaller than this become liver
            (:func:`~livseg.infer.postprocess.remove_small_lesions`); 0 keeps all (the papers).
        liver_radius_mm: radius of the liver post-processing element (mm).
        check_ct: refuse inputs whose intensities do not look like CT (see
            :func:`check_ct_intensities`).
        tumour_in_gate: with a coarse stage and a gate, the tumour stage also labels tumour
            inside the gate outside the fine liver (the liver grows by it); False keeps tumour
            inside the fine liver only. No effect without a coarse stage (the papers' cascade) or
            with ``gate_mm`` None (the region's box is not a liver).
        gate_min_inside: with ``tumour_in_gate``, a tumour component is kept only when at least
            this fraction of it lies in the fine liver
            (:func:`~livseg.infer.postprocess.drop_gate_lesions`); 0 keeps every one.
        tumour_closing_mm: the tumour label is closed by a box reaching this far (mm) along each
            axis, inside the liver (and the gate) only
            (:func:`~livseg.infer.postprocess.close_lesions`); 0 does not close (the papers).
    """

    def __init__(
        self,
        liver: SlicePredictor,
        tumour: SlicePredictor | None = None,
        *,
        coarse: CoarseStage | None = None,
        gate_mm: float | None = 0.0,
        min_lesion_mm3: float = 0.0,
        liver_radius_mm: float = LIVER_STRUCTURE_RADIUS_MM,
        check_ct: bool = True,
        tumour_in_gate: bool = True,
        gate_min_inside: float = 0.0,
        tumour_closing_mm: float = 0.0,
    ) -> None:
        if liver.settings.pipeline == "tumour":
            raise LivsegError(f"{liver.name}: this is a tumour model, not a liver model")
        if tumour is not None and tumour.settings.pipeline != "tumour":
            raise LivsegError(
                f"{tumour.name}: this is a {tumour.settings.pipeline} model, not a tumour model"
            )
        if coarse is None and liver.settings.crop_to_liver:
            raise LivsegError(
                f"{liver.name}: this liver model works inside the coarse stage's liver region; "
                "load a coarse model too (coarse_model / --coarse-model)"
            )
        self.liver = liver
        self.tumour = tumour
        self.coarse = coarse
        self.gate_mm = gate_mm
        self.min_lesion_mm3 = float(min_lesion_mm3)
        self.liver_radius_mm = float(liver_radius_mm)
        self.check_ct = bool(check_ct)
        self.tumour_in_gate = bool(tumour_in_gate)
        self.gate_min_inside = float(gate_min_inside)
        self.tumour_closing_mm = float(tumour_closing_mm)

    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        *,
        liver_model: str | Path | None = None,
        tumour_model: str | Path | None = None,
        coarse_model: str | Path | None = None,
        paper: bool = DEFAULT_PAPER,
        device: str = "cpu",
        batch_size: int | None = None,
        tta: bool = False,
        tumour: bool = True,
        backend: str = "auto",
        folds: Sequence[int] | None = None,
        **options: Any,
    ) -> Cascade:
        """Load the cascade from checkpoint folders or the shipped weights.

        Args:
            model: liver model family (``"crunet"`` or ``"densefcn"``); picks the shipped
                models (:func:`~livseg.infer.pretrained.cascade_models`) of the stages whose
                folder is not given.
            liver_model: checkpoint folder of the liver model.
            tumour_model: checkpoint folder of the tumour model.
            coarse_model: checkpoint folder of the coarse 3-D liver stage (also used with
                ``paper``: then the papers' liver and tumour models run inside its region).
            paper: the papers' cascade: no coarse stage (unless ``coarse_model`` is given) and
                the papers' shipped models; False: livseg's cascade (coarse stage, fine liver
                model in its region, tumour ensemble). Each folder is one checkpoint or a fold
                ensemble (``fold*/`` checkpoints).
            device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
            batch_size: slices per forward pass (None: :func:`default_batch_size` of the
                device).
            tta: left-right flip test-time augmentation.
            tumour: False runs the liver stage only.
            backend: how the networks run: ``"torch"``, ``"onnx"`` (ONNX Runtime, CPU),
                ``"bf16"`` (PyTorch under bfloat16 autocast, the coarse stage too; an
                approximation) or ``"auto"`` (ONNX Runtime on the CPU when installed); see
                :mod:`livseg.infer.backend`.
            folds: only these folds of each fold ensemble (nnU-Net's ``-f``; every stage must
                be one): ``(0,)`` runs fold 0's coarse, liver and tumour models, the cascade
                that cross-validation scored on fold 0's held-out cases, in about a third of
                the network time. None: every member.
            **options: passed to :class:`Cascade` (``liver_radius_mm``, ``check_ct``,
                ``gate_mm``, ``tumour_in_gate``, ``gate_min_inside`` (0 by default; see
                :data:`~livseg.infer.postprocess.GATE_LESION_MIN_INSIDE`), ``min_lesion_mm3`` and
                ``tumour_closing_mm``: by default
                :data:`~livseg.infer.postprocess.MIN_LESION_MM3` and
                :data:`~livseg.infer.postprocess.TUMOUR_CLOSING_MM` in livseg's cascade, 0 in
                the papers').

        Raises:
            MissingWeightsError: a shipped model is needed but not installed (the message names
                every missing one) or a checkpoint folder is incomplete.
        """
        given = {"coarse": coarse_model, "liver": liver_model, "tumour": tumour_model}
        dirs = _checkpoint_dirs(model, paper, given, tumour)
        coarse_dir, liver_dir, tumour_dir = dirs["coarse"], dirs["liver"], dirs["tumour"]
        dev = _device(device, backend)
        backend = resolve_backend(backend, dev)
        batch_size = batch_size or default_batch_size(dev)
        if folds is not None:  # every stage's folds checked before any network is loaded
            for d in (coarse_dir, liver_dir, tumour_dir):
                if d is not None:
                    select_folds(ensemble_members(d), folds, d)
        liver = _load(liver_dir, dev, batch_size, tta, backend, folds)
        tum = _load(tumour_dir, dev, batch_size, tta, backend, folds) if tumour_dir else None
        stage0 = _load_coarse(coarse_dir, dev, backend, folds) if coarse_dir else None
        log.info(
            "loaded %sliver model %s%s on %s (%s)",
            f"coarse stage {coarse_dir}, " if stage0 else "",
            liver.name,
            f" and tumour model {tum.name}" if tum else "",
            dev,
            {"onnx": "ONNX Runtime", "bf16": "PyTorch, bfloat16"}.get(backend, "PyTorch"),
        )
        if not paper:
            options.setdefault("min_lesion_mm3", MIN_LESION_MM3)
            options.setdefault("tumour_closing_mm", TUMOUR_CLOSING_MM)
        return cls(liver, tum, coarse=stage0, **options)

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
        region = None
        if self.coarse is not None:
            with timed(timings, "coarse"):  # 1b. where is the liver?
                region = self._coarse_region(hu, spacing, src, warnings)
        work = self._work_box(hu.shape, region, spacing)
        with timed(timings, "liver"):  # 2. liver stage (inside the region)
            mask, gate, summary = self._liver_stage(hu, stats, region, work, progress)
        with timed(timings, "postprocess"):  # 3. post-processing
            on = self.liver.device if self.liver.device_prep else None  # a GPU's, by default
            liver = postprocess_liver(mask, spacing, self.liver_radius_mm, on)
            del mask
        liver_found = bool(liver.any())
        with timed(timings, "tumour"):  # 4.-5. tumour stage in the tumour region's box
            grown = gate & (liver == 0) if gate is not None and self.tumour_in_gate else None
            del gate
            labels_w = self._tumour_stage(
                hu, work, liver, grown, stats, spacing, progress, src, warnings
            )
        with timed(timings, "reorient"):
            labels_c = labels_w
            if labels_w.shape != hu.shape:
                labels_c = np.zeros(hu.shape, dtype=np.uint8)
                labels_c[work] = labels_w
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

    def _coarse_region(
        self, hu: np.ndarray, spacing: tuple[float, float, float], src: str, warnings: list[str]
    ) -> CoarseRegion:
        """The coarse stage's liver region (a warning when it found none)."""
        region = self.coarse.region(hu, spacing)
        if region.box is None:
            msg = f"{src}: the coarse 3-D stage found no liver-like region"
            log.warning(msg)
            warnings.append(msg)
        return region

    def _work_box(
        self,
        shape: tuple[int, int, int],
        region: CoarseRegion | None,
        spacing: tuple[float, float, float],
    ) -> tuple[slice, slice, slice]:
        """Where the labels can be non-zero: the coarse region's box (the liver stage's labels
        outside it are dropped, the gate lies in it) grown by the reach of the liver's dilation,
        and padded as its post-processing pads; the whole volume without a region. The liver and
        tumour stages' masks are this box's, not the whole CT's."""
        if region is None or region.box is None:
            return tuple(slice(0, n) for n in shape)
        pad = (0, 0, 0)
        if self.liver_radius_mm > 0:
            pad = tuple(
                n // 2 + 1 for n in structuring_element(spacing, self.liver_radius_mm).shape
            )
        return tuple(
            slice(max(b.start - p, 0), min(b.stop + p, n))
            for b, p, n in zip(region.box, pad, shape, strict=True)
        )

    def _liver_window(
        self, shape: tuple[int, int, int], region: CoarseRegion | None
    ) -> tuple[range, tuple[int, int, int, int] | None, tuple[slice, ...] | None]:
        """Slices and in-plane box the liver model runs on, and the region's box (or None)."""
        if region is None:
            return range(shape[0]), None, None
        if region.box is None:
            return range(0), None, None
        zs, ys, xs = region.box
        box = None
        if self.liver.settings.crop_to_liver:
            box = square_box((ys.start, ys.stop, xs.start, xs.stop), shape[1:])
        return range(zs.start, zs.stop), box, region.box

    def _liver_stage(
        self,
        hu: np.ndarray,
        stats: VolumeStats,
        region: CoarseRegion | None,
        work: tuple[slice, slice, slice],
        progress: StageProgress | None,
    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, float]]:
        """Liver model on the region's slices (every slice without a coarse stage; with a gate,
        only the region's slices the gate reaches, since the rest would be dropped): uint8 mask
        of the box ``work`` (:meth:`_work_box`; probability > 0.5, nothing outside the region),
        the gate as a bool mask of that box (None without a coarse stage, without a region or
        with ``gate_mm`` None) and the probability summary of the slices the model ran on."""
        mask = np.zeros(tuple(w.stop - w.start for w in work), dtype=np.uint8)
        summary = _LiverSummary()
        cb = _stage_callback(progress, "liver")
        slices, box, keep = self._liver_window(hu.shape, region)
        in_box = None
        if keep is not None and self.gate_mm is not None:
            on = self.coarse.device if self.coarse.device_prep else None  # a GPU's, by default
            in_box = CoarseStage.gate(region, hu.shape, self.gate_mm, on)
            slices = keep[0].start + np.flatnonzero(in_box.any(axis=(1, 2)))
        box = box if box is not None else (0, hu.shape[1], 0, hu.shape[2])
        into, part = _overlap(box, work)
        for ks, prob in self.liver.predict(hu, slices, stats, box, cb):
            fg = prob > 0.5
            mask[(ks - work[0].start, *into)] = fg[(slice(None), *part)]
            summary.add(prob, fg)
        gate = None
        if keep is not None:
            kept = tuple(
                slice(k.start - w.start, k.stop - w.start) for k, w in zip(keep, work, strict=True)
            )
            inside = np.zeros(mask.shape, dtype=bool)
            inside[kept] = True
            mask[~inside] = 0  # what the liver model labels outside the region is dropped
            if in_box is not None:
                inside[kept] = in_box
                mask[kept] &= in_box
                gate = inside
        return mask, gate, summary.as_dict()

    def _close_lesions(
        self,
        labels: np.ndarray,
        grown: np.ndarray | None,
        spacing: tuple[float, float, float],
        src: str,
    ) -> None:
        """Close the tumour label inside the liver (and ``grown``), in place."""
        if self.tumour_closing_mm <= 0:
            return
        on = self.tumour.device if self.tumour.device_prep else None  # a GPU's, by default
        added = close_lesions(labels, spacing, self.tumour_closing_mm, grown, on)
        log.debug(
            "%s: tumour closing (%g mm) added %d voxel(s)", src, self.tumour_closing_mm, added
        )

    def _tumour_stage(
        self,
        hu: np.ndarray,
        work: tuple[slice, slice, slice],
        liver: np.ndarray,
        grown: np.ndarray | None,
        stats: VolumeStats,
        spacing: tuple[float, float, float],
        progress: StageProgress | None,
        src: str,
        warnings: list[str],
    ) -> np.ndarray:
        """0/1/2 labels of the box ``work`` (``liver`` and ``grown`` are that box's): the tumour
        model on the slices of the tumour region (the liver, plus ``grown``: the gate outside
        the liver, or None) inside the region's in-plane box, its tumour kept inside the region
        (the liver alone without a tumour model; all background without liver)."""
        if not liver.any():
            msg = f"{src}: no liver found; the labels are all background (liver_found = false)"
            log.warning(msg)
            warnings.append(msg)
            return liver
        if self.tumour is None:
            return liver
        region = liver if grown is None else np.logical_or(liver, grown)
        origin = (work[1].start, work[2].start)
        box = crop_box(region, self.tumour.settings, origin, hu.shape[1:])
        ks = work[0].start + np.flatnonzero(region.any(axis=(1, 2)))
        del region
        if self.tumour.settings.liver_hu is not None:  # windows follow the fine liver's HU
            stats = dataclasses.replace(stats, liver_median=liver_median_hu(hu[work], liver))
            log.debug("%s: liver median %.1f HU", src, stats.liver_median)
        labels = liver  # uint8 0/1, turned into 0/1/2 in place
        into, part = _overlap(box, work)  # the tumour may only be where the liver or gate is
        cb = _stage_callback(progress, "tumour")
        for kb, prob in self.tumour.predict(hu, ks, stats, box, cb):
            at = (kb - work[0].start, *into)
            sub = labels[at]
            allowed = sub >= 1
            if grown is not None:
                allowed |= grown[at]
            labels[at] = np.where(allowed & (prob[(slice(None), *part)] > 0.5), np.uint8(2), sub)
        self._close_lesions(labels, grown, spacing, src)
        if grown is not None and self.gate_min_inside > 0:
            dropped = drop_gate_lesions(labels, grown, self.gate_min_inside)
            if dropped:
                log.info(
                    "%s: %d tumour component(s) less than %g inside the fine liver removed",
                    src,
                    dropped,
                    self.gate_min_inside,
                )
        removed = remove_small_lesions(labels, spacing, self.min_lesion_mm3)
        if removed:
            if grown is not None:  # small tumour outside the fine liver is not liver either
                labels[grown & (labels == 1)] = 0
            log.info(
                "%s: %d tumour component(s) below %g mm3 relabelled liver%s",
                src,
                removed,
                self.min_lesion_mm3,
                " (background outside the fine liver)" if grown is not None else "",
            )
        return labels
