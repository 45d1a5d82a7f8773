"""The ``taskctl`` command: runs, status, pause/resume/cancel, watch, pauses, server.

``main`` is the console script; ``Command``, ``build_parser`` and
``default_commands`` let a caller add subcommands to the same parser.
"""

from .app import Command, build_parser, default_commands, main
from .context import Context, add_run_id

__all__ = ["Command", "Context", "add_run_id", "build_parser", "default_commands", "main"]
