"""Observability for every Veritrace process: Prometheus metrics, OpenTelemetry traces, JSON logs without PHI.

- `metrics`: the `veritrace_*` metric families, the request middleware and the `/metrics` router;
- `store_metrics`: gauges and counters read from the database and broker at scrape time, so one API replica
  reports what the DICOM and worker processes did;
- `tracing`: tracer provider set-up (file or in-memory exporter) and the request span middleware;
- `json_logs`: one JSON object per log line, passed through a PHI redaction filter.
"""
