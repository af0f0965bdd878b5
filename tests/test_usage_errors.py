"""Options that ``anyecho serve`` refuses with one line and status 2."""

from __future__ import annotations

import os
import sys

import pytest

from anyecho.cli._workers import max_workers

from .processes import one_line_error


@pytest.mark.parametrize("host", ["", " "])
def test_empty_host_is_an_error(host: str) -> None:
    # An unset $HOST must not turn into "every interface".
    status, line = one_line_error("serve", "--host", host, "--port", "0")
    assert status == 2
    assert f"invalid host {host!r}" in line
    assert "'*' for every interface" in line


def test_empty_host_among_others_is_an_error() -> None:
    status, line = one_line_error(
        "serve", "--host", "127.0.0.1", "--host", "", "--port", "0"
    )
    assert status == 2
    assert "invalid host ''" in line


def test_worker_count_is_bounded() -> None:
    assert max_workers() == max(64, 8 * (os.cpu_count() or 1))
    status, line = one_line_error("serve", "--port", "0", "--workers", "100000")
    assert status == 2
    if sys.platform.startswith("linux"):
        assert f"--workers 100000: at most {max_workers()}" in line
    else:
        assert "SO_REUSEPORT" in line


@pytest.mark.parametrize("argv", [["--work", "2"], ["--po", "0"], ["--max-conn", "5"]])
def test_options_are_never_abbreviated(argv: list[str]) -> None:
    # A worker gets every option but --workers and --port, spelt out: an
    # abbreviation would reach every worker, each of which would start workers.
    status, line = one_line_error("serve", *argv)
    assert status == 2
    assert f"unrecognized arguments: {' '.join(argv)}" in line


def test_a_worker_cannot_start_workers() -> None:
    read, write = os.pipe()
    try:
        status, line = one_line_error(
            "serve", "--port", "0", "--workers", "2", "--supervisor-fd", str(read)
        )
    finally:
        os.close(read)
        os.close(write)
    assert status == 2
    assert "a worker cannot start workers of its own" in line
