"""The servers the benchmark knows, and how to start one and tell that it works.

Every server is a separate process that listens on 127.0.0.1 on a free port and
writes a line holding ``tcp://127.0.0.1:PORT`` once it accepts connections:
anyecho itself (``anyecho serve``) on each backend, and the reference servers of
:mod:`anyecho.bench.baselines`.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import importlib.util
import io
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import anyecho
from anyecho import BackendUnavailableError, resolve_backend

from . import _proc

__all__ = [
    "Interpreter",
    "ServerError",
    "ServerProcess",
    "ServerSpec",
    "custom_spec",
    "free_port",
    "on_python",
    "registry",
    "target_spec",
]

#: The transports, by what ``--transport`` calls them.
TRANSPORT_NAMES = {"tcp": "TCP", "unix": "Unix sockets", "tls": "TLS"}
ALL_TRANSPORTS = tuple(TRANSPORT_NAMES)

#: How long a server may take to start listening (seconds).
START_TIMEOUT = 30.0
#: How long the check echo may take (seconds).
CHECK_TIMEOUT = 5.0
#: What the check sends.
CHECK_DATA = b"anyecho bench: does this come back?\n"

_READY = re.compile(r"(?:tcp|tls)://127\.0\.0\.1:(\d+)")
_ERROR_LINE = re.compile(r"^[\s|+]*((?:\w+\.)*\w+(?:Error|Exception|Exit)\b.*)$")
_FRAME_LINE = re.compile(r'^[\s|+]*File ".*", line \d+, in (\S+)')

#: Bytes that the faulty servers echo correctly on each connection first: a few
#: hundred small messages, so that even a short run hits the fault.
FAULT_AFTER = 10_000

#: How long the stalling server blocks its loop, and how often (seconds).
STALL = 0.15
STALL_EVERY = 0.5

#: Asyncio loops besides the stock one and uvloop that the benchmark tries when
#: their package is installed: module name and loop factory.
EXTRA_LOOPS = {
    "rloop": "new_event_loop",
    "winloop": "new_event_loop",
    "zuvloop": "new_event_loop",
}


class ServerError(Exception):
    """A server could not start, did not echo, or died; ``str()`` says why."""


@dataclass(frozen=True)
class ServerSpec:
    """A server the benchmark can run.

    :param name: what ``--servers`` calls it
    :param description: one line for listings
    :param module: the module that ``python -m`` runs
    :param args: its arguments (``--port 0`` is added)
    :param backend: the loop it runs on, as :func:`anyecho.resolve_backend` names it
    :param hidden: left out unless asked for by name (the faulty servers)
    :param argv: a command of the user's own instead of ``module``: its
        ``{port}`` becomes the port to listen on, ``{python}`` this interpreter
    :param target: a server already running elsewhere, instead of a command:
        its host and port
    :param target_pid: the process id of that server, for its CPU time
    :param python: another interpreter to run ``module`` with (see
        :class:`Interpreter`), or ``None`` for this one
    :param transports: ``"tcp"``, and ``"unix"`` and ``"tls"`` where it takes
        ``--unix PATH`` (to listen on a Unix socket too) and ``--tls-cert FILE``
    """

    name: str
    description: str
    module: str
    args: tuple[str, ...]
    backend: str
    hidden: bool = False
    argv: tuple[str, ...] = ()
    target: tuple[str, int] | None = None
    target_pid: int | None = None
    python: Interpreter | None = None
    transports: tuple[str, ...] = ("tcp",)

    @property
    def command(self) -> list[str]:
        """The command line that starts it (``{port}`` left in a user's own)."""
        if self.target is not None:
            return []
        if self.argv:
            return [arg.replace("{python}", sys.executable) for arg in self.argv]
        if self.python is not None:
            return [self.python.path, "-m", self.module, *self.args, "--port", "0"]
        return _proc.python_command(self.module, *self.args, "--port", "0")

    def _transport_missing(self, transport: str) -> str | None:
        if transport not in self.transports:
            return f"it does not serve {TRANSPORT_NAMES[transport]}"
        if transport == "tls" and importlib.util.find_spec("trustme") is None:
            return "--transport tls needs trustme for its certificates"
        return None

    @property
    def env(self) -> dict[str, str] | None:
        """What to add to its environment."""
        return None if self.python is None else {"PYTHONPATH": self.python.pythonpath}

    def unavailable(self, transport: str = "tcp") -> str | None:
        """Why it cannot run here (a package is missing, or it does not serve
        ``transport``), or ``None``."""
        if (why := self._transport_missing(transport)) is not None:
            return why
        if self.target is not None:
            return None
        if self.argv:
            program = self.command[0]
            found = shutil.which(program) is not None
            return None if found else f"cannot find the program {program!r}"
        if self.python is not None:
            return self.python.missing(self.backend)
        try:
            resolve_backend(self.backend)
        except BackendUnavailableError as exc:
            return str(exc)
        return None


#: The module each backend needs besides anyio, by the start of its name.
_BACKEND_MODULES = {"trio": "trio", "uvloop": "uvloop", "asyncio:": ""}


@dataclass(frozen=True)
class Interpreter:
    """Another Python to run the servers with (``--python``).

    The servers import anyecho from this source tree (``PYTHONPATH``); where that
    interpreter lacks anyio, it is taken from this environment too (it is pure
    Python), while compiled packages (uvloop, ...) must be that interpreter's own.

    :param path: the interpreter
    :param version: its version, such as ``3.12``
    :param pythonpath: what its servers get as ``PYTHONPATH``
    :param note: how anyio was found, for descriptions
    """

    path: str
    version: str
    pythonpath: str
    note: str

    @classmethod
    def probe(cls, path: str) -> Interpreter:
        """Ask the interpreter at ``path`` its version and whether it has anyio.

        :raises ValueError: when it cannot be run, or is older than 3.10
        """
        source = str(Path(anyecho.__file__).resolve().parent.parent)
        found = _ask(path, "import sys; print('%d.%d' % sys.version_info[:2])")
        if found is None or not re.fullmatch(r"\d+\.\d+", found):
            raise ValueError(f"cannot run {path!r} as a Python interpreter")
        major, minor = map(int, found.split("."))
        if (major, minor) < (3, 10):
            raise ValueError(f"{path} is Python {found}: anyecho needs 3.10 or later")
        if _ask(path, "import anyio", pythonpath=source) is not None:
            return cls(path, found, source, "its own anyio")
        purelib = sysconfig.get_paths()["purelib"]
        return cls(path, found, os.pathsep.join([source, purelib]), "anyio from here")

    def missing(self, backend: str) -> str | None:
        """Why a server on ``backend`` cannot run on this interpreter, or ``None``."""
        modules = ["anyio"]
        for prefix, module in _BACKEND_MODULES.items():
            if backend.startswith(prefix):
                modules.append(module or backend.split(":")[1])
        for module in modules:
            if _ask(self.path, f"import {module}", pythonpath=self.pythonpath) is None:
                return (
                    f"{module} is not importable on Python {self.version} ({self.path})"
                )
        return None


@functools.cache
def _ask(path: str, code: str, *, pythonpath: str | None = None) -> str | None:
    """What ``path -c code`` prints, or ``None`` when it fails."""
    env = {**os.environ, "PYTHONPATH": pythonpath} if pythonpath else None
    try:
        done = subprocess.run(  # noqa: S603 - an interpreter the user named
            [path, "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=env,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def on_python(spec: ServerSpec, python: Interpreter) -> ServerSpec:
    """``spec`` run by another interpreter, named ``NAME@VERSION``.

    :raises ValueError: for a server that is no Python module of this package
    """
    if not spec.module or spec.argv or spec.target is not None:
        raise ValueError(f"{spec.name} is not one of the bench's own servers")
    return dataclasses.replace(
        spec,
        name=f"{spec.name}@{python.version}",
        description=f"{spec.description}, on Python {python.version} "
        f"({python.path}, {python.note})",
        python=python,
    )


def _asyncio_loops() -> dict[str, str]:
    """Short loop names mapped to backend names, for every asyncio loop to try
    (an extra loop that is not installed is listed, and runs as unavailable)."""
    loops = {"asyncio": "asyncio", "uvloop": "uvloop"}
    for module, factory in EXTRA_LOOPS.items():
        loops[module] = f"asyncio:{module}:{factory}"
    return loops


def anyecho_spec(backend: str, *extra: str, name: str | None = None) -> ServerSpec:
    """``anyecho serve`` on ``backend``, on 127.0.0.1, with ``extra`` options.

    Every client of a bench comes from 127.0.0.1, so the per-source limit is off.
    """
    return ServerSpec(
        f"anyecho-{name or backend}",
        f"anyecho serve --backend {backend}",
        "anyecho",
        (
            "serve",
            "--host",
            "127.0.0.1",
            "--backend",
            backend,
            "--max-connections-per-source",
            "0",
            *extra,
            "--log-level",
            "info",
        ),
        backend,
        transports=ALL_TRANSPORTS,
    )


def custom_spec(name: str, command: str) -> ServerSpec:
    """A server of the user's own: ``command`` (split as a shell would, but run
    without one) with ``{port}`` and ``{python}`` placeholders.

    :raises ValueError: when the command cannot be split or has no ``{port}``
    """
    argv = tuple(shlex.split(command))
    if not argv:
        raise ValueError("the command is empty")
    if not any("{port}" in arg for arg in argv):
        raise ValueError("the command needs a {port} placeholder to listen on")
    return ServerSpec(name, f"the user's own: {command}", "", (), "", argv=argv)


def target_spec(host: str, port: int, pid: int | None) -> ServerSpec:
    """A server that is already running at ``host``:``port`` (``pid``: its
    process, on this machine, for its CPU time)."""
    where = f"{host}:{port}"
    if pid is not None:
        where += f", process {pid}"
    return ServerSpec(
        "target",
        f"already running at {where}",
        "",
        (),
        "",
        target=(host, port),
        target_pid=pid,
    )


def registry() -> dict[str, ServerSpec]:
    """Every server by name, in the order reports list them.

    anyecho runs on every loop AnyIO can drive, those not installed included (so
    that a report says why they did not run); the reference servers only on the
    loops that are installed.
    """
    every_loop = _asyncio_loops()
    asyncio_loops = {
        loop: backend
        for loop, backend in every_loop.items()
        if loop not in EXTRA_LOOPS or importlib.util.find_spec(loop) is not None
    }
    anyio_loops = {**asyncio_loops, "trio": "trio"}
    base = "anyecho.bench.baselines."
    specs = [
        anyecho_spec(backend, name=loop)
        for loop, backend in {**every_loop, "trio": "trio"}.items()
    ]
    specs.append(
        ServerSpec(
            "tutorial",
            "asyncio tutorial: start_server, read/write/drain",
            base + "tutorial",
            (),
            "asyncio",
            transports=ALL_TRANSPORTS,
        )
    )
    specs += [
        ServerSpec(
            f"protocol-{loop}",
            f"bare asyncio.Protocol on {loop}",
            base + "protocol",
            ("--loop", backend),
            backend,
            transports=ALL_TRANSPORTS,
        )
        for loop, backend in asyncio_loops.items()
    ]
    specs += [
        ServerSpec(
            f"{kind}-{loop}",
            f"{what} on {loop}",
            base + kind,
            ("--loop", backend),
            backend,
            transports=ALL_TRANSPORTS if kind == "buffered" else ("tcp",),
        )
        for kind, what in (
            ("buffered", "bare asyncio.BufferedProtocol"),
            ("sockets", "loop.sock_recv/sock_sendall, a task per connection"),
        )
        for loop, backend in asyncio_loops.items()
    ]
    specs.append(
        ServerSpec(
            "trio-raw", "Trio alone: serve_tcp, send_all", base + "trio_raw", (), "trio"
        )
    )
    specs += [
        ServerSpec(
            f"anyio-{loop}",
            f"idiomatic AnyIO: listener.serve, async for, on {loop}",
            base + "anyio_bare",
            ("--loop", backend),
            backend,
        )
        for loop, backend in anyio_loops.items()
    ]
    specs.append(
        ServerSpec(
            "stalling",
            f"asyncio.Protocol that blocks its loop {STALL * 1e3:g} ms every "
            f"{STALL_EVERY * 1e3:g} ms",
            base + "stalling",
            ("--stall", str(STALL), "--every", str(STALL_EVERY)),
            "asyncio",
            hidden=True,
        )
    )
    specs += [
        ServerSpec(
            name,
            f"faulty on purpose: {what} after {FAULT_AFTER // 1000} kB",
            base + "broken",
            ("--fault", fault, "--after", str(FAULT_AFTER)),
            "asyncio",
            hidden=True,
        )
        for name, fault, what in (
            ("broken", "flip", "flips a byte"),
            ("broken-drop", "drop", "drops a byte"),
            ("broken-die", "die", "exits"),
        )
    ]
    return {spec.name: spec for spec in specs}


class ServerProcess:
    """One running server: its process, its port, and what it last wrote.

    :param spec: the server
    :param cpus: the CPUs to pin it to, or ``None``
    :param transport: ``"unix"``: it listens on a Unix socket too, at
        :attr:`unix`, which the load is sent to; ``"tls"``: it speaks TLS, with a
        certificate that :attr:`tls_ca` signed
    """

    def __init__(
        self, spec: ServerSpec, cpus: Collection[int] | None, transport: str = "tcp"
    ) -> None:
        self.spec = spec
        self.host = "127.0.0.1"
        self.port = 0
        #: the Unix socket the load goes to, or ``None`` for TCP
        self.unix: str | None = None
        #: the CA file that signed its certificate, for TLS, or ``None``
        self.tls_ca: str | None = None
        self._directory: str | None = None
        self._process: subprocess.Popen[str] | None = None
        if spec.target is not None:
            self.host, self.port = spec.target
            self._output = _proc.LineReader(io.StringIO())
            return
        command = spec.command
        if transport == "unix":
            self._directory = tempfile.mkdtemp(prefix="anyecho-bench-")
            self.unix = os.path.join(self._directory, "echo.sock")
            command = [*command, "--unix", self.unix]
        elif transport == "tls":
            self.tls_ca, key_and_chain = tls_files()
            command = [*command, "--tls-cert", key_and_chain]
        if spec.argv:
            self.port = free_port()
            command = [arg.replace("{port}", str(self.port)) for arg in command]
        self._process = _proc.spawn(command, cpus, merge_stderr=True, env=spec.env)
        assert self._process.stdout is not None
        self._output = _proc.LineReader(self._process.stdout)

    @property
    def pid(self) -> int | None:
        """The server's process id (for a target, the one given, if any)."""
        if self._process is None:
            return self.spec.target_pid
        return self._process.pid

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for the ready line, learning the port (a user's own server: until
        it accepts connections on its port).

        :raises ServerError: when the server exits or stays silent instead
        """
        if self._process is None:
            return
        if self.spec.argv:
            self._wait_listening(timeout)
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._output.get(deadline - time.monotonic())
            except TimeoutError:
                raise ServerError(f"not listening after {timeout:g}s") from None
            if line is None:
                self._settle()
                raise ServerError(self.exit_reason() or "the server closed its output")
            if match := _READY.search(line):
                self.port = int(match[1])
                return

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exit_reason() is not None:
                raise ServerError(self.exit_reason() or "the server exited")
            with contextlib.suppress(OSError):
                socket.create_connection((self.host, self.port), 1.0).close()
                return
            time.sleep(0.05)  # polling a port that a foreign program opens
        raise ServerError(f"not listening on port {self.port} after {timeout:g}s")

    def _connect(self) -> socket.socket:
        if self.tls_ca is not None:
            context = ssl.create_default_context(cafile=self.tls_ca)
            sock = socket.create_connection((self.host, self.port), CHECK_TIMEOUT)
            return context.wrap_socket(sock, server_hostname=self.host)
        if self.unix is None:
            return socket.create_connection((self.host, self.port), CHECK_TIMEOUT)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(CHECK_TIMEOUT)
            sock.connect(self.unix)
        except OSError:
            sock.close()
            raise
        return sock

    def check(self) -> None:
        """Echo a few bytes through the server and close, as a client would.

        :raises ServerError: when that fails, saying why
        """
        try:
            with self._connect() as sock:
                sock.sendall(CHECK_DATA)
                tls = isinstance(sock, ssl.SSLSocket)
                if not tls:  # TLS has no half-close: read the echo, then close
                    sock.shutdown(socket.SHUT_WR)
                echoed = b""
                while (not tls or len(echoed) < len(CHECK_DATA)) and (
                    chunk := sock.recv(4096)
                ):
                    echoed += chunk
        except OSError as exc:
            raise ServerError(self._failure(f"check echo failed: {exc}")) from None
        if echoed != CHECK_DATA:
            raise ServerError(self._failure(f"check echo returned {echoed!r}"))

    def exit_reason(self) -> str | None:
        """Why the process ended (status and error), or ``None`` while it runs."""
        if self._process is None:
            return None
        status = self._process.poll()
        if status is None:
            return None
        self._output.join(1.0)
        reason = f"the server exited with status {status}"
        lines = [
            line.strip()
            for line in self._output.tail
            if line.strip() and not _READY.search(line)
        ]
        error = describe_error(lines) or (lines[-1] if lines else None)
        return f"{reason}: {error}" if error else reason

    def _settle(self) -> None:
        """Give a server that is failing a moment to exit, to name the cause."""
        if self._process is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(1.0)

    def _failure(self, what: str) -> str:
        self._settle()
        reason = self.exit_reason()
        if reason is not None:
            return f"{what}; {reason}"
        error = describe_error(list(self._output.tail))
        return f"{what}; the server said: {error}" if error else what

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); a target is left running."""
        if self._process is not None:
            _proc.stop(self._process)
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)


@functools.cache
def tls_files() -> tuple[str, str]:
    """A CA and a certificate for 127.0.0.1 that it signed, made once per run
    (with trustme) in a directory of their own: the CA file, and the file with
    the server's key and certificate chain."""
    import trustme

    directory = tempfile.mkdtemp(prefix="anyecho-bench-tls-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    ca = trustme.CA()
    ca_file = os.path.join(directory, "ca.pem")
    server_file = os.path.join(directory, "server.pem")
    ca.cert_pem.write_to_path(ca_file)
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(server_file)
    return ca_file, server_file


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a server of the user's own)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def describe_error(lines: list[str]) -> str | None:
    """The first exception a traceback names, with the function that raised it."""
    for index, line in enumerate(lines):
        if match := _ERROR_LINE.match(line):
            for before in reversed(lines[:index]):
                if frame := _FRAME_LINE.match(before):
                    return f"{match[1].strip()} (in {frame[1]})"
            return match[1].strip()
    return None
