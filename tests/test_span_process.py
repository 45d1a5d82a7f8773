"""The span process: spans leave pytest's process, and nothing is lost when that process fails."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from pytest_taskctl.telemetry.pipeline import SpanPipeline

from .conftest import INNER_INI, wait_for
from .test_telemetry import read_spans

SPAN_PROCESS = "pytest_taskctl.telemetry.span_process"


def span_processes_of(pid: int) -> list[int]:
    """Live span processes started by ``pid`` (from /proc: what a user's ``ps`` shows)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parent, state = int(fields["PPid"]), fields["State"].split()[0]
        if SPAN_PROCESS in cmdline and parent == pid and state != "Z":
            found.append(int(entry.name))
    return found


def test_a_run_encodes_its_spans_in_a_process_that_ends_with_it(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_alive="""
        import os, time
        from tests_helper import span_processes_of

        def test_a_span_process_runs_beside_the_tests():
            # Started with the first spans that leave while the run goes on (0.5 s).
            deadline = time.monotonic() + 5
            while not span_processes_of(os.getpid()):
                assert time.monotonic() < deadline, "no span process"
                time.sleep(0.02)
            assert len(span_processes_of(os.getpid())) == 1
        """,
        tests_helper=f"from {__name__} import span_processes_of\n",
    )
    ptr.runpytest("--run-id", "spanproc-1").assert_outcomes(passed=1)
    assert span_processes_of(os.getpid()) == []
    names = [s["name"] for s in read_spans(ptr.path / "logs" / "spanproc-1" / "traces.jsonl")]
    assert "test_alive.py::test_a_span_process_runs_beside_the_tests" in names
    assert "pytest session" in names


KILLED_HELPER_SUITE = """
import os, signal, time
from pathlib import Path
from tests_helper import span_processes_of

def test_before():
    pass

def test_kills_the_span_process():
    while not span_processes_of(os.getpid()):  # started with the first spans that leave
        time.sleep(0.02)
    (helper,) = span_processes_of(os.getpid())
    os.kill(helper, signal.SIGKILL)
    while span_processes_of(os.getpid()):
        time.sleep(0.01)

def test_after():
    pass
"""


def test_a_killed_span_process_does_not_lose_later_spans(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_killed=KILLED_HELPER_SUITE, tests_helper=f"from {__name__} import span_processes_of\n"
    )
    result = ptr.runpytest("--run-id", "spanproc-2")
    result.assert_outcomes(passed=3)
    names = {s["name"] for s in read_spans(ptr.path / "logs" / "spanproc-2" / "traces.jsonl")}
    # What the dead process had not written is lost (at most half a second of spans);
    # everything after it is written by pytest's own process.
    assert {"test_killed.py::test_after", "pytest session"} <= names
    log = (ptr.path / "logs" / "spanproc-2" / "pytest.log").read_text()
    assert "span process ended early; encoding spans in pytest's process" in log


def test_a_value_marshal_cannot_carry_is_written_as_its_text(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_values="""
        from opentelemetry import trace

        class Build:
            def __str__(self):
                return "build 42"

        def test_sets_an_object():
            trace.get_current_span().set_attribute("app.build", Build())
        """
    )
    ptr.runpytest("--run-id", "spanproc-3").assert_outcomes(passed=1)
    (call,) = [
        s
        for s in read_spans(ptr.path / "logs" / "spanproc-3" / "traces.jsonl")
        if s["name"] == "call"  # the span current in the test
    ]
    attributes = {a["key"]: a["value"] for a in call["attributes"]}
    assert attributes["app.build"] == {"stringValue": "build 42"}


SUBCLASS_VALUES_SUITE = """
import enum, logging, time
from http import HTTPStatus
from opentelemetry import trace

class Shade(str, enum.Enum):
    DARK = "dark"

def test_sets_enum_values():
    span = trace.get_current_span()
    span.set_attribute("http.response.status_code", HTTPStatus.OK)
    span.set_attribute("app.shade", Shade.DARK)
    logging.getLogger("app").warning("shaded", extra={"app.shade": Shade.DARK})
    time.sleep(0.7)  # the spans thread hands a batch on while the run goes on

def test_after():
    pass
"""


def test_enum_and_other_subclass_values_are_sent_as_their_base_type(
    ptr: pytest.Pytester,
) -> None:
    """marshal refuses IntEnum/StrEnum values; the SDK takes them: sent as int and str."""
    ptr.makepyfile(test_values=SUBCLASS_VALUES_SUITE)
    ptr.runpytest("-W", "error", "--run-id", "spanproc-4").assert_outcomes(passed=2)
    (call,) = [
        s
        for s in read_spans(ptr.path / "logs" / "spanproc-4" / "traces.jsonl")
        if s["name"] == "call" and any(a["key"] == "app.shade" for a in s.get("attributes", []))
    ]
    attributes = {a["key"]: a["value"] for a in call["attributes"]}
    assert attributes["http.response.status_code"] == {"intValue": "200"}
    assert attributes["app.shade"] == {"stringValue": "dark"}


def test_without_a_span_process_spans_are_written_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    pipeline = SpanPipeline(tmp_path / "traces.jsonl", None)
    provider = TracerProvider()
    provider.add_span_processor(pipeline)
    for index in range(3):
        provider.get_tracer("t").start_span(f"span {index}").end()
    pipeline.force_flush()  # spans leave while the run goes on: a span process is asked for
    pipeline.shutdown()
    assert pipeline.close_sender(1.0)
    assert [s["name"] for s in read_spans(tmp_path / "traces.jsonl")] == [
        "span 0",
        "span 1",
        "span 2",
    ]
    assert "span process not started" in caplog.text


def test_a_run_shorter_than_half_a_second_starts_no_span_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_taskctl.telemetry import pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "FILE_SCHEDULE", 60.0)  # no drain before the end
    pipeline = SpanPipeline(tmp_path / "traces.jsonl", None)
    assert (tmp_path / "traces.jsonl").exists(), "there from the start, for tail -f"
    provider = TracerProvider()
    provider.add_span_processor(pipeline)
    provider.get_tracer("t").start_span("quick").end()
    assert span_processes_of(os.getpid()) == []
    pipeline.shutdown()
    assert pipeline.close_sender(1.0)
    assert [s["name"] for s in read_spans(tmp_path / "traces.jsonl")] == ["quick"]


def test_the_span_process_ignores_ctrl_c_in_the_terminal(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches its whole process group: not the span process's."""
    pipeline = SpanPipeline(tmp_path / "traces.jsonl", None)
    provider = TracerProvider()
    provider.add_span_processor(pipeline)
    provider.get_tracer("t").start_span("first").end()
    pipeline.force_flush()  # the first spans that leave start the span process
    try:
        (helper,) = span_processes_of(os.getpid())
        assert os.getpgid(helper) != os.getpgid(0)
        assert os.getsid(helper) == helper
    finally:
        pipeline.shutdown()
        pipeline.close_sender(1.0)
    assert span_processes_of(os.getpid()) == []


def _gone(pid: int) -> bool:
    try:
        state = next(
            line.split()[1]
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("State:")
        )
    except (OSError, StopIteration):
        return True
    return state == "Z"


def test_a_sigkilled_run_keeps_its_spans_and_leaves_no_span_process(
    tmp_path: Path, taskctl_env: dict[str, str]
) -> None:
    (tmp_path / "pytest.ini").write_text(INNER_INI)
    (tmp_path / "test_killed.py").write_text(
        "import time\n\ndef test_done():\n    pass\n\ndef test_hangs():\n    time.sleep(60)\n"
    )
    traces = tmp_path / "logs" / "spanproc-kill" / "traces.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--run-id", "spanproc-kill"],
        cwd=tmp_path,
        env=taskctl_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # The contract: a finished test's span is in the file within 1 s of its end.
        wait_for(lambda: traces.exists() and "test_killed.py::test_done" in traces.read_text())
        (helper,) = span_processes_of(process.pid)
        process.kill()
        process.wait()
        wait_for(lambda: _gone(helper), timeout=5.0)  # its input closed: it wrote and left
    finally:
        process.kill()
        process.wait()
    names = [s["name"] for s in read_spans(traces)]  # every line still parses
    assert "test_killed.py::test_done" in names


def test_a_wedged_span_process_never_hangs_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A span process that stops reading (SIGSTOP here) is killed; pytest's process takes over."""
    from pytest_taskctl.telemetry import span_process

    monkeypatch.setattr(span_process, "WRITE_DEADLINE", 0.5)
    pipeline = SpanPipeline(tmp_path / "traces.jsonl", None)
    provider = TracerProvider()
    provider.add_span_processor(pipeline)
    tracer = provider.get_tracer("t")
    tracer.start_span("first").end()
    pipeline.force_flush()  # the first spans that leave start the span process
    (helper,) = span_processes_of(os.getpid())
    os.kill(helper, signal.SIGSTOP)
    try:
        started = time.monotonic()
        for batch in range(10):  # far more than the pipe holds (~4 MB of records)
            for index in range(1000):
                attributes = {"pad": f"{index:0400}"}
                tracer.start_span(f"span {batch}.{index}", attributes=attributes).end()
            pipeline.force_flush(1000)
        pipeline.shutdown()
        assert pipeline.close_sender(1.0)
        assert time.monotonic() - started < 15
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(helper, signal.SIGCONT)  # it was killed: nothing to wake
    wait_for(lambda: span_processes_of(os.getpid()) == [])
    names = {s["name"] for s in read_spans(tmp_path / "traces.jsonl")}
    assert "span 9.999" in names, "what came after the wedge is written in-process"
