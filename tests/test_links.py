"""From a failed test to its trace: the terminal summary's links and the JUnit XML properties."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .conftest import INNER_INI
from .test_telemetry import read_spans

SUITE = """
import pytest

def test_pass():
    pass

def test_fail():
    assert 1 == 2

@pytest.fixture
def broken():
    raise RuntimeError("no database")

def test_setup_error(broken):
    pass

@pytest.fixture
def bad_teardown():
    yield
    raise RuntimeError("cleanup failed")

def test_teardown_error(bad_teardown):
    pass

@pytest.mark.skip(reason="not today")
def test_skip():
    pass
"""
TEMPLATE = "http://localhost:16686/trace/{trace_id}"


def trace_ids(path: Path) -> dict[str, str]:
    """Node id (span name) -> trace id, from the run's traces.jsonl."""
    return {span["name"]: span["traceId"] for span in read_spans(path / "traces.jsonl")}


def junit_properties(xml_path: Path) -> dict[str, dict[str, str]]:
    """``<testcase name=...>`` -> its ``<property>`` name/value pairs."""
    root = ET.parse(xml_path).getroot()
    return {
        case.attrib["name"]: {
            prop.attrib["name"]: prop.attrib["value"] for prop in case.iter("property")
        }
        for case in root.iter("testcase")
    }


def test_summary_links_every_failed_and_errored_test(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(test_suite=SUITE)
    result = ptr.runpytest("--run-id", "links-1", "--taskctl-trace-url", TEMPLATE)
    result.assert_outcomes(passed=2, failed=1, errors=2, skipped=1)
    ids = trace_ids(ptr.path / "logs" / "links-1")
    result.stdout.fnmatch_lines(
        [
            "taskctl: trace links http://localhost:16686/trace/{trace_id}",
            "*- taskctl: traces of failed tests -*",
            "FAILED test_suite.py::test_fail  "
            f"http://localhost:16686/trace/{ids['test_suite.py::test_fail']}",
            "ERROR  test_suite.py::test_setup_error  "
            f"http://localhost:16686/trace/{ids['test_suite.py::test_setup_error']}",
            "ERROR  test_suite.py::test_teardown_error  "
            f"http://localhost:16686/trace/{ids['test_suite.py::test_teardown_error']}",
        ]
    )
    text = result.stdout.str()
    assert "test_suite.py::test_pass  " not in text and "test_suite.py::test_skip  " not in text
    assert "taskctl trace links-1 NODEID" not in text, "the hint is for runs without a viewer"


def test_without_a_template_the_summary_shows_trace_ids(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(test_suite="def test_fail():\n    assert False\n")
    result = ptr.runpytest("--run-id", "links-2")
    result.assert_outcomes(failed=1)
    trace_id = trace_ids(ptr.path / "logs" / "links-2")["test_suite.py::test_fail"]
    result.stdout.fnmatch_lines(
        [
            f"FAILED test_suite.py::test_fail  {trace_id}",
            "look at one with: taskctl trace links-2 NODEID (or link a viewer with "
            "--taskctl-trace-url)",
        ]
    )


def test_a_green_run_has_no_trace_section(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(test_suite="def test_pass():\n    pass\n")
    result = ptr.runpytest("--run-id", "links-3", "--taskctl-trace-url", TEMPLATE)
    result.assert_outcomes(passed=1)
    assert "traces of failed tests" not in result.stdout.str()


@pytest.mark.parametrize("family", ["xunit1", "xunit2"])
def test_junit_testcases_carry_trace_id_and_url(ptr: pytest.Pytester, family: str) -> None:
    ptr.makepyfile(test_suite=SUITE)
    ptr.makeini(f"{INNER_INI}junit_family = {family}\ntaskctl_trace_url = {TEMPLATE}\n")
    result = ptr.runpytest("--run-id", "junit-1", "--junitxml", "report.xml")
    result.assert_outcomes(passed=2, failed=1, errors=2, skipped=1)
    ids = trace_ids(ptr.path / "logs" / "junit-1")
    properties = junit_properties(ptr.path / "report.xml")
    assert set(properties) == {
        "test_pass",
        "test_fail",
        "test_setup_error",
        "test_teardown_error",
        "test_skip",
    }
    for name, props in properties.items():
        trace_id = ids[f"test_suite.py::{name}"]
        assert props == {
            "trace_id": trace_id,
            "trace_url": f"http://localhost:16686/trace/{trace_id}",
        }, name
    assert "PytestWarning" not in result.stdout.str()


def test_junit_without_a_template_has_only_trace_ids(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_suite="def test_pass(record_property):\n    record_property('owner', 'team-a')\n"
    )
    ptr.runpytest(
        "--run-id", "junit-2", "--junitxml", "report.xml", "-o", "junit_family=xunit1"
    ).assert_outcomes(passed=1)
    trace_id = trace_ids(ptr.path / "logs" / "junit-2")["test_suite.py::test_pass"]
    assert junit_properties(ptr.path / "report.xml") == {
        "test_pass": {"trace_id": trace_id, "owner": "team-a"}
    }


def test_no_junit_leaves_user_properties_alone(ptr: pytest.Pytester) -> None:
    """Without --junitxml the suite's own view of user_properties is unchanged."""
    ptr.makeconftest(
        "seen = []\n"
        "def pytest_runtest_logreport(report):\n"
        "    if report.when == 'teardown':\n"
        "        seen.append(list(report.user_properties))\n"
        "def pytest_sessionfinish(session):\n"
        "    print('USER_PROPERTIES', seen)\n"
    )
    ptr.makepyfile(test_suite="def test_pass():\n    pass\n")
    result = ptr.runpytest("--run-id", "junit-3", "-s")
    result.assert_outcomes(passed=1)
    assert "USER_PROPERTIES [[]]" in result.stdout.str()


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("http://jaeger/trace/", "no {trace_id} placeholder"),
        ("http://jaeger/trace/{traceid}", "unknown placeholder {traceid}"),
        ("http://jaeger/{trace_id}/{span_id}", "unknown placeholder {span_id}"),
        ("http://jaeger/trace/{trace_id", "expected '}' before end of string"),
    ],
)
def test_a_bad_template_is_a_usage_error(ptr: pytest.Pytester, template: str, problem: str) -> None:
    ptr.makepyfile(test_suite="def test_pass():\n    pass\n")
    result = ptr.runpytest("--run-id", "bad-url", "--taskctl-trace-url", template)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*invalid trace URL template '{template}' (--taskctl-trace-url): {problem}*"]
    )
    assert not (ptr.path / "logs" / "bad-url").exists(), "refused before anything is written"


def test_template_from_the_environment_and_its_precedence(
    ptr: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Option over ini over environment, as for every other setting."""
    ptr.makepyfile(test_suite="def test_fail():\n    assert False\n")
    monkeypatch.setenv("PYTEST_TASKCTL_TRACE_URL", "http://env/{trace_id}")
    from_env = ptr.runpytest("--run-id", "env-1")
    from_env.stdout.fnmatch_lines(["FAILED test_suite.py::test_fail  http://env/*"])
    ptr.makeini(INNER_INI + "taskctl_trace_url = http://ini/{trace_id}\n")
    from_ini = ptr.runpytest("--run-id", "env-2")
    from_ini.stdout.fnmatch_lines(["FAILED test_suite.py::test_fail  http://ini/*"])
    from_option = ptr.runpytest("--run-id", "env-3", "--taskctl-trace-url", "http://opt/{trace_id}")
    from_option.stdout.fnmatch_lines(["FAILED test_suite.py::test_fail  http://opt/*"])
    ptr.makeini(INNER_INI)
    monkeypatch.setenv("PYTEST_TASKCTL_TRACE_URL", "http://env/")
    bad = ptr.runpytest("--run-id", "env-4")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*(PYTEST_TASKCTL_TRACE_URL environment variable)*"])
    ptr.makeini(INNER_INI + "taskctl_trace_url = http://ini/{span_id}\n")
    bad_ini = ptr.runpytest("--run-id", "env-5")
    assert bad_ini.ret == pytest.ExitCode.USAGE_ERROR
    bad_ini.stderr.fnmatch_lines(["*(ini taskctl_trace_url): unknown placeholder {span_id}*"])
