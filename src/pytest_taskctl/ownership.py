"""Who owns a run id: ``<run>/lease``, attached to a lease its process keeps alive.

A second process must not start or resume a run that is still alive
elsewhere, and a run whose process died must not block its id for long. So
the owner writes ``<run>/lease`` (host, pid, lease id) attached to an etcd
lease: the key disappears ``LEASE_TTL`` seconds after the process dies
(SIGKILL, reboot) and at once when the run ends.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

from .etcd.gateway import EtcdGateway, KeyValue, key_missing, mod_revision_equals, put_op
from .etcd.lease import Lease
from .process import local_process_dead

log = logging.getLogger("pytest_taskctl.plugin")

#: Seconds the run's lease lives without a keep-alive (a killed run frees its id after this).
LEASE_TTL = 10
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

    def __init__(self, gateway: EtcdGateway, key: str, owner: Mapping[str, Any], ttl: int) -> None:
        self._gateway = gateway
        self.key = key
        self.owner: dict[str, Any] = dict(owner)
        self.ttl = ttl
        self.lost = False
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
    ) -> RunOwnership | None:
        """Take the key if it is still as read (``previous``); ``None`` if someone was faster.

        ``previous`` is a dead owner's key (or ``None`` for no key): the write is
        compared on its revision, so of two processes taking over at once one wins.
        """
        ownership = cls(gateway, key, owner, ttl)
        compare = mod_revision_equals(key, previous.mod_revision) if previous else key_missing(key)
        if not ownership._take(compare):
            return None
        return ownership

    def _take(self, compare: dict[str, Any]) -> bool:
        """Grant a lease and write the key with it if ``compare`` holds; keep it if so."""
        lease = Lease.grant(self._gateway, self.ttl, on_lost=self._renew)
        record = {**self.owner, "lease": lease.id}
        try:
            taken = self._gateway.txn([put_op(self.key, json.dumps(record), lease.id)], [compare])
        except BaseException:
            lease.revoke()
            raise
        with self._lock:
            keep = taken and not self._released.is_set()
            if keep:
                self._lease, self.owner = lease, record
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
                taken = self._take(key_missing(self.key))
            except Exception as exc:
                log.debug("could not renew the run lease: %s", exc)
                self._released.wait(RENEW_RETRY)
                continue
            if taken:
                log.warning("run lease expired while etcd was away; took a new one")
            else:
                self.lost = True
                log.warning("run lease lost: another process has taken this run id (%s)", self.key)
            return

    def release(self) -> None:
        """Give the run id up: revoke the lease (bounded, never raises)."""
        with self._lock:
            self._released.set()
            lease, self._lease = self._lease, None
        if lease is not None:
            lease.revoke()
