"""``taskctl trace``: waterfalls drawn from traces.jsonl, synthetic and from a real run.

The synthetic file has what a test's trace will hold with span detail on
(phases, fixtures, an HTTP call, ``log`` and ``exception`` events), so the
drawing is checked on trees deeper than today's plugin writes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_taskctl import cli
from pytest_taskctl.cli.trace import Row, bar

from .test_cli import TASKCTL, taskctl

T0 = 1_800_000_000_000_000_000  # ns
MS = 1_000_000
SESSION = ("a" * 32, "a" * 16)


def value(v: object) -> dict[str, object]:
    """An OTLP/JSON AnyValue (64-bit ints as strings, as the spec says)."""
    return {"intValue": str(v)} if isinstance(v, int) else {"stringValue": str(v)}


def span(
    name: str,
    trace_id: str,
    span_id: str,
    start_ms: float,
    end_ms: float,
    *,
    parent: str = "",
    error: str | None = None,
    kind: int = 1,
    events: list[tuple[str, float, dict[str, object]]] = (),  # type: ignore[assignment]
    links: list[tuple[str, str]] = (),  # type: ignore[assignment]
    **attributes: object,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "traceId": trace_id,
        "spanId": span_id,
        "flags": 256,
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(T0 + int(start_ms * MS)),
        "endTimeUnixNano": str(T0 + int(end_ms * MS)),
        "attributes": [
            {"key": k.replace("__", "."), "value": value(v)} for k, v in attributes.items()
        ],
        "status": {"code": 2, "message": error} if error else {},
    }
    if parent:
        record["parentSpanId"] = parent
    if events:
        record["events"] = [
            {
                "timeUnixNano": str(T0 + int(at * MS)),
                "name": event,
                "attributes": [{"key": k, "value": value(v)} for k, v in attrs.items()],
            }
            for event, at, attrs in events
        ]
    if links:
        record["links"] = [{"traceId": t, "spanId": s, "flags": 256} for t, s in links]
    return record


def request(*spans: dict[str, Any]) -> str:
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "pytest"}}]}
    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": resource,
                    "scopeSpans": [{"scope": {"name": "t"}, "spans": list(spans)}],
                }
            ]
        }
    )


def a_test(nodeid: str, trace: str, start: float, end: float, **kw: Any) -> dict[str, Any]:
    outcome = "fail" if kw.get("error") else "pass"
    return span(
        nodeid,
        trace,
        trace[:16],
        start,
        end,
        links=[SESSION],
        test__case__name=nodeid,
        test__case__result__status=outcome,
        pytest__outcome="failed" if outcome == "fail" else "passed",
        **kw,
    )


def synthetic_run(log_dir: Path, run_id: str = "syn-1") -> Path:
    """A session of 100 ms with two tests; the second has a full tree and fails."""
    b, c = "b" * 32, "c" * 32
    lines = [
        # Written as the exporter does: children before parents, in several requests.
        request(
            a_test("test_api.py::test_ok", b, 10, 40),
            span(
                "fixture db",
                c,
                "c1" * 8,
                50,
                58,
                parent="c0" * 8,
                events=[("log", 52, {"log.message": "connecting to db", "log.severity": "INFO"})],
                pytest__fixture__name="db",
                pytest__fixture__scope="function",
            ),
            span("setup", c, "c0" * 8, 50, 60, parent=c[:16]),
        ),
        request(
            span(
                "GET",
                c,
                "c3" * 8,
                62,
                70,
                parent="c2" * 8,
                kind=3,
                http__response__status_code=500,
                url__full="http://api/items",
            ),
            span(
                "call",
                c,
                "c2" * 8,
                60,
                90,
                parent=c[:16],
                error="ValueError: boom",
                events=[
                    (
                        "log",
                        75,
                        {"log.message": "retrying\nsecond line", "log.severity": "WARNING"},
                    ),
                    (
                        "exception",
                        89,
                        {"exception.type": "ValueError", "exception.message": "boom"},
                    ),
                ],
            ),
            span("teardown", c, "c4" * 8, 90, 95, parent=c[:16]),
            a_test("test_api.py::test_items", c, 50, 95, error="call: ValueError: boom"),
        ),
        request(span("pytest session", *SESSION, 0, 100, error="FAILED", pytest__run_id=run_id)),
    ]
    run_dir = log_dir / run_id
    run_dir.mkdir(parents=True)
    path = run_dir / "traces.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def trace_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """``taskctl trace ... --log-dir tmp/logs`` in-process at 120 columns: (code, out, err)."""
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.delenv("PYTEST_TASKCTL_ETCD", raising=False)

    def run(*args: str, log_dir: Path | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(["trace", *args, "--log-dir", str(log_dir or tmp_path / "logs")])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def bar_of(line: str) -> str:
    """The time line column: what follows the duration (``... ms``) on a row."""
    match = re.search(r".*\d ms {2}(.*)$", line)
    assert match, line
    return match.group(1)


def test_run_view_draws_tests_on_one_time_line(trace_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    synthetic_run(tmp_path / "logs")
    code, out, err = trace_cli("syn-1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "run syn-1: 2 tests, 1 failed, 100.0 ms (session trace " + "a" * 32 + ")"
    rows = [line for line in lines if "test_api.py" in line or "pytest session" in line]
    assert [re.sub(r"\s+\+.*", "", row) for row in rows] == [
        "✗ pytest session",
        "├─ test_api.py::test_ok",
        "└─ ✗ test_api.py::test_items",
    ]
    assert "+10.0 ms" in rows[1] and "30.0 ms" in rows[1]
    assert "+50.0 ms" in rows[2] and "45.0 ms" in rows[2]
    assert any(line.strip() == "call: ValueError: boom" for line in lines)
    session_bar, ok_bar, items_bar = (bar_of(row) for row in rows)
    width = len(session_bar.rstrip())
    assert session_bar.strip() == "█" * width
    assert len(ok_bar) - len(ok_bar.lstrip()) == int(width * 0.10)
    assert len(items_bar) - len(items_bar.lstrip()) == int(width * 0.50)
    assert len(items_bar.strip()) == round(width * 0.45)
    assert "fixture db" not in out, "the run view shows tests, not their insides"


def test_test_view_draws_the_span_tree_with_events(trace_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    synthetic_run(tmp_path / "logs")
    code, out, err = trace_cli("syn-1", "test_api.py::test_items")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "test_api.py::test_items: failed in 45.0 ms (trace " + "c" * 32 + ")"
    labels = [re.split(r"\s{2,}\+", line)[0] for line in lines[2:]]
    assert labels == [
        "✗ test_api.py::test_items",
        "├─ setup",
        "│  └─ fixture db",
        "│     └─ • log INFO connecting to db",
        "├─ ✗ call",
        "│  ├─ GET [500]",
        "│  ├─ • log WARNING retrying",
        "│  └─ ✗ exception ValueError: boom",
        "└─ teardown",
    ]
    offsets = {label: line for label, line in zip(labels, lines[2:], strict=True)}
    assert "+0.0 ms" in offsets["✗ test_api.py::test_items"]
    assert "+2.0 ms" in offsets["│     └─ • log INFO connecting to db"]
    assert "+12.0 ms" in offsets["│  ├─ GET [500]"] and "8.0 ms" in offsets["│  ├─ GET [500]"]
    assert offsets["│  └─ ✗ exception ValueError: boom"].rstrip().endswith("◆")


def test_json_views_nest_spans_with_starts_and_durations(trace_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    synthetic_run(tmp_path / "logs")
    code, out, _ = trace_cli("syn-1", "--json")
    assert code == 0
    run = json.loads(out)
    assert (run["run_id"], run["name"], run["start"], run["duration"], run["status"]) == (
        "syn-1",
        "pytest session",
        0.0,
        0.1,
        "ERROR",
    )
    assert [(t["name"], t["start"], t["duration"], t["status"]) for t in run["children"]] == [
        ("test_api.py::test_ok", 0.01, 0.03, "UNSET"),
        ("test_api.py::test_items", 0.05, 0.045, "ERROR"),
    ]
    code, out, _ = trace_cli("syn-1", "test_api.py::test_items", "--json")
    assert code == 0
    test = json.loads(out)
    assert test["start"] == 0.0 and test["status_message"] == "call: ValueError: boom"
    setup, call, teardown = test["children"]
    assert [setup["name"], call["name"], teardown["name"]] == ["setup", "call", "teardown"]
    (fixture,) = setup["children"]
    assert fixture["name"] == "fixture db" and fixture["start"] == 0.0
    assert fixture["attributes"]["pytest.fixture.scope"] == "function"
    assert fixture["events"] == [
        {
            "name": "log",
            "start": 0.002,
            "attributes": {"log.message": "connecting to db", "log.severity": "INFO"},
        }
    ]
    (http,) = call["children"]
    assert (http["kind"], http["start"], http["duration"]) == ("CLIENT", 0.012, 0.008)
    assert http["attributes"]["http.response.status_code"] == 500
    assert [e["name"] for e in call["events"]] == ["log", "exception"]


def test_unknown_run_and_unknown_test_are_failed_actions(trace_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    synthetic_run(tmp_path / "logs")
    code, out, err = trace_cli("syn-2")
    assert code == 1 and out == ""
    logs = tmp_path / "logs"
    assert err.strip() == (
        f"taskctl: no traces for run syn-2: {logs}/syn-2/traces.jsonl does not exist; "
        "did you mean: syn-1"
    )
    code, out, err = trace_cli("syn-1", "test_api.py::test_itemz")
    assert code == 1 and out == ""
    assert err.strip() == (
        "taskctl: no test 'test_api.py::test_itemz' in run syn-1; "
        "did you mean: test_api.py::test_items"
    )
    code, _, err = trace_cli("syn-1", "test_ok")
    assert code == 1 and "did you mean: test_api.py::test_ok" in err
    code, _, err = trace_cli("syn-1", "test_itmes")  # a typo in the test's own name
    assert code == 1 and err.strip().endswith("did you mean: test_api.py::test_items")


@pytest.mark.parametrize("args", [(), ("bad id!",), ("syn-1", "a", "b")])
def test_usage_errors_exit_2(trace_cli, args: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    code, _, err = trace_cli(*args)
    assert code == 2
    assert "usage: taskctl" in err


def test_a_cut_line_is_skipped_and_said(trace_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = synthetic_run(tmp_path / "logs")
    with path.open("a") as file:
        file.write('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "dd')  # SIGKILL
    code, out, err = trace_cli("syn-1")
    assert code == 0
    assert f"taskctl: skipped 1 unreadable line(s) of {path}" in err
    assert "2 tests, 1 failed" in out


def test_later_attempts_win(trace_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = synthetic_run(tmp_path / "logs")
    second = ("e" * 32, "e" * 16)
    rerun = span(
        "test_api.py::test_items",
        "f" * 32,
        "f" * 16,
        1000,
        1010,
        links=[second],
        test__case__name="test_api.py::test_items",
    )
    with path.open("a") as file:
        file.write(request(rerun, span("pytest session", *second, 990, 1020)) + "\n")
    code, out, err = trace_cli("syn-1")
    assert code == 0
    assert "2 attempts of run syn-1 in traces.jsonl; showing the last" in err
    assert "1 tests, 0 failed, 30.0 ms" in out
    code, out, err = trace_cli("syn-1", "test_api.py::test_items")
    assert "ran 2 times in this run; showing the last" in err
    assert "(trace " + "f" * 32 + ")" in out


def test_bar_positions() -> None:
    assert bar(0, 100, 100, 10) == "█" * 10
    assert bar(50, 10, 100, 10) == " " * 5 + "█"
    assert bar(99, 0, 100, 10) == " " * 9 + "█", "a span too short to see still gets one cell"
    assert bar(30, None, 100, 10) == " " * 3 + "◆"
    assert bar(0, 0, 0, 10) == "█"


def test_long_labels_keep_the_guide_and_the_test_name() -> None:
    row = Row("│  ├─ ", "✗ tests/api/test_orders.py::test_refund", "red", 0, 1, keep_end=True)
    assert row.fit(60) == "│  ├─ ✗ tests/api/test_orders.py::test_refund".ljust(60)
    assert row.fit(26) == "│  ├─ …ers.py::test_refund"
    assert Row("", "a long note", "red").fit(7) == "a long…"


def test_a_real_run_without_etcd(ptr: pytest.Pytester, tmp_path: Path) -> None:
    """The console script reads the files a real run wrote; etcd is not asked."""
    ptr.makepyfile(
        test_real="import logging\n"
        "def test_ok():\n    pass\n"
        "def test_bad():\n"
        "    logging.getLogger('app').warning('about to fail')\n"
        "    assert 2 + 2 == 5\n"
    )
    result = ptr.runpytest("--run-id", "real-1")
    result.assert_outcomes(passed=1, failed=1)
    trace_id = re.search(r"FAILED test_real.py::test_bad  ([0-9a-f]{32})", result.stdout.str())
    assert trace_id, result.stdout.str()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(PYTEST_TASKCTL_ETCD="127.0.0.1:1", COLUMNS="120")  # nothing listens there
    logs = str(ptr.path / "logs")
    run_view = taskctl("trace", "real-1", "--log-dir", logs, env=env)
    assert run_view.returncode == 0, run_view.stderr
    assert "run real-1: 2 tests, 1 failed" in run_view.stdout
    assert re.search(r"└─ ✗ test_real.py::test_bad\s+\+", run_view.stdout)
    assert "call: assert (2 + 2) == 5" in run_view.stdout
    test_view = taskctl(
        "trace", "real-1", "test_real.py::test_bad", "--log-dir", logs, "--json", env=env
    )
    assert test_view.returncode == 0, test_view.stderr
    document = json.loads(test_view.stdout)
    assert document["trace_id"] == trace_id.group(1)
    assert document["status"] == "ERROR" and document["start"] == 0.0
    assert any(
        e["name"] == "exception"
        for e in document["events"] + [e for child in document["children"] for e in child["events"]]
    )
    in_cwd = subprocess.run(
        [str(TASKCTL), "trace", "real-1", "test_real.py::test_bad"],
        cwd=ptr.path,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert in_cwd.returncode == 0, in_cwd.stderr
    assert f"(trace {trace_id.group(1)})" in in_cwd.stdout
