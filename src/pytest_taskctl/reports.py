"""From a red test to its trace: trace ids and links in the terminal summary and JUnit XML.

Without this the trace id of a failed test is only in ``pytest.log``. Each
test report carries its test's trace id (attribute :data:`REPORT_ATTRIBUTE`);
pytest-xdist serializes report attributes, so the controller, which prints
the summary and writes the JUnit file, knows the ids of tests that ran on
workers.

JUnit: the ids go through ``item.user_properties``, the list pytest's
``record_property`` fixture fills, so the junitxml plugin writes them as
``<property>`` elements of the ``<testcase>`` on pytest 8 and 9, with or
without xdist. They are written for every ``junit_family``: under the
default ``xunit2`` a ``<properties>`` element inside ``<testcase>`` is not
in the strict schema (pytest's ``record_property`` warns about that), but
CI report readers take it; ``junit_family=xunit1`` gives a schema-valid file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .run import TaskRun
    from .telemetry.tracing import RunningTest

#: Name of the test report attribute that holds the test's trace id.
REPORT_ATTRIBUTE = "taskctl_trace_id"
TRACE_ID_PROPERTY = "trace_id"
TRACE_URL_PROPERTY = "trace_url"
#: The properties this plugin added to an item, so a rerun replaces them.
_ADDED_KEY = pytest.StashKey[list[tuple[str, str]]]()


def trace_link(template: str | None, trace_id: str) -> str:
    """The viewer's URL for ``trace_id``, or the bare id without a template.

    The template was checked when options were parsed: ``{trace_id}`` is its
    only placeholder.
    """
    return template.format(trace_id=trace_id) if template else trace_id


def report_trace_id(report: pytest.TestReport) -> str | None:
    """The trace id a test report carries (``None``: made without pytest-taskctl)."""
    value = getattr(report, REPORT_ATTRIBUTE, None)
    return value if isinstance(value, str) else None


class TraceLinks:
    """Puts each test's trace id on its reports and lists failed tests' traces at the end.

    ``span_key`` is the item stash key under which the plugin keeps the
    running test's :class:`~.telemetry.tracing.RunningTest`; it is there from
    the start of the test's protocol until the protocol ends.
    """

    def __init__(self, run: TaskRun, span_key: pytest.StashKey[RunningTest]) -> None:
        self.run = run
        self.template = run.settings.trace_url
        self.span_key = span_key
        #: nodeid -> (FAILED or ERROR, trace id), in the order the failures came in.
        self.failures: dict[str, tuple[str, str | None]] = {}

    def report_made(
        self, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport
    ) -> None:
        """A failed report carries its test's trace id (a report observer of the run)."""
        if report.failed:  # only failures are listed
            test = item.stash.get(self.span_key, None)
            if test is not None:
                setattr(report, REPORT_ATTRIBUTE, test.traceid)
            self.failed(report)

    def failed(self, report: pytest.TestReport) -> None:
        """Remember a failed report for the summary (the first one of each test)."""
        if report.nodeid not in self.failures:
            word = "FAILED" if report.when == "call" else "ERROR"
            self.failures[report.nodeid] = (word, report_trace_id(report))

    def summary_lines(self, final: set[str] | None = None) -> list[str]:
        """One line per failed test; ``final``: the node ids pytest's summary counts as
        failed or errored (a test a rerun plugin ran again until it passed is not)."""
        failures = {
            nodeid: failure
            for nodeid, failure in self.failures.items()
            if final is None or nodeid in final
        }
        lines = []
        width = max((len(word) for word, _ in failures.values()), default=0)
        for nodeid, (word, trace_id) in failures.items():
            link = trace_link(self.template, trace_id) if trace_id else "(no trace id)"
            lines.append(f"{word:<{width}} {nodeid}  {link}")
        if lines and not self.template:
            lines.append(
                f"look at one with: taskctl trace {self.run.settings.run_id} NODEID "
                "(or link a viewer with --taskctl-trace-url)"
            )
        return lines

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        stats = terminalreporter.stats
        final = {report.nodeid for key in ("failed", "error") for report in stats.get(key, ())}
        lines = self.summary_lines(final)
        if not lines:
            return
        terminalreporter.write_sep("-", "taskctl: traces of failed tests")
        for line in lines:
            terminalreporter.write_line(line)

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        return [f"taskctl: trace links {self.template}"] if self.template else []


class ControllerTraceLinks(TraceLinks):
    """On the pytest-xdist controller, which makes no reports: the workers' come here."""

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed:
            self.failed(report)


class JunitTraceIds:
    """``trace_id`` and ``trace_url`` properties on each JUnit ``<testcase>``.

    Registered only with ``--junitxml``: without it, no hook of this class
    runs per test. The plugin's protocol wrapper has started the test's span
    when this hook runs, and no report is made yet: pytest copies the item's
    ``user_properties`` into each report, which junitxml reads.
    """

    def __init__(self, template: str | None, span_key: pytest.StashKey[RunningTest]) -> None:
        self.template = template
        self.span_key = span_key

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> None:
        test = item.stash.get(self.span_key, None)
        if test is not None:
            self._record_properties(item, test.traceid)

    def _record_properties(self, item: pytest.Item, trace_id: str) -> None:
        properties = [(TRACE_ID_PROPERTY, trace_id)]
        if self.template:
            properties.append((TRACE_URL_PROPERTY, trace_link(self.template, trace_id)))
        # A protocol run again for the same item (a rerun plugin) gets a new trace:
        # replace what we added before instead of piling up ids.
        added = item.stash.get(_ADDED_KEY, [])
        item.user_properties[:] = [prop for prop in item.user_properties if prop not in added]
        item.user_properties.extend(properties)
        item.stash[_ADDED_KEY] = properties
