"""Tests of bridge.delivery."""
