"""Tests of bridge.streams."""
