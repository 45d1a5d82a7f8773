"""The etcd key layout of a run, written down once.

Everything that reads or writes etcd (the plugin, the CLI, ``StateStore``)
derives key names from :class:`RunKeys`, so the layout users and scripts rely
on (``<prefix>/runs/<run_id>/paused``, ...) has a single home.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import quote, unquote

DEFAULT_PREFIX = "/pytest-taskctl"

RUN_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_RUN_ID_RE = re.compile(RUN_ID_PATTERN)

FALSE_VALUES = frozenset({"", "0", "false", "no", "off"})

FLAG_NAMES = ("paused", "cancelled")

from .status import FINAL_STATUSES as FINAL_STATUSES  # noqa: E402 - re-exported
from .status import LIVE_STATUSES as LIVE_STATUSES  # noqa: E402 - re-exported
from .status import STATUSES as STATUSES  # noqa: E402 - re-exported

#: The run-level keys (``<run>/<name>``), in byte order; results and pauses sit below them.
RUN_LEAVES = ("cancelled", "lease", "meta", "paused", "status")
#: The run-level keys a change of which is a new state of the run (all but the lease).
RUN_STATE_LEAVES = ("status", "meta", *FLAG_NAMES)

#: Node ids longer than this (UTF-8 bytes) are keyed and matched by their SHA-256.
LONG_NODEID = 1024


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


#: ``quote(c, safe="")`` of every ASCII character, for ``str.translate``: the common
#: node id is ASCII, and ``quote`` walks it byte by byte in Python (once a test).
_QUOTED_ASCII = {code: quote(chr(code), safe="") for code in range(128)}


def encode_nodeid(nodeid: str) -> str:
    """Make a node id safe as one key segment (``/``, ``::``, ``[``, unicode...):
    ``urllib.parse.quote(nodeid, safe="")``."""
    if nodeid.isascii():
        return nodeid.translate(_QUOTED_ASCII)
    return quote(nodeid, safe="")


def decode_nodeid(segment: str) -> str:
    return unquote(segment)


def nodeid_identity(nodeid: str) -> str:
    """What a result is matched by: the node id, or ``sha256:<hex>`` for a very long one."""
    raw = nodeid.encode("utf-8", "surrogateescape")
    if len(raw) <= LONG_NODEID:
        return nodeid
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class RunKeys:
    """Key names below ``<prefix>/runs/<run_id>``."""

    prefix: str
    run_id: str

    @cached_property  # read for every key name: per test, more than once
    def root(self) -> str:
        return f"{self.prefix}/runs/{self.run_id}"

    def flag(self, name: str) -> str:
        return f"{self.root}/{name}"

    @cached_property
    def paused(self) -> str:
        return self.flag("paused")

    @cached_property
    def cancelled(self) -> str:
        return self.flag("cancelled")

    @cached_property
    def status(self) -> str:
        return f"{self.root}/status"

    @cached_property
    def meta(self) -> str:
        return f"{self.root}/meta"

    @property
    def lease(self) -> str:
        """Who owns the run: attached to the owning process's lease."""
        return f"{self.root}/lease"

    @cached_property
    def results(self) -> str:
        return f"{self.root}/results/"

    def result(self, nodeid: str) -> str:
        """``<run>/results/<quoted nodeid>``; ``<run>/results/#sha256-<hex>`` for very long ids.

        ``#`` never appears in a quoted node id, so the two forms cannot collide.
        """
        identity = nodeid_identity(nodeid)
        if identity is nodeid:
            return self.results + encode_nodeid(nodeid)
        return self.results + "#sha256-" + identity.removeprefix("sha256:")

    @property
    def plan(self) -> str:
        """``--join``: the collection every process must match (outside the control range)."""
        return f"{self.root}/plan"

    @property
    def queue(self) -> str:
        """``--join``: claims, acknowledgements and requeues of the run's tests."""
        return f"{self.root}/queue/"

    @property
    def workers(self) -> str:
        """``--join``: one record per process that joined the run."""
        return f"{self.root}/workers/"

    @property
    def pauses(self) -> str:
        return f"{self.root}/pauses/"

    def pause(self, pause_id: str) -> str:
        return self.pauses + pause_id

    @property
    def control_range(self) -> tuple[str, str]:
        """The smallest key range holding both user flags.

        ``cancelled`` < ``lease`` < ``meta`` < ``paused`` in byte order, so one
        watch on ``[cancelled, paused\\0)`` sees both flags and, besides them,
        only the once-written ``lease`` and the rarely written ``meta`` -- not
        the stream of result writes.
        """
        return self.cancelled, self.paused + "\0"


def runs_root(prefix: str) -> str:
    return f"{prefix}/runs/"
