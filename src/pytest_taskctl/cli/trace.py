"""``taskctl trace RUN_ID [NODEID]``: a run's traces as a terminal waterfall.

For a person with no Jaeger at hand: reads ``logs/<run_id>/traces.jsonl``
(no etcd, no collector) and draws, with rich, either the run's tests on one
time line or one test's span tree with its ``log`` and ``exception`` events.
Spans are drawn from their parent links alone, so phases, fixtures and HTTP
calls appear however deep they nest. ``--json`` prints the same trees as
nested objects (shape in docs/cli.md).
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..telemetry.traces_file import (
    SpanEvent,
    SpanRecord,
    TracesFile,
    read_traces,
    sessions,
    span_json,
    tests_of,
)
from .context import EXIT_OK, CommandFailed, Context, run_id_argument

#: Event attributes that hold a log record's text, most specific first.
MESSAGE_KEYS = ("log.message", "message", "body", "log.body", "event.body")
LEVEL_KEYS = ("log.severity", "log.level", "severity", "level", "levelname")
HTTP_STATUS_KEYS = ("http.response.status_code", "http.status_code")


def trace_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", type=run_id_argument, help="the run's id")
    parser.add_argument(
        "nodeid", metavar="NODEID", nargs="?", help="a test's node id: draw its span tree"
    )
    parser.add_argument(
        "--log-dir",
        metavar="DIR",
        type=Path,
        default=Path("logs"),
        help="where the run's <run_id>/traces.jsonl is (default: logs, as the plugin's)",
    )


def cmd_trace(ctx: Context) -> int:
    args = ctx.args
    traces = load(ctx, args.log_dir, args.run_id)
    if args.nodeid is None:
        return draw_run(ctx, traces)
    return draw_test(ctx, traces, args.nodeid)


def load(ctx: Context, log_dir: Path, run_id: str) -> TracesFile:
    path = log_dir / run_id / "traces.jsonl"
    if not path.is_file():
        known = sorted(p.parent.name for p in log_dir.glob("*/traces.jsonl"))
        hint = did_you_mean(run_id, known)
        raise CommandFailed(f"no traces for run {run_id}: {path} does not exist{hint}")
    traces = read_traces(path)
    if traces.bad_lines:
        ctx.say(f"taskctl: skipped {traces.bad_lines} unreadable line(s) of {path}")
    if not traces.spans:
        raise CommandFailed(f"{path} holds no spans yet")
    return traces


def did_you_mean(wanted: str, known: Iterable[str]) -> str:
    """``"; did you mean: a, b"`` from substring and close matches, or ``""``.

    Node ids share long prefixes (``tests/test_api.py::test_``), so every
    name of a file is "close": only the names about as close as the best
    one are offered.
    """
    known = list(dict.fromkeys(known))

    def ratio(name: str) -> float:
        # A node id's own name counts too: "test_fial" is close to "t.py::test_fail".
        tail = name.rsplit("::", 1)[-1]
        return max(difflib.SequenceMatcher(None, wanted, text).ratio() for text in (name, tail))

    ratios = {name: ratio(name) for name in known}
    best = max(ratios.values(), default=0.0)
    close = [name for name in known if wanted in name]
    close += sorted(
        (name for name, ratio in ratios.items() if ratio >= max(0.6, best - 0.05)),
        key=lambda name: -ratios[name],
    )
    close = list(dict.fromkeys(close))[:5]
    return f"; did you mean: {', '.join(close)}" if close else ""


# -- the two views --------------------------------------------------------------------


def draw_run(ctx: Context, traces: TracesFile) -> int:
    attempts = sessions(traces.spans)
    session = attempts[-1] if attempts else None
    tests = tests_of(session, traces.spans)
    if len(attempts) > 1:
        ctx.say(
            f"taskctl: {len(attempts)} attempts of run {ctx.args.run_id} in traces.jsonl; "
            "showing the last"
        )
    origin = session.start_ns if session else min(t.start_ns for t in tests)
    if ctx.args.json:
        if session is not None:
            document = span_json(session, origin, children=tests)
        else:
            document = {"name": "run", "start": 0.0, "status": "UNSET"}
            document["children"] = [span_json(test, origin) for test in tests]
        ctx.emit_json({"run_id": ctx.args.run_id, **document})
        return EXIT_OK
    failed = sum(1 for test in tests if test.failed)
    end = max([t.end_ns for t in tests] + ([session.end_ns] if session else []))
    rows: list[Row] = []
    if session is not None:
        rows.append(span_row(session, "", origin))
    for index, test in enumerate(tests):
        last = index == len(tests) - 1
        guide = ("└─ " if last else "├─ ") if session is not None else ""
        rows.append(span_row(test, guide, origin))
        if test.failed and test.status_message:
            more = ("   " if last else "│  ") if session is not None else ""
            rows.append(note_row(more + "   ", first_line(test.status_message)))
    title = (
        f"run {ctx.args.run_id}: {len(tests)} tests, {failed} failed, "
        f"{format_seconds((end - origin) / 1e9)}"
        + (f" (session trace {session.trace_id})" if session else "")
    )
    render(ctx, title, rows, end - origin)
    return EXIT_OK


def draw_test(ctx: Context, traces: TracesFile, nodeid: str) -> int:
    runs = sorted((s for s in traces.spans if s.nodeid == nodeid), key=lambda s: s.start_ns)
    if not runs:
        names = sorted({s.nodeid for s in traces.spans if s.nodeid})
        hint = did_you_mean(nodeid, names)
        raise CommandFailed(f"no test {nodeid!r} in run {ctx.args.run_id}{hint}")
    test = runs[-1]
    if len(runs) > 1:
        ctx.say(f"taskctl: {nodeid} ran {len(runs)} times in this run; showing the last")
    if ctx.args.json:
        ctx.emit_json({"run_id": ctx.args.run_id, **span_json(test, test.start_ns)})
        return EXIT_OK
    rows = list(tree_rows(test, test.start_ns))
    outcome = test.attributes.get("pytest.outcome") or test.status
    title = (
        f"{nodeid}: {outcome} in {format_seconds(test.duration_ns / 1e9)} (trace {test.trace_id})"
    )
    render(ctx, title, rows, test.duration_ns)
    return EXIT_OK


# -- rows ---------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the waterfall: a span (with a bar), an event (a mark) or a note.

    ``guide`` is the tree drawing before the text; ``keep_end``: when the
    text is too long, keep its end (a node id's test name) rather than its start.
    """

    guide: str
    text: str
    style: str
    start_ns: int | None = None
    duration_ns: int | None = None
    keep_end: bool = False

    def fit(self, width: int) -> str:
        """The label padded or cut to ``width`` columns; the guide always stays."""
        label = self.guide + self.text
        if len(label) <= width:
            return label.ljust(width)
        room = width - len(self.guide) - 1
        if room <= 0:
            return label[:width]
        if self.keep_end:
            return f"{self.guide}…{self.text[-room:]}"
        return f"{self.guide}{self.text[:room]}…"


def span_row(span: SpanRecord, guide: str, origin: int) -> Row:
    text = ("✗ " if span.failed else "") + span.name
    status = next((span.attributes[k] for k in HTTP_STATUS_KEYS if k in span.attributes), None)
    if status is not None:
        text += f" [{status}]"
    style = "red" if span.failed else ("yellow" if _skipped(span) else "")
    return Row(guide, text, style, span.start_ns - origin, span.duration_ns, keep_end=True)


def event_row(event: SpanEvent, guide: str, origin: int) -> Row:
    return Row(guide, event_text(event), _event_style(event), event.time_ns - origin)


def note_row(guide: str, text: str) -> Row:
    return Row(guide, text, "red")


def _skipped(span: SpanRecord) -> bool:
    return span.attributes.get("test.case.result.status") == "skip"


def _event_style(event: SpanEvent) -> str:
    if event.name == "exception":
        return "red"
    level = str(next((event.attributes[k] for k in LEVEL_KEYS if k in event.attributes), ""))
    return "yellow" if level.upper() in ("WARNING", "WARN", "ERROR", "CRITICAL") else "dim"


def event_text(event: SpanEvent) -> str:
    """``✗ exception Type: message`` or ``• log LEVEL message`` (other events: their attributes)."""
    attrs = event.attributes
    if event.name == "exception":
        kind = attrs.get("exception.type")
        what = first_line(str(attrs.get("exception.message", "")))
        return f"✗ exception {kind}: {what}" if kind else f"✗ exception {what}"
    message = next((attrs[k] for k in MESSAGE_KEYS if k in attrs), None)
    level = next((attrs[k] for k in LEVEL_KEYS if k in attrs), None)
    if message is None:
        text = ", ".join(f"{k}={v}" for k, v in attrs.items())
    else:
        text = f"{level} {message}" if level else str(message)

    return f"• {event.name} {first_line(text)}".rstrip()


def tree_rows(span: SpanRecord, origin: int, guide: str = "", more: str = "") -> Iterable[Row]:
    """``span``, then its events and children by time, with tree guides (├─ └─ │)."""
    yield span_row(span, guide, origin)
    items: list[tuple[int, Any]] = [(e.time_ns, e) for e in span.events]
    items += [(child.start_ns, child) for child in span.children]
    items.sort(key=lambda pair: pair[0])
    for index, (_, item) in enumerate(items):
        last = index == len(items) - 1
        child_guide = more + ("└─ " if last else "├─ ")
        child_more = more + ("   " if last else "│  ")
        if isinstance(item, SpanEvent):
            yield event_row(item, child_guide, origin)
        else:
            yield from tree_rows(item, origin, child_guide, child_more)


def first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


# -- drawing ------------------------------------------------------------------------


def format_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.3f} s"


def bar(start_ns: int, duration_ns: int | None, total_ns: int, width: int) -> str:
    """The span's place on the time line: ``█`` from start to end, ``◆`` for an event."""
    scale = width / total_ns if total_ns > 0 else 0.0
    left = min(width - 1, max(0, int(start_ns * scale)))
    if duration_ns is None:
        return " " * left + "◆"
    length = min(width - left, max(1, round(duration_ns * scale)))
    return " " * left + "█" * length


def render(ctx: Context, title: str, rows: list[Row], total_ns: int) -> None:
    """Title, then one line per row: label, start offset, duration, time line.

    Laid out by hand rather than with a rich table so a failure's note can
    use the whole line while span labels stay in their column.
    """
    from rich.console import Console
    from rich.text import Text

    console = Console(file=ctx.out, highlight=False, soft_wrap=True)
    width = console.width
    bar_width = max(10, min(60, width // 3))
    widest = max((len(r.guide + r.text) for r in rows if r.start_ns is not None), default=20)
    label_width = max(20, min(widest, width - bar_width - 2 - 10 - 2 - 9 - 2))
    console.print(title, markup=False)
    header = f"{'span':<{label_width}}  {'start':>10}  {'duration':>9}  time line"
    console.print(Text(header, style="bold"))
    for row in rows:
        if row.start_ns is None:  # a note: the whole line, cut rather than wrapped
            console.print(Text(row.fit(width).rstrip(), style=row.style))
            continue
        start = "+" + format_seconds(row.start_ns / 1e9)
        duration = format_seconds(row.duration_ns / 1e9) if row.duration_ns is not None else ""
        line = Text(row.fit(label_width), style=row.style)
        line.append(f"  {start:>10}  {duration:>9}  ")
        line.append(bar(row.start_ns, row.duration_ns, total_ns, bar_width), row.style or "cyan")
        console.print(line)
