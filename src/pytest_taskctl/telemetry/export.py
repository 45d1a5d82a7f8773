"""What the standard ``OTEL_*`` variables ask for, read once for spans and logs alike.

The plugin never writes ``os.environ``; it reads it here, into one frozen
:class:`ExportConfig` that tracing and logging both use, and builds the OTLP
exporters with every value passed explicitly. So a value the exporter would
choke on (``OTEL_EXPORTER_OTLP_TIMEOUT=abc``) is reported once, as a warning
naming the variable, and the default is used instead -- the OpenTelemetry rule
for invalid configuration. An unknown protocol is a usage error: guessing one
would send data to a port that speaks something else.

Shutdown is bounded by :func:`run_bounded`: the SDK's flush does not honour its
own timeout, and an unreachable collector must not hold the run up.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

TRUE_WORDS = ("1", "true", "yes", "on")
OTLP_PROTOCOLS = ("grpc", "http/protobuf")
COMPRESSIONS = ("gzip", "none")
DEFAULT_TIMEOUT = 10.0
#: Seconds the end of a run waits for spans and logs to leave; the rest of the ~2 s
#: promise is the exporters' own start-up.
EXPORT_DEADLINE = 1.5


class InvalidExportConfig(ValueError):
    """An ``OTEL_*`` value that cannot be honoured or replaced; a usage error."""


def _first(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """``(name, value)`` of the first variable that is set and not blank."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


@dataclass(frozen=True)
class SignalExport:
    """OTLP settings of one signal (``TRACES`` or ``LOGS``)."""

    signal: str
    otlp: bool
    protocol: str
    endpoint: str | None
    timeout: float
    compression: str | None

    @classmethod
    def from_environ(
        cls, signal: str, environ: Mapping[str, str], problems: list[str]
    ) -> SignalExport:
        exporters_var = f"OTEL_{signal}_EXPORTER"
        exporters = {n.strip().lower() for n in environ.get(exporters_var, "").split(",")}
        exporters.discard("")
        for unknown in sorted(exporters - {"otlp", "none"}):
            problems.append(f"{exporters_var}: exporter {unknown!r} is not supported; ignored")
        found = _first(
            environ, f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        endpoint = found[1] if found else None
        otlp = "none" not in exporters and ("otlp" in exporters or endpoint is not None)
        protocol_var = _first(
            environ, f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"
        )
        protocol = protocol_var[1] if protocol_var else "grpc"
        if otlp and protocol not in OTLP_PROTOCOLS:
            raise InvalidExportConfig(
                f"unsupported {protocol_var[0] if protocol_var else 'protocol'} {protocol!r}: "
                f"use {' or '.join(repr(p) for p in OTLP_PROTOCOLS)}"
            )
        timeout = DEFAULT_TIMEOUT
        timeout_var = _first(
            environ, f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"
        )
        if timeout_var is not None:
            try:
                # The spec says milliseconds; the Python SDK reads seconds. Both
                # are accepted as the SDK reads them, only garbage is refused.
                timeout = float(timeout_var[1])
                if not 0 < timeout < float("inf"):
                    raise ValueError
            except ValueError:
                problems.append(
                    f"{timeout_var[0]}={timeout_var[1]!r} is not a positive number; "
                    f"using {DEFAULT_TIMEOUT:g}"
                )
                timeout = DEFAULT_TIMEOUT
        compression = None
        compression_var = _first(
            environ, f"OTEL_EXPORTER_OTLP_{signal}_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"
        )
        if compression_var is not None:
            if compression_var[1].lower() in COMPRESSIONS:
                compression = compression_var[1].lower()
            else:
                problems.append(
                    f"{compression_var[0]}={compression_var[1]!r} is not supported "
                    f"(use {' or '.join(COMPRESSIONS)}); sending uncompressed"
                )
        return cls(signal, otlp, protocol, endpoint, timeout, compression)

    def describe(self) -> str:
        default = "localhost:4317" if self.protocol == "grpc" else "localhost:4318"
        return f"OTLP {self.protocol} {self.endpoint or default}"

    def _compression(self) -> Any:
        from grpc import Compression

        return Compression.Gzip if self.compression == "gzip" else Compression.NoCompression

    def _compression_http(self) -> Any:
        from opentelemetry.exporter.otlp.proto.http import Compression

        return Compression.Gzip if self.compression == "gzip" else Compression.NoCompression

    def make_encoded_span_exporter(self) -> Any:
        """The SDK's OTLP span exporter, fed pre-encoded requests (``.payload``, ``.count``).

        Everything but the encoding stays the SDK's: endpoint, headers, TLS,
        compression, retries. The gRPC exporter's ``_translate_data`` and
        ``_count_data`` are the hooks its base class gives for the data type.
        """
        if self.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceRequest,
            )

            class EncodedGrpcExporter(GrpcExporter):
                def _translate_data(self, data: Any) -> Any:
                    return ExportTraceServiceRequest.FromString(data.payload)

                def _count_data(self, data: Any) -> int:
                    return int(data.count)

            return _build(
                EncodedGrpcExporter, timeout=self.timeout, compression=self._compression()
            )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )
        from opentelemetry.sdk.trace.export import SpanExportResult

        class EncodedHttpExporter(HttpExporter):
            def export(self, data: Any) -> SpanExportResult:
                if self._shutdown:
                    return SpanExportResult.FAILURE
                result = self._client.export(data.payload)
                return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE

        return _build(
            EncodedHttpExporter, timeout=self.timeout, compression=self._compression_http()
        )

    def make_exporter(self) -> Any:
        """The OTLP exporter of this signal, every setting passed explicitly."""
        if self.protocol == "grpc":
            if self.signal == "TRACES":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter as GrpcExporter,
                )
            else:
                from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (  # type: ignore[assignment]
                    OTLPLogExporter as GrpcExporter,
                )
            return _build(GrpcExporter, timeout=self.timeout, compression=self._compression())
        if self.signal == "TRACES":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )
        else:
            from opentelemetry.exporter.otlp.proto.http._log_exporter import (  # type: ignore[assignment]
                OTLPLogExporter as HttpExporter,
            )
        return _build(HttpExporter, timeout=self.timeout, compression=self._compression_http())


#: Variables an SDK exporter may parse itself although we pass what they set.
_PARSED_BY_EXPORTERS = ("TIMEOUT", "COMPRESSION")


def _build(exporter_class: Any, **settings: Any) -> Any:
    """Make an SDK exporter; a bad value it parses itself must not crash the run.

    Some exporters read their own ``OTEL_*`` variables from their module's
    ``environ`` even when the setting is passed (the gRPC log exporter calls
    ``float()`` on ``OTEL_EXPORTER_OTLP_LOGS_TIMEOUT``). We already reported
    such a value and decided on a replacement; the exporter is then made once
    more with its module seeing the environment without those variables --
    ``os.environ`` itself is never changed.
    """
    try:
        return exporter_class(**settings)
    except ValueError:
        module = next(
            (
                sys.modules[k.__module__]
                for k in exporter_class.__mro__
                if k.__module__.startswith("opentelemetry.")
                and hasattr(sys.modules.get(k.__module__), "environ")
            ),
            None,
        )
        if module is None:
            raise
        original = module.environ
        module.environ = {  # type: ignore[attr-defined]
            name: value
            for name, value in original.items()
            if not (name.startswith("OTEL_EXPORTER_OTLP_") and name.endswith(_PARSED_BY_EXPORTERS))
        }
        try:
            return exporter_class(**settings)
        finally:
            module.environ = original  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ExportConfig:
    """Everything the ``OTEL_*`` variables say about exporting; read once, never written."""

    sdk_disabled: bool
    traces: SignalExport
    logs: SignalExport
    #: Invalid values that were replaced by defaults, one sentence each (shown as warnings).
    problems: tuple[str, ...] = ()
    #: ``TRACEPARENT``/``TRACESTATE`` of a CI job that wants the run inside its own trace.
    parent_carrier: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ExportConfig:
        problems: list[str] = []
        disabled = environ.get("OTEL_SDK_DISABLED", "").strip().lower() in TRUE_WORDS
        traces = SignalExport.from_environ("TRACES", environ, problems)
        logs = SignalExport.from_environ("LOGS", environ, problems)
        carrier = tuple(
            (name.lower(), environ[name])
            for name in ("TRACEPARENT", "TRACESTATE")
            if name in environ
        )
        return cls(disabled, traces, logs, tuple(problems), carrier)

    @property
    def otlp_traces(self) -> bool:
        return self.traces.otlp and not self.sdk_disabled

    @property
    def otlp_logs(self) -> bool:
        return self.logs.otlp and not self.sdk_disabled

    def describe(self) -> str:
        if self.sdk_disabled:
            return "disabled (OTEL_SDK_DISABLED)"
        return self.traces.describe() if self.traces.otlp else "file only"


def run_bounded(function: Callable[[], object], deadline: float, name: str) -> bool:
    """Run ``function`` in a daemon thread and wait at most ``deadline`` seconds.

    For SDK shutdowns whose own timeouts are not honoured: the run ends on
    time and the thread is abandoned if the collector does not answer.
    """
    worker = threading.Thread(target=function, name=f"taskctl-{name}", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline))
    return not worker.is_alive()
