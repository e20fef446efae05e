"""Traces, metrics and logs: OpenTelemetry set-up, the bridge's instruments, JSON log lines."""
