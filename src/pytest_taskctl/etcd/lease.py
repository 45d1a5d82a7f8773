"""An etcd lease held for the life of its owner, kept alive by its own thread.

Keys attached to a lease (or records that name it) vanish or turn stale soon
after their process dies, without anyone cleaning up. The same object serves
the run's ownership key and live pauses: grant it, read :attr:`Lease.done`
to learn that it was lost, :meth:`Lease.revoke` it when done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .gateway import EtcdGateway

log = logging.getLogger("pytest_taskctl.store")

#: Keep-alive retries while etcd does not answer: well inside any TTL we use.
RETRY_INTERVAL = 1.0
#: How long :meth:`Lease.revoke` waits for the keep-alive thread to end.
JOIN_TIMEOUT = 0.5


class Lease:
    """One etcd lease and the thread that refreshes it every ``ttl / 3`` seconds.

    While etcd is away the thread keeps trying, faster than the TTL. When etcd
    answers that the lease is gone (TTL 0: it expired during an outage, or
    someone revoked it), :attr:`done` is set and ``on_lost`` is called once,
    on the keep-alive thread; the lease is not renewed -- what a new lease
    means is the owner's decision. :attr:`done` is also set by :meth:`revoke`.
    """

    def __init__(
        self,
        gateway: EtcdGateway,
        lease_id: int,
        ttl: int,
        on_lost: Callable[[Lease], None] | None = None,
    ) -> None:
        self._gateway = gateway
        self.id = lease_id
        self.ttl = ttl
        self.done = threading.Event()
        self.lost = False
        #: When the last keep-alive that etcd accepted was *sent* (monotonic): the
        #: lease lives at least until ``renewed + ttl`` whatever happened since.
        self.renewed = time.monotonic()
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._keep_alive, name=f"taskctl-lease {lease_id:x}", daemon=True
        )

    @classmethod
    def grant(
        cls, gateway: EtcdGateway, ttl: int, on_lost: Callable[[Lease], None] | None = None
    ) -> Lease:
        """Grant a lease of ``ttl`` seconds and start keeping it alive; raises if etcd does."""
        asked = time.monotonic()
        lease = cls(gateway, gateway.lease_grant(ttl), ttl, on_lost)
        lease.renewed = asked
        lease._thread.start()
        return lease

    def _keep_alive(self) -> None:
        interval = max(0.5, self.ttl / 3)
        wait = interval
        while not self._stop.wait(wait):
            sent = time.monotonic()
            try:
                alive = self._gateway.lease_keepalive(self.id) > 0
            except Exception as exc:  # etcd away: keep trying, faster than the TTL
                log.debug("keep-alive of lease %x failed: %s", self.id, exc)
                wait = min(RETRY_INTERVAL, interval)
                continue
            if alive:
                self.renewed = sent
                wait = interval
                continue
            if self._stop.is_set():
                return  # revoked meanwhile: not a loss
            self.lost = True
            self.done.set()
            if self._on_lost is not None:
                try:
                    self._on_lost(self)
                except Exception:
                    log.exception("lease-lost callback failed")
            return

    def surely_alive(self, margin: float = 0.5) -> bool:
        """Whether the lease cannot have expired yet, without asking etcd.

        ``False`` once ``ttl - margin`` seconds passed since the last accepted
        keep-alive was sent: after the process was stopped (SIGSTOP, a frozen
        VM) the keep-alive thread may not have run yet, and only etcd knows.
        """
        return not self.done.is_set() and time.monotonic() - self.renewed < self.ttl - margin

    def revoke(self, timeout: float | None = None) -> None:
        """Stop the keep-alive and revoke the lease; bounded, never raises.

        A keep-alive stuck on a dead etcd must not hold up the owner's exit: the
        thread gets :data:`JOIN_TIMEOUT` to end, the revoke call ``timeout``
        (default: the gateway's). A lease left unrevoked still expires after its TTL.
        """
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(JOIN_TIMEOUT)
        if not self.lost:
            try:
                self._gateway.lease_revoke(self.id, timeout=timeout)
            except Exception as exc:
                log.debug("revoke of lease %x failed: %s", self.id, exc)
        self.done.set()
