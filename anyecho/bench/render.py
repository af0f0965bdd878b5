"""A report for people: a terminal table, a Markdown table, or a bar chart.

Every figure is the median over the runs of a server and workload; ``min..max``
is the spread of echoes per second, ``CPU µs/echo`` the server's CPU time per
echo, ``client %`` the CPU use of the busiest load generator process (in % of one
core). A failed server shows ``FAILED [n]``, with its reason in note ``[n]`` below
the table; ``!`` marks figures that the load generator may have limited.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .report import Report, ResultRecord, Summary

if TYPE_CHECKING:
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


def _row(
    result: ResultRecord, label: str, baseline: str | None, note: Callable[[str], int]
) -> list[str]:
    cells = [result["server"]]
    rate = result["echoes_per_s"]
    latency = result["latency_us"]
    if not result["ok"] or rate is None or latency is None:
        number = note(f"{result['server']} ({label}): {result['error']}")
        return [*cells, f"FAILED [{number}]"]
    mark = " !" if result["client_saturated"] else ""
    cells += [
        _number(rate["median"]) + mark,
        f"{_short(rate['min'])}..{_short(rate['max'])}",
        _median(result["mib_per_s"]),
        *(_median(latency[q]) for q in ("p50", "p90", "p99", "max")),
        _median(result["cpu_us_per_echo"]),
        _median(result["client_cpu_percent"]),
    ]
    if baseline is not None:
        ratio = result["ratio"]
        cells += [_ratio(ratio["echoes_per_s"]), _ratio(ratio["cpu_us_per_echo"])]
    return cells


def table(report: Report) -> Table:
    """Lay out ``report`` as rows, one group per workload."""
    baseline = report["settings"]["baseline"]
    header = ["workload", "server", "echoes/s", "min..max", "MiB/s"]
    header += ["p50 µs", "p90 µs", "p99 µs", "max µs", "CPU µs/echo", "client %"]
    if baseline is not None:
        header += [f"x {baseline}", f"CPU x {baseline}"]
    notes: list[str] = []

    def note(text: str) -> int:
        notes.append(f"[{len(notes) + 1}] {text}")
        return len(notes)

    labels = {w["id"]: w["label"] for w in report["workloads"]}
    groups: dict[str, list[list[str]]] = {}
    for result in report["results"]:
        label = labels[result["workload"]]
        groups.setdefault(label, []).append(_row(result, label, baseline, note))
    notes += [
        f"not run: {server['name']}: {server['status']}: {server['reason']}"
        for server in report["servers"]
        if server["status"] != "ok"
    ]
    notes += [f"warning: {warning}" for warning in report["warnings"]]
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
    runs = "1 run" if settings["repeat"] == 1 else f"{settings['repeat']} runs"
    how = (
        f"median of {runs} of {settings['duration_s']:g} s after "
        f"{settings['warmup_s']:g} s warm-up; {pinned}; load generator on "
        f"{settings['loadgen_loop']}"
    )
    return [f"{packages}; {where}", how]


def _cpus(cpus: Sequence[int] | None) -> str:
    return "any" if cpus is None else ",".join(map(str, cpus))


def text(report: Report) -> str:
    """``report`` as a plain-text table, for a terminal or a log."""
    laid_out = table(report)
    groups = [
        [[label if index == 0 else "", *row] for index, row in enumerate(rows)]
        for label, rows in laid_out.groups
    ]
    every_row = [laid_out.header, *(row for group in groups for row in group)]
    widths = [
        max(len(row[i]) for row in every_row if i < len(row))
        for i in range(len(laid_out.header))
    ]

    def line(cells: list[str]) -> str:
        # A failed server's row is short: it ends after its "FAILED" cell.
        pairs = list(zip(cells, widths, strict=False))
        left = [cell.ljust(width) for cell, width in pairs[:2]]
        right = [cell.rjust(width) for cell, width in pairs[2:]]
        return "  ".join(left + right).rstrip()

    lines = [
        *context(report),
        "",
        line(laid_out.header),
        "-" * sum(widths, 2 * len(widths) - 2),
    ]
    for index, group in enumerate(groups):
        lines += [""] * (index > 0) + [line(row) for row in group]
    return "\n".join([*lines, "", *laid_out.notes]).rstrip() + "\n"


def rich_table(report: Report) -> RichTable:
    """``report`` as a :class:`rich.table.Table` (needs ``rich``)."""
    from rich.table import Table as RichTable

    laid_out = table(report)
    result = RichTable(title="\n".join(context(report)), title_justify="left")
    for index, name in enumerate(laid_out.header):
        result.add_column(name, justify="left" if index < 2 else "right")
    for label, rows in laid_out.groups:
        for index, row in enumerate(rows):
            result.add_row(label if index == 0 else "", *row)
        result.add_section()
    result.caption = "\n".join(laid_out.notes) or None
    result.caption_justify = "left"
    return result


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(report: Report) -> str:
    """``report`` as a Markdown table, with its context above and notes below."""
    laid_out = table(report)
    columns = len(laid_out.header)
    lines = [f"{line}\n" for line in context(report)]
    lines.append("| " + " | ".join(laid_out.header) + " |")
    lines.append("|" + "---|" * 2 + "--:|" * (columns - 2))
    for label, rows in laid_out.groups:
        for row in rows:
            cells = [label, *row] + [""] * (columns - 1 - len(row))
            lines.append("| " + " | ".join(map(_markdown_cell, cells)) + " |")
    if laid_out.notes:
        lines.append("")
        lines += [f"- {_markdown_cell(note)}" for note in laid_out.notes]
    return "\n".join(lines) + "\n"


def _metric(result: ResultRecord, metric: str) -> Summary | None:
    if metric == "p99_us":
        latency = result["latency_us"]
        return None if latency is None else latency["p99"]
    summary: Summary | None = result[metric]  # type: ignore[literal-required]
    return summary


def plot(report: Report, path: Path, metric: str) -> None:
    """Draw ``metric`` as grouped bars (one group per workload) into ``path``.

    The file type (PNG or SVG) follows the suffix. Bars show medians, whiskers the
    spread over the runs, on a logarithmic scale; a failed server is marked
    ``FAILED`` where its bar would be. Needs ``matplotlib``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    workloads = [w for w in report["workloads"] if _has_results(report, w["id"])]
    servers = list(dict.fromkeys(r["server"] for r in report["results"]))
    found = {(r["server"], r["workload"]): r for r in report["results"]}
    width = 0.8 / max(len(servers), 1)
    size = (max(6.4, 0.2 * len(servers) * len(workloads) + 3), 4.8)
    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for index, server in enumerate(servers):
        bars: list[tuple[float, Summary]] = []
        for position, workload in enumerate(workloads):
            x = position - 0.4 + (index + 0.5) * width
            result = found.get((server, workload["id"]))
            summary = None if result is None else _metric(result, metric)
            if summary is not None:
                bars.append((x, summary))
            elif result is not None:
                axes.annotate(
                    f"{server}: {'n/a' if result['ok'] else 'FAILED'}",
                    (x, 0.02),
                    xycoords=("data", "axes fraction"),
                    rotation=90,
                    fontsize=6,
                    ha="center",
                )
        if not bars:
            continue
        summaries = [summary for _, summary in bars]
        axes.bar(
            [x for x, _ in bars],
            [s["median"] for s in summaries],
            width,
            yerr=[
                [s["median"] - s["min"] for s in summaries],
                [s["max"] - s["median"] for s in summaries],
            ],
            color=f"C{index % 10}",
            label=server,
            capsize=2,
        )
    axes.set_xticks(range(len(workloads)), [w["label"] for w in workloads])
    axes.set_yscale("log")
    axes.set_ylabel(METRICS[metric])
    axes.set_title(f"anyecho bench: {METRICS[metric]}", fontsize="medium")
    axes.legend(fontsize="small", ncols=2)
    figure.savefig(path)


def _has_results(report: Report, workload: str) -> bool:
    return any(r["workload"] == workload for r in report["results"])
