"""Resolve references that Sphinx cannot, without a network or inventories.

Two kinds of ``py`` references reach Sphinx's ``missing-reference`` event here:

- anyecho's own objects under the private module that defines them: autodoc names
  a type by its ``__module__``, so a parameter typed ``ServerConfig`` refers to
  ``anyecho._config.ServerConfig``. Such a reference is sent to the public name
  (``anyecho.ServerConfig``) when one of the public modules exports that object.
- objects of other projects: the standard library, AnyIO, Trio, pytest and
  trustme. They become plain links to those projects' documentation, built from
  the object's name the way their documentation names its anchors
  (``ssl.SSLContext`` links to ``library/ssl.html#ssl.SSLContext``).

Anything else stays unresolved, and ``sphinx-build -n`` reports it.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import importlib
import sys
from types import ModuleType

from docutils import nodes
from docutils.nodes import Element, TextElement
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util.typing import ExtensionMetadata

__all__ = ["external_url", "setup"]

#: The modules whose ``__all__`` is the documented public API.
PUBLIC_MODULES = (
    "anyecho",
    "anyecho.testing",
    "anyecho.faults",
    "anyecho.pytest_plugin",
    "anyecho.metrics",
)

PYTHON = "https://docs.python.org/3/"

#: Projects documented with one API page whose anchors are the full dotted names.
SINGLE_PAGE = {
    "anyio": "https://anyio.readthedocs.io/en/stable/api.html",
    "trustme": "https://trustme.readthedocs.io/en/latest/",
    "prometheus_client": "https://prometheus.github.io/client_python/collector/custom/",
}

#: Trio spreads its reference over pages; the objects anyecho mentions.
TRIO_PAGES = {
    "trio.run": "reference-core.html",
    "trio.open_nursery": "reference-core.html",
    "trio.Nursery": "reference-core.html",
    "trio.serve_tcp": "reference-io.html",
}
TRIO = "https://trio.readthedocs.io/en/stable/"

PYTEST = "https://docs.pytest.org/en/stable/reference/reference.html"

_STDTYPES = {
    "str",
    "bytes",
    "bytearray",
    "memoryview",
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "range",
}


def _module(name: str) -> ModuleType | None:
    if not name or name.startswith("."):
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _builtin_url(target: str) -> str | None:
    """The Python documentation's URL for ``None`` or a builtin name."""
    if target == "None":
        return f"{PYTHON}library/constants.html#None"
    value = getattr(builtins, target, None)
    if value is None:
        return None
    if isinstance(value, type) and issubclass(value, BaseException):
        page = "exceptions"
    elif target in _STDTYPES:
        page = "stdtypes"
    else:
        page = "functions"
    return f"{PYTHON}library/{page}.html#{target}"


def _stdlib_url(target: str) -> str | None:
    """The Python documentation's URL for a standard-library or builtin name."""
    if "." not in target and target not in sys.stdlib_module_names:
        return _builtin_url(target)
    parts = target.split(".")
    if parts[0] not in sys.stdlib_module_names:
        return None
    if _module(target) is not None:
        return f"{PYTHON}library/{target}.html"  # a module: its page
    # An object: on the page of the longest dotted prefix that is a module.
    for end in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:end])
        if _module(module) is not None:
            return f"{PYTHON}library/{module}.html#{target}"
    return None


def _pytest_name(target: str) -> str | None:
    """``pytest.X`` for ``_pytest.module.X`` when pytest exports that object."""
    import pytest

    module_name, _, name = target.rpartition(".")
    module = _module(module_name)
    value = getattr(module, name, None) if module else None
    if value is not None and getattr(pytest, name, None) is value:
        return f"pytest.{name}"
    return None


def external_url(target: str) -> str | None:
    """Where another project documents ``target`` (a dotted Python name)."""
    top = target.partition(".")[0]
    if top in SINGLE_PAGE:
        return f"{SINGLE_PAGE[top]}#{target}"
    if top == "trio" and target in TRIO_PAGES:
        return f"{TRIO}{TRIO_PAGES[target]}#{target}"
    if top == "_pytest":
        public = _pytest_name(target)
        return f"{PYTEST}#{public}" if public else None
    if top == "pytest":
        return f"{PYTEST}#{target}"
    return _stdlib_url(target)


@functools.cache
def public_aliases() -> dict[str, str]:
    """``module.qualname`` of every public object, mapped to its public name."""
    aliases: dict[str, str] = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            value = getattr(value, "_get_wrapped_function", lambda v=value: v)()
            defined_in = getattr(value, "__module__", None)
            qualname = getattr(value, "__qualname__", None)
            if isinstance(defined_in, str) and isinstance(qualname, str):
                aliases.setdefault(f"{defined_in}.{qualname}", f"{module_name}.{name}")
    return aliases


def _imported_as(node: pending_xref, target: str) -> str:
    """``module.qualname`` of a bare name imported by the module that mentions it.

    A type named in an annotation that autodoc could not evaluate (one imported
    under ``if TYPE_CHECKING:``) stays the bare name the module imported. The
    module that mentions it is tried first, then anyecho's modules, when every
    one of them that has the name has the same object.
    """
    name = target.partition("[")[0]
    module = _module(node.get("py:module") or "")
    value = getattr(module, name, None) if module else None
    if value is None:
        # Or, if all agree, what anyecho's own modules import under that name.
        found = {
            id(candidate): candidate
            for module_name, candidate_module in list(sys.modules.items())
            if module_name.partition(".")[0] == "anyecho"
            and (candidate := getattr(candidate_module, name, None)) is not None
        }
        value = next(iter(found.values())) if len(found) == 1 else None
    defined_in = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None)
    if isinstance(defined_in, str) and isinstance(qualname, str):
        return f"{defined_in}.{qualname}"
    return target


def _field_owner(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: TextElement
) -> Element | None:
    """Send a reference to a dataclass field to the class that documents it.

    The public dataclasses document their fields as ``:param:`` entries of the
    class, so ``:attr:`ServerConfig.wrap_stream``` (or ``:attr:`host``` inside
    ``ServerConfig``) links to the class.
    """
    if node["reftype"] not in {"attr", "obj"}:
        return None
    target: str = node["reftarget"]
    owner, _, field = target.rpartition(".")
    context = [node.get("py:module"), owner or node.get("py:class")]
    candidates = [owner, ".".join(part for part in context if part)]
    for candidate in filter(None, candidates):
        module_name, _, class_name = candidate.rpartition(".")
        cls = getattr(_module(module_name), class_name, None) if module_name else None
        if dataclasses.is_dataclass(cls) and field in {
            f.name for f in dataclasses.fields(cls)
        }:
            owner = candidate
            break
    else:
        return None
    domain = env.get_domain("py")
    retry = node.deepcopy()
    retry["reftarget"] = owner
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, "class", owner, retry, contnode
    )


def resolve(
    app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: TextElement
) -> Element | None:
    """The ``missing-reference`` handler."""
    if node.get("refdomain") != "py":
        return None
    target: str = node["reftarget"]
    aliases = public_aliases()
    head, member = target, ""
    while head and head not in aliases:
        head, _, rest = head.rpartition(".")
        member = f"{rest}.{member}" if member else rest
    if head:
        public = aliases[head] + (f".{member}" if member else "")
        domain = env.get_domain("py")
        retry = node.deepcopy()
        retry["reftarget"] = public
        found: Element | None = domain.resolve_xref(
            env,
            node["refdoc"],
            app.builder,
            node["reftype"],
            public,
            retry,
            contnode,
        )
        return found or _field_owner(app, env, node, contnode)
    url = external_url(target) or external_url(_imported_as(node, target))
    if url is None:
        return _field_owner(app, env, node, contnode)
    reference = nodes.reference("", "", internal=False, refuri=url, reftitle=target)
    reference["classes"].append("external")
    reference += contnode
    return reference


def setup(app: Sphinx) -> ExtensionMetadata:
    app.connect("missing-reference", resolve)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
