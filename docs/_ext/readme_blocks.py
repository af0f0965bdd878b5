"""``.. readme-code:: FILE``: show a fenced code block of a Markdown file.

The Quickstart shows the README's install commands; rather than copies that could
drift, this directive takes them from the README when the site is built:

.. code-block:: rst

    .. readme-code:: ../README.md
       :block: 1

``:block:`` counts the file's fenced code blocks (```` ``` ````) from 1; the
block's language (```` ```console ````) is kept. A missing file or block fails the
build.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.typing import ExtensionMetadata

__all__ = ["ReadmeCodeDirective", "fenced_blocks", "setup"]

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of each fenced code block, in order."""
    return [(match[1], match[2].rstrip("\n")) for match in _FENCE.finditer(text)]


class ReadmeCodeDirective(SphinxDirective):
    """``.. readme-code:: FILE``: see the module docstring."""

    required_arguments = 1
    option_spec: ClassVar[dict[str, Callable[[str], Any]]] = {
        "block": directives.positive_int,
    }

    def run(self) -> list[nodes.Node]:
        relative, path = self.env.relfn2path(self.arguments[0], self.env.docname)
        self.env.note_dependency(relative)
        number = self.options.get("block", 1)
        try:
            blocks = fenced_blocks(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise self.error(f"cannot read {self.arguments[0]}: {exc}") from exc
        if number > len(blocks):
            raise self.error(f"{self.arguments[0]} has no code block {number}")
        language, code = blocks[number - 1]
        block = nodes.literal_block(code, code, language=language or "text")
        self.set_source_info(block)
        return [block]


def setup(app: Sphinx) -> ExtensionMetadata:
    app.add_directive("readme-code", ReadmeCodeDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
