"""CPU cost of the per-delivery INFO line, in-process: the path on main vs ``log_info``.

Each configuration sets logging up as ``signal-bridge run`` does (``configure_logging("INFO",
"json")`` on a stdout that is a file or a pipe, block-buffered as Python makes it), then logs the
"signal delivered" line with its fifteen keys inside an active span, and reports process CPU time
(all threads: the flusher thread counts) per line, in microseconds:

* ``main``: ``log.info(..., extra=log_fields(...))`` through the handler as it is on main (copied
  here as ``MainLazyFlushHandler``: a write to the text stream per line, a flush every 200 ms);
* ``log.info``: the same call through today's handler (the ordinary path: WARNINGs, other lines);
* ``log_info``: the fast path the worker takes for the delivered line.

"-u" is stdout as PYTHONUNBUFFERED=1 makes it (see ``stdout_to``). "warm" runs the call in a
tight loop. "cold" puts a cache-evicting workload (a walk over a few
MB of objects and unrelated code) between calls, as the bridge's event loop does, and subtracts
that workload's own cost: a path with fewer Python frames and objects loses less to cold caches.

    .venv/bin/python -m bench.log_cost              # 50,000 lines per configuration
    .venv/bin/python -m bench.log_cost -n 20000
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from bridge.telemetry.logs import JsonFormatter, configure_logging, log_fields, log_info

FIELDS: Final[dict[str, object]] = {
    "producer_id": "strategy-engine-1",
    "entry_id": "1764478000000-12",
    "signal_id": "sig-000123",
    "server_signal_id": "0b9c6f8e-4a5e-4bb1-9a57-0d1f6f0d2a11",
    "instrument": "EURUSD",
    "http_code": 201,
    "duration_ms": 1.234,
    "attempts": 1,
    "outcome": "success",
}


class MainLazyFlushHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler as it is on main (before log_info): text write per line, flush per 200 ms."""

    flush_interval_s: Final = 0.2

    def __init__(self, stream: Any = None) -> None:  # noqa: ANN401 - any text stream
        """Write to ``stream``."""
        super().__init__(stream)
        self._last_flush = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record; flush for WARNING+ or when the interval has passed."""
        try:
            self.stream.write(self.format(record) + self.terminator)
            now = time.monotonic()
            if record.levelno >= logging.WARNING or now - self._last_flush > self.flush_interval_s:
                self._last_flush = now
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


@contextmanager
def stdout_to(sink: str, *, unbuffered: bool) -> Iterator[io.TextIOWrapper]:
    """Point sys.stdout at a fresh file or pipe, wrapped as Python wraps a non-tty stdout.

    ``unbuffered`` is stdout under PYTHONUNBUFFERED=1 (or ``-u``): text written through to the
    raw file, a write system call per ``write()``. Container images often set it, and
    ``bench.run``'s bridges inherit it from the harness's environment.
    """
    reader: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        if sink == "file":
            fd = os.open(Path(tmp) / "out.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        else:
            reader = subprocess.Popen(
                ["/bin/cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
            )
            assert reader.stdin is not None
            fd = os.dup(reader.stdin.fileno())
            reader.stdin.close()
        binary = io.open(fd, "wb", buffering=0 if unbuffered else -1)  # noqa: SIM115, UP020 - closed below
        stream = io.TextIOWrapper(binary, encoding="utf-8", write_through=unbuffered)
        saved = sys.stdout
        sys.stdout = stream
        try:
            yield stream
        finally:
            sys.stdout = saved
            logging.shutdown()
            for handler in list(logging.root.handlers):
                logging.root.removeHandler(handler)
            stream.close()
            if reader is not None:
                reader.wait(10)


def thrash_workload() -> Callable[[], int]:
    """Return a function that evicts the CPU caches a little, like the rest of a delivery."""
    objects: list[tuple[int, list[str]]] = [(i, [str(i), str(-i)]) for i in range(60_000)]
    position = 0

    def thrash() -> int:
        nonlocal position
        total = 0
        for number, texts in objects[position : position + 400]:
            total += number + len(texts)
        position = (position + 400) % len(objects)
        return total + len(repr(objects[position]))

    return thrash


def measure(path: str, sink: str, count: int, *, unbuffered: bool, cold: bool) -> float:
    """Return CPU microseconds per line for one (path, sink, buffering, warm/cold) configuration."""
    log = logging.getLogger("bridge.worker")
    tracer = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False).get_tracer("bench")
    thrash = thrash_workload()
    with stdout_to(sink, unbuffered=unbuffered):
        configure_logging("INFO", "json")
        if path == "main":
            handler = MainLazyFlushHandler(sys.stdout)
            handler.setFormatter(JsonFormatter())
            logging.root.handlers[:] = [handler]

        def one() -> None:
            if path == "log_info":
                log_info(log, "signal delivered", dict(FIELDS))
            else:
                log.info("signal delivered", extra=log_fields(**FIELDS))

        def run(body: Callable[[], object]) -> float:
            with tracer.start_as_current_span("process signals"):
                for _ in range(min(count, 2_000)):
                    body()
                started = time.process_time()
                for _ in range(count):
                    body()
                logging.root.handlers[0].flush()
                return time.process_time() - started

        if not cold:
            return run(one) / count * 1e6

        def both_bodies() -> None:
            thrash()
            one()

        both = run(both_bodies)
        alone = run(thrash)
        return (both - alone) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    """Print a Markdown table: CPU us per INFO line by path, sink, warm and cold."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", "--count", type=int, default=50_000, help="lines per configuration")
    args = parser.parse_args(argv)
    paths = ("main", "log.info", "log_info")
    columns = [  # (sink, unbuffered, cold)
        ("file", False, False),
        ("file", True, False),
        ("pipe", False, False),
        ("pipe", True, False),
        ("file", False, True),
        ("file", True, True),
    ]
    names = [
        f"{sink}{', -u' if unbuffered else ''}, {'cold' if cold else 'warm'}"
        for sink, unbuffered, cold in columns
    ]
    print(f"| path | {' | '.join(names)} |")
    print(f"| --- |{' --- |' * len(columns)}")
    for path in paths:
        cells = [
            f"{measure(path, sink, args.count, unbuffered=unbuffered, cold=cold):.2f} us"
            for sink, unbuffered, cold in columns
        ]
        print(f"| {path} | {' | '.join(cells)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
