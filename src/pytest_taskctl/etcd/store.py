"""The public state API: flags, status and metadata of runs in etcd.

:class:`StateStore` builds on the gateway (:mod:`.gateway`) and the
supervised watch (:mod:`.watch`); the plugin's own writes go through the
batching :class:`~pytest_taskctl.etcd.writer.KeyWriter`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ..keys import (
    DEFAULT_PREFIX,
    FINAL_STATUSES,
    FLAG_NAMES,
    LIVE_STATUSES,
    RUN_LEAVES,
    STATUSES,
    RunKeys,
    flag_is_true,
    normalize_prefix,
    runs_root,
    validate_run_id,
)
from ..records import json_object
from .gateway import (
    MAX_TXN_OPS,
    EtcdGateway,
    KeyValue,
    b64,
    delete_op,
    key_missing,
    key_value,
    mod_revision_equals,
    prefix_end,
    put_op,
    unb64,
)
from .settings import EtcdSettings, parse_endpoints
from .watch import WatchedRange


def clear_stale_flags(
    gateway: EtcdGateway,
    keys: RunKeys,
    taken_over_at: int | None = None,
    status_kvs: list[KeyValue] | None = None,
) -> list[str]:
    """Delete ``paused``/``cancelled`` set before the run's last attempt ended.

    A flag written before the previous attempt's final status would pause or
    cancel a re-run (``--resume``) the moment it starts. Flags written after
    that status are a request for the next attempt and stay. An attempt that
    died never wrote a final status: its status is still live, and the new
    attempt that took its lease over (at revision ``taken_over_at``) clears the
    flags older than that takeover -- a ``paused`` of the dead attempt must not
    hold the new one. Each delete is conditional on the flag's revision, so a
    flag set meanwhile survives. ``status_kvs``: the status key as the caller
    read it when it took the run (no one else writes it since), saving a round trip.
    """
    status = gateway.range(keys.status).kvs if status_kvs is None else status_kvs
    if not status:
        return []
    if status[0].text in FINAL_STATUSES:
        ended_at = status[0].mod_revision
    elif status[0].text.strip() in LIVE_STATUSES and taken_over_at:
        ended_at = taken_over_at
    else:
        return []
    cleared = []
    flags = gateway.read_many(*((keys.flag(name), None) for name in FLAG_NAMES))
    for name, found in zip(FLAG_NAMES, flags, strict=True):
        kvs = found.kvs
        if kvs and kvs[0].mod_revision < ended_at:
            compare = [mod_revision_equals(keys.flag(name), kvs[0].mod_revision)]
            if gateway.txn([delete_op(keys.flag(name))], compare=compare):
                cleared.append(f"{name}={kvs[0].text!r}")
    return cleared


class UnknownRun(LookupError):
    """No key at all exists under ``<run>/``: a typo, or the wrong prefix or etcd."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id!r}")
        self.run_id = run_id


class RunEnded(RuntimeError):
    """The run's status is final: a flag would only hold up a later attempt."""

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(f"run {run_id} already ended ({status})")
        self.run_id = run_id
        self.status = status


class RunDied(RunEnded):
    """The run's status is live but its lease expired: its process died without ending."""

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(run_id, "INTERRUPTED")
        self.message = f"run {run_id} is not running (its process died; last status {status})"
        self.args = (self.message,)


class RunStatusChanging(RuntimeError):
    """The run's status kept changing while we tried to write a flag; retry later."""


#: Attempts at a flag write guarded on the status key before giving up.
FLAG_WRITE_ATTEMPTS = 5


def _check_flag_name(name: str) -> str:
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"invalid flag name {name!r}")
    return name


class StateStore:
    """Run state in etcd: flags, status and metadata of runs.

    ``check_flag`` answers from a watched local view once :meth:`watch_run`
    has been called for a run (the plugin does this for its own run), so it
    costs no round trip; otherwise it reads etcd once. ``wait_for_flag`` reads
    the key at revision R and watches from R+1, so no change is missed.
    """

    #: Keys per read when listing run ids.
    RUN_IDS_PAGE = 1000

    def __init__(
        self,
        etcd: EtcdSettings | str | None = None,
        prefix: str = DEFAULT_PREFIX,
        *,
        gateway: EtcdGateway | None = None,
    ) -> None:
        if isinstance(etcd, str):
            etcd = EtcdSettings(parse_endpoints(etcd, "StateStore(etcd=...)"))
        self.settings = etcd or EtcdSettings.resolve()
        self.prefix = normalize_prefix(prefix)
        self._gateway = gateway
        self._connecting = threading.Lock()
        self._views: dict[str, WatchedRange] = {}
        self._lock = threading.Lock()

    @property
    def gateway(self) -> EtcdGateway:
        """The connection, made on first use: raises :class:`EtcdUnavailable` then, not earlier.

        A store that is made but never used (a CLI that fails on its arguments,
        a fixture that a test skips) costs no connection.
        """
        with self._connecting:
            if self._gateway is None:
                self._gateway = EtcdGateway.connect(self.settings)
            return self._gateway

    def keys(self, run_id: str) -> RunKeys:
        return RunKeys(self.prefix, validate_run_id(run_id))

    # -- flags ------------------------------------------------------------------

    def watch_run(self, run_id: str, **kwargs: Any) -> WatchedRange:
        """Start (once) and return the watched view of the run's control keys."""
        with self._lock:
            view = self._views.get(run_id)
            if view is None:
                start, end = self.keys(run_id).control_range
                view = WatchedRange(self.gateway, start, end, **kwargs)
                view.start(self.gateway.range(start, end))
                self._views[run_id] = view
            return view

    def check_flag(self, run_id: str, name: str) -> bool:
        key = self.keys(run_id).flag(_check_flag_name(name))
        view = self._views.get(run_id)
        if view is not None and view.key <= key < (view.range_end or ""):
            return flag_is_true(view.get(key))
        return flag_is_true(self.gateway.get(key))

    def wait_for_flag(
        self, run_id: str, name: str, state: bool = False, timeout: float | None = None
    ) -> bool:
        """Block until the flag equals ``state``: ``True`` when reached, ``False`` on timeout."""
        key = self.keys(run_id).flag(_check_flag_name(name))

        def reached(values: Mapping[str, bytes]) -> bool:
            return flag_is_true(values.get(key)) == state

        view = self._views.get(run_id)
        if view is not None and view.key <= key < (view.range_end or ""):
            return view.wait_until(reached, timeout)
        watch = WatchedRange(self.gateway, key)
        watch.start(self.gateway.range(key))
        try:
            return watch.wait_until(reached, timeout)
        finally:
            watch.stop()

    def set_flag(self, run_id: str, name: str, value: str = "1") -> None:
        """Write the flag; :class:`UnknownRun` / :class:`RunEnded` as :meth:`request_flag`."""
        self._write_flag(run_id, name, value)

    def clear_flag(self, run_id: str, name: str) -> None:
        """Delete the flag; :class:`UnknownRun` / :class:`RunEnded` as :meth:`request_flag`."""
        self._write_flag(run_id, name, None)

    def request_flag(self, run_id: str, name: str, on: bool) -> bool:
        """Set (``on``) or clear a flag of a run that exists and has not ended.

        Returns whether the flag was true before. Raises :class:`UnknownRun`
        when no key exists under ``<run>/``, :class:`RunEnded` when its status
        is final (a flag on an ended run would hold up its next attempt),
        :class:`RunDied` (a :class:`RunEnded`) when its status is live but its
        lease is gone, and :class:`RunStatusChanging` when the status kept
        changing meanwhile.
        """
        return flag_is_true(self._write_flag(run_id, name, "1" if on else None))

    def _write_flag(self, run_id: str, name: str, value: str | None) -> bytes | None:
        """Put (or with ``None`` delete) the flag; the flag's value before.

        The write is a transaction guarded by the status key's revision, so a
        run that ends between our check and our write is refused, not flagged.
        """
        keys = self.keys(run_id)
        flag_key = keys.flag(_check_flag_name(name))
        gateway = self.gateway
        for _attempt in range(FLAG_WRITE_ATTEMPTS):
            status_kvs = gateway.range(keys.status).kvs
            if not status_kvs and not self.run_exists(run_id):
                raise UnknownRun(run_id)
            status = status_kvs[0].text.strip() if status_kvs else None
            if status in FINAL_STATUSES:
                raise RunEnded(run_id, str(status))
            lease_kvs = gateway.range(keys.lease).kvs
            if status in LIVE_STATUSES and not lease_kvs:
                raise RunDied(run_id, str(status))
            before = gateway.get(flag_key)
            guard = [
                mod_revision_equals(keys.status, status_kvs[0].mod_revision)
                if status_kvs
                else key_missing(keys.status),
                mod_revision_equals(keys.lease, lease_kvs[0].mod_revision)
                if lease_kvs
                else key_missing(keys.lease),
            ]
            op = put_op(flag_key, value) if value is not None else delete_op(flag_key)
            if gateway.txn([op], compare=guard):
                return before
        raise RunStatusChanging(f"run {run_id} changed status while a flag was written; retry")

    # -- status and metadata ----------------------------------------------------

    def get_status(self, run_id: str) -> str | None:
        """The run's status word; ``INTERRUPTED`` for a live one whose lease expired.

        The plugin holds ``<run>/lease`` from before its first status to after
        its last, so a live status without it is a process that died.
        """
        leaves = self.run_leaves(run_id)
        value = leaves.get("status")
        if value is None:
            return None
        status = value.decode("utf-8", "replace")
        if status.strip() in LIVE_STATUSES and "lease" not in leaves:
            return "INTERRUPTED"
        return status

    def set_status(self, run_id: str, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {', '.join(STATUSES)}")
        self.gateway.put(self.keys(run_id).status, status)

    def get_meta(self, run_id: str) -> dict[str, Any] | None:
        return json_object(self.gateway.get(self.keys(run_id).meta))

    # -- runs -------------------------------------------------------------------

    def run_exists(self, run_id: str) -> bool:
        """Whether any key exists under ``<run>/`` (also only results or pauses)."""
        root = self.keys(run_id).root + "/"
        return bool(self._key_names(root, prefix_end(root), limit=1)[0])

    def run_ids(self) -> list[str]:
        """Ids of the runs under the prefix (any key under ``<run>/``), in key order.

        Keys only, a page at a time; a page that ends inside a run's results
        skips the rest of them, so the cost grows with the runs, not the tests.
        """
        root = runs_root(self.prefix)
        end = prefix_end(root)
        cursor = root
        ids: list[str] = []
        while True:
            keys, more = self._key_names(cursor, end, limit=self.RUN_IDS_PAGE)
            for key in keys:
                run_id, slash, _ = key[len(root) :].partition("/")
                if run_id and (not ids or ids[-1] != run_id):
                    ids.append(run_id)
            if not more or not keys:
                return ids
            run_id, slash, _ = keys[-1][len(root) :].partition("/")
            # Past the rest of that run's keys; a bare "<root><id>" key has none.
            cursor = prefix_end(f"{root}{run_id}/") if slash else keys[-1] + "\0"

    def leaf_ranges(self, run_id: str) -> list[tuple[str, str | None]]:
        """The key ranges that hold a run's run-level keys (``RUN_LEAVES``) and no other.

        ``cancelled`` < ``lease`` < ``meta`` < ``paused`` are adjacent; ``status``
        sorts after ``pauses/`` and ``results/`` and needs a range of its own.
        """
        return self._leaf_ranges(self.keys(run_id))

    @staticmethod
    def _leaf_ranges(keys: RunKeys) -> list[tuple[str, str | None]]:
        start, end = keys.control_range
        return [(start, end), (keys.status, None)]

    def run_leaves(self, run_id: str) -> dict[str, bytes]:
        """``{"status": b"...", "meta": b"...", ...}``: the run-level keys that exist.

        One transaction, so status and meta come from the same revision;
        results and pauses are never read.
        """
        return self.runs_leaves([validate_run_id(run_id)]).get(run_id, {})

    def runs_leaves(self, run_ids: list[str]) -> dict[str, dict[str, bytes]]:
        """:meth:`run_leaves` of many runs (e.g. :meth:`run_ids`), in a few transactions.

        Ids are taken as listed, not validated: whatever is in etcd is shown.
        """
        ranges = [
            (keys, start, end)
            for keys in (RunKeys(self.prefix, run_id) for run_id in run_ids)
            for start, end in self._leaf_ranges(keys)
        ]
        leaves: dict[str, dict[str, bytes]] = {run_id: {} for run_id in run_ids}
        for first in range(0, len(ranges), MAX_TXN_OPS):
            chunk = ranges[first : first + MAX_TXN_OPS]
            ops = [
                {"request_range": {"key": b64(start), **({"range_end": b64(end)} if end else {})}}
                for _, start, end in chunk
            ]
            responses = self.gateway.call("/kv/txn", {"success": ops}).get("responses", [])
            for (keys, _, _), response in zip(chunk, responses, strict=True):
                for raw in response.get("response_range", {}).get("kvs", ()):
                    kv = key_value(raw)
                    name = kv.key.removeprefix(keys.root + "/")
                    if name in RUN_LEAVES:
                        leaves[keys.run_id][name] = kv.value
        return leaves

    def list_runs(self) -> dict[str, dict[str, bytes]]:
        """``{run_id: {"status": b"...", "meta": b"...", ...}}`` for every run under the prefix.

        Only the run-level keys are returned, not results or pauses; a run that
        has none of them is left out.
        """
        runs = self.runs_leaves(self.run_ids())
        return {run_id: leaves for run_id, leaves in runs.items() if leaves}

    def _key_names(self, start: str, end: str, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` key names in ``[start, end)``, and whether more follow."""
        response = self.gateway.call(
            "/kv/range",
            {"key": b64(start), "range_end": b64(end), "keys_only": True, "limit": limit},
        )
        keys = [
            unb64(raw.get("key")).decode("utf-8", "surrogateescape")
            for raw in response.get("kvs", ())
        ]
        return keys, bool(response.get("more"))

    def close(self) -> None:
        with self._lock:
            views = list(self._views.values())
            self._views.clear()
        for view in views:
            view.stop()
        if self._gateway is not None:
            self._gateway.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
