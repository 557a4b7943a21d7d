"""Agreement with MedPy 0.5.2 on perturbed real liver and tumour masks (LiTS data).

MedPy computes full-volume distance transforms; to keep the test fast both libraries get the
same crop (liver region + margin). livseg's results do not depend on the crop (tested in
``test_metrics_surface_overlap.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from livseg.metrics import dice, jaccard, rvd, segmentation_scores, surface_distances

medpy_binary = pytest.importorskip("medpy.metric.binary", reason="MedPy 0.5.2 not installed")


@pytest.fixture(scope="module")
def liver_case(lits_dir):
    from livseg.io import read_volume

    path = lits_dir / "segmentation-3.nii.gz"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    vol = read_volume(path, kind="label")
    lab = vol.array
    idx = np.argwhere(lab >= 1)
    lo = np.maximum(idx.min(axis=0) - 4, 0)
    hi = np.minimum(idx.max(axis=0) + 5, lab.shape)
    crop = lab[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    return crop, vol.spacing


def _perturbations(mask):
    s18 = ndimage.generate_binary_structure(3, 2)
    yield "eroded", ndimage.binary_erosion(mask, s18, iterations=2)
    yield "dilated+shifted", np.roll(ndimage.binary_dilation(mask, iterations=2), 3, axis=2)


def _check(pred, ref, spacing):
    assert dice(pred, ref) == pytest.approx(medpy_binary.dc(pred, ref), abs=1e-6)
    assert jaccard(pred, ref) == pytest.approx(medpy_binary.jc(pred, ref), abs=1e-6)
    assert rvd(pred, ref) == pytest.approx(medpy_binary.ravd(pred, ref), abs=1e-6)
    sd = surface_distances(pred, ref, spacing)
    assert sd.assd == pytest.approx(
        medpy_binary.assd(pred, ref, voxelspacing=spacing, connectivity=2), abs=1e-6
    )
    assert sd.msd == pytest.approx(
        medpy_binary.hd(pred, ref, voxelspacing=spacing, connectivity=2), abs=1e-6
    )
    assert sd.mean_pred_to_ref == pytest.approx(
        medpy_binary.asd(pred, ref, voxelspacing=spacing, connectivity=2), abs=1e-6
    )
    scores = segmentation_scores(pred, ref, spacing)
    assert scores.assd == pytest.approx(sd.assd) and scores.msd == pytest.approx(sd.msd)


def test_liver_agrees_with_medpy(liver_case):
    lab, spacing = liver_case
    ref = lab >= 1
    for _name, pred in _perturbations(ref):
        _check(pred, ref, spacing)


def test_tumour_agrees_with_medpy(liver_case):
    lab, spacing = liver_case
    ref = lab == 2
    if not ref.any():
        pytest.skip("no tumour in this case")
    pred = np.roll(ndimage.binary_dilation(ref), 1, axis=1)
    _check(pred, ref, spacing)
