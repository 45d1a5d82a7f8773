"""Concurrent groups on threads: ``--thread``, ``--group-unit``, ``@pytest.mark.group``.

Inner suites prove concurrency without timing guesses: tests that must run
at once wait on a shared ``threading.Barrier`` (it breaks after its timeout if
the runner does not start them together), and every test appends start/end
events to ``events.jsonl``, from which order and the most tests running at
once are computed.
"""

from __future__ import annotations

import json
import re
import signal
import textwrap
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_taskctl.etcd.store import StateStore
from pytest_taskctl.features.groups import Schedule, group_keys, runs_alone
from pytest_taskctl.options import GROUP_MARKER

from .conftest import INNER_INI, Etcdctl, results_of, wait_for
from .suites import RunningSuite

#: Inner conftest: start/end events of every test, barriers as session fixtures.
EVENTS_CONFTEST = """
import json, threading, time
from pathlib import Path
import pytest

_EVENTS = Path(__file__).parent / "events.jsonl"
_LOCK = threading.Lock()

def record(kind, name):
    with _LOCK, _EVENTS.open("a") as f:
        f.write(json.dumps({"kind": kind, "name": name, "t": time.monotonic()}) + "\\n")

@pytest.fixture(autouse=True)
def _events(request):
    record("start", request.node.nodeid)
    yield
    record("end", request.node.nodeid)

@pytest.fixture(scope="session")
def together():
    barriers = {}
    def wait(key, parties):
        with _LOCK:
            barrier = barriers.setdefault(key, threading.Barrier(parties, timeout=10))
        barrier.wait()
    return wait
"""


def events(path: Path) -> list[dict[str, Any]]:
    lines = (path / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def most_at_once(recorded: list[dict[str, Any]], prefix: str = "") -> int:
    running = most = 0
    for event in recorded:
        if event["name"].startswith(prefix) and event["kind"] in ("start", "end"):
            running += 1 if event["kind"] == "start" else -1
            most = max(most, running)
    return most


def starts(recorded: list[dict[str, Any]], prefix: str = "") -> list[str]:
    return [e["name"] for e in recorded if e["kind"] == "start" and e["name"].startswith(prefix)]


def module(name: str, count: int, body: str = "pass", header: str = "") -> str:
    tests = "".join(
        f"def test_{i}(together):\n" + textwrap.indent(body.format(i=i), "    ") + "\n"
        for i in range(count)
    )
    return header + "\n" + tests


# -- options and their errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--thread", "0"], "ERROR: --thread 0: the number of threads must be 1 or more (1 = off)"),
        (["--thread", "-2"], "ERROR: --thread -2: the number of threads must be 1 or more*"),
        (
            ["--thread", "2", "-n", "2"],
            "ERROR: --thread 2 cannot be combined with -n 2 (pytest-xdist)*",
        ),
        (["--thread", "2", "--pdb"], "ERROR: --pdb/--trace cannot be used with --thread 2*"),
        (["--thread", "two"], "*argument --thread: invalid int value: 'two'*"),
        (["--group-unit", "package"], "*argument --group-unit: invalid choice: 'package'*"),
    ],
)
def test_bad_options_are_usage_errors(ptr: pytest.Pytester, args: list[str], message: str) -> None:
    ptr.makepyfile("def test_a(): pass\n")
    result = ptr.runpytest("--run-id", "bad", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_bad_ini_unit_and_bad_marker_are_usage_errors(ptr: pytest.Pytester) -> None:
    ptr.makeini(INNER_INI + "group-unit = package\n")
    ptr.makepyfile("def test_a(): pass\n")
    result = ptr.runpytest("--thread", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: invalid ini value group-unit = 'package': use module, class or function"]
    )
    ptr.makeini(INNER_INI)
    ptr.makepyfile("import pytest\n@pytest.mark.group(name='db')\ndef test_a(): pass\n")
    result = ptr.runpytest("--thread", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: @pytest.mark.group takes group names as positional arguments*['name']*test_a*"]
    )


def test_marker_is_registered_and_header_shows_threads(ptr: pytest.Pytester) -> None:
    ptr.makepyfile("import pytest\n@pytest.mark.group('x')\ndef test_a(): pass\n")
    result = ptr.runpytest("--strict-markers", "--thread", "3", "--group-unit", "class")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["taskctl: 3 threads, groups per class (one test at a time per group)"]
    )
    assert ptr.runpytest("--strict-markers").ret == 0  # registered without --thread too


# -- which groups a test belongs to --------------------------------------------------------


def collect(pytester: pytest.Pytester, source: str) -> list[pytest.Item]:
    """Items of ``source``, collected without running (and without the taskctl run)."""
    pytester.makeini(INNER_INI)
    args = ("-p", "no:taskctl", "-o", f"markers={GROUP_MARKER}")
    module = pytester.getmodulecol(textwrap.dedent(source), configargs=args)
    return pytester.genitems([module])


SEED_EXAMPLE = """
import pytest
pytestmark = pytest.mark.group("g5")

def test1(): pass

@pytest.mark.group("g1", "g4")
def test2(): pass

@pytest.mark.group("g1", "g2")
class Test_xxxx:
    def test3(self): pass

    @pytest.mark.group("g3")
    def test4(self): pass

@pytest.mark.group()
def test5(): pass
"""


def test_markers_replace_the_unit_rule_and_are_inherited(pytester: pytest.Pytester) -> None:
    items = collect(pytester, SEED_EXAMPLE)
    keys = {item.name: group_keys(item, "module") for item in items}
    assert keys == {
        "test1": (("group", "g5"),),
        "test2": (("group", "g1"), ("group", "g4")),
        "test3": (("group", "g1"), ("group", "g2")),
        "test4": (("group", "g3"),),
        "test5": (),
    }


def test_group_units(pytester: pytest.Pytester) -> None:
    items = collect(
        pytester,
        "class TestA:\n def test_1(self): pass\n def test_2(self): pass\ndef test_3(): pass\n",
    )
    module_id = items[0].parent.parent.nodeid  # type: ignore[union-attr]
    class_id = items[0].parent.nodeid  # type: ignore[union-attr]
    assert [group_keys(i, "module") for i in items] == [(("unit", module_id),)] * 3
    assert [group_keys(i, "class") for i in items] == [(("unit", class_id),)] * 2 + [()]
    assert [group_keys(i, "function") for i in items] == [(), (), ()]


def test_tests_sharing_a_parametrized_broad_fixture_share_a_group(
    pytester: pytest.Pytester,
) -> None:
    items = collect(
        pytester,
        """
        import pytest
        @pytest.fixture(scope="module", params=[1, 2])
        def backend(request): return request.param
        def test_a(backend): pass
        @pytest.mark.parametrize("n", [1, 2])
        def test_b(n): pass
        def test_c(capsys): pass
        """,
    )
    by_name = {item.name: item for item in items}
    module_id = by_name["test_a[1]"].parent.nodeid  # type: ignore[union-attr]
    shared = ("param", "backend", module_id)
    assert group_keys(by_name["test_a[2]"], "function") == (shared,)
    assert group_keys(by_name["test_b[1]"], "function") == ()
    assert runs_alone(by_name["test_c"]) and not runs_alone(by_name["test_b[1]"])


def test_schedule_heads_of_all_groups_and_alone_tests() -> None:
    # 0:a 1:b 2:a+b 3:a 4:alone 5:b
    schedule = Schedule(
        [("a",), ("b",), ("a", "b"), ("a",), (), ("b",)],
        [False, False, False, False, True, False],
    )
    assert (schedule.take(), schedule.take()) == (0, 1)
    schedule.done(0)
    schedule.done(1)  # 2 was waiting for both groups
    assert schedule.take() == 2
    assert schedule.next_after(2) == 3
    schedule.done(2)
    assert schedule.take() == 3  # 4 must run alone: it waits until 3 is done, 5 waits for 4
    schedule.done(3)
    assert schedule.take() == 4
    schedule.done(4)
    assert schedule.take() == 5
    schedule.done(5)
    assert schedule.take() is None
    assert schedule.most_running == 2


def test_schedule_lines_tests_up_as_they_come() -> None:
    """``--join``: tests are lined up as claimed; a group's line keeps line-up order."""
    heard: list[int] = []
    schedule = Schedule(
        [("a",), ("a",), (), ("a",)], [False] * 4, lined_up=(), on_line_up=heard.extend
    )
    assert schedule.idle and schedule.take(timeout=0.01) is None
    schedule.line_up([3, 1])  # 3 came back (requeued) before 1 was claimed
    assert heard == [3, 1] and schedule.waiting == 2
    assert schedule.take(timeout=0) == 3  # first in its group's line, though 1 sorts first
    assert not schedule.startable and schedule.take(timeout=0.01) is None
    schedule.line_up([2], alone=True)
    assert not schedule.startable  # alone: waits until 3 has ended
    woken: list[int | None] = []
    waiter = threading.Thread(target=lambda: woken.append(schedule.take(timeout=30)))
    waiter.start()
    schedule.line_up([0])  # a change, but nothing may start: the waiter gives up at once
    waiter.join(10)
    assert woken == [None]
    schedule.done(3)
    assert schedule.take(timeout=0) == 1  # among ready tests, collection order
    assert schedule.take(timeout=0.01) is None  # 2 runs alone, 0 waits behind 1
    schedule.done(1)
    assert schedule.take(timeout=0) == 0  # collection order again; 2 waits to run alone
    assert schedule.take(timeout=0.01) is None
    schedule.done(0)
    assert schedule.take(timeout=0) == 2
    schedule.done(2)
    assert schedule.idle and schedule.take() is None


# -- running ------------------------------------------------------------------------------


def test_groups_keep_order_and_run_at_once_up_to_n_threads(ptr: pytest.Pytester) -> None:
    ptr.makeconftest(EVENTS_CONFTEST)
    body = "together('first', 3) if {i} == 0 else None\nimport time; time.sleep(0.02)"
    for name in ("test_a", "test_b", "test_c", "test_d"):
        ptr.makepyfile(**{name: module(name, 4, body if name != "test_d" else "pass")})
    result = ptr.runpytest("--thread", "3")
    result.assert_outcomes(passed=16)
    recorded = events(ptr.path)
    for name in ("test_a", "test_b", "test_c", "test_d"):
        assert starts(recorded, name) == [f"{name}.py::test_{i}" for i in range(4)]
        assert most_at_once(recorded, name) == 1  # one at a time within a group
    assert most_at_once(recorded) == 3  # and exactly N across groups


def test_two_groups_use_both_threads_at_every_step(ptr: pytest.Pytester) -> None:
    """The original plugin's defect: with n groups only n-1 threads worked."""
    ptr.makeconftest(EVENTS_CONFTEST)
    for name in ("test_a", "test_b"):
        ptr.makepyfile(**{name: module(name, 3, "together({i}, 2)")})
    result = ptr.runpytest("--thread", "2")
    result.assert_outcomes(passed=6)  # every pair met at its barrier


def test_a_test_in_two_groups_waits_for_both(ptr: pytest.Pytester) -> None:
    ptr.makeconftest(EVENTS_CONFTEST)
    ptr.makepyfile(
        """
        import pytest
        @pytest.mark.group("a")
        def test_x(together): together("xy", 2)
        @pytest.mark.group("b")
        def test_y(together): together("xy", 2)
        @pytest.mark.group("a", "b")
        def test_z(together): pass
        @pytest.mark.group()
        def test_free(together): pass
        """
    )
    result = ptr.runpytest("--thread", "3")
    result.assert_outcomes(passed=4)
    order = [(e["kind"], e["name"].split("::")[1]) for e in events(ptr.path)]
    z_start = order.index(("start", "test_z"))
    assert order.index(("end", "test_x")) < z_start and order.index(("end", "test_y")) < z_start


FIXTURES_CONFTEST = (
    EVENTS_CONFTEST
    + """
import time

@pytest.fixture(scope="session")
def login():
    record("setup", "login")
    yield "L"
    record("teardown", "login")

@pytest.fixture(scope="module")
def conn(request):
    time.sleep(0.1)  # a slow setup widens any race between threads
    record("setup", "conn " + request.module.__name__)
    yield request.module.__name__
    record("teardown", "conn " + request.module.__name__)

@pytest.fixture(scope="class")
def account(request):
    record("setup", "account " + request.cls.__name__)
    return request.cls.__name__

@pytest.fixture
def own(request):
    return request.node.nodeid
"""
)


def fixture_module(call: str) -> str:
    return "".join(
        f"""
def test_{i}(login, conn, own, request, together):
    {call.format(i=i)}
    assert own == request.node.nodeid  # a function-scoped fixture is never shared
    assert conn == __name__  # a conftest module fixture: one instance per module
"""
        for i in range(3)
    )


CLASS_MODULE = """
class TestK:
    def test_k1(self, account, together):
        {call}
    def test_k2(self, account, together):
        {call}
"""


@pytest.mark.parametrize("unit", ["module", "function"])
def test_broad_fixtures_are_set_up_once_and_torn_down_after_their_last_test(
    ptr: pytest.Pytester, unit: str
) -> None:
    ptr.makeconftest(FIXTURES_CONFTEST)
    if unit == "module":  # the first test of each module at once: 3 threads
        call, threads = "together('first', 3) if {i} == 0 else None", "3"
    else:  # all 9 tests at once, three of them asking for each module's conn
        call, threads = "together('all', 9)", "9"
    for name in ("test_a", "test_b", "test_c"):
        ptr.makepyfile(**{name: fixture_module(call)})
    # with unit function, the two tests of one class at once
    class_call = "together('class', 2)" if unit == "function" else "pass"
    ptr.makepyfile(test_k=CLASS_MODULE.format(call=class_call))
    result = ptr.runpytest("--thread", threads, "--group-unit", unit)
    result.assert_outcomes(passed=11)
    recorded = events(ptr.path)
    setups = [e["name"] for e in recorded if e["kind"] == "setup"]
    assert sorted(setups) == ["account TestK", "conn test_a", "conn test_b", "conn test_c", "login"]
    names = [(e["kind"], e["name"]) for e in recorded]
    for name in ("test_a", "test_b", "test_c"):
        last_end = max(i for i, (k, n) in enumerate(names) if k == "end" and n.startswith(name))
        teardown = names.index(("teardown", f"conn {name}"))
        assert last_end < teardown < names.index(("teardown", "login"))
    assert names.count(("teardown", "login")) == 1
    assert names[-1] == ("teardown", "login")  # after the last test, once
    assert most_at_once(recorded) == int(threads)


def test_stop_on_first_failure_tears_down_once(ptr: pytest.Pytester) -> None:
    ptr.makeconftest(FIXTURES_CONFTEST)
    ptr.makepyfile(test_a="def test_1(login): assert 0\ndef test_2(login): pass\n")
    ptr.makepyfile(test_b="def test_1(login): pass\ndef test_2(login): pass\n")
    result = ptr.runpytest("--thread", "2", "-x")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    recorded = events(ptr.path)
    assert "test_a.py::test_2" not in starts(recorded)
    kinds = [(e["kind"], e["name"]) for e in recorded]
    assert kinds.count(("setup", "login")) == kinds.count(("teardown", "login")) == 1


REPORTED = """
import logging, pytest
@pytest.mark.parametrize("n", range(3))
def test_{name}(n, together, request):
    print("out-{name}-%d-before" % n)
    logging.getLogger("inner").warning("log-{name}-%d-before", n)
    together(n, 1 if request.config.getoption("lf") else 3)
    print("out-{name}-%d-after" % n)
    logging.getLogger("inner").warning("log-{name}-%d-after", n)
    assert n != {fail}
"""


CAPSYS_TEST = """
def test_capsys(capsys):
    print("x")
    assert capsys.readouterr().out == "x\\n"
"""


def test_reports_verbose_junit_and_last_failed(ptr: pytest.Pytester) -> None:
    ptr.makeconftest(EVENTS_CONFTEST)
    for name, fail in (("a", 1), ("b", 2), ("c", -1)):
        ptr.makepyfile(**{f"test_{name}": REPORTED.format(name=name, fail=fail)})
    ptr.makepyfile(test_d=CAPSYS_TEST)
    result = ptr.runpytest("--thread", "3", "-v", "--junitxml=junit.xml", "-o", "junit_logging=all")
    result.assert_outcomes(passed=8, failed=2)
    lines = [line for line in result.outlines if re.match(r"test_\w+\.py::", line)]
    assert len(lines) == 10  # one complete line per test
    assert all(re.fullmatch(r"\S+ (PASSED|FAILED) +\[ *\d+%\]", line) for line in lines), lines
    result.stdout.re_match_lines([r"test_a\.py::test_a\[1\] FAILED\s+\[\s*\d+%\]$"])
    result.stdout.re_match_lines([r"test_d\.py::test_capsys PASSED\s+\[\s*\d+%\]$"])
    text = result.stdout.str()
    for name, n in (("a", 1), ("b", 2)):
        section = text.split(f"_ test_{name}[{n}] _")[1].split("\n_")[0]
        expected = {
            f"{kind}-{name}-{n}-{when}" for kind in ("out", "log") for when in ("before", "after")
        }
        found = {word for word in section.split() if word.startswith(("out-", "log-"))}
        assert found == expected, section  # nothing from the tests running beside it
    cases = {c.get("name"): c for c in ET.parse(ptr.path / "junit.xml").getroot().iter("testcase")}
    failed = {name for name, case in cases.items() if case.find("failure") is not None}
    assert failed == {"test_a[1]", "test_b[2]"}
    system_out = cases["test_c[0]"].findtext("system-out") or ""
    assert "out-c-0-after" in system_out and "out-c-1" not in system_out

    rerun = ptr.runpytest("--thread", "3", "--lf", "-v")
    rerun.stdout.fnmatch_lines(["*run-last-failure: rerun previous 2 failures*"])
    assert sorted(line.split()[0] for line in rerun.outlines if "::" in line.split(" ")[0]) == [
        "test_a.py::test_a[1]",
        "test_b.py::test_b[2]",
    ]


def test_configured_warning_filters_apply_on_every_thread(ptr: pytest.Pytester) -> None:
    ptr.makeini(INNER_INI + "filterwarnings = error\n")
    ptr.makepyfile(
        """
        import warnings, pytest
        @pytest.mark.parametrize("n", range(4))
        def test_warns(n):
            warnings.warn("boom %d" % n, UserWarning)
        @pytest.mark.filterwarnings("ignore::UserWarning")
        def test_ignored():
            warnings.warn("quiet", UserWarning)
        """
    )
    result = ptr.runpytest("--thread", "4", "--group-unit", "function")
    result.assert_outcomes(failed=4, passed=1)
    result.stdout.fnmatch_lines(["*UserWarning: boom 3*"])


TRACED = """
import logging, pytest
from pytest_taskctl import get_traceid

@pytest.fixture
def fixture_traceid():
    return get_traceid()

@pytest.mark.parametrize("n", range(3))
def test_t(n, together, fixture_traceid, traceid):
    before = get_traceid()
    together("t", 3)
    logging.getLogger("inner").info("traced %d %s", n, get_traceid())
    assert get_traceid() == before == fixture_traceid == traceid
"""


def test_each_thread_sees_its_own_traceid_in_spans_and_log_lines(ptr: pytest.Pytester) -> None:
    ptr.makeconftest(EVENTS_CONFTEST)
    ptr.makepyfile(test_traced=TRACED)
    result = ptr.runpytest(
        "--thread",
        "3",
        "--group-unit",
        "function",
        "--run-id",
        "traced",
        "--taskctl-log-level=INFO",
    )
    result.assert_outcomes(passed=3)
    run_dir = ptr.path / "logs" / "traced"
    spans = {
        span["name"]: span["traceId"]
        for line in (run_dir / "traces.jsonl").read_text().splitlines()
        for resource in json.loads(line)["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    }
    logged = {}
    for line in (run_dir / "pytest.log").read_text().splitlines():
        if " - traced " in line:
            bracketed = line.split(" - [")[1].split("] - ")[0]
            _, n, traceid = line.rsplit(" ", 2)
            assert bracketed == traceid  # the record's trace id is the test's
            logged[f"test_traced.py::test_t[{n}]"] = traceid
    assert len(set(logged.values())) == 3
    assert all(spans[nodeid] == traceid for nodeid, traceid in logged.items())


# -- pause, cancel, interrupt: etcdctl against a pytest subprocess on threads ------------------


MakeSuite = Callable[[list[str], list[str], str], RunningSuite]


@pytest.fixture
def threaded_suite(suite: Callable[..., RunningSuite]) -> MakeSuite:
    def make(names: list[str], gates: list[str], run_id: str) -> RunningSuite:
        return suite(names, gates, run_id, "--thread", "2", "--group-unit", "function")

    return make


NAMES = ["one", "two", "three", "four", "five"]


def test_pause_holds_every_thread_then_resume(
    threaded_suite: MakeSuite, etcdctl: Etcdctl, prefix: str
) -> None:
    run = threaded_suite(NAMES, ["one", "two"], "t-pause")
    run.wait_started("one")
    run.wait_started("two")  # both threads busy
    etcdctl("put", f"{prefix}/runs/t-pause/paused", "1")
    run.wait_seen("pause")
    run.release("one")
    run.release("two")  # running tests are never interrupted
    wait_for(lambda: run.log_text.count("run paused through etcd") == 2)  # both threads
    wait_for(lambda: etcdctl.get(f"{prefix}/runs/t-pause/status") == "PAUSED")
    assert run.ended("one") and run.ended("two")
    assert not any(run.started(name) for name in ("three", "four", "five"))

    etcdctl("del", f"{prefix}/runs/t-pause/paused")
    output = run.finish()
    assert run.returncode == 0, output
    assert "5 passed" in output
    assert all(run.ended(name) for name in NAMES)
    assert etcdctl.get(f"{prefix}/runs/t-pause/status") == "COMPLETED"


def test_cancel_skips_the_rest_on_every_thread(
    threaded_suite: MakeSuite, etcdctl: Etcdctl, prefix: str
) -> None:
    run = threaded_suite(NAMES, ["one", "two"], "t-cancel")
    run.wait_started("one")
    run.wait_started("two")
    etcdctl("put", f"{prefix}/runs/t-cancel/cancelled", "1")
    run.wait_seen("cancel")
    run.release("one")
    run.release("two")
    output = run.finish()
    assert run.returncode == 2, output
    assert "2 passed, 3 skipped" in output
    assert output.count("taskctl: run cancelled") >= 1
    assert not any(run.started(name) for name in ("three", "four", "five"))
    assert etcdctl.get(f"{prefix}/runs/t-cancel/status") == "CANCELLED"


def test_sigterm_lets_running_tests_end_and_starts_nothing(
    threaded_suite: MakeSuite, etcdctl: Etcdctl, prefix: str, store: StateStore, tmp_path: Path
) -> None:
    """The session ends only after each running test's protocol has returned, the
    plugin's wrapper around it included: that is where the test is recorded (a slow
    ``pytest_taskctl_test_finished`` makes the gap wide)."""
    (tmp_path / "conftest.py").write_text(
        "import time\n"
        "def pytest_taskctl_test_finished(run, nodeid, outcome):\n"
        "    time.sleep(0.3)\n"
    )
    run = threaded_suite(NAMES, ["one", "two"], "t-term")
    run.wait_started("one")
    run.wait_started("two")
    run.signal(signal.SIGTERM)
    wait_for(lambda: "interrupted; waiting for 2 running tests" in run.log_text)
    run.release("one")
    run.release("two")
    output = run.finish()
    assert run.returncode == 2, output
    assert run.ended("one") and run.ended("two")
    assert not run.started("three")
    assert etcdctl.get(f"{prefix}/runs/t-term/status") == "INTERRUPTED"
    results = {nodeid: r["outcome"] for nodeid, r in results_of(store, "t-term").items()}
    assert results == {"test_suite.py::test_one": "passed", "test_suite.py::test_two": "passed"}


def test_session_fixture_outlives_a_module_still_tearing_down(ptr: pytest.Pytester) -> None:
    """Ending the last test elsewhere must not tear the session down under a live module."""
    ptr.makeconftest(
        """
import threading, pytest
order = []
session_ending = threading.Event()

@pytest.fixture(scope="session")
def login():
    yield
    session_ending.set()
    order.append("teardown login")

@pytest.fixture(scope="module")
def slow_conn(login):
    yield
    # Give a wrong implementation the chance to tear the session down meanwhile.
    session_ending.wait(1.0)
    order.append("teardown slow_conn")

def pytest_sessionfinish(session):
    assert order == ["teardown slow_conn", "teardown login"], order
"""
    )
    ptr.makepyfile(
        test_a="def test_a(slow_conn): pass\n",
        test_b="import time\ndef test_b(login): time.sleep(0.2)\n",
    )
    result = ptr.runpytest("--thread", "2", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    assert result.ret == 0, result.stdout.str()


def test_failures_on_several_threads_parse_source_one_at_a_time(ptr: pytest.Pytester) -> None:
    """Failure reports and tracebacks use ``ast.parse``, which is not thread-safe (gh-106905).

    Four tests fail at the same moment on four threads. The conftest wraps
    ``ast.parse`` before the run's loop starts, so the plugin's lock wraps it
    in turn: the count of parses at once is what the interpreter saw.
    """
    ptr.makeconftest(
        """
import ast, threading, time, traceback
import pytest

_LOCK = threading.Lock()
_AT_ONCE = {"now": 0, "most": 0}
_ARRIVE = threading.Barrier(4, timeout=10)
_parse = ast.parse

def counting_parse(*args, **kwargs):
    with _LOCK:
        _AT_ONCE["now"] += 1
        _AT_ONCE["most"] = max(_AT_ONCE["most"], _AT_ONCE["now"])
    try:
        time.sleep(0.002)  # a window for another thread's parse, were it let in
        return _parse(*args, **kwargs)
    finally:
        with _LOCK:
            _AT_ONCE["now"] -= 1

def pytest_configure(config):
    ast.parse = counting_parse

@pytest.fixture
def together():
    _ARRIVE.wait()

def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"parses at once: {_AT_ONCE['most']}")
"""
    )
    body = (
        "import traceback\n\n"
        "def deep(n):\n"
        "    if n == 0:\n"
        "        assert {'a': [1, 2, (3, 4)]} == {'a': [1, 2, (3, 5)]}\n"
        "    deep(n - 1)\n\n"
        "def test_fails(together):\n"
        "    try:\n"
        "        deep(20)\n"
        "    except AssertionError:\n"
        "        traceback.format_exc()  # Python 3.11 parses each line here too\n"
        "        raise\n"
    )
    ptr.makepyfile(**{f"test_m{number}": body for number in range(4)})
    result = ptr.runpytest_subprocess("--thread", "4", "-p", "no:randomly")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(["parses at once: 1"])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
