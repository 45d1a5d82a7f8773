"""``--thread``/``--group-unit`` read from the command line and ini file, and checked."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ...options import GROUP_UNITS


@dataclass(frozen=True)
class GroupSettings:
    """The number of threads (1 = off) and the unit of a default group (module, class, function)."""

    threads: int
    unit: str

    @classmethod
    def from_config(cls, config: pytest.Config) -> GroupSettings:
        """Read and validate; a bad value is a :class:`pytest.UsageError` (exit 4)."""
        threads = config.option.taskctl_threads
        if threads is None:
            threads = 1
        if threads < 1:
            raise pytest.UsageError(
                f"--thread {threads}: the number of threads must be 1 or more (1 = off)"
            )
        unit = config.option.taskctl_group_unit
        if unit is None:
            unit = str(config.getini("group-unit") or "module").strip().lower()
            if unit not in GROUP_UNITS:
                raise pytest.UsageError(
                    f"invalid ini value group-unit = {config.getini('group-unit')!r}: "
                    "use module, class or function"
                )
        if threads > 1:
            workers = config.getoption("numprocesses", None)  # pytest-xdist's -n
            if workers not in (None, 0):
                raise pytest.UsageError(
                    f"--thread {threads} cannot be combined with -n {workers} (pytest-xdist): "
                    "use --thread for groups on threads in one process, or -n for processes"
                )
            if config.getoption("usepdb", False) or config.getoption("trace", False):
                raise pytest.UsageError(
                    f"--pdb/--trace cannot be used with --thread {threads}: "
                    "debug with --thread 1 (the default)"
                )
        return cls(threads=threads, unit=unit)
