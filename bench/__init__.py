"""Benchmark harness for signal-bridge: reference bridges, sinks, producer and the runner."""
