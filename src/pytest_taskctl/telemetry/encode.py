"""One pass over finished spans gives both OTLP encodings: the JSON line and the protobuf.

``traces.jsonl`` wants OTLP/JSON (hex ids, 64-bit integers as strings), the
collector wants the protobuf ``ExportTraceServiceRequest``. The SDK's encoder
builds protobuf message objects field by field, and the JSON file exporter
builds them again: that work, done per span on a GIL shared with the tests,
was most of the plugin's per-test cost. Here each span is walked once, into
JSON text and into protobuf wire bytes directly.

The output is checked against ``opentelemetry-proto`` in the tests: the bytes
parse as an ``ExportTraceServiceRequest`` equal to the SDK's own encoding,
and the JSON line is what the SDK's OTLP/JSON file exporter writes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

#: Span flags: the context "has is_remote" bit, plus "is remote" for a remote parent/link.
HAS_IS_REMOTE = 0x100
IS_REMOTE = 0x200
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack
_UINT64 = 0xFFFFFFFFFFFFFFFF
#: A str as a JSON string literal (quotes and escapes), the C encoder json.dumps uses.
_json_string = json.encoder.encode_basestring_ascii


def _varint(value: int) -> bytes:
    value &= _UINT64  # int64 negatives: ten-byte two's complement, as protobuf says
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = tuple(bytes((n,)) for n in range(128))
#: Tags of length-delimited fields 1..15, precomputed: ``_field`` runs ~20 times a span.
_TAGS = (b"",) + tuple(bytes((field << 3 | 2,)) for field in range(1, 16))


def _field(field: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages)."""
    size = len(payload)
    return _TAGS[field] + (_SMALL[size] if size < 128 else _varint(size)) + payload


def _any_value(value: Any) -> tuple[str, bytes]:
    """An attribute value as OTLP ``AnyValue``: (JSON text, protobuf)."""
    if isinstance(value, str):
        return '{"stringValue":' + _json_string(value) + "}", _field(1, value.encode())
    if isinstance(value, bool):  # before int: bool is an int
        return (
            '{"boolValue":' + ("true" if value else "false") + "}",
            b"\x10" + (b"\x01" if value else b"\x00"),
        )
    if isinstance(value, int):
        return '{"intValue":"' + str(value) + '"}', b"\x18" + _varint(value)
    if isinstance(value, float):
        return '{"doubleValue":' + json.dumps(value) + "}", b"\x21" + _DOUBLE(value)
    if isinstance(value, Sequence):
        parts = [_any_value(item) for item in value]
        array = b"".join(_field(1, pb) for _, pb in parts)
        values = ",".join(js for js, _ in parts)
        return '{"arrayValue":{"values":[' + values + "]}}", _field(5, array)
    return _any_value(str(value))


#: Encoded ``KeyValue`` of recurring scalar attributes (run id, file path, fixture
#: scope...): most attributes of a run repeat. Cleared when it grows past the limit.
_KEY_VALUES: dict[tuple[str, type, object], tuple[str, bytes]] = {}
_KEY_VALUES_LIMIT = 20_000


def _key_value(key: str, value: Any) -> tuple[str, bytes]:
    cacheable = isinstance(value, (str, int, float))  # bool is an int; type in the key
    if cacheable:
        cached = _KEY_VALUES.get((key, type(value), value))
        if cached is not None:
            return cached
    js, pb = _any_value(value)
    encoded = (
        '{"key":' + _json_string(key) + ',"value":' + js + "}",
        _field(1, key.encode()) + _field(2, pb),
    )
    if cacheable:
        if len(_KEY_VALUES) >= _KEY_VALUES_LIMIT:
            _KEY_VALUES.clear()
        _KEY_VALUES[(key, type(value), value)] = encoded
    return encoded


def _attributes(attributes: Mapping[str, Any] | None, field: int) -> tuple[str, bytes]:
    """``KeyValue`` list: (JSON array text, or "" when empty; the repeated protobuf field)."""
    if not attributes:
        return "", b""
    out_json = []
    out_pb = bytearray()
    for key, value in attributes.items():
        js, pb = _key_value(key, value)
        out_json.append(js)
        out_pb += _field(field, pb)
    return "[" + ",".join(out_json) + "]", bytes(out_pb)


def encode_span(span: ReadableSpan, protobuf: bool = True) -> tuple[str, bytes]:
    """One span as OTLP ``Span``: (JSON object text, protobuf bytes or ``b""``).

    ``span`` is an SDK ``ReadableSpan`` or a :class:`~.spans.LightSpan`: only
    the attributes both have are read. The JSON is written as text: ids,
    numbers and cached attributes need no escaping, and building dicts for
    :func:`json.dumps` cost as much as the protobuf. Without an OTLP
    destination (``protobuf=False``) the protobuf half, ~40% of the work, is skipped.
    """
    context = span.get_span_context()
    assert context is not None
    trace_id = context.trace_id.to_bytes(16, "big")
    span_id = context.span_id.to_bytes(8, "big")
    parent = span.parent
    parent_id = parent.span_id.to_bytes(8, "big") if parent is not None else None
    flags = HAS_IS_REMOTE | (IS_REMOTE if parent is not None and parent.is_remote else 0)
    state = context.trace_state.to_header() if context.trace_state else ""
    start = span.start_time or 0
    end = span.end_time or 0
    kind = span.kind.value + 1  # the API's INTERNAL is 0, OTLP's SPAN_KIND_INTERNAL is 1
    name = span.name
    attributes_json, attributes_pb = _attributes(span.attributes, 9)
    # Each encoded once, for both halves.
    event_attributes = [_attributes(event.attributes, 3) for event in span.events]
    link_attributes = [_attributes(link.attributes, 4) for link in span.links]
    status = span.status
    code = status.status_code.value  # UNSET 0, OK 1, ERROR 2: the same numbers in OTLP

    js = ['{"traceId":"', trace_id.hex(), '","spanId":"', span_id.hex(), '"']
    if state:
        js += (',"traceState":', _json_string(state))
    if parent_id is not None:
        js += (',"parentSpanId":"', parent_id.hex(), '"')
    js.append(
        f',"flags":{flags},"name":{_json_string(name)},"kind":{kind},'
        f'"startTimeUnixNano":"{start}","endTimeUnixNano":"{end}"'
    )
    if attributes_json:
        js += (',"attributes":', attributes_json)
    if span.events:
        events = []
        for event, (event_js_attributes, _) in zip(span.events, event_attributes, strict=True):
            event_js = f'{{"timeUnixNano":"{event.timestamp}","name":{_json_string(event.name)}'
            if event_js_attributes:
                event_js += ',"attributes":' + event_js_attributes
            events.append(event_js + "}")
        js += (',"events":[', ",".join(events), "]")
    if span.links:
        links = []
        for link, (link_attributes_js, _) in zip(span.links, link_attributes, strict=True):
            linked = link.context
            link_flags = HAS_IS_REMOTE | (IS_REMOTE if linked.is_remote else 0)
            link_js = f'{{"traceId":"{linked.trace_id:032x}","spanId":"{linked.span_id:016x}"'
            if link_attributes_js:
                link_js += ',"attributes":' + link_attributes_js
            links.append(f'{link_js},"flags":{link_flags}}}')
        js += (',"links":[', ",".join(links), "]")
    status_js = []
    if status.description:
        status_js.append('"message":' + _json_string(status.description))
    if code:
        status_js.append(f'"code":{code}')
    js += (',"status":{', ",".join(status_js), "}}")
    if not protobuf:
        return "".join(js), b""

    pb = bytearray(_field(1, trace_id) + _field(2, span_id))
    if state:
        pb += _field(3, state.encode())
    if parent_id is not None:
        pb += _field(4, parent_id)
    pb += _field(5, name.encode()) + b"\x30" + _varint(kind)
    pb += b"\x39" + _FIXED64(start) + b"\x41" + _FIXED64(end)
    pb += attributes_pb
    for event, (_, event_pb) in zip(span.events, event_attributes, strict=True):
        body = b"\x09" + _FIXED64(event.timestamp) + _field(2, event.name.encode())
        pb += _field(11, body + event_pb)
    for link, (_, link_pb) in zip(span.links, link_attributes, strict=True):
        linked = link.context
        link_flags = HAS_IS_REMOTE | (IS_REMOTE if linked.is_remote else 0)
        body = (
            _field(1, linked.trace_id.to_bytes(16, "big"))
            + _field(2, linked.span_id.to_bytes(8, "big"))
            + link_pb
        )
        pb += _field(13, body + b"\x35" + _FIXED32(link_flags))
    status_pb = _field(2, status.description.encode()) if status.description else b""
    if code:
        status_pb += b"\x18" + _varint(code)
    pb += _field(15, status_pb) + b"\x85\x01" + _FIXED32(flags)
    return "".join(js), bytes(pb)


def encode_request(spans: Sequence[ReadableSpan], protobuf: bool = True) -> tuple[str, bytes]:
    """An ``ExportTraceServiceRequest`` for ``spans``: (OTLP/JSON line, protobuf bytes).

    Spans are grouped by resource, then by instrumentation scope, as the SDK
    does. ``protobuf=False``: the JSON line only (the bytes are ``b""``).
    """
    groups: dict[int, tuple[Any, dict[Any, tuple[Any, list[tuple[str, bytes]]]]]] = {}
    for span in spans:
        resource_key = id(span.resource)  # one provider: one resource object
        if resource_key not in groups:
            groups[resource_key] = (span.resource, {})
        scopes = groups[resource_key][1]
        scope = span.instrumentation_scope
        # By value: the plugin's light spans and its SDK spans share a scope name.
        scope_key = None if scope is None else (scope.name, scope.version, scope.schema_url)
        if scope_key not in scopes:
            scopes[scope_key] = (scope, [])
        scopes[scope_key][1].append(encode_span(span, protobuf))
    resource_spans_json = []
    request_pb = bytearray()
    for resource, scopes in groups.values():
        resource_attributes, resource_attributes_pb = _attributes(resource.attributes, 1)
        scope_spans_json = []
        resource_spans_pb = bytearray(_field(1, resource_attributes_pb))
        for scope, encoded in scopes.values():
            scope_js = []
            scope_pb = b""
            if scope is not None:
                scope_js.append('"name":' + _json_string(scope.name))
                scope_pb += _field(1, scope.name.encode())
                if scope.version:
                    scope_js.append('"version":' + _json_string(scope.version))
                    scope_pb += _field(2, scope.version.encode())
            entry = '{"scope":{' + ",".join(scope_js) + '},"spans":['
            entry += ",".join(js for js, _ in encoded) + "]"
            body = _field(1, scope_pb) + b"".join(_field(2, pb) for _, pb in encoded)
            if scope is not None and scope.schema_url:
                entry += ',"schemaUrl":' + _json_string(scope.schema_url)
                body += _field(3, scope.schema_url.encode())
            scope_spans_json.append(entry + "}")
            resource_spans_pb += _field(2, body)
        resource_entry = (
            '{"resource":{"attributes":'
            + (resource_attributes or "[]")
            + '},"scopeSpans":['
            + ",".join(scope_spans_json)
            + "]"
        )
        if resource.schema_url:
            resource_entry += ',"schemaUrl":' + _json_string(resource.schema_url)
            resource_spans_pb += _field(3, resource.schema_url.encode())
        resource_spans_json.append(resource_entry + "}")
        request_pb += _field(1, bytes(resource_spans_pb))
    line = '{"resourceSpans":[' + ",".join(resource_spans_json) + "]}\n"
    return line, bytes(request_pb) if protobuf else b""
