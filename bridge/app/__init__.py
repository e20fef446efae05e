"""The running service: the runner, health endpoints, progress lines for the operator."""
