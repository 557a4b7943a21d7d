"""Learning-rate schedules (torch.optim.lr_scheduler) and their resume state."""

from __future__ import annotations

import io
import itertools
import math
from pathlib import Path

import pytest
import torch
from test_train_loop import TINY, write_phantoms

from livseg.train.checkpoint import load_state
from livseg.train.config import ScheduleConfig, load_config
from livseg.train.schedules import SchedulePlan, build_scheduler, learning_rate
from livseg.train.trainer import train


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_phantoms(tmp_path_factory.mktemp("phantoms_schedules"))


def _rates(plan: SchedulePlan, steps: int) -> list[float]:
    """The optimiser's learning rate before each of ``steps`` iterations."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=plan.lr0)
    scheduler = build_scheduler(optimizer, plan)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize(
    ("name", "final_lr", "warmup"),
    list(itertools.product(["constant", "poly", "cosine", "step"], [0.0, 1e-6], [0, 2]))
    + [("exponential", 1e-10, 0), ("exponential", 1e-6, 2)],
)
def test_scheduler_follows_the_closed_form(name, final_lr, warmup):
    schedule = ScheduleConfig(
        name=name, final_lr=final_lr, power=0.9, step_epochs=3, gamma=0.5, warmup_epochs=warmup
    )
    plan = SchedulePlan(schedule, lr0=1e-4, total_steps=100, steps_per_epoch=10)
    rates = _rates(plan, 100)
    for k, lr in enumerate(rates):
        assert lr == pytest.approx(learning_rate(schedule, 1e-4, k, 100, 10), rel=1e-9, abs=1e-20)


def test_scheduler_hand_values():
    lr0 = 1e-4
    poly = _rates(SchedulePlan(ScheduleConfig(name="poly", power=2.0), lr0, 100, 10), 51)
    assert poly[50] == pytest.approx(lr0 * 0.25)  # (1 - 50/100) ** 2
    exp = _rates(SchedulePlan(ScheduleConfig(name="exponential", final_lr=1e-10), lr0, 100, 10), 51)
    assert exp[50] == pytest.approx(1e-7)  # sqrt(1e-4 * 1e-10)
    warm = _rates(SchedulePlan(ScheduleConfig(name="constant", warmup_epochs=1), lr0, 100, 10), 11)
    assert warm[0] == pytest.approx(lr0 * 0.01) and warm[5] == pytest.approx(lr0 * 0.505)
    assert warm[10] == pytest.approx(lr0)
    step = _rates(
        SchedulePlan(ScheduleConfig(name="step", step_epochs=3, gamma=0.5), lr0, 100, 10), 31
    )
    assert step[29] == pytest.approx(lr0) and step[30] == pytest.approx(lr0 / 2)


def test_scheduler_state_survives_a_weights_only_load():
    """What goes into state.pt loads with torch.load(weights_only=True) and continues exactly."""
    chained = ScheduleConfig(name="cosine", final_lr=0.0, warmup_epochs=1)  # ChainedScheduler
    lambda_ = ScheduleConfig(name="poly", final_lr=1e-6)  # LambdaLR
    for schedule in (chained, lambda_):
        plan = SchedulePlan(schedule, 1e-3, 50, 5)
        rates = _rates(plan, 50)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        scheduler = build_scheduler(optimizer, plan)
        for _ in range(7):
            optimizer.step()
            scheduler.step()
        buf = io.BytesIO()
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        torch.save({**state, "plan": plan.to_dict()}, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=True)
        assert loaded["plan"] == plan.to_dict()
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        scheduler = build_scheduler(optimizer, plan)
        optimizer.load_state_dict(loaded["optimizer"])
        scheduler.load_state_dict(loaded["scheduler"])
        resumed = []
        for _ in range(7, 50):
            resumed.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert resumed == rates[7:]


class _Interrupt(Exception):
    pass


def _lr_log(events: list) -> list[tuple[int, int, float]]:
    return [(e.epoch, e.step, e.lr) for e in events if e.phase == "train"]


def test_resumed_run_continues_with_the_uninterrupted_learning_rates(phantoms, tmp_path):
    cfg = load_config("runet", TINY + ["train.epochs=3", "schedule.power=0.9"])
    run = dict(fold=0, folds=3, device="cpu", cache=tmp_path / "cache")
    ref_events: list = []
    train(cfg, phantoms, tmp_path / "ref", progress=ref_events.append, **run)
    ref = _lr_log(ref_events)
    assert [(e, s) for e, s, _ in ref] == [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2)]
    lr0 = cfg.optimizer.lr  # poly to 0 over 6 iterations: lr0 * (1 - k / 6) ** 0.9
    assert [lr for _, _, lr in ref] == pytest.approx([lr0 * (1 - k / 6) ** 0.9 for k in range(6)])

    def stop_in_epoch_2(event) -> None:
        if event.phase == "train" and event.epoch == 2:
            raise _Interrupt  # epoch 1 is checkpointed, epoch 2 is lost

    with pytest.raises(_Interrupt):
        train(cfg, phantoms, tmp_path / "cut", progress=stop_in_epoch_2, **run)
    assert load_state(tmp_path / "cut" / "last")["epoch"] == 1
    events: list = []
    train(cfg, phantoms, tmp_path / "cut", resume=True, progress=events.append, **run)
    assert _lr_log(events) == ref[2:]  # exactly the same learning rates
    st = load_state(tmp_path / "cut" / "last")
    assert st["epoch"] == 3 and st["schedule_plan"]["total_steps"] == 6
    assert st["scheduler"]["last_epoch"] == 6


def test_longer_resumed_run_replans_the_schedule(phantoms, tmp_path):
    """Raising train.epochs on resume: the schedule as if the run had been planned longer."""
    run = dict(fold=0, folds=3, device="cpu", cache=tmp_path / "cache")
    short = load_config("runet", TINY + ["schedule.name=exponential", "schedule.final_lr=1e-8"])
    train(short, phantoms, tmp_path / "run", **run)
    longer = load_config(
        "runet",
        TINY + ["train.epochs=2", "schedule.name=exponential", "schedule.final_lr=1e-8"],
    )
    events: list = []
    train(longer, phantoms, tmp_path / "run", resume=True, progress=events.append, **run)
    lr0 = longer.optimizer.lr  # 4 iterations now: lr0 * (1e-8 / lr0) ** (k / 4), k = 2, 3
    expected = [lr0 * (1e-8 / lr0) ** (k / 4) for k in (2, 3)]
    assert [lr for _, _, lr in _lr_log(events)] == pytest.approx(expected, rel=1e-9)
    assert not math.isclose(expected[0], lr0 * (1e-8 / lr0) ** (2 / 2))  # not the old plan's
