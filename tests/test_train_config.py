"""Training configurations, learning-rate schedules, device policy, samplers (fast, no training)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from livseg.device import (
    DeviceError,
    amp_enabled,
    cpu_bf16_enabled,
    parse_device,
    resolve_device,
)
from livseg.errors import LivsegError
from livseg.train.config import (
    Config,
    ConfigError,
    ScheduleConfig,
    bundled_configs,
    config_from_dict,
    config_to_dict,
    load_config,
)
from livseg.train.distributed import DistributedWeightedSampler
from livseg.train.overrides import apply_overrides
from livseg.train.schedules import learning_rate
from livseg.train.staging import stages_of
from livseg.train.trainer import member_config

REPO = Path(__file__).resolve().parents[1]
EXPECTED = {
    "unet",
    "runet",
    "crunet_mdice",
    "crunet_dice",
    "crunet_same_depth",
    "crunet_no_intermediate",
    "densefcn_liver",
    "densefcn_tumour",
}


def test_bundled_configs_load_and_round_trip():
    assert EXPECTED <= set(bundled_configs())
    for name in EXPECTED:
        cfg = load_config(name)
        assert isinstance(cfg, Config) and cfg.name == name
        d = config_to_dict(cfg)
        json.dumps(d)  # JSON-ready
        assert config_to_dict(config_from_dict(json.loads(json.dumps(d)))) == d


def test_repo_configs_folder_is_the_package_folder():
    """configs/ at the repository root must not drift from the shipped src/livseg/configs."""
    repo_configs = REPO / "configs"
    package_configs = REPO / "src" / "livseg" / "configs"
    assert repo_configs.resolve() == package_configs.resolve()
    cfg = load_config(repo_configs / "crunet_mdice.json")
    assert cfg == load_config("crunet_mdice")


def test_paper_variants():
    d = load_config("crunet_mdice")
    assert d.model.name == "crunet" and d.loss.name == "mdice"
    assert (d.loss.options["alpha"], d.loss.options["beta"], d.loss.options["eps"]) == (
        0.5,
        0.7,
        1e-5,
    )
    assert d.model.options["level2_depth"] == 5 and d.model.options["intermediate"] is True
    assert load_config("crunet_dice").loss.name == "dice"
    assert load_config("crunet_same_depth").model.options["level2_depth"] == 4
    assert load_config("crunet_no_intermediate").model.options["intermediate"] is False
    assert d.train.batch_size == 2 and d.optimizer.lr == 1e-4
    assert stages_of(d) == ["level1", "level2"]
    liver, tumour = load_config("densefcn_liver"), load_config("densefcn_tumour")
    assert liver.model.options["sbu"] is True and liver.data.weight_map and liver.loss.name == "wce"
    assert tumour.model.options["in_channels"] == 3 and tumour.data.pipeline == "tumour"
    assert tumour.train.target == "tumour" and tumour.loss.name == "tumour_compound"
    assert stages_of(liver) == ["model"]


def test_overrides_are_type_checked():
    cfg = load_config(
        "crunet_mdice",
        [
            "train.epochs=3",
            "model.base_width=16",
            "optimizer.lr=0.001",
            "data.size=64",
            "augment=null",
            "train.stage=level1",
            "loss.alpha=0.3",
        ],
    )
    assert cfg.train.epochs == 3 and cfg.model.options["base_width"] == 16
    assert cfg.optimizer.lr == 1e-3 and cfg.data.size == 64 and cfg.augment is None
    assert cfg.train.stage == "level1" and cfg.loss.options["alpha"] == 0.3
    # int accepted for a float field, converted
    assert isinstance(apply_overrides(cfg, ["optimizer.lr=1"]).optimizer.lr, float)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epochz=3", "valid keys: epochs, batch_size"),
        ("model.width=16", "valid options: in_channels"),
        ("loss.gamma=2", "valid options:"),
        ("train.epochs=three", "expected an integer"),
        ("train.epochs=2.5", "expected an integer"),
        ("train.amp=1", "expected true or false"),
        ("train.stage=level3", "is not one of"),
        ("optimizer.lr=0", "optimizer.lr must be > 0"),
        ("nosuch.key=1", "valid: name, model"),
        ("train.epochs", "expected section.key=value"),
        ("model.in_channels=3", "do not match the pre-processing"),
        ("augment.scale=[2, 1]", "scale must be"),
        ("train.device=gpu", "not a device"),
    ],
)
def test_bad_overrides_are_clear_errors(override, fragment):
    with pytest.raises(ConfigError) as exc:
        load_config("crunet_mdice", [override])
    assert fragment in str(exc.value)
    assert isinstance(exc.value, LivsegError)


def test_phase_widths_checked_when_the_configuration_loads():
    # tumour pipeline: 3 windows -> one width or three; two is refused before any training
    ok = load_config("tumour_runet", ["augment.phase_hu=40", "augment.window_widths_hu=[100]"])
    assert ok.augment.window_widths_hu == (100.0,)
    with pytest.raises(ConfigError, match="2 widths for the 3 window"):
        load_config("tumour_runet", ["augment.phase_hu=40", "augment.window_widths_hu=[100, 300]"])
    # synthetic lesions use the widths too
    off = ["augment.phase_hu=0", "augment.synth_prob=0"]
    with pytest.raises(ConfigError, match="2 widths for the 3 window"):
        load_config(
            "tumour_runet", [*off, "augment.synth_prob=0.5", "augment.window_widths_hu=[1, 3]"]
        )
    syn = load_config(
        "tumour_runet", [*off, "augment.synth_prob=0.5", "augment.synth_hu=[-60, 20]"]
    )
    assert syn.augment.synth_hu == (-60.0, 20.0) and syn.augment.synth_prob == 0.5
    # with the phase shift and synthetic lesions off the widths are not used, so not checked
    load_config("tumour_runet", [*off, "augment.window_widths_hu=[100, 300]"])


def test_shipped_tumour_configuration_paints_lesions_and_shifts_phases():
    # v0.10's tumour stage: the values its fold models were trained with
    cfg = load_config("tumour_runet")
    assert cfg.augment.synth_prob == 0.5 and cfg.augment.phase_hu == 40.0
    assert cfg.augment.window_widths_hu == (100.0, 300.0, 500.0)  # the 3 windows' HU widths
    assert cfg.train.amp_cpu
    assert (cfg.train.members, cfg.model.options["base_width"], cfg.train.epochs) == (2, 8, 90)
    members = sorted((REPO / "src/livseg/weights/runet_tumour").glob("fold*-member*"))
    assert len(members) == 6  # 3 folds x 2 seeds
    for member in members:
        shipped = config_from_dict(json.loads((member / "config.json").read_text()))
        seed = int(member.name[-1])  # fold<k>-member<i> was trained with seed i
        assert shipped == member_config(cfg, seed), member


def test_stage_option_only_for_crunet():
    with pytest.raises(ConfigError, match="crunet model only"):
        load_config("runet", ["train.stage=level1"])


def test_unknown_config_name_lists_bundled(tmp_path):
    with pytest.raises(ConfigError, match="bundled: .*crunet_mdice"):
        load_config("no_such_config")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)
    d = config_to_dict(load_config("unet"))
    d["train"]["bogus"] = 1
    (tmp_path / "x.json").write_text(json.dumps(d), encoding="utf-8")
    with pytest.raises(ConfigError, match="x.json: train: unknown key"):
        load_config(tmp_path / "x.json")


def test_learning_rate_schedules():
    lr0 = 1e-4
    steps, per_epoch = 100, 10
    exp = ScheduleConfig(name="exponential", final_lr=1e-10)
    assert learning_rate(exp, lr0, 0, steps, per_epoch) == pytest.approx(1e-4)
    assert learning_rate(exp, lr0, 50, steps, per_epoch) == pytest.approx(1e-7)  # sqrt(1e-4*1e-10)
    assert learning_rate(exp, lr0, 100, steps, per_epoch) == pytest.approx(1e-10)
    poly = ScheduleConfig(name="poly", final_lr=0.0, power=2.0)
    assert learning_rate(poly, lr0, 50, steps, per_epoch) == pytest.approx(lr0 * 0.25)
    cos = ScheduleConfig(name="cosine", final_lr=1e-6)
    assert learning_rate(cos, lr0, 50, steps, per_epoch) == pytest.approx((1e-4 + 1e-6) / 2)
    step = ScheduleConfig(name="step", step_epochs=3, gamma=0.5)
    assert learning_rate(step, lr0, 29, steps, per_epoch) == pytest.approx(lr0)  # epoch 2
    assert learning_rate(step, lr0, 30, steps, per_epoch) == pytest.approx(lr0 / 2)  # epoch 3
    assert learning_rate(ScheduleConfig(name="constant"), lr0, 77, steps, per_epoch) == lr0
    warm = ScheduleConfig(name="constant", warmup_epochs=1)
    assert learning_rate(warm, lr0, 0, steps, per_epoch) == pytest.approx(lr0 * 0.01)
    assert learning_rate(warm, lr0, 10, steps, per_epoch) == pytest.approx(lr0)
    with pytest.raises(ConfigError, match="final_lr"):
        load_config("crunet_mdice", ["schedule.final_lr=0"])


def test_device_policy():
    assert parse_device("cuda:1") == ("cuda", 1)
    assert parse_device("AUTO") == ("auto", None)
    for bad in ("gpu", "cpu:0", "cuda:x", ""):
        with pytest.raises(DeviceError, match="not a device"):
            parse_device(bad)
    assert resolve_device("cpu").type == "cpu"
    import torch

    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")
    assert not amp_enabled(torch.device("cpu"), True)
    assert amp_enabled(torch.device("cuda", 0), True)
    assert not amp_enabled(torch.device("cuda", 0), False)
    assert cpu_bf16_enabled(torch.device("cpu"), True)
    assert not cpu_bf16_enabled(torch.device("cpu"), False)
    assert not cpu_bf16_enabled(torch.device("cuda", 0), True)


def test_distributed_weighted_sampler_splits_draws():
    w = np.array([1.0, 0.0, 3.0, 0.0])
    ranks = [DistributedWeightedSampler(w, 2000, rank=r, world_size=2, seed=3) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(5)
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == 2000
    both = np.array(a + b)
    assert set(both) <= {0, 2}  # zero weights never drawn
    assert abs((both == 2).mean() - 0.75) < 0.03
    assert a != b  # disjoint parts of one global sequence
    single = DistributedWeightedSampler(w, 4000, rank=0, world_size=1, seed=3)
    single.set_epoch(5)
    assert np.array_equal(np.array(list(single))[0::2], np.array(a))
    ranks[0].set_epoch(6)
    assert list(ranks[0]) != a
    assert not math.isnan(float(both.mean()))
