"""The ``livseg`` command: one entry point with subcommands.

Each subcommand parses its arguments and calls one library function. Heavy libraries (torch,
SimpleITK, matplotlib...) are imported inside the handlers so that ``livseg --help`` is instant.
Expected errors (:class:`livseg.errors.LivsegError`) print one line naming the file and the
problem, with no traceback, and give a non-zero exit code.

This module holds what the subcommands share (exit codes, the progress bar, logging set-up,
error handling, :func:`main`); each group of subcommands lives in its own module, which ends
with its ``COMMANDS`` list:

* ``io_commands.py``: ``info``, ``convert``, ``phantom``;
* ``evaluate.py``: ``evaluate``;
* ``train.py``: ``train``, ``cv``;
* ``segment.py``: ``segment``, ``demo``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from livseg import __version__

log = logging.getLogger("livseg")

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

# A command is (name, help, register(parser) -> handler). Handlers take the parsed args and
# return an exit code. Register functions live in the subcommand modules, one per subcommand.
Register = Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]


def _progress_enabled(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def progress(iterable=None, **kwargs):
    """A tqdm progress bar for the CLI layer (disabled when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help that shows each option's default (unless None/False/empty, or the text gives it)
    and keeps epilogs (examples) as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def commands() -> list[tuple[str, str, Register]]:
    """Every subcommand as (name, one-line help, register function), in ``--help`` order.

    The subcommand modules are imported here, not at the top, because they import this
    module's shared names (exit codes, :func:`progress`).
    """
    from livseg.cli import evaluate, io_commands, segment, train

    return [*io_commands.COMMANDS, *evaluate.COMMANDS, *train.COMMANDS, *segment.COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    """The ``livseg`` argument parser with every subcommand of :func:`commands`."""
    parser = argparse.ArgumentParser(
        prog="livseg",
        description="Liver and liver-tumour segmentation in abdominal CT (labels: 0 background, "
        "1 liver, 2 tumour), LiTS evaluation, training and cross-validation.",
    )
    parser.add_argument("--version", action="version", version=f"livseg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, register in commands():
        p = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=_HelpFormatter
        )
        p.set_defaults(_handler=register(p))
    return parser


class _StderrHandler(logging.StreamHandler):
    """A log handler that always writes to the *current* ``sys.stderr`` (redirections, pytest)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; ignore
        pass


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    root = logging.getLogger("livseg")
    root.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        root.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``livseg`` command line; returns the exit code (never raises on expected errors)."""
    from livseg.errors import LivsegError

    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    _setup_logging(args.verbose, args.quiet)
    handler = getattr(args, "_handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_ERROR
    try:
        return int(handler(args) or EXIT_OK)
    except LivsegError as exc:
        print(f"livseg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:  # an unforeseen file-system failure: still one line naming the path
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"livseg {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("livseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
