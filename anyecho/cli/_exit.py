"""Exit statuses, and the one line a command prints when it fails.

A command that fails raises :exc:`CommandError`; :func:`anyecho.cli._main.main`
prints it as ``anyecho: error: MESSAGE`` and exits with its status. Every error
of every command has that one prefix: usage errors (the parsers' too) and
failures while running alike. Standard library only.
"""

from __future__ import annotations

import sys

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "PROG",
    "CommandError",
    "fail",
]

#: The program's name, the prefix of every error line.
PROG = "anyecho"

#: Exit status for errors in the command line itself (as argparse uses).
EXIT_USAGE = 2
#: Exit status for errors while running (address in use, ...).
EXIT_FAILURE = 1
#: Exit status of a command other than ``serve`` stopped by a signal as it began
#: (as a shell reports SIGINT).
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """A failure to report in one line, with the exit status to end with.

    Raise it ``from`` the error behind it: the cause stays on the exception for
    whoever calls the command from Python, while the command line prints only
    ``str()``.
    """

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


def fail(message: str, status: int = EXIT_FAILURE) -> int:
    """Print ``anyecho: error: MESSAGE`` on stderr and return ``status``."""
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return status
