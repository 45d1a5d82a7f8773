"""pytest-xdist as one run: one session span, PAUSED once every worker waits, cancel everywhere.

Real ``pytest -n 2`` subprocesses against the real etcd; gated tests
(tests/suites.py) keep known tests in flight while the outer test acts.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from pytest_taskctl.etcd.store import StateStore

from .conftest import Etcdctl, results_of, wait_for
from .test_telemetry import attributes, read_spans


def status_of(etcdctl: Etcdctl, prefix: str, run_id: str) -> str | None:
    return etcdctl.get(f"{prefix}/runs/{run_id}/status")


#: With ``-n 2``: the controller and both workers watch the run's flags, and each
#: logs when its view takes a flag in.
WATCHING_PROCESSES = 3

XDIST_SUITE = """
import logging, pytest
from pytest_taskctl import get_traceid

@pytest.mark.parametrize("n", range(6))
def test_a(n):
    logging.getLogger("app").warning("test %s on trace %s", n, get_traceid())
    assert n != 3
"""


@pytest.mark.parametrize("mode", ["test", "session"])
def test_one_session_span_that_every_workers_test_links_to(
    ptr: pytest.Pytester, etcdctl: Etcdctl, prefix: str, mode: str
) -> None:
    ptr.makepyfile(test_suite=XDIST_SUITE)
    result = ptr.runpytest_subprocess(
        "-n", "2", "--run-id", "xs-1", f"--taskctl-trace-mode={mode}", "--taskctl-log-level=INFO"
    )
    result.assert_outcomes(passed=5, failed=1)
    spans = read_spans(ptr.path / "logs" / "xs-1" / "traces.jsonl")
    (session,) = [span for span in spans if span["name"] == "pytest session"]
    # The tests' root spans (phase and fixture spans are their children, on the same worker).
    tests = [span for span in spans if span["name"].startswith("test_suite.py::")]
    assert sorted(span["name"] for span in tests) == [
        f"test_suite.py::test_a[{n}]" for n in range(6)
    ]
    workers = {span["resource"]["service.instance.id"] for span in tests}
    assert len(workers) == 2, "both workers ran tests (and wrote spans)"
    assert session["resource"]["service.instance.id"] not in workers, "the controller's"
    for span in tests:
        if mode == "test":
            assert [(link["traceId"], link["spanId"]) for link in span["links"]] == [
                (session["traceId"], session["spanId"])
            ]
            assert span["traceId"] != session["traceId"]
        else:
            assert (span["traceId"], span["parentSpanId"]) == (
                session["traceId"],
                session["spanId"],
            )
    assert attributes(session)["pytest.tests.failed"] == "1"
    meta = json.loads(etcdctl.get(f"{prefix}/runs/xs-1/meta") or "{}")
    assert meta["trace_id"] == session["traceId"]
    if mode == "test":
        # Each test's log line carries its own trace id, also on the workers.
        log_text = (ptr.path / "logs" / "xs-1" / "pytest.log").read_text()
        by_name = {span["name"]: span["traceId"] for span in tests}
        for n in range(6):
            line = next(x for x in log_text.splitlines() if f"test {n} on trace" in x)
            assert line.count(by_name[f"test_suite.py::test_a[{n}]"]) == 2, line


def test_trace_links_and_junit_come_through_the_controller(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(test_suite=XDIST_SUITE)
    result = ptr.runpytest_subprocess(
        "-n", "2", "--run-id", "xs-2", "--junitxml", "report.xml",
        "--taskctl-trace-url", "http://viewer/trace/{trace_id}",
    )  # fmt: skip
    result.assert_outcomes(passed=5, failed=1)
    spans = read_spans(ptr.path / "logs" / "xs-2" / "traces.jsonl")
    trace_ids = {span["name"]: span["traceId"] for span in spans}
    failed = trace_ids["test_suite.py::test_a[3]"]
    result.stdout.fnmatch_lines(
        [f"FAILED test_suite.py::test_a[[]3[]]  http://viewer/trace/{failed}"]
    )
    cases = ET.parse(ptr.path / "report.xml").getroot().iter("testcase")
    seen = {}
    for case in cases:
        props = {p.attrib["name"]: p.attrib["value"] for p in case.iter("property")}
        seen[case.attrib["name"]] = props
    assert len(seen) == 6
    for name, props in seen.items():
        trace_id = trace_ids[f"test_suite.py::{name}"]
        assert props == {"trace_id": trace_id, "trace_url": f"http://viewer/trace/{trace_id}"}


def test_paused_once_every_worker_waits(suite, etcdctl: Etcdctl, prefix: str) -> None:  # type: ignore[no-untyped-def]
    names = ["a", "b", "c", "d", "e", "f"]
    run = suite(names, names, "xp-1", "-n", "2")
    wait_for(lambda: sum(line.startswith("start ") for line in run.lines()) == 2, 30)
    first, second = (line.split()[1] for line in run.lines() if line.startswith("start "))
    wait_for(lambda: status_of(etcdctl, prefix, "xp-1") == "RUNNING")
    etcdctl("put", f"{prefix}/runs/xp-1/paused", "1")
    run.wait_seen("pause", count=WATCHING_PROCESSES)
    run.release(first)
    wait_for(lambda: run.log_text.count("run paused through etcd") == 1, 20)
    assert status_of(etcdctl, prefix, "xp-1") == "RUNNING", "one worker still runs a test"
    run.release(second)
    wait_for(lambda: status_of(etcdctl, prefix, "xp-1") == "PAUSED", 20)
    wait_for(lambda: run.log_text.count("run paused through etcd") == 2)
    assert [line for line in run.lines() if line.startswith("start ")] == [
        f"start {first}",
        f"start {second}",
    ], "no test starts while paused"
    for name in names:
        run.release(name)
    etcdctl("del", f"{prefix}/runs/xp-1/paused")
    wait_for(lambda: status_of(etcdctl, prefix, "xp-1") != "PAUSED", 20)
    output = run.finish()
    assert run.returncode == 0, output
    assert status_of(etcdctl, prefix, "xp-1") == "COMPLETED"
    assert "taskctl: PAUSED: every worker waits at the gate" in output
    assert "taskctl: resumed" in output
    assert re.search(r"6 passed", output), output


def test_cancel_skips_on_every_worker(suite, etcdctl: Etcdctl, prefix: str) -> None:  # type: ignore[no-untyped-def]
    names = ["a", "b", "c", "d", "e", "f", "g", "h"]
    run = suite(names, names, "xc-1", "-n", "2")
    wait_for(lambda: sum(line.startswith("start ") for line in run.lines()) == 2, 30)
    etcdctl("put", f"{prefix}/runs/xc-1/cancelled", "1")
    run.wait_seen("cancel", count=WATCHING_PROCESSES)
    for name in names:
        run.release(name)
    output = run.finish()
    assert run.returncode == 2, output
    assert status_of(etcdctl, prefix, "xc-1") == "CANCELLED"
    skipped_on = set(re.findall(r"\[(gw\d)\] \[\s*\d+%\] SKIPPED", output))
    assert skipped_on == {"gw0", "gw1"}, output
    assert sum(line.startswith("start ") for line in run.lines()) == 2, "nothing new started"
    assert re.search(r"2 passed, 6 skipped", output), output


def test_resume_counts_on_the_controller(
    ptr: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    ptr.makepyfile(
        "import os, pytest\n"
        "@pytest.mark.parametrize('n', range(6))\n"
        "def test_a(n): assert n % 3 or os.environ.get('FIXED')\n"
    )
    ptr.runpytest_subprocess("-n", "2", "--run-id", "xr").assert_outcomes(passed=4, failed=2)
    monkeypatch.setenv("FIXED", "1")
    second = ptr.runpytest_subprocess("-n", "2", "--run-id", "xr", "--resume")
    second.assert_outcomes(passed=2)
    second.stdout.fnmatch_lines(
        [
            "taskctl: resume: attempt 2 of run xr; 6 results from earlier attempts in etcd",
            "resume: 4 passed in earlier attempts, 2 to run",
            "2 workers [[]2 items[]]",
            "taskctl: resume: every test of run xr has now passed (attempt 2)",
        ]
    )
    spans = read_spans(ptr.path / "logs" / "xr" / "traces.jsonl")
    assert sum(span["name"] == "pytest session" for span in spans) == 2, "one per attempt"


def test_a_test_whose_worker_crashed_is_recorded_as_an_error(
    ptr: pytest.Pytester, store: StateStore
) -> None:
    """pytest-xdist reports the crash (``when="???"``); the run counts it and records it."""
    ptr.makepyfile(
        test_crash="import os\ndef test_crash():\n    os._exit(3)\ndef test_ok():\n    pass\n"
    )
    result = ptr.runpytest_subprocess("-n", "2", "--run-id", "xcrash")
    result.assert_outcomes(passed=1, failed=1)
    outcomes = {nodeid: r["outcome"] for nodeid, r in results_of(store, "xcrash").items()}
    assert outcomes == {"test_crash.py::test_crash": "error", "test_crash.py::test_ok": "passed"}
    meta = store.get_meta("xcrash")
    assert meta is not None and meta["counts"]["remaining"] == 0
    assert store.get_status("xcrash") == "FAILED"
