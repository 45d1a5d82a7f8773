"""Telemetry of a run: ``OTEL_*`` settings (export), ids and the public trace id
API (traceid), spans (tracing) and ``pytest.log`` plus OTel logs (logs)."""
