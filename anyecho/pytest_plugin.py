"""pytest plugin: fixtures that serve anyecho in-process (see :mod:`anyecho.testing`)."""

from __future__ import annotations
