"""One pass over finished spans gives both OTLP encodings: the JSON line and the protobuf.

``traces.jsonl`` wants OTLP/JSON (hex ids, 64-bit integers as strings), the
collector wants the protobuf ``ExportTraceServiceRequest``. The SDK's encoder
builds protobuf message objects field by field, and the JSON file exporter
builds them again: that work, done per span on a GIL shared with the tests,
was most of the plugin's per-test cost. Here each span is walked once, into
JSON text and into protobuf wire bytes directly.

It reads :class:`~.span_records.SpanRecord` tuples, not span objects: it runs
in the span process (:mod:`.span_process`), which gets spans as records.

The output is checked against ``opentelemetry-proto`` in the tests: the bytes
parse as an ``ExportTraceServiceRequest`` equal to the SDK's own encoding,
and the JSON line is what the SDK's OTLP/JSON file exporter writes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from .span_records import ResourceRecord, SpanRecord

#: Span flags: the context "has is_remote" bit, plus "is remote" for a remote parent/link.
HAS_IS_REMOTE = 0x100
IS_REMOTE = 0x200
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack
_UINT64 = 0xFFFFFFFFFFFFFFFF
#: Tag and value of kind (6, varint < 128), start (7) and end (8, fixed64) in one pack.
_KIND_START_END = struct.Struct("<BBBQBQ").pack
#: Span flags (16, fixed32): only these two values occur.
_FLAGS = {
    flags: b"\x85\x01" + _FIXED32(flags) for flags in (HAS_IS_REMOTE, HAS_IS_REMOTE | IS_REMOTE)
}
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


def _field(field: int, payload: bytes | bytearray) -> bytes:
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


#: Span names as (JSON string literal, protobuf field 5): phase and fixture names recur.
_NAMES: dict[str, tuple[str, bytes]] = {}
_NAMES_LIMIT = 4096


def _name(name: str) -> tuple[str, bytes]:
    encoded = _NAMES.get(name)
    if encoded is None:
        encoded = (_json_string(name), _field(5, name.encode()))
        if len(_NAMES) >= _NAMES_LIMIT:  # test names do not recur: start again
            _NAMES.clear()
        _NAMES[name] = encoded
    return encoded


#: Encoded ``KeyValue`` fields of recurring scalar attributes (run id, file path,
#: fixture scope...): most attributes of a run repeat. Cleared when it grows past the
#: limit. Not floats (``-0.0 == 0.0``, NaN is not equal to itself) nor long strings
#: (stack traces, log messages: they do not recur, and would hold memory).
_KEY_VALUES: dict[tuple[str, type, object, int], tuple[str, bytes]] = {}
_KEY_VALUES_LIMIT = 20_000


def _key_value(key: str, value: Any, field: int) -> tuple[str, bytes]:
    """One attribute: (JSON ``KeyValue`` object, protobuf ``KeyValue`` as ``field``)."""
    # bool is an int: the type is in the key, so True, 1 and "1" stay apart.
    cacheable = isinstance(value, int) or (isinstance(value, str) and len(value) <= 256)
    if cacheable:
        cached = _KEY_VALUES.get((key, type(value), value, field))
        if cached is not None:
            return cached
    js, pb = _any_value(value)
    encoded = (
        '{"key":' + _json_string(key) + ',"value":' + js + "}",
        _field(field, _field(1, key.encode()) + _field(2, pb)),
    )
    if cacheable:
        if len(_KEY_VALUES) >= _KEY_VALUES_LIMIT:
            _KEY_VALUES.clear()
        _KEY_VALUES[(key, type(value), value, field)] = encoded
    return encoded


def _attributes(attributes: Mapping[str, Any] | None, field: int) -> tuple[str, bytes]:
    """``KeyValue`` list: (JSON array text, or "" when empty; the repeated protobuf field)."""
    if not attributes:
        return "", b""
    out_json = []
    out_pb = []
    for key, value in attributes.items():
        js, pb = _key_value(key, value, field)
        out_json.append(js)
        out_pb.append(pb)
    return "[" + ",".join(out_json) + "]", b"".join(out_pb)


#: Encoded links without attributes: every test's span links to its session's.
_LINKS: dict[tuple[tuple[int, int, bool], ...], tuple[str, bytes]] = {}
_LINKS_LIMIT = 256


def _links(links: Sequence[tuple[int, int, bool, Mapping[str, Any]]]) -> tuple[str, bytes]:
    """A span's links: (``,"links":[...]`` JSON text, its repeated protobuf field 13)."""
    plain: tuple[tuple[int, int, bool], ...] = ()
    for link_trace, link_span, remote, attributes in links:
        if attributes:
            break
        plain += ((link_trace, link_span, remote),)
    key = plain if len(plain) == len(links) else None
    cached = _LINKS.get(key) if key is not None else None
    if cached is not None:
        return cached
    parts = []
    pb = b""
    for link_trace, link_span, remote, attributes in links:
        attributes_js, attributes_pb = _attributes(attributes, 4)
        flags = HAS_IS_REMOTE | (IS_REMOTE if remote else 0)
        link_js = f'{{"traceId":"{link_trace:032x}","spanId":"{link_span:016x}"'
        if attributes_js:
            link_js += ',"attributes":' + attributes_js
        parts.append(f'{link_js},"flags":{flags}}}')
        body = (
            _field(1, link_trace.to_bytes(16, "big"))
            + _field(2, link_span.to_bytes(8, "big"))
            + attributes_pb
        )
        pb += _field(13, body + b"\x35" + _FIXED32(flags))
    encoded = ',"links":[' + ",".join(parts) + "]", pb
    if key is not None and len(_LINKS) < _LINKS_LIMIT:
        _LINKS[key] = encoded
    return encoded


def encode_span(span: SpanRecord, protobuf: bool = True) -> list[tuple[str, bytes]]:
    """A record's spans as OTLP ``Span`` s: (JSON object text, protobuf ``Span`` as field
    2 of its ``ScopeSpans``, or ``b""``) each -- the children carried in the record (a
    test's phases and fixtures) first, as they ended.

    The JSON is written as text: ids, numbers and cached attributes need no
    escaping, and building dicts for :func:`json.dumps` cost as much as the
    protobuf. Without an OTLP destination (``protobuf=False``) the protobuf
    half, ~40% of the work, is skipped.
    """
    trace_id = span.trace_id.to_bytes(16, "big")
    trace = (b"\x0a\x10" + trace_id + b"\x12\x08", trace_id.hex(), span.trace_state)
    out = []
    for child in span.children:  # (span id, parent id, name, start, end, attributes, ...)
        parent = child[1].to_bytes(8, "big") if child[1] else None
        out.append(_encode(trace, child[0], parent, False, child[2], 0, *child[3:], protobuf))
    parent_id = span.parent_id.to_bytes(8, "big") if span.parent_id else None
    out.append(
        _encode(
            trace,
            span.span_id,
            parent_id,
            span.parent_remote,
            span.name,
            span.kind,
            span.start,
            span.end,
            span.attributes,
            span.events,
            span.links,
            span.status_code,
            span.status_message,
            protobuf,
        )
    )
    return out


def _encode(
    trace: tuple[bytes, str, str],
    span_id_value: int,
    parent_id: bytes | None,
    parent_remote: bool,
    name: str,
    api_kind: int,
    start: int,
    end: int,
    attributes: Mapping[str, Any],
    events: Sequence[tuple[str, Mapping[str, Any], int]],
    links: Sequence[tuple[int, int, bool, Mapping[str, Any]]],
    code: int,
    message: str,
    protobuf: bool,
) -> tuple[str, bytes]:
    """One span; ``trace``: the protobuf fields of its trace id up to its span id's value
    (tags and length included), its trace id in hex, and its trace state."""
    trace_pb, trace_hex, state = trace
    span_id = span_id_value.to_bytes(8, "big")
    flags = HAS_IS_REMOTE | (IS_REMOTE if parent_remote else 0)
    kind = api_kind + 1  # the API's INTERNAL is 0, OTLP's SPAN_KIND_INTERNAL is 1
    name_json, name_pb = _name(name)
    attributes_json, attributes_pb = _attributes(attributes, 9) if attributes else ("", b"")
    # Each encoded once, for both halves.
    event_attributes = [_attributes(a, 3) for _, a, _ in events] if events else ()
    links_json, links_pb = _links(links) if links else ("", b"")

    js = f'{{"traceId":"{trace_hex}","spanId":"{span_id.hex()}"'
    if state:
        js += ',"traceState":' + _json_string(state)
    if parent_id is not None:
        js += f',"parentSpanId":"{parent_id.hex()}"'
    js += (
        f',"flags":{flags},"name":{name_json},"kind":{kind},'
        f'"startTimeUnixNano":"{start}","endTimeUnixNano":"{end}"'
    )
    if attributes_json:
        js += ',"attributes":' + attributes_json
    if events:
        parts = []
        for (event_name, _, timestamp), (event_js_attributes, _) in zip(
            events, event_attributes, strict=True
        ):
            event_js = f'{{"timeUnixNano":"{timestamp}","name":{_json_string(event_name)}'
            if event_js_attributes:
                event_js += ',"attributes":' + event_js_attributes
            parts.append(event_js + "}")
        js += ',"events":[' + ",".join(parts) + "]"
    js += links_json
    if message:
        code_js = f',"code":{code}' if code else ""
        js += f',"status":{{"message":{_json_string(message)}{code_js}}}}}'
    elif code:
        js += f',"status":{{"code":{code}}}}}'
    else:
        js += ',"status":{}}'
    if not protobuf:
        return js, b""

    # Fixed-size fields written with their tags: trace id (1), span id (2), parent (4).
    pb = bytearray(trace_pb)
    pb += span_id
    if state:
        pb += _field(3, state.encode())
    if parent_id is not None:
        pb += b"\x22\x08"
        pb += parent_id
    pb += name_pb
    pb += _KIND_START_END(0x30, kind, 0x39, start, 0x41, end)  # kind < 128: one byte
    pb += attributes_pb
    for (event_name, _, timestamp), (_, event_pb) in zip(events, event_attributes, strict=True):
        body = b"\x09" + _FIXED64(timestamp) + _field(2, event_name.encode())
        pb += _field(11, body + event_pb)
    pb += links_pb
    if message or code:
        status_pb = _field(2, message.encode()) if message else b""
        if code:
            status_pb += b"\x18" + _SMALL[code]  # 1 or 2
        pb += _field(15, status_pb)
    else:
        pb += b"\x7a\x00"  # an empty status, as the SDK writes it
    pb += _FLAGS[flags]
    return js, _field(2, pb)  # as a field of its ScopeSpans


def encode_request(
    spans: Sequence[SpanRecord],
    resources: Mapping[int, ResourceRecord],
    protobuf: bool = True,
) -> tuple[str, bytes]:
    """An ``ExportTraceServiceRequest`` for ``spans``: (OTLP/JSON line, protobuf bytes).

    Spans are grouped by resource, then by instrumentation scope, as the SDK
    does. ``protobuf=False``: the JSON line only (the bytes are ``b""``).
    """
    groups: dict[int, dict[tuple[str, ...], list[tuple[str, bytes]]]] = {}
    for span in spans:
        scopes = groups.get(span.resource)
        if scopes is None:
            scopes = groups[span.resource] = {}
        encoded = scopes.get(span.scope)
        if encoded is None:
            encoded = scopes[span.scope] = []
        encoded.extend(encode_span(span, protobuf))
    resource_spans_json = []
    request_pb = bytearray()
    for resource_key, scopes in groups.items():
        resource = resources.get(resource_key) or ResourceRecord({}, "")
        resource_attributes, resource_attributes_pb = _attributes(resource.attributes, 1)
        scope_spans_json = []
        resource_spans_pb = bytearray(_field(1, resource_attributes_pb))
        for scope, encoded in scopes.items():
            scope_js = []
            scope_pb = b""
            if scope:
                scope_name, version, _ = scope
                scope_js.append('"name":' + _json_string(scope_name))
                scope_pb += _field(1, scope_name.encode())
                if version:
                    scope_js.append('"version":' + _json_string(version))
                    scope_pb += _field(2, version.encode())
            entry = '{"scope":{' + ",".join(scope_js) + '},"spans":['
            entry += ",".join([js for js, _ in encoded]) + "]"
            body = _field(1, scope_pb) + b"".join([pb for _, pb in encoded])
            if scope and scope[2]:
                entry += ',"schemaUrl":' + _json_string(scope[2])
                body += _field(3, scope[2].encode())
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
