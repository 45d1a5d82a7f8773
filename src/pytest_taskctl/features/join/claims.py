"""What the queue hands out: a claim, as this process holds it and as the mirror shows it.

And whether a claim is ours: after a lost answer (the member in use died
after committing our claim, and the gateway sent it again to the next one),
and before a claim taken ahead runs (this process may have been stopped past
its lease, and the others run its claims).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...etcd.gateway import EtcdGateway, unb64
from ...etcd.lease import Lease
from .layout import JoinKeys

if TYPE_CHECKING:
    import pytest

log = logging.getLogger("pytest_taskctl.plugin")


@dataclass(frozen=True)
class Claim:
    index: int
    #: The claim key's mod revision: acknowledgements are guarded by it.
    revision: int
    deaths: int
    #: Its place in this process's claim order (the claim record's ``s``).
    seq: int = 0
    #: The lease it was claimed under: a claim does not outlive it.
    lease: int = 0


@dataclass(frozen=True)
class Held:
    """A claim as the mirror knows it: whose, in which order it was claimed, deaths so far.

    ``threads``: how many tests its process runs at once (``--thread``);
    ``started``: such a process marked the claim when the test started.
    """

    worker: str
    seq: int
    deaths: int
    threads: int = 1
    started: bool = False


def claim_revision(response: Mapping[str, Any], record: str, read: int) -> int:
    """The claim's revision if the claim transaction took it, or an earlier try did; else 0.

    ``read``: which failure-branch read holds the claim key. A claim key that
    holds exactly ``record`` (our worker and a sequence number used once) was
    written by this very request, sent twice.
    """
    if response["succeeded"]:
        return int(response["header"]["revision"])
    kvs = response["responses"][read]["response_range"].get("kvs", [])
    if kvs and unb64(kvs[0].get("value")) == record.encode("utf-8"):
        return int(kvs[0].get("mod_revision", 0))
    return 0


def still_held(gateway: EtcdGateway, keys: JoinKeys, lease: Lease | None, claim: Claim) -> bool:
    """Whether a claim taken ahead may still run here, asked before it starts.

    Surely while the lease it was taken under was kept alive lately. After a
    stop longer than that (SIGSTOP, a frozen VM) etcd may have expired the
    lease and the others run the claim: then etcd decides, before the
    keep-alive thread has even noticed. A lease renewed since means the old
    one, and its claims, are gone. (On several threads the start mark asks
    etcd for every test anyway.)
    """
    if lease is None or lease.id != claim.lease:
        return False
    if lease.surely_alive():
        return True
    try:
        kvs = gateway.range(keys.claim(claim.index)).kvs
    except Exception as exc:  # etcd away: run it; its guarded result decides
        log.debug("join: could not check claim #%d: %s", claim.index, exc)
        return True
    return bool(kvs) and kvs[0].mod_revision == claim.revision


def tear_down_for(session: pytest.Session, item: pytest.Item) -> None:
    """Tear down what pytest kept for an announced next item that was dropped.

    pytest keeps the fixtures the ``nextitem`` it was told shares with the
    test that ended; when that item was dropped (another process runs it),
    the item run instead may not need them, and pytest's setup asserts so.
    """
    try:
        session._setupstate.teardown_exact(item)
    except Exception as exc:
        log.warning("join: a teardown before %s failed: %s", item.nodeid, exc)
