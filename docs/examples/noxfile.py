"""Run the test suite on every Python and every event loop: ``nox``."""

from __future__ import annotations

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
BACKENDS = ["asyncio", "uvloop", "trio"]


@nox.session(python=PYTHONS)
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """The tests on one Python and one event loop."""
    session.install(".", "anyecho[test]")
    session.run("pytest", *session.posargs, env={"ANYIO_BACKENDS": backend})
