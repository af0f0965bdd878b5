"""A report for people: a terminal table, a Markdown table, or a bar chart.

Every figure is the median over the runs of a server and workload; ``min..max``
is the spread of echoes per second, ``CPU µs/echo`` the server's CPU time per
echo, ``client %`` the CPU use of the busiest load generator process (in % of one
core). A failed server shows ``FAILED [n]``, with its reason in note ``[n]`` below
the table; ``!`` marks figures that the load generator may have limited.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._args import format_size
from .plan import format_rate
from .report import Report, ResultRecord, Summary, WorkloadRecord

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.table import Table as RichTable

__all__ = ["METRICS", "Table", "markdown", "plot", "rich_table", "table", "text"]

#: What ``--plot-metric`` can chart, with its axis label.
METRICS = {
    "echoes_per_s": "echoes per second",
    "mib_per_s": "MiB per second (each way)",
    "cpu_us_per_echo": "server CPU time per echo (µs)",
    "p99_us": "99th percentile round trip (µs)",
}


@dataclass
class Table:
    """A report laid out as rows of text, ready for any output format.

    :param header: the column names
    :param groups: per workload, its label and its rows (the workload column of
        each row is left out; renderers put the label in front)
    :param notes: lines to print below the table
    """

    header: list[str]
    groups: list[tuple[str, list[list[str]]]]
    notes: list[str]


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _short(value: float) -> str:
    for factor, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def _median(summary: Summary | None) -> str:
    return "n/a" if summary is None else _number(summary["median"])


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _time(us: float) -> str:
    """A duration in µs, short: ``84µs``, ``4.2ms``, ``146ms``, ``1.2s``."""
    if us >= 1e6:
        return f"{us / 1e6:.3g}s"
    if us >= 1e3:
        return f"{us / 1e3:.3g}ms"
    return f"{us:.3g}µs"


def _time_median(summary: Summary | None) -> str:
    return "n/a" if summary is None else _time(summary["median"])


#: The metrics of which less is better.
LOWER_IS_BETTER = {"cpu_us_per_echo", "p99_us"}

#: The context lines above a table wrap at this width.
CONTEXT_WIDTH = 100

#: What marks a figure in the tables, and what the mark means.
LIMITED_MARK = "!"
SHORT_MARK = "<"


@dataclass(frozen=True)
class _Column:
    """One column: its header, compact or wide, and how a result fills it."""

    header: str
    cell: Callable[[ResultRecord], str]
    wide_only: bool = False
    explain: str = ""


def _rate_cell(result: ResultRecord) -> str:
    rate = result["echoes_per_s"]
    assert rate is not None
    marks = LIMITED_MARK if result["loadgen_limited"] else ""
    marks += SHORT_MARK if result["held_rate"] is False else ""
    return _short(rate["median"]) + marks


def _spread_cell(result: ResultRecord) -> str:
    rate = result["echoes_per_s"]
    assert rate is not None
    return f"{_short(rate['min'])}..{_short(rate['max'])}"


def _latency_cell(quantile: str) -> Callable[[ResultRecord], str]:
    def cell(result: ResultRecord) -> str:
        latency = result["latency_us"]
        return "n/a" if latency is None else _time_median(latency[quantile])  # type: ignore[literal-required]

    return cell


def _ratio_cell(key: str) -> Callable[[ResultRecord], str]:
    def cell(result: ResultRecord) -> str:
        if result["loadgen_limited"]:
            return LIMITED_MARK
        return _ratio(result["ratio"][key])  # type: ignore[literal-required]

    return cell


def _columns(report: Report, *, wide: bool) -> list[_Column]:
    """The columns of the table, by load mode; only the telling ones unless
    ``wide``."""
    settings = report["settings"]
    baseline = settings["baseline"]
    open_loop = settings["mode"] == "open"
    columns: list[_Column] = []
    if open_loop:
        columns.append(
            _Column(
                "achieved/s",
                _rate_cell,
                explain="achieved/s: echoes completed per second",
            )
        )
    else:
        columns.append(_Column("echoes/s", _rate_cell))
    if settings["repeat"] > 1:
        columns.append(
            _Column(
                "min..max",
                _spread_cell,
                wide_only=open_loop,
                explain="min..max: the spread of echoes/s over the runs",
            )
        )
    columns.append(_Column("MiB/s", lambda r: _median(r["mib_per_s"]), wide_only=True))
    columns += [
        _Column("p50", _latency_cell("p50")),
        _Column("p90", _latency_cell("p90"), wide_only=True),
        _Column("p99", _latency_cell("p99")),
        _Column("p99.9", _latency_cell("p999"), wide_only=not open_loop),
        _Column("max", _latency_cell("max"), wide_only=True),
        _Column(
            "srv µs/e",
            lambda r: _median(r["cpu_us_per_echo"]),
            explain="srv µs/e, lg µs/e: CPU time per echo of the server and of "
            "the load generator",
        ),
        _Column("lg µs/e", lambda r: _median(r["client_cpu_us_per_echo"])),
        _Column(
            "lg %",
            lambda r: _median(r["client_cpu_percent"]),
            wide_only=True,
            explain="lg %: CPU use of the busiest load generator process",
        ),
    ]
    if open_loop:
        columns.append(
            _Column(
                "lag p99",
                lambda r: _time_median(r["send_lag_us_p99"]),
                explain="lag p99: how late the load generator sent its messages",
            )
        )
    if baseline is not None:
        columns.append(
            _Column(
                "x base",
                _ratio_cell("echoes_per_s"),
                wide_only=open_loop,
                explain=f"x base: echoes/s over the baseline's ({baseline})",
            )
        )
        columns.append(
            _Column(
                "CPU x base",
                _ratio_cell("cpu_us_per_echo"),
                explain="CPU x base: server CPU per echo over the baseline's "
                f"({baseline})",
            )
        )
    return [column for column in columns if wide or not column.wide_only]


def highest_rates(report: Report) -> list[str]:
    """Lines on the highest rate each server held under the p99 limit (the
    figure to size by), for each size and connection count; none in closed loop."""
    groups: dict[tuple[int, int], list[str]] = {}
    for entry in report["highest_rates"]:
        rate = entry["rate"]
        held = "none" if rate is None else f"{format_rate(rate)}/s"
        why = (
            f" ({entry['stopped_by']})"
            if entry["stopped_by"]
            else " (the most offered)"
        )
        key = (entry["size"], entry["connections"])
        groups.setdefault(key, []).append(f"{entry['server']} {held}{why}")
    limit = _time(report["settings"]["p99_limit_us"])
    return [
        f"highest rate held with p99 under {limit}, {format_size(size)} x "
        f"{connections}: " + "; ".join(entries)
        for (size, connections), entries in groups.items()
    ]


def table(report: Report, *, wide: bool = False) -> Table:
    """Lay out ``report`` as rows, one group per workload.

    By default only the telling columns, with short headers explained in the
    notes (so that the table fits 100 columns); ``wide``: every figure.
    """
    columns = _columns(report, wide=wide)
    header = ["workload", "server", *(column.header for column in columns)]
    notes: list[str] = []

    def note(text: str) -> int:
        notes.append(f"[{len(notes) + 1}] {text}")
        return len(notes)

    labels = {w["id"]: w["label"] for w in report["workloads"]}
    groups: dict[str, list[list[str]]] = {}
    for result in report["results"]:
        label = labels[result["workload"]]
        row = [result["server"]]
        if not result["ok"] or result["echoes_per_s"] is None:
            number = note(f"{result['server']} ({label}): {result['error']}")
            row.append(f"FAILED [{number}]")
        else:
            row += [column.cell(result) for column in columns]
        groups.setdefault(label, []).append(row)
    notes += [
        f"not run: {server['name']}: {server['status']}: {server['reason']}"
        for server in report["servers"]
        if server["status"] != "ok"
    ]
    notes += highest_rates(report)
    notes += [
        f"skipped: {labels.get(entry['workload'], entry['workload'])}, "
        f"{entry['runs']} more runs: {entry['reason']}"
        for entry in report["skipped"]
    ]
    explained = [column.explain for column in columns if column.explain]
    limited = [r for r in report["results"] if r["loadgen_limited"]]
    if limited:
        explained.append(
            f"{LIMITED_MARK}: the load generator was the limit (near 100 % CPU, or "
            "late on its schedule): not a server figure, left out of the ratios"
        )
    if any(r["held_rate"] is False for r in report["results"]):
        explained.append(f"{SHORT_MARK}: the server did not hold the offered rate")
    notes += explained
    notes += [
        f"warning: {warning}"
        for warning in report["warnings"]
        if not (limited and warning.startswith("the load generator was the limit"))
    ]
    if not report["complete"]:
        notes.append("interrupted: only the runs done so far are shown")
    return Table(header, list(groups.items()), notes)


def context(report: Report) -> list[str]:
    """Two lines on what was measured where, to print above a table."""
    machine = report["machine"]
    settings = report["settings"]
    packages = ", ".join(
        f"{name} {version}" for name, version in report["versions"].items() if version
    )
    cpu = machine["cpu_model"] or machine["machine"]
    where = (
        f"{machine['system']} {machine['machine']}, {cpu}, {machine['cpu_count']} CPUs"
    )
    pinned = (
        f"server on CPU {_cpus(settings['server_cpus'])}, load generators on "
        + ", ".join(_cpus(cpus) for cpus in settings["client_cpus"])
        if settings["server_cpus"] is not None
        else "not pinned to CPUs"
    )
    runs = (
        "1 run" if settings["repeat"] == 1 else f"median of {settings['repeat']} runs"
    )
    if settings["mode"] == "open":
        load = (
            f"open loop ({settings['schedule']} schedule, seed {settings['seed']}): "
            "latency from each message's intended send time"
        )
    else:
        load = "closed loop: throughput at concurrency N"
    how = (
        f"{load}; {runs} of {settings['duration_s']:g} s after "
        f"{settings['warmup_s']:g} s warm-up; {pinned}; load generator on "
        f"{settings['loadgen_loop']}"
    )
    return [f"{packages}; {where}", how]


def _cpus(cpus: Sequence[int] | None) -> str:
    return "any" if cpus is None else ",".join(map(str, cpus))


def text(report: Report, *, wide: bool = False) -> str:
    """``report`` as a plain-text table, for a terminal or a log.

    Each workload is a heading line over its servers' rows, so that neither
    its label nor the servers' names need cutting.
    """
    laid_out = table(report, wide=wide)
    header = laid_out.header[1:]
    every_row = [header, *(row for _, rows in laid_out.groups for row in rows)]
    widths = [
        max(len(row[i]) for row in every_row if i < len(row))
        for i in range(len(header))
    ]
    widths[0] = max(widths[0], len(header[0])) + 2

    def line(cells: list[str]) -> str:
        # A failed server's row is short: it ends after its "FAILED" cell.
        pairs = list(zip(cells, widths, strict=False))
        left = [("  " + cell).ljust(width) for cell, width in pairs[:1]]
        right = [cell.rjust(width) for cell, width in pairs[1:]]
        return "  ".join(left + right).rstrip()

    lines = [
        wrapped
        for paragraph in context(report)
        for wrapped in textwrap.wrap(paragraph, CONTEXT_WIDTH)
    ]
    lines += ["", line(header)]
    lines.append("-" * len(lines[-1]))
    for label, rows in laid_out.groups:
        lines.append(label)
        lines += [line(row) for row in rows]
    notes = [
        wrapped
        for note in laid_out.notes
        for wrapped in textwrap.wrap(note, CONTEXT_WIDTH, subsequent_indent="    ")
    ]
    return "\n".join([*lines, "", *notes]).rstrip() + "\n"


def rich_table(report: Report, *, wide: bool = False) -> RichTable:
    """``report`` as a :class:`rich.table.Table` (needs ``rich``)."""
    from rich.table import Table as RichTable

    laid_out = table(report, wide=wide)
    result = RichTable(title="\n".join(context(report)), title_justify="left")
    for index, name in enumerate(laid_out.header[1:]):
        result.add_column(name, justify="left" if index < 1 else "right", no_wrap=True)
    for label, rows in laid_out.groups:
        result.add_row(f"[bold]{label}[/bold]")
        for row in rows:
            result.add_row(*row)
        result.add_section()
    result.caption = "\n".join(laid_out.notes) or None
    result.caption_justify = "left"
    return result


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(report: Report, *, wide: bool = False) -> str:
    """``report`` as Markdown: its context, one narrow table per workload (so
    that no table needs a scrollbar), and the notes."""
    laid_out = table(report, wide=wide)
    header = laid_out.header[1:]
    columns = len(header)
    lines = [f"{line}\n" for line in context(report)]
    for label, rows in laid_out.groups:
        lines += [f"{_markdown_cell(label)}:", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|---|" + "--:|" * (columns - 1))
        for row in rows:
            cells = row + [""] * (columns - len(row))
            lines.append("| " + " | ".join(map(_markdown_cell, cells)) + " |")
        lines.append("")
    if laid_out.notes:
        lines += [f"- {_markdown_cell(note)}" for note in laid_out.notes]
    return "\n".join(lines).rstrip() + "\n"


def _metric(result: ResultRecord, metric: str) -> Summary | None:
    if metric == "p99_us":
        latency = result["latency_us"]
        return None if latency is None else latency["p99"]
    summary: Summary | None = result[metric]  # type: ignore[literal-required]
    return summary


#: The latency chart's axis ends at this many times the p99 limit.
OVER_LIMIT = 3

#: The charts' base font size (points).
CHART_FONT_SIZE = 15

#: PNG charts are at least this many pixels wide.
PNG_WIDTH = 1600


def _save(figure: Figure, path: Path) -> None:
    width = figure.get_figwidth()
    figure.savefig(path, dpi=max(100, math.ceil(PNG_WIDTH / width)))


def plot(report: Report, path: Path, metric: str) -> None:
    """Chart ``report`` into ``path`` (PNG or SVG, by its suffix; needs
    ``matplotlib``): for open-loop load, latency against offered load; else
    ``metric`` as grouped bars."""
    from matplotlib import rc_context

    # Large type: the charts must stay readable shrunk to a page's width.
    with rc_context({"font.size": CHART_FONT_SIZE}):
        if report["settings"]["mode"] == "open":
            plot_latency(report, path)
        else:
            plot_bars(report, path, metric)


def plot_bars(report: Report, path: Path, metric: str) -> None:
    """Draw ``metric`` as grouped bars into ``path``: one panel per message size
    (each with a linear axis of its own, since sizes differ by orders of
    magnitude), one group per connection count, one bar per server.

    Bars show medians, whiskers the spread over the runs; a failed server is
    marked ``FAILED`` where its bar would be, and a figure that was the load
    generator's limit is hatched and marked ``!``. The legend sits below the
    panels, clear of the bars.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    workloads = [w for w in report["workloads"] if _has_results(report, w["id"])]
    sizes = list(dict.fromkeys(w["size"] for w in workloads))
    servers = list(dict.fromkeys(r["server"] for r in report["results"]))
    found = {(r["server"], r["workload"]): r for r in report["results"]}
    width = 0.8 / max(len(servers), 1)
    columns = min(len(sizes), 2) or 1
    rows = math.ceil(len(sizes) / columns) or 1
    figure = Figure(figsize=(12, 2.5 + 4 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, columns, squeeze=False)
    limited_any = False
    for panel, size in enumerate(sizes):
        axes = grid[panel // columns][panel % columns]
        group = [w for w in workloads if w["size"] == size]
        for index, server in enumerate(servers):
            bars: list[tuple[float, Summary, bool]] = []
            for position, workload in enumerate(group):
                x = position - 0.4 + (index + 0.5) * width
                result = found.get((server, workload["id"]))
                summary = None if result is None else _metric(result, metric)
                if result is not None and summary is not None:
                    bars.append((x, summary, result["loadgen_limited"]))
                elif result is not None:
                    axes.annotate(
                        f"{server}: {'n/a' if result['ok'] else 'FAILED'}",
                        (x, 0.02),
                        xycoords=("data", "axes fraction"),
                        rotation=90,
                        fontsize="x-small",
                        ha="center",
                    )
            if not bars:
                continue
            summaries = [summary for _, summary, _ in bars]
            drawn = axes.bar(
                [x for x, _, _ in bars],
                [s["median"] for s in summaries],
                width,
                yerr=[
                    [s["median"] - s["min"] for s in summaries],
                    [s["max"] - s["median"] for s in summaries],
                ],
                color=f"C{index % 10}",
                label=server if panel == 0 else None,
                capsize=2,
            )
            for bar, (_, summary, limited) in zip(drawn, bars, strict=True):
                if limited:
                    limited_any = True
                    bar.set_hatch("//")
                    bar.set_alpha(0.5)
                    axes.annotate(
                        LIMITED_MARK,
                        (bar.get_x() + bar.get_width() / 2, summary["median"]),
                        ha="center",
                        va="bottom",
                    )
        labels = [
            f"{w['connections']} conn{'s' * (w['connections'] > 1)}"
            + (f", {w['pipeline']} in flight" if w["pipeline"] > 1 else "")
            for w in group
        ]
        axes.set_xticks(range(len(group)), labels)
        axes.set_ylim(bottom=0)
        axes.set_title(format_size(size))
        axes.grid(axis="y", alpha=0.3)
        if panel % columns == 0:
            axes.set_ylabel(METRICS[metric])
    for panel in range(len(sizes), rows * columns):
        grid[panel // columns][panel % columns].set_visible(False)
    better = "lower" if metric in LOWER_IS_BETTER else "higher"
    title = f"anyecho bench: {METRICS[metric]} ({better} is better)"
    if limited_any:
        title += (
            f"\nhatched, {LIMITED_MARK}: the load generator's limit, not the server's"
        )
    figure.suptitle(title, fontsize="large")
    figure.legend(
        loc="outside lower center", ncols=min(len(servers), 4), fontsize="medium"
    )
    _save(figure, path)


def _panel(workload: WorkloadRecord) -> tuple[int, int]:
    return workload["size"], workload["connections"]


def _quantile_ms(result: ResultRecord, quantile: str) -> float:
    latency = result["latency_us"]
    assert latency is not None
    summary = latency["p99"] if quantile == "p99" else latency["p50"]
    return summary["median"] / 1e3


def plot_latency(report: Report, path: Path) -> None:
    """Draw round-trip latency against offered load into ``path``: one panel
    per size and connection count, one line per server (p99 solid, p50 dashed),
    on linear axes. Points where the load generator was the limit are hollow;
    where the server did not hold the rate, crossed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    workloads = {w["id"]: w for w in report["workloads"] if w["rate"] is not None}
    panels = list(
        dict.fromkeys((w["size"], w["connections"]) for w in workloads.values())
    )
    servers = list(dict.fromkeys(r["server"] for r in report["results"]))
    columns = min(len(panels), 2) or 1
    rows = math.ceil(len(panels) / columns) or 1
    figure = Figure(figsize=(12, 3 + 5 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, columns, squeeze=False)
    # Lines far over the p99 limit (a stalling server) would flatten the others:
    # the axis ends at a few times the limit, and what lies beyond is labelled.
    limit_ms = report["settings"]["p99_limit_us"] / 1e3
    top = OVER_LIMIT * limit_ms
    axes_right = max((w["rate"] or 0.0 for w in workloads.values()), default=1.0)
    for panel, (size, connections) in enumerate(panels):
        axes = grid[panel // columns][panel % columns]
        for index, server in enumerate(servers):
            points = sorted(
                (
                    (workloads[r["workload"]]["rate"] or 0.0, r)
                    for r in report["results"]
                    if r["server"] == server
                    and r["workload"] in workloads
                    and _panel(workloads[r["workload"]]) == (size, connections)
                    and r["latency_us"] is not None
                ),
                key=lambda point: point[0],
            )
            if not points:
                continue
            color = f"C{index % 10}"
            rates = [rate for rate, _ in points]
            for quantile, style in (("p99", "-"), ("p50", "--")):
                exact = [_quantile_ms(r, quantile) for _, r in points]
                values = [min(value, top) for value in exact]
                axes.plot(
                    rates,
                    values,
                    style,
                    marker="." if quantile == "p99" else None,
                    color=color,
                    label=server if quantile == "p99" else None,
                    linewidth=2 if quantile == "p99" else 1,
                )
                for rate, value in zip(rates, exact, strict=True):
                    if value > top and quantile == "p99":
                        axes.annotate(
                            f"{server}: p99 {value:.3g} ms",
                            (rate, top),
                            xytext=(4, -4 - 11 * index),
                            textcoords="offset points",
                            color=color,
                            fontsize="small",
                            ha="left" if rate < axes_right / 2 else "right",
                            va="top",
                        )
                for rate, value, (_, r) in zip(rates, values, points, strict=True):
                    if r["loadgen_limited"]:
                        axes.plot(rate, value, "o", mfc="white", color=color)
                    elif r["held_rate"] is False:
                        axes.plot(rate, value, "x", color=color)
        axes.axhline(
            limit_ms,
            color="grey",
            linestyle=":",
            linewidth=1,
        )
        axes.set_title(
            f"{format_size(size)}, {connections} conn{'s' * (connections > 1)}"
        )
        axes.set_xlabel("offered load (echoes/s)")
        axes.set_ylabel("round trip (ms)")
        axes.set_xlim(left=0)
        axes.set_ylim(0, top * 1.05)
        axes.grid(alpha=0.3)
    for panel in range(len(panels), rows * columns):
        grid[panel // columns][panel % columns].set_visible(False)
    figure.suptitle(
        "anyecho bench: round-trip latency against offered load (lower is better)"
        "\np99 solid, p50 dashed, timed from each message's intended send time"
        "\ndotted: the p99 limit; hollow: the load generator's limit; x: rate not held",
        fontsize="medium",
    )
    figure.legend(
        loc="outside lower center", ncols=min(len(servers), 4), fontsize="medium"
    )
    _save(figure, path)


def _has_results(report: Report, workload: str) -> bool:
    return any(r["workload"] == workload for r in report["results"])
