"""Bad inputs and unwritable outputs: one clear line, exit code 2, nothing written, no inference.

Every case runs the real command in-process (``livseg.cli.main``) on tiny synthetic files. The
checks of ``segment`` all happen before the first inference (the cascade's ``segment`` is
replaced by a function that fails the test if it is reached), except the write failures at the
end (disk full, permission denied at rename), which must still leave nothing behind.
"""

from __future__ import annotations

import errno
import gzip
import os
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_utils import write_ct_series, write_ct_slice
from test_infer import make_checkpoint, model_args, synthetic_ct

from livseg.cli import main
from livseg.io import write_volume
from livseg.volume import Volume

SPACING = (2.5, 0.7, 0.9)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_ckpt")
    return {k: make_checkpoint(root / k, k) for k in ("densefcn_liver", "tumour")}


@pytest.fixture()
def no_inference(monkeypatch):
    """Fail the test if any CT reaches the networks."""
    import livseg.infer.cascade as cascade

    def refuse(self, *a, **k):
        raise AssertionError("inference started although an input or output was bad")

    monkeypatch.setattr(cascade.Cascade, "segment", refuse)


def _ct(tmp: Path, name: str = "ct.nii.gz", hu: np.ndarray | None = None) -> Path:
    if hu is None:
        hu, _ = synthetic_ct((6, 40, 48))
    return write_volume(Volume.image(hu, SPACING), tmp / "in" / name)


def _nifti(tmp: Path, name: str, data: np.ndarray) -> Path:
    path = tmp / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([0.9, 0.7, 2.5, 1.0])), str(path))
    return path


def _labels(tmp: Path, name: str, shape=(6, 40, 48), spacing=SPACING, direction=None) -> Path:
    lab = np.zeros(shape, np.uint8)
    lab[2:4, 10:20, 10:20] = 1
    return write_volume(Volume.label(lab, spacing, direction=direction), tmp / "ref" / name)


# --- segment: each builder returns (argv after "segment", words the error must contain) -------


def _missing(tmp):
    return [str(tmp / "in" / "nope.nii.gz")], ["nope.nii.gz", "no such file"]


def _empty_file(tmp):
    p = tmp / "in" / "empty.nii.gz"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"")
    return [str(p)], ["empty.nii.gz"]


def _truncated(tmp):
    good = _ct(tmp, "full.nii.gz")
    data = gzip.decompress(good.read_bytes())
    p = tmp / "in" / "cut.nii.gz"
    p.write_bytes(gzip.compress(data[: len(data) // 2]))
    return [str(p)], ["cut.nii.gz", "voxel data"]


def _not_nifti(tmp):
    p = tmp / "in" / "text.nii.gz"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"this is not a NIfTI file at all")
    return [str(p)], ["text.nii.gz", "NIfTI"]


def _wrong_extension(tmp):
    p = tmp / "in" / "photo.png"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"\x89PNG\r\n\x1a\n")
    return [str(p)], ["photo.png", "unsupported file type"]


def _two_d(tmp):
    return [str(_nifti(tmp, "flat.nii.gz", np.zeros((48, 40), np.int16)))], ["flat.nii.gz", "2-D"]


def _four_d(tmp):
    data = np.zeros((48, 40, 6, 2), np.int16)
    return [str(_nifti(tmp, "multi.nii.gz", data))], ["multi.nii.gz", "4-D"]


def _label_as_ct(tmp):
    path = _labels(tmp, "segmentation-1.nii.gz")
    return [str(path)], ["segmentation-1.nii.gz", "Hounsfield"]


def _mr_like(tmp):
    hu = np.random.default_rng(0).uniform(0, 1200, (6, 40, 48)).astype(np.float32)
    return [str(_ct(tmp, "t1.nii.gz", hu))], ["t1.nii.gz", "Hounsfield"]


def _eight_bit(tmp):
    hu = np.random.default_rng(0).integers(0, 256, (6, 40, 48)).astype(np.float32)
    return [str(_ct(tmp, "export.nii.gz", hu))], ["export.nii.gz", "8-bit"]


def _all_nan(tmp):
    hu = np.full((6, 40, 48), np.nan, np.float32)
    return [str(_ct(tmp, "nan.nii.gz", hu))], ["nan.nii.gz", "no finite voxel"]


def _mostly_nan(tmp):
    hu, _ = synthetic_ct((6, 40, 48))
    hu[:4] = np.nan  # 4 of 6 slices
    return [str(_ct(tmp, "holes.nii.gz", hu))], ["holes.nii.gz", "67% of the voxels are NaN"]


def _infinite(tmp):
    hu, _ = synthetic_ct((6, 40, 48))
    hu[:5] = np.inf
    return [str(_ct(tmp, "inf.nii.gz", hu))], ["inf.nii.gz", "NaN or infinite"]


def _constant(tmp):
    hu = np.full((6, 40, 48), -1000.0, np.float32)
    return [str(_ct(tmp, "flat.nii.gz", hu))], ["flat.nii.gz", "constant", "-1000"]


def _dicom_two_series(tmp):
    write_ct_series(tmp / "in" / "study" / "a", series_uid="1.2.3.1")
    write_ct_series(tmp / "in" / "study" / "b", series_uid="1.2.3.2")
    return [str(tmp / "in" / "study")], ["study", "1.2.3.1", "1.2.3.2", "--series"]


def _dicom_unknown_series(tmp):
    write_ct_series(tmp / "in" / "s", series_uid="1.2.3.1")
    return [str(tmp / "in" / "s"), "--series", "9.9.9"], ["9.9.9", "no series"]


def _dicom_empty_folder(tmp):
    (tmp / "in" / "empty").mkdir(parents=True)
    return [str(tmp / "in" / "empty")], ["empty"]


def _dicom_no_dicom(tmp):
    (tmp / "in" / "docs").mkdir(parents=True)
    (tmp / "in" / "docs" / "readme.txt").write_text("hello")
    return [str(tmp / "in" / "docs")], ["docs", "DICOM"]


def _dicom_single_file(tmp):
    path = write_ct_slice(tmp / "in" / "one.dcm", np.zeros((16, 12)), (0.0, 0.0, 0.0))
    return [str(path)], ["one.dcm", "pass the folder"]


def _dicom_tilted(tmp):
    tilt = np.radians(10.0)
    pos = [(0.0, 0.0, 5.0 * k) for k in range(6)]
    write_ct_series(tmp / "in" / "tilt", positions=pos, col=(0.0, np.cos(tilt), np.sin(tilt)))
    return [str(tmp / "in" / "tilt")], ["tilt", "gantry tilt"]


def _dicom_missing_slices(tmp):
    truth = write_ct_series(tmp / "in" / "gap", n_slices=8)
    for k in (3, 4, 5):
        truth["files"][k].unlink()
    return [str(tmp / "in" / "gap")], ["gap", "irregular slice spacing"]


def _second_input_bad(tmp):
    good = _ct(tmp, "good.nii.gz")
    bad = tmp / "in" / "bad.nii.gz"
    bad.write_bytes(b"garbage")
    return [str(good), str(bad)], ["bad.nii.gz"]


def _second_input_nan(tmp):
    good = _ct(tmp, "good.nii.gz")
    nan = _ct(tmp, "nan.nii.gz", np.full((6, 40, 48), np.nan, np.float32))
    return [str(good), str(nan)], ["nan.nii.gz", "no finite voxel"]


def _two_bad_inputs(tmp):
    """The checks read inputs in parallel; the error is the first bad input's in input order,
    though the third (a few bytes of garbage) fails long before the second (a larger CT, all
    NaN) is read."""
    good = _ct(tmp, "good.nii.gz")
    nan = _ct(tmp, "nan.nii.gz", np.full((40, 200, 200), np.nan, np.float32))
    bad = tmp / "in" / "bad.nii.gz"
    bad.write_bytes(b"garbage")
    return [str(good), str(nan), str(bad)], ["nan.nii.gz", "no finite voxel"]


def _ref_shape_mismatch(tmp):
    ref = _labels(tmp, "ref.nii.gz", shape=(5, 40, 48))
    return [str(_ct(tmp)), "--ref", str(ref)], ["ref.nii.gz", "do not match the input geometry"]


def _ref_spacing_mismatch(tmp):
    ref = _labels(tmp, "ref.nii.gz", spacing=(3.0, 0.7, 0.9))
    return [str(_ct(tmp)), "--ref", str(ref)], ["ref.nii.gz", "spacing"]


def _ref_not_labels(tmp):
    ref = _ct(tmp, "ref_seg.nii.gz", np.full((6, 40, 48), 0.5, np.float32))
    return [str(_ct(tmp)), "--ref", str(ref)], ["ref_seg.nii.gz", "non-integer"]


def _ref_count(tmp):
    ref = _labels(tmp, "ref.nii.gz")
    return [str(_ct(tmp, "a.nii.gz")), str(_ct(tmp, "b.nii.gz")), "--ref", str(ref)], [
        "--ref given 1 time(s) for 2 input(s)"
    ]


def _same_names(tmp):
    a = _ct(tmp, "x/case.nii.gz")
    b = _ct(tmp, "y/case.nii.gz")
    return [str(a), str(b)], ["case", "share the output name"]


def _dicom_seg_for_nifti(tmp):
    return [str(_ct(tmp)), "--dicom-seg"], ["ct.nii.gz", "DICOM series folder"]


def _batch_size_zero(tmp):
    return [str(_ct(tmp)), "--batch-size", "0"], ["batch size must be >= 1"]


SEGMENT_CASES: dict[str, Callable] = {
    f.__name__.strip("_"): f
    for f in (
        _missing,
        _empty_file,
        _truncated,
        _not_nifti,
        _wrong_extension,
        _two_d,
        _four_d,
        _label_as_ct,
        _mr_like,
        _eight_bit,
        _all_nan,
        _mostly_nan,
        _infinite,
        _constant,
        _dicom_two_series,
        _dicom_unknown_series,
        _dicom_empty_folder,
        _dicom_no_dicom,
        _dicom_single_file,
        _dicom_tilted,
        _dicom_missing_slices,
        _second_input_bad,
        _second_input_nan,
        _two_bad_inputs,
        _ref_shape_mismatch,
        _ref_spacing_mismatch,
        _ref_not_labels,
        _ref_count,
        _same_names,
        _dicom_seg_for_nifti,
        _batch_size_zero,
    )
}


def _one_error_line(err: str, command: str) -> str:
    """The one error message (its line, and the indented lines listing choices, if any)."""
    assert "Traceback" not in err
    lines = err.splitlines()
    starts = [k for k, ln in enumerate(lines) if ln.startswith(f"livseg {command}: error:")]
    assert len(starts) == 1, err
    k = starts[0]
    listing = [ln for ln in lines[k + 1 :] if ln.startswith("  ")]
    return " ".join([lines[k], *listing])


def _nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


@pytest.mark.parametrize("case", sorted(SEGMENT_CASES))
def test_segment_refuses_bad_input_before_inference(case, tmp_path, ckpts, capsys, no_inference):
    args, words = SEGMENT_CASES[case](tmp_path)
    out = tmp_path / "out"
    assert main(["segment", *args, "-o", str(out), *model_args(ckpts)]) == 2
    line = _one_error_line(capsys.readouterr().err, "segment")
    for w in words:
        assert w in line, (w, line)
    assert case != "two_bad_inputs" or "bad.nii.gz" not in line, line
    _nothing_written(out)


# --- segment: outputs that cannot be written -----------------------------------------------------


def test_existing_output_refused_for_the_whole_batch(tmp_path, ckpts, capsys, no_inference):
    a, b = _ct(tmp_path, "a.nii.gz"), _ct(tmp_path, "b.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "b_seg.nii.gz").write_bytes(b"old")
    assert main(["segment", str(a), str(b), "-o", str(out), *model_args(ckpts)]) == 2
    line = _one_error_line(capsys.readouterr().err, "segment")
    assert "b_seg.nii.gz" in line and "--overwrite" in line
    assert sorted(p.name for p in out.iterdir()) == ["b_seg.nii.gz"]  # a's outputs not written
    assert (out / "b_seg.nii.gz").read_bytes() == b"old"


def test_output_folder_is_a_file(tmp_path, ckpts, capsys, no_inference):
    out = tmp_path / "out"
    out.write_text("a file")
    assert main(["segment", str(_ct(tmp_path)), "-o", str(out), *model_args(ckpts)]) == 2
    line = _one_error_line(capsys.readouterr().err, "segment")
    assert str(out) in line and "not a folder" in line
    assert out.read_text() == "a file"


def test_output_folder_below_a_file(tmp_path, ckpts, capsys, no_inference):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = blocker / "results"
    assert main(["segment", str(_ct(tmp_path)), "-o", str(out), *model_args(ckpts)]) == 2
    line = _one_error_line(capsys.readouterr().err, "segment")
    assert str(blocker) in line and "is a file" in line


def test_output_folder_not_writable(tmp_path, ckpts, capsys, no_inference, monkeypatch):
    """Permission denied, found before any work (os.access is faked: tests may run as root)."""
    out = tmp_path / "locked" / "results"
    out.parent.mkdir()
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **k: Path(p) != out.parent and real(p, mode, **k)
    )
    assert main(["segment", str(_ct(tmp_path)), "-o", str(out), *model_args(ckpts)]) == 2
    line = _one_error_line(capsys.readouterr().err, "segment")
    assert str(out.parent) in line and "permission denied" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.ENOSPC, "disk full"), (errno.EACCES, "permission denied"), (errno.EROFS, "read-only")],
)
def test_write_failure_after_inference_leaves_nothing(
    tmp_path, ckpts, capsys, monkeypatch, code, words
):
    """A failure while writing (found only then) is one line naming the file; the case's
    temporary files are removed and no output appears."""
    import livseg.io.atomic as atomic

    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("_report.html"):
            raise OSError(code, os.strerror(code), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    out = tmp_path / "out"
    assert main(["segment", str(_ct(tmp_path)), "-o", str(out), *model_args(ckpts)]) == 2
    line = _one_error_line(capsys.readouterr().err, "segment")
    assert "ct_report.html" in line and words in line
    # the report is renamed first (outputs are committed in reverse order): nothing appears,
    # and every temporary file is removed
    _nothing_written(out)


def test_disk_full_while_writing_text(tmp_path, monkeypatch):
    from livseg.errors import OutputError
    from livseg.io.atomic import write_text_atomic

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OutputError, match=r"out\.json: cannot write: no space left .*disk full"):
        write_text_atomic(tmp_path / "out.json", "{}")
    assert list(tmp_path.iterdir()) == []


# --- evaluate -----------------------------------------------------------------------------------


def _eval_folders(tmp: Path, pred_kw: dict | None = None, value: int = 1) -> tuple[Path, Path]:
    ref = _labels(tmp, "segmentation-1.nii.gz").parent
    pred_dir = tmp / "pred"
    pred_dir.mkdir()
    lab = np.zeros((6, 40, 48), np.uint8)
    lab[2:4, 10:20, 10:20] = value
    kw = {"spacing": SPACING, **(pred_kw or {})}
    write_volume(Volume.label(lab, **kw), pred_dir / "volume-1_seg.nii.gz")
    return pred_dir, ref


def _run_evaluate(tmp, capsys, pred, ref, out=None) -> str:
    out = out or tmp / "scores"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(out)]) == 2
    return _one_error_line(capsys.readouterr().err, "evaluate")


def test_evaluate_out_is_an_existing_file(tmp_path, capsys):
    pred, ref = _eval_folders(tmp_path)
    out = tmp_path / "scores.json"
    out.write_text("keep me")
    line = _run_evaluate(tmp_path, capsys, pred, ref, out)
    assert str(out) in line and "is a file" in line
    assert out.read_text() == "keep me"


def test_evaluate_outputs_exist(tmp_path, capsys):
    pred, ref = _eval_folders(tmp_path)
    out = tmp_path / "scores"
    out.mkdir()
    (out / "summary.json").write_text("old")
    line = _run_evaluate(tmp_path, capsys, pred, ref, out)
    assert "summary.json" in line and "--overwrite" in line
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


@pytest.mark.parametrize(
    ("pred_kw", "value", "words"),
    [
        ({"spacing": (5.0, 0.7, 0.9)}, 1, "spacing"),
        ({"direction": np.diag([1.0, -1.0, 1.0])}, 1, "orientation"),
        ({}, 3, "label value 3"),
    ],
    ids=["spacing", "direction", "label-value"],
)
def test_evaluate_geometry_and_values(tmp_path, capsys, pred_kw, value, words):
    pred, ref = _eval_folders(tmp_path, pred_kw, value)
    line = _run_evaluate(tmp_path, capsys, pred, ref)
    assert words in line and "volume-1_seg.nii.gz" in line
    _nothing_written(tmp_path / "scores")


def test_evaluate_shape_mismatch(tmp_path, capsys):
    ref = _labels(tmp_path, "segmentation-1.nii.gz").parent
    pred = tmp_path / "pred"
    write_volume(Volume.label(np.zeros((5, 40, 48), np.uint8), SPACING), pred / "volume-1_seg.nii")
    line = _run_evaluate(tmp_path, capsys, pred, ref)
    assert "shape" in line and "volume-1_seg.nii" in line
    _nothing_written(tmp_path / "scores")


def test_evaluate_missing_prediction(tmp_path, capsys):
    pred, ref = _eval_folders(tmp_path)
    _labels(tmp_path, "segmentation-2.nii.gz")
    line = _run_evaluate(tmp_path, capsys, pred, ref)
    assert "segmentation-2.nii.gz" in line and "no prediction" in line
    _nothing_written(tmp_path / "scores")


def test_evaluate_missing_folder(tmp_path, capsys):
    _, ref = _eval_folders(tmp_path)
    line = _run_evaluate(tmp_path, capsys, tmp_path / "nowhere", ref)
    assert "nowhere" in line and "not a folder" in line
    _nothing_written(tmp_path / "scores")


def test_info_missing_file(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.nii.gz")]) == 2
    assert "nope.nii.gz" in _one_error_line(capsys.readouterr().err, "info")
