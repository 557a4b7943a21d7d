"""The path a new user walks: segment -> evaluate as the README writes it, scores with --ref,
progress lines, output permissions, recorded warnings, help texts, a fast ``import livseg``.

Tiny random checkpoints keep it fast (their outputs are meaningless; what is checked is the
plumbing and values derived by hand from the written files).
"""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_infer import make_checkpoint, model_args, synthetic_ct

from livseg.cli import main
from livseg.io import read_volume, write_volume
from livseg.volume import Volume


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("user_ckpt")
    return {k: make_checkpoint(root / k, k) for k in ("densefcn_liver", "tumour")}


@pytest.fixture(scope="module")
def lits(tmp_path_factory) -> Path:
    """A LiTS-named phantom folder: volume-0/1 + segmentation-0/1 (tiny)."""
    from livseg.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("lits") / "lits"
    write_phantom_dataset(root, cases=2, seed=3, size=32)
    return root


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_segment_then_evaluate_on_a_lits_folder(tmp_path, lits, ckpts, capsys):
    """README: ``segment lits/volume-*.nii.gz -o results/`` then ``evaluate --pred results/
    --ref lits/``: volume-N_seg pairs with segmentation-N, and the scores are those of the
    written files."""
    results, scores = tmp_path / "results", tmp_path / "scores"
    inputs = sorted(str(p) for p in lits.glob("volume-*.nii.gz"))
    assert main(["segment", *inputs, "-o", str(results), *model_args(ckpts)]) == 0
    rc = main(["evaluate", "--pred", str(results), "--ref", str(lits), "--out", str(scores)])
    assert rc == 0, capsys.readouterr().err
    rows = list(csv.DictReader((scores / "per_case.csv").open()))
    assert [Path(r["prediction"]).name for r in rows] == [
        "volume-0_seg.nii.gz",
        "volume-1_seg.nii.gz",
    ]
    assert [Path(r["reference"]).name for r in rows] == [
        "segmentation-0.nii.gz",
        "segmentation-1.nii.gz",
    ]
    for r in rows:
        pred = read_volume(r["prediction"], kind="label").array >= 1
        ref = read_volume(r["reference"], kind="label").array >= 1
        assert float(r["liver_dice"]) == pytest.approx(_dice(pred, ref))


def test_segment_with_ref_records_the_lits_scores(tmp_path, lits, ckpts):
    out = tmp_path / "out"
    rc = main(
        [
            "segment",
            str(lits / "volume-1.nii.gz"),
            "-o",
            str(out),
            "--ref",
            str(lits / "segmentation-1.nii.gz"),
            *model_args(ckpts),
        ]
    )
    assert rc == 0
    meta = json.loads((out / "volume-1_measurements.json").read_text())["extra"]
    pred = read_volume(out / "volume-1_seg.nii.gz", kind="label").array
    ref = read_volume(lits / "segmentation-1.nii.gz", kind="label").array
    assert meta["scores"]["liver_dice"] == pytest.approx(_dice(pred >= 1, ref >= 1))
    from scipy import ndimage

    assert meta["scores"]["lesions_ref"] == ndimage.label(ref == 2)[1]  # 6-connected
    page = (out / "volume-1_report.html").read_text()
    assert "Scores against the reference labels (LiTS)" in page
    assert f"<td class='num'>{meta['scores']['liver_dice']:.3f}</td>" in page


def test_pairing_names():
    from livseg.metrics.evaluate import prediction_stems

    assert prediction_stems("segmentation-3") == [
        "segmentation-3",
        "volume-3",
        "segmentation-3_seg",
        "volume-3_seg",
    ]
    assert prediction_stems("case_7") == ["case_7", "case_7_seg"]


def test_progress_lines_when_not_a_terminal(tmp_path, ckpts, capsys):
    hu, _ = synthetic_ct((6, 40, 48))
    ct = write_volume(Volume.image(hu, (2.5, 0.7, 0.9)), tmp_path / "case_7.nii.gz")
    assert main(["segment", str(ct), "-o", str(tmp_path / "o"), *model_args(ckpts)]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("case_7: ")]
    stages = [ln.split()[1] for ln in lines]
    assert stages[0] == "read" and stages[-1] == "write" and "liver" in stages
    # one line per stage, each with its elapsed time; the liver line counts the 6 slices
    assert len(stages) == len(set(stages))
    assert all(ln.endswith(" s") for ln in lines)
    assert any(ln.startswith("case_7: liver 6 slices, ") for ln in lines)
    # -q: no progress at all
    assert main(["-q", "segment", str(ct), "-o", str(tmp_path / "q"), *model_args(ckpts)]) == 0
    assert "case_7: read" not in capsys.readouterr().err


def test_demo_progress_and_outputs(tmp_path, ckpts, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size", "32", *model_args(ckpts)]) == 0
    err = capsys.readouterr().err
    assert "phantom_ct: phantom " in err and "phantom_ct: write " in err
    meta = json.loads((out / "phantom_ct_measurements.json").read_text())["extra"]
    metrics = json.loads((out / "phantom_metrics.json").read_text())
    assert meta["scores"] == metrics["scores"]  # one scoring, recorded in both places


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_follow_the_umask(tmp_path, ckpts, umask, mode):
    hu, _ = synthetic_ct((6, 40, 48))
    ct = write_volume(Volume.image(hu, (2.5, 0.7, 0.9)), tmp_path / "ct.nii.gz")
    old = os.umask(umask)
    try:
        assert main(["segment", str(ct), "-o", str(tmp_path / "o"), *model_args(ckpts)]) == 0
    finally:
        os.umask(old)
    files = sorted((tmp_path / "o").iterdir())
    assert len(files) == 5
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == mode, f


def test_dicom_series_folder_follows_the_umask(tmp_path):
    from livseg.io.dicom_writer import write_dicom_series

    hu, _ = synthetic_ct((6, 32, 32))
    old = os.umask(0o022)
    try:
        files = write_dicom_series(Volume.image(hu, (2.0, 1.0, 1.0)), tmp_path / "series")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "series").stat().st_mode) == 0o755
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o644


def test_warnings_and_series_uid_are_recorded(tmp_path, ckpts):
    """A dropped DICOM slice and repaired NaN voxels: in the JSON warnings, in the report, and
    the series UID recorded."""
    from dicom_utils import write_ct_series, write_ct_slice

    series = tmp_path / "series"
    truth = write_ct_series(series, n_slices=8, slice_spacing=5.0, series_uid="1.2.826.0.7")
    extra = truth["positions"][-1] + 68.75 * truth["normal"]
    write_ct_slice(series / "zz_extra.dcm", np.zeros((16, 12)), extra, series_uid="1.2.826.0.7")
    out = tmp_path / "out"
    assert main(["segment", str(series), "-o", str(out), *model_args(ckpts)]) == 0
    meta = json.loads((out / "series_measurements.json").read_text())["extra"]
    assert meta["series_uid"] == "1.2.826.0.7"
    assert [Path(d["file"]).name for d in meta["dropped_files"]] == ["zz_extra.dcm"]
    dropped = [w for w in meta["warnings"] if "zz_extra.dcm" in w]
    assert len(dropped) == 1 and "dropped" in dropped[0]
    page = (out / "series_report.html").read_text()
    assert "zz_extra.dcm" in page and "1.2.826.0.7" in page

    hu, _ = synthetic_ct((6, 40, 48))
    hu[0, :2, :3] = np.nan  # 6 voxels
    ct = write_volume(Volume.image(hu, (2.5, 0.7, 0.9)), tmp_path / "holes.nii.gz")
    assert main(["segment", str(ct), "-o", str(out), *model_args(ckpts)]) == 0
    meta = json.loads((out / "holes_measurements.json").read_text())["extra"]
    repaired = [w for w in meta["warnings"] if "replaced by -1024 HU" in w]
    assert len(repaired) == 1 and "6 non-finite voxel(s)" in repaired[0]
    assert "replaced by -1024 HU" in (out / "holes_report.html").read_text()


def test_small_tumour_components_are_not_lesions():
    """0.01 ml minimum: at 1 mm^3 voxels a 10-voxel component is a lesion, a 9-voxel one is
    not; both stay in the tumour volume."""
    from livseg.report.html import report_html
    from livseg.report.measurements import MIN_LESION_VOLUME_ML, measure

    assert MIN_LESION_VOLUME_ML == 0.01
    lab = np.zeros((10, 30, 30), np.uint8)
    lab[1:9, 2:28, 2:28] = 1
    lab[3, 5, 5:15] = 2  # 10 voxels = 0.010 ml
    lab[6, 20, 5:14] = 2  # 9 voxels = 0.009 ml
    lab[7, 25, 25] = 2  # 1 voxel
    m = measure(Volume.label(lab, (1.0, 1.0, 1.0)))
    assert m.lesion_count == 1 and m.lesions[0].voxels == 10 and m.lesions[0].lesion == 1
    assert m.small_tumour_components == 2
    assert m.small_tumour_components_ml == pytest.approx(0.010)
    assert m.tumour_volume_ml == pytest.approx(0.020)
    page = report_html("c", m)
    assert "2 smaller component(s)" in page and "stay in the label file" in page


def test_info_and_report_share_the_axis_order(tmp_path, capsys):
    from livseg.report.html import report_html
    from livseg.report.measurements import measure

    lab = np.zeros((7, 11, 13), np.uint8)
    lab[2:4, 3:6, 3:6] = 1
    vol = Volume.label(lab, (3.0, 0.5, 0.8))
    path = write_volume(vol, tmp_path / "seg.nii.gz")
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "13 x 11 x 7 (x, y, z)" in text and "(0.8, 0.5, 3) mm" in text
    page = report_html("c", measure(vol), {"shape_zyx": list(vol.shape)})
    assert "<th>Shape (x, y, z)</th><td class='num'>13 x 11 x 7</td>" in page
    assert "<th>Spacing (mm, x y z)</th><td class='num'>0.8 x 0.5 x 3</td>" in page


def test_help_lists_every_config_and_shows_defaults(capsys):
    from livseg.train.config import bundled_configs, load_config

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in bundled_configs():
        assert name in text, name
    assert "densefcn_tumour" in bundled_configs() and "densefcn_tumor" not in bundled_configs()
    assert load_config("densefcn_tumor").name == "densefcn_tumour"  # the other spelling works
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: auto)" in text and "(default: crunet)" in text
    assert "(default: 8 on the CPU, 64 on a GPU)" in text
    assert "--tumor-model" in text  # accepted spelling
    assert "(default: None)" not in text and "(default: False)" not in text


def test_import_and_help_stay_light():
    heavy = "print(sorted(m for m in ('torch', 'scipy', 'matplotlib') if m in sys.modules))"
    code = f"import sys, livseg; from livseg.cli import build_parser; build_parser(); {heavy}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # `livseg --help` loads none of them
    code = "import sys, livseg; livseg.segment; livseg.Segmenter; livseg.evaluate; livseg.read;"
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # torch only when models are loaded
    bare = "import sys, livseg; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", bare], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_overlay_layout_keeps_header_and_panels_apart():
    from livseg.report.overlay import MIN_FIGURE_WIDTH_IN, _Layout

    for ncol, nrow in ((1, 1), (4, 3)):
        lay = _Layout(ncol, nrow, 3.2, 2.5, header_h=0.9)
        fw, fh = lay.size
        assert fw >= MIN_FIGURE_WIDTH_IN
        header_bottom = 1.0 - lay.header_h / fh
        rects = [lay.panel_rect(n) for n in range(ncol * nrow)]
        for left, bottom, width, height in rects:
            assert bottom + height <= header_bottom + 1e-9  # below the title and legend
            assert 0.0 <= left and left + width <= 1.0 and bottom >= 0.0
        # panels do not overlap each other
        for a in range(len(rects)):
            for b in range(a + 1, len(rects)):
                ax, ay, aw, ah = rects[a]
                bx, by, bw, bh = rects[b]
                assert (
                    ax + aw <= bx + 1e-9
                    or bx + bw <= ax + 1e-9
                    or ay + ah <= by + 1e-9
                    or (by + bh <= ay + 1e-9)
                )
