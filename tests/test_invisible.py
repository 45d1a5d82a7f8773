"""The plugin is invisible to the suite it observes: same outcomes, state and output.

Each test runs a small suite that looks at the process-wide state a suite
relies on (logging levels, the global random generator, environment,
warnings filters, signal handlers, the terminal) with the plugin enabled,
and where it matters compares with ``-p no:taskctl``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from .conftest import Etcdctl
from .test_telemetry import read_spans

STATE_SUITE = """
import json, logging, os, random, signal, sys, warnings

def test_state(tmp_path):
    state = {
        "root_level": logging.getLogger().level,
        "random": [random.random() for _ in range(3)],
        "environ": sorted(os.environ),
        "filters": len(warnings.filters),
        "stdout": type(sys.stdout).__name__,
    }
    with open(os.environ["STATE_FILE"], "w") as f:
        json.dump(state, f)
"""

SEEDED_CONFTEST = """
import random
def pytest_configure(config):
    random.seed(1234)
"""


def _state(ptr: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str) -> dict[str, object]:
    state_file = ptr.path / f"state{len(args)}-{abs(hash(args))}.json"
    monkeypatch.setenv("STATE_FILE", str(state_file))
    result = ptr.runpytest_subprocess("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=1)
    return dict(json.loads(state_file.read_text()))


def test_a_suite_sees_the_same_process_state_with_and_without_the_plugin(
    ptr: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    ptr.makeconftest(SEEDED_CONFTEST)
    ptr.makepyfile(test_state=STATE_SUITE)
    without = _state(ptr, monkeypatch, "-p", "no:taskctl")
    with_plugin = _state(ptr, monkeypatch, "--run-id", "inv-1")
    assert with_plugin["root_level"] == without["root_level"] == 30, "root logger left alone"
    assert with_plugin["random"] == without["random"], "no draws from the global random module"
    assert with_plugin["environ"] == without["environ"]
    assert with_plugin["filters"] == without["filters"]
    assert with_plugin["stdout"] == without["stdout"]


def test_taskctl_log_level_is_the_explicit_way_to_lower_the_root_logger(
    ptr: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    ptr.makepyfile(test_state=STATE_SUITE)
    state = _state(ptr, monkeypatch, "--run-id", "inv-2", "--taskctl-log-level", "INFO")
    assert state["root_level"] == 20


def test_a_suites_sigterm_handler_still_runs(ptr: pytest.Pytester) -> None:
    """The plugin's SIGTERM handler chains to the one the suite installed before it."""
    marker = ptr.path / "handler-ran"
    ptr.makeconftest(
        f"""
import signal, sys
def _handler(signum, frame):
    open({str(marker)!r}, "w").close()
def pytest_configure(config):
    signal.signal(signal.SIGTERM, _handler)
"""
    )
    ptr.makepyfile(
        test_sig="""
import os, signal, time
def test_term():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
def test_never():
    pass
"""
    )
    result = ptr.runpytest_subprocess("-p", "no:cacheprovider", "--run-id", "inv-3")
    assert marker.exists(), "the suite's own handler was called"
    assert result.ret == pytest.ExitCode.INTERRUPTED


def test_pause_news_never_shares_a_line_with_progress_dots(
    ptr: pytest.Pytester, etcdctl: Etcdctl, prefix: str
) -> None:
    flag = f"{prefix}/runs/inv-4/paused"
    ptr.makepyfile(
        test_pause=f"""
import subprocess, threading, time
CTL = {[etcdctl.binary, "--endpoints", etcdctl.endpoint]!r}
def test_a():
    pass
def test_b():
    subprocess.run(CTL + ["put", {flag!r}, "1"], check=True, capture_output=True)
    time.sleep(0.3)  # the run's watch sees the flag before the next gate
    def resume():
        time.sleep(0.5)
        subprocess.run(CTL + ["del", {flag!r}], check=True, capture_output=True)
    threading.Thread(target=resume).start()
def test_c():
    pass
"""
    )
    result = ptr.runpytest_subprocess("-q", "-p", "no:cacheprovider", "--run-id", "inv-4")
    result.assert_outcomes(passed=3)
    lines = result.stdout.lines
    paused = [line for line in lines if "PAUSED before" in line]
    assert paused and all(line.startswith("taskctl: PAUSED") for line in paused), lines


def test_no_recursive_logging_noise_with_a_dead_collector(
    ptr: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    ptr.makepyfile(
        test_logs="""
import logging
def test_a():
    logging.getLogger("app").warning("hello")
"""
    )
    result = ptr.runpytest_subprocess("-p", "no:cacheprovider", "--run-id", "inv-5")
    result.assert_outcomes(passed=1)
    output = result.stdout.str() + result.stderr.str()
    assert "recursive logging" not in output
    assert "Traceback" not in output


def test_the_plugin_imports_neither_grpc_nor_thread_internals_unless_asked(
    ptr: pytest.Pytester,
) -> None:
    ptr.makepyfile(
        test_mods="""
import sys
def test_mods():
    loaded = set(sys.modules)
    assert "grpc" not in loaded
    assert "pytest_taskctl.features.groups" not in loaded
    assert not any(m.startswith("opentelemetry.instrumentation.requests") for m in loaded)
"""
    )
    result = ptr.runpytest_subprocess("-p", "no:cacheprovider", "--run-id", "inv-6")
    result.assert_outcomes(passed=1)


def test_disabled_plugin_adds_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_mods="""
import sys, threading
def test_mods():
    assert not any(m.startswith("pytest_taskctl.run") for m in sys.modules)
    assert [t.name for t in threading.enumerate()] == ["MainThread"]
"""
    )
    # Without pytest-rerunfailures too: it starts a thread of its own where xdist is installed.
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:taskctl", "-p", "no:rerunfailures"
    )  # fmt: skip
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "logs").exists()


def test_signal_numbers_are_untouched_after_the_session() -> None:
    """In-process: the SIGTERM handler is restored when the session ends."""
    code = (
        "import signal, pytest, sys\n"
        "before = signal.getsignal(signal.SIGTERM)\n"
        "pytest.main(['-q', '-p', 'no:cacheprovider', '--taskctl-etcd', '127.0.0.1:1',"
        " '--run-id', 'inv-8', '--co', '-p', 'pytester'])\n"
        "sys.exit(0 if signal.getsignal(signal.SIGTERM) == before else 1)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert signal.getsignal(signal.SIGTERM) is not None


WRAPPING_CONFTEST = """
import pytest
from opentelemetry import context, trace

seen = []

@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item):
    token = context.attach(context.set_value("suite-key", item.name))
    try:
        return (yield)
    finally:
        context.detach(token)

@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    seen.append((report.when, context.get_value("suite-key"),
                 getattr(report, "taskctl_trace_id", None)))
    return report

@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session):
    result = yield
    print("AFTER-LOOP", trace.get_current_span().name)
    print("SEEN", seen)
    return result
"""


def test_a_suites_own_wrappers_keep_their_context_and_see_our_report_attributes(
    ptr: pytest.Pytester,
) -> None:
    """A conftest's protocol wrapper attaches a context value: every phase of its test sees
    it (phase spans are attached on top of it, never detached under it), the session's span
    is current again after the tests, and a conftest makereport wrapper sees the trace id
    the plugin put on a failed report (the plugin's wrappers keep their place inside the
    suite's)."""
    ptr.makeconftest(WRAPPING_CONFTEST)
    ptr.makepyfile(
        test_wrapped="""
        from opentelemetry import context

        def test_one():
            assert context.get_value("suite-key") == "test_one"

        def test_two():
            assert context.get_value("suite-key") == "test_two"
            assert False, "fails: its report carries its trace id"
        """
    )
    result = ptr.runpytest_subprocess("-s", "--run-id", "wrapped-1")
    result.assert_outcomes(passed=1, failed=1)
    assert "AFTER-LOOP pytest session" in result.stdout.str()
    seen = eval(next(line for line in result.outlines if line.startswith("SEEN "))[5:])
    assert [(when, key) for when, key, _ in seen] == [
        (when, name) for name in ("test_one", "test_two") for when in ("setup", "call", "teardown")
    ]
    failed_call = seen[4]
    assert isinstance(failed_call[2], str) and len(failed_call[2]) == 32, seen


def test_a_protocol_run_again_inside_another_keeps_the_outer_test(ptr: pytest.Pytester) -> None:
    """A plugin that runs an item's protocol again from inside it (a repeat plugin)."""
    ptr.makeconftest(
        """
import pytest
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    if item.name == "test_a" and not getattr(item, "_again", False):
        item._again = True
        item.ihook.pytest_runtest_protocol(item=item, nextitem=nextitem)
"""
    )
    ptr.makepyfile(test_n="def test_a():\n    pass\ndef test_b():\n    pass\n")
    result = ptr.runpytest_subprocess("--run-id", "nested-1")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert "INTERNALERROR" not in result.stdout.str()
    spans = read_spans(ptr.path / "logs" / "nested-1" / "traces.jsonl")
    assert sorted(s["name"] for s in spans if "::" in s["name"]) == [
        "test_n.py::test_a",
        "test_n.py::test_a",
        "test_n.py::test_b",
    ]


def test_a_finished_test_hook_that_raises_still_leaves_the_test_span(
    ptr: pytest.Pytester,
) -> None:
    ptr.makeconftest(
        "def pytest_taskctl_test_finished(run, nodeid, outcome):\n    raise OSError('disk full')\n"
    )
    ptr.makepyfile(test_h="def test_a():\n    pass\n")
    result = ptr.runpytest_subprocess("--run-id", "raise-1")
    assert "disk full" in result.stdout.str() + result.stderr.str()
    spans = read_spans(ptr.path / "logs" / "raise-1" / "traces.jsonl")
    assert [s["name"] for s in spans if "::" in s["name"]] == ["test_h.py::test_a"]
