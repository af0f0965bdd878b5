"""``anyecho serve --workers N``: N server processes sharing a port.

Each worker is an ordinary ``anyecho serve --reuse-port`` process; the kernel
spreads connections over them (``SO_REUSEPORT``, Linux). The supervisor:

- picks the port once (for ``--port 0``) and holds it, bound but not listening,
  so that every worker gets the same one;
- starts the workers in their own sessions, so a Ctrl-C in the terminal reaches
  the supervisor only, and turns each SIGINT, SIGTERM or SIGHUP it gets into one
  SIGTERM per worker (a first signal drains, a second stops at once, as for one
  server);
- learns from each worker, through a pipe, once it listens; a worker that dies
  after that is replaced, after a delay that doubles with each quick death of
  the same slot (from none up to :data:`MAX_RESTART_DELAY`) and starts again
  from none once a worker has served for :data:`HEALTHY_AFTER` seconds. Only
  workers that die before they ever listen, :data:`MAX_FAILED_STARTS` in a row,
  end the service (status 1);
- holds the write end of a pipe that every worker watches: when the supervisor
  dies, however (``kill -9`` included), the pipe ends and the workers stop.

Signals never race with the work: the handler only records the request
(``_signals``), and the loop acts on it. A worker is started with the stop
signals blocked, so one forwarded to it while it starts waits until its own
handler is installed; and no worker is started once a stop was requested.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._signals import STOP_SIGNALS, stop_requests
from .._stats import ServerState, StatsSnapshot, combine
from ._exit import CommandError

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector

    from .._backends import Backend
    from .._config import ServerConfig

__all__ = [
    "check_workers",
    "max_workers",
    "reserve_port",
    "supervise",
    "supervise_serve",
    "worker_argv",
]

logger = logging.getLogger("anyecho")

#: Workers in a row that exit before they listen, after which the supervisor
#: gives up. A worker that listened resets the count.
MAX_FAILED_STARTS = 5
#: The delay before the second replacement in a row for one slot (the first is
#: immediate); it doubles with each further one, up to :data:`MAX_RESTART_DELAY`.
RESTART_DELAY = 0.1
MAX_RESTART_DELAY = 10.0
#: A worker that listened this long before it died was healthy: its slot's next
#: replacement is immediate again.
HEALTHY_AFTER = 10.0


def max_workers() -> int:
    """The most ``--workers`` accepted: 8 per CPU, and at least 64."""
    return max(64, 8 * (os.cpu_count() or 1))


def restart_delay(deaths: int) -> float:
    """Seconds to wait before replacing a slot's ``deaths``-th quick death."""
    if deaths <= 1:
        return 0.0
    return min(RESTART_DELAY * 2.0 ** (deaths - 2), MAX_RESTART_DELAY)


def check_reuse_port() -> None:
    """Raise :exc:`ValueError` where several processes cannot share a port."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError(
            "--workers needs SO_REUSEPORT load balancing, which only Linux provides"
        )


def check_workers(config: ServerConfig, count: int) -> None:
    """Raise :exc:`ValueError` unless ``count`` workers can serve ``config``."""
    check_reuse_port()
    if count > max_workers():
        raise ValueError(
            f"--workers {count}: at most {max_workers()} on this machine "
            f"(8 per CPU, at least 64)"
        )
    if config.unix:
        raise ValueError("--workers cannot share a Unix socket: drop --unix")
    # Given sockets (--fd, socket activation) are shared: every worker accepts
    # from the same ones.


def reserve_port(
    hosts: Sequence[str] | None, port: int
) -> tuple[int, list[socket.socket]]:
    """Bind (without listening) ``port`` on every host, with ``SO_REUSEPORT``.

    The addresses and the binding are the server's own (:mod:`anyecho._sockets`),
    so that each worker binds exactly what is held here. With ``port == 0`` the
    first bind picks a free port and the others take the same. The returned
    sockets hold the port for the supervisor's lifetime; not listening, they
    receive no connections.

    :raises anyecho.ListenError: if a host does not resolve or a bind fails
    """
    from .._sockets import bind_inet, resolve_now

    targets = resolve_now(hosts, port, socket.SOCK_STREAM)
    held = bind_inet(targets, socket.SOCK_STREAM, port, backlog=None, reuse_port=True)
    return held[0].getsockname()[1], held


#: How often each worker sends the supervisor its counters, when it serves
#: metrics (seconds): a scrape is at most this old.
REPORT_INTERVAL = 0.5
#: The most bytes of unfinished report kept from a worker.
_MAX_REPORT = 1 << 16


@dataclass
class _Worker:
    slot: int
    process: subprocess.Popen[bytes]
    ready: int  # read end of the pipe the worker reports listening on
    listening_since: float | None = None
    #: what the worker sent that is not a whole line yet, and its last counters
    pending: bytes = b""
    stats: StatsSnapshot | None = None

    def describe(self) -> str:
        return f"worker {self.slot} (pid {self.process.pid})"


class _Totals:
    """The service's counters, summed over its workers, for the metrics thread.

    Each worker's last report counts while it lives; when it exits, its last
    report joins the totals of the workers gone (its open connections less: they
    have closed), so that no counter ever goes down when a worker is replaced.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.gone = StatsSnapshot(state="stopped")
        self.live: dict[int, StatsSnapshot] = {}  # by ready pipe
        self.state: ServerState = "starting"
        self.listening = 0
        self.replaced = 0

    def report(self, key: int, stats: StatsSnapshot) -> None:
        with self.lock:
            self.live[key] = stats

    def retire(self, key: int) -> None:
        with self.lock:
            last = self.live.pop(key, None)
            if last is not None:
                last = dataclasses.replace(
                    last, active_connections=0, datagrams_held=0, open_by_source={}
                )
                self.gone = combine([self.gone, last], "stopped")

    def snapshot(self) -> StatsSnapshot:
        with self.lock:
            return combine([self.gone, *self.live.values()], self.state)


class _Supervisor:
    def __init__(
        self,
        command: list[str],
        count: int,
        totals: _Totals | None = None,
        fds: Sequence[int] = (),
    ) -> None:
        self.command = command
        self.count = count
        self.totals = totals
        #: listening sockets every worker is given (and serves)
        self.fds = tuple(fds)
        self.workers: dict[int, _Worker] = {}  # by ready pipe
        self.deaths = dict.fromkeys(range(1, count + 1), 0)  # quick deaths per slot
        self.due: dict[int, float] = {}  # slot -> when to start its worker
        self.handled = 0  # stop requests acted on
        self.failed_starts = 0
        self.gave_up = False
        self.unclean_exits = 0
        self.selector = selectors.DefaultSelector()
        # The supervisor holds the only write end: the workers see the pipe end
        # when it exits, however it dies.
        self.lifeline, self.lifeline_end = os.pipe()

    @property
    def stopping(self) -> bool:
        return self.handled > 0 or self.gave_up

    def start(self, slot: int) -> None:
        """Start the worker for ``slot``, unless a stop was requested."""
        try:
            ready, ready_end = os.pipe()
        except OSError as exc:  # out of file descriptors
            self.failed(slot, f"worker {slot} could not start ({exc})")
            return
        # Blocked here, the stop signals stay blocked in the child until its
        # handler is installed; and none is handled between the check below
        # and the registration of the new worker.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            if stop_requests.reasons or self.gave_up:
                os.close(ready)
                return
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [
                    *self.command,
                    *("--ready-fd", str(ready_end)),
                    *("--supervisor-fd", str(self.lifeline)),
                ],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=(ready_end, self.lifeline, *self.fds),
            )
        except OSError as exc:
            os.close(ready)
            self.failed(slot, f"worker {slot} could not start ({exc})")
            return
        finally:
            os.close(ready_end)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        worker = _Worker(slot, process, ready)
        self.workers[ready] = worker
        self.selector.register(ready, selectors.EVENT_READ, worker)

    def act_on_requests(self) -> None:
        """Forward each new stop request to every worker as a SIGTERM."""
        while self.handled < len(stop_requests.reasons):
            reason = stop_requests.reasons[self.handled]
            self.handled += 1
            how = "gracefully" if self.handled == 1 else "now"
            logger.info("%s: stopping all workers %s", reason, how)
            self.due.clear()
            self.signal_workers()
            self.update_totals()

    def signal_workers(self) -> None:
        for worker in self.workers.values():
            # Not reaped yet, so the pid is still this worker's.
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)

    def on_readable(self, worker: _Worker) -> None:
        try:
            data = os.read(worker.ready, _MAX_REPORT)
        except OSError:
            data = b""
        if data:
            lines = (worker.pending + data).split(b"\n")
            worker.pending = lines.pop()
            if len(worker.pending) > _MAX_REPORT:
                worker.pending = b""
            for line in lines:
                self.on_message(worker, line)
            return
        # End of file: the worker has exited (or is exiting).
        self.selector.unregister(worker.ready)
        os.close(worker.ready)
        del self.workers[worker.ready]
        if self.totals is not None:
            self.totals.retire(worker.ready)
        self.update_totals()
        self.reap(worker, worker.process.wait())

    def on_message(self, worker: _Worker, line: bytes) -> None:
        """One line from a worker: ``L`` (listening), or ``S`` and its counters."""
        if line == b"L" and worker.listening_since is None:
            worker.listening_since = time.monotonic()
            self.failed_starts = 0
            logger.info("%s is listening", worker.describe())
            self.update_totals()
        elif line.startswith(b"S") and self.totals is not None:
            try:
                stats = StatsSnapshot.from_json(line[1:])
            except ValueError:
                return
            self.totals.report(worker.ready, stats)

    def update_totals(self) -> None:
        """The service's state, as the metrics thread reports it."""
        totals = self.totals
        if totals is None:
            return
        listening = sum(w.listening_since is not None for w in self.workers.values())
        with totals.lock:
            totals.listening = listening
            if self.stopping:
                totals.state = "draining"
            elif listening:
                totals.state = "serving"
            else:
                totals.state = "starting"

    def reap(self, worker: _Worker, code: int) -> None:
        if self.stopping:
            # Killed from outside (SIGTERM before its handler was installed,
            # SIGKILL): the stop goes on as if it had stopped. A worker that
            # failed (an error status, a crash) makes the supervisor's exit
            # status 1.
            if code != 0:
                logger.warning("%s exited with status %d", worker.describe(), code)
            if code not in (0, -signal.SIGTERM, -signal.SIGKILL):
                self.unclean_exits += 1
            return
        how = (
            f"was killed by {signal.Signals(-code).name}"
            if code < 0
            else f"exited with status {code}"
        )
        if worker.listening_since is None:
            self.failed(worker.slot, f"{worker.describe()} {how} before it listened")
            return
        if time.monotonic() - worker.listening_since >= HEALTHY_AFTER:
            self.deaths[worker.slot] = 0
        self.replace(worker.slot, f"{worker.describe()} {how}")

    def failed(self, slot: int, what: str) -> None:
        """A worker failed before it listened: replace it, or give up."""
        self.failed_starts += 1
        if self.failed_starts >= MAX_FAILED_STARTS:
            logger.error(
                "%s; %d workers in a row failed before they listened: giving up, "
                "stopping all workers",
                what,
                self.failed_starts,
            )
            self.gave_up = True
            self.due.clear()
            self.signal_workers()
            return
        self.replace(slot, what)

    def replace(self, slot: int, what: str) -> None:
        if self.totals is not None:
            with self.totals.lock:
                self.totals.replaced += 1
        self.deaths[slot] += 1
        delay = restart_delay(self.deaths[slot])
        when = f" in {delay:g}s" if delay else ""
        logger.error("%s; starting a new one%s", what, when)
        self.due[slot] = time.monotonic() + delay

    def start_due(self) -> None:
        now = time.monotonic()
        for slot, when in sorted(self.due.items(), key=lambda item: item[1]):
            if when > now or self.stopping or stop_requests.reasons:
                break
            del self.due[slot]
            self.start(slot)

    def run(self) -> int:
        wakeup = stop_requests.wakeup_fd()
        self.selector.register(wakeup, selectors.EVENT_READ, None)
        try:
            now = time.monotonic()
            self.due = dict.fromkeys(range(1, self.count + 1), now)
            while True:
                self.act_on_requests()
                self.start_due()
                self.act_on_requests()  # requests that came in while starting
                if not self.workers and not self.due:
                    break
                timeout = None
                if self.due:
                    timeout = max(0.0, min(self.due.values()) - time.monotonic())
                for key, _ in self.selector.select(timeout):
                    if key.data is None:
                        stop_requests.drain()
                    else:
                        self.on_readable(key.data)
        finally:
            self.selector.close()
            os.close(self.lifeline)
            os.close(self.lifeline_end)
        logger.info("all workers stopped")
        return 1 if self.gave_up or self.unclean_exits else 0


def supervise(
    worker_args: Sequence[str],
    count: int,
    backend: Backend | None = None,
    metrics: tuple[str, int] | None = None,
    fds: Sequence[int] = (),
) -> int:
    """Run ``count`` copies of ``anyecho serve WORKER_ARGS`` until stopped, each
    given the descriptors ``fds``.

    With ``metrics``, serve the whole service's metrics there, on ``backend``
    in a thread of its own, from the counters the workers report.
    """
    command = [sys.executable, "-m", "anyecho", "serve", *worker_args]

    def starting() -> None:
        logger.info(
            "starting %d worker%s (supervisor pid %d)",
            count,
            "" if count == 1 else "s",
            os.getpid(),
        )

    stop_requests.install()
    if metrics is None:
        starting()
        return _Supervisor(command, count, fds=fds).run()
    command += ["--report-interval", str(REPORT_INTERVAL)]
    totals = _Totals()
    with _serving_metrics(totals, backend, metrics):
        starting()
        try:
            return _Supervisor(command, count, totals, fds).run()
        finally:
            with totals.lock:
                totals.state = "stopped"


@contextlib.contextmanager
def _serving_metrics(
    totals: _Totals, backend: Backend | None, address: tuple[str, int]
) -> Iterator[None]:
    """Serve the service's metrics from a thread (an event loop of its own)."""
    from anyio.from_thread import start_blocking_portal

    from ..metrics import serve_metrics

    name, options = (
        ("asyncio", {})
        if backend is None
        else (
            backend.anyio_backend,
            backend.options,
        )
    )
    host, port = address
    serve = functools.partial(
        serve_metrics,
        totals.snapshot,
        host=host,
        port=port,
        collectors=[_workers_collector(totals)],
    )
    with start_blocking_portal(name, options) as portal:
        try:
            future, _ = portal.start_task(serve)
        except OSError as exc:
            raise CommandError(str(exc)) from exc
        try:
            yield
        finally:
            future.cancel()


def _workers_collector(totals: _Totals) -> Collector:
    """The supervisor's own metrics: its workers."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector

    class WorkersCollector(Collector):
        def collect(self) -> Iterator[Metric]:
            with totals.lock:
                listening, replaced = totals.listening, totals.replaced
            workers = GaugeMetricFamily(
                "anyecho_workers", "Worker processes listening."
            )
            workers.add_metric([], listening)
            yield workers
            restarts = CounterMetricFamily(
                "anyecho_worker_restarts", "Workers replaced after they exited."
            )
            restarts.add_metric([], replaced)
            yield restarts

    return WorkersCollector()


def worker_argv(
    argv: Sequence[str], port: int | None, fds: Sequence[int] = ()
) -> list[str]:
    """The serve options for one worker: these, less --workers and --metrics (the
    supervisor's), on ``port`` (with ``SO_REUSEPORT``), or on the given sockets
    ``fds``."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in {"--workers", "--port", "--metrics", "--fd"}:
            skip = "=" not in arg
            continue
        kept.append(arg)
    if fds:
        return [*kept, *(f"--fd={fd}" for fd in fds)]
    return [*kept, "--port", str(port), "--reuse-port"]


def supervise_serve(
    argv: Sequence[str],
    config: ServerConfig,
    count: int,
    backend: Backend | None = None,
    metrics: tuple[str, int] | None = None,
) -> int:
    """``anyecho serve ARGV --workers COUNT``: the port held, the workers run.

    With given sockets (``config.fds``) nothing is bound: each worker gets
    them, and the kernel hands each connection to one of the workers
    accepting from them.
    """
    if config.fds:
        args = worker_argv(argv, None, config.fds)
        return supervise(args, count, backend, metrics, config.fds)
    try:
        port, held = reserve_port(config.hosts, config.port or 0)
    except OSError as exc:
        raise CommandError(str(exc)) from exc
    try:
        return supervise(worker_argv(argv, port), count, backend, metrics)
    finally:
        for sock in held:
            sock.close()
