"""The ``livseg`` command: one entry point with subcommands.

Each subcommand parses its arguments and calls one library function. Heavy libraries (torch,
SimpleITK, matplotlib...) are imported inside the handlers so that ``livseg --help`` is instant.
Expected errors (:class:`livseg.errors.LivsegError`) print one line naming the file and the
problem, with no traceback, and give a non-zero exit code.
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

# Each entry: (name, help, register(parser) -> handler). Handlers take the parsed args and
# return an exit code. Register functions live below, one per subcommand.
Register = Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]


def _progress_enabled(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def progress(iterable=None, **kwargs):
    """A tqdm progress bar for the CLI layer (disabled when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


COMMANDS: list[tuple[str, str, Register]] = []
"""(name, one-line help, register function); each section below appends its commands."""


# ---------------------------------------------------------------------------------------------
# Subcommands. Keep each one's parser and handler together, in its own section.
# ---------------------------------------------------------------------------------------------

# >>> info / convert (foundation io)
# <<< info / convert

# >>> phantom
# <<< phantom

# >>> evaluate
# <<< evaluate

# >>> train / cv
# <<< train / cv

# >>> segment / demo
# <<< segment / demo

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livseg",
        description="Liver and liver-tumour segmentation in abdominal CT (labels: 0 background, "
        "1 liver, 2 tumour), LiTS evaluation, training and cross-validation.",
    )
    parser.add_argument("--version", action="version", version=f"livseg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text, register in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_handler=register(p))
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    root = logging.getLogger("livseg")
    root.setLevel(level)
    if not any(getattr(h, "_livseg", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        handler._livseg = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    for h in root.handlers:
        if getattr(h, "_livseg", False):
            h.stream = sys.stderr  # follow redirection (pytest capsys)


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
    except KeyboardInterrupt:
        print("livseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
