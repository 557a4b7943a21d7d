"""Dependencies run one way: ``io -> preprocess -> models -> infer -> report``; training adds
``data -> train`` on top, and ``metrics`` stands beside inference without using it.

Every module under ``src/livseg`` is parsed with :mod:`ast`; every import counts, at module level
or inside a function (lazy imports), ``import x`` and ``from x import y`` alike, relative imports
resolved against the module's package, and ``importlib.import_module("livseg....")`` with a
literal (or f-string) name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "livseg"

TRAINING = ("livseg.train", "livseg.data")

#: package -> packages it must not import (prefix match on dotted names)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "livseg.io": (*TRAINING, "livseg.preprocess", "livseg.models", "livseg.infer", "livseg.report"),
    "livseg.preprocess": (*TRAINING, "livseg.models", "livseg.infer", "livseg.report"),
    "livseg.models": (*TRAINING, "livseg.infer", "livseg.report"),
    "livseg.infer": TRAINING,
    "livseg.report": (*TRAINING, "livseg.infer"),
    "livseg.metrics": (*TRAINING, "livseg.infer", "livseg.report"),
    "livseg.device": (*TRAINING, "livseg.infer", "livseg.report"),
    "livseg.distributed": (*TRAINING, "livseg.infer", "livseg.report", "livseg.models"),
    # torch-free: inference reads checkpoint specs without importing torch (livseg.models does)
    "livseg.checkpoint_spec": (*TRAINING, "livseg.infer", "livseg.report", "livseg.models"),
}


def module_name(path: Path) -> str:
    """Dotted name of a source file (``pkg/__init__.py`` -> ``pkg``)."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module of ``from <node.module> import ...`` written in ``module``."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _literal_prefix(arg: ast.expr) -> str | None:
    """The constant start of a string or f-string argument."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value)
    return None


def _is_import_call(node: ast.Call) -> bool:
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
    return name in ("import_module", "__import__") and bool(node.args)


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """Every module a source file imports, with its line: ``[(dotted name, line), ...]``.

    ``from a.b import c`` yields both ``a.b`` and ``a.b.c`` (``c`` may be a submodule).
    """
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, module, is_package)
            found.append((base, node.lineno))
            found += [(f"{base}.{a.name}", node.lineno) for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Call) and _is_import_call(node):
            prefix = _literal_prefix(node.args[0])
            if prefix:
                found.append((prefix.rstrip("."), node.lineno))
    return found


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def offenders(module: str, imported: list[tuple[str, int]], where: str) -> list[str]:
    """Violations of :data:`FORBIDDEN` by ``module``'s imports, as readable lines."""
    out = []
    for package, banned in FORBIDDEN.items():
        if not _within(module, package):
            continue
        for name, line in imported:
            hit = next((b for b in banned if _within(name, b)), None)
            if hit:
                out.append(
                    f"{where}:{line}: {module} imports {name} ({package} must not use {hit})"
                )
    return out


def all_modules() -> list[tuple[str, Path]]:
    return sorted((module_name(p), p) for p in PACKAGE.rglob("*.py"))


def test_dependencies_run_one_way():
    modules = all_modules()
    assert len(modules) > 40  # the walk found the package
    bad = []
    for module, path in modules:
        imported = imports_of(path.read_text(encoding="utf-8"), module, path.stem == "__init__")
        bad += offenders(module, imported, str(path.relative_to(SRC.parent)))
    assert not bad, "imports against the dependency direction:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_every_ruled_package_exists(package):
    """A renamed package must not silently escape its rule."""
    rel = Path(*package.split("."))
    assert (SRC / rel).is_dir() or (SRC / rel).with_suffix(".py").is_file()


def test_import_walker_sees_every_kind_of_import():
    source = (
        "import os\n"
        "from . import html\n"
        "from ..infer import cascade\n"
        "from .measurements import measure as m\n"
        "def f():\n"
        "    from livseg.train.config import Config\n"
        "    import livseg.data.cache as c\n"
        "    if True:\n"
        "        import importlib\n"
        "        importlib.import_module(f'livseg.train.{c}')\n"
    )
    got = imports_of(source, "livseg.report.overlay")
    names = {n for n, _ in got}
    assert {
        "os",
        "livseg.report",
        "livseg.report.html",
        "livseg.infer",
        "livseg.infer.cascade",
        "livseg.report.measurements",
        "livseg.report.measurements.measure",
        "livseg.train.config",
        "livseg.train.config.Config",
        "livseg.data.cache",
        "importlib",
        "livseg.train",
    } == names
    # a package's __init__ resolves "." to itself
    assert ("livseg.infer.run", 1) in imports_of("from .run import x\n", "livseg.infer", True)
    bad = offenders("livseg.report.overlay", got, "overlay.py")
    flagged = sorted(b.split(" imports ")[1].split(" (")[0] + "@" + b.split(":")[1] for b in bad)
    assert flagged == [
        "livseg.data.cache@7",
        "livseg.infer.cascade@3",
        "livseg.infer@3",
        "livseg.train.config.Config@6",
        "livseg.train.config@6",
        "livseg.train@10",
    ]
    assert offenders("livseg.metrics.lits", [("livseg.report.html", 3)], "lits.py") == [
        "lits.py:3: livseg.metrics.lits imports livseg.report.html "
        "(livseg.metrics must not use livseg.report)"
    ]
    assert offenders("livseg.train.trainer", got, "t.py") == []  # training may use anything
