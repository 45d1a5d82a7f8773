"""Live pauses (seed 004) on a real etcd: a paused pytest, answered from another process.

``taskctl pauses`` and ``taskctl decide`` run as the real console script from
a second process (or in-process through ``cli.main``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pytest_taskctl import ResumeDecision, StateStore, checkpoint, cli
from pytest_taskctl.etcd.gateway import put_op
from pytest_taskctl.features.livepause import FAILURE_TASK
from pytest_taskctl.features.pauses import PauseError, decide, list_pauses

from .conftest import INNER_INI, stop_process, wait_for

SUITE = """
import os
import pytest
from pytest_taskctl import checkpoint

def _stamp(text):
    with open(os.environ["STAMPS"], "a", encoding="utf-8") as f:
        f.write(text + "\\n")

@pytest.fixture
def server():
    _stamp("server up")
    yield "srv"
    _stamp("server down")

def test_broken(server):
    assert server == "other"

def test_approval():
    decision = checkpoint(task="check the dashboard", timeout=30)
    _stamp(f"decision {decision.outcome} {decision.result} {decision.reason}")
    assert decision.result is False
"""

REQUIRED = {"pause_id", "run_id", "kind", "state", "nodeid", "task", "created"}


def taskctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``taskctl pauses|decide`` from a second process."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "taskctl"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def pending(store: StateStore, run_id: str, kind: str) -> dict[str, Any] | None:
    found = [p for p in list_pauses(store, run_id) if p["kind"] == kind]
    return found[0] if found else None


def start_suite(
    directory: Path, env: dict[str, str], run_id: str, *args: str
) -> subprocess.Popen[str]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pytest.ini").write_text(INNER_INI)
    (directory / "test_suite.py").write_text(SUITE)
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--run-id", run_id, *args],
        cwd=directory,
        env={**env, "STAMPS": str(directory / "stamps.txt")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stamps(directory: Path) -> list[str]:
    path = directory / "stamps.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_failure_and_checkpoint_pauses_answered_from_another_process(
    tmp_path: Path, etcd: Any, prefix: str, store: StateStore, taskctl_env: dict[str, str]
) -> None:
    run = start_suite(tmp_path, taskctl_env, "lp", "--pause-on-failure", "--pause-timeout", "30")
    try:
        failure = wait_for(lambda: pending(store, "lp", "failure"), timeout=30)
        assert isinstance(failure, dict)
        pause_id = failure["pause_id"]
        assert pause_id.startswith("lp.")
        assert failure["nodeid"] == "test_suite.py::test_broken"
        assert failure["state"] == "pending"
        assert "assert 'srv' == 'other'" in failure["failure"]
        assert (failure["pid"], failure["host"]) == (run.pid, socket.gethostname())
        assert failure["timeout"] == 30.0 and isinstance(failure["lease"], int)
        assert stamps(tmp_path) == ["server up"]  # paused before teardown: the fixture is alive

        listed = json.loads(taskctl(taskctl_env, "pauses", "--json").stdout)
        assert [p["pause_id"] for p in listed] == [pause_id]
        assert set(listed[0]) >= REQUIRED

        wrong = taskctl(taskctl_env, "decide", pause_id, "--result", "true")
        assert wrong.returncode == 1
        assert (
            "--result/--reason are only allowed for checkpoint pauses; got kind=failure"
            in wrong.stderr
        )
        answered = taskctl(taskctl_env, "decide", pause_id, "--failure-reason", "known bug JIRA-1")
        assert answered.returncode == 0, answered.stderr
        assert answered.stdout.startswith(
            f"decided {pause_id} (failure, test_suite.py::test_broken)"
        )

        checkpoint_pause = wait_for(lambda: pending(store, "lp", "checkpoint"), timeout=10)
        assert isinstance(checkpoint_pause, dict)
        assert checkpoint_pause["task"] == "check the dashboard"
        assert stamps(tmp_path) == ["server up", "server down"]
        wrong = taskctl(
            taskctl_env, "decide", checkpoint_pause["pause_id"], "--failure-reason", "x"
        )
        assert wrong.returncode == 1
        assert "--failure-reason is only allowed for failure pauses; got kind=checkpoint" in (
            wrong.stderr
        )

        # Two people answer at the same moment: exactly one wins.
        outcomes: dict[str, str] = {}
        barrier = threading.Barrier(2)

        def answer(who: str) -> None:
            with StateStore(etcd.endpoint, prefix) as own:
                barrier.wait()
                try:
                    decide(own, checkpoint_pause["pause_id"], result="false", reason=f"by {who}")
                    outcomes[who] = "won"
                except PauseError as exc:
                    outcomes[who] = str(exc)

        threads = [threading.Thread(target=answer, args=(who,)) for who in ("ann", "bob")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes.values())[-1] == "won"
        (winner,) = [who for who, text in outcomes.items() if text == "won"]
        (loser_text,) = [text for text in outcomes.values() if text != "won"]
        assert loser_text == f"pause {checkpoint_pause['pause_id']} is no longer pending: decided"

        output, _ = run.communicate(timeout=30)
    finally:
        stop_process(run)
    assert run.returncode == 1, output
    assert "External failure reason: known bug JIRA-1" in output
    assert "1 failed, 1 passed" in output
    assert stamps(tmp_path)[-1] == f"decision resumed False by {winner}"

    again = taskctl(taskctl_env, "decide", pause_id, "--failure-reason", "late")
    assert again.returncode == 1
    assert f"pause {pause_id} is no longer pending: decided" in again.stderr
    everything = json.loads(taskctl(taskctl_env, "pauses", "-a", "--json").stdout)
    assert [(p["kind"], p["state"]) for p in everything] == [
        ("failure", "decided"),
        ("checkpoint", "decided"),
    ]
    assert everything[0]["failure_reason"] == "known bug JIRA-1"

    log_text = (tmp_path / "logs" / "lp" / "pytest.log").read_text()
    assert (
        f"live pause {pause_id} (failure) of test_suite.py::test_broken: resumed after" in log_text
    )
    assert "failure reason 'known bug JIRA-1'" in log_text
    events = [
        {a["key"]: a["value"] for a in event["attributes"]}
        for line in (tmp_path / "logs" / "lp" / "traces.jsonl").read_text().splitlines()
        for rs in json.loads(line)["resourceSpans"]
        for ss in rs["scopeSpans"]
        for span in ss["spans"]
        for event in span.get("events", ())
        if event["name"] == "taskctl.live_pause"
    ]
    assert [e["taskctl.pause.kind"]["stringValue"] for e in events] == ["failure", "checkpoint"]
    assert events[0]["taskctl.pause.failure_reason"]["stringValue"] == "known bug JIRA-1"
    assert events[1]["taskctl.pause.result"]["stringValue"] == "false"


def test_a_paused_process_killed_leaves_a_stale_pause(
    tmp_path: Path, store: StateStore, taskctl_env: dict[str, str]
) -> None:
    run = start_suite(tmp_path, taskctl_env, "dies", "-k", "approval")
    try:
        found = wait_for(lambda: pending(store, "dies", "checkpoint"), timeout=30)
        assert isinstance(found, dict)
    finally:
        run.send_signal(signal.SIGKILL)
        run.communicate()
    assert taskctl(taskctl_env, "pauses", "--json").stdout.strip() == "[]"
    (stale,) = json.loads(taskctl(taskctl_env, "pauses", "-a", "--json").stdout)
    assert (stale["pause_id"], stale["state"], stale["recorded_state"]) == (
        found["pause_id"],
        "stale",
        "pending",
    )
    refused = taskctl(taskctl_env, "decide", found["pause_id"], "--result", "true")
    assert refused.returncode == 1
    assert f"pause {found['pause_id']} belongs to a dead process and is stale" in refused.stderr


def fake_pause(store: StateStore, run_id: str, suffix: str, **fields: Any) -> str:
    """A pause record as a pausing process writes it (for runs on 'other hosts')."""
    pause_id = f"{run_id}.{suffix}"
    record = {
        "pause_id": pause_id,
        "run_id": run_id,
        "kind": "checkpoint",
        "nodeid": "t.py::test_x",
        "task": "look",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "created": time.time(),
        "timeout": 300.0,
        "state": "pending",
        **fields,
    }
    store.gateway.txn([put_op(store.keys(run_id).pause(pause_id), json.dumps(record))])
    return pause_id


def test_a_pause_elsewhere_is_stale_once_its_lease_expires(store: StateStore) -> None:
    lease = store.gateway.lease_grant(30)
    live = fake_pause(store, "far", "0000000a", host="ci-runner-7", pid=1, lease=lease)
    gone_lease = store.gateway.lease_grant(30)
    store.gateway.lease_revoke(gone_lease)
    gone = fake_pause(store, "far", "0000000b", host="ci-runner-7", pid=1, lease=gone_lease)
    states = {p["pause_id"]: p["state"] for p in list_pauses(store, "far", include_all=True)}
    assert states == {live: "pending", gone: "stale"}
    assert [p["pause_id"] for p in list_pauses(store)] == [live]
    with pytest.raises(PauseError, match="belongs to a dead process and is stale"):
        decide(store, gone, result="true")
    decided = decide(store, live, result="none", reason="fine")
    assert (decided["state"], decided["result"], decided["reason"]) == ("decided", None, "fine")
    store.gateway.lease_revoke(lease)


def test_pauses_of_every_run_in_text(
    store: StateStore, etcd: Any, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lease = store.gateway.lease_grant(30)
    first = fake_pause(store, "alpha", "00000001", lease=lease, kind="failure", task=FAILURE_TASK)
    second = fake_pause(store, "beta-2", "00000002", lease=lease, nodeid="u.py::test_y[a/b]")
    for n in range(50):  # results are skipped over, not read
        store.gateway.put(store.keys("alpha").result(f"t.py::test_{n}"), "{}")
    code = cli.main(["pauses", "--etcd", etcd.endpoint, "--prefix", prefix])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0].split() == ["PAUSE_ID", "AGE", "KIND", "NODEID", "TASK"]
    ages = [line.split()[1] for line in out[1:]]
    assert all(re.fullmatch(r"\d+s", age) for age in ages), ages
    assert out[1].split()[:4] == [first, ages[0], "failure", "t.py::test_x"]
    assert out[1].endswith(FAILURE_TASK)
    assert out[2].split() == [second, ages[1], "checkpoint", "u.py::test_y[a/b]", "look"]
    decide(store, first)
    code = cli.main(
        ["pauses", "-a", "--run-id", "alpha", "--etcd", etcd.endpoint, "--prefix", prefix]
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["PAUSE_ID", "STATE", "AGE"]
    assert out[1].split()[:2] == [first, "decided"]
    store.gateway.lease_revoke(lease)


@pytest.mark.parametrize(
    ("pause_id", "message"),
    [
        ("nope", "not a pause id: 'nope'"),
        ("run-1.0123abcd", "pause not found: run-1.0123abcd"),
    ],
)
def test_decide_unknown_pause(
    etcd: Any, prefix: str, capsys: pytest.CaptureFixture[str], pause_id: str, message: str
) -> None:
    code = cli.main(["decide", pause_id, "--etcd", etcd.endpoint, "--prefix", prefix])
    assert code == 1
    assert message in capsys.readouterr().err


def test_a_pause_times_out(ptr: pytest.Pytester, store: StateStore) -> None:
    ptr.makepyfile("def test_broken(): assert 1 == 2\n")
    started = time.monotonic()
    result = ptr.runpytest("--run-id", "slow", "--pause-on-failure", "--pause-timeout", "0.3")
    assert time.monotonic() - started < 10
    result.assert_outcomes(failed=1)
    assert "External failure reason" not in result.stdout.str()
    result.stdout.fnmatch_lines(["taskctl: live pause slow.* timed_out after 0.*"])
    (pause,) = list_pauses(store, "slow", include_all=True)
    assert pause["state"] == "timed_out"
    with pytest.raises(PauseError, match="is no longer pending: timed_out"):
        decide(store, pause["pause_id"], failure_reason="too late")


CANCEL_SUITE = """
from pytest_taskctl import checkpoint

def test_wait(tmp_path_factory):
    decision = checkpoint(task="wait for ever", timeout=60)
    with open("decision.json", "w") as f:
        f.write(repr(decision))

def test_after():
    pass
"""


def test_cancel_during_a_live_pause(ptr: pytest.Pytester, etcd: Any, prefix: str) -> None:
    ptr.makepyfile(CANCEL_SUITE)
    cancelled_at: list[float] = []

    def cancel_when_paused() -> None:
        with StateStore(etcd.endpoint, prefix) as other:
            wait_for(lambda: pending(other, "cx", "checkpoint"), timeout=30)
            cancelled_at.append(time.monotonic())
            other.set_flag("cx", "cancelled")

    helper = threading.Thread(target=cancel_when_paused)
    helper.start()
    result = ptr.runpytest("--run-id", "cx", "-rs")
    ended = time.monotonic()
    helper.join()
    assert ended - cancelled_at[0] < 5
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*was cancelled through etcd*"])
    result.stdout.re_match_lines([r"SKIPPED \[1\] \S+:\d+: taskctl: run cancelled$"])
    decision = (ptr.path / "decision.json").read_text()
    assert decision.startswith("ResumeDecision(outcome='cancelled'")
    with StateStore(etcd.endpoint, prefix) as other:
        (pause,) = list_pauses(other, "cx", include_all=True)
    assert pause["state"] == "cancelled"


def test_mock_answers_checkpoints_at_once(ptr: pytest.Pytester, store: StateStore) -> None:
    ptr.makepyfile(
        """
        from pytest_taskctl import ResumeDecision, checkpoint

        def test_module_function():
            expected = ResumeDecision("resumed", result=False, reason="Mock")
            assert checkpoint(task="approve") == expected

        def test_fixtures(live_pause, pause_run_id):
            assert pause_run_id == live_pause.run_id == "mocked"
            decision = live_pause.checkpoint(task="approve", timeout=1)
            assert decision == ResumeDecision("resumed", result=False, reason="Mock")
        """
    )
    result = ptr.runpytest("--run-id", "mocked", "--pause-checkpoint-mock", "false")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["taskctl: checkpoints answered at once: result false, reason Mock"]
    )
    assert list_pauses(store, "mocked", include_all=True) == []


def test_checkpoint_without_etcd_does_not_hang(pytester: pytest.Pytester) -> None:
    pytester.makeini(INNER_INI)
    pytester.makepyfile(
        """
        from pytest_taskctl import checkpoint

        def test_x():
            decision = checkpoint(task="approve", timeout=60)
            assert decision.outcome == "timed_out"
            assert "no live pause possible" in decision.reason
        """
    )
    started = time.monotonic()
    result = pytester.runpytest("--run-id", "lonely", "--taskctl-etcd", "127.0.0.1:1")
    result.assert_outcomes(passed=1)
    assert time.monotonic() - started < 10


def test_checkpoint_needs_a_running_test_and_a_task() -> None:
    with pytest.raises(RuntimeError, match="only be used while a pytest test is running"):
        checkpoint(task="approve")
    with pytest.raises(ValueError, match="must not be empty"):
        checkpoint(task="  ")
    assert ResumeDecision("timed_out").result is None


def test_bad_pause_timeout_is_a_usage_error(ptr: pytest.Pytester) -> None:
    ptr.makepyfile("def test_x(): pass\n")
    result = ptr.runpytest("--pause-timeout", "soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--pause-timeout: not a number of seconds: 'soon'*"])


def test_a_pause_just_written_is_read_back_after_etcd_restarts(
    etcd_factory: Any, prefix: str
) -> None:
    """The window the restart test below hits only under load, made certain: etcd goes
    down between the pause's write and its read back; the read waits for it (the pause
    went on instead of being given up)."""
    from pytest_taskctl.features.livepause.service import _read_back

    server = etcd_factory()
    with StateStore(server.endpoint, prefix) as store:
        key = f"{prefix}/runs/bumpy/pauses/p1"
        store.gateway.txn([put_op(key, "pending")])
        server.kill()
        back = threading.Timer(0.5, server.start)
        back.start()
        try:
            started = time.monotonic()
            read = _read_back(store.gateway, key)
        finally:
            back.join()
        assert read.as_dict() == {key: b"pending"}
        assert time.monotonic() - started >= 0.4, "it was read after the restart"


def test_a_pause_survives_an_etcd_restart(tmp_path: Path, etcd_factory: Any, prefix: str) -> None:
    server = etcd_factory()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}
    env.update(PYTEST_TASKCTL_ETCD=server.endpoint, PYTEST_TASKCTL_PREFIX=prefix)
    run = start_suite(tmp_path, env, "bumpy", "-k", "approval")
    try:
        with StateStore(server.endpoint, prefix) as before:
            found = wait_for(lambda: pending(before, "bumpy", "checkpoint"), timeout=30)
        assert isinstance(found, dict)
        server.kill()
        server.start()
        with StateStore(server.endpoint, prefix) as after:
            decide(after, found["pause_id"], result="false", reason="after the restart")
        output, _ = run.communicate(timeout=30)
    finally:
        stop_process(run)
    assert run.returncode == 0, output
    assert stamps(tmp_path)[-1] == "decision resumed False after the restart"
