"""Smaller promises of issue 8: bad OTEL_* values, spans on SIGKILL, no password anywhere.

Real pytest runs (in-process through ``ptr``, or subprocesses) against a
real etcd and a real OTLP receiver.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_taskctl import StateStore

from .conftest import INNER_INI, OTLPReceiver, wait_for


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "abc"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
        ("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "x"),
    ],
)
def test_a_bad_otel_value_is_a_warning_naming_it(
    ptr: pytest.Pytester,
    otlp_receiver: tuple[OTLPReceiver, str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
) -> None:
    receiver, endpoint = otlp_receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "otlp")
    monkeypatch.setenv(variable, value)
    ptr.makepyfile("def test_a(): pass\n")
    result = ptr.runpytest_subprocess("--run-id", "bad-otel")
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output
    assert result.ret == 0, output
    result.stdout.fnmatch_lines([f"taskctl: warning: {variable}={value!r} *"])
    wait_for(lambda: any(s.name == "pytest session" for s in receiver.spans()))  # type: ignore[attr-defined]


def test_an_unknown_logs_protocol_is_a_usage_error_naming_it(
    ptr: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "carrier-pigeon")
    ptr.makepyfile("def test_a(): pass\n")
    result = ptr.runpytest_subprocess("--run-id", "bad-protocol")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(["*OTEL_EXPORTER_OTLP_LOGS_PROTOCOL*'carrier-pigeon'*"])
    assert not (ptr.path / "logs" / "bad-protocol").exists()


STEADY_SUITE = """
import os, time, pytest

@pytest.mark.parametrize("n", range(40))
def test_step(n):
    time.sleep(0.25)
    with open(os.environ["STAMPS"], "a") as f:
        f.write(f"{time.time()} test_step[{n}]\\n")
"""


def test_sigkill_loses_at_most_the_last_second_of_spans(
    tmp_path: Path, taskctl_env: dict[str, str]
) -> None:
    (tmp_path / "pytest.ini").write_text(INNER_INI)
    (tmp_path / "test_steady.py").write_text(STEADY_SUITE)
    stamps = tmp_path / "stamps.txt"
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--run-id", "killed"],
        cwd=tmp_path, env={**taskctl_env, "STAMPS": str(stamps)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # 3.5 s into the tests (the interpreter's start-up is not counted).
        wait_for(lambda: stamps.exists(), timeout=30)
        time.sleep(3.5)
        run.send_signal(signal.SIGKILL)
        killed = time.time()
        run.wait()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    ended = [line.split(" ", 1) for line in stamps.read_text().splitlines()]
    due = {name for at, name in ended if float(at) <= killed - 1.0}
    assert len(due) >= 8
    traces = tmp_path / "logs" / "killed" / "traces.jsonl"
    names = {
        span["name"].split("::", 1)[-1]
        for line in traces.read_text().splitlines()
        if line.strip()
        for rs in json.loads(line)["resourceSpans"]
        for ss in rs["scopeSpans"]
        for span in ss["spans"]
    }
    assert due <= names, sorted(due - names)


SECRET = "S3cretPW"


@pytest.mark.parametrize("spelling", ["--opt value", "--opt=value", "env"])
def test_the_etcd_password_is_nowhere(
    tmp_path: Path, taskctl_env: dict[str, str], store: StateStore, spelling: str
) -> None:
    (tmp_path / "pytest.ini").write_text(INNER_INI)
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_token_refresh.py").write_text("def test_a(): pass\n")
    env = {**taskctl_env}
    user = f"alice:{SECRET}"
    options = {
        "--opt value": ["--taskctl-etcd-user", user],
        "--opt=value": [f"--taskctl-etcd-user={user}"],
        "env": [],
    }[spelling]
    if spelling == "env":
        env["PYTEST_TASKCTL_ETCD_USER"] = user
    run_id = f"pw-{spelling.replace(' ', '-').replace('=', '-').strip('-')}"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
         "tests/test_token_refresh.py", *options, "--run-id", run_id],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    meta = store.get_meta(run_id)
    assert meta is not None and meta["status"] == "COMPLETED"
    assert "--run-id" in meta["argv"] and run_id in meta["argv"]
    assert "tests/test_token_refresh.py" in meta["argv"]
    everything = [result.stdout, result.stderr]
    everything += [kv.value.decode() for kv in store.gateway.range_prefix(store.prefix).kvs]
    everything += [p.read_text() for p in (tmp_path / "logs" / run_id).iterdir()]
    assert all(SECRET not in text for text in everything)
    if spelling != "env":
        assert any("alice" in arg and "***" in arg for arg in meta["argv"]) or (
            "***" in meta["argv"]
        )


def test_checkpoint_with_a_nan_timeout_is_a_value_error(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        """
        import math, pytest
        from pytest_taskctl import checkpoint

        def test_nan():
            with pytest.raises(ValueError, match="0 or more seconds"):
                checkpoint(task="t", timeout=float("nan"))
        """
    )
    ptr.runpytest("--run-id", "nan-1").assert_outcomes(passed=1)


def test_the_cancelled_outcome_is_documented() -> None:
    docs = Path(__file__).parent.parent / "docs" / "live-pause.md"
    text = docs.read_text(encoding="utf-8")
    assert "`cancelled` (the run was cancelled meanwhile)" in text
