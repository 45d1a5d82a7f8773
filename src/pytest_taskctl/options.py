"""Every command-line option and ini key of the plugin, registered in one place.

Features are imported only when a run enables them, so their options live
here, not in the feature modules. Where an option has an ini key, one help
string serves both.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from .etcd.settings import ETCD_OPTIONS
from .features.pauses import RESULT_TOKENS

LOG_DIR_HELP = "directory for <run_id>/pytest.log and traces.jsonl (default: logs)"
LOG_LEVEL_HELP = (
    "lower the root logger to LEVEL for the session, as --log-level does, so test code's "
    "own records reach logs/<run_id>/pytest.log (default: leave logging levels as they are)"
)
TRACE_MODE_HELP = (
    "'test' (default): every test is its own trace, linked to the session span; "
    "'session': tests are children of the session span"
)
TRACE_URL_HELP = (
    "URL of a test's trace in your viewer, with a {trace_id} placeholder, e.g. "
    "http://localhost:16686/trace/{trace_id} (env PYTEST_TASKCTL_TRACE_URL): shown for "
    "failed tests in the terminal summary and written to --junitxml as trace_url"
)
SPAN_DETAIL_HELP = (
    "what a test's trace shows under its root span: 'test' (that span alone), 'phases' "
    "(setup, call and teardown spans) or 'fixtures' (default: phases, plus one span per "
    "fixture set up)"
)
SPAN_DETAILS = ("test", "phases", "fixtures")
HTTP_HELP = (
    "trace HTTP calls that tests make with requests, httpx and urllib3 as client spans "
    "carrying traceparent and X-Trace-Id (env PYTEST_TASKCTL_HTTP=1; default off)"
)
RESUME_HELP = (
    "resume run --run-id ID: deselect the tests that passed in its earlier attempts, "
    "run the failed, errored and never-run ones"
)
PAUSE_ON_FAILURE_HELP = (
    "when a test fails, pause before its teardown (fixtures alive) until someone answers "
    "with `taskctl decide PAUSE_ID` or --pause-timeout expires"
)
PAUSE_TIMEOUT_HELP = "seconds a live pause waits for a decision (default 300)"
PAUSE_MOCK_HELP = (
    "answer every checkpoint() at once with this result (reason 'Mock'), for unattended runs"
)
THREAD_HELP = (
    "run tests on N threads, different groups at once, each group one test at a time "
    "(default 1: off); see --group-unit and @pytest.mark.group"
)
JOIN_HELP = (
    "join run --run-id ID with every other process started with --join on the same etcd: "
    "each test runs once across all of them, claimed as they go"
)
GROUP_UNIT_HELP = (
    "default group of a test without a group marker: its module (default), "
    "its class, or none (function: every test on its own)"
)
GROUP_UNITS = ("module", "class", "function")
GROUP_MARKER = (
    "group(*names): the groups of a test (module, class or function level; the closest "
    "marker wins). Tests of one group run one at a time in collection order under --thread; "
    "group() with no names: ungrouped."
)


def seconds(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more (``nan`` and ``inf`` refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("taskctl", "observable, controllable runs (pytest-taskctl)")
    group.addoption(
        "--run-id",
        dest="taskctl_run_id",
        metavar="ID",
        help="id of this run (env PYTEST_RUN_ID); generated when missing",
    )
    _add_etcd_options(group)
    _add_output_options(group)
    _add_feature_options(group)
    parser.addini("taskctl_log_dir", LOG_DIR_HELP)
    parser.addini("taskctl_log_level", LOG_LEVEL_HELP)
    parser.addini("taskctl_trace_mode", TRACE_MODE_HELP)
    parser.addini("taskctl_trace_url", TRACE_URL_HELP)
    parser.addini("taskctl_span_detail", SPAN_DETAIL_HELP)
    parser.addini("taskctl_http", HTTP_HELP, type="bool", default=False)
    parser.addini("group-unit", GROUP_UNIT_HELP)


def _add_output_options(group: Any) -> None:
    group.addoption("--taskctl-log-dir", metavar="DIR", help=LOG_DIR_HELP)
    group.addoption("--taskctl-log-level", metavar="LEVEL", help=LOG_LEVEL_HELP)
    group.addoption("--taskctl-trace-mode", choices=("test", "session"), help=TRACE_MODE_HELP)
    group.addoption("--taskctl-trace-url", metavar="TEMPLATE", help=TRACE_URL_HELP)
    group.addoption("--taskctl-span-detail", metavar="DETAIL", help=SPAN_DETAIL_HELP)
    group.addoption("--taskctl-http", action="store_true", default=None, help=HTTP_HELP)


def _add_etcd_options(group: Any) -> None:
    for option in ETCD_OPTIONS:  # the same table as taskctl's --etcd, --cacert, ...
        group.addoption(option.pytest_flag, metavar=option.metavar, help=option.help)


def _add_feature_options(group: Any) -> None:
    group.addoption(
        "--resume",
        "--run-until-complete",
        dest="taskctl_resume",
        action="store_true",
        default=False,
        help=RESUME_HELP,
    )
    group.addoption(
        "--pause-on-failure", action="store_true", default=False, help=PAUSE_ON_FAILURE_HELP
    )
    group.addoption(
        "--pause-timeout", metavar="SECONDS", type=seconds, default=300.0, help=PAUSE_TIMEOUT_HELP
    )
    group.addoption(
        "--pause-checkpoint-mock", choices=sorted(RESULT_TOKENS), default=None, help=PAUSE_MOCK_HELP
    )
    group.addoption(
        "--join", dest="taskctl_join", action="store_true", default=False, help=JOIN_HELP
    )
    group.addoption(
        "--thread", dest="taskctl_threads", metavar="N", type=int, default=None, help=THREAD_HELP
    )
    group.addoption(
        "--group-unit",
        dest="taskctl_group_unit",
        choices=GROUP_UNITS,
        default=None,
        help=GROUP_UNIT_HELP + " (ini group-unit)",
    )
