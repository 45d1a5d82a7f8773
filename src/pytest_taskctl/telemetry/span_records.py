"""Finished spans as plain tuples: what crosses the pipe to the span process.

The encoder (:mod:`.encode`) runs in a process of its own
(:mod:`.span_process`), so a finished span must become data that
``marshal`` can carry: ints, strings, floats, bools, tuples, lists and
dicts. A :class:`SpanRecord` is that data with names; on the wire it is the
plain tuple (``marshal`` refuses tuple subclasses), rebuilt on the other side
with ``SpanRecord._make``.

Resources are sent once, not with every span: a record names its resource
by a small integer that :class:`Recorder` hands out. A test's phases and
fixture spans travel inside the test's record as :class:`ChildRecord` s
(:meth:`.spans.LightSpan.carry`): their trace, scope and resource are the test's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from opentelemetry.trace import SpanKind, StatusCode

#: Attribute value types marshal carries as they are (exact types: subclasses are not).
_EXACT = frozenset({str, int, float, bool, type(None)})
#: The OTLP numbers of the API's enums (a dict lookup is cheaper than ``.value``).
_KIND = {kind: kind.value for kind in SpanKind}
_STATUS = {code: code.value for code in StatusCode}
#: No events, no links: one shared empty tuple (marshal and the encoder take either).
_EMPTY: tuple[()] = ()


class ChildRecord(NamedTuple):
    """A span carried in another's record: trace, scope and resource are that one's.

    The layout of the plain tuples in :attr:`SpanRecord.children` (the encoder reads
    them by position; nothing builds this class on the way)."""

    span_id: int
    parent_id: int
    name: str
    start: int
    end: int
    attributes: Mapping[str, Any]
    events: Sequence[tuple[str, Mapping[str, Any], int]]
    links: Sequence[tuple[int, int, bool, Mapping[str, Any]]]
    status_code: int
    status_message: str


class SpanRecord(NamedTuple):
    """Everything OTLP needs of one finished span."""

    trace_id: int
    span_id: int
    trace_state: str  # W3C tracestate header, "" when empty
    parent_id: int  # 0: a root span
    parent_remote: bool
    name: str
    kind: int  # the API's SpanKind value (INTERNAL is 0)
    start: int  # ns since the epoch
    end: int
    attributes: Mapping[str, Any]
    events: Sequence[tuple[str, Mapping[str, Any], int]]  # (name, attributes, time ns)
    links: Sequence[tuple[int, int, bool, Mapping[str, Any]]]  # (trace id, span id, remote, attrs)
    status_code: int  # UNSET 0, OK 1, ERROR 2: OTLP's numbers too
    status_message: str
    scope: tuple[str, str, str] | tuple[()]  # (name, version, schema url), () when none
    resource: int  # key into the resources sent beside the records
    children: Sequence[ChildRecord]  # spans carried in this one's record (a test's phases)


class ResourceRecord(NamedTuple):
    attributes: Mapping[str, Any]
    schema_url: str


def _plain(value: Any, maps: bool) -> Any:
    """``value`` as marshal carries it; subclasses (``IntEnum``, ``StrEnum``, numpy's
    float64) become their base type, which is also what OTLP encodes them as."""
    kind = type(value)
    if kind in _EXACT:
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v, maps) for v in value)
    if maps and isinstance(value, bytes):
        return bytes(value)
    if maps and isinstance(value, Mapping):
        return {str(k): _plain(v, maps) for k, v in value.items()}
    return str(value)


def plain_attributes(attributes: Mapping[str, Any] | None, maps: bool = False) -> dict[str, Any]:
    """Attributes that marshal can carry; anything else becomes its ``str``.

    The SDK already checked its spans' values; light spans and log records
    take what the suite's code sets. ``maps``: keep mappings and bytes (log
    record attributes may be any OTel ``AnyValue``; span attributes may not).
    """
    if not attributes:
        return {}
    return {str(key): _plain(value, maps) for key, value in attributes.items()}


class Recorder:
    """Turns finished spans (SDK or light) into records; one per span pipeline.

    Runs on the drain thread for every record (one a test, its phases and
    fixtures inside), so what repeats is looked up once: a scope's tuple, a
    resource's key, an enum's number.
    """

    def __init__(self) -> None:
        self._resource_keys: dict[int, int] = {}  # id(resource) -> key
        #: Resources not sent yet; the pipeline sends them with the next records.
        self.new_resources: dict[int, tuple[Any, ...]] = {}
        self._resources: list[Any] = []  # keep them alive: their id() is our key
        self._scopes: dict[Any, tuple[str, ...]] = {}  # scope (hashable by value) -> tuple

    def _resource_key(self, resource: Any) -> int:
        key = self._resource_keys.get(id(resource))
        if key is None:
            key = self._resource_keys[id(resource)] = len(self._resources)
            self._resources.append(resource)
            attributes = resource.attributes if resource is not None else {}
            schema_url = (resource.schema_url or "") if resource is not None else ""
            self.new_resources[key] = (plain_attributes(attributes), schema_url)
        return key

    def _scope(self, scope: Any) -> tuple[str, ...]:
        known = self._scopes.get(scope)
        if known is None:
            plain = (scope.name, scope.version or "", scope.schema_url or "") if scope else ()
            known = self._scopes[scope] = plain
        return known

    def record(self, span: Any) -> tuple[Any, ...]:
        """A plain tuple in :class:`SpanRecord` order; ``span`` is only read."""
        context = span.get_span_context()
        parent = span.parent
        status = span.status
        children = getattr(span, "children", _EMPTY)  # light spans only
        if children:
            children = [_child(child) for child in children[span.children_sent :]]
        return (
            context.trace_id,
            context.span_id,
            context.trace_state.to_header() if context.trace_state else "",
            parent.span_id if parent is not None else 0,
            bool(parent is not None and parent.is_remote),
            span.name,
            _KIND[span.kind],
            span.start_time or 0,
            span.end_time or 0,
            _attributes(span.attributes),
            _events(span.events),
            _links(span.links),
            _STATUS[status.status_code],
            status.description or "",
            self._scope(span.instrumentation_scope),
            self._resource_key(span.resource),
            children or _EMPTY,
        )

    def record_running(self, span: Any) -> list[tuple[Any, ...]]:
        """Records of the spans a running test's span carries so far (its ended phases
        and fixtures), each on its own; the test's own record will not repeat them.

        Drain thread only: the test's thread only appends to ``children``, so what is
        below their length now is complete.
        """
        children = getattr(span, "children", _EMPTY)
        ended, sent = len(children), getattr(span, "children_sent", 0)
        if ended <= sent:
            return []
        span.children_sent = ended
        context = span.get_span_context()
        state = context.trace_state.to_header() if context.trace_state else ""
        scope = self._scope(span.instrumentation_scope)
        resource = self._resource_key(span.resource)
        records = []
        for child in map(_child, children[sent:ended]):
            span_id, parent_id, name, start, end, attributes, events, links, code, message = child
            records.append(
                (context.trace_id, span_id, state, parent_id, False, name, _KIND[SpanKind.INTERNAL],
                 start, end, attributes, events, links, code, message, scope, resource, _EMPTY)
            )  # fmt: skip
        return records


def _attributes(attributes: Any) -> Any:
    return attributes if type(attributes) is dict else plain_attributes(attributes)


def _events(events: Any) -> Any:
    if not events:
        return _EMPTY
    return [(e.name, plain_attributes(e.attributes), e.timestamp) for e in events]


def _links(links: Any) -> Any:
    if not links:
        return _EMPTY
    return [
        (
            link.context.trace_id,
            link.context.span_id,
            link.context.is_remote,
            plain_attributes(link.attributes),
        )
        for link in links
    ]


def _child(child: tuple[Any, ...]) -> tuple[Any, ...]:
    """A :class:`ChildRecord` tuple of a span as :meth:`.spans.LightSpan.carry` kept it."""
    span_id, parent_id, name, start, end, attributes, events, links, status = child
    return (
        span_id,
        parent_id,
        name,
        start,
        end,
        _attributes(attributes),
        _events(events),
        _links(links),
        _STATUS[status.status_code],
        status.description or "",
    )


def records_of(spans: Any) -> tuple[list[SpanRecord], dict[int, ResourceRecord]]:
    """Records and resources of ``spans`` in one go (tests, tools)."""
    recorder = Recorder()
    records = [SpanRecord._make(recorder.record(span)) for span in spans]
    return records, {k: ResourceRecord(*v) for k, v in recorder.new_resources.items()}
