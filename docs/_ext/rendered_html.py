"""Fail the build when a written HTML page would show one of Furo's error boxes.

Furo marks some markup as a mistake with CSS alone, so neither Sphinx nor ``-W``
ever sees it. A ``.. contents::`` directive is the one this site has made: Furo
already lists a page's sections in its right-hand sidebar, and its stylesheet
(``furo/assets/styles/components/_table_of_contents.sass``) paints any element of
class ``contents`` red, headed by the text

.. code-block:: text

    ERROR: Adding a table of contents in Furo-based documentation is unnecessary,
    and does not work well with existing styling. ...

unless it also has the class ``this-will-duplicate-information-and-it-is-still-
useful-here`` (Furo's escape hatch, for a contents list that is wanted anyway:
``.. contents::`` with ``:class:``).

Once an HTML builder has written the site, this extension reads every page, logs
an error for each element the rule would match, and makes the build fail (exit
status 1, with or without ``-W``):

.. code-block:: text

    docs/api.rst: ERROR: Furo would show "ERROR: Adding a table of contents in
    Furo-based documentation is unnecessary ..." above <nav class="contents local"
    id="on-this-page"> in api.html: drop the .. contents:: directive (Furo's
    sidebar lists the page's sections)
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.builders.html import StandaloneHTMLBuilder
from sphinx.util import logging
from sphinx.util.typing import ExtensionMetadata

__all__ = ["ESCAPE_HATCH", "FURO_ERROR", "offending_elements", "setup"]

logger = logging.getLogger(__name__)

#: The start of the text that Furo's stylesheet puts before a ``.contents`` element.
FURO_ERROR = (
    "ERROR: Adding a table of contents in Furo-based documentation is unnecessary"
)
#: The class that makes Furo leave a ``.contents`` element alone.
ESCAPE_HATCH = "this-will-duplicate-information-and-it-is-still-useful-here"


class _ContentsFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if "contents" in classes and ESCAPE_HATCH not in classes:
            shown = " ".join(f'{name}="{value}"' for name, value in attrs)
            self.found.append(f"<{tag} {shown}>")


def offending_elements(html: str) -> list[str]:
    """The start tags in ``html`` that Furo's table-of-contents rule matches."""
    finder = _ContentsFinder()
    finder.feed(html)
    finder.close()
    return finder.found


def _check(app: Sphinx, exception: Exception | None) -> None:
    if exception is not None or app.builder.format != "html":
        return
    builder = app.builder
    assert isinstance(builder, StandaloneHTMLBuilder)
    failed = False
    for docname in sorted(app.env.found_docs):
        page = Path(builder.get_outfilename(docname))
        if not page.is_file():
            continue
        for element in offending_elements(page.read_text(encoding="utf-8")):
            failed = True
            logger.error(
                'Furo would show "%s ..." above %s in %s: drop the .. contents:: '
                "directive (Furo's sidebar lists the page's sections)",
                FURO_ERROR,
                element,
                page.relative_to(app.outdir).as_posix(),
                location=docname,
            )
    if failed:
        app.statuscode = 1  # whether or not -W turns warnings into errors


def setup(app: Sphinx) -> ExtensionMetadata:
    app.connect("build-finished", _check)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
