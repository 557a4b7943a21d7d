"""CR-U-Net staged training (livseg.train.staging): freezing, level-1 masks, level-2 data, weights.

Tiny phantom cases, widths of 2 and 2 iterations: a few seconds each.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_train_loop import write_phantoms

from livseg.data.cache import build_slice_cache
from livseg.io.datasets import discover_cases
from livseg.models import CRUNet, build_model
from livseg.models.checkpoint import load_model
from livseg.train.config import load_config
from livseg.train.loop import seed_all
from livseg.train.staging import (
    Level2Dataset,
    forward_fn,
    freeze_for_stage,
    level1_masks,
    stage_dataset,
    stages_of,
)
from livseg.train.trainer import train

CRUNET_TINY = [
    "data.size=32",
    "data.margin=1",
    "model.base_width=2",
    "model.level1_depth=2",
    "model.level2_depth=2",
    "train.epochs=1",
    "train.iterations_per_epoch=2",
    "train.val_batch_size=16",
    "augment.elastic_prob=0.0",
]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_phantoms(tmp_path_factory.mktemp("phantoms_staging"))


@pytest.fixture(scope="module")
def cache(phantoms, tmp_path_factory):
    cfg = load_config("crunet_mdice", CRUNET_TINY)
    return build_slice_cache(discover_cases(phantoms), cfg.data, tmp_path_factory.mktemp("cache"))


def test_freeze_for_stage():
    """Moved from test_models: which level trains, which is frozen and kept in eval mode."""
    model = CRUNet(base_width=4, level1_depth=2, level2_depth=3)
    x = torch.rand(2, 1, 32, 32)

    net = freeze_for_stage(model, "level1")
    assert net is model.level1 and model.stage == "level1"
    with torch.no_grad():  # forward returns level-1 logits (eval: no dropout)
        assert torch.allclose(model.eval()(x), model.level1(x))
    assert not any(p.requires_grad for p in model.level2.parameters())
    assert all(p.requires_grad for p in model.level1.parameters())

    net = freeze_for_stage(model, "level2")
    assert net is model.level2 and model.stage == "full"
    net.train()  # what the epoch loop does
    assert not model.level1.training and model.level2.training
    assert not any(p.requires_grad for p in model.level1.parameters())
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.level2.parameters())
    assert all(p.grad is None for p in model.level1.parameters())

    unet = build_model("unet", base_width=2, depth=2)
    assert freeze_for_stage(unet, "model") is unet


def test_stages_of():
    assert stages_of(load_config("crunet_mdice")) == ["level1", "level2"]
    assert stages_of(load_config("crunet_mdice", ["train.stage=level2"])) == ["level2"]
    assert stages_of(load_config("runet")) == ["model"]


def test_level1_masks_are_the_processed_level1_output():
    """Hand-derived: a 12x12 square with a one-pixel hole, and a one-pixel speck outside.

    Level 1 is replaced by a 1x1 convolution ``20 x - 10``, so its probability is > 0.5 exactly
    where the image is > 0.5. At 32 px the morphology radius is ``max(1, floor(5 * 32 / 512 +
    0.5)) = 1`` (a plus-shaped disk): closing fills the hole, opening removes the speck and the
    square's four corner pixels (a corner has only two of its four neighbours inside).
    """
    model = CRUNet(base_width=2, level1_depth=2, level2_depth=2)
    conv = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.fill_(20.0)
        conv.bias.fill_(-10.0)
    model.level1 = conv
    image = np.zeros((2, 1, 32, 32), dtype=np.float32)
    image[0, 0, 10:22, 10:22] = 1.0
    image[0, 0, 15, 15] = 0.0  # hole
    image[0, 0, 3, 3] = 1.0  # speck
    fake_cache = {"case": SimpleNamespace(image=image)}

    masks = level1_masks(model, fake_cache, ["case"], torch.device("cpu"), batch_size=1)

    expected = np.zeros((2, 32, 32), dtype=np.uint8)
    expected[0, 10:22, 10:22] = 1
    for y, x in ((10, 10), (10, 21), (21, 10), (21, 21)):
        expected[0, y, x] = 0
    assert masks["case"].dtype == np.uint8
    assert np.array_equal(masks["case"], expected)
    raw = (image[:, 0] > 0.5).astype(np.uint8)
    assert not np.array_equal(raw, expected)  # the masks are processed, not just thresholded


def test_level2_dataset_serves_masks_that_follow_the_augmentation(cache):
    cfg = load_config("crunet_mdice", CRUNET_TINY)
    ids = cache.case_ids
    # the masks are the liver labels themselves: an augmented mask must equal the augmented label
    masks = {cid: (np.asarray(cache[cid].label) >= 1).astype(np.uint8) for cid in ids}
    plain = Level2Dataset(cache, ids, None, 0, False, masks)
    augmented = Level2Dataset(cache, ids, cfg.augment, 0, False, masks)
    moved = 0
    for i in range(len(plain)):
        a, b = plain[i], augmented[i]
        assert torch.equal(a["mask"], (a["label"] >= 1).float())
        assert torch.equal(b["mask"], (b["label"] >= 1).float())
        moved += int(not torch.equal(a["label"], b["label"]))
    assert moved > len(plain) // 2  # the augmentation did move most slices


def test_level2_inputs_contain_the_level1_masks(cache):
    cfg = load_config("crunet_mdice", CRUNET_TINY)
    ids = cache.case_ids
    seed_all(0, 0, 0)
    model = build_model(cfg.model.name, **cfg.model.options)
    freeze_for_stage(model, "level2")
    dev = torch.device("cpu")
    dataset, masks = stage_dataset(
        cfg, "level2", model, cache, (ids[:2], ids[2:]), dev, with_weight=False
    )
    assert isinstance(dataset, Level2Dataset) and sorted(masks) == ids  # val cases too
    expected = level1_masks(model, cache, ids, dev)
    assert all(np.array_equal(masks[c], expected[c]) for c in ids)

    seen = []
    model.level2.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    fwd = forward_fn(model, model.level2, "level2")
    x = torch.rand(3, 1, 32, 32)
    mask = torch.from_numpy(expected[ids[0]][:3].astype(np.float32))
    fwd(x, mask)
    assert seen[0].shape == (3, 2, 32, 32)  # concat: slice + mask
    assert torch.equal(seen[0][:, 0], x[:, 0]) and torch.equal(seen[0][:, 1], mask)

    single, none = stage_dataset(cfg, "level1", model, cache, (ids, ids), dev, False)
    assert none is None and not isinstance(single, Level2Dataset)
    assert "mask" not in single[0]


def test_level2_training_updates_level2_weights_only(phantoms, tmp_path):
    cfg = load_config("crunet_mdice", CRUNET_TINY)
    result = train(cfg, phantoms, tmp_path / "run", fold=0, folds=3, device="cpu")
    assert [s.stage for s in result.stages] == ["level1", "level2"]
    seed_all(cfg.train.seed, 0, 0)  # the initial weights of every stage
    initial = build_model(cfg.model.name, **cfg.model.options).state_dict()
    after1 = load_model(tmp_path / "run" / "level1" / "last")[0].state_dict()
    after2 = load_model(tmp_path / "run" / "level2" / "last")[0].state_dict()
    best1 = load_model(tmp_path / "run" / "level1" / "best")[0].state_dict()

    def changed(a, b, prefix):
        keys = [k for k in a if k.startswith(prefix) and a[k].is_floating_point()]
        assert keys
        return [k for k in keys if not torch.equal(a[k], b[k])]

    # level-1 training changed level 1 and left level 2 at its initial weights
    assert changed(initial, after1, "level1.")
    assert not changed(initial, after1, "level2.")
    # level-2 training started from the best level 1 and kept it, buffers included (eval mode)
    assert not changed(best1, after2, "level1.")
    weights2 = [k for k in initial if k.startswith("level2.") and k.endswith(".weight")]
    assert set(weights2) <= set(changed(initial, after2, "level2."))
