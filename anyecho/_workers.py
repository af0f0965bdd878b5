"""``anyecho serve --workers N``: N server processes sharing a port.

Each worker is an ordinary ``anyecho serve --reuse-port`` process; the kernel
spreads connections over them (``SO_REUSEPORT``, Linux). The supervisor:

- picks the port once (for ``--port 0``) and holds it, bound but not listening,
  so that every worker gets the same one;
- starts the workers in their own sessions, so a Ctrl-C in the terminal reaches
  the supervisor only, and forwards each SIGINT/SIGTERM it gets as one SIGTERM
  per worker (a first signal drains, a second stops at once, as for one server);
- reports a worker that dies and starts a new one in its place, unless workers
  keep dying at start-up, which ends the whole service.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

__all__ = ["max_workers", "reserve_port", "supervise"]

logger = logging.getLogger("anyecho")

#: A worker that exits this soon after starting counts as failing to start.
START_GRACE = 2.0
#: Consecutive failed starts after which the supervisor gives up.
MAX_FAILED_STARTS = 5


def max_workers() -> int:
    """The most ``--workers`` accepted: 8 per CPU, and at least 64."""
    return max(64, 8 * (os.cpu_count() or 1))


def check_reuse_port() -> None:
    """Raise :exc:`ValueError` where several processes cannot share a port."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError(
            "--workers needs SO_REUSEPORT load balancing, which only Linux provides"
        )


def reserve_port(
    hosts: Sequence[str] | None, port: int
) -> tuple[int, list[socket.socket]]:
    """Bind (without listening) ``port`` on every host, with ``SO_REUSEPORT``.

    With ``port == 0`` the first bind picks a free port and the others take the
    same. The returned sockets hold the port for the supervisor's lifetime; not
    listening, they receive no connections.
    """
    held: list[socket.socket] = []
    targets: list[tuple[int, str, bool]] = []
    if hosts is None:
        targets.append((socket.AF_INET6, "::", False))
    else:
        for host in hosts:
            infos = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            targets.extend((info[0], str(info[4][0]), True) for info in infos)
    try:
        for family, address, v6only in targets:
            sock = socket.socket(family, socket.SOCK_STREAM)
            held.append(sock)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address, port))
            port = sock.getsockname()[1]
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return port, held


class _Supervisor:
    def __init__(self, command: list[str], count: int) -> None:
        self.command = command
        self.count = count
        self.workers: dict[int, tuple[int, float]] = {}  # pid -> (slot, started)
        self.signals = 0
        self.failed_starts = 0
        self.unclean_exits = 0

    def start(self, slot: int) -> None:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [*self.command, "--worker-id", str(slot)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.workers[process.pid] = (slot, time.monotonic())

    def forward(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        name = signal.Signals(signum).name
        how = "stopping gracefully" if self.signals == 1 else "stopping now"
        logger.info("%s: %s all workers", name, how)
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def reap(self, pid: int, status: int) -> None:
        slot, started = self.workers.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if self.signals:
            # -SIGTERM: the forwarded signal reached a worker still starting up,
            # before it could handle it; it had served nothing, so all is well.
            if code not in (0, -signal.SIGTERM):
                self.unclean_exits += 1
                logger.warning(
                    "worker %d (pid %d) exited with status %d", slot, pid, code
                )
            return
        how = (
            f"was killed by {signal.Signals(-code).name}"
            if code < 0
            else (f"exited with status {code}")
        )
        logger.error("worker %d (pid %d) %s; starting a new one", slot, pid, how)
        if time.monotonic() - started < START_GRACE:
            self.failed_starts += 1
        else:
            self.failed_starts = 0
        if self.failed_starts >= MAX_FAILED_STARTS:
            logger.error("workers keep failing at start-up; stopping")
            self.forward(signal.SIGTERM, None)
            return
        self.start(slot)

    def run(self) -> int:
        previous = {
            signum: signal.signal(signum, self.forward)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for slot in range(1, self.count + 1):
                self.start(slot)
            while self.workers:
                pid, status = os.wait()
                if pid in self.workers:
                    self.reap(pid, status)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        logger.info("all workers stopped")
        gave_up = self.failed_starts >= MAX_FAILED_STARTS
        return 1 if gave_up or self.unclean_exits else 0


def supervise(worker_args: Sequence[str], count: int) -> int:
    """Run ``count`` copies of ``anyecho serve WORKER_ARGS`` until signalled."""
    command = [sys.executable, "-m", "anyecho", "serve", *worker_args]
    logger.info("starting %d workers (supervisor pid %d)", count, os.getpid())
    return _Supervisor(command, count).run()
