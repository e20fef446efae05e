"""Tests of bridge.ownership."""
