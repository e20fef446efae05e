"""Tests of bridge.edge."""
