"""Networks: shapes, gradients, registry, size errors, paper details, CR-U-Net morphology."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.morphology import disk

from livseg.errors import LivsegError
from livseg.models import (
    MODELS,
    CRUNet,
    DenseFCN,
    RUNet,
    build_model,
    foreground_probability,
    model_options,
    nearest_valid_size,
)
from livseg.models.crunet import (
    binary_closing,
    binary_dilation,
    binary_erosion,
    binary_opening,
    disk_kernel,
    scaled_radius,
)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(old)


# Small versions of every slice model (CPU-friendly widths); the 3-D unet3d is tested in
# test_coarse.py.
SMALL = {
    "unet": {"base_width": 4, "depth": 3},
    "runet": {"base_width": 4, "depth": 3},
    "crunet": {"base_width": 4, "level1_depth": 2, "level2_depth": 3},
    "densefcn": {"growth": 4, "first_filters": 8, "levels": 3},
}


def _n_in(model: torch.nn.Module) -> int:
    return model.in_channels


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("size", [(32, 32), (64, 32), (24, 40)])
@pytest.mark.parametrize("extra", [{}, {"in_channels": 3}, {"context_slices": 1}])
def test_output_shapes(name, size, extra):
    opts = dict(SMALL[name], **extra)
    if name == "crunet" and size == (24, 40):
        size = (32, 48)  # crunet's level 2 needs multiples of 8
    model = build_model(name, **opts).eval()
    expected_in = opts.get("in_channels", 1) * (2 * opts.get("context_slices", 0) + 1)
    assert _n_in(model) == expected_in
    x = torch.rand(2, expected_in, *size)
    with torch.no_grad():
        y = model(x)
    out_c = 2 if name == "densefcn" else 1
    assert y.shape == (2, out_c, *size)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["unet", "runet", "crunet"])
def test_two_class_output(name):
    model = build_model(name, out_channels=2, **SMALL[name]).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 1, 32, 32))
    assert y.shape == (1, 2, 32, 32)


def test_densefcn_sbu_doubles_the_size():
    model = build_model("densefcn", sbu=True, **SMALL["densefcn"]).eval()
    with torch.no_grad():
        y = model(torch.rand(2, 1, 32, 48))
    assert y.shape == (2, 2, 64, 96)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_gradients_reach_every_parameter(name):
    model = build_model(name, **SMALL[name]).train()
    x = torch.rand(2, model.in_channels, 32, 32)
    if isinstance(model, CRUNet):
        out1, out2 = model.forward_both(x)
        outputs = [out1, out2]
    else:
        outputs = [model(x)]
    loss = sum((o * torch.randn_like(o)).sum() for o in outputs)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got a zero gradient"


@pytest.mark.parametrize(
    ("name", "opts", "bad", "nearest"),
    [
        ("unet", {"depth": 4, "base_width": 4}, (250, 250), "256x256"),
        ("runet", {"depth": 4, "base_width": 4}, (100, 70), "96x64"),
        ("crunet", {"base_width": 4}, (500, 520), "512x512"),
        ("densefcn", {"growth": 4, "first_filters": 8}, (30, 30), "32x32"),
    ],
)
def test_bad_size_names_the_nearest_valid_size(name, opts, bad, nearest):
    model = build_model(name, **opts)
    with pytest.raises(LivsegError, match=nearest) as info:
        model(torch.rand(1, model.in_channels, *bad))
    assert isinstance(info.value, ValueError)


def test_wrong_channels_and_rank_are_clear_errors():
    model = build_model("runet", **SMALL["runet"])
    with pytest.raises(LivsegError, match="input channel"):
        model(torch.rand(1, 2, 32, 32))
    with pytest.raises(LivsegError, match="4-D"):
        model(torch.rand(1, 32, 32))


def test_nearest_valid_size():
    assert nearest_valid_size(250, 16) == 256
    assert nearest_valid_size(247, 16) == 240
    assert nearest_valid_size(248, 16) == 256  # ties go up
    assert nearest_valid_size(3, 16) == 16
    assert nearest_valid_size(512, 32) == 512


def test_registry_errors_list_names_and_options():
    with pytest.raises(LivsegError, match="crunet, densefcn, runet, unet"):
        build_model("vnet")
    with pytest.raises(LivsegError, match="base_width") as info:
        build_model("runet", width=16)
    assert "width" in str(info.value)
    with pytest.raises(LivsegError, match="dropout"):
        build_model("runet", dropout=1.5)
    with pytest.raises(LivsegError, match="level2_input"):
        build_model("crunet", level2_input="sum")
    assert set(MODELS) == {"unet", "runet", "crunet", "densefcn", "unet3d"}
    assert model_options("densefcn")["growth"] == 16


def test_runet_paper_layer_counts_and_init():
    assert RUNet(depth=4, base_width=4).paper_layer_count == 35
    assert RUNet(depth=5, base_width=4).paper_layer_count == 43
    model = RUNet(depth=2, base_width=4)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            assert torch.allclose(m.bias, torch.full_like(m.bias, 0.1))
    # three pre-activation layers per unit block, each BN -> ReLU -> conv -> dropout
    layer = model.down[0].body[0]
    kinds = [type(m).__name__ for m in layer]
    assert kinds == ["BatchNorm2d", "ReLU", "Conv2d", "Dropout"]
    assert len(model.down[0].body) == 3
    assert isinstance(model.down[0].shortcut, torch.nn.Conv2d)  # 1 -> 4 channels: projection
    assert isinstance(model.down[1].shortcut, torch.nn.Conv2d)  # 4 -> 8
    assert isinstance(RUNet(base_width=4, depth=1).up[0].body, torch.nn.Sequential)


def test_residual_shortcut_is_identity_when_widths_match():
    from livseg.models.blocks import ResidualUnit

    unit = ResidualUnit(6, 6).eval()
    assert isinstance(unit.shortcut, torch.nn.Identity)
    for p in unit.body.parameters():
        torch.nn.init.zeros_(p)  # body outputs 0 -> the unit is the identity
    x = torch.rand(1, 6, 8, 8)
    assert torch.equal(unit(x), x)


def test_default_widths_and_depths():
    defaults = model_options("crunet")
    assert defaults["level1_depth"] == 4 and defaults["level2_depth"] == 5
    assert defaults["base_width"] == 32 and model_options("runet")["base_width"] == 32
    crunet = build_model("crunet", base_width=2)
    assert crunet.level1.depth == 4 and crunet.level2.depth == 5
    assert crunet.level2.in_channels == 2
    assert crunet.level1.head.in_channels == 2
    assert build_model("crunet", base_width=2, level2_depth=4).level2.depth == 4  # variant (a)
    dense = build_model("densefcn")
    assert dense.first.out_channels == 48
    assert dense.down_blocks[0].out_channels == 48 + 4 * 16  # input kept in the down path
    assert dense.up_blocks[0].out_channels == 4 * 16  # not in the up path
    assert build_model("densefcn", in_channels=3).first.in_channels == 3


def test_densefcn_has_no_skip_connections():
    """Up-path features depend on the input only through the bottleneck."""
    model = DenseFCN(growth=4, first_filters=8, levels=2, dropout=0.0).eval()
    captured = {}
    model.bottleneck.register_forward_hook(lambda m, i, o: captured.setdefault("b", o))
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        y = model(x)
        b = captured["b"]
        z = b
        for tu, block in zip(model.transitions_up, model.up_blocks, strict=True):
            z = block(tu(z))
        assert torch.allclose(model.head(z), y)


def test_foreground_probability():
    logits = torch.randn(2, 1, 4, 4)
    assert torch.allclose(foreground_probability(logits), torch.sigmoid(logits[:, 0]))
    two = torch.cat([torch.zeros_like(logits), logits], dim=1)
    assert torch.allclose(foreground_probability(two), torch.sigmoid(logits[:, 0]), atol=1e-6)
    assert foreground_probability(two).shape == (2, 4, 4)
    with pytest.raises(LivsegError):
        foreground_probability(torch.randn(2, 3, 4, 4))


# --- CR-U-Net intermediate processing ------------------------------------------------------


def _disk_mask(size: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _liver_with_hole_and_speck(size: int, hole: int, speck: int) -> tuple[np.ndarray, ...]:
    liver = _disk_mask(size, (size // 2, size // 3), size // 5)
    hole_mask = _disk_mask(size, (size // 2, size // 3), hole)
    speck_mask = _disk_mask(size, (size // 5, (4 * size) // 5), speck)
    prob = np.where(liver & ~hole_mask, 0.9, 0.1)
    prob[speck_mask] = 0.8
    return prob.astype(np.float32), liver, hole_mask, speck_mask


def test_scaled_radius():
    assert scaled_radius(5, 512) == 5
    assert scaled_radius(5, 256) == 3  # 2.5 rounds up
    assert scaled_radius(5, 128) == 1
    assert scaled_radius(5, 64) == 1  # never below 1
    assert scaled_radius(5, 1024) == 10
    assert CRUNet(base_width=2).radius_px(256) == 3


@pytest.mark.parametrize(("size", "hole", "speck"), [(512, 3, 3), (256, 2, 2), (256, 1, 1)])
def test_intermediate_fills_holes_and_removes_specks(size, hole, speck):
    prob, liver, hole_mask, speck_mask = _liver_with_hole_and_speck(size, hole, speck)
    model = CRUNet(base_width=2, level1_depth=1, level2_depth=1)
    out = model.intermediate(torch.from_numpy(prob)[None])
    assert out.shape == (1, 1, size, size) and out.dtype == torch.float32
    mask = out[0, 0].numpy().astype(bool)
    assert mask[hole_mask].all(), "hole not filled"
    assert not mask[speck_mask].any(), "speck not removed"
    assert np.array_equal(mask, liver)  # nothing else changed: a disk survives both


def test_intermediate_scales_with_resolution():
    """A hole of radius 4 at 256 (8 at 512) is too big for the 256-scale disk (radius 3)."""
    prob, _, hole_mask, _ = _liver_with_hole_and_speck(256, 4, 1)
    model = CRUNet(base_width=2, level1_depth=1, level2_depth=1)
    mask = model.intermediate(torch.from_numpy(prob)[None])[0, 0].numpy().astype(bool)
    assert not mask[hole_mask].any()


def test_intermediate_variant_b_is_the_thresholded_mask():
    prob, *_ = _liver_with_hole_and_speck(128, 3, 3)
    model = CRUNet(base_width=2, level1_depth=1, level2_depth=1, intermediate=False)
    mask = model.intermediate(torch.from_numpy(prob)[None, None])
    assert torch.equal(mask[0, 0], torch.from_numpy(prob > 0.5).float())


@pytest.mark.parametrize("radius", [1, 3, 5, 10])
def test_dilating_a_point_gives_the_disk(radius):
    n = 2 * radius + 5
    point = torch.zeros(1, 1, n, n)
    point[..., n // 2, n // 2] = 1
    grown = binary_dilation(point, radius)[0, 0]
    lo = n // 2 - radius
    assert torch.equal(
        grown[lo : lo + 2 * radius + 1, lo : lo + 2 * radius + 1], disk_kernel(radius)
    )
    assert grown.sum() == disk_kernel(radius).sum()
    assert np.array_equal(disk_kernel(radius).numpy(), disk(radius))
    # erosion (outside = foreground) of the complement is the complement of the dilation
    assert torch.equal(binary_erosion(1 - point, radius)[0, 0], 1 - grown)


def test_morphology_matches_scipy_away_from_the_border():
    rng = np.random.default_rng(1)
    for _ in range(4):
        a = rng.random((48, 48)) > 0.55
        a[:10], a[-10:], a[:, :10], a[:, -10:] = False, False, False, False
        t = torch.from_numpy(a)[None]
        closed = binary_closing(t, 3)[0, 0].numpy().astype(bool)
        opened = binary_opening(t, 3)[0, 0].numpy().astype(bool)
        assert np.array_equal(closed, ndimage.binary_closing(a, structure=disk(3)))
        assert np.array_equal(opened, ndimage.binary_opening(a, structure=disk(3)))


def test_morphology_has_no_border_artefacts():
    # Liver cut by the image border, with a notch at the border: closing only adds pixels.
    a = np.zeros((64, 64), dtype=bool)
    a[:, :30] = True
    a[0:3, 10:14] = False  # a small notch open to the top border
    t = torch.from_numpy(a)[None]
    closed = binary_closing(t, 5)[0, 0].numpy().astype(bool)
    assert closed[a].all()  # extensive: nothing removed, also along the border
    assert closed[:, :30].all()  # the notch is filled
    assert not closed[:, 31:].any()
    opened = binary_opening(torch.from_numpy(closed)[None], 5)[0, 0].numpy().astype(bool)
    assert np.array_equal(opened, closed)  # a half-plane touching the border survives opening
    # a batch is processed item by item
    batch = torch.stack([torch.from_numpy(a), torch.zeros(64, 64, dtype=torch.bool)])
    assert binary_closing(batch, 5)[1].sum() == 0


def test_crunet_forward_is_the_cascade_and_stages():
    model = CRUNet(base_width=4, level1_depth=2, level2_depth=3).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        logits1 = model.level1(x)
        mask = model.intermediate(torch.sigmoid(logits1))
        expected = model.level2(model.level2_input(x, mask))
        assert torch.allclose(model(x), expected)
        both = model.forward_both(x)
        assert torch.allclose(both[0], logits1) and torch.allclose(both[1], expected)
    assert model.level2_input(x, mask).shape == (2, 2, 32, 32)

    model.set_stage("level1")
    with torch.no_grad():
        assert torch.allclose(model(x), logits1)

    model.set_stage("full")
    with torch.no_grad():
        assert torch.allclose(model(x), expected)
    with pytest.raises(LivsegError, match="stage"):
        model.set_stage("level3")
    with pytest.raises(LivsegError, match="stage"):  # training stages live in livseg.train
        model.set_stage("level2")


def test_crunet_masked_level2_input():
    model = CRUNet(base_width=4, level1_depth=2, level2_depth=2, level2_input="masked").eval()
    assert model.level2.in_channels == 1
    x = torch.rand(1, 1, 64, 64) + 0.5
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 30:34, 30:34] = 1
    masked = model.level2_input(x, mask)
    assert masked.shape == (1, 1, 64, 64)
    # radius 5 at 512 -> 1 px at 64: the 4x4 square grows by one pixel on each side (disk of 1)
    support = masked[0, 0] > 0
    assert support[29:35, 30:34].all() and support[30:34, 29:35].all()
    assert not support[28].any() and not support[29, 29]
    assert torch.equal(masked[0, 0][support], x[0, 0][support])
    with torch.no_grad():
        assert model(x).shape == (1, 1, 64, 64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_crunet_runs_on_cuda_and_morphology_matches_cpu():
    prob, *_ = _liver_with_hole_and_speck(256, 2, 2)
    model = CRUNet(base_width=4, level1_depth=2, level2_depth=3).eval()
    cpu_mask = model.intermediate(torch.from_numpy(prob)[None])
    model = model.cuda()
    gpu_mask = model.intermediate(torch.from_numpy(prob)[None].cuda())
    assert gpu_mask.device.type == "cuda"
    assert torch.equal(gpu_mask.cpu(), cpu_mask)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        y = model(torch.rand(2, 1, 64, 64, device="cuda"))
    assert y.shape == (2, 1, 64, 64) and torch.isfinite(y.float()).all()
