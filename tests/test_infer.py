"""The inference cascade: post-processing, batched prediction, orientation, bad input, weights.

Deterministic stand-in networks (an intensity threshold on one pre-processed channel) make the
cascade's behaviour predictable; tiny randomly initialised real networks saved through
``livseg.train.checkpoint`` exercise loading (``livseg.models.checkpoint``) (their outputs are meaningless, geometry is not).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from livseg.errors import InputError, LivsegError
from livseg.infer import Cascade, postprocess_liver
from livseg.infer.postprocess import (
    TUMOUR_CLOSING_MM,
    close_lesions,
    largest_component,
    merge_labels,
    structuring_element,
)
from livseg.infer.predictor import SlicePredictor, VolumeStats, volume_stats
from livseg.infer.pretrained import MissingWeightsError, available_models, locate
from livseg.preprocess.orientation import canonical_view
from livseg.preprocess.pipeline import PreprocessSettings
from livseg.volume import Volume

# --- helpers shared with test_cli_segment.py -------------------------------------------------

TINY_MODELS = {
    "crunet": (
        {
            "name": "crunet",
            "options": {"base_width": 4, "level1_depth": 2, "level2_depth": 2, "dropout": 0.0},
        },
        {"pipeline": "crunet", "size": 32},
        {"name": "mdice", "options": {}},
    ),
    "densefcn_liver": (
        {
            "name": "densefcn",
            "options": {
                "levels": 2,
                "growth": 4,
                "layers_per_block": 2,
                "first_filters": 8,
                "sbu": True,
            },
        },
        {"pipeline": "densefcn_liver", "size": 32},
        {"name": "wce", "options": {}},
    ),
    "tumour": (
        {
            "name": "densefcn",
            "options": {
                "in_channels": 3,
                "levels": 2,
                "growth": 4,
                "layers_per_block": 2,
                "first_filters": 8,
            },
        },
        {"pipeline": "tumour", "size": 32, "crop_to_liver": True, "crop_margin": 4},
        {"name": "wce", "options": {}},
    ),
    "runet_tumour": (
        {"name": "runet", "options": {"in_channels": 3, "depth": 2, "base_width": 4}},
        {"pipeline": "tumour", "size": 32, "crop_to_liver": True, "crop_margin": 4},
        {"name": "tumour_compound", "options": {}},
    ),
}


def make_checkpoint(folder: Path, kind: str, seed: int = 0) -> Path:
    """A tiny randomly initialised checkpoint (``kind`` a key of TINY_MODELS) in ``folder``."""
    from livseg.models import build_model
    from livseg.train.checkpoint import save_checkpoint
    from livseg.train.config import config_from_dict

    model_cfg, data_cfg, loss_cfg = TINY_MODELS[kind]
    cfg = config_from_dict(
        {"name": f"tiny_{kind}", "model": model_cfg, "loss": loss_cfg, "data": data_cfg}
    )
    torch.manual_seed(seed)
    model = build_model(cfg.model.name, **cfg.model.options)
    return save_checkpoint(folder, model, cfg)


def model_args(ckpts: dict[str, Path]) -> list[str]:
    """CLI options pointing ``segment`` at the liver (densefcn_liver) and tumour checkpoints of
    ``ckpts`` (as made by :func:`make_checkpoint`), on the CPU."""
    return [
        "--liver-model",
        str(ckpts["densefcn_liver"]),
        "--tumour-model",
        str(ckpts["tumour"]),
        "--device",
        "cpu",
    ]


class ThresholdNet(nn.Module):
    """Logits ``gain * sign * (x[:, channel] - threshold)``: a deterministic 'network'."""

    def __init__(self, channel: int, threshold: float, above: bool = True) -> None:
        super().__init__()
        self.channel, self.threshold = channel, threshold
        self.sign = 1.0 if above else -1.0
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return 50.0 * self.sign * (x[:, self.channel : self.channel + 1] - self.threshold)


def threshold_cascade(size: int = 32, batch_size: int = 3, tta: bool = False) -> Cascade:
    """Liver = (HU + 100) / 400 > 0.2 (i.e. > -20 HU); tumour = HU < 30 in the [0, 100] window."""
    liver = SlicePredictor(
        ThresholdNet(0, 0.2),
        PreprocessSettings("densefcn_liver", size=size),
        batch_size=batch_size,
        tta=tta,
        name="threshold-liver",
    )
    tumour = SlicePredictor(
        ThresholdNet(0, 0.3, above=False),
        PreprocessSettings("tumour", size=size, crop_to_liver=True, crop_margin=2),
        batch_size=batch_size,
        tta=tta,
        name="threshold-tumour",
    )
    return Cascade(liver, tumour, liver_radius_mm=1.0)


def synthetic_ct(shape=(12, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """(HU, truth labels): air, a fat body, an off-centre liver block with a 0 HU tumour."""
    z, y, x = shape
    hu = np.full(shape, -1000.0, np.float32)
    hu[:, 2 : y - 2, 2 : x - 2] = -100.0
    truth = np.zeros(shape, np.uint8)
    truth[2 : z - 3, 6:20, 4:22] = 1
    truth[4:7, 9:14, 8:13] = 2
    hu[truth == 1] = 60.0
    hu[truth == 2] = 0.0
    hu[1, 25, 25] = 60.0  # a lone liver-like voxel: removed by the largest component
    return hu, truth


# --- post-processing ---------------------------------------------------------------------------


def test_structuring_element_shapes():
    se = structuring_element((5.0, 1.0, 1.0), 3.0)
    assert se.shape == (1, 7, 7) and se[0, 3].all() and not se[0, 0, 0]
    assert structuring_element((1.0, 1.0, 1.0), 2.0).shape == (5, 5, 5)


def test_postprocess_keeps_largest_and_restores_border():
    m = np.zeros((8, 30, 30), np.uint8)
    m[1:7, 5:20, 5:20] = 1
    m[3, 25:28, 25:28] = 1  # separate blob
    m[3, 12, 20:26] = 1  # thin bridge towards it: cut by the erosion
    out = postprocess_liver(m, (1.0, 1.0, 1.0), radius_mm=1.0)
    assert out.dtype == np.uint8
    assert out[3, 26, 26] == 0 and out[3, 12, 24] == 0
    core = np.zeros_like(m)
    core[2:6, 6:19, 6:19] = 1
    assert out[core == 1].all()
    assert postprocess_liver(np.zeros((3, 4, 4)), (1, 1, 1)).sum() == 0


def test_overlap_of_a_slice_box_and_the_work_box():
    """By hand: a box partly outside the work box, one inside it, one beside it."""
    from livseg.infer.cascade import _overlap

    work = (slice(2, 9), slice(10, 50), slice(20, 60))
    into, part = _overlap((5, 30, 40, 80), work)  # y 5-30 meets 10-50; x 40-80 meets 20-60
    assert into == (slice(0, 20), slice(20, 40)) and part == (slice(5, 25), slice(0, 20))
    into, part = _overlap((12, 20, 30, 35), work)
    assert into == (slice(2, 10), slice(10, 15)) and part == (slice(0, 8), slice(0, 5))
    into, part = _overlap((0, 8, 30, 35), work)  # wholly above: empty
    assert into[0].stop - into[0].start == 0 and part[0].stop - part[0].start == 0


@pytest.mark.parametrize("device", [None, "cpu"])  # scipy, and torch as on a GPU
def test_largest_component_and_merge(device):
    m = np.zeros((3, 5, 5), bool)
    m[0, 0, 0] = True
    m[2, 1:4, 1:4] = True
    assert largest_component(m, device=device).sum() == 9
    # 6-connected: diagonal neighbours are apart; of two equal components the first is kept
    d = np.zeros((2, 4, 4), bool)
    d[1, 2, 2] = d[1, 3, 3] = d[0, 3, 1] = True
    assert np.argwhere(largest_component(d, device=device)).tolist() == [[0, 3, 1]]
    assert not largest_component(np.zeros((2, 3, 3), bool), device=device).any()
    liver = np.zeros((1, 2, 2), bool)
    liver[0, 0] = True
    tum = np.ones((1, 2, 2), bool)
    assert merge_labels(liver, tum).tolist() == [[[2, 2], [0, 0]]]


@pytest.mark.parametrize("device", [None, "cpu"])  # scipy, and torch as on a GPU
def test_tumour_closing_fills_a_missed_slice_inside_the_liver_only(device):
    """Tumour on slices 1-2 and 4-5, missed on slice 3 (5 mm slices): a 5 mm box reaches one
    slice each way, so slice 3 is filled (25 voxels) where it is liver or gate, not elsewhere."""
    close = functools.partial(close_lesions, device=device)

    def case():
        labels = np.ones((7, 20, 20), np.uint8)
        labels[1:3, 5:10, 5:10] = labels[4:6, 5:10, 5:10] = 2
        return labels

    labels = case()
    assert close(labels, (5.0, 1.0, 1.0), 5.0) == 25
    want = case()
    want[3, 5:10, 5:10] = 2
    np.testing.assert_array_equal(labels, want)
    thick = case()  # 5.5 mm slices: the box is flat, a square has nothing to close in-plane
    assert close(thick, (5.5, 1.0, 1.0), 5.0) == 0
    np.testing.assert_array_equal(thick, case())
    assert close(case(), (5.0, 1.0, 1.0), 0.0) == 0
    outside = case()
    outside[3, 7, 7] = 0  # background inside the gap: never tumour ...
    assert close(outside, (5.0, 1.0, 1.0), 5.0) == 24 and outside[3, 7, 7] == 0
    gate = case()
    gate[3, 7, 7] = 0
    grown = np.zeros(gate.shape, bool)
    grown[3, 7, 7] = True  # ... unless it is in the gate
    assert close(gate, (5.0, 1.0, 1.0), 5.0, grown) == 25 and gate[3, 7, 7] == 2


@pytest.mark.parametrize("device", [None, "cpu"])
def test_tumour_closing_joins_pieces_in_plane_and_at_the_edge(device):
    close = functools.partial(close_lesions, device=device)
    labels = np.ones((3, 20, 24), np.uint8)
    labels[1, 12:17, 8:12] = labels[1, 12:17, 14:18] = 2  # a 2-pixel gap (columns 12-13)
    labels[0, 0:3, 0:3] = labels[2, 0:3, 0:3] = 2  # at the volume's corner, slice 1 missed
    before = labels.copy()
    assert close(labels.copy(), (1.0, 1.0, 1.0), 0.9) == 0  # under a voxel: no box
    assert close(labels, (1.0, 1.0, 1.0), 2.0) == 10 + 9  # a 5 x 5 x 5 box
    assert (labels[1, 12:17, 12:14] == 2).all() and (labels[1, 0:3, 0:3] == 2).all()
    changed = labels != before
    assert changed.sum() == 19 and (before[~changed] == labels[~changed]).all()
    assert (labels[before == 2] == 2).all()  # closing never removes tumour


@pytest.mark.parametrize("spacing", [(5.0, 0.74, 0.74), (1.6, 0.8, 0.8), (0.8, 2.5, 1.0)])
def test_tumour_closing_on_the_device_equals_scipys(spacing):
    """Random lesions in a liver with gate voxels: the torch closing adds the same voxels."""
    rng = np.random.default_rng(7)
    labels = np.where(rng.random((14, 40, 36)) < 0.9, 1, 0).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.08] = 2
    grown = rng.random(labels.shape) < 0.05
    want, got = labels.copy(), labels.copy()
    added = close_lesions(want, spacing, 5.0, grown)
    assert added > 50
    assert close_lesions(got, spacing, 5.0, grown, device="cpu") == added
    np.testing.assert_array_equal(got, want)


def test_livseg_cascade_closes_tumours_and_the_papers_do_not(tiny_checkpoints):
    ckpt = {"liver_model": tiny_checkpoints["crunet"], "tumour_model": tiny_checkpoints["tumour"]}
    assert Cascade.load(**ckpt).tumour_closing_mm == TUMOUR_CLOSING_MM == 5.0
    assert Cascade.load(**ckpt, paper=True).tumour_closing_mm == 0.0
    assert Cascade.load(**ckpt, tumour_closing_mm=2.0).tumour_closing_mm == 2.0


# --- the cascade -------------------------------------------------------------------------------


def test_cascade_tumour_windows_follow_the_liver():
    """A tumour model with ``liver_hu`` sees the same input when the whole CT is 15 HU darker
    (another contrast phase): the labels do not change. With fixed windows the darker liver
    crosses the model's threshold and becomes tumour."""
    hu, truth = synthetic_ct()  # liver 60 HU, tumour 0 HU, fat -100 HU

    def cascade(liver_hu):
        c = threshold_cascade()
        c.tumour = SlicePredictor(  # tumour: below 0.7 of the [0, 100] window (liver at 100)
            ThresholdNet(0, 0.7, above=False),
            PreprocessSettings(
                "tumour", size=32, crop_to_liver=True, crop_margin=2, liver_hu=liver_hu
            ),
            batch_size=3,
            name="threshold-tumour",
        )
        return c

    def labels(c, shift):
        ct = np.where(hu > -1000, hu + shift, hu)
        ct[:, 27:29, 14:16] = 700.0  # bone: the volume's maximum lies above every window
        vol = Volume.image(ct, (2.0, 1.0, 1.0))
        return c.segment(vol).labels.array

    follows = labels(cascade(100.0), 0.0)
    assert (follows == 2).sum() > 0.5 * (truth == 2).sum() and not (follows == 2)[truth == 1].any()
    np.testing.assert_array_equal(labels(cascade(100.0), -15.0), follows)
    fixed = labels(cascade(None), -15.0)  # liver at 45 HU: 0.45 < 0.7 in the fixed window
    assert (fixed == 2)[truth == 1].mean() > 0.9


def test_cascade_segments_synthetic_ct():
    hu, truth = synthetic_ct()
    vol = Volume.image(hu, (2.0, 1.0, 1.0), (5.0, -3.0, 7.0))
    seen = []
    res = threshold_cascade().segment(vol, progress=lambda s, d, n: seen.append((s, d, n)))
    assert res.liver_found
    assert res.labels.same_geometry(vol) and res.labels.array.dtype == np.uint8
    lab = res.labels.array
    assert lab[1, 25, 25] == 0  # false positive removed
    liver_dice = 2 * ((lab >= 1) & (truth >= 1)).sum() / ((lab >= 1).sum() + (truth >= 1).sum())
    assert liver_dice > 0.95
    tum = lab == 2
    assert tum[5, 11, 10] and tum.sum() > 0.5 * (truth == 2).sum()
    assert not (tum & (truth == 0)).any()  # tumour only inside the liver
    assert seen[-1][0] == "tumour" and ("liver", 12, 12) in seen
    assert set(res.timings) == {"reorient", "liver", "postprocess", "tumour"}
    assert 0.5 < res.liver_probability["mean_in_mask"] <= 1.0


@pytest.mark.parametrize(
    "direction",
    [
        np.diag([1.0, -1.0, -1.0]),  # RAS-like NIfTI
        np.diag([-1.0, 1.0, 1.0]),  # inferior-first slices
        np.array([[0, 0, 1.0], [0, 1.0, 0], [1.0, 0, 0]]),
    ],
)
def test_cascade_output_in_input_layout(direction):
    """Any stored orientation gives the same anatomy back, in the input's own layout."""
    hu, _ = synthetic_ct((12, 32, 32))
    ref_vol = Volume.image(hu, (2.0, 1.0, 1.0))
    ref = threshold_cascade().segment(ref_vol).labels.array
    # store the same patient with another direction: the array permuted/flipped accordingly
    perm = canonical_view(Volume.image(np.zeros((1, 1, 1)), (1, 1, 1), direction=direction))[1].perm
    shape, spacing = [0, 0, 0], [0.0, 0.0, 0.0]
    for d, p in enumerate(perm):
        shape[p], spacing[p] = hu.shape[d], ref_vol.spacing[d]
    other = Volume.image(np.zeros(shape, np.float32), spacing, direction=direction)
    _, reo = canonical_view(other)
    vol = other.with_array(reo.undo(hu))
    res = threshold_cascade().segment(vol).labels
    assert res.same_geometry(vol)
    np.testing.assert_array_equal(reo.apply(res.array), ref)


def test_cascade_tta_and_batch_size_agree():
    hu, _ = synthetic_ct()
    vol = Volume.image(hu, (2.0, 1.0, 1.0))
    a = threshold_cascade(batch_size=1).segment(vol).labels.array
    b = threshold_cascade(batch_size=7, tta=True).segment(vol).labels.array
    np.testing.assert_array_equal(a, b)  # a mirror-symmetric rule: TTA changes nothing


def test_no_liver_gives_background_and_flag():
    hu = np.full((4, 32, 32), -1000.0, np.float32)
    hu[:, 4:28, 4:28] = -100.0
    res = threshold_cascade().segment(Volume.image(hu, (1, 1, 1)))
    assert not res.liver_found and res.labels.array.max() == 0
    assert any("no liver" in w for w in res.warnings)


def test_nan_replaced_with_warning():
    hu, _ = synthetic_ct()
    hu[0, 0, 0] = np.nan
    res = threshold_cascade().segment(Volume.image(hu, (2.0, 1.0, 1.0)))
    assert res.liver_found and any("non-finite" in w for w in res.warnings)


@pytest.mark.parametrize("lo,hi", [(0.0, 255.0), (-400.0, 250.0), (-800.0, 1500.0)])
def test_non_ct_intensities_refused(lo, hi):
    arr = np.linspace(lo, hi, 4 * 32 * 32, dtype=np.float32).reshape(4, 32, 32)
    with pytest.raises(InputError, match="Hounsfield"):
        threshold_cascade().segment(Volume.image(arr, (1, 1, 1)), source="mr.nii.gz")


def test_volume_stats_chunks_and_nan():
    arr = np.arange(5 * 3 * 3, dtype=np.float32).reshape(5, 3, 3)
    assert volume_stats(arr) == VolumeStats(0.0, 44.0, 0)  # all finite: the short path
    assert volume_stats(arr.astype(np.int16)) == VolumeStats(0.0, 44.0, 0)
    arr[2, 1, 1] = np.inf
    s = volume_stats(arr, chunk=2)
    assert (s.hu_min, s.hu_max, s.n_nan) == (0.0, 44.0, 1)
    arr[0, 0, 0], arr[4, 2, 2] = np.nan, -np.inf
    assert volume_stats(arr, chunk=2) == VolumeStats(1.0, 43.0, 3)
    assert volume_stats(np.full((2, 2, 2), np.nan, np.float32)) == VolumeStats(-1024.0, -1024.0, 8)


# --- real (tiny, random) checkpoints -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    return {k: make_checkpoint(root / k, k) for k in TINY_MODELS}


@pytest.mark.parametrize("liver", ["crunet", "densefcn_liver"])
def test_load_tiny_checkpoints_and_segment(tiny_checkpoints, liver):
    casc = Cascade.load(
        liver_model=tiny_checkpoints[liver],
        tumour_model=tiny_checkpoints["tumour"],
        device="cpu",
        batch_size=4,
    )
    assert casc.liver.settings.pipeline == ("crunet" if liver == "crunet" else "densefcn_liver")
    hu, _ = synthetic_ct((5, 40, 36))
    vol = Volume.image(hu, (3.0, 0.8, 0.8), direction=np.diag([1.0, -1.0, -1.0]))
    res = casc.segment(vol)
    assert res.labels.same_geometry(vol)
    assert set(np.unique(res.labels.array)) <= {0, 1, 2}


def test_load_refuses_swapped_models(tiny_checkpoints):
    with pytest.raises(LivsegError, match="not a liver model"):
        Cascade.load(
            liver_model=tiny_checkpoints["tumour"], tumour_model=tiny_checkpoints["tumour"]
        )
    with pytest.raises(LivsegError, match="not a tumour model"):
        Cascade.load(
            liver_model=tiny_checkpoints["crunet"], tumour_model=tiny_checkpoints["crunet"]
        )


def test_missing_weights_are_named(tmp_path):
    with pytest.raises(MissingWeightsError, match="crunet_liver.*not installed"):
        locate("crunet_liver", weights_dir=tmp_path)
    with pytest.raises(MissingWeightsError, match="valid names"):
        locate("nope")
    with pytest.raises(MissingWeightsError, match="missing model.safetensors"):
        Cascade.load(liver_model=tmp_path, tumour=False)
    (tmp_path / "densefcn_tumour").mkdir()
    (tmp_path / "densefcn_tumour" / "config.json").write_text("{}")
    assert available_models(tmp_path) == []


def test_shipped_weights_missing_message(monkeypatch, tmp_path):
    import livseg.infer.pretrained as pre

    monkeypatch.setattr(pre, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(MissingWeightsError, match="crunet_liver, densefcn_tumour"):
        Cascade.load("crunet", paper=True)
    with pytest.raises(MissingWeightsError, match="coarse_liver, crunet_liver_fine, runet_tumour"):
        Cascade.load("crunet", paper=False)


def test_bf16_predictor_runs_the_network_in_bfloat16_close_to_float32(tiny_checkpoints):
    """``--backend bf16``: the slice networks run under bfloat16 autocast (so the probabilities
    move, by bfloat16's ~3 significant digits, not more), and the back-end name resolves."""
    from livseg.infer.backend import resolve_backend
    from livseg.models.checkpoint import load_model

    assert resolve_backend("bf16", torch.device("cpu")) == "bf16"
    model, spec = load_model(tiny_checkpoints["runet_tumour"])
    hu, _ = synthetic_ct((6, 32, 32))
    stats = volume_stats(hu)
    probs = {}
    for bf16 in (False, True):
        pred = SlicePredictor(model, spec.preprocess, bf16=bf16)
        probs[bf16] = np.concatenate([p for _, p in pred.predict(hu, range(6), stats, None)])
    diff = np.abs(probs[True] - probs[False])
    assert 0 < diff.max() < 0.02


def test_default_batch_size_is_8_on_the_cpu_and_64_on_a_gpu():
    import torch

    from livseg.infer.cascade import default_batch_size

    assert default_batch_size("cpu") == 8
    assert default_batch_size(torch.device("cpu")) == 8
    assert default_batch_size(torch.device("cuda", 1)) == 64  # a device object needs no GPU
    cascade = Cascade.load(device="cpu", backend="torch")
    assert cascade.liver.batch_size == cascade.tumour.batch_size == 8
    assert Cascade.load(device="cpu", backend="torch", batch_size=5).liver.batch_size == 5


@pytest.mark.parametrize("device", [None, "cpu"])  # numpy, and torch as on a GPU
@pytest.mark.parametrize("spacing", [(1.6, 0.743, 0.743), (5.0, 0.74, 0.74), (0.5, 2.0, 0.6)])
@pytest.mark.parametrize("radius_mm", [1.0, 3.0, 7.0])
def test_fast_morphology_equals_scipys(spacing, radius_mm, device):
    """The run decomposition gives scipy's erosion and dilation voxel for voxel, at the borders
    too (outside is background), also with an element larger than the array (7 mm at 0.5 mm
    slices reaches 14 slices beyond a 12-slice mask); in numpy and in torch."""
    from scipy import ndimage

    from livseg.infer.postprocess import binary_dilate, binary_erode, structuring_element

    se = structuring_element(spacing, radius_mm)
    rng = np.random.default_rng(3)
    for p in (0.3, 0.8, 0.97):
        m = rng.random((12, 40, 37)) < p
        eroded, dilated = binary_erode(m, se, device), binary_dilate(m, se, device)
        assert eroded.dtype == dilated.dtype == bool
        assert np.array_equal(eroded, ndimage.binary_erosion(m, structure=se))
        assert np.array_equal(dilated, ndimage.binary_dilation(m, structure=se))


@pytest.mark.parametrize("shape", [(12, 40, 37), (1, 30, 30), (20, 1, 9)])
def test_largest_component_on_the_device_equals_scipys(shape):
    """Random masks of many components (sizes tie often at low density): the torch labelling
    keeps the voxels scipy keeps, including which of equal components."""
    rng = np.random.default_rng(sum(shape))
    for p in (0.1, 0.3, 0.5, 0.7):
        for _ in range(5):
            m = rng.random(shape) < p
            np.testing.assert_array_equal(largest_component(m, device="cpu"), largest_component(m))


def test_largest_component_of_a_winding_mask_falls_back_to_scipy(monkeypatch, caplog):
    """A mask that needs more rounds than allowed (a serpentine, its far end reached one step
    per round at least) is left to scipy, with the same result."""
    import livseg.infer.postprocess as pp

    snake = np.zeros((1, 21, 21), bool)
    snake[0, :19:2, :] = True  # rows 0-18 joined alternately at the right and the left end
    snake[0, 1:19:4, -1] = snake[0, 3:19:4, 0] = True
    snake[0, 20, :3] = True  # and a second piece of 3 voxels, apart
    monkeypatch.setattr(pp, "MAX_LABEL_ROUNDS", 4)
    with caplog.at_level("DEBUG", logger="livseg.infer.postprocess"):
        got = largest_component(snake, device="cpu")
    assert "did not settle" in caplog.text
    np.testing.assert_array_equal(got, largest_component(snake))
    assert got.sum() == snake.sum() - 3


@pytest.mark.parametrize("device", [None, "cpu"])
def test_fast_morphology_by_hand(device):
    """A 3 x 3 x 3 cube eroded by the 6-neighbour cross leaves its centre; one voxel dilated by
    the cross is the cross; an element whose rows are not centred runs is refused."""
    from livseg.infer.postprocess import binary_dilate, binary_erode

    cross = np.zeros((3, 3, 3), bool)
    cross[1, 1, :] = cross[1, :, 1] = cross[:, 1, 1] = True
    cube = np.zeros((5, 5, 5), bool)
    cube[1:4, 1:4, 1:4] = True
    eroded = binary_erode(cube, cross, device)
    assert np.argwhere(eroded).tolist() == [[2, 2, 2]]
    point = np.zeros((5, 5, 5), bool)
    point[2, 2, 2] = True
    assert np.array_equal(binary_dilate(point, cross, device)[1:4, 1:4, 1:4], cross)
    assert binary_dilate(point, cross, device).sum() == 7
    # at the border, outside counts as background: a full array loses its faces
    full = np.ones((3, 3, 3), bool)
    assert np.argwhere(binary_erode(full, cross, device)).tolist() == [[1, 1, 1]]
    lopsided = np.zeros((1, 1, 3), bool)
    lopsided[0, 0, 1:] = True
    with pytest.raises(ValueError, match="centred run"):
        binary_erode(cube, lopsided, device)
