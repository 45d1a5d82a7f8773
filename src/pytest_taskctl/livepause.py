"""Live pauses on failure and at checkpoints (seed 004), answered through etcd.

Placeholder: filled in by the live-pause work (issue 4).
"""

from __future__ import annotations

from typing import Any

import pytest


def add_options(parser: pytest.Parser, group: Any) -> None:
    """Register ``--pause-on-failure``, ``--pause-timeout``, ``--pause-checkpoint-mock``."""


def make_plugin(config: pytest.Config, run: Any) -> object | None:
    """The plugin object to register for this run, or ``None``."""
    return None
