"""signal-bridge: Redis Stream trade signals, delivered HMAC-signed to the ingest API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("signal-bridge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
