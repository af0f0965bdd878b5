"""``.. anyecho-fixtures:: MODULE``: document the pytest fixtures a plugin defines.

autodoc does not know pytest fixtures: ``@pytest.fixture`` turns a function into a
fixture definition object. This directive lists every fixture in the module's
``__all__``, in that order, as a ``py:function`` entry (so ``:func:`` links to it)
that gives its scope, the fixtures it uses, the type of its value (from the return
annotation: for a generator fixture, the type it yields) and its docstring.

Annotations may name types imported under ``if TYPE_CHECKING:``; those imports are
run here to resolve them.
"""

from __future__ import annotations

import ast
import collections.abc
import importlib
import inspect
import typing
from types import ModuleType
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util.docstrings import prepare_docstring
from sphinx.util.docutils import SphinxDirective
from sphinx.util.typing import ExtensionMetadata, stringify_annotation

__all__ = ["FixturesDirective", "fixtures", "setup"]

_GENERATORS = {
    collections.abc.Iterator,
    collections.abc.AsyncIterator,
    collections.abc.Generator,
    collections.abc.AsyncGenerator,
}

#: Fixtures of pytest itself, left out of "uses".
_BUILTIN_FIXTURES = {"request"}


def _type_checking_names(module: ModuleType) -> dict[str, Any]:
    """The names a module imports under ``if TYPE_CHECKING:``."""
    namespace: dict[str, Any] = {"__name__": module.__name__}
    namespace["__package__"] = module.__package__
    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith(
            "TYPE_CHECKING"
        ):
            block = ast.Module(body=node.body, type_ignores=[])
            exec(compile(block, module.__name__, "exec"), namespace)  # noqa: S102
    namespace.pop("__builtins__", None)
    return namespace


def _value_type(function: Any, module: ModuleType) -> Any:
    """The type of the fixture's value, or ``None`` if unannotated."""
    namespace = {**vars(module), **_type_checking_names(module)}
    hints = typing.get_type_hints(function, globalns=namespace)
    value = hints.get("return")
    if typing.get_origin(value) in _GENERATORS:
        value = typing.get_args(value)[0]
    return value


def fixtures(module_name: str) -> list[tuple[str, Any, Any]]:
    """``(name, marker, function)`` for each fixture in the module's ``__all__``."""
    module = importlib.import_module(module_name)
    found = []
    for name in module.__all__:
        value = getattr(module, name)
        marker = getattr(value, "_fixture_function_marker", None)
        if marker is not None:
            found.append((name, marker, value._get_wrapped_function()))
    return found


def render(module_name: str) -> list[str]:
    """reST for every fixture of ``module_name``."""
    module = importlib.import_module(module_name)
    lines: list[str] = []
    for name, marker, function in fixtures(module_name):
        lines += [f".. py:function:: {marker.name or name}"]
        lines += [f"   :module: {module_name}", ""]
        uses = [
            parameter
            for parameter in inspect.signature(function).parameters
            if parameter not in _BUILTIN_FIXTURES
        ]
        value = _value_type(function, module)
        fields = [f":Scope: ``{marker.scope}``"]
        if marker.autouse:
            fields.append(":Autouse: yes")
        if uses:
            fields.append(":Uses: " + ", ".join(f"``{use}``" for use in uses))
        if value is not None:
            text = stringify_annotation(value, "fully-qualified-except-typing")
            fields.append(f":Value: :py:class:`~{text}`")
        lines += [f"   {field}" for field in fields]
        lines.append("")
        for line in prepare_docstring(inspect.getdoc(function) or ""):
            lines.append(f"   {line}" if line else "")
        lines.append("")
    return lines


class FixturesDirective(SphinxDirective):
    """``.. anyecho-fixtures:: MODULE``: see the module docstring."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        module_name = self.arguments[0]
        try:
            lines = render(module_name)
        except Exception as exc:  # import or annotation errors: report them
            message = f"cannot document fixtures of {module_name}: {exc}"
            raise self.error(message) from exc
        container = nodes.container()
        self.state.nested_parse(
            StringList(lines, source=f"<fixtures of {module_name}>"), 0, container
        )
        # Shown as "fixture name", not "name()": a fixture is requested by name.
        for signature in container.findall(addnodes.desc_signature):
            for parameters in list(signature.findall(addnodes.desc_parameterlist)):
                parameters.parent.remove(parameters)
            prefix = addnodes.desc_annotation("fixture ", "")
            prefix += [nodes.Text("fixture"), addnodes.desc_sig_space()]
            signature.insert(0, prefix)
        return list(container.children)


def setup(app: Sphinx) -> ExtensionMetadata:
    app.add_directive("anyecho-fixtures", FixturesDirective)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
