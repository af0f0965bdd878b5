"""Backend names mapped to :func:`anyio.run` arguments, in one place.

A *backend* here is what a user picks on the command line: ``asyncio`` (the stock
event loop), ``uvloop``, ``trio``, ``auto`` (uvloop when installed, else asyncio), or
``asyncio:MODULE:FACTORY`` for any other asyncio-compatible loop whose factory
function is importable (for example ``asyncio:winloop:new_event_loop``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "BackendUnavailableError",
    "check_event_loop",
    "current_backend_name",
    "resolve_backend",
]

#: The names accepted by :func:`resolve_backend`, besides ``asyncio:MODULE:FACTORY``.
BACKEND_NAMES = ("auto", "asyncio", "uvloop", "trio")


class BackendUnavailableError(LookupError):
    """The requested backend is unknown, or its package is not installed."""


@dataclass(frozen=True)
class Backend:
    """A resolved backend: everything :func:`anyio.run` needs to run on it.

    :param name: the user-facing name (``asyncio``, ``uvloop``, ``trio`` or
        ``asyncio:MODULE:FACTORY``)
    :param anyio_backend: the AnyIO backend name (``asyncio`` or ``trio``)
    :param options: the ``backend_options`` for :func:`anyio.run`
    """

    name: str
    anyio_backend: str
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` to completion on this backend."""
        import anyio

        return anyio.run(
            func, *args, backend=self.anyio_backend, backend_options=self.options
        )


def _has_module(name: str) -> bool:
    # Import rather than look for a spec: a package that is present but broken
    # (wrong platform, missing shared library) must count as missing.
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _loop_factory(spec: str) -> Callable[[], Any]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BackendUnavailableError(
            f"invalid backend 'asyncio:{spec}': expected asyncio:MODULE:FACTORY"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise BackendUnavailableError(
            f"backend 'asyncio:{spec}' needs the {module_name!r} module, "
            "which is not installed"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise BackendUnavailableError(
            f"backend 'asyncio:{spec}': {module_name}.{attr} is not a loop factory"
        )
    return factory  # type: ignore[no-any-return]


def resolve_backend(name: str) -> Backend:
    """Turn a backend name into a :class:`Backend`, checking that it can run.

    :raises BackendUnavailableError: with a one-line message naming the extra to
        install when the backend's package is missing, or listing the valid names
        when the name is unknown
    """
    if name == "auto":
        return resolve_backend("uvloop" if _has_module("uvloop") else "asyncio")
    if name == "asyncio":
        return Backend("asyncio", "asyncio")
    if name == "uvloop":
        if not _has_module("uvloop"):
            raise BackendUnavailableError(
                "backend 'uvloop' needs the uvloop package: "
                "pip install 'anyecho[uvloop]'"
            )
        import uvloop

        return Backend("uvloop", "asyncio", {"loop_factory": uvloop.new_event_loop})
    if name == "trio":
        if not _has_module("trio"):
            raise BackendUnavailableError(
                "backend 'trio' needs the trio package: pip install 'anyecho[trio]'"
            )
        return Backend("trio", "trio")
    if name.startswith("asyncio:"):
        factory = _loop_factory(name.removeprefix("asyncio:"))
        return Backend(name, "asyncio", {"loop_factory": factory})
    choices = ", ".join(BACKEND_NAMES)
    raise BackendUnavailableError(
        f"unknown backend {name!r} (choose from {choices}, or asyncio:MODULE:FACTORY)"
    )


def current_backend_name() -> str:
    """Name the backend the calling task runs on, as :func:`resolve_backend` would."""
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return "trio"  # AnyIO's only other backend
    module = type(loop).__module__.partition(".")[0]
    return "asyncio" if module == "asyncio" else module


def check_event_loop() -> None:
    """Refuse, up front, an asyncio loop that cannot serve AnyIO streams.

    The server hands each accepted socket to the loop with
    ``loop.connect_accepted_socket``; a loop that leaves it unimplemented would
    otherwise fail on the first client.
    """
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # Trio
    method = getattr(type(loop), "connect_accepted_socket", None)
    if method in (None, asyncio.AbstractEventLoop.connect_accepted_socket):
        name = f"{type(loop).__module__}.{type(loop).__qualname__}"
        raise BackendUnavailableError(
            f"event loop {name} cannot serve: it does not implement "
            "connect_accepted_socket"
        )
