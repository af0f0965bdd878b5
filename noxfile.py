"""Test matrix: nox runs everything; nox -l lists the sessions.

- tests-3.12(backend='trio'): one Python, one backend. Every Python from 3.10 to
  3.13 times asyncio, uvloop and trio. Interpreters missing here are skipped, except
  under CI=true, where a missing one fails the run.
- coverage: combines what the test sessions measured, and fails under the floor.
- lint: ruff check, ruff format --check, and the import contracts (lint-imports).
- typecheck: mypy --strict over the package, the tests and this file.
- docs: the Sphinx site, warnings as errors, and its code examples run.

The tools come from pyproject.toml's dependency groups, so they are written once.
"""

from __future__ import annotations

import glob
import os

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|venv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = bool(os.environ.get("CI"))
nox.options.sessions = ["tests", "coverage", "lint", "typecheck", "docs"]

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
BACKENDS = ["asyncio", "uvloop", "trio"]

PYPROJECT = nox.project.load_toml("pyproject.toml")


def group(*names: str) -> tuple[str, ...]:
    """The requirements of these dependency groups of pyproject.toml."""
    return nox.project.dependency_groups(PYPROJECT, *names)


@nox.session(python=PYTHONS)
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """The test suite on one Python and one backend (pytest --backend), measured.

    Tests that do not depend on the backend (option parsing, the bench's own
    logic) run in the asyncio session only, so the matrix repeats nothing.
    """
    session.install(".[trio,uvloop,bench,metrics,control]", *group("test"))
    args = ["--backend", backend]
    if backend != "asyncio":
        args.append("--backend-tests-only")
    session.run("coverage", "run", "-m", "pytest", *args, *session.posargs)


@nox.session(python="3.11")
def coverage(session: nox.Session) -> None:
    """Combine the test sessions' coverage; fail under the floor in pyproject.toml.

    Run it after the test sessions (nox alone does): it reports on whatever they
    measured, so after tests-3.11 alone it covers Python 3.11 only. With no new
    data it reports the last combined figures again.
    """
    session.install(*group("coverage"))
    if glob.glob(".coverage.*"):
        session.run("coverage", "combine")
    elif not os.path.exists(".coverage"):
        session.error("no coverage data: run the test sessions first")
    session.run("coverage", "report")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting; lint-imports: the layers of the package."""
    session.install(*group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, the tests and this file."""
    session.install(".[trio,uvloop,bench,metrics,control]", *group("typecheck"))
    session.run("mypy", *session.posargs)


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the HTML docs with warnings as errors; run the docs' code examples.

    The examples install what users do: the test extra (the pytest plugin's needs)
    and the bench extra.
    """
    session.install(".[test,bench,metrics,control]", *group("docs"))
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
