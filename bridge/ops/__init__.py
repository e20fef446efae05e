"""Operator tools: the signal-bridge command line, check, status, dead-letter tools."""
