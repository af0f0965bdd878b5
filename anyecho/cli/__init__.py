"""The ``anyecho`` command line.

One module per job: :mod:`._main` (the entry point and its subcommands),
:mod:`._args` (argument types), :mod:`._exit` (exit statuses and the one-line
error), :mod:`._logging`, :mod:`._serve` (``anyecho serve``), :mod:`._faults`
(its fault options) and :mod:`._workers` (the ``--workers`` supervisor).

Importing this package imports nothing: :func:`main` and :func:`build_parser`
load on first use, so that ``anyecho.bench`` may use :mod:`._args` and
:mod:`._exit` without the entry point.
"""

from __future__ import annotations

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

    from ._main import build_parser as build_parser
    from ._main import main as main

__all__ = ["build_parser", "main"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import _main

    return getattr(_main, name)
