"""Bootstrap intervals by case, the paired comparison of two predictions, and their outputs."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from livseg.cli import main
from livseg.metrics import (
    INTERVAL_KEYS,
    compare_results,
    evaluate_cases,
    mean_interval,
    paired_difference_interval,
)
from livseg.metrics.bootstrap import resample_means


def test_interval_of_constant_values_is_the_value():
    ci = mean_interval([0.8] * 7)
    assert (ci.mean, ci.low, ci.high) == pytest.approx((0.8, 0.8, 0.8)) and ci.n == 7


def test_interval_bounds_from_the_exact_resampling_distribution():
    # Values (0, 0, 3): a resample mean is k (k = number of 3s drawn, 0..3) with probability
    # P(k=0) = (2/3)^3 = 0.296 > 0.025 and P(k=3) = 1/27 = 0.037 > 0.025, so the 2.5 % quantile
    # is 0 and the 97.5 % quantile is 3.
    ci = mean_interval([0.0, 0.0, 3.0])
    assert ci.mean == pytest.approx(1.0) and ci.low == 0.0 and ci.high == 3.0
    # Values (0, 1): means 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4; 80 % interval = [0, 1],
    # 40 % interval = [1/2, 1/2] (the 30 % and 70 % quantiles both fall on 1/2).
    assert (
        mean_interval([0, 1], confidence=0.8).low,
        mean_interval([0, 1], confidence=0.8).high,
    ) == (
        0.0,
        1.0,
    )
    ci40 = mean_interval([0, 1], confidence=0.4)
    assert (ci40.low, ci40.high) == (0.5, 0.5)


def test_resampling_is_seeded_and_by_case():
    values = np.array([0.1, 0.5, 0.9, 0.7, 0.3])
    a = resample_means(values, 1000, seed=3)
    assert np.array_equal(a, resample_means(values, 1000, seed=3))
    assert not np.array_equal(a, resample_means(values, 1000, seed=4))
    # The same draws as numpy's generator gives: n indices per resample, mean of those cases.
    idx = np.random.default_rng(3).integers(0, 5, size=(1000, 5))
    assert np.allclose(a, values[idx].mean(axis=1))
    assert mean_interval(values, seed=3) == mean_interval(values, seed=3)


def test_nan_left_out_single_and_empty():
    ci = mean_interval([2.0, math.nan, 4.0])
    assert ci.n == 2 and ci.mean == 3.0 and 2.0 <= ci.low <= ci.high <= 4.0
    one = mean_interval([math.nan, 5.0])
    assert (one.mean, one.low, one.high, one.n) == (5.0, 5.0, 5.0, 1)
    none = mean_interval([math.nan])
    assert none.n == 0 and math.isnan(none.mean)
    with pytest.raises(ValueError):
        mean_interval([1.0], confidence=1.0)


def test_paired_difference_resamples_cases_together():
    a = np.array([0.5, 0.9, 0.1, 0.7])
    # b = a + 0.1 in every case: every resample's mean difference is exactly 0.1, although the
    # values themselves vary a lot (an unpaired interval would be wide).
    d = paired_difference_interval(a, a + 0.1)
    assert (d.mean, d.low, d.high) == pytest.approx((0.1, 0.1, 0.1))
    assert paired_difference_interval([1.0, math.nan], [2.0, 5.0]).n == 1
    with pytest.raises(ValueError):
        paired_difference_interval([1.0], [1.0, 2.0])


def _cube_case(shift: int):
    ref = np.zeros((10, 12, 12), np.uint8)
    ref[2:8, 2:10, 2:10] = 1
    ref[4:6, 4:7, 4:7] = 2
    pred = np.roll(ref, shift, axis=2)
    return pred, ref, (1.0, 1.0, 1.0)


def test_evaluation_intervals_use_the_per_case_values():
    res = evaluate_cases([_cube_case(0), _cube_case(1), _cube_case(2)], case_ids=["x", "y", "z"])
    ci = res.intervals()
    assert set(ci) == set(INTERVAL_KEYS)
    dice = [c.liver.dice for c in res.cases]
    assert ci["liver_dice_per_case"].mean == pytest.approx(res.summary["liver_dice_per_case"])
    assert min(dice) <= ci["liver_dice_per_case"].low <= ci["liver_dice_per_case"].high <= 1.0
    assert ci["tumor_assd"].n == 3 and ci["tumor_assd"].mean == pytest.approx(
        res.summary["tumor_assd"]
    )


def test_compare_results_differences_and_changed_most():
    a = evaluate_cases([_cube_case(0), _cube_case(1), _cube_case(2)], case_ids=["x", "y", "z"])
    b = evaluate_cases([_cube_case(0), _cube_case(0), _cube_case(0)], case_ids=["x", "y", "z"])
    comp = compare_results(a, b)
    liver = next(m for m in comp.metrics if m.key == "liver_dice_per_case")
    diffs = [1.0 - c.liver.dice for c in a.cases]  # b is perfect everywhere
    assert liver.difference.mean == pytest.approx(np.mean(diffs))
    assert [c[0] for c in liver.changed_most] == ["z", "y", "x"]  # largest |b - a| first
    assert liver.changed_most[0][3] == pytest.approx(diffs[2])
    with pytest.raises(ValueError, match="different cases"):
        compare_results(a, evaluate_cases([_cube_case(0)], case_ids=["x"]))


def test_cli_two_predictions(tmp_path, capsys):
    from livseg.io import write_volume
    from livseg.volume import Volume

    ref_dir, a_dir, b_dir, out = (tmp_path / n for n in ("ref", "a", "b", "out"))
    for k, shift in enumerate((1, 2, 3)):
        pred, ref, sp = _cube_case(shift)
        write_volume(Volume.label(ref, sp), ref_dir / f"case{k}.nii.gz")
        write_volume(Volume.label(pred, sp), a_dir / f"case{k}.nii.gz")
        write_volume(Volume.label(ref, sp), b_dir / f"case{k}.nii.gz")  # b: perfect
    argv = ["evaluate", "--pred", str(a_dir), "--pred", str(b_dir), "--ref", str(ref_dir)]
    assert main(argv + ["--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "changed most, liver_dice_per_case" in printed and "case2" in printed
    doc = json.loads((out / "comparison.json").read_text())
    liver = doc["metrics"]["liver_dice_per_case"]
    assert liver["mean_b"] == 1.0 and liver["difference"]["mean"] > 0
    assert liver["changed_most"][0]["case"] == "case2"  # the largest shift changed most
    with open(out / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["case0", "case1", "case2"]
    assert float(rows[0]["liver_dice_per_case_b"]) == 1.0
    assert float(rows[0]["liver_dice_per_case_diff"]) == pytest.approx(
        1.0 - float(rows[0]["liver_dice_per_case_a"])
    )
    summary_a = json.loads((out / "a" / "summary.json").read_text())
    assert summary_a["confidence_intervals"]["seed"] == 0
    assert (out / "b" / "per_case.csv").exists()
    assert main(argv + ["--out", str(out)]) == 2  # outputs exist, no --overwrite
    assert main(argv + ["--pred", str(b_dir), "--out", str(tmp_path / "o3")]) == 2
