"""``anyecho serve --workers``: the supervisor, over real processes and signals.

Workers are killed by pid; every wait is for a log line (with a timeout as the
bound), never a sleep. ``finish()`` reads stderr until every process that shares
it has exited, so it also proves that no worker is left behind.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from anyecho.cli._workers import MAX_FAILED_STARTS, MAX_RESTART_DELAY, restart_delay

from .processes import ServerProcess, echo_once

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="--workers needs SO_REUSEPORT"
)

LISTENING = r"worker (\d+) \(pid (\d+)\) is listening"


def workers(
    run: type[ServerProcess], backend: str, count: int, *args: str
) -> ServerProcess:
    return run(
        "serve", "--port", "0", "--workers", str(count), "--backend", backend, *args
    )


def worker_pids(stderr: str) -> set[int]:
    return {int(pid) for pid in re.findall(r"anyecho\[(\d+)\]: serving", stderr)}


def assert_clean(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr


def test_restart_delay_doubles_up_to_a_cap() -> None:
    delays = [restart_delay(deaths) for deaths in range(1, 12)]
    assert delays[0] == 0
    assert delays[1] > 0
    assert all(
        b == min(2 * a, MAX_RESTART_DELAY) for a, b in itertools.pairwise(delays[1:])
    )
    assert delays[-1] == MAX_RESTART_DELAY


def test_workers_that_served_are_replaced_without_end(
    run: type[ServerProcess], backend_name: str
) -> None:
    """Killing more listening workers than the start-up limit: the port stays up."""
    server = workers(run, backend_name, 2)
    port = server.wait_port()
    kills = MAX_FAILED_STARTS + 2
    for _ in range(kills):
        pid = int(server.wait_for(LISTENING).group(2))
        os.kill(pid, signal.SIGKILL)
        server.wait_for(rf"\(pid {pid}\) was killed by SIGKILL; starting a new one")
    server.wait_for(LISTENING)  # a replacement serves
    assert echo_once(port, b"still here") == b"still here"
    server.proc.send_signal(signal.SIGTERM)
    status, stderr = server.finish()
    assert status == 0, stderr
    assert_clean(stderr)
    assert "giving up" not in stderr
    # Quick deaths of one slot wait longer and longer before the replacement.
    assert "starting a new one in 0.1s" in stderr
    assert "starting a new one in 0.2s" in stderr


def test_workers_that_never_listen_end_the_service(
    run: type[ServerProcess], backend_name: str, tmp_path: Path
) -> None:
    # Each worker (and only a worker) exits at once, as when it cannot start.
    (tmp_path / "sitecustomize.py").write_text(
        "import os, sys\nif '--ready-fd' in sys.argv:\n    os._exit(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    server = run(
        "serve", "--port", "0", "--workers", "2", "--backend", backend_name, env=env
    )
    status, stderr = server.finish()
    assert status == 1, stderr
    assert_clean(stderr)
    [line] = [line for line in stderr.splitlines() if "giving up" in line]
    assert "exited with status 3 before it listened" in line
    assert f"{MAX_FAILED_STARTS} workers in a row failed before they listened" in line
    assert stderr.count("before it listened") == MAX_FAILED_STARTS


def test_stop_right_after_a_worker_died(
    run: type[ServerProcess], backend_name: str
) -> None:
    """A stop that races a worker's replacement stops the replacement too."""
    for _ in range(3):
        server = workers(run, backend_name, 2)
        pid = int(server.wait_for(LISTENING).group(2))
        server.wait_for(LISTENING)
        os.kill(pid, signal.SIGKILL)
        server.proc.send_signal(signal.SIGTERM)
        status, stderr = server.finish()
        assert status == 0, stderr
        assert_clean(stderr)
        assert "all workers stopped" in stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_signal_while_workers_start(
    run: type[ServerProcess], backend_name: str, signum: signal.Signals
) -> None:
    server = workers(run, backend_name, 8)
    server.wait_for(r"starting 8 workers")
    server.proc.send_signal(signum)
    status, stderr = server.finish()
    assert status == 0, stderr
    assert_clean(stderr)
    assert f"{signum.name}: stopping all workers gracefully" in stderr


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGHUP], ids=["KILL", "HUP"])
def test_no_worker_outlives_the_supervisor(
    run: type[ServerProcess], backend_name: str, signum: signal.Signals
) -> None:
    server = workers(run, backend_name, 2)
    port = server.wait_port()
    server.wait_for(LISTENING)
    server.wait_for(LISTENING)
    server.proc.send_signal(signum)
    status, stderr = server.finish()  # every worker has exited, too
    assert_clean(stderr)
    pids = worker_pids(stderr)
    assert len(pids) == 2, stderr
    if signum == signal.SIGKILL:
        assert status == -signal.SIGKILL
        assert stderr.count("supervisor exited: stopping gracefully") == 2, stderr
    else:
        assert status == 0, stderr
        assert "SIGHUP: stopping all workers gracefully" in stderr
    # Nothing holds the port: a server without SO_REUSEPORT can take it.
    again = run("serve", "--port", str(port), "--backend", backend_name)
    assert again.wait_port() == port
    assert echo_once(port, b"alone") == b"alone"
    again.proc.send_signal(signal.SIGTERM)
    assert again.finish()[0] == 0


def test_reserved_port_is_shared_by_a_worker_on_every_interface() -> None:
    """The supervisor holds 0.0.0.0 and :: apart, as a worker binds them."""
    import socket

    from anyecho._errors import ListenError
    from anyecho._sockets import bind_inet, resolve_now
    from anyecho.cli._workers import reserve_port

    port, held = reserve_port(None, 0)
    try:
        families = {sock.family for sock in held}
        targets = resolve_now(None, port, socket.SOCK_STREAM)
        assert families == {family for family, _ in targets}
        worker = bind_inet(
            targets, socket.SOCK_STREAM, port, backlog=16, reuse_port=True
        )
        try:
            assert {sock.getsockname()[1] for sock in worker} == {port}
            # A server without SO_REUSEPORT cannot take the port meanwhile.
            with pytest.raises(ListenError, match="in use"):
                bind_inet(targets, socket.SOCK_STREAM, port, backlog=16)
        finally:
            for sock in worker:
                sock.close()
    finally:
        for sock in held:
            sock.close()


def test_one_worker_is_one_worker(run: type[ServerProcess]) -> None:
    server = workers(run, "asyncio", 1)
    server.wait_for(r"starting 1 worker \(supervisor")
    server.wait_port()
    server.proc.send_signal(signal.SIGTERM)
    status, stderr = server.finish()
    assert status == 0, stderr
    assert "SIGTERM: stopping all workers gracefully" in stderr
