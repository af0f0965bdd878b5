"""Every async test runs on asyncio, asyncio+uvloop and Trio.

``pytest --backend trio`` (repeatable) narrows the run to some backends; that is how
the nox sessions split the matrix. A backend whose package is missing is skipped
locally but fails under ``CI=true``: CI must never pass by running less.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .processes import ServerProcess
from .utils import require_module

BACKEND_NAMES = ("asyncio", "uvloop", "trio")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        action="append",
        choices=BACKEND_NAMES,
        help="run the backend-parameterized tests on this backend only (repeatable)",
    )
    parser.addoption(
        "--backend-tests-only",
        action="store_true",
        help="skip the tests that do not depend on the backend",
    )


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    wanted = config.getoption("--backend") or BACKEND_NAMES
    generic = not config.getoption("--backend-tests-only")
    selected: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("backend_name") if callspec else None
        keep = name in wanted if name is not None else generic
        (selected if keep else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@pytest.fixture(scope="module", params=BACKEND_NAMES)
def backend_name(request: pytest.FixtureRequest) -> str:
    """The ``anyecho serve --backend`` name under test."""
    name: str = request.param
    if name != "asyncio":
        require_module(name, name)
    return name


@pytest.fixture(scope="module")
def anyio_backend(backend_name: str) -> tuple[str, dict[str, Any]]:
    if backend_name == "uvloop":
        import uvloop

        return ("asyncio", {"loop_factory": uvloop.new_event_loop})
    return (backend_name, {})


@pytest.fixture
def sock_path() -> Iterator[Path]:
    """A path for a Unix socket, in a fresh directory removed afterwards.

    Unix socket paths are limited to ~100 bytes; pytest's ``tmp_path`` can be longer.
    """
    with tempfile.TemporaryDirectory(prefix="anyecho-") as directory:
        yield Path(directory) / "echo.sock"


@pytest.fixture
def run() -> Iterator[type[ServerProcess]]:
    """Start ``python -m anyecho ARGS`` processes; all are killed at teardown."""
    started: list[ServerProcess] = []

    class Tracked(ServerProcess):
        def __init__(self, *args: str, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    yield Tracked
    for process in started:
        process.kill()
