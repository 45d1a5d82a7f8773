"""Acknowledgements of a joined process: each result written with its ``done``, guarded.

A result is written together with ``queue/done/<index>`` and the deletion of
the claim, guarded by the claim key still being the one our claim (or our
start mark) wrote: a process that was presumed dead (stopped past its lease,
its claims handed to others) cannot overwrite the result of the process that
took over. They leave through the run's one
:class:`~pytest_taskctl.etcd.writer.KeyWriter` as guarded writes (nested
transactions), never from a test's thread: several share a transaction with
the run's other writes, and a refused one refuses only itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ...etcd.gateway import mod_revision_equals
from ...etcd.guarded import GuardedWrite
from ...etcd.writer import KeyWriter
from ...records import json_object
from .claims import Claim
from .layout import JoinKeys, dumps

log = logging.getLogger("pytest_taskctl.plugin")


def acknowledge(
    writer: KeyWriter,
    keys: JoinKeys,
    worker_id: str,
    claim: Claim,
    result: tuple[str, str],
    on_refused: Callable[[], None] | None = None,
) -> GuardedWrite:
    """Queue ``result`` (key, JSON) with the claim's acknowledgement.

    ``on_refused`` is called (on the writer's thread) when the claim was no
    longer ours, so the result was not recorded. A refusal whose ``done``
    names us is our own earlier try, sent again after its answer was lost.
    """
    index = claim.index
    done_key = keys.done(index)

    def settled(write: GuardedWrite) -> None:
        if write.written is not False:
            return
        done = json_object(write.found.get(done_key)) or {}
        if done.get("w") == worker_id and "gave_up" not in done:
            return  # landed on the first try
        log.warning(
            "join: the result of test #%d was not recorded: its claim was handed to another "
            "process while this one was away (done by: %s)",
            index,
            done.get("w", "nobody yet"),
        )
        if on_refused is not None:
            on_refused()

    # done before the claim's deletion: watchers see it first and find no orphan.
    writes = {done_key: dumps({"w": worker_id}), keys.claim(index): None, result[0]: result[1]}
    return writer.write_guarded(
        [mod_revision_equals(keys.claim(index), claim.revision)],
        writes,
        reads=(done_key,),
        on_done=settled,
    )
