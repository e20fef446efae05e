"""Cheaper stand-ins for OpenTelemetry SDK internals, each checked against the SDK it mirrors."""
