"""Tests of bridge.devkit."""
