"""``taskctl watch``: a run's live progress until it ends, from watched etcd keys.

It reads runs through :mod:`.views` like ``status`` does, so a watched run
and ``taskctl status`` never disagree; the live display is most of its size.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from ..etcd.connection import ConnectionCallback, JointConnection
from ..etcd.gateway import RangeResult
from ..etcd.store import StateStore
from ..etcd.watch import WatchedRange
from ..keys import FINAL_STATUSES, RUN_STATE_LEAVES
from ..process import local_process_dead
from ..records import json_object
from .context import EXIT_OK, CommandFailed, Context, add_run_id, non_negative_float
from .views import (
    COUNT_NAMES,
    flag_notes,
    format_duration,
    format_line,
    is_final,
    run_record,
    unknown_run,
)

#: How often ``watch`` looks at its local copy of ``<run>/status`` (no etcd traffic).
STATUS_POLL = 0.05
#: How long ``watch`` waits for the final ``meta`` once the final status is in
#: (the plugin writes both through one queue, but possibly in two transactions).
FINAL_META_GRACE = 2.0
#: How often ``watch`` checks that a run on this host still has its process.
LIVENESS_CHECK = 1.0


# -- watch ------------------------------------------------------------------------


class Display(Protocol):
    def __enter__(self) -> Display: ...
    def __exit__(self, *exc: object) -> None: ...
    def show(self, record: dict[str, Any]) -> None: ...
    def note(self, text: str) -> None: ...


def _visible(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """The part of a record a change of which is worth a new line."""
    counts = tuple(record["counts"][name] for name in COUNT_NAMES)
    flags = (record["flags"]["paused"], record["flags"]["cancelled"])
    return record["status"], counts, tuple(record["current"]), flags, record["exit_code"]


class PlainDisplay:
    """One line per visible change: readable in logs, CI output and tests."""

    def __init__(self, ctx: Context, as_json: bool) -> None:
        self.ctx = ctx
        self.as_json = as_json
        self._last: object = None

    def __enter__(self) -> PlainDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def show(self, record: dict[str, Any]) -> None:
        visible = _visible(record) if self.as_json else format_line(record)
        if visible == self._last:
            return
        self._last = visible
        if self.as_json:
            self.ctx.emit(json.dumps(record))
        else:
            self.ctx.emit(time.strftime("%H:%M:%S ") + format_line(record))

    def note(self, text: str) -> None:
        self.ctx.say(f"taskctl: {text}")


class LiveDisplay:
    """A rich Live panel on a terminal: progress bar, counts, current tests."""

    def __init__(self, ctx: Context) -> None:
        from rich.console import Console
        from rich.live import Live

        self.record: dict[str, Any] | None = None
        self.notice = ""
        self.console = Console(file=ctx.out, force_terminal=True)
        self.live = Live(
            self,
            console=self.console,
            refresh_per_second=4,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> LiveDisplay:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def show(self, record: dict[str, Any]) -> None:
        self.record = record
        self.live.refresh()

    def note(self, text: str) -> None:
        self.notice = text
        self.live.refresh()

    def __rich__(self) -> Any:
        """Rendered on every refresh, so the elapsed time ticks without etcd traffic."""
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        record = self.record
        if record is None:
            return Text("waiting for the run ...")
        counts = record["counts"]
        done = counts["passed"] + counts["failed"] + counts["skipped"]
        total = counts["total"] or done + counts["remaining"]
        style = {"COMPLETED": "green", "FAILED": "red", "PAUSED": "yellow"}.get(
            record["status"] or "", "cyan" if not is_final(record) else "magenta"
        )
        head = Text.assemble((record["run_id"], "bold"), "  ", (record["status"] or "-", style))
        if record["started"]:
            end = record["ended"] if is_final(record) and record["ended"] else time.time()
            head.append(f"  {format_duration(end - record['started'])}")
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=max(total, 1), completed=done, width=50), f"{done}/{total}")
        lines: list[Any] = [
            head,
            bar,
            Text.assemble(
                (f"{counts['passed']} passed", "green"),
                ", ",
                (f"{counts['failed']} failed", "red" if counts["failed"] else ""),
                f", {counts['skipped']} skipped, {counts['remaining']} remaining",
            ),
        ]
        lines += [Text(note, style="yellow") for note in flag_notes(record)]
        if not is_final(record):
            lines += [Text(f"running {nodeid}", style="dim") for nodeid in record["current"]]
        if self.notice:
            lines.append(Text(self.notice, style="yellow"))
        return Group(*lines)


class RunView:
    """A run's run-level keys, mirrored locally by one etcd watch per range of them.

    The ranges are :meth:`StateStore.leaf_ranges`: ``[cancelled, paused\\0)``
    (flags, lease, meta) and ``status``. One range over all of them would also
    bring every test's result write here. Waiting wakes on changes of the
    first; ``status`` alone changes rarely (``PAUSED`` <-> ``RUNNING``), and is
    looked at in its local copy every :data:`STATUS_POLL` seconds.
    """

    def __init__(self, store: StateStore, run_id: str) -> None:
        self.keys = store.keys(run_id)
        self._joint = JointConnection()
        ranges = store.leaf_ranges(run_id)
        self._initial: list[RangeResult] = [store.gateway.range(*bounds) for bounds in ranges]
        self._views = [
            WatchedRange(store.gateway, start, end, on_connection_change=self._joint.callback(i))
            for i, (start, end) in enumerate(ranges)
        ]

    @property
    def found(self) -> bool:
        """Whether any run-level key existed when the view was made."""
        return any(result.kvs for result in self._initial)

    def start(self, on_connection_change: ConnectionCallback) -> None:
        """Start watching; ``on_connection_change`` hears when etcd is lost and back (once each)."""
        self._joint.on_change = on_connection_change
        for view, initial in zip(self._views, self._initial, strict=True):
            view.start(initial)

    def stop(self) -> None:
        for view in self._views:
            view.stop()

    def leaves(self) -> dict[str, bytes]:
        """The run-level keys that exist: name -> value, as :func:`run_record` takes them.

        The lease is in: its expiry is how a run whose process died shows up.
        """
        values: dict[str, bytes] = {}
        for view in self._views:
            values.update(view.snapshot())
        return {
            name: value
            for name in (*RUN_STATE_LEAVES, "lease")
            if (value := values.get(self.keys.flag(name))) is not None
        }

    def wait_until(self, predicate: Callable[[dict[str, bytes]], bool], timeout: float) -> bool:
        """Block until ``predicate(self.leaves())`` holds; ``False`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        first = self._views[0]
        while True:
            step = min(STATUS_POLL, max(0.0, deadline - time.monotonic()))
            if first.wait_until(lambda _values: predicate(self.leaves()), step):
                return True
            if time.monotonic() >= deadline:
                return False


def _final(leaves: Mapping[str, bytes]) -> bool:
    status = leaves.get("status")
    return status is not None and status.decode("utf-8", "replace").strip() in FINAL_STATUSES


def _ended(leaves: Mapping[str, bytes]) -> bool:
    """The final meta is in (it carries ``ended``)."""
    return (json_object(leaves.get("meta")) or {}).get("ended") is not None


def _changed_from(seen: Mapping[str, bytes]) -> Callable[[Mapping[str, bytes]], bool]:
    return lambda leaves: leaves != seen


def cmd_watch(ctx: Context) -> int:
    """Follow a run through a watched local view of its keys until its status is final."""
    run_id = ctx.args.run_id
    view = RunView(ctx.store, run_id)
    if not view.found and not ctx.store.run_exists(run_id):
        raise unknown_run(ctx, run_id)

    live = ctx.out.isatty() and not ctx.args.json
    display: Display = LiveDisplay(ctx) if live else PlainDisplay(ctx, ctx.args.json)

    def on_connection_change(connected: bool, error: BaseException | None) -> None:
        if connected:
            display.note("etcd is back")
        else:
            display.note(f"lost etcd ({error}); reconnecting, last known state shown")

    view.start(on_connection_change)
    interval = ctx.args.interval
    try:
        with display:
            while True:
                current = view.leaves()
                if _final(current):
                    view.wait_until(_ended, FINAL_META_GRACE)
                    display.show(run_record(run_id, view.leaves()))
                    return EXIT_OK
                record = run_record(run_id, current)
                if record["process_died"]:
                    # The lease's key and the status come in on separate watch streams: a
                    # run that ended revokes its lease right after its final status, which
                    # may arrive a moment after the lease's deletion.
                    if view.wait_until(_final, LIVENESS_CHECK):
                        continue
                    display.show(record)
                    raise CommandFailed(
                        f"run {run_id} is not running (its process died): pid {record['pid']} "
                        f"on {record['host']} stopped renewing its lease"
                    )
                display.show(record)
                if interval:
                    # Coalesce changes for `interval` s, but never hold back the end.
                    view.wait_until(_final, interval)
                while not view.wait_until(_changed_from(current), LIVENESS_CHECK):
                    # The meta names the run's process: host, pid (and start time).
                    owner = json_object(current.get("meta")) or {}
                    if local_process_dead(owner) and not view.wait_until(_final, LIVENESS_CHECK):
                        raise CommandFailed(
                            f"run {run_id} is not running (its process died): its pytest "
                            f"process (pid {record['pid']} on "
                            f"{record['host']}) is gone, but its status is still "
                            f"{record['status']}; it was probably killed"
                        )
    finally:
        view.stop()


def watch_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_id(parser)
    parser.add_argument(
        "--interval",
        type=non_negative_float,
        default=0.5,
        metavar="SECONDS",
        help="show at most one update per SECONDS (default 0.5; the end is shown at once); "
        "updates come from an etcd watch, not from polling",
    )
