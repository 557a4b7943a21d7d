"""The one pre-processing pipeline (training cache == predictor input) and the one bounding box."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from livseg.data.cache import build_slice_cache
from livseg.errors import LivsegError
from livseg.infer.predictor import SlicePredictor, volume_stats
from livseg.io import read_volume, write_volume
from livseg.io.datasets import Case, discover_cases
from livseg.phantom import write_phantom_dataset
from livseg.preprocess.bbox import bounding_box, inplane_bbox
from livseg.preprocess.orientation import canonical_view
from livseg.preprocess.pipeline import (
    PreprocessSettings,
    context_indices,
    crop_box,
    liver_median_hu,
    liver_relative,
    prepare_slices,
)
from livseg.volume import Volume


class _Probe(nn.Module):
    """A stand-in network (never run here): the predictor only needs a module."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):  # pragma: no cover - network_input does not call it
        return x[:, :1] * self.w


@pytest.fixture(scope="module")
def phantom_cases(tmp_path_factory) -> dict[str, Case]:
    """A small phantom case as written (LPS storage) and the same case stored RAS-flipped."""
    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(root, cases=1, seed=1, size=64, slices=24)
    (case,) = discover_cases(root)
    img, lab = read_volume(case.image, kind="image"), read_volume(case.label, kind="label")
    ras = np.diag([1.0, -1.0, -1.0])  # stored with array y -> anterior, x -> patient right
    flipped = {}
    for name, vol in (("image", img), ("label", lab)):
        arr = np.ascontiguousarray(vol.array[:, ::-1, ::-1])
        twin = Volume(arr, vol.spacing, vol.origin, ras, vol.kind)
        flipped[name] = write_volume(twin, root / f"ras-{name}.nii.gz")
    return {
        "lps": case,
        "ras": Case("ras-0", flipped["image"], flipped["label"]),
    }


SETTINGS = {
    # 2.5-D context, histogram equalisation, 64 -> 32 resize
    "crunet": PreprocessSettings("crunet", size=32, context=1, margin=2),
    # volume min-max, every slice, 64 -> 48 resize
    "densefcn_liver": PreprocessSettings("densefcn_liver", size=48, foreground="all"),
    # 3 windows, liver crop (squared, margin 3), resized to 24, context; liver slices
    "tumour": PreprocessSettings(
        "tumour", size=24, crop_to_liver=True, crop_margin=3, context=1, foreground="liver"
    ),
    # the same with windows that follow the reference liver's median HU
    "tumour_liver_hu": PreprocessSettings(
        "tumour", size=24, crop_to_liver=True, crop_margin=3, foreground="liver", liver_hu=100.0
    ),
}


@pytest.mark.parametrize("orientation", ["lps", "ras"])
@pytest.mark.parametrize("pipeline", list(SETTINGS))
def test_cached_slices_equal_predictor_input(phantom_cases, tmp_path, pipeline, orientation):
    """A training slice in the cache is bit-for-bit what the predictor feeds the network."""
    case = phantom_cases[orientation]
    s = SETTINGS[pipeline]
    cached = build_slice_cache([case], s, tmp_path / "cache")[case.case_id]
    slices = cached.slices
    assert slices.size > 0

    image = read_volume(case.image, kind="image")
    hu, _ = canonical_view(image)  # what Cascade.segment does
    liver = canonical_view(read_volume(case.label, kind="label"))[0] >= 1
    box = crop_box(liver, s)
    assert list(box) == cached.meta["crop_box"]
    if s.crop_to_liver:  # the crop is a real sub-box of the slice, then resized
        y0, y1, x0, x1 = box
        assert (y1 - y0, x1 - x0) != hu.shape[1:] and y1 - y0 == x1 - x0 != s.size

    stats = volume_stats(hu)
    if s.liver_hu is not None:  # the cascade gives the fine liver's median; here the reference's
        stats = dataclasses.replace(stats, liver_median=liver_median_hu(hu, liver))
        assert cached.meta["liver_median_hu"] == stats.liver_median
    predictor = SlicePredictor(_Probe(), s, batch_size=4)
    fed = predictor.network_input(hu, slices, stats, box)
    assert fed.dtype == np.float32 and fed.shape == (slices.size, s.channels, s.size, s.size)
    assert np.array_equal(fed, np.asarray(cached.image))


def test_settings_key_unchanged_by_the_move():
    """Slice caches built before the pipeline moved to livseg.preprocess are still found."""
    assert PreprocessSettings("tumour", size=128, crop_to_liver=True).key() == (
        "tumour_s128_a3dc49d295c5"
    )
    assert PreprocessSettings("crunet", size=256, context=1, dtype="float16").key() == (
        "crunet_s256_a34a54eedaa8"
    )


def test_settings_defaults_and_validation():
    s = PreprocessSettings("tumour")
    assert (s.foreground, s.margin, s.base_channels, s.channels) == ("tumour", 5, 3, 3)
    assert PreprocessSettings("crunet", windows=[[-200, 250]]).windows == ((-200.0, 250.0),)
    assert PreprocessSettings("densefcn_liver", context=2).channels == 5
    for bad, match in (
        (dict(pipeline="crunet", foreground="lungs"), "foreground"),
        (dict(pipeline="crunet", size=4), "size"),
        (dict(pipeline="crunet", crop_margin=-1), ">= 0"),
        (dict(pipeline="tumour", windows=((0, 100), (50, 50))), "lo < hi"),
    ):
        with pytest.raises(LivsegError, match=match):
            PreprocessSettings(**bad)


def test_liver_hu_settings():
    """Set: in the dict and key, round trip; unset: absent (older keys unchanged, tested above);
    tumour pipeline only, finite."""
    s = PreprocessSettings("tumour", size=32, crop_to_liver=True, liver_hu=100)
    assert s.to_dict()["liver_hu"] == 100.0 and "liver_hu" not in SETTINGS["tumour"].to_dict()
    assert PreprocessSettings.from_dict(s.to_dict()) == s
    assert s.key() != PreprocessSettings("tumour", size=32, crop_to_liver=True).key()
    for bad in (dict(pipeline="crunet", liver_hu=100), dict(pipeline="tumour", liver_hu=np.nan)):
        with pytest.raises(LivsegError, match="liver_hu"):
            PreprocessSettings(**bad)


def test_liver_relative_windows_hand_derived():
    s = PreprocessSettings("tumour", windows=((0, 100), (-100, 200)), liver_hu=100)
    # a liver at 60 HU: every window 40 HU lower, as if the CT were 40 HU brighter
    assert liver_relative(s, 60.0).windows == ((-40.0, 60.0), (-140.0, 160.0))
    assert liver_relative(SETTINGS["tumour"], None) is SETTINGS["tumour"]  # fixed windows
    for missing in (None, float("nan")):
        with pytest.raises(LivsegError, match="liver median"):
            liver_relative(s, missing)


def test_liver_median_hu_hand_derived():
    hu = np.array([[[1.0, 2.0, 3.0, 100.0, np.nan, -1000.0]]], np.float32)
    liver = np.array([[[1, 1, 1, 1, 1, 0]]], np.uint8)
    assert liver_median_hu(hu, liver) == 2.5  # NaN ignored, the air voxel is not liver
    assert liver_median_hu(hu, liver, max_voxels=3) == 2.0  # every other voxel: 1, 3, NaN
    assert np.isnan(liver_median_hu(hu, np.zeros_like(liver)))


def test_liver_relative_input_is_unchanged_by_a_phase_shift():
    """With liver_hu, a CT 40 HU brighter (liver included) gives the same network input; with
    fixed windows it does not."""
    rng = np.random.default_rng(0)
    hu = rng.normal(60.0, 25.0, (3, 40, 40)).astype(np.float32)
    hu[:, :6] = -1000.0  # air, so the volume range extends beyond every window
    box = (0, 40, 0, 40)
    s = SETTINGS["tumour_liver_hu"]
    a = prepare_slices(hu, s, (-1000.0, 300.0), box, 60.0)
    b = prepare_slices(hu + 40.0, s, (-960.0, 340.0), box, 100.0)
    np.testing.assert_allclose(a, b, atol=1e-6)
    fixed = SETTINGS["tumour"]
    c = prepare_slices(hu, fixed, (-1000.0, 300.0), box)
    d = prepare_slices(hu + 40.0, fixed, (-960.0, 340.0), box)
    assert np.abs(c - d).max() > 0.1


def test_context_indices_replicate_the_ends():
    got = context_indices(np.array([0, 3, 4]), 2, 5)
    assert got.tolist() == [[0, 0, 0, 1, 2], [1, 2, 3, 4, 4], [2, 3, 4, 4, 4]]
    assert context_indices(np.array([2]), 0, 5).tolist() == [[2]]


def test_crop_box():
    liver = np.zeros((3, 20, 30), bool)
    liver[1, 5:9, 10:20] = True  # rows 5..8 (4), columns 10..19 (10)
    assert crop_box(liver, PreprocessSettings("tumour")) == (0, 20, 0, 30)
    s = PreprocessSettings("tumour", crop_to_liver=True, crop_margin=2)
    # margin: rows 3..10 (8), columns 8..21 (14); squared: rows grow by 6 around the centre
    assert crop_box(liver, s) == (0, 14, 8, 22)
    assert crop_box(np.zeros((3, 20, 30), bool), s) is None


def _reference_box(mask: np.ndarray, pad: int) -> tuple[slice, ...] | None:
    """An independent box: the extreme coordinates of the non-zero voxels (np.argwhere)."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        return None
    return tuple(
        slice(max(int(lo) - pad, 0), min(int(hi) + 1 + pad, n))
        for lo, hi, n in zip(idx.min(axis=0), idx.max(axis=0), mask.shape, strict=True)
    )


def test_bounding_box_hand_derived():
    m = np.zeros((4, 5, 6), bool)
    m[1, 2, 3] = m[2, 4, 1] = True
    assert bounding_box(m) == (slice(1, 3), slice(2, 5), slice(1, 4))
    # pad 1, clipped to the array: z 0..4, y 1..5, x 0..5
    assert bounding_box(m, 1) == (slice(0, 4), slice(1, 5), slice(0, 5))
    assert bounding_box(m, (0, 2, 1)) == (slice(1, 3), slice(0, 5), slice(0, 5))
    assert bounding_box(m.astype(np.uint8) * 2) == bounding_box(m)  # labels: non-zero inside
    assert bounding_box(np.zeros((3, 3), bool)) is None
    assert bounding_box(np.zeros((0, 3, 3), bool)) is None  # no voxel at all
    assert bounding_box(np.array([0, 0, 1, 1, 0])) == (slice(2, 4),)
    # a strided view: y 2, 4 -> 2, 0; x 3, 1 -> 2, 4
    assert bounding_box(m[:, ::-1, ::-1]) == (slice(1, 3), slice(0, 3), slice(2, 5))
    with pytest.raises(ValueError, match="one value per axis"):
        bounding_box(m, (1, 1))


def test_bounding_box_matches_voxel_coordinates():
    rng = np.random.default_rng(0)
    for _ in range(50):
        shape = tuple(int(n) for n in rng.integers(0, 7, size=int(rng.integers(1, 4))))
        mask = rng.random(shape) < rng.choice([0.0, 0.05, 0.3])
        pad = int(rng.integers(0, 3))
        assert bounding_box(mask, pad) == _reference_box(mask, pad)


def test_inplane_bbox_on_bounding_box():
    m = np.zeros((2, 16, 26), bool)
    m[0, 5:10, 4:8] = True
    m[1, 6:8, 12:20] = True
    assert inplane_bbox(m) == (5, 10, 4, 20)
    assert inplane_bbox(m[1]) == (6, 8, 12, 20)
    with pytest.raises(ValueError, match="margin"):
        inplane_bbox(m, margin=-1)
    with pytest.raises(ValueError, match="mask must be"):
        inplane_bbox(np.zeros(4, bool))


def test_inplane_bbox_of_a_window_is_the_whole_masks():
    """The box of a mask given as a window of the slices (its origin and the slices' shape) is
    the box of the whole mask: margins clipped and squares grown and shifted against the slices'
    edges, not the window's (the cascade's tumour crop in its work box)."""
    rng = np.random.default_rng(12)
    for _ in range(200):
        full = np.zeros((3, 40, 30), bool)
        y, x = int(rng.integers(0, 36)), int(rng.integers(0, 26))
        full[1, y : y + int(rng.integers(1, 5)), x : x + int(rng.integers(1, 5))] = True
        box = bounding_box(full)
        y0, x0 = int(rng.integers(0, box[1].start + 1)), int(rng.integers(0, box[2].start + 1))
        y1, x1 = int(rng.integers(box[1].stop, 41)), int(rng.integers(box[2].stop, 31))
        window = full[:, y0:y1, x0:x1]
        margin, square = int(rng.integers(0, 12)), bool(rng.integers(0, 2))
        got = inplane_bbox(window, margin, square, (y0, x0), (40, 30))
        assert got == inplane_bbox(full, margin, square), (y0, y1, x0, x1, margin, square)


def test_case_path_type(phantom_cases):
    """The fixture's RAS twin really is stored flipped (so the test above covers reorientation)."""
    ras = read_volume(phantom_cases["ras"].image, kind="image")
    lps = read_volume(phantom_cases["lps"].image, kind="image")
    assert ras.orientation_codes() != lps.orientation_codes()
    assert np.array_equal(canonical_view(ras)[0], canonical_view(lps)[0])
    assert isinstance(phantom_cases["ras"].image, Path)


@pytest.mark.parametrize(
    ("pipeline", "equalize", "windows"),
    [
        ("crunet", True, ((-200.0, 250.0),)),
        ("crunet", False, ((-200.0, 250.0),)),
        ("densefcn_liver", False, ((-100.0, 300.0),)),
        ("tumour", False, ((0.0, 100.0), (-100.0, 200.0), (-100.0, 400.0))),
    ],
)
def test_prepare_slices_on_the_box_equals_the_whole_slices_cropped(pipeline, equalize, windows):
    """Only the equalisation needs whole slices (its histograms); the other pipelines work on
    the box alone, and the equalisation maps only the box: the result is the definition's,
    the whole slices' pipeline cropped, bit for bit."""
    from livseg.preprocess.pipeline import prepare_slices, preprocess_slices
    from livseg.preprocess.resample import resize_slices

    rng = np.random.default_rng(7)
    hu = rng.normal(60.0, 180.0, (4, 70, 90)).astype(np.float32)
    hu[:, :10] = -1000.0  # air above the body
    s = PreprocessSettings(pipeline, size=32, windows=windows, equalize=equalize)
    vr = (float(hu.min()), float(hu.max()))
    box = (12, 61, 20, 69)
    y0, y1, x0, x1 = box
    want = np.clip(
        resize_slices(preprocess_slices(hu, s, vr)[..., y0:y1, x0:x1], 32, "image"), 0.0, 1.0
    )
    assert np.array_equal(prepare_slices(hu, s, vr, box), want)
