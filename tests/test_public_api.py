"""The public names: where they say they live, and that tools can read them."""

from __future__ import annotations

import math
import pickle
import typing
from typing import Any

import pytest

import anyecho
from anyecho import RateLimit, ServerConfig


@pytest.mark.parametrize("name", anyecho.__all__)
def test_public_names_live_in_anyecho(name: str) -> None:
    value = getattr(anyecho, name)
    module = getattr(value, "__module__", None)
    if isinstance(value, type) or callable(value):
        # anyecho, or a public module of it (anyecho.faults): never a private one
        assert isinstance(module, str), name
        assert not any(part.startswith("_") for part in module.split(".")), (
            f"{name} says it lives in {module}"
        )


@pytest.mark.parametrize(
    "name", [n for n in anyecho.__all__ if isinstance(getattr(anyecho, n), type)]
)
def test_type_hints_of_public_classes_resolve(name: str) -> None:
    typing.get_type_hints(getattr(anyecho, name))


def test_a_config_pickles() -> None:
    config = ServerConfig(host="::1", port=0, max_connections_per_source=5)
    assert pickle.loads(pickle.dumps(config)) == config


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "setting",
    ["idle_timeout", "drain_timeout", "tls_handshake_timeout"],
)
def test_no_setting_takes_nan_or_infinity(setting: str, bad: float) -> None:
    options: dict[str, Any] = {setting: bad}
    with pytest.raises(ValueError, match=f"invalid {setting}"):
        ServerConfig(**options)


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0.0, -1.0])
def test_rate_limits_are_finite_and_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="invalid rate limit"):
        RateLimit(bad, 1.0)
    with pytest.raises(ValueError, match="invalid rate limit"):
        RateLimit(1.0, bad)


def test_limits_say_that_none_means_no_limit() -> None:
    with pytest.raises(ValueError, match=r"positive integer \(or None for no limit\)"):
        ServerConfig(max_connections=-1)
    with pytest.raises(ValueError, match=r"drain_timeout .*expected a number >= 0"):
        ServerConfig(drain_timeout=-1)


def test_server_options_are_the_config_fields() -> None:
    from anyecho._config import ServerOptions

    fields = typing.get_type_hints(ServerConfig)
    options = typing.get_type_hints(ServerOptions)
    assert options == fields
    assert not ServerOptions.__required_keys__
