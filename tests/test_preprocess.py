"""Pre-processing: HU windows, histogram equalisation, min-max, resizing, orientation, slices."""

from __future__ import annotations

import numpy as np
import pytest

from livseg.preprocess import (
    clip_window,
    crunet_input,
    densefcn_liver_input,
    histogram_equalize,
    inplane_bbox,
    minmax_normalize,
    resize_slices,
    select_slices,
    to_canonical,
    tumour_windows,
    window_minmax,
)
from livseg.preprocess.orientation import Reorientation
from livseg.preprocess.resample import nearest_indices
from livseg.volume import Volume


def _ct(z=6, h=40, w=36, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 1500, size=(z, h, w)).astype(np.float32)


# --- intensity ----------------------------------------------------------------------------------
def test_clip_and_minmax():
    x = np.array([-500.0, 0.0, 100.0, 900.0])
    np.testing.assert_array_equal(clip_window(x, (-100, 300)), [-100, 0, 100, 300])
    np.testing.assert_allclose(minmax_normalize(np.array([2.0, 4.0, 6.0])), [0, 0.5, 1])
    assert not minmax_normalize(np.full((3, 3), 7.0)).any()  # constant -> zeros
    with pytest.raises(ValueError):
        clip_window(x, (10, 10))


def test_histogram_equalize_hand_values():
    # 4 pixels: two at the window bottom, one in the middle, one at the top.
    # cdf counts 2, 3, 4; cdf_min = 2 -> (cdf - 2) / (4 - 2) = 0, 0.5, 1.
    s = np.array([[[-200.0, -500.0], [0.0, 250.0]]])
    out = histogram_equalize(s, (-200, 250), bins=1024)
    np.testing.assert_allclose(out, [[[0.0, 0.0], [0.5, 1.0]]])
    assert out.dtype == np.float32


def test_histogram_equalize_is_per_slice_and_monotone():
    x = _ct()
    out = histogram_equalize(x, (-200, 250))
    for k in range(x.shape[0]):  # vectorised result == slice-by-slice result
        np.testing.assert_array_equal(out[k], histogram_equalize(x[k], (-200, 250)))
    flat_in, flat_out = x[2].ravel(), out[2].ravel()
    order = np.argsort(flat_in, kind="stable")
    assert np.all(np.diff(flat_out[order]) >= 0)  # order preserving
    assert out.min() == 0.0 and out.max() == 1.0
    # a uniform histogram is (nearly) unchanged up to scaling
    ramp = np.repeat(np.arange(-200, 250, dtype=np.float32)[None, None], 4, axis=1)
    eq = histogram_equalize(ramp, (-200, 250))
    np.testing.assert_allclose(eq[0, 0], (ramp[0, 0] + 200) / 449, atol=2e-3)


def test_histogram_equalize_constant_slice_is_zero():
    x = _ct(z=3)
    x[1] = 40.0
    out = histogram_equalize(x, (-200, 250))
    assert not out[1].any()
    assert out[0].max() == 1.0


def test_crunet_input():
    x = _ct(z=5, h=64, w=64)
    out = crunet_input(x)
    assert out.shape == x.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_array_equal(crunet_input(x[2:4]), out[2:4])  # per-slice
    small = crunet_input(x, size=32)
    assert small.shape == (5, 32, 32) and 0.0 <= small.min() and small.max() <= 1.0
    plain = crunet_input(x, equalize=False)
    np.testing.assert_allclose(plain, (np.clip(x, -200, 250) + 200) / 450, atol=1e-6)


def test_densefcn_liver_input_minmax_over_volume_and_chunks():
    x = _ct(z=4, h=64, w=64)
    out = densefcn_liver_input(x, size=32)
    assert out.shape == (4, 32, 32) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    full = densefcn_liver_input(x, size=None)
    np.testing.assert_allclose(full, (np.clip(x, -100, 300) + 100) / 400, atol=1e-6)
    # data narrower than the window: min-max over the clipped *data*
    y = np.linspace(0, 100, 4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    np.testing.assert_allclose(densefcn_liver_input(y, size=None), y / 100, atol=1e-6)
    # a chunk with the whole volume's range gives the same values as the whole volume
    chunk = densefcn_liver_input(y[1:3], size=None, volume_range=(0.0, 100.0))
    np.testing.assert_allclose(chunk, y[1:3] / 100, atol=1e-6)


def test_tumour_windows_hand_values():
    hu = np.array(
        [-1000.0, -100.0, 0.0, 50.0, 100.0, 200.0, 400.0, 1000.0], dtype=np.float32
    ).reshape(1, 2, 4)
    out = tumour_windows(hu)
    assert out.shape == (1, 3, 2, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0].ravel(), [0, 0, 0, 0.5, 1, 1, 1, 1])
    np.testing.assert_allclose(
        out[0, 1].ravel(), np.array([0, 0, 100, 150, 200, 300, 300, 300]) / 300
    )
    np.testing.assert_allclose(
        out[0, 2].ravel(), np.array([0, 0, 100, 150, 200, 300, 500, 500]) / 500
    )
    # data inside a window: min-max of the data (20..60 HU -> 0..1); constant -> zeros
    y = np.array([20.0, 40.0, 60.0], dtype=np.float32).reshape(1, 1, 3)
    np.testing.assert_allclose(tumour_windows(y)[0, 0, 0], [0, 0.5, 1])
    assert not tumour_windows(np.full((2, 3, 3), 500.0, np.float32))[:, 0].any()
    np.testing.assert_allclose(
        window_minmax(y, (0, 100), volume_range=(0.0, 100.0))[0, 0], [0.2, 0.4, 0.6]
    )


# --- resizing -----------------------------------------------------------------------------------
def test_resize_image_shapes_and_constants():
    x = np.full((3, 50, 40), 0.25, np.float32)
    out = resize_slices(x, 20)
    assert out.shape == (3, 20, 20) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.25, atol=1e-6)
    four = resize_slices(np.zeros((2, 3, 17, 23), np.float32), (31, 9))
    assert four.shape == (2, 3, 31, 9)
    up = resize_slices(x[:, :10, :10], 25)
    assert up.shape == (3, 25, 25)


def test_resize_image_antialiases_when_downsampling():
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)[None]
    out = resize_slices(checker, 16)
    np.testing.assert_allclose(out, 0.5, atol=0.05)  # aliasing would give 0s and 1s


@pytest.mark.parametrize(
    "shape,size", [((2, 64, 64), 32), ((1, 37, 53), (20, 11)), ((1, 10, 10), 33)]
)
def test_resize_label_never_interpolates(shape, size):
    rng = np.random.default_rng(1)
    lab = rng.choice(np.array([0, 2], np.uint8), size=shape)  # 1 would appear if interpolated
    out = resize_slices(lab, size, kind="label")
    assert out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 2}


def test_resize_label_nearest_exact_and_area():
    lab = np.zeros((1, 8, 8), np.uint8)
    lab[0, 2:6, 2:6] = 1
    out = resize_slices(lab, 4, kind="label")
    # centre-aligned nearest: output i takes input floor((i + 0.5) * 2) = 1, 3, 5, 7
    np.testing.assert_array_equal(out[0], lab[0][1::2, 1::2])
    np.testing.assert_array_equal(nearest_indices(8, 4), [1, 3, 5, 7])
    yy, xx = np.mgrid[:256, :256]
    disk = ((yy - 120) ** 2 + (xx - 130) ** 2 < 70**2).astype(np.uint8)[None]
    small = resize_slices(disk, 64, kind="label")
    assert abs(small.sum() * 16 / disk.sum() - 1) < 0.03


# --- orientation --------------------------------------------------------------------------------
def _rot(axis: int, deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


_PERM = np.eye(3)[:, [2, 0, 1]]  # array z along patient x, array y along z, array x along y
DIRECTIONS = {
    "LPS": np.eye(3),
    "RAS-like": np.diag([1.0, -1.0, -1.0]),  # (z, y, x) order: S, A, R
    "flipped-z": np.diag([-1.0, 1.0, 1.0]),
    "permuted": _PERM,
    "permuted-flipped": _PERM @ np.diag([-1.0, 1.0, -1.0]),
    "oblique": _rot(0, 20) @ np.diag([1.0, -1.0, -1.0]),
    "oblique-permuted": _rot(1, 25) @ _PERM,
}


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_to_canonical_keeps_physical_positions(name):
    rng = np.random.default_rng(3)
    arr = rng.normal(size=(5, 7, 9)).astype(np.float32)
    vol = Volume.image(
        arr, spacing=(2.5, 0.8, 0.7), origin=(-30.0, 12.0, 100.0), direction=DIRECTIONS[name]
    )
    canon, reo = to_canonical(vol)
    assert canon.orientation_codes() == "LPS"
    assert np.all(np.diag(canon.direction) > 0.8)  # nearest to identity
    if "oblique" not in name:
        np.testing.assert_allclose(canon.direction, np.eye(3), atol=1e-12)
    # every canonical voxel sits where its source voxel sat
    idx_c = np.stack(np.meshgrid(*[np.arange(n) for n in canon.shape], indexing="ij"), -1)
    idx_c = idx_c.reshape(-1, 3)
    idx_in = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), -1)
    idx_in = idx_in.reshape(-1, 3)
    pos_in = vol.index_to_lps(idx_in)
    pos_c = canon.index_to_lps(idx_c)
    val_in = arr[tuple(idx_in.T)]
    val_c = canon.array[tuple(idx_c.T)]
    order_in = np.lexsort(np.round(pos_in, 6).T)
    order_c = np.lexsort(np.round(pos_c, 6).T)
    np.testing.assert_allclose(pos_c[order_c], pos_in[order_in], atol=1e-6)
    np.testing.assert_array_equal(val_c[order_c], val_in[order_in])
    # exact round trip, arrays (also with a leading channel axis) and volumes
    np.testing.assert_array_equal(reo.undo(reo.apply(arr)), arr)
    stack = np.stack([arr, -arr])
    np.testing.assert_array_equal(reo.undo(reo.apply(stack)), stack)
    np.testing.assert_array_equal(reo.apply(stack)[1], -canon.array)
    back = reo.undo(canon)
    assert back.same_geometry(vol, atol=1e-9)
    np.testing.assert_array_equal(back.array, arr)


def test_to_canonical_label_and_identity():
    lab = Volume.label(
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        (1, 1, 1),
        direction=np.diag([1.0, -1.0, -1.0]),
    )
    canon, reo = to_canonical(lab)
    assert canon.kind == "label" and canon.array.dtype == np.uint8
    np.testing.assert_array_equal(canon.array, lab.array[:, ::-1, ::-1])
    assert not reo.is_identity
    _, same = to_canonical(Volume.image(np.zeros((2, 3, 4)), (1, 1, 1)))
    assert same.is_identity and isinstance(same, Reorientation)
    with pytest.raises(ValueError):
        reo.apply(np.zeros((3, 3, 3)))


# --- slices -------------------------------------------------------------------------------------
def test_select_slices_hand_cases():
    lab = np.zeros((12, 4, 4), np.uint8)
    lab[4:6, 1, 1] = 1
    lab[9, 2, 2] = 2
    np.testing.assert_array_equal(select_slices(lab, 0), [4, 5, 9])
    np.testing.assert_array_equal(select_slices(lab, 2), [2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    np.testing.assert_array_equal(select_slices(lab, 1, foreground="tumour"), [8, 9, 10])
    np.testing.assert_array_equal(select_slices(lab, 30, foreground="tumour"), np.arange(12))
    np.testing.assert_array_equal(select_slices(lab, 0, foreground="all"), np.arange(12))
    empty = select_slices(np.zeros((5, 2, 2), np.uint8), 3)
    assert empty.size == 0 and empty.dtype == np.int64
    with pytest.raises(ValueError):
        select_slices(lab, -1)


def test_inplane_bbox():
    m = np.zeros((3, 20, 30), bool)
    m[1, 5:8, 10:20] = True
    m[2, 9, 4] = True
    assert inplane_bbox(m) == (5, 10, 4, 20)
    assert inplane_bbox(m, margin=6) == (0, 16, 0, 26)
    y0, y1, x0, x1 = inplane_bbox(m, margin=1, square=True)
    assert y1 - y0 == x1 - x0 == 18 and y0 >= 0 and y1 <= 20
    assert y0 <= 4 and y1 >= 11 and x0 <= 3 and x1 >= 21  # still contains the margin box
    assert inplane_bbox(np.zeros((2, 4, 4))) is None
