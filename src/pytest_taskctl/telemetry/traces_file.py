"""Reading a run's ``traces.jsonl`` back into span trees, with no collector and no etcd.

The file holds one OTLP/JSON ``ExportTraceServiceRequest`` per line (ids in
hex). Trees are built from ``parentSpanId`` alone, so spans of any kind and
depth (phases, fixtures, HTTP calls, whatever a later version adds) come out
right without this module knowing their names. Only the standard library is
used: ``taskctl trace`` must work where nothing but the files is at hand.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SESSION_SPAN = "pytest session"
#: The attribute every test span has: the test's node id.
TEST_NAME_ATTRIBUTE = "test.case.name"
#: OTLP status codes; the JSON mapping allows the number or the enum's name.
STATUS_NAMES = {0: "UNSET", 1: "OK", 2: "ERROR"}
KIND_NAMES = {
    0: "UNSPECIFIED",
    1: "INTERNAL",
    2: "SERVER",
    3: "CLIENT",
    4: "PRODUCER",
    5: "CONSUMER",
}


@dataclass
class SpanEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass
class SpanRecord:
    """One span as read from the file; ``children`` is filled by :func:`link_children`."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    start_ns: int
    end_ns: int
    status: str
    status_message: str
    attributes: dict[str, Any]
    events: list[SpanEvent]
    links: list[tuple[str, str]]
    children: list[SpanRecord] = field(default_factory=list)

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    @property
    def nodeid(self) -> str | None:
        value = self.attributes.get(TEST_NAME_ATTRIBUTE)
        return value if isinstance(value, str) else None

    @property
    def failed(self) -> bool:
        return self.status == "ERROR"


@dataclass
class TracesFile:
    spans: list[SpanRecord]
    #: Lines that were not OTLP/JSON (a run killed mid-write leaves half a line).
    bad_lines: int = 0


def attribute_value(value: Mapping[str, Any]) -> Any:
    """An OTLP/JSON ``AnyValue`` as a plain Python value (64-bit ints come as strings)."""
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [attribute_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return attributes_of(value["kvlistValue"].get("values", []))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def attributes_of(pairs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {pair["key"]: attribute_value(pair.get("value", {})) for pair in pairs}


def _status(status: Mapping[str, Any]) -> tuple[str, str]:
    code = status.get("code", 0)
    if isinstance(code, str):
        name = code.removeprefix("STATUS_CODE_")
    else:
        name = STATUS_NAMES.get(int(code), "UNSET")
    return name, str(status.get("message", ""))


def _kind(kind: Any) -> str:
    if isinstance(kind, str):
        return kind.removeprefix("SPAN_KIND_")
    return KIND_NAMES.get(int(kind or 0), "UNSPECIFIED")


def span_from_json(span: Mapping[str, Any]) -> SpanRecord:
    status, message = _status(span.get("status") or {})
    return SpanRecord(
        trace_id=span["traceId"],
        span_id=span["spanId"],
        parent_span_id=span.get("parentSpanId") or "",
        name=span.get("name", ""),
        kind=_kind(span.get("kind", 0)),
        start_ns=int(span.get("startTimeUnixNano", 0)),
        end_ns=int(span.get("endTimeUnixNano", 0)),
        status=status,
        status_message=message,
        attributes=attributes_of(span.get("attributes", [])),
        events=[
            SpanEvent(
                name=event.get("name", ""),
                time_ns=int(event.get("timeUnixNano", 0)),
                attributes=attributes_of(event.get("attributes", [])),
            )
            for event in span.get("events", [])
        ],
        links=[(link["traceId"], link["spanId"]) for link in span.get("links", [])],
    )


def read_traces(path: Path) -> TracesFile:
    """Every span in ``path``; unreadable lines are counted, not fatal."""
    spans: list[SpanRecord] = []
    bad = 0
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
                for resource_spans in request.get("resourceSpans", []):
                    for scope_spans in resource_spans.get("scopeSpans", []):
                        spans.extend(span_from_json(s) for s in scope_spans.get("spans", []))
            except (ValueError, KeyError, TypeError, AttributeError):
                bad += 1
    link_children(spans)
    return TracesFile(spans, bad)


def link_children(spans: list[SpanRecord]) -> list[SpanRecord]:
    """Attach every span to its parent (same trace, ``parentSpanId``); return the roots.

    A span whose parent is not in the file (a parent context from CI's
    ``TRACEPARENT``, or a span still open when the run was killed) is a root.
    Children are ordered by start time.
    """
    by_id = {(span.trace_id, span.span_id): span for span in spans}
    roots = []
    for span in spans:
        span.children = []
    for span in spans:
        parent = by_id.get((span.trace_id, span.parent_span_id)) if span.parent_span_id else None
        if parent is None or parent is span:
            roots.append(span)
        else:
            parent.children.append(span)
    for span in spans:
        span.children.sort(key=lambda child: child.start_ns)
    return sorted(roots, key=lambda root: root.start_ns)


def sessions(spans: Iterable[SpanRecord]) -> list[SpanRecord]:
    """The run's session spans, oldest first: one per attempt (``--resume`` appends)."""
    return sorted((s for s in spans if s.name == SESSION_SPAN), key=lambda s: s.start_ns)


def tests_of(session: SpanRecord | None, spans: Iterable[SpanRecord]) -> list[SpanRecord]:
    """The test spans of one session (linked to it, or its children), by start time.

    Without a session (a file cut short before the session span was written)
    every test span in the file counts.
    """
    tests = [span for span in spans if span.nodeid is not None]
    if session is not None:
        key = (session.trace_id, session.span_id)
        tests = [
            span
            for span in tests
            if key in span.links
            or (span.trace_id == session.trace_id and span.parent_span_id == session.span_id)
        ]
    return sorted(tests, key=lambda span: span.start_ns)


def walk(span: SpanRecord, depth: int = 0) -> Iterable[tuple[int, SpanRecord]]:
    """``span`` and its descendants, depth first, each with its depth."""
    yield depth, span
    for child in span.children:
        yield from walk(child, depth + 1)


def span_json(
    span: SpanRecord, origin_ns: int, children: Iterable[SpanRecord] | None = None
) -> dict[str, Any]:
    """A span as ``taskctl trace --json`` prints it; times in seconds from ``origin_ns``."""
    return {
        "name": span.name,
        "nodeid": span.nodeid,
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "kind": span.kind,
        "start": round((span.start_ns - origin_ns) / 1e9, 6),
        "duration": round(span.duration_ns / 1e9, 6),
        "status": span.status,
        "status_message": span.status_message,
        "attributes": span.attributes,
        "events": [
            {
                "name": event.name,
                "start": round((event.time_ns - origin_ns) / 1e9, 6),
                "attributes": event.attributes,
            }
            for event in span.events
        ],
        "children": [
            span_json(child, origin_ns)
            for child in (span.children if children is None else children)
        ],
    }
