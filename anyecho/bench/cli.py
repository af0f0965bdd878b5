"""``anyecho bench``: measure anyecho against reference echo servers.

This module imports only the standard library when loaded (and the command
line's argument types and exit statuses, which import nothing else): the rest of
the benchmark, and ``rich`` and ``matplotlib`` (the ``bench`` extra), are imported when
the command runs. Without the extra, the table, JSON and Markdown outputs still
work; the progress bar becomes plain lines, and ``--plot`` is refused.

Exit status: 0 when every run succeeded, 1 when a server failed a run (or none
could run, or a load generator failed), 2 for a bad command line, 130 when
interrupted (Ctrl-C or SIGTERM: the outputs then hold the runs done so far).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._args import (
    SIZE_SYNTAX,
    byte_size,
    count,
    positive_count,
    positive_seconds,
    seconds,
)
from ..cli._exit import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, CommandError

if TYPE_CHECKING:
    from .plan import Settings
    from .report import Report
    from .servers import Interpreter

__all__ = ["add_parser"]

#: The one line printed when an option needs the ``bench`` extra.
EXTRA_NEEDED = "anyecho bench needs the bench extra: pip install 'anyecho[bench]'"

#: The plot formats, by file suffix.
PLOT_SUFFIXES = (".png", ".svg")

#: What ``--plot-metric`` accepts: the keys of ``render.METRICS``, repeated here so
#: that building the parser imports nothing beyond the standard library.
PLOT_METRICS = ("echoes_per_s", "mib_per_s", "cpu_us_per_echo", "p99_us")


def _csv(parse: Callable[[str], int], what: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse type for a comma-separated list of positive integers."""

    def parse_list(text: str) -> tuple[int, ...]:
        values = tuple(dict.fromkeys(parse(item) for item in text.split(",")))
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: expected >= 1")
        return values

    return parse_list


def _rate(text: str) -> float:
    """An argparse type for a rate in echoes per second: ``500``, ``20k``, ``1.5M``."""
    factor = {"k": 1e3, "m": 1e6}.get(text.strip()[-1:].lower(), 1.0)
    number = text.strip()[:-1] if factor != 1.0 else text.strip()
    try:
        rate = float(number) * factor
    except ValueError:
        rate = 0.0
    if not rate > 0 or rate == float("inf"):
        raise argparse.ArgumentTypeError(
            f"invalid rate {text!r}: expected a positive number of echoes per "
            "second, such as 500, 20k or 1.5M"
        )
    return rate


def _factor(text: str) -> float:
    """An argparse type for a sweep's step factor: a number above 1."""
    try:
        factor = float(text)
    except ValueError:
        factor = 0.0
    if not 1.0 < factor < 100.0:
        raise argparse.ArgumentTypeError(
            f"invalid factor {text!r}: expected a number above 1, such as 1.5"
        )
    return factor


def _rates(text: str) -> tuple[float, ...]:
    """An argparse type for a comma-separated list of rates."""
    return tuple(dict.fromkeys(_rate(item) for item in text.split(",")))


def _custom_server(text: str) -> tuple[str, str]:
    """An argparse type for ``--server NAME=COMMAND``."""
    from .servers import custom_spec, registry

    name, equals, command = text.partition("=")
    name = name.strip()
    if not equals or not re.fullmatch(r"[A-Za-z0-9][\w.+-]*", name):
        raise argparse.ArgumentTypeError(
            f"invalid server {text!r}: expected NAME=COMMAND, such as "
            "'mine=./myserver --port {port}'"
        )
    if name in registry() or name == "target":
        raise argparse.ArgumentTypeError(
            f"invalid server {text!r}: {name} is already a server's name"
        )
    try:
        custom_spec(name, command)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid server {text!r}: {exc}") from None
    return name, command


def _interpreter(text: str) -> Interpreter:
    """An argparse type for ``--python PATH``: the interpreter, probed."""
    from .servers import Interpreter

    try:
        return Interpreter.probe(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid interpreter: {exc}") from None


def _target(text: str) -> tuple[str, int]:
    """An argparse type for ``--target HOST:PORT`` (``[::1]:PORT`` for IPv6)."""
    host, colon, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"invalid target {text!r}: expected HOST:PORT, such as 127.0.0.1:7000"
        )
    return host, int(port)


def _server_names(text: str) -> tuple[str, ...]:
    from .servers import registry

    known = registry()
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",")))
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown server {', '.join(unknown) or text!r} (choose from "
            f"{', '.join(known)}; see --list-servers)"
        )
    return names


def _plot_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"invalid plot file {text!r}: expected a name ending in .png or .svg"
        )
    return path


def add_parser(subparsers: Any) -> None:
    """Add the ``bench`` command to ``anyecho``'s subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="benchmark anyecho against reference echo servers",
        description="Start each server in its own process, drive it from load "
        "generator processes on other CPUs, verify every echoed byte, and report "
        "echoes/s, MiB/s, round-trip latency and server CPU time per echo, side by "
        "side. Runs of different servers alternate, and each figure is the median "
        "over --repeat runs.",
    )
    what = parser.add_argument_group("what to measure")
    what.add_argument(
        "--servers",
        type=_server_names,
        metavar="NAME,...",
        help="the servers to run, in report order (default: every one listed by "
        "--list-servers that is not hidden)",
    )
    what.add_argument(
        "--server",
        dest="custom",
        type=_custom_server,
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="add a server of your own to the runs: COMMAND starts it listening "
        "on 127.0.0.1 port {port}; {python} is this interpreter (repeatable). Its "
        "CPU time is that of the process started, threads included, children not",
    )
    what.add_argument(
        "--target",
        type=_target,
        metavar="HOST:PORT",
        help="add a server that is already running, as 'target' (its CPU time "
        "only with --target-pid)",
    )
    what.add_argument(
        "--target-pid",
        type=positive_count,
        metavar="PID",
        help="the --target server's process id on this machine, for its CPU time",
    )
    what.add_argument(
        "--python",
        dest="pythons",
        nargs="+",
        type=_interpreter,
        default=[],
        metavar="PATH",
        help="also run each of the bench's own servers on these interpreters, as "
        "NAME@VERSION, in the same interleaved rounds (they import anyecho from "
        "this source tree; a server whose loop is not installed there is shown "
        "as unavailable)",
    )
    what.add_argument(
        "--baseline",
        metavar="NAME",
        help="the server that ratios compare against (default: tutorial, if run, "
        "else the first server)",
    )
    what.add_argument(
        "--sizes",
        type=_csv(byte_size, "size"),
        default="64,1k,64k,1m",
        metavar="SIZE,...",
        help=f"message sizes, each {SIZE_SYNTAX} (default: %(default)s)",
    )
    what.add_argument(
        "--connections",
        type=_csv(count, "connection count"),
        default="1,32,256",
        metavar="N,...",
        help="numbers of concurrent connections (default: %(default)s)",
    )
    what.add_argument(
        "--pipeline",
        type=positive_count,
        default=1,
        metavar="K",
        help="closed loop: messages in flight per connection; 1 is ping-pong "
        "(default: %(default)s)",
    )
    what.add_argument(
        "--transport",
        choices=("tcp", "unix", "tls"),
        default="tcp",
        help="send the load over TCP on 127.0.0.1, Unix sockets, or TLS (with a "
        "certificate made for the run; needs trustme) to the servers that serve "
        "them: anyecho, tutorial, protocol-*, buffered-*; the others are shown as "
        "unavailable (default: %(default)s)",
    )
    load = what.add_mutually_exclusive_group()
    load.add_argument(
        "--rate",
        type=_rate,
        metavar="R",
        help="open loop: offer R echoes/s over all the connections, on schedule, "
        "and time each echo from its message's intended send time (without this "
        "and --rates: closed loop, throughput at concurrency N)",
    )
    load.add_argument(
        "--rates",
        type=_rates,
        metavar="R,...",
        help="open loop at each of these rates in turn (latency against offered load)",
    )
    load.add_argument(
        "--sweep",
        action="store_true",
        help="open loop at rising rates (--sweep-start, times --sweep-factor at "
        "each step) while each server holds the rate with a p99 under --p99-limit",
    )
    what.add_argument(
        "--sweep-start",
        type=_rate,
        default=1000.0,
        metavar="R",
        help="the first rate of a sweep (default: 1k)",
    )
    what.add_argument(
        "--sweep-factor",
        type=_factor,
        default=1.5,
        metavar="F",
        help="how much each step of a sweep raises the rate (default: %(default)s)",
    )
    what.add_argument(
        "--sweep-steps",
        type=positive_count,
        default=20,
        metavar="N",
        help="the most rates a sweep offers (default: %(default)s)",
    )
    what.add_argument(
        "--p99-limit",
        type=positive_seconds,
        default=0.01,
        metavar="SECONDS",
        help="the round-trip p99 under which a rate counts as held, for a sweep "
        "and for the highest rate each server held (default: %(default)s)",
    )
    what.add_argument(
        "--schedule",
        choices=("fixed", "poisson"),
        default="fixed",
        help="open loop: messages equally spaced, or Poisson arrivals "
        "(default: %(default)s)",
    )
    what.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seeds the Poisson schedule (default: %(default)s)",
    )
    how = parser.add_argument_group("how to measure")
    how.add_argument(
        "--duration",
        type=positive_seconds,
        default=1.0,
        metavar="SECONDS",
        help="time measured per run (default: %(default)s)",
    )
    how.add_argument(
        "--warmup",
        type=seconds,
        default=0.5,
        metavar="SECONDS",
        help="time run before each measurement, not counted (default: %(default)s)",
    )
    how.add_argument(
        "--repeat",
        type=positive_count,
        default=3,
        metavar="N",
        help="runs per server and workload (default: %(default)s)",
    )
    how.add_argument(
        "--clients",
        type=positive_count,
        metavar="N",
        help="load generator processes (default: one per CPU besides the server's, "
        "as many as the connections need)",
    )
    how.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the server and the load generators to separate CPUs",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--json", type=Path, metavar="FILE", help="write every figure to FILE as JSON"
    )
    out.add_argument(
        "--markdown",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write a Markdown table to FILE, or without FILE print it instead of "
        "the terminal table",
    )
    out.add_argument(
        "--wide",
        action="store_true",
        help="every figure in the tables (default: the telling ones, to fit 100 "
        "columns)",
    )
    out.add_argument(
        "--plot",
        type=_plot_path,
        metavar="FILE",
        help="draw a bar chart into FILE (.png or .svg; needs the bench extra)",
    )
    out.add_argument(
        "--plot-metric",
        choices=PLOT_METRICS,
        default="echoes_per_s",
        help="the figure to chart (default: %(default)s)",
    )
    out.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="do not run: print (and write, and plot) the report saved in FILE",
    )
    out.add_argument(
        "--list-servers", action="store_true", help="list the servers and exit"
    )
    out.add_argument(
        "-q", "--quiet", action="store_true", help="no progress output while running"
    )
    parser.set_defaults(command=_bench_command)


def _bench_command(args: argparse.Namespace) -> int:
    if args.list_servers:
        return _list_servers()
    problem = _usage_problem(args)
    if problem is not None:
        raise CommandError(problem, EXIT_USAGE)
    return _finish(_report(args), args)


def _report(args: argparse.Namespace) -> Report:
    """The report to print: read from ``--from-json``, or made by running."""
    if args.from_json is None:
        return _run(_settings(args), quiet=args.quiet)
    try:
        return _load(args.from_json)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read {args.from_json}: {exc}", EXIT_USAGE) from exc


def _finish(report: Report, args: argparse.Namespace) -> int:
    """Write the outputs; the exit status that the report calls for."""
    try:
        _write_outputs(report, args)
    except OSError as exc:
        raise CommandError(f"cannot write the report: {exc}") from exc
    if not report["complete"]:
        return EXIT_INTERRUPTED
    ran_ok = report["runs"] and all(run["ok"] for run in report["runs"])
    return 0 if ran_ok else EXIT_FAILURE


def _list_servers() -> int:
    from .servers import registry

    for spec in registry().values():
        state = spec.unavailable() or ("hidden" if spec.hidden else "")
        sys.stdout.write(f"{spec.name:18} {spec.description}")
        sys.stdout.write(f" [{state}]\n" if state else "\n")
    return 0


def _usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with options that argparse cannot check alone, if anything.

    Output files are checked now rather than after a long run.
    """
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        return EXTRA_NEEDED
    if (problem := _target_problem(args)) is not None:
        return problem
    names = [name for name, _ in args.custom]
    if len(set(names)) < len(names):
        return "--server: each server needs a name of its own"
    if args.baseline is not None and args.baseline not in _servers(args):
        return f"--baseline {args.baseline} is not among the servers run"
    paths = [args.json, args.plot]
    if args.markdown not in {None, "-"}:
        paths.append(Path(args.markdown))
    for path in paths:
        if path is not None and not path.resolve().parent.is_dir():
            return f"cannot write {path}: no such directory"
    return None


def _target_problem(args: argparse.Namespace) -> str | None:
    if args.target_pid is None:
        return None
    if args.target is None:
        return "--target-pid needs --target"
    if not Path(f"/proc/{args.target_pid}").exists():
        return f"--target-pid {args.target_pid}: no such process"
    return None


def _servers(args: argparse.Namespace) -> tuple[str, ...]:
    from .servers import registry

    if args.servers:
        servers: tuple[str, ...] = args.servers
    else:
        servers = tuple(name for name, spec in registry().items() if not spec.hidden)
    own = [name for name in servers if name in registry()]
    servers += tuple(
        f"{name}@{python.version}" for python in args.pythons for name in own
    )
    servers += tuple(name for name, _ in args.custom)
    return servers + (("target",) if args.target is not None else ())


def _settings(args: argparse.Namespace) -> Settings:
    from .plan import Settings

    servers = _servers(args)
    baseline = args.baseline
    if baseline is None:
        baseline = "tutorial" if "tutorial" in servers else servers[0]
    return Settings(
        servers=servers,
        baseline=baseline,
        sizes=args.sizes,
        connections=args.connections,
        pipeline=args.pipeline,
        duration=args.duration,
        warmup=args.warmup,
        repeat=args.repeat,
        clients=args.clients,
        pin=args.pin,
        rates=args.rates or ((args.rate,) if args.rate is not None else ()),
        poisson=args.schedule == "poisson",
        seed=args.seed,
        sweep=args.sweep,
        sweep_start=args.sweep_start,
        sweep_factor=args.sweep_factor,
        sweep_steps=args.sweep_steps,
        p99_limit_us=args.p99_limit * 1e6,
        custom=tuple(args.custom),
        pythons=tuple(python.path for python in args.pythons),
        transport=args.transport,
        target=args.target,
        target_pid=args.target_pid,
    )


def _run(settings: Settings, *, quiet: bool) -> Report:
    """Run the benchmark; its report (:exc:`CommandError` if it could not finish)."""
    from .progress import choose
    from .runner import LoadGeneratorError, run_bench

    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return run_bench(settings, choose(quiet=quiet))
    except LoadGeneratorError as exc:
        raise CommandError(str(exc), EXIT_FAILURE) from exc
    except KeyboardInterrupt as exc:
        raise CommandError("interrupted", EXIT_INTERRUPTED) from exc
    finally:
        signal.signal(signal.SIGTERM, previous)


def _load(path: Path) -> Report:
    from .report import SCHEMA, Report

    document = json.loads(path.read_text())
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise ValueError(f"not an {SCHEMA} report")
    missing = sorted(set(Report.__annotations__) - set(document))
    if missing:
        raise ValueError(f"an {SCHEMA} report without {', '.join(missing)}")
    report: Report = document  # type: ignore[assignment]
    return report


def _write_outputs(report: Report, args: argparse.Namespace) -> None:
    from . import render

    written: list[Path] = []
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        written.append(args.json)
    if args.markdown == "-":
        sys.stdout.write(render.markdown(report, wide=args.wide))
    else:
        _print_table(report, wide=args.wide)
        if args.markdown is not None:
            Path(args.markdown).write_text(render.markdown(report, wide=args.wide))
            written.append(Path(args.markdown))
    if args.plot is not None:
        render.plot(report, args.plot, args.plot_metric)
        written.append(args.plot)
    if written:
        sys.stderr.write(f"wrote {', '.join(map(str, written))}\n")


def _print_table(report: Report, *, wide: bool) -> None:
    """A rich table on a terminal wide enough for it, plain text otherwise."""
    from . import render

    if sys.stdout.isatty() and importlib.util.find_spec("rich") is not None:
        from rich.console import Console

        console = Console()
        table = render.rich_table(report, wide=wide)
        if console.measure(table).maximum <= console.width:
            console.print(table)
            return
    sys.stdout.write(render.text(report, wide=wide))
