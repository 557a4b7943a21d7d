"""Training loop, checkpoints, resume, CLI (tiny phantom data; see test_train_slow.py for more)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from livseg.checkpoint_spec import ModelSpec, find_checkpoint
from livseg.cli import main
from livseg.errors import InputError, OutputExistsError
from livseg.models.checkpoint import load_model
from livseg.train.checkpoint import (
    load_config_of,
    load_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from livseg.train.config import load_config
from livseg.train.trainer import train

TINY = [
    "data.size=32",
    "data.margin=1",
    "model.base_width=2",
    "model.depth=2",
    "train.epochs=1",
    "train.iterations_per_epoch=2",
    "train.batch_size=2",
    "train.val_batch_size=16",
    "augment.elastic_prob=0.0",
]


def write_phantoms(folder: Path, cases: int = 3, size: int = 32, seed: int = 7) -> Path:
    """A LiTS-layout synthetic dataset (volume-N / segmentation-N) in ``folder``."""
    from livseg.io import write_volume
    from livseg.phantom import case_seed, make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    for n in range(cases):
        image, label = make_phantom(case_seed(seed, n), size=size, slices=12)
        write_volume(image, folder / f"volume-{n}.nii.gz")
        write_volume(label, folder / f"segmentation-{n}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_phantoms(tmp_path_factory.mktemp("phantoms"))


def _log_epochs(run: Path) -> list[int]:
    with open(run / "log.csv", newline="", encoding="utf-8") as fh:
        return [int(r["epoch"]) for r in csv.DictReader(fh)]


def test_checkpoint_round_trip(tmp_path):
    from livseg.models import build_model

    cfg = load_config("runet", TINY)
    torch.manual_seed(0)
    model = build_model(cfg.model.name, **cfg.model.options)
    with torch.no_grad():  # make the BatchNorm buffers non-trivial
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.rand(2, 1, 32, 32)).mean().backward()
    opt.step()
    state = {"epoch": 3, "optimizer": opt.state_dict(), "rng": rng_state(), "best_score": -1.5}
    folder = save_checkpoint(tmp_path / "ck", model, cfg, state=state, info={"epoch": 3})
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoint.json",
        "config.json",
        "model.safetensors",
        "state.pt",
    ]
    assert not list(tmp_path.glob(".ck*"))  # no temporary left behind

    loaded, spec = load_model(folder, device="cpu")
    assert load_config_of(folder) == cfg and not loaded.training
    assert spec == ModelSpec(cfg.model.name, cfg.model.options, cfg.data)
    x = torch.rand(1, 1, 32, 32)
    model.eval()
    assert torch.equal(loaded(x), model(x))

    st = torch.load(folder / "state.pt", weights_only=True)  # no pickled code
    assert st["epoch"] == 3 and st["best_score"] == -1.5
    opt2 = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    opt2.load_state_dict(st["optimizer"])
    # RNG state restores exactly
    set_rng_state(load_state(folder)["rng"])
    a = (torch.rand(3), np.random.rand(3))
    set_rng_state(st["rng"])
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])

    # overwrite is atomic: a kill between the two renames leaves "ck.old", which is found
    (tmp_path / "ck").rename(tmp_path / "ck.old")
    assert find_checkpoint(tmp_path / "ck") == tmp_path / "ck.old"
    save_checkpoint(tmp_path / "ck", model, cfg)
    assert find_checkpoint(tmp_path / "ck") == tmp_path / "ck"
    assert not (tmp_path / "ck.old").exists()
    with pytest.raises(InputError, match="not a livseg checkpoint"):
        load_model(tmp_path / "nothing")


def test_train_resume_and_refuse_overwrite(phantoms, tmp_path):
    cfg = load_config("runet", TINY)
    run = tmp_path / "run"
    events = []
    result = train(cfg, phantoms, run, fold=0, folds=3, device="cpu", progress=events.append)
    assert result.checkpoint == run / "best"
    assert len(result.val_cases) == 1 and len(result.train_cases) == 2
    assert (run / "splits.json").is_file() and (run / "config.json").is_file()
    for f in ("log.csv", "val_cases.csv", "val_summary.json", "result.json"):
        assert (run / f).is_file(), f
    assert _log_epochs(run) == [1]
    phases = [e.phase for e in events]
    assert phases.count("train") == 2 and phases[-1] == "epoch"
    assert events[0].steps == 2 and events[0].slices_per_s > 0
    summary = json.loads((run / "val_summary.json").read_text())["summary"]
    assert 0.0 <= summary["liver_dice_per_case"] <= 1.0
    assert load_state(run / "last")["epoch"] == 1

    with pytest.raises(OutputExistsError, match="--resume"):
        train(cfg, phantoms, run, fold=0, folds=3, device="cpu")

    longer = load_config("runet", TINY + ["train.epochs=2"])
    train(longer, phantoms, run, fold=0, folds=3, device="cpu", resume=True)
    assert _log_epochs(run) == [1, 2]
    st = load_state(run / "last")
    assert st["epoch"] == 2 and st["global_step"] == 4 and st["finished"]
    assert load_config_of(run / "last").train.epochs == 2
    model, _ = load_model(run / "best")
    with torch.no_grad():
        assert model(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_cli_train_densefcn_sbu(phantoms, tmp_path, capsys):
    """DenseFCN liver model (SBU: output twice the input size) through the CLI."""
    out = tmp_path / "dense"
    argv = [
        "-q",
        "train",
        "densefcn_liver",
        "--data",
        str(phantoms),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--fold",
        "1",
        "--folds",
        "3",
        "--set",
        "data.size=32",
        "--set",
        "data.margin=1",
        "--set",
        "model.levels=2",
        "--set",
        "model.growth=2",
        "--set",
        "model.first_filters=4",
        "--set",
        "model.layers_per_block=2",
        "--set",
        "train.epochs=1",
        "--set",
        "train.iterations_per_epoch=1",
    ]
    assert main(argv) == 0
    model, spec = load_model(out / "best")
    assert spec.options["sbu"] is True
    with torch.no_grad():
        assert model(torch.rand(1, 1, 32, 32)).shape == (1, 2, 64, 64)
    assert main(argv) == 2  # exists: one-line error
    assert "--resume" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "densefcn_liver",
                "--data",
                str(phantoms),
                "--out",
                str(tmp_path / "x"),
                "--set",
                "train.nope=1",
            ]
        )
        == 2
    )
    assert "valid keys" in capsys.readouterr().err


def test_early_stopping(phantoms, tmp_path):
    # min_delta so large that no validation after the first counts as an improvement
    cfg = load_config(
        "runet",
        TINY
        + [
            "train.epochs=4",
            "train.iterations_per_epoch=1",
            "train.patience=1",
            "train.min_delta=1e9",
            "train.monitor=neg_loss",
        ],
    )
    result = train(cfg, phantoms, tmp_path / "es", fold=2, folds=3, device="cpu")
    assert result.final.stopped_early and result.final.epochs_done == 2
    assert result.final.best_epoch == 1
    assert _log_epochs(tmp_path / "es") == [1, 2]
    st = load_state(tmp_path / "es" / "last")
    assert st["stopped_early"] and st["finished"] and st["epoch"] == 2


def test_logs_without_tensorboard(tmp_path, monkeypatch):
    import sys

    from livseg.train.logs import StageLogs

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    logs = StageLogs(tmp_path, start_epoch=0, global_step=0, enabled=True)
    assert logs.tb is None
    logs.step(10, 0.5, 1e-4)
    logs.epoch({"epoch": 1, "stage": "model", "train_loss": 0.5})
    logs.close()
    assert _log_epochs(tmp_path) == [1]
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.parametrize(("target", "fraction"), [("liver", 0.3), ("tumour", 0.6)])
def test_foreground_sampler_draws_the_configured_fraction(phantoms, tmp_path, target, fraction):
    """``train.foreground_fraction`` (shipped configs: 0.5 / 0.6) through the trainer's loader.

    By hand: foreground slices weigh ``f / n_fg`` each and the others ``(1 - f) / (n - n_fg)``,
    so a draw is a foreground slice with probability ``n_fg * f / n_fg = f``, whatever the
    share ``n_fg / n`` of foreground slices (here far from ``f``).
    """
    from livseg.data.cache import build_slice_cache
    from livseg.data.dataset import SliceDataset
    from livseg.distributed import DistInfo
    from livseg.io.datasets import discover_cases
    from livseg.train.distributed import DistributedWeightedSampler
    from livseg.train.loop import make_loader

    cfg = load_config(
        "runet",
        TINY
        + [
            "data.margin=20",  # every slice, with and without liver
            f"train.target={target}",
            f"train.foreground_fraction={fraction}",
            "train.iterations_per_epoch=1000",
            "train.batch_size=4",
        ],
    )
    cache = build_slice_cache(discover_cases(phantoms), cfg.data, tmp_path / "cache")
    dataset = SliceDataset(cache, augment=None, with_weight=False)
    flags = dataset.foreground_flags(target)
    assert 0.1 < flags.mean() < 0.9 and abs(flags.mean() - fraction) > 0.2
    loader, sampler, steps = make_loader(dataset, cfg.train, DistInfo(), torch.device("cpu"))
    assert isinstance(sampler, DistributedWeightedSampler) and steps == 1000
    sampler.set_epoch(3)
    drawn = np.fromiter(iter(sampler), dtype=np.int64)
    assert drawn.size == 4000
    # 4000 draws: standard error sqrt(f (1 - f) / 4000) < 0.008
    assert flags[drawn].mean() == pytest.approx(fraction, abs=0.03)
    # the batches hold the drawn slices: count foreground in the labels themselves
    sampler.set_epoch(3)
    fg = [
        bool((lab >= 1).any() if target == "liver" else (lab == 2).any())
        for batch in loader
        for lab in batch["label"]
    ]
    assert np.mean(fg) == pytest.approx(flags[drawn].mean())


@pytest.mark.parametrize("amp_cpu", [False, True])
def test_training_learns(phantoms, tmp_path, caplog, amp_cpu):
    """A tiny network on the phantom: the mean training loss of epoch 3 is below half epoch 1's,
    in float32 and with bfloat16 autocast on the CPU (``train.amp_cpu``)."""
    cfg = load_config(
        "runet",
        TINY
        + [
            'loss={"name": "wce"}',
            "optimizer.lr=1e-2",
            "schedule.name=constant",
            "augment=null",
            "train.epochs=3",
            "train.iterations_per_epoch=8",
            "train.batch_size=4",
            "train.val_every=3",
            f"train.amp_cpu={str(amp_cpu).lower()}",
        ],
    )
    with caplog.at_level("INFO", logger="livseg.train.stage"):
        train(cfg, phantoms, tmp_path / "learn", fold=0, folds=3, device="cpu")
    assert ("bfloat16 autocast" in caplog.text) == amp_cpu
    with open(tmp_path / "learn" / "log.csv", newline="", encoding="utf-8") as fh:
        losses = [float(r["train_loss"]) for r in csv.DictReader(fh)]
    assert len(losses) == 3
    assert losses[2] < 0.5 * losses[0]


def test_cpu_autocast_computes_in_bfloat16_and_keeps_float32_weights():
    """``train.amp_cpu``: convolutions run in bfloat16 on channels-last inputs; the weights stay
    float32, so checkpoints are unchanged in format."""
    from livseg.infer.backend import memory_format
    from livseg.train.loop import autocast

    conv = torch.nn.Conv2d(2, 3, 3).to(memory_format=memory_format(4))
    trainee = type("T", (), {"amp": False, "cpu_bf16": True})()
    x = torch.randn(1, 2, 8, 8).contiguous(memory_format=memory_format(4))
    with autocast(trainee):
        y = conv(x)
    assert y.dtype == torch.bfloat16 and conv.weight.dtype == torch.float32
    trainee.cpu_bf16 = False
    with autocast(trainee):
        assert conv(x).dtype == torch.float32
    assert memory_format(5) == torch.channels_last_3d


def test_a_resumed_run_warns_about_changed_options_not_about_newly_added_ones(tmp_path, caplog):
    """A run folder written before an option existed (its config.json lacks the key) does not
    count the option's default as a change; a changed value is named."""
    from livseg.train.config import config_to_dict
    from livseg.train.trainer import _check_run_folder

    cfg = load_config("runet", TINY)
    saved = config_to_dict(cfg)
    del saved["train"]["amp_cpu"]
    (tmp_path / "config.json").write_text(json.dumps(saved), encoding="utf-8")
    with caplog.at_level("WARNING", logger="livseg.train.trainer"):
        _check_run_folder(tmp_path, cfg)
        assert "differs" not in caplog.text
        _check_run_folder(tmp_path, load_config("runet", TINY + ["train.epochs=2"]))
    assert "differs from the earlier run's: train.epochs" in caplog.text
