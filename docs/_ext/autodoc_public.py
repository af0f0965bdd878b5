"""Make autodoc show re-exported objects the way their source spells them.

anyecho defines its public objects in private modules and re-exports them, which
autodoc handles with two blind spots, fixed here:

- A constant's ``#:`` comment is looked up in the module it is documented under
  (``anyecho``), not the one that defines it (``anyecho._config``), so autodoc
  falls back to the docstring of its type (``int``). The comment is taken from
  the defining module instead.
- A dataclass's generated ``__init__`` has no source, so its signature shows each
  default's ``repr()``: every port of a frozenset, ``384`` for ``0o600``,
  ``<factory>`` for a default factory. The defaults are taken from the class body
  instead (``DEFAULT_UDP_BLOCKED_PORTS``, ``0o600``, and for a factory the
  expression it returns, such as ``RateLimit(100.0, 100.0)``).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap
from typing import Any

from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer, PycodeError
from sphinx.util.typing import ExtensionMetadata

__all__ = ["field_defaults", "setup"]

#: Packages whose modules are searched for a constant's ``#:`` comment.
PACKAGES = ("anyecho",)


class _Source:
    """A default value that prints as the source text that produced it."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _defining_comment(name: str, value: Any) -> list[str] | None:
    """The ``#:`` comment of the module-level constant ``name`` holding ``value``."""
    short = name.rpartition(".")[2]
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith(PACKAGES):
            continue
        if getattr(module, short, None) is not value:
            continue
        try:
            docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
        except PycodeError:
            continue
        if ("", short) in docs:
            return list(docs[("", short)])
    return None


def _process_docstring(  # noqa: PLR0917 - the event's signature
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    if what != "data" or not name.startswith(PACKAGES):
        return
    inherited = inspect.getdoc(type(obj)) or ""
    if lines and "\n".join(lines).strip() != inspect.cleandoc(inherited).strip():
        return  # the object's own documentation was found
    comment = _defining_comment(name, obj)
    if comment is not None:
        lines[:] = comment


def _default_text(source: str, value: ast.expr) -> str | None:
    """Source text of a field default: ``x``, ``field(default=x)`` or a factory."""

    def text(node: ast.expr) -> str:
        return ast.get_source_segment(source, node) or ast.unparse(node)

    if not (isinstance(value, ast.Call) and text(value.func).endswith("field")):
        return text(value)
    for keyword in value.keywords:
        if keyword.arg == "default":
            return text(keyword.value)
        if keyword.arg == "default_factory":
            factory = keyword.value
            if isinstance(factory, ast.Lambda):
                return text(factory.body)
            return f"{text(factory)}()"
    return None


def field_defaults(cls: type) -> dict[str, str]:
    """Each dataclass field's default as written in the class body."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        found = _class_source(cls)
        if found is None:
            return {}
        source = found
    tree = ast.parse(source)
    node = tree.body[0] if tree.body else None
    body = node.body if isinstance(node, ast.ClassDef) else []
    return {
        item.target.id: text
        for item in body
        if isinstance(item, ast.AnnAssign)
        and isinstance(item.target, ast.Name)
        and item.value is not None
        and (text := _default_text(source, item.value)) is not None
    }


def _process_signature(  # noqa: PLR0917 - the event's signature
    app: Sphinx,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:
    if what not in {"class", "exception"} or not dataclasses.is_dataclass(obj):
        return None
    if not isinstance(obj, type) or not signature:
        return None
    defaults = field_defaults(obj)
    parameters = [
        parameter.replace(
            annotation=inspect.Parameter.empty,
            default=_Source(defaults[parameter.name])
            if parameter.name in defaults
            else parameter.default,
        )
        for parameter in inspect.signature(obj).parameters.values()
    ]
    return str(inspect.Signature(parameters)), return_annotation


def _private_modules() -> list[str]:
    import importlib
    import pkgutil

    package = importlib.import_module(PACKAGES[0])
    return [
        info.name
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
        if info.name.rpartition(".")[2].startswith("_")
    ]


def _merge_attr_docs(app: Sphinx) -> None:
    """Let the analyzer of ``anyecho`` know the ``#:`` comments of its classes.

    The public classes say they live in ``anyecho`` (their ``__module__``), so
    autodoc looks for the comments on their attributes (``EchoServer.addresses``)
    in ``anyecho/__init__.py``; they are written in the private modules that
    define the classes, and are added to that analyzer from there.
    """
    public = ModuleAnalyzer.for_module(PACKAGES[0])
    public.analyze()
    for name in _private_modules():
        try:
            private = ModuleAnalyzer.for_module(name)
            private.analyze()
        except PycodeError:
            continue
        for key, lines in private.attr_docs.items():
            if key[0]:  # class attributes only: module constants stay their own
                public.attr_docs.setdefault(key, lines)
        for key, order in private.tagorder.items():
            public.tagorder.setdefault(key, order)


def _class_source(cls: type) -> str | None:
    """The source of ``cls``, from the private module that defines it."""
    for name in _private_modules():
        module = sys.modules.get(name)
        if module is not None and getattr(module, cls.__name__, None) is cls:
            try:
                tree_source = inspect.getsource(module)
            except (OSError, TypeError):
                return None
            for node in ast.parse(tree_source).body:
                if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
                    return ast.get_source_segment(tree_source, node)
    return None


def setup(app: Sphinx) -> ExtensionMetadata:
    app.setup_extension("sphinx.ext.autodoc")
    app.connect("builder-inited", _merge_attr_docs)
    app.connect("autodoc-process-docstring", _process_docstring)
    app.connect("autodoc-process-signature", _process_signature)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
