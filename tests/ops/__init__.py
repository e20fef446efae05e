"""Tests of bridge.ops."""
