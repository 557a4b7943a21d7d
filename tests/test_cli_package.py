"""The ``livseg`` command as a package: its subcommand modules and ``python -m livseg.cli``."""

from __future__ import annotations

import subprocess
import sys

import livseg
from livseg.cli import commands


def test_every_subcommand_is_registered_once_in_help_order():
    names = [name for name, _, _ in commands()]
    assert names == ["info", "convert", "phantom", "evaluate", "train", "cv", "segment", "demo"]


def test_python_dash_m_runs_the_command():
    run = [sys.executable, "-m", "livseg.cli"]
    out = subprocess.run([*run, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"livseg {livseg.__version__}"
    out = subprocess.run(run, capture_output=True, text=True)  # no subcommand: help, exit 2
    assert out.returncode == 2 and "usage: livseg" in out.stdout
