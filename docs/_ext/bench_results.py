"""``.. anyecho-bench-markdown:: FILE``: show a table written by ``anyecho bench``.

``anyecho bench --markdown FILE`` writes its report as Markdown: context lines, a
pipe table and a list of notes. This directive reads that file (relative to the
page) and turns exactly that much Markdown into the page's own paragraphs, table
and list, so refreshing the results needs no converter and no Markdown parser.
Text is taken literally, apart from ```code``` spans. A Markdown construct it does
not know is reported as a warning rather than shown wrongly.

With ``:chart: PATH`` (relative to the page, or to the source directory with a
leading ``/``) the chart that ``anyecho bench --plot PATH`` drew is shown below
the table, when it exists.

When the Markdown file does not exist the directive shows a note saying so, with
the directive's content (the command that makes it) as a literal block.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.typing import ExtensionMetadata

__all__ = ["BenchMarkdownDirective", "parse_markdown", "setup"]

logger = logging.getLogger(__name__)

_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_ALIGN_ROW = re.compile(r"^\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*$")


def _inline(text: str) -> list[nodes.Node]:
    """Plain text with ```code``` spans."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unmatched backtick: keep it as text
        return [nodes.Text(text)]
    return [
        nodes.literal(part, part) if index % 2 else nodes.Text(part)
        for index, part in enumerate(parts)
        if part
    ]


def _cells(line: str) -> list[str]:
    inner = line.strip()
    inner = inner.removeprefix("|").removesuffix("|")
    return [cell.strip().replace("\\|", "|") for cell in _CELL_SPLIT.split(inner)]


def _table(lines: list[str]) -> nodes.table:
    header = _cells(lines[0])
    aligns = _cells(lines[1]) if len(lines) > 1 and _ALIGN_ROW.match(lines[1]) else []
    body = [_cells(line) for line in lines[2 if aligns else 1 :]]
    width = len(header)
    table = nodes.table(classes=["anyecho-bench-table"])
    group = nodes.tgroup(cols=width)
    table += group
    for _ in range(width):
        group += nodes.colspec(colwidth=1)

    def row(cells: list[str]) -> nodes.row:
        result = nodes.row()
        for index in range(width):
            cell = cells[index] if index < len(cells) else ""
            classes = []
            if index < len(aligns) and aligns[index].endswith(":"):
                classes.append("text-right")
            entry = nodes.entry(classes=classes)
            entry += nodes.paragraph("", "", *_inline(cell))
            result += entry
        return result

    thead = nodes.thead()
    thead += row(header)
    group += thead
    tbody = nodes.tbody()
    for cells in body:
        tbody += row(cells)
    group += tbody
    return table


def _blocks(text: str) -> list[list[str]]:
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip():
            blocks[-1].append(line.rstrip())
        elif blocks[-1]:
            blocks.append([])
    return [block for block in blocks if block]


def parse_markdown(text: str) -> tuple[list[nodes.Node], list[str]]:
    """Docutils nodes for ``anyecho bench --markdown`` output, and any problems."""
    result: list[nodes.Node] = []
    problems: list[str] = []
    for block in _blocks(text):
        first = block[0].lstrip()
        if first.startswith("|"):
            result.append(_table(block))
        elif first.startswith(("- ", "* ")):
            bullets = nodes.bullet_list()
            for line in block:
                stripped = line.lstrip()
                if stripped.startswith(("- ", "* ")):
                    item = nodes.list_item()
                    item += nodes.paragraph()
                    bullets += item
                    stripped = stripped[2:]
                else:
                    stripped = " " + stripped
                paragraph = bullets.children[-1].children[0]
                paragraph.extend(_inline(stripped.replace("\\|", "|")))
            result.append(bullets)
        elif first.startswith(("#", "```", ">")) or re.match(r"\d+\.\s", first):
            problems.append(f"unsupported Markdown: {first[:40]!r}")
        else:
            result.append(nodes.paragraph("", "", *_inline(" ".join(block))))
    return result, problems


class BenchMarkdownDirective(SphinxDirective):
    """``.. anyecho-bench-markdown:: FILE``: see the module docstring."""

    required_arguments = 1
    has_content = True
    option_spec: ClassVar[dict[str, Callable[[str], Any]]] = {
        "chart": directives.unchanged,
        "chart-alt": directives.unchanged,
    }

    def run(self) -> list[nodes.Node]:
        relative, path = self.env.relfn2path(self.arguments[0], self.env.docname)
        self.env.note_dependency(relative)
        if not Path(path).is_file():
            note = nodes.note()
            note += nodes.paragraph(
                "", f"No results yet: {self.arguments[0]} does not exist. Make it with:"
            )
            command = "\n".join(self.content)
            note += nodes.literal_block(command, command, language="console")
            return [note]
        found, problems = parse_markdown(Path(path).read_text(encoding="utf-8"))
        for problem in problems:
            logger.warning(
                f"{self.arguments[0]}: {problem}", location=self.get_location()
            )
        chart = self.options.get("chart")
        if chart and Path(self.env.relfn2path(chart, self.env.docname)[1]).is_file():
            alt = self.options.get("chart-alt", "benchmark chart")
            found.append(nodes.image(uri=chart, alt=alt, classes=["anyecho-bench"]))
        return found


def setup(app: Sphinx) -> ExtensionMetadata:
    app.add_directive("anyecho-bench-markdown", BenchMarkdownDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
