"""signal-bridge tests."""
