"""``livseg segment`` and ``livseg demo`` end to end, in-process, with tiny random checkpoints.

The networks' outputs are meaningless; what is checked is the plumbing: outputs, exact input
geometry (NIfTI and DICOM inputs, real cases included), refusal to overwrite, clear one-line
errors with nothing written, and the demo's missing-weights message.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_infer import make_checkpoint, synthetic_ct

from livseg.cli import main
from livseg.io import read_volume, write_volume
from livseg.volume import Volume


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_ckpt")
    return {k: make_checkpoint(root / k, k) for k in ("crunet", "densefcn_liver", "tumour")}


def _models(ckpts, liver="crunet") -> list[str]:
    return [
        "--liver-model",
        str(ckpts[liver]),
        "--tumour-model",
        str(ckpts["tumour"]),
        "--device",
        "cpu",
    ]


@pytest.fixture()
def ras_ct(tmp_path) -> Path:
    hu, _ = synthetic_ct((6, 40, 48))
    vol = Volume.image(hu, (2.5, 0.7, 0.9), (12.0, -30.0, 40.0), np.diag([1.0, -1.0, -1.0]))
    return write_volume(vol, tmp_path / "in" / "case_7.nii.gz")


def test_segment_nifti_outputs_and_geometry(tmp_path, ras_ct, ckpts, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(ras_ct), "-o", str(out), *_models(ckpts, "densefcn_liver")]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "case_7_lesions.csv",
        "case_7_measurements.json",
        "case_7_overlay.png",
        "case_7_report.html",
        "case_7_seg.nii.gz",
    ]
    page = (out / "case_7_report.html").read_text()
    assert "data:image/png;base64," in page and "Liver volume (ml)" in page
    img = read_volume(ras_ct)
    lab = read_volume(out / "case_7_seg.nii.gz", kind="label")
    assert lab.geometry_mismatch(img) is None
    assert lab.array.dtype == np.uint8 and set(np.unique(lab.array)) <= {0, 1, 2}
    meta = json.loads((out / "case_7_measurements.json").read_text())
    assert set(meta["extra"]["timings_s"]) >= {
        "read",
        "reorient",
        "liver",
        "postprocess",
        "tumour",
        "write",
        "report",
    }
    assert isinstance(meta["liver_found"], bool)
    assert "case_7" in capsys.readouterr().out
    # no overwrite without --overwrite: error, files untouched
    before = (out / "case_7_seg.nii.gz").stat().st_mtime_ns
    assert main(["segment", str(ras_ct), "-o", str(out), *_models(ckpts)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "case_7_seg.nii.gz").stat().st_mtime_ns == before
    assert (
        main(
            ["segment", str(ras_ct), "-o", str(out), "--overwrite", "--no-overlay", *_models(ckpts)]
        )
        == 0
    )


def test_segment_bad_inputs_write_nothing(tmp_path, ras_ct, ckpts, capsys):
    out = tmp_path / "out"
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    assert main(["segment", str(bad), "-o", str(out), *_models(ckpts)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln.lower()]
    assert len(err) == 1 and err[0].startswith("livseg segment: error:")
    assert "broken.nii.gz" in err[0]
    # --dicom-seg needs a DICOM input
    assert main(["segment", str(ras_ct), "-o", str(out), "--dicom-seg", *_models(ckpts)]) == 2
    assert "DICOM" in capsys.readouterr().err
    # an 8-bit image is not CT
    u8 = write_volume(
        Volume.image(np.random.default_rng(0).integers(0, 256, (4, 32, 32)), (1, 1, 1)),
        tmp_path / "photo.nii.gz",
    )
    assert main(["segment", str(u8), "-o", str(out), *_models(ckpts)]) == 2
    assert "Hounsfield" in capsys.readouterr().err
    # a missing input
    assert main(["segment", str(tmp_path / "nope.nii.gz"), "-o", str(out), *_models(ckpts)]) == 2
    assert not out.exists() or not any(out.iterdir())


def test_segment_reference_overlay_and_ref_count(tmp_path, ras_ct, ckpts):
    ref = write_volume(
        read_volume(ras_ct).with_array(np.zeros(read_volume(ras_ct).shape, np.uint8), kind="label"),
        tmp_path / "ref_seg.nii.gz",
    )
    out = tmp_path / "out"
    assert main(["segment", str(ras_ct), "-o", str(out), "--ref", str(ref), *_models(ckpts)]) == 0
    assert (out / "case_7_overlay.png").exists()
    assert (
        main(
            [
                "segment",
                str(ras_ct),
                "-o",
                str(tmp_path / "o2"),
                "--ref",
                str(ref),
                "--ref",
                str(ref),
                *_models(ckpts),
            ]
        )
        == 2
    )


def test_demo_without_weights_names_them(tmp_path, monkeypatch, capsys):
    import livseg.infer.pretrained as pre

    monkeypatch.setattr(pre, "WEIGHTS_DIR", tmp_path / "weights")
    assert main(["demo", "--out", str(tmp_path / "demo"), "--paper"]) == 2
    err = capsys.readouterr().err
    assert "crunet_liver" in err and "densefcn_tumour" in err
    assert not (tmp_path / "demo").exists()
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2  # livseg's cascade (default)
    err = capsys.readouterr().err
    assert "coarse_liver, crunet_liver_fine, runet_tumour" in err and "--paper" in err
    assert not (tmp_path / "demo").exists()


def test_demo_with_given_checkpoints(tmp_path, ckpts, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "64", *_models(ckpts)]) == 0
    text = capsys.readouterr().out
    assert "Dice" in text and "truth" in text
    metrics = json.loads((out / "phantom_metrics.json").read_text())
    assert 0.0 <= metrics["scores"]["liver_dice"] <= 1.0
    assert metrics["truth"]["liver_ml"] > 0
    assert (out / "phantom_ct_seg.nii.gz").exists() and (out / "phantom_ct_overlay.png").exists()


# --- real data: geometry of the output equals the input's --------------------------------------


def test_real_nifti_and_dicom_geometry_and_dicom_seg(tmp_path, lits_dir, radct_dir, monkeypatch):
    """Real NIfTI and DICOM inputs of one scan: labels in each input's exact geometry, the same
    labels for both, and a DICOM-SEG referencing the series. A deterministic threshold liver
    stage keeps it fast (geometry does not depend on the weights)."""
    import highdicom as hd
    from test_infer import threshold_cascade

    import livseg.infer.run as run

    monkeypatch.setattr(
        run.Cascade,
        "load",
        classmethod(lambda cls, *a, **k: threshold_cascade(size=64, batch_size=16)),
    )
    series = radct_dir / "ct-arterial-5mm"
    nifti = lits_dir / "volume-2.nii.gz"
    out = tmp_path / "out"
    assert main(["segment", str(nifti), "-o", str(out), "--no-overlay"]) == 0
    assert main(["segment", str(series), "-o", str(out), "--dicom-seg"]) == 0
    for inp, name in ((nifti, "volume-2"), (series, "ct-arterial-5mm")):
        lab = read_volume(out / f"{name}_seg.nii.gz", kind="label")
        assert lab.geometry_mismatch(read_volume(inp)) is None, name
    a = read_volume(out / "volume-2_seg.nii.gz", kind="label").array
    b = read_volume(out / "ct-arterial-5mm_seg.nii.gz", kind="label").array
    assert (b >= 1).any() and np.mean(a == b) > 0.999
    seg = hd.seg.segread(out / "ct-arterial-5mm_seg.dcm")
    assert seg.SegmentSequence[0].SegmentLabel == "Liver"
    assert len(seg.PerFrameFunctionalGroupsSequence) > 0
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 50


@pytest.mark.slow
def test_all_real_cases_geometry(tmp_path, shared_data, ckpts):
    inputs = sorted((shared_data / "lits").glob("volume-*.nii.gz"))
    inputs += [
        shared_data / "dicom" / "radct-2022" / "ct-arterial-5mm",
        shared_data / "extra" / "three-slice" / "volume.nii.gz",
        shared_data / "extra" / "model-labelled" / "volume.nii.gz",
        shared_data / "dicom" / "radct-2022" / "ct-equilibrium-5mm",
    ]
    for i, inp in enumerate(inputs):
        out = tmp_path / f"o{i}"
        assert main(["segment", str(inp), "-o", str(out), "--no-overlay", *_models(ckpts)]) == 0
        lab = read_volume(next(out.glob("*_seg.nii.gz")), kind="label")
        assert lab.geometry_mismatch(read_volume(inp)) is None, inp


def test_segment_dicom_folder_with_two_series_needs_series(tmp_path, ckpts, capsys):
    import pydicom

    from livseg.io.dicom_writer import write_dicom_series

    hu, _ = synthetic_ct((6, 40, 48))
    vol = Volume.image(hu, (2.5, 0.7, 0.9), (12.0, -30.0, 40.0))
    root = tmp_path / "study"
    write_dicom_series(vol, root / "a", uid_seed="series-a", series_description="A")
    write_dicom_series(
        vol, root / "b", uid_seed="series-b", series_description="B", series_number=2
    )
    uid_b = pydicom.dcmread(next((root / "b").glob("*.dcm"))).SeriesInstanceUID
    out = tmp_path / "out"
    assert main(["segment", str(root), "-o", str(out), *_models(ckpts)]) == 2
    err = capsys.readouterr().err
    assert "--series" in err and uid_b in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
    assert (
        main(
            [
                "segment",
                str(root),
                "-o",
                str(out),
                "--series",
                uid_b,
                "--dicom-seg",
                *_models(ckpts),
            ]
        )
        == 0
    )
    lab = read_volume(out / "study_seg.nii.gz", kind="label")
    assert lab.geometry_mismatch(read_volume(root, series_uid=uid_b)) is None
    seg = pydicom.dcmread(out / "study_seg.dcm")
    refs = {s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence}
    assert refs == {uid_b}
