"""Sphinx configuration for the anyecho documentation.

Everything that describes the code is generated from it when the site is built:
the API reference from the docstrings (autodoc), the command-line reference from
``anyecho.cli.build_parser()`` (``_ext/cli_reference.py``), and the code examples
run as tests (``sphinx-build -b doctest``). ``_ext/api_coverage.py`` fails the
build when a public name is left out of the API reference.

The build needs no network: references to other projects' objects (the standard
library, AnyIO, Trio, pytest) become links by ``_ext/offline_refs.py`` instead of
intersphinx inventories.

The other local extensions, in ``_ext/``: ``autodoc_public`` (constants' comments
and dataclass defaults as the source spells them), ``pytest_fixtures`` (the
plugin's fixtures), ``bench_results`` (the table that ``anyecho bench --markdown``
wrote), ``readme_blocks`` (the README's commands), ``rendered_html`` (fails the
build when a written page would show one of Furo's CSS-only error boxes);
``docs_support`` holds what the examples' hidden set-up code uses.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

import anyecho  # noqa: E402 - the checkout's package, found through sys.path

# -- Project -----------------------------------------------------------------------

project = "anyecho"
author = "The anyecho developers"
copyright = "2026, The anyecho developers"
release = anyecho.__version__
version = ".".join(release.split(".")[:2])

# -- General -----------------------------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "api_coverage",
    "autodoc_public",
    "bench_results",
    "cli_reference",
    "offline_refs",
    "pytest_fixtures",
    "readme_blocks",
    "rendered_html",
]

root_doc = "index"
exclude_patterns = ["_build"]
templates_path: list[str] = []
nitpicky = True
primary_domain = "py"
highlight_language = "python"
pygments_style = "sphinx"
pygments_dark_style = "monokai"

# -- autodoc -----------------------------------------------------------------------

autodoc_typehints = "description"
autodoc_typehints_description_target = "all"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_class_signature = "mixed"
autoclass_content = "both"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": True}

# -- API coverage (_ext/api_coverage.py) ---------------------------------------------

# Every name in these modules' __all__ must be documented on the given page.
api_coverage_modules = {
    "anyecho": "api.rst",
    "anyecho.testing": "api.rst",
    "anyecho.faults": "api.rst",
    "anyecho.pytest_plugin": "api.rst",
    "anyecho.metrics": "api.rst",
    "anyecho.control": "api.rst",
}

# -- doctest -----------------------------------------------------------------------

# Every example runs against the package in this checkout. The library logs
# through the "anyecho" logger and installs no handler; the examples stay quiet.
doctest_global_setup = f"""
import logging
import pathlib
import sys

import anyecho
from docs_support import LOOP_REPORTS_HANDLER_ERRORS

logging.getLogger("anyecho").addHandler(logging.NullHandler())
DOCS = pathlib.Path({str(HERE)!r})
"""
doctest_show_successes = False

# -- HTML --------------------------------------------------------------------------

html_theme = "furo"
html_title = f"anyecho {release}"
html_static_path = ["_static"]
html_css_files = ["anyecho.css"]
html_theme_options = {
    "source_repository": "https://github.com/anyecho/anyecho/",
    "source_branch": "main",
    "source_directory": "docs/",
}
