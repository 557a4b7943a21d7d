"""The README, run as written: its install commands are CI's, its quick start and its Python API
example work line by line (on a LiTS-named phantom folder, and on the real cases when present).
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _block(section: str, language: str, index: int = 0) -> str:
    """The ``index``-th fenced ``language`` code block of the README section ``## section``."""
    body = README.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{language}\n(.*?)```", body, flags=re.S)
    return blocks[index]


def _commands(block: str) -> list[str]:
    """The command lines of a bash block, comments removed."""
    lines = [ln.split("  #")[0].strip() for ln in block.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_install_commands_are_what_ci_runs():
    commands = _commands(_block("Install", "bash"))
    assert commands == [
        "pip install -e . && livseg demo --out demo",
        'pip install -e ".[test]" && python3 -m pytest',
    ]
    ci = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()]
    for command in commands:
        assert command in ci, command
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in README


@pytest.fixture()
def lits_phantom(tmp_path, monkeypatch) -> Path:
    """A working folder holding ``lits/``: three small LiTS-named phantom cases."""
    from livseg.phantom import write_phantom_dataset

    write_phantom_dataset(tmp_path / "lits", cases=3, seed=1, size=64, slices=8)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_python_api_example_runs(lits_phantom, capsys):
    """The README's Python example, executed as written with the shipped models."""
    code = _block("Python API", "python")
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    out = capsys.readouterr().out
    assert re.search(r"liver \d+ ml, \d+ lesion\(s\)", out)
    assert re.search(r"liver Dice 0\.\d{3}|liver Dice 1\.000", out)
    names = sorted(p.name for p in (lits_phantom / "results-py").iterdir())
    assert names == [
        "volume-1_lesions.csv",
        "volume-1_measurements.json",
        "volume-1_overlay.png",
        "volume-1_report.html",
        "volume-1_seg.nii.gz",
    ]
    assert (lits_phantom / "volume-2_labels.nii.gz").exists()


def _run_line(line: str) -> int:
    """A README ``livseg ...`` line in-process, with the shell's glob expansion."""
    from livseg.cli import main

    words = shlex.split(line)
    assert words[0] == "livseg", line
    argv = []
    for w in words[1:]:
        argv += sorted(glob.glob(w)) if any(c in w for c in "*?[") else [w]
    return main(argv)


def test_quick_start_on_a_lits_phantom_folder(lits_phantom, monkeypatch, tmp_path_factory):
    """Quick start line by line on ``lits/`` (tiny random models stand in for the shipped
    ones, which the slow test below and the Python example use)."""
    from test_infer import make_checkpoint

    import livseg.infer.cascade as cascade

    root = tmp_path_factory.mktemp("qs_ckpt")
    liver = make_checkpoint(root / "liver", "densefcn_liver")
    tumour = make_checkpoint(root / "tumour", "tumour")
    real = cascade.Cascade.load.__func__
    monkeypatch.setattr(
        cascade.Cascade,
        "load",
        classmethod(lambda cls, *a, **k: real(cls, liver_model=liver, tumour_model=tumour)),
    )
    for line in _commands(_block("Quick start", "bash")):
        assert _run_line(line) == 0, line
    assert len(list((lits_phantom / "results").glob("volume-*_seg.nii.gz"))) == 3
    summary = (lits_phantom / "scores" / "summary.json").read_text()
    assert summary.count('"case": "segmentation-') == 3


@pytest.mark.slow
def test_quick_start_on_the_real_lits_cases(lits_dir, tmp_path):
    """The quick start as a user types it, in a shell, on ../shared/data/lits with the shipped
    models (about five minutes on two CPU cores)."""
    (tmp_path / "lits").symlink_to(lits_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *sys.path])}
    livseg = f"{shlex.quote(sys.executable)} -m livseg.cli"
    for line in _commands(_block("Quick start", "bash")):
        cmd = re.sub(r"^livseg ", f"{livseg} ", line)
        done = subprocess.run(
            ["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, (line, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
    import json

    summary = json.loads((tmp_path / "scores" / "summary.json").read_text())
    assert len(summary["cases"]) == 5
    assert summary["liver_dice_per_case"] > 0.5
