"""Cohorts: ``livseg segment`` over many CTs, ``cohort.csv``, ``--resume`` and torchrun sharding.

Tiny random checkpoints (``test_infer.make_checkpoint``) keep this fast; what is checked is the
plumbing, on phantom CTs: which rank segments which input, that the table holds exactly what each case's
measurements JSON says, that resuming segments nothing twice, and that two gloo processes
under torchrun write the same labels as one process.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_infer import make_checkpoint, model_args

from livseg.cli import main
from livseg.infer.cohort import COLUMNS, shard
from livseg.io import read_volume
from livseg.phantom import write_phantom_dataset


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cohort_ckpt")
    return {k: make_checkpoint(root / k, k) for k in ("densefcn_liver", "tumour")}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[list[Path], list[Path]]:
    """Five small phantom CTs (``livseg phantom``: 48 x 48 x 16) renamed ct0..ct4, and their
    reference labels."""
    root = tmp_path_factory.mktemp("cohort_in")
    write_phantom_dataset(root / "raw", cases=5, seed=11, size=48, slices=16)
    cts, refs = [], []
    for k in range(5):
        cts.append((root / "raw" / f"volume-{k}.nii.gz").rename(root / f"ct{k}.nii.gz"))
        refs.append((root / "raw" / f"segmentation-{k}.nii.gz").rename(root / f"ref{k}.nii.gz"))
    return cts, refs


def _table(out: Path) -> list[dict[str, str]]:
    with open(out / "cohort.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_shard_deals_sorted_paths_round_robin():
    # sorted: a (index 1), b (2), c (0), d (3), e (4) -> rank 0 a c e, rank 1 b d
    inputs = ["c", "a", "b", "d", "e"]
    assert shard(inputs, 0, 2) == [0, 1, 4]
    assert shard(inputs, 1, 2) == [2, 3]
    # the order on the command line does not change who gets what
    again = ["e", "d", "c", "b", "a"]
    assert sorted(again[i] for i in shard(again, 1, 2)) == ["b", "d"]
    # every input exactly once, for any number of ranks (more ranks than inputs too)
    for world in (1, 2, 3, 7):
        got = sorted(i for r in range(world) for i in shard(inputs, r, world))
        assert got == list(range(5))
    with pytest.raises(ValueError):
        shard(inputs, 2, 2)


def test_cohort_table_holds_each_cases_measurements(tmp_path, cohort, ckpts, capsys):
    cts, refs = cohort
    out = tmp_path / "out"
    argv = ["segment", *map(str, cts[:3]), "-o", str(out), "--no-overlay", *model_args(ckpts)]
    for r in refs[:3]:
        argv += ["--ref", str(r)]
    assert main(argv) == 0
    assert "cohort table:" in capsys.readouterr().out
    rows = _table(out)
    assert list(rows[0]) == list(COLUMNS)
    assert [r["case"] for r in rows] == ["ct0", "ct1", "ct2"]
    for row in rows:
        doc = json.loads((out / f"{row['case']}_measurements.json").read_text())
        assert row["status"] == "segmented" and row["rank"] == "0" and row["error"] == ""
        assert float(row["liver_ml"]) == round(doc["liver_volume_ml"], 2)
        assert float(row["tumour_ml"]) == round(doc["tumour_volume_ml"], 3)
        assert int(row["lesions"]) == doc["lesion_count"]
        assert row["liver_found"] == str(doc["liver_found"])
        assert float(row["liver_dice"]) == round(doc["extra"]["scores"]["liver_dice"], 4)
        assert float(row["seconds"]) == round(sum(doc["extra"]["timings_s"].values()), 2)


def test_single_input_writes_no_table(tmp_path, cohort, ckpts):
    out = tmp_path / "out"
    assert main(["segment", str(cohort[0][0]), "-o", str(out), *model_args(ckpts)]) == 0
    assert not (out / "cohort.csv").exists()


def test_resume_segments_only_what_is_missing(tmp_path, cohort, ckpts, capsys):
    cts = cohort[0][:3]
    out = tmp_path / "out"
    args = ["segment", *map(str, cts), "-o", str(out), "--no-overlay", *model_args(ckpts)]
    assert main(args) == 0
    first = _table(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.nii.gz")}
    # without --resume the existing outputs are refused, and nothing changes
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    # a crash after the labels of ct1 were renamed but before its measurements were
    (out / "ct1_measurements.json").unlink()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "ct0: outputs exist, skipped" in printed and "ct2: outputs exist, skipped" in printed
    rows = _table(out)
    assert [r["status"] for r in rows] == ["existing", "segmented", "existing"]
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.nii.gz")}
    assert after["ct0_seg.nii.gz"] == stamps["ct0_seg.nii.gz"]
    assert after["ct2_seg.nii.gz"] == stamps["ct2_seg.nii.gz"]
    assert after["ct1_seg.nii.gz"] != stamps["ct1_seg.nii.gz"]
    # the same models give the same measurements, whether read back or segmented again
    for a, b in zip(first, rows, strict=True):
        assert a["liver_ml"] == b["liver_ml"] and a["tumour_ml"] == b["tumour_ml"]


def test_torchrun_two_gloo_ranks_shard_the_cohort(tmp_path, cohort, ckpts):
    cts, _ = cohort
    alone = tmp_path / "alone"
    assert main(["segment", *map(str, cts), "-o", str(alone), *model_args(ckpts)]) == 0
    out = tmp_path / "ranks"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "livseg", "segment", *map(str, reversed(cts)), "-o", str(out)]
    cmd += model_args(ckpts)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    rows = _table(out)
    # rank 0 wrote one row per input, in the order given; each case on the rank shard() names
    assert [r["case"] for r in rows] == [f"ct{k}" for k in (4, 3, 2, 1, 0)]
    ranks = {r["case"]: int(r["rank"]) for r in rows}
    assert ranks == {"ct0": 0, "ct1": 1, "ct2": 0, "ct3": 1, "ct4": 0}
    assert {r["status"] for r in rows} == {"segmented"}
    # the labels are exactly those of one process
    for ct in cts:
        name = ct.name.removesuffix(".nii.gz")
        a = read_volume(alone / f"{name}_seg.nii.gz", kind="label")
        b = read_volume(out / f"{name}_seg.nii.gz", kind="label")
        assert np.array_equal(a.array, b.array)
    # a second torchrun finds everything done (resume is implied) and segments nothing
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert {r["status"] for r in _table(out)} == {"existing"}
    assert res.stdout.count("outputs exist, skipped") == 5


def test_torchrun_bad_input_on_one_rank_stops_every_rank(tmp_path, cohort, ckpts):
    cts, _ = cohort
    bad = tmp_path / "zz_broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    out = tmp_path / "ranks"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "livseg", "segment", *map(str, cts[:3]), str(bad), "-o", str(out)]
    cmd += model_args(ckpts)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode != 0
    # every rank stops with one error line naming the bad file (the rank whose shard is fine
    # names the rank that stopped it); torchrun then prints its own failure summary, and may
    # stop the other rank before that rank has printed, so one or two lines
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("livseg segment: error:")]
    assert 1 <= len(errors) <= 2 and all("zz_broken.nii.gz" in ln for ln in errors)
    assert "livseg/infer" not in res.stderr  # no traceback of livseg's own
    # nothing was segmented on either rank
    assert not out.exists() or not list(out.glob("*_seg.nii.gz"))


def test_python_api_segment_cohort(tmp_path, cohort, ckpts):
    import livseg

    options = livseg.SegmentOptions(
        liver_model=str(ckpts["densefcn_liver"]), tumour_model=str(ckpts["tumour"])
    )
    cts = cohort[0][:2]
    out = tmp_path / "api"
    first = livseg.segment_cohort(cts, out, device="cpu", options=options, overlay=False)
    assert first.table == out / "cohort.csv" and [c.name for c in first.cases] == ["ct0", "ct1"]
    again = livseg.segment_cohort(
        cts, out, device="cpu", options=options, overlay=False, resume=True
    )
    assert again.cases == [] and again.skipped == ["ct0", "ct1"]
    assert [r["status"] for r in again.rows] == ["existing", "existing"]
    assert [r["liver_ml"] for r in again.rows] == [r["liver_ml"] for r in first.rows]


def test_each_case_keeps_its_own_warnings_while_the_next_is_read_ahead(
    tmp_path, cohort, ckpts, monkeypatch
):
    """A batch reads the next case in a background thread while it segments the current one:
    the reading's warnings (here nan1's NaN voxels) belong to the case read, never to the case
    being segmented meanwhile. The read of nan1 is made to happen while ct0's networks run."""
    import threading

    import nibabel as nib

    import livseg.infer.run as run
    from livseg.infer.cascade import Cascade

    cts, _ = cohort
    img = nib.load(cts[1])
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[0, 0, :3] = np.nan
    nan_ct = tmp_path / "nan1.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), nan_ct)
    segmenting, read = threading.Event(), threading.Event()
    read_ct, segment = run.read_ct, Cascade.segment
    threads = set()

    def slow_read(path, *args):
        ahead = threading.current_thread().name.startswith("livseg-read")  # not the checks
        threads.add(threading.current_thread().name)
        if ahead and Path(path).name == "nan1.nii.gz":
            assert segmenting.wait(30)  # ct0's segmentation has begun
            try:
                return read_ct(path, *args)
            finally:
                read.set()
        return read_ct(path, *args)

    def waiting_segment(self, volume, *args, **kwargs):
        segmenting.set()
        if "ct0" in str(kwargs.get("source")):
            assert read.wait(30)  # nan1 was read (and warned) while ct0 was being segmented
        return segment(self, volume, *args, **kwargs)

    monkeypatch.setattr(run, "read_ct", slow_read)
    monkeypatch.setattr(Cascade, "segment", waiting_segment)
    out = tmp_path / "out"
    inputs = [cts[0], nan_ct, cts[2]]
    argv = ["segment", *map(str, inputs), "-o", str(out), "--no-overlay", *model_args(ckpts)]
    assert main(argv) == 0
    assert any(t.startswith("livseg-read") for t in threads), threads
    warnings = {
        name: json.loads((out / f"{name}_measurements.json").read_text())["extra"]["warnings"]
        for name in ("ct0", "nan1", "ct2")
    }
    assert any("non-finite voxel value(s)" in w for w in warnings["nan1"]), warnings
    assert not any("non-finite" in w for w in warnings["ct0"] + warnings["ct2"]), warnings


def test_a_write_failure_in_a_batch_stops_at_that_case(
    tmp_path, cohort, ckpts, capsys, monkeypatch
):
    """Outputs are written in a background thread while the next case is segmented; a failure
    there is still that case's: one line naming its file, the cases before it complete, none
    of its outputs nor any later case's, no table."""
    import livseg.io.atomic as atomic

    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("ct1_report.html"):
            raise OSError(28, os.strerror(28), str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    cts, _ = cohort
    out = tmp_path / "out"
    assert main(["segment", *map(str, cts[:3]), "-o", str(out), *model_args(ckpts)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("livseg segment: error:")]
    assert len(lines) == 1 and "ct1_report.html" in lines[0], err
    suffixes = ("_seg.nii.gz", "_measurements.json", "_lesions.csv", "_overlay.png", "_report.html")
    assert sorted(p.name for p in out.iterdir()) == sorted(f"ct0{s}" for s in suffixes)


def test_check_threads_follow_inputs_cpus_memory_and_local_ranks(monkeypatch):
    import livseg.infer.run as run
    from livseg.infer.run import MAX_CHECK_THREADS, check_threads

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(run, "available_memory", lambda: 64 << 30)
    assert MAX_CHECK_THREADS == 8
    assert [check_threads(n) for n in (1, 3, 8, 20)] == [1, 3, 8, 8]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 processes on this node share 16
    assert check_threads(20) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")  # more processes than CPUs: still one
    assert check_threads(20) == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert check_threads(5) == 2
    # 2 GB per thread: 16 CPUs with 7 GB free read 3 at once, with 1 GB free one
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(run, "available_memory", lambda: 7 << 30)
    assert check_threads(20) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes share the 7 GB
    assert check_threads(20) == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(run, "available_memory", lambda: 1 << 30)
    assert check_threads(20) == 1
    monkeypatch.setattr(run, "available_memory", lambda: None)  # unknown: CPUs alone
    assert check_threads(20) == 8


def test_available_memory_is_plausible():
    from livseg.infer.run import available_memory

    memory = available_memory()
    if memory is None:
        pytest.skip("this system does not report its available memory")
    assert 16 << 20 < memory < 64 << 40  # more than 16 MB, less than 64 TB


def test_the_checks_read_the_inputs_at_once(tmp_path, cohort, ckpts, monkeypatch):
    """Before the first inference the inputs are read and checked in parallel: here the reads of
    the three checks meet at a barrier, which a one-by-one reading would never pass."""
    import threading

    import livseg.infer.run as run

    cts, _ = cohort
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(run, "available_memory", lambda: 64 << 30)
    barrier, read_ct, met = threading.Barrier(3, timeout=30), run.read_ct, []

    def meeting_read(path, *args):
        if threading.current_thread().name.startswith("livseg-check"):
            met.append(barrier.wait())  # BrokenBarrierError when the reads come one by one
        return read_ct(path, *args)

    monkeypatch.setattr(run, "read_ct", meeting_read)
    out = tmp_path / "out"
    argv = ["segment", *map(str, cts[:3]), "-o", str(out), "--no-overlay", *model_args(ckpts)]
    assert main(argv) == 0
    assert sorted(met) == [0, 1, 2]
    assert all((out / f"ct{k}_seg.nii.gz").exists() for k in range(3))
