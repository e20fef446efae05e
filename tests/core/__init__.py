"""Tests of bridge.core."""
