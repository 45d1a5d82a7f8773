"""The etcd key layout of a run, written down once.

Everything that reads or writes etcd (the plugin, the CLI, ``StateStore``)
derives key names from :class:`RunKeys`, so the layout in CONTRACT.md has a
single home.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

DEFAULT_PREFIX = "/pytest-taskctl"

RUN_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_RUN_ID_RE = re.compile(RUN_ID_PATTERN)

FALSE_VALUES = frozenset({"", "0", "false", "no", "off"})

FLAG_NAMES = ("paused", "cancelled")

from .status import FINAL_STATUSES as FINAL_STATUSES  # noqa: E402 - re-exported
from .status import STATUSES as STATUSES  # noqa: E402 - re-exported


class InvalidRunId(ValueError):
    """A run id that could escape its key or directory (``../x``, ``a/b``, ...)."""

    def __init__(self, value: str) -> None:
        super().__init__(
            f"invalid run id {value!r}: a run id must match {RUN_ID_PATTERN} "
            "(letters, digits, '.', '_', '-'; starting with a letter or digit; at most 128)"
        )
        self.value = value


def validate_run_id(value: str) -> str:
    """Return ``value`` if it is a safe run id, else raise :class:`InvalidRunId`."""
    if not isinstance(value, str) or not _RUN_ID_RE.fullmatch(value):
        raise InvalidRunId(str(value))
    return value


def flag_is_true(value: bytes | str | None) -> bool:
    """A flag is true when its key exists and the value is not 0/false/no/off/empty."""
    if value is None:
        return False
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value.strip().lower() not in FALSE_VALUES


def normalize_prefix(prefix: str) -> str:
    """``pytest-taskctl/`` and ``/pytest-taskctl`` name the same prefix."""
    prefix = "/" + prefix.strip().strip("/")
    return prefix if prefix != "/" else ""


def encode_nodeid(nodeid: str) -> str:
    """Make a node id safe as one key segment (``/``, ``::``, ``[``, unicode...)."""
    return quote(nodeid, safe="")


def decode_nodeid(segment: str) -> str:
    return unquote(segment)


@dataclass(frozen=True)
class RunKeys:
    """Key names below ``<prefix>/runs/<run_id>``."""

    prefix: str
    run_id: str

    @property
    def root(self) -> str:
        return f"{self.prefix}/runs/{self.run_id}"

    def flag(self, name: str) -> str:
        return f"{self.root}/{name}"

    @property
    def paused(self) -> str:
        return self.flag("paused")

    @property
    def cancelled(self) -> str:
        return self.flag("cancelled")

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def meta(self) -> str:
        return f"{self.root}/meta"

    @property
    def results(self) -> str:
        return f"{self.root}/results/"

    def result(self, nodeid: str) -> str:
        return self.results + encode_nodeid(nodeid)

    @property
    def pauses(self) -> str:
        return f"{self.root}/pauses/"

    def pause(self, pause_id: str) -> str:
        return self.pauses + pause_id

    @property
    def control_range(self) -> tuple[str, str]:
        """The smallest key range holding both user flags.

        ``cancelled`` < ``meta`` < ``paused`` in byte order, so one watch on
        ``[cancelled, paused\\0)`` sees both flags and, besides them, only the
        rarely written ``meta`` -- not the stream of result writes.
        """
        return self.cancelled, self.paused + "\0"


def runs_root(prefix: str) -> str:
    return f"{prefix}/runs/"
