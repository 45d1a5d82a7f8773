"""The shared queue of a joined run: claims in chunks, guarded acknowledgements, requeues.

Tests are named by their index in the plan. A process claims a chunk of
indexes with one transaction that moves ``queue/next`` (compared on its
value, so two processes never take the same index) and writes one
``queue/claim/<index>`` per test attached to the process's lease; chunks get
smaller as the queue empties, as in pytest-xdist's load scheduling, so a
faster process takes more and the last tests spread out.

A result is written with ``queue/done/<index>`` and the deletion of the
claim, guarded by the claim (:mod:`.acks`): lease expiry is not proof of
death, and a process presumed dead cannot overwrite the result of the one
that took over. Claims taken ahead are checked before they run
(:meth:`WorkQueue.still_ours`, or the start mark on several threads): a
process stopped past its lease finds them handed to others and drops them.

A claim whose response was lost (the member in use died after committing
it) is retried by the gateway on the next member and then fails its
compare; its failure branch reads the claim key back, and a claim that
names us with the sequence number we just used is ours after all.

Every process mirrors ``queue/`` through a supervised watch. A claim deleted
without a ``done`` is an orphan (its process's lease expired): the first
process to requeue it wins a transaction that compares that nothing else
happened to the index meanwhile. Of a dead process's claims, the one it
claimed first (lowest claim sequence) is the one it was running -- it runs
its claims in claim order and the rest were only taken ahead -- so only that
one is charged with the death. A process running tests on several threads
(``--thread``) cannot say that by order: it marks each claim when its test
starts (:meth:`WorkQueue.mark_started`), and every test it was running is
charged; a test charged once runs alone when handed out again, so its
second death is its own. A test charged ``MAX_DEATHS`` times is not handed out again: it
is recorded as an error, so a test that kills its process cannot take the
run down one process after another.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ...etcd.gateway import (
    EtcdGateway,
    delete_op,
    key_missing,
    mod_revision_equals,
    prefix_end,
    put_op,
    unb64,
    value_equals,
)
from ...etcd.guarded import GuardedWrite
from ...etcd.lease import Lease
from ...etcd.watch import WatchedRange
from ...etcd.writer import KeyWriter
from ...records import json_object
from .acks import acknowledge
from .claims import Claim, Held, claim_revision, still_held
from .layout import JoinKeys, dumps, key_exists, range_op

log = logging.getLogger("pytest_taskctl.plugin")

#: Most tests one claim takes (the first claims of a large suite).
MAX_CHUNK = 16
#: Deaths of its process a test is charged with before it is recorded as an error.
MAX_DEATHS = 2
#: How often an idle process looks at the flags while it waits for requeues or the end.
IDLE_POLL = 0.2


#: ``(index, deaths) -> (result key, result JSON)`` for a test given up on.
GiveUpRecord = Callable[[int, int], tuple[str, str]]


class WorkQueue:
    """This process's view of the queue and its claims; thread-safe."""

    def __init__(
        self,
        gateway: EtcdGateway,
        keys: JoinKeys,
        worker_id: str,
        count: int,
        lease: Callable[[], Lease | None],
        give_up: GiveUpRecord,
        on_given_up: Callable[[int, int], None],
        writer: KeyWriter,
        threads: int = 1,
    ) -> None:
        self.gateway = gateway
        self.threads = threads
        self.keys = keys
        self.worker_id = worker_id
        self.count = count
        self._lease = lease
        self.writer = writer
        self._give_up = give_up
        self._on_given_up = on_given_up
        self._cond = threading.Condition()
        self.next_index = 0
        self.claims: dict[int, Held] = {}
        self.done: set[int] = set()
        self.requeued: dict[int, int] = {}
        self.alive: set[str] = set()
        #: Processes whose every test waits at the pause gate (``queue/paused/<worker>``).
        self.paused: set[str] = set()
        self._orphans: dict[int, Held] = {}
        self._seq = 0
        self._changes = 0
        start, end = keys.queue, prefix_end(keys.queue)
        self._view = WatchedRange(gateway, start, end)
        self._view.add_listener(self._on_change)
        self._seen_generation = 0
        #: Called after each change of the mirror, on the watch's thread.
        self.listeners: list[Callable[[], None]] = []
        self.requests = 0  # etcd requests this process made for the queue (benchmark)
        self.claim_txns = 0
        #: Claims of ours found after a retry (the first try's answer was lost).
        self.adopted = 0

    def start(self) -> WorkQueue:
        self._view.start()
        return self

    # -- the mirror -------------------------------------------------------------

    @property
    def finished(self) -> bool:
        with self._cond:
            return len(self.done) >= self.count

    def wait_for_change(self, seen: int, timeout: float) -> int:
        """Block until the mirror changed after ``seen`` (a value of :attr:`changes`)."""
        with self._cond:
            self._cond.wait_for(lambda: self._changes != seen, timeout)
            return self._changes

    @property
    def changes(self) -> int:
        with self._cond:
            return self._changes

    def members(self) -> tuple[frozenset[str], frozenset[str]]:
        """The live processes and the paused ones, as the mirror shows them."""
        with self._cond:
            return frozenset(self.alive), frozenset(self.paused)

    def _put(self, key: str, value: bytes) -> None:
        kind, name = self.keys.parse(key) or ("", "")
        if kind == "next":
            self.next_index = int(value or 0)
        elif kind == "alive":
            self.alive.add(name)
        elif kind == "paused":
            self.paused.add(name)
        elif kind in ("claim", "requeue", "done"):
            index = int(name)
            if kind == "done":
                self.done.add(index)
                self._orphans.pop(index, None)
                return
            record = json_object(value) or {}
            deaths = int(record.get("d", 0))
            if kind == "claim":
                self.claims[index] = Held(
                    str(record.get("w")),
                    int(record.get("s", 0)),
                    deaths,
                    int(record.get("t", 1)),
                    bool(record.get("r")),
                )
            else:
                self.requeued[index] = deaths
            self._orphans.pop(index, None)

    def _on_change(self, changes: Mapping[str, bytes | None], revision: int) -> None:
        """Fold what the queue's watched view took in; then requeue what a death left.

        After a full read (a re-sync) claims may have come and gone unseen:
        every index handed out but neither claimed, done nor requeued is an orphan.
        """
        generation = self._view.generation
        with self._cond:
            for key, value in changes.items():
                if value is not None:
                    self._put(key, value)
                    continue
                what, name = self.keys.parse(key) or ("", "")
                if what == "alive":
                    self.alive.discard(name)
                elif what == "paused":
                    self.paused.discard(name)
                elif what == "requeue":
                    self.requeued.pop(int(name), None)
                elif what == "done":
                    self.done.discard(int(name))
                elif what == "claim":
                    index = int(name)
                    held = self.claims.pop(index, Held("", 0, 0))
                    if index not in self.done and index not in self.requeued:
                        self._orphans[index] = held  # its process's lease expired
            if generation != self._seen_generation:
                self._seen_generation = generation
                lost = set(range(self.next_index)) - self.done - set(self.claims)
                for index in lost - set(self.requeued) - set(self._orphans):
                    self._orphans[index] = Held("", 0, 0)  # claimed and lost unseen
            self._changes += 1
            self._cond.notify_all()
        self._reap()
        for listener in self.listeners:
            try:
                listener()
            except Exception:
                log.exception("join: a listener of the queue failed")

    # -- requeue ----------------------------------------------------------------

    def _reap(self) -> None:
        """Requeue (or give up on) the claims whose process died; one of us wins each."""
        with self._cond:
            orphans, self._orphans = self._orphans, {}
        running: dict[str, tuple[int, int]] = {}
        for index, held in orphans.items():  # each dead process's first claim
            first = running.get(held.worker, (held.seq, index))
            running[held.worker] = min(first, (held.seq, index))
        for index, held in sorted(orphans.items()):
            if held.threads > 1:  # it marked what it started: each of those may have killed it
                charged = held.started
            else:
                charged = running[held.worker] == (held.seq, index)
            deaths = held.deaths + charged
            untouched = [
                key_missing(self.keys.claim(index)),
                key_missing(self.keys.done(index)),
                key_missing(self.keys.requeue(index)),
            ]
            try:
                if deaths >= MAX_DEATHS:
                    result_key, result = self._give_up(index, deaths)
                    done = dumps({"w": self.worker_id, "gave_up": deaths})
                    ops = [put_op(self.keys.done(index), done), put_op(result_key, result)]
                    if self._txn(ops, untouched)["succeeded"]:
                        self._on_given_up(index, deaths)
                    continue
                record = dumps({"d": deaths, "by": self.worker_id})
                if self._txn([put_op(self.keys.requeue(index), record)], untouched)["succeeded"]:
                    log.warning("join: test #%d lost its process; requeued", index)
            except Exception as exc:
                log.debug("join: could not requeue #%d: %s", index, exc)
                with self._cond:
                    self._orphans.setdefault(index, held)

    # -- claims -----------------------------------------------------------------

    def _txn(
        self,
        success: list[dict[str, Any]],
        compare: list[dict[str, Any]],
        failure: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        request: dict[str, Any] = {"success": success, "compare": compare}
        if failure:
            request["failure"] = failure
        self.requests += 1
        response: dict[str, Any] = self.gateway.call("/kv/txn", request)
        response["succeeded"] = bool(response.get("succeeded", False))
        return response

    def chunk_size(self, next_index: int) -> int:
        with self._cond:
            live = max(1, len(self.alive))
        return max(1, min(MAX_CHUNK, (self.count - next_index) // (4 * live)))

    def claim(self) -> list[Claim]:
        """Claim requeued tests first, else a chunk of fresh ones; ``[]`` when none is free.

        Also ``[]`` while etcd does not answer or our lease is being renewed:
        the caller waits for a change of the queue and asks again.
        """
        lease = self._lease()
        if lease is None or lease.done.is_set():
            return []
        try:
            return self._claim(lease.id)
        except Exception as exc:
            log.debug("join: claiming failed, trying again: %s", exc)
            return []

    def _claim(self, lease: int) -> list[Claim]:
        with self._cond:
            requeued = sorted(self.requeued.items())
            next_index = self.next_index
        for index, deaths in requeued:
            record = self._claim_record(deaths)
            claim = self.keys.claim(index)
            ops = [delete_op(self.keys.requeue(index)), put_op(claim, record, lease)]
            response = self._txn(ops, [key_exists(self.keys.requeue(index))], [range_op(claim)])
            revision = self._claimed(response, record, 0)
            if revision:
                self.claim_txns += 1
                return [Claim(index, revision, deaths, self._seq, lease)]
        while next_index < self.count:
            size = min(self.chunk_size(next_index), self.count - next_index)
            claimed = range(next_index, next_index + size)
            record = self._claim_record(0)
            ops = [put_op(self.keys.next, str(next_index + size))]
            ops += [put_op(self.keys.claim(index), record, lease) for index in claimed]
            compare = [value_equals(self.keys.next, str(next_index))]
            failure = [range_op(self.keys.next), range_op(self.keys.claim(next_index))]
            response = self._txn(ops, compare, failure)
            revision = self._claimed(response, record, 1)
            if revision:
                self.claim_txns += 1
                return [Claim(index, revision, 0, self._seq, lease) for index in claimed]
            kvs = response["responses"][0]["response_range"].get("kvs", [])
            next_index = int(unb64(kvs[0].get("value")) or 0) if kvs else self.count
        return []

    def _claim_record(self, deaths: int, seq: int = 0, started: bool = False) -> str:
        """Whose claim, its place in our claim order (we run claims in that order), deaths.

        On several threads also how many (``t``) and, once its test started, ``r``.
        """
        if not seq:
            self._seq += 1
        record = {"w": self.worker_id, "s": seq or self._seq, "d": deaths}
        if self.threads > 1:
            record["t"] = self.threads
        if started:
            record["r"] = 1
        return dumps(record)

    def mark_started(self, claim: Claim) -> Claim | None:
        """Mark ``claim`` as running (``--thread``); ``None`` when it is no longer ours.

        The mark charges the right tests when this process dies with several
        running. It rewrites the claim key, fenced like an acknowledgement,
        which is then fenced on the new revision. Unreachable etcd: run unmarked.
        """
        if self.threads <= 1:
            return claim
        key = self.keys.claim(claim.index)
        record = self._claim_record(claim.deaths, claim.seq, started=True)
        try:
            response = self._txn(
                [put_op(key, record, claim.lease)],
                [mod_revision_equals(key, claim.revision)],
            )
        except Exception as exc:
            log.debug("join: could not mark test #%d as started: %s", claim.index, exc)
            return claim
        if not response["succeeded"]:
            log.warning("join: test #%d was handed to another process; not run here", claim.index)
            return None
        revision = int(response["header"]["revision"])
        return Claim(claim.index, revision, claim.deaths, claim.seq, claim.lease)

    def _claimed(self, response: Mapping[str, Any], record: str, read: int) -> int:
        """The claim's revision if the transaction took it, or an earlier try did (adopted)."""
        revision = claim_revision(response, record, read)
        if revision and not response["succeeded"]:
            self.adopted += 1
            log.warning("join: a claim's answer was lost on the way (etcd failover); it is ours")
        return revision

    def still_ours(self, claim: Claim) -> bool:
        """Whether a claim taken ahead may still run here (:func:`.claims.still_held`)."""
        return still_held(self.gateway, self.keys, self._lease(), claim)

    # -- acknowledgements (:mod:`.acks`) ------------------------------------------

    def ack(
        self,
        claim: Claim,
        result_key: str,
        result: str,
        on_refused: Callable[[], None] | None = None,
    ) -> GuardedWrite:
        """Queue the result and acknowledgement of a claimed test (off the test's thread)."""
        return acknowledge(
            self.writer, self.keys, self.worker_id, claim, (result_key, result), on_refused
        )

    def stop(self) -> None:
        self._view.stop()
        with self._cond:
            self._cond.notify_all()
