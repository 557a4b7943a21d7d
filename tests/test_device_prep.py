"""Pre-processing on the networks' device (``livseg.preprocess.device``): the numpy pipeline's
values, in torch, and the predictor path that uses it (on a GPU by default; here on the CPU)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from livseg.errors import LivsegError
from livseg.infer.cascade import Cascade
from livseg.infer.predictor import SlicePredictor, volume_stats
from livseg.preprocess import device as dev
from livseg.preprocess.intensity import histogram_equalize
from livseg.preprocess.pipeline import PreprocessSettings, prepare_slices
from livseg.preprocess.resample import resize_slices

ULP1 = 1.2e-7  # one float32 rounding step just below 1.0 is 6e-8; sums may differ by two


def _ct(shape=(6, 97, 83), seed=0) -> np.ndarray:
    """Random HU over and beyond every window, a constant slice and an all-air slice."""
    hu = np.random.default_rng(seed).normal(50.0, 300.0, shape).astype(np.float32)
    hu[2] = 40.0
    hu[4] = -1000.0
    return hu


@pytest.mark.parametrize("box", [None, (5, 60, 7, 70), (0, 1, 0, 83)])
def test_histogram_equalisation_is_the_numpy_one_bit_for_bit(box):
    hu = _ct()
    want = histogram_equalize(hu, (-200.0, 250.0), 1024, box)
    got = dev.histogram_equalize(torch.from_numpy(hu), (-200.0, 250.0), 1024, box).numpy()
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert not got[2].any() and not got[4].any()  # constant slices carry no contrast


@pytest.mark.parametrize(
    ("settings", "liver_median"),
    [
        (PreprocessSettings("crunet", size=64), None),
        (PreprocessSettings("crunet", size=128, equalize=False), None),
        (PreprocessSettings("densefcn_liver", size=32), None),
        (PreprocessSettings("tumour", size=64), None),
        (PreprocessSettings("tumour", size=96, liver_hu=100.0), 83.3),
    ],
)
def test_prepared_slices_equal_the_numpy_pipeline(settings, liver_median):
    """Every pipeline, cropped and resized down (crunet 64, the others) and up (crunet 128,
    tumour 96 from an 87 x 78 box), to float32 rounding of the resize sums."""
    hu = _ct()
    vrange = (float(hu.min()), float(hu.max()))
    box = (3, 90, 2, 80)
    want = prepare_slices(hu, settings, vrange, box, liver_median)
    got = dev.prepare_slices(torch.from_numpy(hu), settings, vrange, box, liver_median).numpy()
    assert got.shape == want.shape == (6, settings.base_channels, settings.size, settings.size)
    np.testing.assert_allclose(got, want, rtol=0, atol=2 * ULP1)
    assert got.min() >= 0.0 and got.max() <= 1.0


def test_window_minmax_of_an_empty_clipped_range_is_zero():
    """A volume entirely above the window clips to one value: no contrast, all zeros."""
    hu = torch.full((2, 4, 4), 900.0)
    assert not dev.window_minmax(hu, (0.0, 100.0), (800.0, 1000.0)).any()
    np.testing.assert_array_equal(  # (clip(-50, 0, 100) - 0) / (100 - 0) by hand: 0; 50 -> 0.5
        dev.window_minmax(torch.tensor([-50.0, 50.0]), (0.0, 100.0), (-300.0, 400.0)).numpy(),
        [0.0, 0.5],
    )


@pytest.mark.parametrize("size", [(40, 40), (17, 29), (64, 20), (50, 31)])
def test_resize_is_resize_slices(size):
    x = np.random.default_rng(1).random((3, 2, 50, 31), dtype=np.float32)
    got = dev.resize(torch.from_numpy(x), size).numpy()
    np.testing.assert_allclose(got, resize_slices(x, size, "image"), rtol=0, atol=2 * ULP1)
    if size == (50, 31):  # unchanged size: a copy, equal
        np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize(
    ("spacing", "layout"),
    [
        ((1.0, 0.8, 0.8), "contiguous"),
        ((5.0, 0.7, 0.9), "flipped"),
        ((2.0, 6.0, 3.0), "contiguous"),
    ],
)
def test_coarse_image_is_the_numpy_one_bit_for_bit(spacing, layout):
    """Down-sampled in-plane and along z (area means), up-sampled along z (5 mm slices) and
    in-plane (6 mm pixels), from a flipped and transposed view; NaN counts as air, +-inf as
    the window's ends."""
    from livseg.preprocess.coarse import coarse_image

    hu = np.random.default_rng(4).normal(0.0, 400.0, (70, 90, 110)).astype(np.float32)
    hu[3, 4, 5], hu[5, 6, 7], hu[6, 1, 1] = np.nan, np.inf, -np.inf
    if layout == "flipped":
        hu = hu[::-1].transpose(0, 2, 1)
    want = coarse_image(hu, spacing, 4.0, (-250.0, 350.0))
    got = dev.coarse_image(hu, spacing, 4.0, (-250.0, 350.0), "cpu").numpy()
    np.testing.assert_array_equal(got, want)


def test_gate_upsampling_on_the_device_is_the_numpy_one():
    """A coarse map interpolated back onto a box of the input voxels and thresholded: the same
    mask as numpy's (values nearer 0.5 than float32 rounding excepted: none here)."""
    from livseg.preprocess.coarse import upsample_to_input

    coarse = np.random.default_rng(6).random((9, 14, 12), dtype=np.float32)
    shape, box = (40, 120, 100), (slice(3, 37), slice(10, 111), slice(0, 100))
    want = upsample_to_input(coarse, shape, box)
    got = dev.upsample_to_input(coarse, shape, box, "cpu", above=0.5)
    assert got.dtype == bool and got.shape == want.shape == (34, 101, 100)
    assert 0.2 < got.mean() < 0.8
    assert (got == (want > 0.5)).all()


@pytest.fixture(scope="module")
def fold0() -> Cascade:
    """The shipped fold-0 networks (a CR-U-Net at 160 px, two R-U-Nets at 192 px) in torch."""
    return Cascade.load(device="cpu", backend="torch", folds=[0], batch_size=4)


@pytest.mark.parametrize("stage", ["liver", "tumour"])
@pytest.mark.parametrize("tta", [False, True])
def test_predictor_on_device_gives_the_host_path_probabilities(fold0, stage, tta):
    """The shipped networks on a CT-like volume: the device path (run here on the CPU) gives
    the host path's probabilities to 1e-5 and the same masks; the liver box is cropped from full
    slices (equalisation), the tumour's gathered as a box."""
    rng = np.random.default_rng(2)
    hu = np.full((9, 120, 110), -1000.0, np.float32)
    hu[:, 10:110, 8:100] = rng.normal(-80.0, 10.0, (9, 100, 92))  # fat
    hu[:, 25:90, 15:70] = rng.normal(110.0, 8.0, (9, 65, 55))  # a liver-like block
    yy, xx = np.mgrid[:120, :110]
    disc = (yy - 55) ** 2 + (xx - 42) ** 2 < 12**2
    hu[2:7, disc] = rng.normal(35.0, 8.0, (5, int(disc.sum())))  # a darker lesion
    stats = dataclasses.replace(volume_stats(hu), liver_median=110.0)
    src = getattr(fold0, stage)
    pred = SlicePredictor(src.models, src.settings, batch_size=4, tta=tta, device_prep=False)
    assert not src.device_prep  # the default on the CPU: numpy
    box = (20, 100, 10, 80)
    want = np.concatenate([p for _, p in pred.predict(hu, range(1, 8), stats, box)])
    pred.device_prep = True
    got = np.concatenate([p for _, p in pred.predict(hu, range(1, 8), stats, box)])
    assert got.shape == want.shape == (7, 80, 70)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert 0.0 <= got.min() and got.max() <= 1.0
    assert ((got > 0.5) == (want > 0.5)).all()
    assert want.max() - want.min() > 0.2  # the networks respond: real probabilities compared
    if stage == "liver":
        assert 0.3 < (want > 0.5).mean() < 0.9


def test_pre_processing_on_the_device_needs_torch_networks():
    onnx = Cascade.load(device="cpu", backend="onnx", folds=[0]).tumour
    assert not onnx.device_prep
    with pytest.raises(LivsegError, match="needs torch networks"):
        SlicePredictor(onnx.models, onnx.settings, device_prep=True)


def test_cascade_on_device_gives_the_same_labels_on_real_ct(fold0, lits_dir):
    """A real CT through the fold-0 cascade (torch), with the coarse image and gate, the slices'
    pre-processing, the probabilities' resizing, the liver's erosion and dilation and the tumour
    closing on the device (here the CPU) and without: the same labels, voxel for voxel."""
    from livseg.io import read_volume

    volume = read_volume(lits_dir / "volume-3.nii.gz")
    stages = (fold0.coarse, fold0.liver, fold0.tumour)
    assert not any(stage.device_prep for stage in stages)  # the default on the CPU
    labels = {}
    for on in (False, True):
        for stage in stages:
            stage.device_prep = on
        labels[on] = np.asarray(fold0.segment(volume).labels.array)
    for stage in stages:
        stage.device_prep = False
    assert (labels[False] == 1).sum() > 100_000 and (labels[False] == 2).any()
    np.testing.assert_array_equal(labels[True], labels[False])


# --- on a GPU (``python3 -m pytest -m gpu``; skipped without CUDA) ------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_device_steps_on_cuda_equal_numpys():
    """The steps as they run on a GPU: equalisation, coarse image, morphology and the largest
    component bit for bit, the prepared slices and the gate to float32 rounding."""
    from livseg.infer.postprocess import (
        binary_dilate,
        binary_erode,
        largest_component,
        structuring_element,
    )
    from livseg.preprocess.coarse import coarse_image, upsample_to_input

    hu = _ct()
    t = torch.from_numpy(hu).cuda()
    want = histogram_equalize(hu, (-200.0, 250.0), 1024, (5, 60, 7, 70))
    got = dev.histogram_equalize(t, (-200.0, 250.0), 1024, (5, 60, 7, 70)).cpu().numpy()
    np.testing.assert_array_equal(got, want)
    s, vrange = PreprocessSettings("tumour", size=64), (float(hu.min()), float(hu.max()))
    want = prepare_slices(hu, s, vrange, (3, 90, 2, 80))
    got = dev.prepare_slices(t, s, vrange, (3, 90, 2, 80)).cpu().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(
        dev.coarse_image(hu, (1.0, 0.8, 0.8), 4.0, (-250.0, 350.0), "cuda").cpu().numpy(),
        coarse_image(hu, (1.0, 0.8, 0.8), 4.0, (-250.0, 350.0)),
    )
    coarse = np.random.default_rng(6).random((9, 14, 12), dtype=np.float32)
    box = (slice(3, 37), slice(10, 111), slice(0, 100))
    got = dev.upsample_to_input(coarse, (40, 120, 100), box, "cuda", above=0.5)
    want = upsample_to_input(coarse, (40, 120, 100), box)
    assert (got == (want > 0.5))[np.abs(want - 0.5) > 1e-5].all()
    mask = np.random.default_rng(3).random((12, 40, 37)) < 0.8
    se = structuring_element((1.6, 0.743, 0.743), 3.0)
    np.testing.assert_array_equal(binary_erode(mask, se, "cuda"), binary_erode(mask, se))
    np.testing.assert_array_equal(binary_dilate(mask, se, "cuda"), binary_dilate(mask, se))
    blobs = np.random.default_rng(4).random((20, 60, 50)) < 0.4  # many components, some tied
    np.testing.assert_array_equal(largest_component(blobs, device="cuda"), largest_component(blobs))


@pytest.mark.gpu
@needs_cuda
def test_cascade_on_cuda_with_and_without_device_steps(lits_dir):
    """volume-0 through the fold-0 cascade on the GPU: the device steps change no more than
    float32 rounding can (liver and tumour Dice >= 0.9999 against the host steps, same GPU)."""
    from livseg.io import read_volume

    cascade = Cascade.load(device="cuda", folds=[0])
    stages = (cascade.coarse, cascade.liver, cascade.tumour)
    assert all(stage.device_prep for stage in stages)  # the default on a GPU
    volume = read_volume(lits_dir / "volume-0.nii.gz")
    labels = {}
    for on in (True, False):
        for stage in stages:
            stage.device_prep = on
        labels[on] = np.asarray(cascade.segment(volume).labels.array)
    for k in (1, 2):
        a, b = labels[True] >= k, labels[False] >= k
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.9999
