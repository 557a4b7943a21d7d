"""``train.members``: a training run that trains several networks (seeds ``seed``, ``seed + 1``,
...) on the same split, whose model is their ensemble; through ``livseg cv`` and shipping.

Tiny configurations on a 3-case phantom, as in ``test_cv.py``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from tiny_configs import TINY_CV

from livseg.errors import OutputExistsError
from livseg.infer import Cascade
from livseg.infer.pretrained import ensemble_members
from livseg.phantom import write_phantom_dataset
from livseg.train.config import ConfigError, load_config
from livseg.train.cv import cross_validate, load_stage_configs
from livseg.train.trainer import member_config

REPO = Path(__file__).resolve().parents[1]
TINY = [
    *(s for s in TINY_CV if ":" not in s.split("=")[0]),
    "model.base_width=2",
    "model.depth=2",
    "train.members=2",
]


def _weights(folder: Path) -> dict[str, np.ndarray]:
    return load_file(str(folder / "model.safetensors"))


def _ship_module():
    spec = importlib.util.spec_from_file_location("ship", REPO / "scripts" / "ship_ensemble.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_member_configs_differ_only_in_seed():
    config = load_config("runet", ["train.members=3", "train.seed=5"])
    member = member_config(config, 2)
    assert (member.train.seed, member.train.members) == (7, 1)
    assert member.replace(train=config.train) == config  # nothing else changed
    with pytest.raises(ConfigError, match="train.members must be >= 1, got 0"):
        load_config("runet", ["train.members=0"])


@pytest.fixture(scope="module")
def members_cv(tmp_path_factory) -> tuple[Path, Path]:
    """Liver-only cross-validation, 2 folds, 2 members per fold model."""
    data = tmp_path_factory.mktemp("members_phantoms")
    write_phantom_dataset(data, cases=3, seed=7, size=48, slices=16)
    out = tmp_path_factory.mktemp("members") / "cv"
    cross_validate(load_stage_configs(["runet"], TINY), data, out, 2, device="cpu")
    return data, out


def test_each_fold_model_is_an_ensemble_of_seeded_members(members_cv):
    _, out = members_cv
    for k in range(2):
        fold = json.loads((out / f"fold{k}" / "fold.json").read_text())
        run = out / f"fold{k}" / "models" / "runet"
        ensemble = Path(fold["models"][0]["checkpoint"])
        assert ensemble == run / "ensemble"
        assert ensemble_members(ensemble) == [ensemble / "member0", ensemble / "member1"]
        for i in range(2):
            saved = json.loads((run / f"member{i}" / "config.json").read_text())["train"]
            assert (saved["seed"], saved["members"]) == (i, 1)
            with open(run / f"member{i}" / "val_cases.csv", newline="") as fh:
                assert sorted(r["case"] for r in csv.DictReader(fh)) == sorted(fold["val"])
            best = _weights(run / f"member{i}" / "best")
            copied = _weights(ensemble / f"member{i}")
            assert all(np.array_equal(best[n], copied[n]) for n in best)
            assert not (ensemble / f"member{i}" / "state.pt").exists()
        a, b = (_weights(ensemble / f"member{i}") for i in range(2))
        assert any(not np.array_equal(a[n], b[n]) for n in a)  # other seeds, other weights
        cascade = Cascade.load(liver_model=ensemble, paper=True, tumour=False, device="cpu")
        assert len(cascade.liver.models) == 2


def _drop_saved_option(out: Path, section: str, key: str) -> None:
    """Remove an option from the saved cross-validation, as a livseg without it wrote it."""
    doc = json.loads((out / "splits.json").read_text())
    del doc["configs"]["runet"][section][key]
    (out / "splits.json").write_text(json.dumps(doc))


def test_rerun_reuses_finished_members(members_cv):
    data, out = members_cv
    configs = load_stage_configs(["runet"], TINY)
    state = out / "fold0" / "models" / "runet" / "member1" / "last" / "state.pt"
    stamp = state.stat().st_mtime_ns
    (out / "fold0" / "fold.json").unlink()  # segment and score fold 0 again
    _drop_saved_option(out, "data", "liver_hu")  # an option added later, at its default
    cross_validate(configs, data, out, 2, device="cpu")
    assert state.stat().st_mtime_ns == stamp  # not retrained
    assert (out / "fold0" / "fold.json").is_file()
    _drop_saved_option(out, "train", "members")  # saved without it means 1 member: refused
    with pytest.raises(OutputExistsError, match="differs in configuration runet"):
        cross_validate(configs, data, out, 2, device="cpu")


def test_shipping_names_each_member_by_fold_and_seed(members_cv, tmp_path, monkeypatch):
    _, out = members_cv
    ship = _ship_module()
    monkeypatch.setattr(ship, "WEIGHTS", tmp_path)
    ship.install(out, {"runet": "runet_liver"}, dry_run=False)
    names = [p.name for p in ensemble_members(tmp_path / "runet_liver")]
    assert names == ["fold0-member0", "fold0-member1", "fold1-member0", "fold1-member1"]
    src = _weights(out / "fold1" / "models" / "runet" / "ensemble" / "member1")
    half = _weights(tmp_path / "runet_liver" / "fold1-member1")
    for n, w in src.items():
        if w.dtype == np.float32:
            assert half[n].dtype == np.float16
            np.testing.assert_array_equal(half[n], w.astype(np.float16))
