"""Who owns a run id: ``<run>/lease``, attached to a lease its process keeps alive.

A second process must not start or resume a run that is still alive
elsewhere, and a run whose process died must not block its id for long. So
the owner writes ``<run>/lease`` (host, pid, lease id) attached to an etcd
lease: the key disappears ``LEASE_TTL`` seconds after the process dies
(SIGKILL, reboot) and at once when the run ends.

The run takes its id (:func:`claim_run`) before it creates anything -- no
tracer, no log file, no key -- so a refused process writes nothing. Every
later write of the run is fenced on the lease (:meth:`RunOwnership.clauses`):
a process that was stopped past its TTL while another one took the run
over finds its transactions refused and stops writing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .etcd.gateway import (
    EtcdGateway,
    KeyValue,
    b64,
    key_missing,
    mod_revision_equals,
    put_op,
)
from .etcd.lease import Lease
from .keys import RunKeys
from .process import local_process_dead, process_identity
from .records import json_object

log = logging.getLogger("pytest_taskctl.plugin")

#: Environment variable: seconds of the run lease's TTL (tests shorten it; at least 2).
LEASE_TTL_ENV = "PYTEST_TASKCTL_LEASE_TTL"


def _lease_ttl() -> int:
    raw = os.environ.get(LEASE_TTL_ENV, "")
    try:
        return max(2, int(raw)) if raw else 10
    except ValueError:
        log.warning("%s=%r is not a whole number of seconds; using 10", LEASE_TTL_ENV, raw)
        return 10


#: Seconds the run's lease lives without a keep-alive (a killed run frees its id after this).
LEASE_TTL = _lease_ttl()
#: Pause between attempts to take a new lease while etcd is still unsteady.
RENEW_RETRY = 1.0


def owner_alive(owner: Mapping[str, Any]) -> bool:
    """Whether the holder of a run lease that still exists is really alive.

    The lease key exists, so etcd thinks so; on this host we can tell better
    (a SIGKILLed run keeps its lease for up to ``LEASE_TTL`` seconds). A lease
    of this very process is a session that did not end (in-process runs).
    """
    if owner.get("host") == socket.gethostname() and owner.get("pid") == os.getpid():
        return False
    return not local_process_dead(owner)


class RunOwnership:
    """This process's hold on a run id: the ownership key and the :class:`Lease` behind it.

    If etcd was away longer than the TTL, the lease expires and etcd deletes
    the key; once etcd answers again a new lease takes the key back -- unless
    another process has taken the run meanwhile, which makes :attr:`lost` true.
    """

    def __init__(
        self,
        gateway: EtcdGateway,
        key: str,
        owner: Mapping[str, Any],
        ttl: int,
        meta_key: str | None = None,
    ) -> None:
        self._gateway = gateway
        self.key = key
        #: The record a taking-over process rewrites first (the run's meta): naming
        #: another process there means the run was taken while our lease was gone.
        self.meta_key = meta_key
        self.owner: dict[str, Any] = dict(owner)
        self.ttl = ttl
        self.lost = False
        #: etcd revision at which the key was (last) taken: flags older than it were
        #: set for an earlier attempt.
        self.revision = 0
        self._lease: Lease | None = None
        self._released = threading.Event()
        self._lock = threading.Lock()

    @property
    def lease_id(self) -> int:
        return self._lease.id if self._lease is not None else 0

    @classmethod
    def acquire(
        cls,
        gateway: EtcdGateway,
        key: str,
        owner: Mapping[str, Any],
        previous: KeyValue | None,
        ttl: int = LEASE_TTL,
        meta_key: str | None = None,
        also: tuple[dict[str, Any], ...] = (),
    ) -> RunOwnership | None:
        """Take the key if it is still as read (``previous``); ``None`` if someone was faster.

        ``previous`` is a dead owner's key (or ``None`` for no key): the write is
        compared on its revision, so of two processes taking over at once one wins.
        ``also``: more compare clauses on what the caller read with it.
        """
        ownership = cls(gateway, key, owner, ttl, meta_key)
        compare = mod_revision_equals(key, previous.mod_revision) if previous else key_missing(key)
        if not ownership._take(compare, *also):
            return None
        return ownership

    def _take(self, *compare: dict[str, Any]) -> bool:
        """Grant a lease and write the key with it if ``compare`` holds; keep it if so."""
        lease = Lease.grant(self._gateway, self.ttl, on_lost=self._renew)
        record = {**self.owner, "lease": lease.id}
        request = {
            "compare": list(compare),
            "success": [put_op(self.key, json.dumps(record), lease.id)],
        }
        try:
            response = self._gateway.call("/kv/txn", request)
        except BaseException:
            lease.revoke()
            raise
        taken = bool(response.get("succeeded", False))
        with self._lock:
            keep = taken and not self._released.is_set()
            if keep:
                self._lease, self.owner = lease, record
                self.revision = int(response.get("header", {}).get("revision", 0))
        if not keep:
            lease.revoke()  # refused, or released while we renewed
        return taken

    def _renew(self, expired: Lease) -> None:
        """Our lease expired while etcd was away: take a new one, unless the key is taken.

        Runs on the expired lease's keep-alive thread, which has nothing else
        left to do; it retries until it succeeds, loses the key or is released.
        """
        while not self._released.is_set():
            try:
                taken = self._take(*self._unclaimed())
            except _TakenOver:
                taken = False
            except Exception as exc:
                log.debug("could not renew the run lease: %s", exc)
                self._released.wait(RENEW_RETRY)
                continue
            if taken:
                log.warning("run lease expired while etcd was away; took a new one")
            else:
                self._mark_lost()
            return

    def _unclaimed(self) -> list[dict[str, Any]]:
        """Compare clauses that hold while nobody else took the run since we lost the key.

        Another process may have taken the run over and ended it (its key gone
        too): its meta then names it, and a new lease of ours must not write
        over its run. Raises :class:`_TakenOver` when that is already visible.
        """
        clauses = [key_missing(self.key)]
        if self.meta_key is None:
            return clauses
        found = self._gateway.range(self.meta_key).kvs
        if not found:
            return [*clauses, key_missing(self.meta_key)]
        meta = json_object(found[0].value) or {}
        if not _same_process(meta, self.owner):
            raise _TakenOver
        return [*clauses, mod_revision_equals(self.meta_key, found[0].mod_revision)]

    def _mark_lost(self) -> None:
        with self._lock:
            if self.lost:
                return
            self.lost = True
        log.warning(
            "run lease lost: another process owns run %s; this process stops writing",
            self.owner.get("run_id") or self.key,
        )

    # -- the fence on every write of the run (see KeyWriter's ``fence``) --------------

    def clauses(self) -> list[dict[str, Any]]:
        """The compare clause each write of the run carries: the key still holds our lease."""
        lease = str(self.lease_id)
        return [{"key": b64(self.key), "target": "LEASE", "result": "EQUAL", "lease": lease}]

    def refused(self) -> bool:
        """A fenced write failed: whether the run is lost (``False``: our lease is being renewed).

        Called on the writer's thread. The key held by another lease, or a
        meta naming another process, means another process owns the run now.
        """
        if self.lost:
            return True
        try:
            found = self._gateway.range(self.key).kvs
            if not found:
                self._unclaimed()  # raises when another process took the run and ended
            elif found[0].lease != self.lease_id:
                holder = json_object(found[0].value) or {}
                if not _same_process(holder, self.owner):
                    self._mark_lost()
            # else: our renewal landed meanwhile; the retry carries the new lease
        except _TakenOver:
            self._mark_lost()
        except Exception as exc:
            log.debug("could not check the run lease: %s", exc)
        return self.lost

    def release(self) -> None:
        """Give the run id up: revoke the lease (bounded, never raises)."""
        with self._lock:
            self._released.set()
            lease, self._lease = self._lease, None
        if lease is not None:
            lease.revoke()


def _same_process(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("host", "pid", "proc_start"))


class _TakenOver(Exception):
    """Another process has taken the run over since our lease was lost."""


class RunStillRunning(Exception):
    """The run id belongs to a process that is still alive (its lease is held)."""


@dataclass
class RunClaim:
    """What taking a run id gives the run: the ownership and the earlier attempt's meta."""

    ownership: RunOwnership
    previous_meta: dict[str, Any] | None
    #: The earlier attempt's status word (``None`` for a new run).
    previous_status: str | None
    #: The status key as read when the run was taken (empty for a new run).
    status_kvs: list[KeyValue]


def claim_run(gateway: EtcdGateway, keys: RunKeys, *, resume: bool) -> RunClaim:
    """Take ``<run>/lease`` for this process, or raise :class:`RunStillRunning`.

    Reads the lease and meta in one range ("lease" < "meta" and no other key
    of the layout sorts between them) and the status beside it, in one round
    trip; refuses a live owner and takes the key with a compare on what it
    read, so of two processes starting at once one wins (the loser reads
    again). Writes nothing but the lease key.
    """
    for _ in range(3):
        owned, status = gateway.read_many((keys.lease, keys.meta + "\0"), (keys.status, None))
        found = {kv.key: kv for kv in owned.kvs}
        holder = found.get(keys.lease)
        owner = json_object(holder.value) if holder is not None else None
        if holder is not None and owner_alive(owner or {}):
            raise RunStillRunning(still_running_message(keys.run_id, owner or {}, resume))
        me = {**process_identity(), "run_id": keys.run_id, "started": time.time()}
        unchanged = (  # the status as read: the claim returns it
            mod_revision_equals(keys.status, status.kvs[0].mod_revision)
            if status.kvs
            else key_missing(keys.status)
        )
        ownership = RunOwnership.acquire(
            gateway, keys.lease, me, holder, meta_key=keys.meta, also=(unchanged,)
        )
        if ownership is not None:
            meta_kv = found.get(keys.meta)
            return RunClaim(
                ownership,
                json_object(meta_kv.value) if meta_kv is not None else None,
                status.kvs[0].text.strip() if status.kvs else None,
                status.kvs,
            )
    raise RunStillRunning(
        f"run {keys.run_id} was started by another process at the same moment; "
        "refusing to run it twice"
    )


def still_running_message(run_id: str, owner: Mapping[str, Any], resume: bool) -> str:
    started = owner.get("started")
    where = f"{owner.get('host', '?')} (pid {owner.get('pid', '?')})"
    since = (
        f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}"
        if isinstance(started, (int, float))
        else ""
    )
    what = "--resume of" if resume else "starting"
    return (
        f"taskctl: refusing {what} run {run_id}: it is still running on {where}{since} "
        f"-- its lease {owner.get('lease', '?')} in etcd is alive. Wait for it to end, or "
        f"cancel it (taskctl cancel {run_id}); a killed run frees its id within {LEASE_TTL} s."
    )
