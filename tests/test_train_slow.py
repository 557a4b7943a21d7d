"""Slow training tests: staged CR-U-Net, SIGKILL + resume, DDP with 2 gloo processes.

Run with ``python -m pytest -m slow tests/test_train_slow.py``.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_loop import TINY, write_phantoms  # noqa: E402

from livseg.checkpoint_spec import load_info
from livseg.cli import main
from livseg.models.checkpoint import load_model
from livseg.train.checkpoint import load_state
from livseg.train.config import load_config
from livseg.train.trainer import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_phantoms(tmp_path_factory.mktemp("phantoms_slow"))


def _sets(items):
    out = []
    for s in items:
        out += ["--set", s]
    return out


def _log_epochs(run: Path) -> list[int]:
    with open(run / "log.csv", newline="", encoding="utf-8") as fh:
        return [int(r["epoch"]) for r in csv.DictReader(fh)]


CRUNET_TINY = [
    "data.size=32",
    "data.margin=1",
    "model.base_width=2",
    "train.epochs=1",
    "train.iterations_per_epoch=2",
    "train.val_batch_size=16",
]


def _train_crunet(phantoms: Path, out: Path, *extra: str) -> int:
    """``livseg train crunet_mdice`` (tiny) on fold 0 of 3 of the phantoms, in-process."""
    args = ["-q", "train", "crunet_mdice", "--data", str(phantoms), "--out", str(out)]
    args += ["--device", "cpu", "--fold", "0", "--folds", "3", *extra]
    return main([*args, *_sets(CRUNET_TINY)])


def test_crunet_two_stages_one_command(phantoms, tmp_path):
    out = tmp_path / "crunet"
    assert _train_crunet(phantoms, out) == 0
    for stage in ("level1", "level2"):
        assert (out / stage / "best" / "model.safetensors").is_file()
    assert load_info(out / "level1" / "best")["stage"] == "level1"
    full, spec = load_model(out / "level2" / "best")
    assert full.stage == "full" and spec.name == "crunet"
    lvl1, _ = load_model(out / "level1" / "best")
    assert lvl1.stage == "level1"
    # level 2 was trained on the frozen level 1: its weights equal the level-1 checkpoint's
    for (k, a), b in zip(
        lvl1.level1.state_dict().items(), full.level1.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    with torch.no_grad():
        assert full(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)
    # a finished run resumes as a no-op; stage=level2 alone retrains level 2 in a new folder
    assert _train_crunet(phantoms, out, "--resume") == 0
    assert _log_epochs(out / "level2") == [1]


def _kill_run(phantoms: Path, run: Path, epochs: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "livseg.cli",
        "train",
        "runet",
        "--data",
        str(phantoms),
        "--out",
        str(run),
        "--device",
        "cpu",
        "--fold",
        "0",
        "--folds",
        "3",
        *_sets(TINY + [f"train.epochs={epochs}", "train.iterations_per_epoch=6"]),
    ]


def test_sigkill_mid_epoch_then_resume(phantoms, tmp_path):
    run = tmp_path / "killed"
    epochs = 3
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _kill_run(phantoms, run, epochs), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    try:
        while not (run / "last" / "state.pt").is_file():  # epoch 1 checkpointed
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # now inside epoch 2
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    st = load_state(run / "last")
    assert 1 <= st["epoch"] < epochs  # at most the epoch in progress is lost

    res = subprocess.run(
        _kill_run(phantoms, run, epochs) + ["--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert _log_epochs(run) == list(range(1, epochs + 1))  # each epoch logged once
    assert load_state(run / "last")["epoch"] == epochs
    assert not list(run.glob(".last.tmp-*")) and not list(run.glob(".best.tmp-*"))

    # the resumed run ends with the weights of an uninterrupted run (per-epoch reseeding)
    ref = tmp_path / "uninterrupted"
    res = subprocess.run(
        _kill_run(phantoms, ref, epochs) + ["--cache", str(run / "cache")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    a, _ = load_model(run / "last")
    b, _ = load_model(ref / "last")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(x.float(), y.float(), atol=1e-5), k


def test_ddp_two_gloo_processes(phantoms, tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "livseg.cli",
        "train",
        "runet",
        "--data",
        str(phantoms),
        "--out",
        str(run),
        "--device",
        "cpu",
        "--fold",
        "0",
        "--folds",
        "3",
        *_sets(TINY + ["train.epochs=1", "train.iterations_per_epoch=3"]),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "weights identical on all 2 ranks" in res.stderr
    assert "backend gloo" in res.stderr
    # one run folder, one checkpoint of each kind, written once (by rank 0); TensorBoard events
    # only where the optional tensorboard package is installed (log.csv always, checked below)
    folders = ["best", "cache", "last"]
    if importlib.util.find_spec("tensorboard") is not None:
        folders.append("tensorboard")
    assert sorted(p.name for p in run.iterdir() if p.is_dir()) == folders
    st = load_state(run / "last")
    assert st["epoch"] == 1 and st["global_step"] == 3
    assert _log_epochs(run) == [1]
    model, _ = load_model(run / "best")
    assert model(torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_tumour_model_trains(phantoms, tmp_path):
    cfg = load_config(
        "densefcn_tumour",
        [
            "data.size=32",
            "data.margin=1",
            "model.levels=2",
            "model.growth=2",
            "model.first_filters=4",
            "model.layers_per_block=2",
            "train.epochs=1",
            "train.iterations_per_epoch=2",
        ],
    )
    result = train(cfg, phantoms, tmp_path / "tumour", fold=2, folds=3, device="cpu")
    s = result.final.summary
    assert s["liver_dice_per_case"] == pytest.approx(1.0)  # scored inside the reference liver
    assert 0.0 <= s["tumor_dice_per_case"] <= 1.0


def test_real_lits_tumour_model(lits_dir, tmp_path):
    """Tumour DenseFCN on the real LiTS-layout cases (tiny settings; needs ../shared/data)."""
    cfg = load_config(
        "densefcn_tumour",
        [
            "data.size=32",
            "model.levels=2",
            "model.growth=2",
            "model.first_filters=4",
            "model.layers_per_block=2",
            "train.epochs=1",
            "train.iterations_per_epoch=1",
        ],
    )
    result = train(
        cfg, lits_dir, tmp_path / "run", fold=0, folds=5, device="cpu", cache=tmp_path / "cache"
    )
    assert len(result.train_cases) == 4 and len(result.val_cases) == 1
    assert 0.0 <= result.final.summary["tumor_dice_per_case"] <= 1.0
    model, spec = load_model(result.checkpoint)
    assert spec.preprocess.crop_to_liver and model(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)
