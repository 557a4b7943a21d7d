"""``livseg cv``: cross-validation of the whole cascade at the original resolution.

Tiny configurations (``--set``) on a 3-case phantom written to a temporary folder: every case is
held out by exactly one of 3 folds, segmented by that fold's cascade and scored there.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_configs import TINY_CV

from livseg.cli import main
from livseg.data.splits import load_splits
from livseg.errors import LivsegError, OutputExistsError
from livseg.io import read_volume
from livseg.metrics import evaluate_case
from livseg.phantom import write_phantom_dataset
from livseg.train.checkpoint import load_state
from livseg.train.config import ConfigError, load_config
from livseg.train.cv import cross_validate, load_stage_configs, stage_of

REPO = Path(__file__).resolve().parents[1]
CASES = ["volume-0", "volume-1", "volume-2"]
SHAPE = (16, 48, 48)  # the phantoms' (z, y, x); the models work at 32 x 32


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def _cv(data: Path, out: Path, *configs: str, extra: tuple[str, ...] = ()) -> int:
    return main(
        [
            "-q",
            "cv",
            *(configs or ("runet", "densefcn_tumour")),
            "--data",
            str(data),
            "--out",
            str(out),
            "--folds",
            "3",
            "--device",
            "cpu",
            *_sets(TINY_CV),
            *extra,
        ]
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    """3 phantom cases at 48 x 48 x 16, each with liver and at least one tumour (seed 7)."""
    folder = tmp_path_factory.mktemp("cv_phantoms")
    write_phantom_dataset(folder, cases=3, seed=7, size=48, slices=16)
    return folder


@pytest.fixture(scope="module")
def cv_run(phantoms, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cv") / "run"
    assert _cv(phantoms, out) == 0
    return out


def test_every_case_scored_once_by_a_fold_that_did_not_train_on_it(cv_run):
    splits = load_splits(cv_run / "splits.json")
    assert len(splits) == 3
    assert sorted(c for s in splits for c in s["val"]) == CASES  # a partition of the cases
    scored = []
    for k, split in enumerate(splits):
        cases = [
            r["case"] for r in _rows(cv_run / f"fold{k}" / "scores" / "runet" / "per_case.csv")
        ]
        assert cases == split["val"]
        assert not set(cases) & set(split["train"])
        fold = json.loads((cv_run / f"fold{k}" / "fold.json").read_text())
        assert [m["config"] for m in fold["models"]] == ["runet", "densefcn_tumour"]
        for m in fold["models"]:  # each model of the fold trained on the other cases only
            assert m["train_cases"] == split["train"]
            assert sorted(m["train_cases"] + cases) == CASES
            assert m["cpu_minutes"] >= 0 and m["wall_minutes"] >= 0
        scored += cases
    assert sorted(scored) == CASES
    assert [r["case"] for r in _rows(cv_run / "scores" / "runet" / "per_case.csv")] == CASES
    doc = json.loads((cv_run / "cv_summary.json").read_text())
    assert doc["format"] == "livseg-cv-2" and doc["folds"] == 3 and doc["seed"] == 0
    cascade = doc["cascades"]["runet"]
    assert cascade["tumour_config"] == "densefcn_tumour"
    fold_of = {c: k for k, s in enumerate(splits) for c in s["val"]}
    assert {r["case"]: r["fold"] for r in cascade["cases"]} == fold_of
    assert len(doc["models"]) == 6 and len(cascade["folds"]) == 3


def test_scores_are_evaluate_case_of_the_written_prediction(cv_run, phantoms):
    splits = load_splits(cv_run / "splits.json")
    fold_of = {c: k for k, s in enumerate(splits) for c in s["val"]}
    rows = _rows(cv_run / "scores" / "runet" / "per_case.csv")
    for row in rows:
        cid = row["case"]
        pred_file = Path(row["prediction"])
        assert pred_file.parent == cv_run / f"fold{fold_of[cid]}" / "predictions" / "runet"
        pred = read_volume(pred_file, kind="label")
        ref_file = phantoms / (cid.replace("volume", "segmentation") + ".nii.gz")
        assert Path(row["reference"]) == ref_file
        ref = read_volume(ref_file, kind="label")
        expected = evaluate_case(pred.array, ref.array, ref.spacing, case_id=cid).row()
        for key, value in expected.items():
            if isinstance(value, float) and math.isnan(value):
                assert row[key] == "nan", key
            elif key != "case":
                assert float(row[key]) == pytest.approx(float(value), rel=1e-12), key
    summary = json.loads((cv_run / "scores" / "runet" / "summary.json").read_text())
    dice = [float(r["liver_dice"]) for r in rows]
    assert summary["liver_dice_per_case"] == pytest.approx(sum(dice) / 3)
    inter = sum(int(r["liver_voxels_intersection"]) for r in rows)
    total = sum(int(r["liver_voxels_pred"]) + int(r["liver_voxels_ref"]) for r in rows)
    assert summary["liver_dice_global"] == pytest.approx(2 * inter / total)


def test_held_out_labels_keep_the_original_geometry(cv_run, phantoms):
    splits = load_splits(cv_run / "splits.json")
    for k, split in enumerate(splits):
        for cid in split["val"]:
            folder = cv_run / f"fold{k}" / "predictions" / "runet"
            pred = read_volume(folder / f"{cid}_seg.nii.gz", kind="label")
            image = read_volume(phantoms / f"{cid}.nii.gz", kind="image")
            assert pred.shape == image.shape == SHAPE  # not the 32 x 32 working size
            assert pred.geometry_mismatch(image) is None
            assert set(np.unique(pred.array)) <= {0, 1, 2}
            assert (folder / f"{cid}_measurements.json").is_file()


class _Killed(Exception):
    pass


def _kill_after_epoch_1(p) -> None:  # a TrainProgress callback
    if p.phase == "epoch" and p.epoch == 1:
        raise _Killed


def test_liver_only_cascade_resumes_a_killed_fold(phantoms, tmp_path):
    out = tmp_path / "liver"
    configs = load_stage_configs(["runet"], [*TINY_CV, "train.epochs=2", "train.val_every=1"])
    with pytest.raises(_Killed):  # killed after epoch 1 of fold 0's model
        cross_validate(configs, phantoms, out, 2, device="cpu", progress=_kill_after_epoch_1)
    run0 = out / "fold0" / "models" / "runet"
    assert load_state(run0 / "last")["epoch"] == 1
    assert not (out / "fold0" / "fold.json").exists()
    result = cross_validate(configs, phantoms, out, 2, device="cpu")

    doc = json.loads(result.summary_file.read_text())
    cascade = doc["cascades"]["runet"]
    assert cascade["tumour_config"] is None and cascade["scored"] == "liver only"
    assert [(m["fold"], m["stage"], m["resumed"]) for m in doc["models"]] == [
        (0, "liver", True),
        (1, "liver", False),
    ]
    assert [c.case_id for c in result.scores["runet"].cases] == CASES
    saved = json.loads((out / "splits.json").read_text())["configs"]["runet"]
    assert saved["train"]["val_every"] == 2  # no checkpoint chosen on a held-out case
    for k in range(2):
        run = out / f"fold{k}" / "models" / "runet"
        assert json.loads((run / "result.json").read_text())["best_epoch"] == 2
        log = _rows(run / "log.csv")
        assert [(r["epoch"], r["score"] != "") for r in log] == [("1", False), ("2", True)]
        for r in _rows(out / f"fold{k}" / "scores" / "runet" / "per_case.csv"):
            pred = read_volume(Path(r["prediction"]), kind="label").array
            assert set(np.unique(pred)) <= {0, 1}  # no tumour stage


def test_stage_configs_and_overrides():
    liver, tumour = load_stage_configs(
        ["runet", "densefcn_tumour"],
        ["data.size=32", "tumour:model.growth=2", "runet:train.epochs=3"],
    )
    assert (stage_of(liver), stage_of(tumour)) == ("liver", "tumour")
    assert liver.data.size == tumour.data.size == 32
    assert tumour.model.options["growth"] == 2
    assert liver.train.epochs == 3
    assert tumour.train.epochs == load_config("densefcn_tumour").train.epochs
    with pytest.raises(ConfigError, match="'lung' is neither a stage"):
        load_stage_configs(["runet"], ["lung:train.epochs=1"])
    with pytest.raises(ConfigError, match="train.target='tumour' with data.pipeline='crunet'"):
        stage_of(load_config("runet", ["train.target=tumour"]))


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["densefcn_tumour"], "no liver configuration"),
        (["runet", "densefcn_tumour", "pretrained_densefcn_tumour"], "several tumour"),
        (["runet", "runet"], "given twice"),
    ],
)
def test_refused_configuration_sets_write_nothing(names, message, phantoms, tmp_path):
    with pytest.raises(ConfigError, match=message):
        cross_validate([load_config(n) for n in names], phantoms, tmp_path / "cv", 3)
    assert not (tmp_path / "cv").exists()


def _card(summary: Path) -> str:
    script = REPO / "scripts" / "write_model_card.py"
    return subprocess.run(
        [sys.executable, str(script), str(summary)], capture_output=True, text=True, check=True
    ).stdout


def test_model_card_tables_from_both_summary_formats(cv_run):
    new = _card(cv_run / "cv_summary.json")
    dice = json.loads((cv_run / "cv_summary.json").read_text())["cascades"]["runet"]["summary"]
    assert new.splitlines()[0] == "| metric | `runet` |"
    assert f"| Liver Dice per case | {dice['liver_dice_per_case']:.3f} |" in new
    assert "| 0 | runet | liver |" in new  # training minutes of fold 0's liver model
    shipped = REPO / "src" / "livseg" / "weights" / "cv_summary.json"
    old = _card(shipped)
    cascades = json.loads(shipped.read_text())["cascades"]
    assert old.splitlines()[0] == "| metric | `--model crunet` | `--model densefcn` |"
    a, b = (cascades[n]["summary"]["liver_dice_per_case"] for n in ("crunet", "densefcn"))
    assert f"| Liver Dice per case | {a:.3f} | {b:.3f} |" in old


def test_folds_run_separately_pool_when_the_last_one_finishes(phantoms, tmp_path, capsys):
    out = tmp_path / "byfold"
    configs = load_stage_configs(["runet"], TINY_CV)
    with pytest.raises(LivsegError, match="--fold 2: the folds are 0-1"):
        cross_validate(configs, phantoms, out, 2, device="cpu", only_folds=[2])
    assert not out.exists()  # checked before anything is written
    assert cross_validate(configs, phantoms, out, 2, device="cpu", only_folds=[1]) is None
    assert (out / "fold1" / "fold.json").is_file() and not (out / "fold0").exists()
    assert not (out / "cv_summary.json").exists()  # fold 0 still to run
    state1 = out / "fold1" / "models" / "runet" / "last" / "state.pt"
    stamp = state1.stat().st_mtime_ns
    result = cross_validate(configs, phantoms, out, 2, device="cpu", only_folds=[0])
    assert state1.stat().st_mtime_ns == stamp  # fold 1 was not touched again
    assert [c.case_id for c in result.scores["runet"].cases] == CASES
    doc = json.loads(result.summary_file.read_text())
    assert sorted(m["fold"] for m in doc["models"]) == [0, 1]
    # the CLI: a fold outside 0..K-1 is one line and exit 2
    assert _cv(phantoms, tmp_path / "bad", "runet", extra=("--fold", "3")) == 2
    assert "--fold 3: the folds are 0-2" in capsys.readouterr().err


def test_rerun_skips_finished_folds_and_refuses_other_settings(cv_run, phantoms):
    """Last in the file: re-runs into the shared run folder (leaving it as it was)."""
    states = {k: cv_run / f"fold{k}" / "models" / "runet" / "last" / "state.pt" for k in range(3)}
    preds = {p: p.stat().st_mtime_ns for p in cv_run.glob("fold*/predictions/runet/*_seg.nii.gz")}
    before = {k: p.stat().st_mtime_ns for k, p in states.items()}
    timing = json.loads((cv_run / "fold2" / "fold.json").read_text())["models"]
    assert _cv(phantoms, cv_run) == 0  # finished: nothing retrained or re-segmented
    assert {k: p.stat().st_mtime_ns for k, p in states.items()} == before
    assert {p: p.stat().st_mtime_ns for p in preds} == preds
    # a fold stopped after training (no fold.json): segmented and scored again, not retrained
    (cv_run / "fold2" / "fold.json").unlink()
    assert _cv(phantoms, cv_run) == 0
    assert {k: p.stat().st_mtime_ns for k, p in states.items()} == before
    changed = [p.parent.parent.parent.name for p, t in preds.items() if p.stat().st_mtime_ns != t]
    assert changed == ["fold2"]
    assert json.loads((cv_run / "fold2" / "fold.json").read_text())["models"] == timing
    # other settings into the same folder: refused, nothing touched
    splits = (cv_run / "splits.json").read_text()
    assert _cv(phantoms, cv_run, extra=("--set", "train.epochs=2")) == 2
    assert (cv_run / "splits.json").read_text() == splits
    with pytest.raises(OutputExistsError, match="holds no cross-validation"):
        cross_validate(load_stage_configs(["runet"]), phantoms, cv_run / "fold0", 3)


def test_coarse_stage_and_training_only_cases(phantoms, tmp_path):
    """A coarse 3-D stage joins every fold's cascade; --extra cases train every fold, are
    never held out and never scored."""
    main_cases = tmp_path / "main"
    main_cases.mkdir()
    for name in ("volume-0", "volume-1"):
        for kind in ("volume", "segmentation"):
            src = phantoms / f"{kind}-{name.split('-')[1]}.nii.gz"
            (main_cases / src.name).symlink_to(src)
    extra = tmp_path / "extra.csv"
    extra.write_text(
        "image,label,case_id\n"
        f"{phantoms / 'volume-2.nii.gz'},{phantoms / 'segmentation-2.nii.gz'},spare\n"
    )
    out = tmp_path / "run"
    tiny_coarse = [
        "coarse:model.base_width=2",
        "coarse:model.depth=2",
        "coarse:train.patch=[8,16,16]",
        "coarse:data.spacing_mm=8.0",
    ]
    args = ["-q", "cv", "coarse_liver", "runet", "--data", str(main_cases), "--out", str(out)]
    args += ["--folds", "2", "--extra", str(extra), "--device", "cpu"]
    assert main([*args, *_sets(TINY_CV + tiny_coarse)]) == 0
    splits = load_splits(out / "splits.json")
    assert sorted(c for s in splits for c in s["val"]) == ["volume-0", "volume-1"]
    for k, split in enumerate(splits):
        assert "spare" in split["train"] and "spare" not in split["val"]
        fold = json.loads((out / f"fold{k}" / "fold.json").read_text())
        stages = {m["config"]: m["stage"] for m in fold["models"]}
        assert stages == {"coarse_liver": "coarse", "runet": "liver"}
        for m in fold["models"]:
            assert "spare" in m["train_cases"] and split["val"][0] not in m["train_cases"]
        pred = read_volume(
            out / f"fold{k}" / "predictions" / "runet" / f"{split['val'][0]}_seg.nii.gz"
        )
        image = read_volume(phantoms / f"volume-{split['val'][0].split('-')[1]}.nii.gz")
        assert pred.geometry_mismatch(image) is None
    rows = _rows(out / "scores" / "runet" / "per_case.csv")
    assert [r["case"] for r in rows] == ["volume-0", "volume-1"]
