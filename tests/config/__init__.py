"""Tests of bridge.config."""
