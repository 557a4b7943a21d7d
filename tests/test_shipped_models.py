"""The weights shipped in ``src/livseg/weights``: complete, loadable, and working on real CT.

The real-CT check segments ``lits/volume-1`` with each shipped cascade. That case is among the
shipped models' training cases, so the bound is a regression check of the weights and the
inference path (a broken checkpoint, pre-processing drift between training and inference, or a
flipped orientation all give a Dice near 0), not an accuracy claim: the cross-validated numbers
are in ``MODEL_CARD.md``. The bounds sit below what each shipped model gives on this case (CR-U-Net
0.94, the less trained DenseFCN about 0.6).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from livseg.infer import Cascade
from livseg.infer.pretrained import SHIPPED_MODELS, WEIGHTS_DIR, available_models
from livseg.io import read_volume


def test_every_model_is_shipped_with_its_card():
    assert available_models() == sorted(SHIPPED_MODELS)
    card = (WEIGHTS_DIR / "MODEL_CARD.md").read_text()
    summary = json.loads((WEIGHTS_DIR / "cv_summary.json").read_text())
    for name in SHIPPED_MODELS:
        assert f"`{name}/`" in card, name
    for cascade in ("crunet", "densefcn"):
        s = summary["cascades"][cascade]["summary"]
        assert 0.0 <= s["liver_dice_per_case"] <= 1.0
        # the card quotes the cross-validated liver Dice of each cascade
        assert f"{s['liver_dice_per_case']:.3f}" in card, cascade


@pytest.mark.parametrize(("model", "min_dice"), [("crunet", 0.85), ("densefcn", 0.5)])
def test_shipped_cascade_on_real_ct(lits_dir, model, min_dice):
    image = read_volume(lits_dir / "volume-1.nii.gz", kind="image")
    ref = read_volume(lits_dir / "segmentation-1.nii.gz", kind="label").array
    result = Cascade.load(model, device="cpu").segment(image)
    pred = result.labels.array
    assert result.labels.geometry_mismatch(image) is None
    assert set(np.unique(pred)) <= {0, 1, 2}
    liver_p, liver_r = pred >= 1, ref >= 1
    dice = 2 * np.count_nonzero(liver_p & liver_r) / (liver_p.sum() + liver_r.sum())
    assert dice > min_dice, f"{model}: liver Dice {dice:.3f} on a training case"
    # tumours only inside the liver, by construction of the cascade
    assert not ((pred == 2) & ~liver_p).any()
