"""The span pipeline's own encoder against opentelemetry-proto and the SDK's exporters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.json.file import FileSpanExporter
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, TraceState

from pytest_taskctl.telemetry.encode import encode_request
from pytest_taskctl.telemetry.pipeline import SpanPipeline
from pytest_taskctl.telemetry.span_records import records_of

from .conftest import wait_for
from .test_telemetry import read_spans


def _varied_spans() -> list[ReadableSpan]:
    """Spans with every kind of value the plugin and instrumentations produce."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "pytest", "n": 3}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("pytest_taskctl")
    other = provider.get_tracer("opentelemetry.instrumentation.requests", "0.66b1", "https://s/1")
    remote = trace.SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=trace.TraceFlags(1),
        trace_state=TraceState([("vendor", "value")]),
    )
    session = tracer.start_span("pytest session", context=trace.set_span_in_context(
        trace.NonRecordingSpan(remote)))  # fmt: skip
    session.end()
    attributes: dict[str, Any] = {
        "test.case.name": "tests/test_x.py::test_é[1]",
        "code.line.number": 12,
        "negative": -5,
        "big": 2**62,
        "ratio": 0.25,
        "flag": True,
        "off": False,
        "tags": ["a", "b"],
        "numbers": [1, 2, 3],
        "long": "x" * 300,
        "escaped": 'say "hi"\n\\path\t\u2603 \x00',
    }
    with tracer.start_as_current_span(
        "tests/test_x.py::test_é[1]",
        attributes=attributes,
        links=[Link(session.get_span_context(), {"pytest.link": "session"})],
    ) as test:
        with tracer.start_as_current_span("call") as call:
            call.add_event("log", {"log.message": 'hello "you"\n', "code.line.number": 7})
            call.add_event("empty")
            with other.start_as_current_span("GET", kind=SpanKind.CLIENT):
                pass
            call.set_status(Status(StatusCode.ERROR, "AssertionError: assert 1 == 2"))
        test.set_status(Status(StatusCode.OK))
    return list(exporter.get_finished_spans())


def test_protobuf_bytes_equal_the_sdk_encoding() -> None:
    spans = _varied_spans()
    _, payload = encode_request(*records_of(spans))
    assert ExportTraceServiceRequest.FromString(payload) == encode_spans(spans)


def test_json_line_equals_the_otlp_json_file_exporter(tmp_path: Path) -> None:
    spans = _varied_spans()
    reference = tmp_path / "reference.jsonl"
    exporter = FileSpanExporter(reference)
    exporter.export(spans)
    exporter.shutdown()
    line, _ = encode_request(*records_of(spans))
    assert line.endswith("\n") and "\n" not in line[:-1], "one request per line"
    assert json.loads(line) == json.loads(reference.read_text())
    parsed = json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert parsed["traceId"] == "0af7651916cd43dd8448eb211c80319c", "ids in hex"
    assert parsed["flags"] == 0x300, "a remote parent is flagged as such"
    # Without an OTLP destination only the JSON is made: the same line.
    assert encode_request(*records_of(spans), protobuf=False) == (line, b"")


def test_many_spans_are_split_into_requests_of_bounded_size(tmp_path: Path) -> None:
    provider = TracerProvider()
    pipeline = SpanPipeline(tmp_path / "traces.jsonl", None)
    provider.add_span_processor(pipeline)
    tracer = provider.get_tracer("t")
    for index in range(1200):
        tracer.start_span(f"span {index}").end()
    pipeline.shutdown()
    lines = (tmp_path / "traces.jsonl").read_text().splitlines()
    assert len(lines) >= 3
    assert len(read_spans(tmp_path / "traces.jsonl")) == 1200


def test_finished_spans_reach_the_file_within_a_second(tmp_path: Path) -> None:
    provider = TracerProvider()
    pipeline = SpanPipeline(tmp_path / "traces.jsonl", None)
    provider.add_span_processor(pipeline)
    try:
        provider.get_tracer("t").start_span("finished").end()
        path = tmp_path / "traces.jsonl"
        wait_for(lambda: path.exists() and path.read_text().strip(), timeout=1.0, interval=0.01)
        assert [span["name"] for span in read_spans(path)] == ["finished"]
    finally:
        pipeline.shutdown()


LIVE_FILE_SUITE = """
import json, time
from pathlib import Path

def test_first():
    pass

def test_second_sees_the_first_in_the_file():
    path = Path("logs/live-1/traces.jsonl")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if path.exists() and "test_live.py::test_first" in path.read_text():
            return
        time.sleep(0.01)
    raise AssertionError("test_first's span not in traces.jsonl after 1 s")
"""


def test_spans_of_finished_tests_are_in_the_file_while_the_run_goes_on(
    ptr: pytest.Pytester,
) -> None:
    ptr.makepyfile(test_live=LIVE_FILE_SUITE)
    ptr.runpytest("--run-id", "live-1").assert_outcomes(passed=2)


RUNNING_TEST_SUITE = """
import json, time
from pathlib import Path
import pytest

@pytest.fixture
def database():
    return "ready"

def test_long(database):
    path = Path("logs/live-2/traces.jsonl")
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        names = [s["name"] for line in path.read_text().splitlines()
                 for r in json.loads(line)["resourceSpans"]
                 for ss in r["scopeSpans"] for s in ss["spans"]]
        if "setup" in names and "fixture database" in names:
            return
        time.sleep(0.02)
    raise AssertionError(f"setup and fixture spans of the running test not in the file: {names}")
"""


def test_a_running_tests_setup_and_fixtures_are_in_the_file_before_it_ends(
    ptr: pytest.Pytester,
) -> None:
    """A long test (or one held by a live pause) shows where it got to: its ended phases
    and fixtures leave at the pipeline's next hand-over, not with the test's own span."""
    ptr.makepyfile(test_running=RUNNING_TEST_SUITE)
    ptr.runpytest("--run-id", "live-2").assert_outcomes(passed=1)
    spans = read_spans(ptr.path / "logs" / "live-2" / "traces.jsonl")
    names = [span["name"] for span in spans]
    for name in ("setup", "fixture database", "call", "teardown"):
        assert names.count(name) == 1, f"{name} once, not again with the test's record"
    test_span = next(span for span in spans if span["name"].endswith("test_long"))
    setup = next(span for span in spans if span["name"] == "setup")
    assert setup["parentSpanId"] == test_span["spanId"]


def test_requests_hold_at_most_max_batch_spans_whatever_records_carry(tmp_path: Path) -> None:
    from pytest_taskctl.telemetry.span_writer import MAX_BATCH
    from pytest_taskctl.telemetry.spans import LightTracer
    from pytest_taskctl.telemetry.traceid import ID_GENERATOR

    pipeline = SpanPipeline(tmp_path / "traces.jsonl", None)
    light = LightTracer(TracerProvider(), ID_GENERATOR, pipeline.on_end)
    for _ in range(300):  # 300 records of four spans each
        test = light.start_root("t", {})
        phase = light.start_phases(test)
        assert phase is not None
        for following in ("call", "teardown", None):
            phase.end()
            if following:
                phase.next_phase(following)
        test.end()
    pipeline.shutdown()
    lines = (tmp_path / "traces.jsonl").read_text().splitlines()
    sizes = [
        sum(len(ss["spans"]) for r in json.loads(line)["resourceSpans"] for ss in r["scopeSpans"])
        for line in lines
    ]
    assert sum(sizes) == 1200 and max(sizes) <= MAX_BATCH and len(sizes) >= 3


def test_light_spans_encode_as_the_sdk_would(tmp_path: Path) -> None:
    """The plugin's own spans (not SDK spans) give the same protobuf and JSON shape."""
    from pytest_taskctl.telemetry.spans import LightTracer
    from pytest_taskctl.telemetry.traceid import ID_GENERATOR

    finished: list[Any] = []
    provider = TracerProvider(resource=Resource({"service.name": "pytest"}))
    light = LightTracer(provider, ID_GENERATOR, finished.append)
    root = light.start_root("tests/test_x.py::test_a", {"test.case.name": "a", "n": 2})
    call = light.start_child("call", root.get_span_context())
    call.add_event("log", {"log.message": "hello"}, timestamp=123)
    call.record_exception(ValueError("bad value"))
    call.set_status(StatusCode.ERROR, "ValueError: bad value")
    call.end()
    root.end()
    line, payload = encode_request(*records_of(finished))
    request = ExportTraceServiceRequest.FromString(payload)
    pb_spans = request.resource_spans[0].scope_spans[0].spans
    js_spans = json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert [s.name for s in pb_spans] == [s["name"] for s in js_spans] == ["call", root.name]
    pb_call, pb_root = pb_spans
    assert pb_call.parent_span_id == pb_root.span_id and pb_call.trace_id == pb_root.trace_id
    assert js_spans[0]["parentSpanId"] == pb_root.span_id.hex()
    assert pb_call.status.code == 2 and pb_call.status.message == "ValueError: bad value"
    assert [e.name for e in pb_call.events] == ["log", "exception"]
    assert pb_call.events[0].time_unix_nano == 123
    exception = {a.key: a.value.string_value for a in pb_call.events[1].attributes}
    assert exception["exception.type"] == "ValueError"
    assert exception["exception.message"] == "bad value"
    assert {a.key: a.value.int_value for a in pb_root.attributes if a.key == "n"} == {"n": 2}
    assert pb_root.kind == 1 and pb_root.flags == HAS_IS_REMOTE_FLAG
    assert request.resource_spans[0].scope_spans[0].scope.name == "pytest_taskctl"


HAS_IS_REMOTE_FLAG = 0x100


def test_phases_and_fixtures_in_their_tests_record_encode_as_the_sdk_encodes_the_spans(
    tmp_path: Path,
) -> None:
    """A test's phases and fixture spans leave in its record (one record, not five) and
    come out of the encoder as the SDK's encoders write the same spans: protobuf and
    OTLP/JSON."""
    from opentelemetry.sdk.trace import Event

    from pytest_taskctl.telemetry.spans import LightTracer
    from pytest_taskctl.telemetry.traceid import ID_GENERATOR

    finished: list[Any] = []
    provider = TracerProvider(resource=Resource({"service.name": "pytest"}))
    light = LightTracer(provider, ID_GENERATOR, finished.append)
    test = light.start_root("tests/test_x.py::test_a", {"test.case.name": "a"})
    phase = light.start_phases(test)
    assert phase is not None
    seen = []  # what each phase looked like to the suite: ids, attributes, events, status
    phase.set_attribute("db", "fresh")
    phase.add_event("log", {"log.message": "connecting"}, timestamp=phase.start_time + 1)
    fixture = light.start_carried("fixture db", phase, {"pytest.fixture.scope": "module"})
    fixture.end()
    seen.append(fixture.get_span_context())
    seen.append(phase.get_span_context())
    phase.end(end_time=phase.start_time + 10)
    phase.next_phase("call")
    phase.record_exception(ValueError("bad value"))
    phase.set_status(StatusCode.ERROR, "ValueError: bad value")
    seen.append(phase.get_span_context())
    phase.end()
    phase.next_phase("teardown")
    seen.append(phase.get_span_context())
    phase.end()
    assert not phase.is_recording()
    test.end()
    assert finished == [test], "one record leaves pytest's process: the others travel in it"
    assert len({context.span_id for context in seen}) == 4
    assert all(context.trace_id == test.get_span_context().trace_id for context in seen)

    def readable(name: str, context: Any, start: int, end: int, **kw: Any) -> ReadableSpan:
        return ReadableSpan(
            name=name,
            context=context,
            parent=seen[1] if name.startswith("fixture") else test.get_span_context(),
            start_time=start,
            end_time=end,
            resource=provider.resource,
            instrumentation_scope=light.scope,
            **kw,
        )

    kept = test.children
    assert [child[2] for child in kept] == ["fixture db", "setup", "call", "teardown"]
    sdk_spans = [
        readable(
            name,
            context,
            start,
            end,
            attributes=attributes,
            events=[Event(e.name, e.attributes, e.timestamp) for e in events],
            status=status,
        )
        for context, (_, _, name, start, end, attributes, events, _, status) in zip(
            seen, kept, strict=True
        )
    ]
    sdk_spans.append(
        ReadableSpan(
            name=test.name,
            context=test.get_span_context(),
            parent=None,
            start_time=test.start_time,
            end_time=test.end_time,
            attributes=test.attributes,
            resource=provider.resource,
            instrumentation_scope=light.scope,
        )
    )
    line, payload = encode_request(*records_of(finished))
    assert ExportTraceServiceRequest.FromString(payload) == encode_spans(sdk_spans)
    reference = tmp_path / "reference.jsonl"
    exporter = FileSpanExporter(reference)
    exporter.export(sdk_spans)
    exporter.shutdown()
    assert json.loads(line) == json.loads(reference.read_text())


def test_a_phase_span_is_a_whole_span_and_each_phase_starts_clean() -> None:
    from pytest_taskctl.telemetry.spans import LightTracer
    from pytest_taskctl.telemetry.traceid import ID_GENERATOR

    light = LightTracer(TracerProvider(), ID_GENERATOR, [].append)
    test = light.start_root("t", {})
    phase = light.start_phases(test)
    assert phase is not None
    # Its own __init__ skips LightSpan's: every field a light span has, it has too
    # (its context is made lazily under another name).
    assert set(vars(test)) - {"_context"} <= set(vars(phase))
    phase.add_link(test.get_span_context())
    phase.set_attribute("db", "fresh")
    phase.end()
    phase.add_event("too late")  # after its end: ignored, as the SDK does
    phase.set_attribute("also", "late")
    phase.next_phase("call")
    assert (phase.links, phase.attributes, phase.events) == ((), {}, ())
    phase.end()
    test.end()
    test.set_attribute("late", 1)
    (_, _, _, _, _, setup_attributes, setup_events, setup_links, _), call = test.children
    assert setup_attributes == {"db": "fresh"} and setup_events == () and len(setup_links) == 1
    assert call[7] == (), "a link of setup is not on call"
    assert "late" not in test.attributes


def test_links_without_attributes_are_encoded_once_and_stay_their_own() -> None:
    """Every test's span links to its session's: that link is encoded once a run, and two
    runs' sessions still give each span its own link."""
    from pytest_taskctl.telemetry.spans import LightTracer
    from pytest_taskctl.telemetry.traceid import ID_GENERATOR

    finished: list[Any] = []
    light = LightTracer(TracerProvider(), ID_GENERATOR, finished.append)
    sessions = [light.start_root(f"session {n}", {}) for n in range(2)]
    for session in sessions * 2:
        light.start_root("test", {}, (Link(session.get_span_context()),)).end()
    for _ in range(2):  # the second time from the cache
        line, payload = encode_request(*records_of(finished))
        pb_spans = ExportTraceServiceRequest.FromString(payload).resource_spans[0]
        js_spans = json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"]
        linked = [span.links[0].span_id for span in pb_spans.scope_spans[0].spans]
        expected = [s.get_span_context().span_id.to_bytes(8, "big") for s in sessions * 2]
        assert linked == expected
        assert [s["links"][0]["spanId"] for s in js_spans] == [x.hex() for x in expected]


def test_sampler_off_records_no_light_spans() -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    from pytest_taskctl.telemetry.spans import LightTracer
    from pytest_taskctl.telemetry.traceid import ID_GENERATOR

    finished: list[Any] = []
    light = LightTracer(TracerProvider(sampler=ALWAYS_OFF), ID_GENERATOR, finished.append)
    root = light.start_root("t", {})
    child = light.start_child("call", root.get_span_context())
    root.end()
    child.end()
    assert not root.is_recording() and not child.is_recording() and finished == []
    assert root.get_span_context().is_valid, "ids exist all the same (get_traceid)"
