"""Server CPU time and instructions per echo, measured from outside the server.

``python -m anyecho.bench.cpu cpu`` drives each server of the bench with
``echoload``, a load generator in C (``--echoload PATH``): the server is pinned
to CPU 0 and the load generator to CPU 1, each connection keeps one message in
flight, and the server's CPU time per echo (user and system, from ``/proc``) is
taken over the measured window. The servers are interleaved, run after run, and
the table gives the median of each cell.

``python -m anyecho.bench.cpu instr`` runs each server under
``valgrind --tool=callgrind`` instead. For each cell it opens the connections and
warms them up, zeroes callgrind's counters, runs exactly ``--echoes`` echoes
(one message in flight per connection), and dumps the counters: the server's
instructions per echo, without its start-up, connects or closes. The count does
not depend on what else the machine runs, so it can tell apart changes that
CPU time, on a busy machine, cannot. With ``--cache-sim`` callgrind also
simulates the caches, and the tables give the server's data cache misses per
echo: first-level misses, and misses of a last level the size of one core's L2
(``--ll``), the memory an echo touches that does not stay in a core's own cache.

Next to the CPU time per echo, ``cpu`` splits it into user and system time (in the
proportions ``/proc`` shows over the run) and gives the load generator's
sleeps per echo: how often a write of the server had to wake it, work that the
kernel charges to the server, and that grows as the server gets slower.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .._args import format_size, parse_size
from . import _proc
from .servers import registry

__all__ = ["main"]

#: The servers measured unless ``--servers`` names others.
DEFAULT_SERVERS = (
    "anyecho-uvloop",
    "anyecho-asyncio",
    "anyecho-trio",
    "tutorial",
    "protocol-uvloop",
    "anyio-uvloop",
    "anyio-trio",
    "trio-raw",
)

_READY = re.compile(r"tcp://127\.0\.0\.1:(\d+)")
_EVENTS = re.compile(r"^events: (.*)$", re.MULTILINE)
_SUMMARY = re.compile(r"^summary: (.*)$", re.MULTILINE)

#: The figures of each mode, as (key, the table's unit, decimals shown).
_FIGURES = {
    "cpu": (
        ("cpu", "CPU µs per echo", 2),
        ("user", "user CPU µs per echo", 2),
        ("system", "system CPU µs per echo", 2),
        ("sleeps", "load generator sleeps per echo", 3),
    ),
    "instr": (("instr", "instructions per echo", 0),),
    "cache-sim": (
        ("instr", "instructions per echo", 0),
        ("d1", "D1 data misses per echo", 0),
        ("ll", "LL data misses per echo", 0),
    ),
}

#: Figures per cell: a value per figure key.
Figures = dict[str, float]


class _Server:
    """One server process, started and waited for until it listens."""

    def __init__(self, name: str, prefix: Sequence[str] = ()) -> None:
        argv = [*prefix, *registry()[name].command]
        self.process = subprocess.Popen(  # noqa: S603 - a bench server
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if match := _READY.search(line):
                self.port = int(match[1])
                break
        else:
            raise SystemExit(f"anyecho.bench.cpu: {name} did not start")
        # Nobody reads its output from now on: keep it from blocking the server.
        self.process.stdout.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        _proc.stop(self.process)


def _echoload(
    echoload: str, server: _Server, cell: tuple[int, int], secs: float
) -> Figures:
    """The server's CPU time per echo in µs over one echoload window, split into
    user and system time, and the load generator's sleeps per echo."""
    conns, size = cell
    before = _proc.user_system_seconds(server.pid)
    # The load generator's own resource use: it is the only child waited for
    # meanwhile (the server is waited for when it stops).
    waited = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw
    result = subprocess.run(  # noqa: S603 - the load generator the user named
        [
            *("taskset", "-c", "1", echoload, "--port", str(server.port)),
            *("--conns", str(conns), "--size", str(size), "--duration", str(secs)),
            *("--warmup", "0.5", "--server-pid", str(server.pid), "--json"),
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"anyecho.bench.cpu: echoload failed ({result.returncode})")
    sleeps = resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw - waited
    after = _proc.user_system_seconds(server.pid)
    figures = json.loads(result.stdout)
    total = float(figures["server_cpu_us_per_echo"])
    user, system = (a - b for a, b in zip(after, before, strict=True))
    share = user / (user + system) if user + system else 0.0
    return {
        "cpu": total,
        "user": total * share,
        "system": total * (1 - share),
        "sleeps": sleeps / max(int(figures["echoes_total"]), 1),
    }


def _drive(conns: list[socket.socket], size: int, total: int) -> None:
    """Exactly ``total`` echoes of ``size`` bytes, one in flight per connection."""
    message = (bytes(range(256)) * (size // 256 + 1))[:size]
    pending = dict.fromkeys(conns, 0)
    started = done = 0
    with selectors.DefaultSelector() as selector:
        for sock in conns:
            if started < total:
                sock.sendall(message)
                pending[sock] = size
                started += 1
                selector.register(sock, selectors.EVENT_READ, sock)
        while done < total:
            for key, _ in selector.select():
                sock = key.data
                data = sock.recv(1 << 20)
                if not data:
                    raise SystemExit("anyecho.bench.cpu: the server closed")
                pending[sock] -= len(data)
                if pending[sock]:
                    continue
                done += 1
                if started < total:
                    sock.sendall(message)
                    pending[sock] = size
                    started += 1
                else:
                    selector.unregister(sock)


def _instructions(
    name: str, cells: list[tuple[int, int]], echoes: int, cache: Sequence[str] = ()
) -> dict[str, Figures]:
    """Instructions per echo of server ``name`` in each cell, under callgrind;
    with ``cache`` (callgrind's cache options), data cache misses per echo too."""
    results: dict[str, Figures] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "callgrind.out")
        server = _Server(
            name,
            ("valgrind", "--tool=callgrind", *cache, f"--callgrind-out-file={out}.%p"),
        )
        try:
            for size, count in cells:
                conns = [
                    socket.create_connection(("127.0.0.1", server.port))
                    for _ in range(count)
                ]
                with contextlib.ExitStack() as stack:
                    for sock in conns:
                        stack.enter_context(sock)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    # Bulk cells: fewer echoes, at least 20 per connection.
                    total = max(echoes * 64 // max(size, 64), 20 * count)
                    _drive(conns, size, 5 * count)
                    _callgrind("--zero", server.pid)
                    _drive(conns, size, total)
                    before = set(Path(tmp).iterdir())
                    _callgrind("--dump", server.pid)
                    [dump] = set(Path(tmp).iterdir()) - before
                    counts = _counts(dump.read_text())
                    figures = {"instr": counts["Ir"] / total}
                    if cache:
                        figures["d1"] = (counts["D1mr"] + counts["D1mw"]) / total
                        figures["ll"] = (counts["DLmr"] + counts["DLmw"]) / total
                    results[_cell(size, count)] = figures
        finally:
            server.stop()
    return results


def _counts(dump: str) -> dict[str, int]:
    """The event totals of a callgrind dump, by event name."""
    events, summary = _EVENTS.search(dump), _SUMMARY.search(dump)
    if events is None or summary is None:
        raise SystemExit("anyecho.bench.cpu: callgrind wrote no totals")
    # Trailing zero counts are left out of the line.
    counts = [*map(int, summary[1].split())]
    names = events[1].split()
    return dict(zip(names, counts + [0] * (len(names) - len(counts)), strict=True))


def _callgrind(command: str, pid: int) -> None:
    control = shutil.which("callgrind_control") or "callgrind_control"
    subprocess.run(  # noqa: S603 - valgrind's own control tool
        [control, command, str(pid)], capture_output=True, check=True
    )


def _cell(size: int, conns: int) -> str:
    return f"{format_size(size)} x {conns}"


def _parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m anyecho.bench.cpu",
        description="Server CPU time (cpu) or instructions (instr) per echo.",
    )
    cli.add_argument("mode", choices=("cpu", "instr"))
    cli.add_argument("--servers", default=",".join(DEFAULT_SERVERS))
    cli.add_argument("--sizes", default="64,1k", help="message sizes (default 64,1k)")
    cli.add_argument("--connections", default="1,32,256")
    cli.add_argument("--repeat", type=int, default=5, help="cpu: runs per cell")
    cli.add_argument("--duration", type=float, default=2.0, help="cpu: seconds")
    cli.add_argument("--echoload", default="echoload", help="cpu: the load generator")
    cli.add_argument("--echoes", type=int, default=4000, help="instr: echoes per cell")
    cli.add_argument(
        "--cache-sim",
        action="store_true",
        help="instr: also simulate the caches; data misses per echo",
    )
    cli.add_argument(
        "--ll",
        default="512k",
        help="instr --cache-sim: the simulated last level's size (default 512k, "
        "one core's L2 here), 8-way, 64-byte lines",
    )
    cli.add_argument("--json", type=Path, help="also write every figure here")
    return cli


def _cells(
    cli: argparse.ArgumentParser, sizes: str, connections: str
) -> list[tuple[int, int]]:
    """Every (size, connections) pair the options name."""
    try:
        parsed = [parse_size(size) for size in sizes.split(",")]
        counts = [int(count) for count in connections.split(",")]
    except ValueError as exc:
        cli.error(str(exc))
    return [(size, count) for size in parsed for count in counts]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m anyecho.bench.cpu``."""
    cli = _parser()
    args = cli.parse_args(argv)
    servers = args.servers.split(",")
    unknown = sorted(set(servers) - set(registry()))
    if unknown:
        cli.error(f"unknown servers: {', '.join(unknown)}")
    cells = _cells(cli, args.sizes, args.connections)
    tool = args.echoload if args.mode == "cpu" else "valgrind"
    if shutil.which(tool) is None:
        cli.error(f"{tool} not found")
    mode = "cache-sim" if args.mode == "instr" and args.cache_sim else args.mode
    cache = _cache_options(cli, args.ll) if args.cache_sim else []
    table: dict[str, dict[str, list[Figures]]] = {name: {} for name in servers}
    if args.mode == "instr":
        for name in servers:
            found = _instructions(name, cells, args.echoes, cache)
            for cell, figures in found.items():
                table[name][cell] = [figures]
    else:
        for run in range(args.repeat):
            for name in servers:
                server = _Server(name, ("taskset", "-c", "0"))
                try:
                    for size, count in cells:
                        figures = _echoload(
                            args.echoload, server, (count, size), args.duration
                        )
                        table[name].setdefault(_cell(size, count), []).append(figures)
                finally:
                    server.stop()
            sys.stderr.write(f"run {run + 1} of {args.repeat} done\n")
    shown = [_cell(*cell) for cell in cells]
    sys.stdout.write(
        "\n".join(
            _markdown(table, shown, key, unit, digits)
            for key, unit, digits in _FIGURES[mode]
        )
    )
    if args.json is not None:
        args.json.write_text(json.dumps(table, indent=1) + "\n")


def _cache_options(cli: argparse.ArgumentParser, ll: str) -> list[str]:
    """callgrind's options to simulate a 32 KiB D1 and an ``ll``-sized last level."""
    try:
        size = parse_size(ll)
    except ValueError as exc:
        cli.error(str(exc))
    return ["--cache-sim=yes", "--D1=32768,8,64", f"--LL={size},8,64"]


def _markdown(
    table: dict[str, dict[str, list[Figures]]],
    cells: list[str],
    key: str,
    unit: str,
    digits: int,
) -> str:
    """The medians of figure ``key`` as a Markdown table, a server per row."""
    lines = [f"| server ({unit}) | " + " | ".join(cells) + " |"]
    lines.append("|---" * (len(cells) + 1) + "|")
    for name, row in table.items():
        figures = [statistics.median(run[key] for run in row[cell]) for cell in cells]
        lines.append(
            f"| {name} | " + " | ".join(f"{f:,.{digits}f}" for f in figures) + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
