"""Test matrix: ``nox`` runs everything; ``nox -l`` lists the sessions.

- ``tests-3.12(backend='trio')``: one Python, one backend. Every Python from 3.10 to
  3.13 times asyncio, uvloop and trio. Interpreters missing here are skipped, except
  under ``CI=true``, where a missing one fails the run.
- ``lint``: ruff check and ruff format --check.
- ``typecheck``: mypy --strict over the package, the tests and this file.
- ``docs``: the Sphinx site, warnings as errors, and its code examples run.
"""

from __future__ import annotations

import os

import nox

nox.needs_version = ">=2024.4.15"
nox.options.default_venv_backend = "uv|venv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = bool(os.environ.get("CI"))
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
BACKENDS = ["asyncio", "uvloop", "trio"]


@nox.session(python=PYTHONS)
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """The test suite on one Python and one backend (``--backend`` for pytest).

    Tests that do not depend on the backend (option parsing, the bench's own
    logic) run in the ``asyncio`` session only, so the matrix repeats nothing.
    """
    session.install(".[test,bench]")
    args = ["--backend", backend]
    if backend != "asyncio":
        args.append("--backend-tests-only")
    session.run("pytest", *args, *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, the tests and this file."""
    session.install(".[test,bench]", "mypy>=1.11", "nox>=2024.4.15")
    session.run("mypy", *session.posargs)


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the HTML docs with warnings as errors; run the docs' code examples."""
    session.install(".[docs,test,bench]")
    session.run(
        "sphinx-build",
        "-W",
        "--keep-going",
        "-n",
        "-b",
        "html",
        "docs",
        "docs/_build/html",
    )
    session.run(
        "sphinx-build",
        "-W",
        "--keep-going",
        "-b",
        "doctest",
        "docs",
        "docs/_build/doctest",
    )
