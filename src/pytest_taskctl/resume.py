"""Resume an interrupted run (seed 002): skip tests that already passed.

Placeholder: filled in by the resume work (issue 4).
"""

from __future__ import annotations

from typing import Any

import pytest


def add_options(parser: pytest.Parser, group: Any) -> None:
    """Register ``--resume`` / ``--run-until-complete``."""


def make_plugin(config: pytest.Config, run: Any) -> object | None:
    """The plugin object to register for this run, or ``None``."""
    return None
