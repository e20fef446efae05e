"""Shared fixtures live in two plugin modules: one for the ingest server, one for Redis."""

pytest_plugins = ["tests.fixtures_ingest", "tests.fixtures_redis"]
