"""Ingest-server fixtures: the reference server on a loopback port, and client configs."""
