"""pytest hooks of pytest-taskctl: thin, each delegating to :mod:`pytest_taskctl.run`.

Disable with ``-p no:taskctl``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator

import pytest

from .control import CANCEL_REASON
from .features import groups, livepause, resume
from .outcome import TestOutcome
from .run import WORKER_RUN_ID, RunSettings, TaskRun, argv_of, header_lines, summary_lines
from .telemetry import tracing

RUN_KEY = pytest.StashKey[TaskRun]()
SPAN_KEY = pytest.StashKey[tuple[object, object]]()
CANCELLED_KEY = pytest.StashKey[bool]()

#: Feature modules: each adds its options and, when enabled, registers a plugin object.
FEATURES = (resume, livepause, groups)

LOG_LEVEL_HELP = "level of records written to logs/<run_id>/pytest.log (default INFO)"
LOG_DIR_HELP = "directory for <run_id>/pytest.log and traces.jsonl (default: logs)"
TRACE_MODE_HELP = (
    "'test' (default): every test is its own trace, linked to the session span; "
    "'session': tests are children of the session span"
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("taskctl", "observable, controllable runs (pytest-taskctl)")
    group.addoption(
        "--run-id",
        dest="taskctl_run_id",
        metavar="ID",
        help="id of this run (env PYTEST_RUN_ID); generated when missing",
    )
    group.addoption(
        "--taskctl-etcd",
        metavar="HOST:PORT[,...]",
        help="etcd endpoints (env PYTEST_TASKCTL_ETCD, ETCDCTL_ENDPOINTS; default 127.0.0.1:2379)",
    )
    group.addoption(
        "--taskctl-prefix",
        metavar="PREFIX",
        help="etcd key prefix (env PYTEST_TASKCTL_PREFIX; default /pytest-taskctl)",
    )
    for name, what in (
        ("cacert", "CA file"),
        ("cert", "client certificate"),
        ("key", "client key"),
    ):
        group.addoption(
            f"--taskctl-etcd-{name}",
            metavar="FILE",
            help=f"etcd TLS {what} "
            f"(env PYTEST_TASKCTL_ETCD_{name.upper()}, ETCDCTL_{name.upper()})",
        )
    group.addoption(
        "--taskctl-etcd-user",
        metavar="USER:PASSWORD",
        help="etcd credentials (env PYTEST_TASKCTL_ETCD_USER, ETCDCTL_USER)",
    )
    group.addoption("--taskctl-log-dir", metavar="DIR", help=LOG_DIR_HELP)
    group.addoption("--taskctl-log-level", metavar="LEVEL", help=LOG_LEVEL_HELP)
    group.addoption("--taskctl-trace-mode", choices=("test", "session"), help=TRACE_MODE_HELP)
    for feature in FEATURES:
        feature.add_options(parser, group)
    parser.addini("taskctl_log_dir", LOG_DIR_HELP)
    parser.addini("taskctl_log_level", LOG_LEVEL_HELP)
    parser.addini("taskctl_trace_mode", TRACE_MODE_HELP)


def pytest_configure(config: pytest.Config) -> None:
    settings = RunSettings.from_config(config)  # bad values: UsageError, exit 4
    if config.option.help or config.option.version:
        return
    run = config.stash[RUN_KEY] = TaskRun(
        settings,
        is_worker=hasattr(config, "workerinput"),
        is_controller=bool(getattr(config.option, "numprocesses", None))
        and not hasattr(config, "workerinput"),
    )
    run.notify = lambda text: terminal_line(config, text)
    config.add_cleanup(run.close)  # also when sessionfinish never comes
    config.pluginmanager.register(InterruptWatch(run), "taskctl-interrupts")
    if run.is_controller:
        config.pluginmanager.register(XdistControllerProgress(run), "taskctl-xdist-controller")
    for feature in FEATURES:
        feature_plugin = feature.make_plugin(config, run)
        if feature_plugin is not None:
            config.pluginmanager.register(feature_plugin, f"taskctl-{feature.__name__}")


def _run(config: pytest.Config) -> TaskRun | None:
    return config.stash.get(RUN_KEY, None)


def terminal_line(config: pytest.Config, text: str) -> None:
    """A line on the terminal now, even while pytest captures output (pauses are news)."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is None:
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        terminal.ensure_newline()
        terminal.write_line(text)


class InterruptWatch:
    """Ctrl-C, SIGTERM or ``pytest.exit``: INTERRUPTED (exit code 2 alone may be errors)."""

    def __init__(self, run: TaskRun) -> None:
        self.run = run

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        # pytest raises Session.Interrupted itself for collection errors: those are FAILED.
        if not isinstance(excinfo.value, pytest.Session.Interrupted):
            self.run.interrupted = True


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    # tryfirst: connected before the terminal reporter asks for the header.
    run = _run(session.config)
    if run is not None:
        run.start(argv_of(session.config))


def pytest_report_header(config: pytest.Config) -> list[str]:
    run = _run(config)
    return header_lines(run) if run is not None else []


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run = _run(config)
    if run is not None:
        run.collection_finished(items)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    run = _run(item.config)
    if run is None:
        return (yield)
    # The gate comes before the span: a pause is not part of the test's time.
    item.stash[CANCELLED_KEY] = not run.control.gate(item.nodeid)
    assert run.tracer is not None
    span, token = run.tracer.start_test(item.nodeid, run.test_attributes(item))
    item.stash[SPAN_KEY] = (span, token)
    try:
        return (yield)
    finally:
        span_token = item.stash.get(SPAN_KEY, None)
        if span_token is not None:  # the teardown report did not arrive (interrupted)
            run.control.test_finished(None)
            outcome = run.outcomes.pop(item.nodeid, None)
            run.tracer.end_test(span, token, outcome or _interrupted())


def _interrupted() -> TestOutcome:
    outcome = TestOutcome()
    outcome.word, outcome.when, outcome.message = "error", "call", "interrupted"
    return outcome


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.stash.get(CANCELLED_KEY, False):
        raise pytest.skip.Exception(CANCEL_REASON, _use_item_location=True)
    run = _run(item.config)
    if run is not None:
        run.runlog.line(logging.INFO, "pytest_runtest_setup: %s", item.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    run = _run(item.config)
    if run is not None and report.when == "teardown":
        outcome = run.record_report(report)
        span_token = item.stash.get(SPAN_KEY, None)
        if outcome is not None and span_token is not None and run.tracer is not None:
            del item.stash[SPAN_KEY]
            run.runlog.line(
                logging.INFO,
                "pytest_runtest_teardown: %s %s in %.3fs",
                item.nodeid,
                outcome.word,
                outcome.duration,
            )
            run.tracer.end_test(*span_token, outcome)  # type: ignore[arg-type]
    elif run is not None:
        run.record_report(report)
    return report


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: object) -> None:
    """pytest-xdist: workers join the controller's run (its id may be generated)."""
    run = _run(node.config)  # type: ignore[attr-defined]
    if run is not None:
        node.workerinput[WORKER_RUN_ID] = run.settings.run_id  # type: ignore[attr-defined]


class XdistControllerProgress:
    """On the xdist controller (which runs no tests): progress from workers' reports."""

    def __init__(self, run: TaskRun) -> None:
        self.run = run

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.run.record_report(report)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: object, ids: list[str]) -> None:
        self.run.control.total = max(self.run.control.total, len(ids))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    run = _run(session.config)
    if run is not None:
        run.finish(session)
    return (yield)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    run = _run(terminalreporter.config)
    if run is not None:
        header_shown = terminalreporter.config.get_verbosity() >= 0
        for line in summary_lines(run, header_shown):
            terminalreporter.write_line(line)


@pytest.fixture
def traceid() -> str:
    """The trace id of the running test (32 hex digits), for ``X-Trace-Id``."""
    return tracing.get_traceid()


@pytest.fixture
def trace_headers() -> dict[str, str]:
    """``{"X-Trace-Id": ..., "traceparent": ...}`` for requests to the API under test."""
    return tracing.trace_headers()
