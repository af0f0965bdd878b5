"""Run every AnyIO test on each event loop named in ``ANYIO_BACKENDS``.

``ANYIO_BACKENDS=trio pytest`` runs the tests on Trio only; without the variable
they run on asyncio and on Trio. ``uvloop`` means asyncio on uvloop.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

BACKENDS = os.environ.get("ANYIO_BACKENDS", "asyncio,trio").split(",")


@pytest.fixture(scope="module", params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[str, dict[str, Any]]:
    """The event loop for AnyIO tests (and anyecho's fixtures) to run on."""
    if request.param == "uvloop":
        import uvloop

        return "asyncio", {"loop_factory": uvloop.new_event_loop}
    name: str = request.param
    return name
