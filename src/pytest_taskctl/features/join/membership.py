"""How several processes share one run id, and how ``--join`` and plain runs exclude each other.

A plain run owns its id through ``<run>/lease`` (see ``pytest_taskctl.ownership``)
and refuses an id whose lease is alive. A joined run keeps that same key,
marked ``"join": true``, attached to one *shared* lease that every joined
process keeps alive. So a plain process sees a live owner and is refused
(exit 4) while any joined process lives, a joined process refuses an id a
plain process owns, and the key vanishes once the last joined process
leaves (it revokes the shared lease) or ``LEASE_TTL`` after the last one died.

Each process also holds a lease of its own (:class:`~pytest_taskctl.etcd.lease.Lease`,
``WORKER_TTL``): its claims and its ``queue/alive/<worker>`` key are attached
to it, so a killed process's claims disappear within ``WORKER_TTL`` seconds
and the others requeue them. One lease per process, never one per claim.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...etcd.gateway import EtcdGateway, delete_op, key_missing, mod_revision_equals, put_op
from ...etcd.lease import Lease
from ...etcd.store import clear_stale_flags
from ...ownership import LEASE_TTL, owner_alive
from ...process import process_identity
from ...records import json_object
from .layout import JoinKeys, dumps

log = logging.getLogger("pytest_taskctl.plugin")

#: A dead process's claims return to the queue this long after its last keep-alive
#: (``PYTEST_TASKCTL_LEASE_TTL`` shortens it too: tests of a stopped process).
WORKER_TTL = min(6, LEASE_TTL)
#: Attempts at opening or joining when other processes change the run meanwhile.
JOIN_TRIES = 5


class JoinRefused(Exception):
    """The run id is held by a process that did not ``--join`` (or etcd kept changing)."""


def new_worker_id() -> str:
    """Host and pid for people, a random tail so a reused pid is a new worker."""
    host = socket.gethostname().replace("/", "_")[:64]
    return f"{host}-{os.getpid()}-{secrets.token_hex(2)}"


@dataclass
class Attempt:
    """The attempt of the run this process joined."""

    number: int
    #: This process opened it (cleared the previous attempt's queue and plan).
    opened: bool
    previous_meta: dict[str, Any] | None


class SharedLease:
    """Keeps the run's shared lease alive alongside the other joined processes.

    Not a :class:`Lease`: that object grants its own lease and revokes it on
    close, while this one is adopted, and revoked only by the last to leave.
    """

    def __init__(self, gateway: EtcdGateway, lease_id: int) -> None:
        self._gateway = gateway
        self.id = lease_id
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._keep_alive, name=f"taskctl-join-lease {lease_id:x}", daemon=True
        )
        self._thread.start()

    def _keep_alive(self) -> None:
        while not self._stop.wait(LEASE_TTL / 3):
            try:
                if self._gateway.lease_keepalive(self.id) <= 0:
                    log.warning("the joined run's shared lease expired (every process was away)")
                    return
            except Exception as exc:
                log.debug("keep-alive of the shared lease failed: %s", exc)

    def stop(self, revoke: bool) -> None:
        self._stop.set()
        if revoke:
            try:
                self._gateway.lease_revoke(self.id, timeout=2.0)
            except Exception as exc:
                log.debug("revoke of the shared lease failed: %s", exc)


class Membership:
    """This process's place in a joined run: the shared lease, its own lease, its keys."""

    def __init__(self, gateway: EtcdGateway, keys: JoinKeys, worker_id: str) -> None:
        self.gateway = gateway
        self.keys = keys
        self.worker_id = worker_id
        self.shared: SharedLease | None = None
        self.lease: Lease | None = None
        self._relock = threading.Lock()
        self._left = threading.Event()

    @property
    def lease_id(self) -> int:
        lease = self.lease
        return lease.id if lease is not None else 0

    # -- joining ------------------------------------------------------------------

    def join(self, resume: bool, meta: Mapping[str, Any]) -> Attempt:
        """Join the open attempt of the run, or open a new one; raise :class:`JoinRefused`."""
        run = self.keys.run
        for _ in range(JOIN_TRIES):
            found = {kv.key: kv for kv in self.gateway.range(run.lease, run.meta + "\0").kvs}
            holder = found.get(run.lease)
            owner = json_object(holder.value) if holder is not None else None
            meta_kv = found.get(run.meta)
            previous_meta = json_object(meta_kv.value) if meta_kv is not None else None
            if holder is not None and owner is not None and owner.get("join"):
                self.shared = SharedLease(self.gateway, int(owner.get("lease", holder.lease)))
                number = int(owner.get("attempt", 1))
                self._register()
                return Attempt(number, False, previous_meta)
            if holder is not None and owner_alive(owner or {}):
                raise JoinRefused(_owned_message(run.run_id, owner or {}))
            attempt = self._open(resume, meta, holder.mod_revision if holder else 0, previous_meta)
            if attempt is not None:
                return attempt
        raise JoinRefused(f"run {run.run_id} kept changing while joining; try again")

    def _open(
        self,
        resume: bool,
        meta: Mapping[str, Any],
        holder_revision: int,
        previous_meta: dict[str, Any] | None,
    ) -> Attempt | None:
        """Start a new attempt (the previous one ended, or there is none); ``None`` if raced."""
        run = self.keys.run
        number = _attempt_of(previous_meta) + 1 if resume and previous_meta else 1
        clear_stale_flags(self.gateway, run)  # a cancel of the last attempt must not hold this one
        lease_id = self.gateway.lease_grant(LEASE_TTL)
        record = {**process_identity(), "run_id": run.run_id, "started": time.time()}
        record.update(join=True, attempt=number, lease=lease_id)
        compare = (
            mod_revision_equals(run.lease, holder_revision)
            if holder_revision
            else key_missing(run.lease)
        )
        ops = [
            put_op(run.lease, json.dumps(record), lease_id),
            delete_op(self.keys.plan, prefix=True),
            delete_op(self.keys.queue, prefix=True),
            delete_op(run.workers, prefix=True),
            put_op(run.meta, dumps({**meta, "attempt": number, "join": True})),
            put_op(run.status, "RUNNING"),
        ]
        if not resume:
            ops.append(delete_op(run.results, prefix=True))  # a new run starts over
        if not self.gateway.txn(ops, [compare]):
            self.gateway.lease_revoke(lease_id)
            return None
        self.shared = SharedLease(self.gateway, lease_id)
        self._register()
        return Attempt(number, True, previous_meta)

    def _register(self) -> None:
        """Take this process's own lease and show it alive."""
        self.lease = Lease.grant(self.gateway, WORKER_TTL, on_lost=self._renew)
        self.gateway.put(self.keys.alive(self.worker_id), "1", self.lease.id)

    def _renew(self, expired: Lease) -> None:
        """etcd or this process was away longer than ``WORKER_TTL``: our claims are gone;
        come back as new.

        Results of tests claimed under the old lease are refused by their
        guarded acknowledgement, the others rerun those tests, and claims taken
        ahead under it are dropped before they run.
        """
        while not self._left.is_set():
            try:
                with self._relock:
                    if self._left.is_set():
                        return
                    self._register()
                log.warning(
                    "join: our lease expired (etcd or this process was away); took a new one"
                )
                return
            except Exception as exc:
                log.debug("could not renew the join lease: %s", exc)
                self._left.wait(1.0)

    # -- leaving ------------------------------------------------------------------

    def leave(self) -> bool:
        """Drop out of the run; ``True`` when no other process is left in it.

        The last one revokes the shared lease, which frees the run id.
        """
        with self._relock:
            self._left.set()
            lease, self.lease = self.lease, None
        if lease is not None:
            lease.revoke(timeout=2.0)  # deletes our alive key and any claim still held
        last = False
        try:
            last = not self.gateway.range_prefix(self.keys.alive_prefix, keys_only=True).kvs
        except Exception as exc:
            log.debug("join: could not count the processes left: %s", exc)
        if self.shared is not None:
            self.shared.stop(revoke=last)
        return last


def _attempt_of(meta: Mapping[str, Any]) -> int:
    attempt = meta.get("attempt")
    return attempt if isinstance(attempt, int) and attempt > 0 else 1


def _owned_message(run_id: str, owner: Mapping[str, Any]) -> str:
    where = f"{owner.get('host', '?')} (pid {owner.get('pid', '?')})"
    return (
        f"taskctl: refusing --join of run {run_id}: it is running without --join on {where}. "
        f"Wait for it to end or cancel it (taskctl cancel {run_id}); "
        f"a killed run frees its id within {LEASE_TTL} s."
    )
