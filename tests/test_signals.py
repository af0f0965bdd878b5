"""A stop signal to ``anyecho serve`` at any moment: a quiet exit with status 0.

Each moment is reached by waiting for what the process prints, never by sleeping:
a signal that is pending when the program starts (it starts blocked, and the
program unblocks it), one sent while the modules load or the event loop starts
(``-X importtime`` reports each import as it completes), one while serving, and
one that comes after the server has stopped, during the teardown. (Before the
entry point's first line has run, the interpreter's own defaults apply.)
"""

from __future__ import annotations

import signal

import pytest

from .processes import ServerProcess, echo_once

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
SIGNAL_IDS = ["INT", "TERM", "HUP"]
MOMENTS = ["pending-at-start", "importing", "loop-starting", "serving", "stopped"]


def assert_quiet_stop(server: ServerProcess) -> str:
    status, stderr = server.finish()
    assert status == 0, stderr
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr
    return stderr


@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("signum", SIGNALS, ids=SIGNAL_IDS)
def test_stop_signal_at_any_moment(
    run: type[ServerProcess], backend_name: str, signum: signal.Signals, moment: str
) -> None:
    args = ("serve", "--port", "0", "--backend", backend_name)
    if moment == "pending-at-start":
        server = run(*args, blocked=[signum])
    elif moment in ("importing", "loop-starting"):
        server = run(*args, python_options=["-X", "importtime"])
        if moment == "importing":
            # The first import after the entry point's handlers are in place.
            server.wait_for(r"\|\s+argparse$")
        else:
            server.wait_for(r"\|\s+anyio\._core\._sockets$")
    else:
        server = run(*args)
        port = server.wait_port()
        assert echo_once(port, b"ping") == b"ping"
        if moment == "stopped":
            server.proc.send_signal(signal.SIGTERM)
            server.wait_for("server stopped")
    server.proc.send_signal(signum)
    stderr = assert_quiet_stop(server)
    if moment == "serving":
        assert f"{signum.name}: stopping gracefully" in stderr


@pytest.mark.parametrize("signum", SIGNALS, ids=SIGNAL_IDS)
def test_signals_in_a_row_while_starting(
    run: type[ServerProcess], backend_name: str, signum: signal.Signals
) -> None:
    """Two signals before the server listens: still one quiet stop."""
    server = run("serve", "--port", "0", "--backend", backend_name, blocked=SIGNALS)
    server.proc.send_signal(signum)
    server.proc.send_signal(signal.SIGTERM)
    assert_quiet_stop(server)


def test_bench_still_takes_ctrl_c_as_an_interrupt(run: type[ServerProcess]) -> None:
    """The stop handling is for ``serve``: other commands keep KeyboardInterrupt."""
    bench = run(
        "bench",
        *("--servers", "anyecho-asyncio", "--sizes", "64", "--connections", "1"),
        *("--duration", "60", "--warmup", "0.1", "--repeat", "1", "--no-pin"),
    )
    bench.wait_for(r"1 runs, about")
    bench.proc.send_signal(signal.SIGINT)
    status, stderr = bench.finish()
    assert status == 130, stderr
    assert "Traceback" not in stderr
