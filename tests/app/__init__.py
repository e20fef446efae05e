"""Tests of bridge.app."""
