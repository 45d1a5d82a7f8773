"""Concurrent groups of tests on threads (seed 003).

Placeholder: filled in by the groups work (issue 5).
"""

from __future__ import annotations

from typing import Any

import pytest


def add_options(parser: pytest.Parser, group: Any) -> None:
    """Register ``--thread``, ``--group-unit`` (and its ini key)."""


def make_plugin(config: pytest.Config, run: Any) -> object | None:
    """The plugin object to register for this run, or ``None``."""
    return None
