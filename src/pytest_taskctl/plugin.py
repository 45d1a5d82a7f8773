"""pytest hooks of pytest-taskctl: thin, each delegating to :mod:`pytest_taskctl.run`.

Options are declared in :mod:`.options`; features are imported and
registered in ``pytest_configure`` only when the run uses them. Disable the
plugin with ``-p no:taskctl``.
"""

from __future__ import annotations

import logging
from collections.abc import Generator

import pytest

from . import hookspecs, options
from .config import WORKER_RUN_ID, RunSettings
from .control import CANCEL_REASON
from .outcome import TestOutcome
from .run import TaskRun, argv_of
from .telemetry import plugins as telemetry_plugins
from .telemetry import traceid as traceid_module
from .telemetry.tracing import RunningTest, attributes_of_test
from .terminal import TerminalNotes, header_lines, summary_lines

RUN_KEY = pytest.StashKey[TaskRun]()
SPAN_KEY = pytest.StashKey[RunningTest]()
CANCELLED_KEY = pytest.StashKey[bool]()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)
    # Registered with this module, so its wrappers keep the module's place among the
    # suite's conftests and plugins; the run is given to it in pytest_configure.
    pluginmanager.register(PerTestHooks(), "taskctl-tests")


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", options.GROUP_MARKER)
    settings = RunSettings.from_config(config)  # bad values: UsageError, exit 4
    if config.option.help or config.option.version:
        return
    is_worker = hasattr(config, "workerinput")
    run = config.stash[RUN_KEY] = TaskRun(
        settings,
        config.hook,
        pytest_log_level=_pytest_file_log_level(config),
        is_worker=is_worker,
        is_controller=bool(getattr(config.option, "numprocesses", None)) and not is_worker,
        resume=bool(config.option.taskctl_resume),
    )
    run.notify = notes = TerminalNotes(config, runs_tests=not run.is_controller)
    config.add_cleanup(run.close)  # also when sessionfinish never comes
    hooks = config.pluginmanager.get_plugin("taskctl-tests")
    if isinstance(hooks, PerTestHooks):
        hooks.run, hooks.notes = run, notes
    config.pluginmanager.register(InterruptWatch(run), "taskctl-interrupts")
    if run.is_controller:
        config.pluginmanager.register(XdistControllerProgress(run), "taskctl-xdist-controller")
        from .xdist import XdistController  # one session span, PAUSED from workers' reports

        config.pluginmanager.register(XdistController(run), "taskctl-xdist")
    _register_features(config, run)
    telemetry_plugins.register(config.pluginmanager, settings, run)


def _register_features(config: pytest.Config, run: TaskRun) -> None:
    """Each feature's module is imported only when this run uses it."""
    from . import reports
    from .features import livepause, resume

    links_class = reports.ControllerTraceLinks if run.is_controller else reports.TraceLinks
    links = links_class(run, SPAN_KEY)
    config.pluginmanager.register(links, "taskctl-trace-links")
    run.report_observers.append(links.report_made)
    if getattr(config.option, "xmlpath", None):
        junit = reports.JunitTraceIds(run.settings.trace_url, SPAN_KEY)
        config.pluginmanager.register(junit, "taskctl-junit-trace-ids")

    if run.settings.join:  # claims, fenced results and membership instead of the run lease
        from .features import join

        config.pluginmanager.register(join.make_plugin(config, run), "taskctl-join")
    else:
        config.pluginmanager.register(resume.make_plugin(config, run), "taskctl-resume")
    config.pluginmanager.register(livepause.make_plugin(config, run), "taskctl-livepause")
    if config.option.taskctl_threads not in (None, 1):
        from .features import groups

        runner = groups.make_plugin(config)
        if runner is not None:
            config.pluginmanager.register(runner, "taskctl-groups")


def _pytest_file_log_level(config: pytest.Config) -> int | None:
    """pytest's ``log_file_level`` (else ``log_level``) when the suite sets one."""
    for name in ("log_file_level", "log_level"):
        value = config.getoption(name, None) or config.getini(name)
        if value:
            level = (
                logging.getLevelName(str(value).upper()) if not str(value).isdigit() else int(value)
            )
            if isinstance(level, int):
                return level
    return None


def _run(config: pytest.Config) -> TaskRun | None:
    return config.stash.get(RUN_KEY, None)


class InterruptWatch:
    """Ctrl-C or ``pytest.exit``: the run ends INTERRUPTED (exit code 2 alone may be errors)."""

    def __init__(self, run: TaskRun) -> None:
        self.run = run

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        # pytest raises Session.Interrupted itself for collection errors: those are FAILED.
        if not isinstance(excinfo.value, pytest.Session.Interrupted):
            self.run.keyboard_interrupt = True


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


class PerTestHooks:
    """The hooks that run for every test, bound to the run.

    Methods of an object rather than module functions: the run is an
    attribute here, not a ``config.stash`` lookup in each call a test makes.
    """

    def __init__(self) -> None:
        self.run: TaskRun | None = None  # set in pytest_configure
        self.notes: TerminalNotes | None = None  # the run's news lines, ditto

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        run = self.run
        if run is None or run.tracer is None:
            return (yield)
        notes = self.notes
        if notes is not None and notes.pending:  # news from the plugin's threads
            notes.flush()
        nodeid = item.nodeid  # pytest 9 makes the string on each access
        # The gate comes before the span: a pause is not part of the test's time.
        item.stash[CANCELLED_KEY] = not run.control.gate(nodeid)
        test = run.tracer.start_test(nodeid, attributes_of_test(item, nodeid, run.settings.run_id))
        outer = item.stash.get(SPAN_KEY, None)  # a protocol run inside another for this item
        item.stash[SPAN_KEY] = test
        try:
            for observe in run.start_observers:  # the setup span
                observe(item, test)
            return (yield)
        finally:
            for observe_end in run.end_observers:  # a phase span left open by an interrupt
                observe_end(item)
            if outer is not None:
                item.stash[SPAN_KEY] = outer
            else:
                del item.stash[SPAN_KEY]
            # Here, not at the teardown report: a rerun plugin may run the test again
            # (its last attempt decides), and wrappers inside this one may have made
            # contexts of their own current, which they leave before we leave ours.
            outcome = TestOutcome.interrupted()
            try:
                outcome = run.finish_test(nodeid)
                if outcome.complete:
                    runs = f" ({outcome.attempts} attempts)" if outcome.attempts > 1 else ""
                    line = "pytest_runtest_teardown: %s %s in %.3fs%s"
                    run.runlog.line(
                        logging.INFO, line, nodeid, outcome.word, outcome.duration, runs,
                        traceid=test.traceid,
                    )  # fmt: skip
            finally:  # a finished-test hook that raised still leaves the span ended
                run.tracer.end_test(test, outcome)
                run.tracer.leave_test(test)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if item.stash.get(CANCELLED_KEY, False):
            raise pytest.skip.Exception(CANCEL_REASON, _use_item_location=True)
        test = item.stash.get(SPAN_KEY, None)
        run = self.run
        if run is not None and test is not None:
            if run.outcomes.start_rerun(test.nodeid):  # a rerun plugin runs it again
                for observe in run.rerun_observers:
                    observe(item, test)
            line = "pytest_runtest_setup: %s"
            run.runlog.line(logging.INFO, line, test.nodeid, traceid=test.traceid)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        run = self.run
        if run is None:
            return report
        for observe in run.report_observers:  # phase spans, trace links, pause on failure
            observe(item, call, report)
        test = item.stash.get(SPAN_KEY, None)
        if test is None:  # not inside our protocol wrapper: the test is over with its teardown
            if run.record_report(report) is not None:
                run.finish_test(report.nodeid)
            return report
        outcome = run.record_report(report, test.nodeid)
        if outcome is not None:
            outcome.stop = call.stop  # the span ends with the teardown, not the protocol
        if call.excinfo is not None and report.failed and run.tracer is not None:
            run.tracer.phase_failed(test.span, call.excinfo.value, call.stop)
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
        outcome = self.run.record_report(report)
        if outcome is not None and not outcome.rerun:  # a ``rerun`` attempt: another follows
            self.run.finish_test(report.nodeid)

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
        if isinstance(run.notify, TerminalNotes):
            run.notify.flush()  # news that came after the last test's start
        header_shown = terminalreporter.config.get_verbosity() >= 0
        for line in summary_lines(run, header_shown):
            terminalreporter.write_line(line)


@pytest.fixture
def traceid() -> str:
    """The trace id of the running test (32 hex digits), for ``X-Trace-Id``."""
    return traceid_module.get_traceid()


@pytest.fixture
def trace_headers() -> dict[str, str]:
    """``{"X-Trace-Id": ..., "traceparent": ...}`` for requests to the API under test."""
    return traceid_module.trace_headers()
