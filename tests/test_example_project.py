"""The downstream project in ``docs/examples/lineclient`` passes its own tests.

It is run as its own project would run it: pytest in its directory, with its
own ``pyproject.toml`` and ``conftest.py``, finding anyecho's fixtures through
the installed plugin, on asyncio, uvloop and Trio.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .utils import require_module

PROJECT = Path(__file__).resolve().parent.parent / "docs" / "examples" / "lineclient"


def test_the_example_project_passes_its_tests() -> None:
    backends = ["asyncio", "trio", "uvloop"]
    for module in ("trio", "uvloop"):
        require_module(module, module)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--rootdir", str(PROJECT)],
        cwd=PROJECT,
        env={**os.environ, "ANYIO_BACKENDS": ",".join(backends)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    tests = len(
        re.findall(
            r"^async def test_",
            (PROJECT / "tests" / "test_lineclient.py").read_text(),
            re.M,
        )
    )
    assert f"{tests * len(backends)} passed" in result.stdout, output
