"""Overlap and surface metrics on small arrays with values derived by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from livseg.metrics import (
    EmptyMaskError,
    OverlapCounts,
    boundary,
    dice,
    jaccard,
    rvd,
    surface_distances,
    voe,
)


def _block(shape, lo, hi):
    m = np.zeros(shape, dtype=bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


def test_overlap_hand_values():
    # pred 2x2x2 = 8 voxels inside ref 2x2x4 = 16 voxels: I = 8
    pred = _block((6, 6, 6), (1, 1, 1), (3, 3, 3))
    ref = _block((6, 6, 6), (1, 1, 1), (3, 3, 5))
    assert dice(pred, ref) == pytest.approx(2 * 8 / 24)
    assert jaccard(pred, ref) == pytest.approx(8 / 16)
    assert voe(pred, ref) == pytest.approx(0.5)
    assert rvd(pred, ref) == pytest.approx(-0.5)  # signed: under-segmentation is negative
    assert rvd(ref, pred) == pytest.approx(1.0)
    # Jaccard = D / (2 - D)
    d = dice(pred, ref)
    assert jaccard(pred, ref) == pytest.approx(d / (2 - d))


def test_overlap_empty_rules():
    empty = np.zeros((3, 3, 3), bool)
    full = np.ones((3, 3, 3), bool)
    assert dice(empty, empty) == 1.0
    assert dice(empty, empty, empty=0.0) == 0.0
    assert jaccard(empty, empty) == 1.0
    assert voe(empty, empty) == 0.0
    assert dice(empty, full) == 0.0 and dice(full, empty) == 0.0
    with pytest.raises(EmptyMaskError):
        rvd(full, empty)
    assert rvd(empty, full) == -1.0
    assert OverlapCounts.of(full, empty) == OverlapCounts(0, 27, 0)


def test_boundary_of_block_is_its_shell_and_of_3cube_all_but_centre():
    cube = _block((9, 9, 9), (2, 2, 2), (7, 7, 7))  # 5^3
    b = boundary(cube)
    assert b.sum() == 5**3 - 3**3
    assert not b[3:6, 3:6, 3:6].any()
    three = _block((5, 5, 5), (1, 1, 1), (4, 4, 4))
    assert boundary(three).sum() == 26  # the centre's 18 neighbours are all inside
    # object voxels on the array's faces are boundary (outside = background)
    assert boundary(np.ones((4, 4, 4), bool)).sum() == 64 - 8
    # same as scipy's erosion with the 18-neighbourhood
    rng = np.random.default_rng(0)
    blob = ndimage.binary_opening(rng.random((20, 21, 22)) > 0.4)
    s18 = ndimage.generate_binary_structure(3, 2)
    np.testing.assert_array_equal(boundary(blob), blob ^ ndimage.binary_erosion(blob, s18))


def test_single_voxels_anisotropic_distance():
    pred = np.zeros((8, 8, 8), bool)
    ref = np.zeros((8, 8, 8), bool)
    pred[0, 0, 0] = True
    ref[0, 0, 3] = True
    sd = surface_distances(pred, ref, spacing=(2.0, 1.0, 0.5))
    assert sd.assd == pytest.approx(1.5) and sd.msd == pytest.approx(1.5)
    ref[:] = False
    ref[3, 0, 0] = True
    sd = surface_distances(pred, ref, spacing=(2.0, 1.0, 0.5))
    assert sd.msd == pytest.approx(6.0) and sd.rmsd == pytest.approx(6.0)


@pytest.mark.parametrize("method", ["kdtree", "edt"])
def test_cube_against_its_centre_voxel(method):
    pred = _block((7, 7, 7), (2, 2, 2), (5, 5, 5))  # 3^3 block, boundary 26 voxels
    ref = np.zeros_like(pred)
    ref[3, 3, 3] = True
    # isotropic 1 mm: 6 faces at 1, 12 edges at sqrt2, 8 corners at sqrt3; back: 1
    sd = surface_distances(pred, ref, (1.0, 1.0, 1.0), method=method)
    assert (sd.n_pred, sd.n_ref) == (26, 1)
    assert sd.assd == pytest.approx((6 + 12 * math.sqrt(2) + 8 * math.sqrt(3) + 1) / 27)
    assert sd.rmsd == pytest.approx(math.sqrt((6 + 24 + 24 + 1) / 27))
    assert sd.msd == pytest.approx(math.sqrt(3))
    assert sd.mean_ref_to_pred == pytest.approx(1.0)
    # spacing (z, y, x) = (2, 1, 1) mm: faces 2x2 + 4x1, edges 8 x sqrt5 + 4 x sqrt2,
    # corners 8 x sqrt6; back: the nearest in-plane face neighbour, 1 mm
    sd = surface_distances(pred, ref, (2.0, 1.0, 1.0), method=method)
    total = 2 * 2 + 4 + 8 * math.sqrt(5) + 4 * math.sqrt(2) + 8 * math.sqrt(6) + 1
    assert sd.assd == pytest.approx(total / 27)
    assert sd.rmsd == pytest.approx(math.sqrt((2 * 4 + 4 + 8 * 5 + 4 * 2 + 8 * 6 + 1) / 27))
    assert sd.msd == pytest.approx(math.sqrt(6))


@pytest.mark.parametrize("method", ["kdtree", "edt"])
def test_concentric_cubes(method):
    big = _block((18, 18, 18), (1, 1, 1), (15, 15, 15))  # side 14
    small = _block((18, 18, 18), (3, 3, 3), (13, 13, 13))  # side 10, 2 voxels inside
    sd = surface_distances(big, small, (1.0, 2.0, 3.0), method=method)
    # from a point inside a box, the nearest point of the box's surface is the foot of the
    # perpendicular on the nearest face: distance = min over axes of (voxels to the big shell
    # at index 1 or 14 along that axis) x spacing of that axis
    zz, yy, xx = np.nonzero(small & ~_block((18, 18, 18), (4, 4, 4), (12, 12, 12)))
    expected = np.minimum.reduce(
        [
            np.minimum(zz - 1, 14 - zz) * 1.0,
            np.minimum(yy - 1, 14 - yy) * 2.0,
            np.minimum(xx - 1, 14 - xx) * 3.0,
        ]
    )
    np.testing.assert_allclose(np.sort(sd.ref_to_pred), np.sort(expected))
    assert sd.ref_to_pred.min() == 2.0  # small z-faces: 2 voxels x 1 mm
    # the big cube's corners are farthest: (2, 2, 2) voxels = sqrt(4*1 + 4*4 + 4*9) mm
    assert sd.msd == pytest.approx(math.sqrt(56))
    assert sd.n_pred == 14**3 - 12**3 and sd.n_ref == 10**3 - 8**3


def test_identical_masks_have_zero_distances_and_edge_contact():
    m = _block((6, 6, 6), (0, 0, 0), (6, 3, 6))  # touches the array faces
    sd = surface_distances(m, m, (1.0, 0.7, 0.7))
    assert sd.assd == 0.0 and sd.msd == 0.0 and sd.rmsd == 0.0


def test_kdtree_and_edt_agree_and_crop_is_exact():
    rng = np.random.default_rng(1)
    a = ndimage.binary_opening(rng.random((30, 40, 35)) > 0.55, iterations=1)
    b = np.roll(ndimage.binary_dilation(a), 2, axis=1)
    sp = (2.5, 0.8, 0.7)
    k = surface_distances(a, b, sp, method="kdtree")
    e = surface_distances(a, b, sp, method="edt")
    assert k.assd == pytest.approx(e.assd, abs=1e-9)
    assert k.rmsd == pytest.approx(e.rmsd, abs=1e-9)
    assert k.msd == pytest.approx(e.msd, abs=1e-9)
    # brute force on the full (uncropped) grid
    s18 = ndimage.generate_binary_structure(3, 2)
    pa = np.argwhere(a ^ ndimage.binary_erosion(a, s18)) * sp
    pb = np.argwhere(b ^ ndimage.binary_erosion(b, s18)) * sp
    from scipy.spatial.distance import cdist

    dist = cdist(pa, pb)
    brute = np.concatenate([dist.min(axis=1), dist.min(axis=0)])
    assert k.assd == pytest.approx(brute.mean(), abs=1e-9)
    assert k.msd == pytest.approx(brute.max(), abs=1e-9)


@pytest.mark.parametrize("spacing", [(5.0, 0.75, 0.75), (1.0, 1.0, 1.0), (0.8, 2.0, 3.0)])
def test_local_search_near_and_far_points_are_exact(spacing):
    """Near points (local offsets), mid-range (extended offsets) and far ones (KD-tree)."""
    from scipy.spatial.distance import cdist

    a = np.zeros((30, 70, 70), bool)
    b = np.zeros_like(a)
    a[10:20, 10:40, 10:40] = True
    b[11:20, 12:41, 9:38] = True  # near: shifted and trimmed
    b[2:4, 60:64, 60:64] = True  # far from a: only a KD-tree reaches a's surface
    a[25:27, 50:52, 5:7] = True  # mid-range from b
    k = surface_distances(a, b, spacing)
    s18 = ndimage.generate_binary_structure(3, 2)
    pa = np.argwhere(a ^ ndimage.binary_erosion(a, s18)) * spacing
    pb = np.argwhere(b ^ ndimage.binary_erosion(b, s18)) * spacing
    dist = cdist(pa, pb)
    assert np.sort(k.pred_to_ref) == pytest.approx(np.sort(dist.min(axis=1)), abs=1e-9)
    assert np.sort(k.ref_to_pred) == pytest.approx(np.sort(dist.min(axis=0)), abs=1e-9)


def test_surface_distances_empty_and_bad_input():
    m = _block((5, 5, 5), (1, 1, 1), (3, 3, 3))
    empty = np.zeros_like(m)
    for a, b in ((m, empty), (empty, m), (empty, empty)):
        with pytest.raises(EmptyMaskError, match="empty"):
            surface_distances(a, b)
    with pytest.raises(ValueError, match="shape"):
        surface_distances(m, m[:4])
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(m, m, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="method"):
        surface_distances(m, m, method="brute")


def test_far_false_positive_volume_by_hand():
    from livseg.metrics.overlap import far_false_positive_ml

    ref = np.zeros((10, 10, 40), bool)
    ref[4:6, 4:6, 0:4] = True
    pred = ref.copy()
    pred[5, 5, 10] = True  # 7 voxels (14 mm at 2 mm) from the reference: near
    pred[5, 5, 20:23] = True  # 17-19 voxels away (34-38 mm): far, 3 voxels
    spacing = (1.0, 1.0, 2.0)  # voxel = 2 mm^3
    assert far_false_positive_ml(pred, ref, spacing, 20.0) == pytest.approx(3 * 2.0 / 1000)
    # the boundary is exclusive: at exactly 20 mm a voxel is not far
    edge = ref.copy()
    edge[5, 5, 13] = True  # 10 voxels * 2 mm = 20 mm
    assert far_false_positive_ml(edge, ref, spacing, 20.0) == 0.0
    assert far_false_positive_ml(pred, np.zeros_like(ref), spacing) == pytest.approx(
        int(pred.sum()) * 2.0 / 1000
    )
    assert far_false_positive_ml(np.zeros_like(ref), ref, spacing) == 0.0
