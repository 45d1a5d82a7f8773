"""What earlier attempts of a run left, and which result of a test counts.

Every run records each test's outcome twice: in etcd
(``<run>/results/<encoded nodeid>``, through the run's fenced writer) and in
``logs/<run_id>/results.jsonl`` (one flushed line per test). Either may miss
results: etcd may have been down for an attempt, the local file may belong
to another machine. So ``--resume`` merges both and, for each test, takes
the latest result -- the highest attempt number, then the latest end time
(:func:`latest_results`) -- never the first place that answers.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from json.encoder import encode_basestring
from pathlib import Path
from typing import IO, Any

from ...keys import nodeid_identity
from ...outcome import TestOutcome
from ...records import encode_json, json_object

#: A JSON string literal, non-ASCII kept (``ensure_ascii=False``), by json's own C escaper.
_json_string = encode_basestring


def _json_float(value: float) -> str:
    """A float as ``json`` writes it (``repr``; ``NaN``/``Infinity`` when not finite)."""
    value = float(value)
    return float.__repr__(value) if math.isfinite(value) else encode_json(value)


log = logging.getLogger("pytest_taskctl.plugin")

RESULTS_FILE = "results.jsonl"

#: Statuses of an attempt that did not end by itself.
_LIVE = (None, "RUNNING", "PAUSED")


def result_json(
    nodeid: str, outcome: TestOutcome, attempt: int, extra: Mapping[str, Any] | None = None
) -> str:
    """A test's result record as JSON text: the etcd value and the ``results.jsonl`` line.

    ``{"nodeid", "outcome", "status", "attempt", "duration", "ended"}``, then
    ``"sha256"`` for a very long node id, then ``extra``'s fields. Written out
    here rather than by ``json.dumps``: one is made for every finished test,
    and the encoder's set-up cost more than the record. The text is what
    ``json.dumps(..., ensure_ascii=False)`` makes of the same dict (tests check).
    """
    identity = nodeid_identity(nodeid)
    long_id = identity is not nodeid
    # Keep values small: a batched txn of 100 results must stay far below etcd's 1.5 MiB.
    shown = nodeid[:200] + "..." if long_id else nodeid
    text = (
        f'{{"nodeid": {_json_string(shown)}, "outcome": "{outcome.word}", '
        f'"status": "{outcome.status}", "attempt": {int(attempt)}, '
        f'"duration": {_json_float(round(outcome.duration, 6))}, '
        f'"ended": {_json_float(round(time.time(), 3))}'
    )
    if long_id:
        text += f', "sha256": "{identity.removeprefix("sha256:")}"'
    if extra:
        text += ", " + encode_json(dict(extra))[1:-1]
    return text + "}"


def _identity(record: Mapping[str, Any]) -> str | None:
    sha = record.get("sha256")
    identity = f"sha256:{sha}" if isinstance(sha, str) else record.get("nodeid")
    return identity if isinstance(identity, str) else None


def _order(record: Mapping[str, Any]) -> tuple[float, float]:
    attempt, ended = record.get("attempt"), record.get("ended")
    return (
        float(attempt) if isinstance(attempt, (int, float)) else 0.0,
        float(ended) if isinstance(ended, (int, float)) else 0.0,
    )


def latest_results(*sources: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Each test's latest record over every source: by attempt number, then end time.

    Within one source a later record also wins a tie (the local file is in
    write order), so records without numbers keep the old "last line wins".
    """
    latest: dict[str, Mapping[str, Any]] = {}
    for records in sources:
        for record in records:
            identity = _identity(record)
            if identity is None:
                continue
            known = latest.get(identity)
            if known is None or _order(record) >= _order(known):
                latest[identity] = record
    return latest


def passed_identities(*sources: Iterable[Mapping[str, Any]]) -> set[str]:
    """Identities of the tests whose latest record (:func:`latest_results`) passed."""
    return {
        identity
        for identity, record in latest_results(*sources).items()
        if record.get("status") == "pass"
    }


class LocalRecord:
    """``logs/<run_id>/results.jsonl``: attempt lines and result lines, appended and flushed.

    Written through a buffer that is flushed at most :attr:`FLUSH_INTERVAL`
    after the previous flush (a system call per test is a measurable share of
    a trivial test's cost), and at the end. A SIGKILL may lose the last
    results of a short burst, a power cut a little more -- and a lost result
    only means the test runs again. etcd holds the same results within 0.2 s.
    """

    FLUSH_INTERVAL = 0.2

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._lock = threading.Lock()
        self._flushed_at = 0.0

    def read(self) -> tuple[int, list[dict[str, Any]]]:
        """``(attempts so far, result records)``; a torn last line is ignored."""
        attempts, results = 0, []
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return 0, []
        for line in lines:
            record = json_object(line)
            if record is None:
                continue
            if record.get("type") == "attempt":
                attempts = max(attempts, int(record.get("attempt", 0) or 0))
            elif record.get("type") == "result":
                results.append(record)
        return attempts, results

    def open(self, attempt: int, resume: bool) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)
            return
        self.append([{"type": "attempt", "attempt": attempt, "started": round(time.time(), 3)}])

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        self.append_line("".join(encode_json(r) + "\n" for r in records))

    def append_line(self, text: str) -> None:
        """Append ``text`` (one or more JSON lines; a missing final newline is added)."""
        if not text.endswith("\n"):
            text += "\n"
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.write(text)
                now = time.monotonic()
                if now - self._flushed_at >= self.FLUSH_INTERVAL:
                    self._file.flush()
                    self._flushed_at = now
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def attempt_of(meta: Mapping[str, Any]) -> int:
    attempt = meta.get("attempt")
    if isinstance(attempt, int) and attempt > 0:
        return attempt
    attempts = meta.get("attempts")
    return len(attempts) if isinstance(attempts, list) and attempts else 1


def closed_attempts(
    previous_meta: Mapping[str, Any], status: str | None = None
) -> list[dict[str, Any]]:
    """Earlier attempts from the previous meta; one that never ended was interrupted.

    ``status`` is the run's status key as the new attempt found it (the meta
    may lag behind it). A live word there means the attempt's process died:
    this attempt took its lease over, so it is written down as INTERRUPTED.
    """
    attempts = previous_meta.get("attempts")
    if not isinstance(attempts, list) or not attempts:
        # A run recorded before attempts existed: one attempt, from its meta.
        attempts = [
            {
                "attempt": 1,
                "started": previous_meta.get("started"),
                "host": previous_meta.get("host"),
                "pid": previous_meta.get("pid"),
            }
        ]
    closed = [dict(a) for a in attempts if isinstance(a, dict)]
    if closed:
        last = closed[-1]
        final = status if status not in _LIVE else previous_meta.get("status")
        if not last.get("ended") or last.get("status") in _LIVE:
            last["status"] = final if final not in _LIVE else "INTERRUPTED"
            if isinstance(previous_meta.get("counts"), dict) and "counts" not in last:
                counts = previous_meta["counts"]
                last["counts"] = {k: counts.get(k, 0) for k in ("passed", "failed", "skipped")}
    return closed


def earlier_records(kvs: Iterable[Any]) -> list[dict[str, Any]]:
    """Result records from etcd key-values (torn or foreign values skipped)."""
    return [r for r in (json_object(kv.value) for kv in kvs) if r is not None]
