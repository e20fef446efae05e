"""Tests of bridge.telemetry."""
