"""Pause, resume and cancel through etcd, as a user does it: etcdctl against a running pytest."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path

import pytest

from pytest_taskctl.etcd.store import StateStore

from .conftest import INNER_INI, Etcdctl, wait_for
from .suites import RunningSuite, suite_env


def status_of(etcdctl: Etcdctl, prefix: str, run_id: str = "run-1") -> str | None:
    return etcdctl.get(f"{prefix}/runs/{run_id}/status")


def test_pause_holds_next_test_until_resumed(suite, etcdctl: Etcdctl, prefix: str) -> None:  # type: ignore[no-untyped-def]
    run = suite(["one", "two", "three"], gates=["one"])
    run.wait_started("one")
    wait_for(lambda: status_of(etcdctl, prefix) == "RUNNING")  # written off the test thread

    etcdctl("put", f"{prefix}/runs/run-1/paused", "1")
    run.wait_seen("pause")
    run.release("one")  # the running test is never interrupted by a pause
    wait_for(lambda: status_of(etcdctl, prefix) == "PAUSED")
    assert run.ended("one")
    assert not run.started("two")

    etcdctl("del", f"{prefix}/runs/run-1/paused")
    output = run.finish()
    assert run.returncode == 0, output
    assert run.lines() == [
        "start one",
        "end one",
        "start two",
        "end two",
        "start three",
        "end three",
    ]
    assert status_of(etcdctl, prefix) == "COMPLETED"
    assert "run paused through etcd" in run.log_text
    assert "run resumed after" in run.log_text


def test_cancel_while_paused_skips_the_rest(suite, etcdctl: Etcdctl, prefix: str) -> None:  # type: ignore[no-untyped-def]
    run = suite(["one", "two", "three"], gates=["one"])
    run.wait_started("one")
    etcdctl("put", f"{prefix}/runs/run-1/paused", "1")
    run.wait_seen("pause")
    run.release("one")
    wait_for(lambda: status_of(etcdctl, prefix) == "PAUSED")

    etcdctl("put", f"{prefix}/runs/run-1/cancelled", "1")
    output = run.finish()
    assert run.returncode == 2, output
    assert "SKIPPED [1] test_suite.py" in output
    assert output.count("taskctl: run cancelled") >= 2
    assert "was cancelled through etcd" in output
    assert "1 passed, 2 skipped" in output
    assert not run.started("two")
    assert status_of(etcdctl, prefix) == "CANCELLED"


def test_cancel_mid_run_lets_the_running_test_finish(suite, etcdctl: Etcdctl, prefix: str) -> None:  # type: ignore[no-untyped-def]
    run = suite(["one", "two", "three"], gates=["one"])
    run.wait_started("one")
    etcdctl("put", f"{prefix}/runs/run-1/cancelled", "1")
    run.wait_seen("cancel")
    run.release("one")
    output = run.finish()
    assert run.returncode == 2, output
    assert "1 passed, 2 skipped" in output
    assert run.lines() == ["start one", "end one"]
    assert status_of(etcdctl, prefix) == "CANCELLED"
    meta = json.loads(etcdctl.get(f"{prefix}/runs/run-1/meta") or "{}")
    assert meta["counts"] == {"passed": 1, "failed": 0, "skipped": 2, "remaining": 0, "total": 3}


def test_cancel_before_start_skips_every_test(
    ptr: pytest.Pytester, etcdctl: Etcdctl, prefix: str
) -> None:
    etcdctl("put", f"{prefix}/runs/early/cancelled", "yes")
    ptr.makepyfile("def test_a(): pass\ndef test_b(): pass\n")
    result = ptr.runpytest("--run-id", "early", "-rs")
    assert result.ret == 2
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*was cancelled through etcd*"])
    result.stdout.re_match_lines([r"SKIPPED \[2\] .*: taskctl: run cancelled$"])
    assert etcdctl.get(f"{prefix}/runs/early/status") == "CANCELLED"


@pytest.mark.parametrize("value", ["0", "false", "off", "no"])
def test_false_flag_values_do_not_pause(
    ptr: pytest.Pytester, etcdctl: Etcdctl, prefix: str, value: str
) -> None:
    etcdctl("put", f"{prefix}/runs/calm/paused", value)
    etcdctl("put", f"{prefix}/runs/calm/cancelled", value)
    ptr.makepyfile("def test_a(): pass\n")
    result = ptr.runpytest("--run-id", "calm")
    result.assert_outcomes(passed=1)
    assert result.ret == 0


def test_status_and_meta_of_a_completed_run(
    ptr: pytest.Pytester, etcdctl: Etcdctl, prefix: str
) -> None:
    ptr.makepyfile("def test_a(): pass\ndef test_b(): assert 0\ndef test_c(): pass\n")
    result = ptr.runpytest(
        "--run-id",
        "meta-1",
        "--taskctl-etcd-user",
        "bob:hunter2",
        "--taskctl-etcd",
        etcdctl.endpoint,
    )
    result.assert_outcomes(passed=2, failed=1)
    assert etcdctl.get(f"{prefix}/runs/meta-1/status") == "FAILED"
    meta = json.loads(etcdctl.get(f"{prefix}/runs/meta-1/meta") or "{}")
    assert meta["counts"] == {"passed": 2, "failed": 1, "skipped": 0, "remaining": 0, "total": 3}
    assert meta["run_id"] == "meta-1"
    assert meta["pid"] > 0 and meta["host"] and meta["started"] > 0
    assert len(meta["trace_id"]) == 32
    assert meta["traceparent"].startswith(f"00-{meta['trace_id']}-")
    assert "bob:***" in meta["argv"]
    assert "hunter2" not in json.dumps(meta)


def test_etcd_unreachable_at_start_warns_once_and_runs(pytester: pytest.Pytester) -> None:
    pytester.makeini(INNER_INI)
    pytester.makepyfile("def test_a(): pass\ndef test_b(): pass\n")
    result = pytester.runpytest("--run-id", "offline", "--taskctl-etcd", "127.0.0.1:1")
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "taskctl: warning: etcd unreachable (127.0.0.1:1: connection refused); "
            "pause/cancel disabled*"
        ]
    )
    assert result.stdout.str().count("etcd unreachable") == 1
    assert (pytester.path / "logs" / "offline" / "pytest.log").exists()


def test_etcd_killed_mid_run_then_back(  # type: ignore[no-untyped-def]
    tmp_path: Path, etcd_factory, prefix: str, taskctl_env: dict[str, str]
) -> None:
    server = etcd_factory()
    ctl = Etcdctl(server.endpoint)
    # taskctl_env keeps PYTHONPATH: the run must load the plugin under test.
    env = suite_env({**taskctl_env, "PYTEST_TASKCTL_ETCD": server.endpoint})
    run = RunningSuite(
        tmp_path, env, ["one", "two", "three", "four"], ["one", "two"], "lost-1"
    ).start()
    try:
        run.wait_started("one")
        server.kill()
        run.release("one")
        run.wait_started("two")  # etcd gone: tests go on
        # The run notices (a failed write, or the watch's liveness read) and says so once.
        wait_for(lambda: "lost etcd" in run.log_text, timeout=10)
        server.start()
        # The plugin says when its watch and writer have etcd back (contract: within 2 s).
        wait_for(lambda: "etcd is back" in run.log_text, timeout=10)
        ctl("put", f"{prefix}/runs/lost-1/paused", "1")
        run.wait_seen("pause")
        run.release("two")
        wait_for(lambda: ctl.get(f"{prefix}/runs/lost-1/status") == "PAUSED", timeout=10)
        assert not run.started("three")
        ctl("del", f"{prefix}/runs/lost-1/paused")
        output = run.finish()
    finally:
        run.kill()
    assert run.returncode == 0, output
    assert "4 passed" in output
    assert "etcd connection was lost" in output
    assert ctl.get(f"{prefix}/runs/lost-1/status") == "COMPLETED"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_run_interrupted_with_logs_flushed(
    suite, etcdctl: Etcdctl, prefix: str, signum: int
) -> None:  # type: ignore[no-untyped-def]
    run = suite(["one", "two"], gates=["one"])
    run.wait_started("one")
    run.signal(signum)
    output = run.finish()
    assert run.returncode == 2, output
    assert status_of(etcdctl, prefix) == "INTERRUPTED"
    assert "pytest_sessionfinish: run run-1 INTERRUPTED" in run.log_text
    assert not run.started("two")


SLOW_SHUTDOWN = """
import os, time

def pytest_taskctl_run_finishing(run, session):
    with open(os.environ["STAMPS"], "a") as f:
        f.write("finishing\\n")
    time.sleep(1.5)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("when", ["mid-test", "shutdown"])
def test_two_signals_20ms_apart_end_interrupted(
    tmp_path: Path, taskctl_env: dict[str, str], etcdctl: Etcdctl, prefix: str, signum: int,
    when: str,
) -> None:  # fmt: skip
    """GNU ``timeout`` signals the child, then its process group; people press Ctrl-C twice."""
    gates = ["one"] if when == "mid-test" else []
    run = RunningSuite(tmp_path, suite_env(taskctl_env), ["one", "two"], gates, "run-1")
    if when == "shutdown":
        (tmp_path / "conftest.py").write_text(SLOW_SHUTDOWN)
    run.start()
    try:
        if when == "mid-test":
            run.wait_started("one")
        else:
            wait_for(lambda: "finishing" in run.lines(), timeout=30)
        run.signal(signum)
        time.sleep(0.02)
        run.signal(signum)
        output = run.finish()
    finally:
        run.kill()
    assert "INTERNALERROR" not in output
    assert run.returncode == 2, output
    assert status_of(etcdctl, prefix) == "INTERRUPTED"
    meta = json.loads(etcdctl.get(f"{prefix}/runs/run-1/meta") or "{}")
    assert meta["status"] == "INTERRUPTED"
    assert meta["exit_code"] == run.returncode
    assert "pytest_sessionfinish: run run-1 INTERRUPTED (exit 2)" in run.log_text


def test_xdist_workers_join_the_controllers_run(
    ptr: pytest.Pytester, etcdctl: Etcdctl, prefix: str
) -> None:
    ptr.makepyfile(
        "import pytest\n@pytest.mark.parametrize('n', range(6))\ndef test_a(n): assert n != 3\n"
    )
    result = ptr.runpytest_subprocess("-n", "2")
    result.assert_outcomes(passed=5, failed=1)
    (run_dir,) = (ptr.path / "logs").iterdir()  # one run, although its id was generated
    meta = json.loads(etcdctl.get(f"{prefix}/runs/{run_dir.name}/meta") or "{}")
    assert meta["counts"] == {"passed": 5, "failed": 1, "skipped": 0, "remaining": 0, "total": 6}
    assert etcdctl.get(f"{prefix}/runs/{run_dir.name}/status") == "FAILED"
    log_text = (run_dir / "pytest.log").read_text()
    assert log_text.count("pytest_runtest_setup: ") == 6


def test_xdist_cancelled_run_skips_on_every_worker(
    ptr: pytest.Pytester, etcdctl: Etcdctl, prefix: str
) -> None:
    etcdctl("put", f"{prefix}/runs/xd-1/cancelled", "1")
    ptr.makepyfile("import pytest\n@pytest.mark.parametrize('n', range(4))\ndef test_a(n): pass\n")
    result = ptr.runpytest_subprocess("-n", "2", "--run-id", "xd-1")
    result.assert_outcomes(skipped=4)
    assert result.ret == 2
    assert etcdctl.get(f"{prefix}/runs/xd-1/status") == "CANCELLED"


def test_stale_cancel_is_cleared_and_reported(
    ptr: pytest.Pytester, etcdctl: Etcdctl, prefix: str
) -> None:
    ptr.makepyfile("def test_a(): pass\ndef test_b(): pass\n")
    etcdctl("put", f"{prefix}/runs/again/cancelled", "1")
    ptr.runpytest("--run-id", "again").assert_outcomes(skipped=2)
    second = ptr.runpytest("--run-id", "again")
    second.assert_outcomes(passed=2)
    assert second.ret == 0
    second.stdout.fnmatch_lines(
        ["taskctl: note: cleared cancelled='1' left over from an earlier attempt"]
    )
    assert etcdctl.get(f"{prefix}/runs/again/cancelled") is None
    assert etcdctl.get(f"{prefix}/runs/again/status") == "COMPLETED"


def test_flag_set_after_the_end_is_kept_for_the_next_attempt(
    ptr: pytest.Pytester, etcdctl: Etcdctl, prefix: str
) -> None:
    ptr.makepyfile("def test_a(): pass\n")
    ptr.runpytest("--run-id", "next").assert_outcomes(passed=1)
    etcdctl("put", f"{prefix}/runs/next/cancelled", "1")  # for the next attempt
    second = ptr.runpytest("--run-id", "next")
    second.assert_outcomes(skipped=1)
    assert second.ret == 2


def test_quiet_run_still_shows_the_warnings_once(pytester: pytest.Pytester) -> None:
    pytester.makeini(INNER_INI)
    pytester.makepyfile("def test_a(): pass\n")
    result = pytester.runpytest("-q", "--taskctl-etcd", "127.0.0.1:1")
    result.assert_outcomes(passed=1)
    text = result.stdout.str()
    assert text.count("etcd unreachable") == 1
    assert text.count("no run id given") == 1


def test_pause_is_announced_on_the_terminal(suite, etcdctl: Etcdctl, prefix: str) -> None:  # type: ignore[no-untyped-def]
    run = suite(["one", "two"], gates=["one"])
    run.wait_started("one")
    etcdctl("put", f"{prefix}/runs/run-1/paused", "1")
    run.wait_seen("pause")
    run.release("one")
    wait_for(lambda: status_of(etcdctl, prefix) == "PAUSED")
    etcdctl("del", f"{prefix}/runs/run-1/paused")
    output = run.finish()
    assert "taskctl: PAUSED before test_suite.py::test_two" in output
    assert f"etcdctl del {prefix}/runs/run-1/paused" in output
    assert "taskctl: resumed after" in output


def test_collection_error_ends_failed_not_interrupted(
    ptr: pytest.Pytester, etcdctl: Etcdctl, prefix: str
) -> None:
    ptr.makepyfile(test_broken="def test_a(:\n", test_fine="def test_b(): pass\n")
    result = ptr.runpytest("--run-id", "broken")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # pytest's own code for collection errors
    assert etcdctl.get(f"{prefix}/runs/broken/status") == "FAILED"


def test_nothing_leaks_when_another_plugin_breaks_sessionstart(ptr: pytest.Pytester) -> None:
    ptr.makeconftest("def pytest_sessionstart(session):\n    raise RuntimeError('boom')\n")
    ptr.makepyfile("def test_a(): pass\n")
    before = {t.name for t in threading.enumerate()}
    handlers = list(logging.getLogger().handlers)
    ptr.runpytest("--run-id", "leak")

    def ours() -> set[str]:
        return {t.name for t in threading.enumerate() if t.name.startswith("taskctl-")} - before

    try:
        wait_for(lambda: not ours())  # threads end within their join deadlines
    except AssertionError:
        raise AssertionError(f"threads left running: {sorted(ours())}") from None
    assert logging.getLogger().handlers == handlers


def test_a_meta_source_may_hold_a_lock_its_feature_holds_around_update_meta() -> None:
    """The resume plugin updates the meta holding its lock; its meta source takes that
    lock on the writer's thread. Both at once once hung a run (lock order)."""
    from pytest_taskctl.control import RunControl
    from pytest_taskctl.keys import RunKeys

    control = RunControl(RunKeys("/t", "r1"), None, None)
    feature_lock = threading.Lock()
    in_source = threading.Event()

    def source() -> dict[str, int]:
        in_source.set()
        with feature_lock:
            return {"attempts": 1}

    control.add_meta_source(source)
    with feature_lock:  # a test thread, inside the feature
        writer = threading.Thread(target=control._meta_json, daemon=True)
        writer.start()
        assert in_source.wait(5)
        updating = threading.Thread(target=control.update_meta, kwargs={"left": 3}, daemon=True)
        updating.start()
        updating.join(5)
        assert not updating.is_alive(), "update_meta waited for the writer's thread"
    writer.join(5)
    assert not writer.is_alive()
    assert json.loads(control._meta_json())["attempts"] == 1


def test_a_status_listener_may_ask_whether_the_process_is_busy(
    store: StateStore, prefix: str
) -> None:
    """``--join``'s pause listener asks ``busy`` while the control holds its lock (a
    test thread paused at the gate): a lock in ``busy`` hung that thread on itself."""
    from pytest_taskctl.control import RunControl
    from pytest_taskctl.etcd.watch import WatchedRange
    from pytest_taskctl.keys import RunKeys

    keys = RunKeys(prefix, "r1")
    store.gateway.put(keys.paused, "1")
    view = WatchedRange(store.gateway, *keys.control_range)
    view.start(store.gateway.range(*keys.control_range))
    try:
        control = RunControl(keys, view, None, publish=False)
        answers: list[tuple[str, bool]] = []
        control.add_status_listener(lambda status: answers.append((status, control.busy)))
        control._status = "RUNNING"
        gate = threading.Thread(target=control.gate, args=("t.py::test_x",), daemon=True)
        gate.start()
        wait_for(lambda: answers == [("PAUSED", False)])
        store.gateway.delete(keys.paused)
        gate.join(5)
        assert not gate.is_alive(), "the gate's thread waited for its own lock"
        assert answers == [("PAUSED", False), ("RUNNING", False)]
    finally:
        view.stop()


NEWS_CONFTEST = """
import threading
import pytest
from pytest_taskctl.plugin import RUN_KEY

@pytest.fixture
def news_from_a_plugin_thread(request):
    run = request.config.stash[RUN_KEY]
    text = f"taskctl: news during {request.node.name}"
    thread = threading.Thread(target=run.notify, args=(text,), name="taskctl-news")
    thread.start()
    thread.join()
"""


def test_news_from_a_plugin_thread_waits_for_the_next_test(ptr: pytest.Pytester) -> None:
    """A watch or the writer never switches pytest's capture off under a running test:
    its line comes out when the next test starts, or at the end of the run."""
    ptr.makeconftest(NEWS_CONFTEST)
    ptr.makepyfile(
        test_news="""
def test_first(news_from_a_plugin_thread):
    print("output of test_first")

def test_second():
    pass

def test_last(news_from_a_plugin_thread):
    pass
"""
    )
    result = ptr.runpytest_subprocess("-v", "--run-id", "news-1")
    result.assert_outcomes(passed=3)
    lines = result.stdout.lines
    at = {text: next(i for i, line in enumerate(lines) if text in line) for text in (
        "test_news.py::test_first PASSED", "taskctl: news during test_first",
        "test_news.py::test_second PASSED", "test_news.py::test_last PASSED",
        "taskctl: news during test_last",
    )}  # fmt: skip
    assert at["test_news.py::test_first PASSED"] < at["taskctl: news during test_first"]
    assert at["taskctl: news during test_first"] < at["test_news.py::test_second PASSED"]
    assert at["test_news.py::test_last PASSED"] < at["taskctl: news during test_last"]
    assert "output of test_first" not in result.stdout.str(), "the test's output stays captured"
