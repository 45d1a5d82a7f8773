"""``taskctl`` against a real etcd: the console script in subprocesses, ``main()`` in-process.

Runs are either real pytest runs (``ptr.runpytest`` or a :class:`RunningSuite`
subprocess) or seeded by writing ``status``/``meta`` the way the plugin does.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_taskctl import StateStore, cli
from pytest_taskctl.etcd.gateway import EtcdGateway, EtcdUnavailable
from pytest_taskctl.etcd.server import EmbeddedEtcd, free_port, port_in_use
from pytest_taskctl.keys import RUN_ID_PATTERN, RunKeys

from .conftest import Etcdctl, stop_process, wait_for
from .suites import RunningSuite, suite_env

TASKCTL = Path(sys.executable).parent / "taskctl"

CliRunner = Callable[..., tuple[int, str, str]]


def taskctl(
    *args: str, env: dict[str, str], timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it."""
    return subprocess.run(
        [str(TASKCTL), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def run_cli(etcd: EmbeddedEtcd, prefix: str, capsys: pytest.CaptureFixture[str]) -> CliRunner:
    """``cli.main`` in-process with the test's etcd and prefix: ``(exit code, stdout, stderr)``."""

    def run(*args: str, connect: bool = True) -> tuple[int, str, str]:
        capsys.readouterr()
        extra = ["--etcd", etcd.endpoint, "--prefix", prefix] if connect else []
        code = cli.main([*args, *extra])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def seed(store: StateStore, run_id: str, status: str | None, **meta: Any) -> RunKeys:
    """Write a run the way the plugin does: ``<run>/status`` and ``<run>/meta``.

    A live run also holds ``<run>/lease`` (60 s): without it, it reads as a dead one.
    """
    keys = store.keys(run_id)
    if status in ("RUNNING", "PAUSED"):
        lease = store.gateway.lease_grant(60)
        store.gateway.put(keys.lease, json.dumps({"lease": lease}), lease)
    if status is not None:
        store.set_status(run_id, status)
    if meta:
        meta.setdefault("run_id", run_id)
        store.gateway.put(keys.meta, json.dumps(meta))
    return keys


def counts(
    passed: int = 0, failed: int = 0, skipped: int = 0, remaining: int = 0
) -> dict[str, int]:
    total = passed + failed + skipped + remaining
    return {
        "passed": passed,
        "failed": failed,
        "skipped": skipped,
        "remaining": remaining,
        "total": total,
    }


# -- pause / resume / cancel through the console script ---------------------------


def test_pause_resume_cancel_write_the_flag_keys(
    store: StateStore, etcdctl: Etcdctl, prefix: str, taskctl_env: dict[str, str]
) -> None:
    keys = seed(store, "nightly-42", "RUNNING", started=time.time(), counts=counts(remaining=3))

    paused = taskctl("pause", "nightly-42", env=taskctl_env)
    assert paused.returncode == 0, paused.stderr
    assert "paused nightly-42: no new test starts; running tests finish" in paused.stderr
    assert paused.stdout == ""
    assert etcdctl.get(keys.paused) == "1"

    resumed = taskctl("resume", "nightly-42", env=taskctl_env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed nightly-42" in resumed.stderr
    assert etcdctl.get(keys.paused) is None

    cancelled = taskctl("cancel", "nightly-42", env=taskctl_env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled nightly-42" in cancelled.stderr
    assert etcdctl.get(keys.cancelled) == "1"
    assert etcdctl.get(keys.status) == "RUNNING"  # taskctl never writes the plugin's keys


def test_resume_of_an_unpaused_run_says_so(run_cli: CliRunner, store: StateStore) -> None:
    seed(store, "r1", "RUNNING")
    code, _, err = run_cli("resume", "r1")
    assert code == 0
    assert "r1 was not paused; nothing to resume" in err


def test_cancel_of_a_paused_run_mentions_the_release(
    run_cli: CliRunner, store: StateStore, etcdctl: Etcdctl
) -> None:
    keys = seed(store, "r1", "PAUSED")
    etcdctl("put", keys.paused, "1")
    code, _, err = run_cli("cancel", "r1")
    assert code == 0
    assert "the pause is released" in err
    assert etcdctl.get(keys.cancelled) == "1"


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED"])
def test_an_ended_run_is_not_paused(
    store: StateStore, etcdctl: Etcdctl, taskctl_env: dict[str, str], status: str
) -> None:
    keys = seed(store, "done-1", status)
    if status == "COMPLETED":  # the console script once; the rest in-process would do too
        result = taskctl("pause", "done-1", env=taskctl_env)
        assert result.returncode == 1
        assert f"run done-1 already ended ({status}); nothing to pause" in result.stderr
    for action in ("pause", "resume", "cancel"):
        code = cli.main([action, "done-1", "--etcd", taskctl_env["PYTEST_TASKCTL_ETCD"],
                         "--prefix", taskctl_env["PYTEST_TASKCTL_PREFIX"]])  # fmt: skip
        assert code == 1
    assert etcdctl.get(keys.paused) is None
    assert etcdctl.get(keys.cancelled) is None


def test_unknown_run_is_exit_1(taskctl_env: dict[str, str], etcdctl: Etcdctl, prefix: str) -> None:
    for action in ("pause", "status"):
        result = taskctl(action, "no-such-run", env=taskctl_env)
        assert result.returncode == 1, result.stderr
        assert "no run 'no-such-run'" in result.stderr
        assert prefix in result.stderr
    assert etcdctl.get(f"{prefix}/runs/no-such-run/paused") is None


def test_a_run_with_only_results_exists(run_cli: CliRunner, store: StateStore) -> None:
    """Any key under <run>/ makes the run known (e.g. a run whose status write was lost)."""
    store.gateway.put(store.keys("r2").result("t.py::a"), "{}")
    code, out, _ = run_cli("status", "r2", "--json")
    assert code == 0
    assert json.loads(out)["status"] is None


def test_invalid_run_id_is_a_usage_error(taskctl_env: dict[str, str]) -> None:
    result = taskctl("pause", "../x", env=taskctl_env)
    assert result.returncode == 2
    assert "invalid run id '../x'" in result.stderr
    assert RUN_ID_PATTERN in result.stderr


@pytest.mark.parametrize("command", ["status", "resume", "cancel", "watch"])
@pytest.mark.parametrize("run_id", ["a/b", "", "with space", "-x"])
def test_invalid_run_id_is_exit_2_everywhere(run_cli: CliRunner, command: str, run_id: str) -> None:
    code, out, err = run_cli(command, "--", run_id, connect=False)
    assert code == 2
    assert out == ""
    assert "invalid run id" in err


def test_etcd_unreachable_is_exit_1_fast_and_hides_the_password(
    taskctl_env: dict[str, str],
) -> None:
    started = time.monotonic()
    result = taskctl(
        "status", "nightly-42", "--etcd", "127.0.0.1:1", "--user", "alice:s3cret-pw",
        env=taskctl_env,
    )  # fmt: skip
    assert time.monotonic() - started < 5
    assert result.returncode == 1
    assert "taskctl: etcd unreachable at 127.0.0.1:1 (user alice): connection refused" in (
        result.stderr
    )
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_bad_endpoint_is_a_usage_error(run_cli: CliRunner) -> None:
    code, _, err = run_cli("runs", "--etcd", "ftp://x:1", connect=False)
    assert code == 2
    assert "invalid etcd endpoint 'ftp://x:1' from --etcd" in err


def test_endpoint_from_etcdctl_environment(
    etcd: EmbeddedEtcd,
    prefix: str,
    store: StateStore,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed(store, "r1", "RUNNING")
    monkeypatch.delenv("PYTEST_TASKCTL_ETCD", raising=False)
    monkeypatch.setenv("ETCDCTL_ENDPOINTS", etcd.endpoint)
    monkeypatch.setenv("PYTEST_TASKCTL_PREFIX", prefix)
    assert cli.main(["status", "r1"]) == 0
    assert "RUNNING" in capsys.readouterr().out


# -- status and runs ---------------------------------------------------------------


def test_status_and_runs_json_of_real_runs(ptr: pytest.Pytester, run_cli: CliRunner) -> None:
    ptr.makepyfile(
        """
        import pytest
        def test_pass(): pass
        def test_fail(): assert False
        @pytest.mark.skip(reason="no")
        def test_skip(): pass
        """
    )
    ptr.runpytest("--run-id", "first-run").assert_outcomes(passed=1, failed=1, skipped=1)
    ptr.makepyfile("def test_one(): pass")
    ptr.runpytest("--run-id", "second-run").assert_outcomes(passed=1)

    code, out, _ = run_cli("status", "first-run", "--json")
    assert code == 0
    record = json.loads(out)
    assert record["run_id"] == "first-run"
    assert record["status"] == "FAILED"
    assert record["counts"] == {"passed": 1, "failed": 1, "skipped": 1, "remaining": 0, "total": 3}
    assert isinstance(record["started"], float)
    assert record["started"] <= record["ended"] <= time.time()
    assert record["host"] == socket.gethostname()
    assert record["pid"] == os.getpid()
    assert record["flags"] == {"paused": False, "cancelled": False}
    assert record["current"] == []
    assert record["exit_code"] == 1
    assert len(record["trace_id"]) == 32

    code, out, _ = run_cli("runs", "--json")
    assert code == 0
    runs = json.loads(out)
    assert [run["run_id"] for run in runs] == ["second-run", "first-run"]  # newest first
    assert runs[1] == record
    assert runs[0]["status"] == "COMPLETED"


def test_status_text_shows_flags_and_current_tests(
    run_cli: CliRunner, store: StateStore, etcdctl: Etcdctl
) -> None:
    keys = seed(
        store, "r1", "RUNNING", started=time.time() - 5, host="ci-7", pid=4321,
        counts=counts(passed=2, failed=1, remaining=4), current=["tests/test_api.py::test_get"],
    )  # fmt: skip
    etcdctl("put", keys.paused, "1")
    code, out, _ = run_cli("status", "r1")
    assert code == 0
    assert "RUNNING" in out
    assert "2 passed, 1 failed, 0 skipped, 4 remaining (of 7)" in out
    assert "paused: yes, cancelled: no" in out
    assert "pause requested" in out
    assert "tests/test_api.py::test_get" in out
    assert "ci-7 (pid 4321)" in out


def test_runs_text_lists_newest_first(run_cli: CliRunner, store: StateStore) -> None:
    now = time.time()
    seed(store, "old", "COMPLETED", started=now - 100, host="a", counts=counts(passed=5))
    seed(store, "new", "RUNNING", started=now, host="b", counts=counts(passed=1, remaining=2))
    seed(store, "bare", "INTERRUPTED")  # no meta: listed last
    code, out, _ = run_cli("runs")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "RUN", "ID", "STATUS", "PASSED", "FAILED", "SKIPPED", "REMAINING", "STARTED", "HOST",
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[1:]] == ["new", "old", "bare"]
    assert lines[1].split()[1:6] == ["RUNNING", "1", "0", "0", "2"]


def test_runs_on_an_empty_prefix(run_cli: CliRunner) -> None:
    assert run_cli("runs", "--json")[:2] == (0, "[]\n")
    code, out, err = run_cli("runs")
    assert (code, out) == (0, "")
    assert "no runs under" in err


def test_runs_finds_every_run_without_reading_results(
    run_cli: CliRunner, store: StateStore
) -> None:
    """Run ids come from a keys-only listing; only the run-level keys are read with values."""
    for run_id in ("foo", "foo-bar", "foo.1", "foo0", "zz"):  # '-' and '.' sort before '/'
        seed(store, run_id, "COMPLETED", started=time.time(), counts=counts(passed=1))
    result_value = "RESULT" * 50
    for n in range(7):
        store.gateway.put(store.keys("foo").result(f"t.py::test_{n}"), result_value)
    store.gateway.put(store.keys("only-results").result("t.py::a"), result_value)
    store.gateway.put(store.keys("leased").flag("lease"), "{}")
    responses: list[Any] = []

    class RecordingGateway(EtcdGateway):
        """The real gateway to the real etcd, keeping every response it got."""

        def call(self, method: str, data: Any, timeout: float | None = None) -> Any:
            responses.append(super().call(method, data, timeout))
            return responses[-1]

    class SmallPages(StateStore):
        RUN_IDS_PAGE = 3  # pages end inside foo's results

    gateway = RecordingGateway(store.gateway._client, store.settings)
    store = SmallPages(store.settings, store.prefix, gateway=gateway)
    assert store.run_ids() == ["foo-bar", "foo.1", "foo", "foo0", "leased", "only-results", "zz"]
    runs = store.list_runs()
    assert sorted(runs) == ["foo", "foo-bar", "foo.1", "foo0", "leased", "zz"]
    assert set(runs["foo"]) == {"status", "meta"} and set(runs["leased"]) == {"lease"}
    encoded = base64.b64encode(result_value.encode()).decode()
    assert encoded not in json.dumps(responses)

    code, out, _ = run_cli("runs", "--json")
    assert code == 0
    assert sorted(run["run_id"] for run in json.loads(out)) == sorted(runs)


def test_run_leaves_are_the_run_level_keys_and_nothing_else(store: StateStore) -> None:
    keys = seed(store, "r1", "RUNNING", started=time.time())
    for key in (keys.paused, keys.cancelled, keys.flag("lease"), keys.result("t.py::a"),
                keys.pause("r1.0000abcd")):  # fmt: skip
        store.gateway.put(key, "1")
    assert set(store.run_leaves("r1")) == {"status", "meta", "paused", "cancelled", "lease"}
    watched = {
        kv.key
        for start, end in store.leaf_ranges("r1")
        for kv in store.gateway.range(start, end).kvs
    }
    assert watched == {keys.status, keys.meta, keys.paused, keys.cancelled, keys.flag("lease")}
    assert store.run_leaves("nope") == {}


# -- watch --------------------------------------------------------------------------


def test_watch_takes_a_final_status_that_comes_after_the_lease_went(
    tmp_path: Path, store: StateStore, taskctl_env: dict[str, str]
) -> None:
    """A run revokes its lease right after its final status; the watch may see the
    lease go first (another watch stream). Made certain here: the lease goes, the
    final status comes 0.3 s later -- the run ended, it did not die."""
    keys = seed(store, "ending-1", "RUNNING", started=time.time(), counts=counts(remaining=1))
    out = tmp_path / "watch.out"
    with out.open("w") as stdout:
        watch = subprocess.Popen(
            [str(TASKCTL), "watch", "ending-1", "--interval", "0"],
            env=taskctl_env, stdout=stdout, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    try:
        wait_for(lambda: "ending-1 RUNNING" in out.read_text())
        store.gateway.delete(keys.lease)
        time.sleep(0.3)  # the gap between the two events is the point of the test
        store.set_status("ending-1", "COMPLETED")
        _, err = watch.communicate(timeout=10)
    finally:
        stop_process(watch)
    assert watch.returncode == 0, err
    assert "ending-1 COMPLETED" in out.read_text()
    assert "died" not in err


def test_watch_follows_a_real_run_to_its_end(tmp_path: Path, taskctl_env: dict[str, str]) -> None:
    suite = RunningSuite(
        tmp_path / "suite", suite_env(taskctl_env), ["one", "two", "three"], ["one"], "watched-1"
    ).start()
    watch_out = tmp_path / "watch.out"
    watch: subprocess.Popen[str] | None = None
    try:
        suite.wait_started("one")
        with watch_out.open("w") as out:
            watch = subprocess.Popen(
                [str(TASKCTL), "watch", "watched-1", "--interval", "0"],
                env=taskctl_env, stdout=out, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
        wait_for(lambda: "watched-1 RUNNING: 0 passed" in watch_out.read_text())

        assert taskctl("pause", "watched-1", env=taskctl_env).returncode == 0
        wait_for(lambda: "pause requested" in watch_out.read_text())
        suite.wait_seen("pause")  # the run took the flag in, not only taskctl watch
        suite.release("one")
        wait_for(lambda: "watched-1 PAUSED: 1 passed" in watch_out.read_text())
        assert taskctl("resume", "watched-1", env=taskctl_env).returncode == 0

        output = suite.finish()
        assert suite.returncode == 0, output
        _, err = watch.communicate(timeout=10)
        assert watch.returncode == 0, err
    finally:
        suite.kill()
        if watch is not None:
            stop_process(watch)
            watch.wait()
    lines = watch_out.read_text().splitlines()
    assert lines[-1].endswith(
        "watched-1 COMPLETED: 3 passed, 0 failed, 0 skipped, 0 remaining (exit 0)"
    ), lines
    assert len(lines) == len({line[9:] for line in lines})  # one line per change


def test_watch_of_an_ended_run_prints_once_and_exits_0(
    run_cli: CliRunner, store: StateStore
) -> None:
    seed(store, "r1", "FAILED", started=time.time() - 3, ended=time.time(), exit_code=1,
         counts=counts(passed=2, failed=1))  # fmt: skip
    code, out, _ = run_cli("watch", "r1")
    assert code == 0
    assert out.splitlines()[-1].endswith(
        "r1 FAILED: 2 passed, 1 failed, 0 skipped, 0 remaining (exit 1)"
    )

    code, out, _ = run_cli("watch", "r1", "--json")
    assert code == 0
    assert json.loads(out)["status"] == "FAILED"


def test_watch_unknown_run_is_exit_1(run_cli: CliRunner) -> None:
    code, _, err = run_cli("watch", "nope")
    assert code == 1
    assert "no run 'nope'" in err


def test_watch_gives_up_when_the_local_pytest_process_is_gone(
    run_cli: CliRunner, store: StateStore
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    seed(store, "killed-1", "RUNNING", started=time.time(), host=socket.gethostname(),
         pid=dead.pid, counts=counts(passed=1, remaining=1))  # fmt: skip
    started = time.monotonic()
    code, _, err = run_cli("watch", "killed-1", "--interval", "0")
    assert code == 1
    assert f"pid {dead.pid}" in err and "is gone" in err
    assert time.monotonic() - started < 5


def _proc_state(pid: int) -> str:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rfind(")") + 2 :].split()[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("how", ["zombie", "pid reused"])
def test_watch_gives_up_on_a_zombie_or_a_reused_pid(
    taskctl_env: dict[str, str], store: StateStore, how: str
) -> None:
    """A pid that still answers kill(0) is gone too when it is a zombie or another process."""
    script = "pass" if how == "zombie" else "import time; time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", script])  # not waited for: a zombie at exit
    try:
        meta: dict[str, Any] = {"host": socket.gethostname(), "pid": child.pid}
        if how == "zombie":
            wait_for(lambda: _proc_state(child.pid) == "Z")
        else:
            meta["proc_start"] = 1  # the run's process started long before this one
        seed(store, "gone-1", "RUNNING", started=time.time(), counts=counts(remaining=1), **meta)
        watch = taskctl("watch", "gone-1", "--interval", "0", env=taskctl_env, timeout=15)
        assert watch.returncode == 1
        assert f"pid {child.pid}" in watch.stderr and "is gone" in watch.stderr
    finally:
        child.kill()
        child.wait()


def test_watch_on_a_terminal_draws_a_live_panel(
    etcd: EmbeddedEtcd, prefix: str, store: StateStore
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    seed(store, "r1", "COMPLETED", started=time.time() - 2, ended=time.time(), exit_code=0,
         counts=counts(passed=1, skipped=1))  # fmt: skip
    args = cli.build_parser().parse_args(
        ["watch", "r1", "--interval", "0", "--etcd", etcd.endpoint, "--prefix", prefix]
    )
    out, err = Terminal(), io.StringIO()
    ctx = cli.Context(args, out, err)
    try:
        assert args.handler(ctx) == 0
    finally:
        ctx.close()
    text = out.getvalue()
    assert "\x1b[" in text  # drawn with rich, not plain lines
    assert "r1" in text and "COMPLETED" in text
    assert "1 passed" in text


# -- server ------------------------------------------------------------------------


def _connects(endpoint: str) -> bool:
    try:
        with StateStore(endpoint) as store:
            store.run_ids()  # the store connects on first use
    except EtcdUnavailable:
        return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_server_runs_etcd_until_interrupted(tmp_path: Path, signum: int) -> None:
    port = free_port()
    stderr_path = tmp_path / "server.err"
    with stderr_path.open("w") as stderr:
        server = subprocess.Popen(
            [str(TASKCTL), "server", "--port", str(port), "--data-dir", str(tmp_path / "etcd")],
            stderr=stderr, stdout=subprocess.DEVNULL, text=True,
        )  # fmt: skip
    try:
        wait_for(lambda: _connects(f"127.0.0.1:{port}") or server.poll() is not None, timeout=20)
        assert server.poll() is None, stderr_path.read_text()
        ready = f"etcd ready at 127.0.0.1:{port} (data {tmp_path / 'etcd'}); Ctrl-C to stop"
        # The port answers a moment before the health check passes and the line is printed.
        wait_for(lambda: ready in stderr_path.read_text(), timeout=10)
        server.send_signal(signum)
        assert server.wait(timeout=15) == 0, stderr_path.read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert not port_in_use(port)
    assert (tmp_path / "etcd" / "member").is_dir()


def test_server_refuses_a_port_in_use(etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(TASKCTL), "server", "--port", str(etcd.port), "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"port {etcd.port} on 127.0.0.1 is already in use" in result.stderr
    assert not (tmp_path / "d").exists()


# -- parser ------------------------------------------------------------------------


def test_a_new_subcommand_is_one_registry_entry(
    etcd: EmbeddedEtcd, prefix: str, store: StateStore
) -> None:
    """How `pauses` and `decide` plug in: shared etcd options, --json and run id come free."""
    seen: dict[str, Any] = {}

    def hello(ctx: cli.Context) -> int:
        seen.update(status=ctx.store.get_status(ctx.args.run_id), json=ctx.args.json)
        return 0

    seed(store, "r1", "RUNNING")
    parser = cli.build_parser(
        [*cli.default_commands(), cli.Command("hello", "say hello", hello, cli.add_run_id,
                                               prints_data=True)]
    )  # fmt: skip
    args = parser.parse_args(["hello", "r1", "--json", "--etcd", etcd.endpoint, "--prefix", prefix])
    ctx = cli.Context(args, io.StringIO(), io.StringIO())
    try:
        assert args.handler(ctx) == 0
    finally:
        ctx.close()
    assert seen == {"status": "RUNNING", "json": True}


def test_help_and_missing_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("server", "runs", "status", "pause", "resume", "cancel", "watch"):
        assert name in out
    assert cli.main([]) == 2
    assert "required" in capsys.readouterr().err


def test_taskctl_does_not_load_the_pytest_plugin() -> None:
    """`taskctl` starts without the plugin's modules (pauses/decide included)."""
    code = (
        "import sys, contextlib, io\n"
        "from pytest_taskctl import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.main(['--help'])\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('pytest_taskctl.'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(done.stdout.split())
    assert "pytest_taskctl.features.pauses" in loaded
    plugin_modules = {"livepause", "resume", "control", "run", "plugin", "groups", "logs"}
    assert not loaded & {f"pytest_taskctl.{name}" for name in plugin_modules}
