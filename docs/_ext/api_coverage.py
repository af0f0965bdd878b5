"""Fail the build when a public name is missing from the API reference.

For each module in the ``api_coverage_modules`` setting, every name in its
``__all__`` must be documented somewhere in the site as ``module.name`` (by
``autoclass``, ``autofunction``, ``autodata``, ``py:function`` and so on). Each
name that is not gets a warning, which ``sphinx-build -W`` turns into a failed
build, naming the page to add it to:

.. code-block:: text

    WARNING: anyecho.tls_server_context is in anyecho.__all__ but not documented:
    add it to docs/api.rst (for example: .. autofunction:: anyecho.tls_server_context)

The check runs once every page has been read, for every builder.

An object exported by two public modules is documented once, under the module
that defines it; ``.. anyecho-alias:: NAME DOCUMENTED`` then registers the other
name as an alias (so it counts as documented, ``:class:`NAME``` links to the
paragraph the directive writes, and a bare reference to the short name still finds
one object), followed by the directive's content:

.. code-block:: rst

    .. anyecho-alias:: anyecho.Faults anyecho.faults.Faults

       The same class, exported by both modules.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.typing import ExtensionMetadata

__all__ = ["AliasDirective", "setup", "undocumented"]

logger = logging.getLogger(__name__)


def _directive_for(value: Any) -> str:
    if inspect.isclass(value):
        if issubclass(value, BaseException):
            return "autoexception"
        return "autoclass"
    if callable(value):
        return "autofunction"
    return "autodata"


def undocumented(env: BuildEnvironment, modules: dict[str, str]) -> list[str]:
    """One message per public name that no page documents."""
    documented = set(env.get_domain("py").objects)  # type: ignore[attr-defined]
    problems: list[str] = []
    for module_name, page in modules.items():
        module = importlib.import_module(module_name)
        public = getattr(module, "__all__", None)
        if public is None:
            problems.append(f"{module_name} has no __all__ to check")
            continue
        for name in public:
            full = f"{module_name}.{name}"
            if full in documented:
                continue
            directive = _directive_for(getattr(module, name, None))
            problems.append(
                f"{full} is in {module_name}.__all__ but not documented: add it to "
                f"docs/{page} (for example: .. {directive}:: {full})"
            )
    return problems


class AliasDirective(SphinxDirective):
    """``.. anyecho-alias:: NAME DOCUMENTED``: see the module docstring."""

    required_arguments = 2
    has_content = True

    def run(self) -> list[nodes.Node]:
        name, documented = self.arguments
        module_name, _, attr = name.rpartition(".")
        value = getattr(importlib.import_module(module_name), attr)
        objtype = {"autoclass": "class", "autoexception": "exception"}.get(
            _directive_for(value), "function" if callable(value) else "data"
        )
        target = nodes.target("", "", ids=[name])
        self.env.get_domain("py").note_object(  # type: ignore[attr-defined]
            name, objtype, name, aliased=True, location=self.get_location()
        )
        role = "class" if objtype in {"class", "exception"} else "obj"
        line = f"``{name}`` is :py:{role}:`{documented}`."
        paragraph = nodes.container()
        self.state.nested_parse(StringList([line]), self.content_offset, paragraph)
        body = nodes.container()
        self.state.nested_parse(self.content, self.content_offset, body)
        return [target, *paragraph.children, *body.children]


def _check(app: Sphinx, env: BuildEnvironment) -> None:
    for problem in undocumented(env, app.config.api_coverage_modules):
        logger.warning(problem, type="anyecho", subtype="api-coverage")


def setup(app: Sphinx) -> ExtensionMetadata:
    app.add_config_value("api_coverage_modules", {}, "env", types=[dict])
    app.add_directive("anyecho-alias", AliasDirective)
    app.connect("env-check-consistency", _check)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
