"""The ``anyecho`` command's entry point: the parser and its subcommands.

Every user error (bad option, missing backend package, address in use, host that
does not resolve) ends with one line on stderr, ``anyecho: error: MESSAGE``
whatever the command, and a non-zero exit status; a stop by SIGINT, SIGTERM or
SIGHUP is graceful and exits 0, whenever the signal comes: while the command
starts, while it serves, or while it exits.

This module imports only the standard library when it loads; the rest comes once
:func:`main` has installed the signal handlers (see ``_signals``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .. import __version__
from .._signals import stop_requests
from ._exit import EXIT_INTERRUPTED, EXIT_USAGE, PROG, CommandError, fail

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, without the usage dump, and
    with the prefix of every other error (a subcommand's parser too).

    Options are never abbreviated: ``--work 2`` is an error, not ``--workers 2``
    (the supervisor passes a worker every option but ``--workers`` and
    ``--port``, which it can only recognise when they are spelt out).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full ``anyecho`` argument parser (also the source of the CLI docs)."""
    parser = _Parser(
        prog=PROG,
        description="An RFC 862 echo server for asyncio, uvloop and Trio.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    subparsers = parser.add_subparsers(
        title="commands", metavar="COMMAND", parser_class=_Parser
    )
    for add in _commands():
        add(subparsers)
    return parser


def _commands() -> list[Callable[[Any], None]]:
    """Each subcommand's ``add_parser``, in the order ``--help`` lists them."""
    from . import _serve

    commands: list[Callable[[Any], None]] = [_serve.add_parser]
    try:
        from ..bench.cli import add_parser as add_bench
    except ImportError:  # pragma: no cover - the subpackage ships with anyecho
        return commands
    return [*commands, add_bench]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anyecho`` command; returns the exit status.

    With ``argv`` left out it is the program itself: the stop signals are
    handled from its first line, and ignored once it returns, through the
    interpreter's exit. Given ``argv`` (a call from Python), it puts the
    previous signal handlers back before it returns.
    """
    program = argv is None
    installed_here = not stop_requests.installed
    stop_requests.install()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = None if argv is None else list(argv)[1:]
        command = getattr(args, "command", None)
        if command is None:
            parser.print_usage(sys.stderr)
            return fail("choose a command (anyecho serve --help)", EXIT_USAGE)
        if not getattr(args, "stop_signals", False):
            # Other commands (bench) take Ctrl-C as KeyboardInterrupt, as usual.
            interrupted = bool(stop_requests.reasons)
            stop_requests.restore()
            if interrupted:
                return fail("interrupted", EXIT_INTERRUPTED)
        try:
            status: int = command(args)
        except CommandError as exc:
            return fail(str(exc), exc.status)
        return status
    finally:
        if program:
            stop_requests.ignore()
        elif installed_here:
            stop_requests.restore()
