"""The JSON log lines as a reader of stdout sees them: bytes, order, when they arrive, failures.

``log_info`` (the per-delivery INFO line) writes straight into ``LazyFlushHandler``'s buffer when
logging is set up as shipped; these tests hold it to the bytes ``logger.info`` writes, to the
order of lines, to the 200 ms rule and to exit, and check that any other set-up (text format,
pytest's caplog) gets the ordinary ``logger.info``.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from bridge.streams.producer import publish
from bridge.telemetry.logs import configure_logging, log_fields, log_info
from tests.fixtures_ingest import Server
from tests.procs import Replicas
from tests.support import bridge_env, eventually, make_signal

WAIT_S: Final = 15.0
DELIVERED_KEYS: Final = [
    "timestamp",
    "level",
    "message",
    "logger",
    "trace_id",
    "span_id",
    "producer_id",
    "entry_id",
    "signal_id",
    "server_signal_id",
    "instrument",
    "http_code",
    "duration_ms",
    "attempts",
    "outcome",
]
FIELDS: Final[dict[str, Any]] = {
    "producer_id": "strategy-engine-1",
    "entry_id": "1764478000000-12",
    "signal_id": "sig-ü-€-😀",
    "server_signal_id": None,
    "instrument": "EURUSD",
    "http_code": 201,
    "duration_ms": 1.234,
    "attempts": 1,
    "outcome": "success",
}
FROZEN_TIME: Final = 1_764_478_000.123456


@dataclass
class Pipe:
    """sys.stdout pointed at a pipe (block-buffered, as for a child process); we hold the reader."""

    read_fd: int
    stream: io.TextIOWrapper

    def configure(self, level: str = "INFO", fmt: str = "json") -> None:
        """configure_logging with this pipe as stdout (pytest swaps sys.stdout between phases)."""
        configure_on(self.stream, level, fmt)

    def available(self) -> bytes:
        """Everything readable right now, without waiting."""
        chunks = []
        while select.select([self.read_fd], [], [], 0)[0]:
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def read_until(self, count: int, timeout_s: float = WAIT_S) -> list[bytes]:
        """Read until ``count`` lines have arrived (fail after ``timeout_s`` without them)."""
        data = b""
        while data.count(b"\n") < count:
            ready = select.select([self.read_fd], [], [], timeout_s)[0]
            assert ready, f"{count} lines not there after {timeout_s}s: {data!r}"
            data += os.read(self.read_fd, 1 << 20)
        return data.splitlines()


def configure_on(stream: io.TextIOWrapper, level: str, fmt: str) -> None:
    """Run configure_logging as if ``stream`` were sys.stdout."""
    saved = sys.stdout
    sys.stdout = stream
    try:
        configure_logging(level, fmt)
    finally:
        sys.stdout = saved


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restore the root logger's handlers and level after a test that reconfigures logging."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        yield
    finally:
        for handler in list(root.handlers):
            handler.close()
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


@pytest.fixture(params=[False, True], ids=["buffered", "PYTHONUNBUFFERED"])
def pipe(request: pytest.FixtureRequest, root_logging: None) -> Iterator[Pipe]:
    """A pipe as sys.stdout, wrapped as Python wraps a non-interactive stdout (also with -u)."""
    unbuffered: bool = request.param
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 1 << 20)  # room for the largest test's lines
    binary = io.open(write_fd, "wb", buffering=0 if unbuffered else -1)  # noqa: SIM115, UP020
    stream = io.TextIOWrapper(binary, encoding="utf-8", write_through=unbuffered)
    try:
        yield Pipe(read_fd, stream)
    finally:
        for handler in list(logging.getLogger().handlers):
            handler.close()
            logging.getLogger().removeHandler(handler)
        stream.close()
        os.close(read_fd)


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """One wall-clock instant for every log record, so two paths' lines compare byte for byte."""
    monkeypatch.setattr("time.time", lambda: FROZEN_TIME)


def test_fast_line_has_the_bytes_logger_info_writes(pipe: Pipe, frozen_clock: None) -> None:
    """log_info writes the very bytes logger.info(extra=log_fields(...)) writes, inside a span and out."""  # noqa: E501
    pipe.configure("INFO", "json")
    log = logging.getLogger("bridge.worker")
    tracer = TracerProvider(sampler=ALWAYS_ON).get_tracer("test")
    with tracer.start_as_current_span("process s"):
        log_info(log, "signal delivered", dict(FIELDS))
        log.info("signal delivered", extra=log_fields(**FIELDS))
    log_info(log, "signal already on the server", dict(FIELDS))
    log.info("signal already on the server", extra=log_fields(**FIELDS))
    logging.getLogger().handlers[0].flush()
    fast, ordinary, fast_untraced, ordinary_untraced = pipe.read_until(4)
    assert fast == ordinary
    assert fast_untraced == ordinary_untraced
    assert list(msgspec.json.decode(fast)) == DELIVERED_KEYS
    assert "trace_id" not in msgspec.json.decode(fast_untraced)
    assert msgspec.json.decode(fast)["timestamp"] == "2025-11-30T04:46:40.123456Z"
    assert "sig-ü-€-😀".encode() in fast, "UTF-8 as the stream would encode it, not escaped"


def test_fast_line_creates_no_log_record_when_logging_is_as_shipped(
    pipe: Pipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As shipped, the delivered line skips the LogRecord machinery (that is its whole point)."""
    pipe.configure("INFO", "json")
    records: list[str] = []
    real_log = logging.Logger._log

    def counting(self: logging.Logger, *args: Any, **kwargs: Any) -> None:
        records.append(self.name)
        real_log(self, *args, **kwargs)

    monkeypatch.setattr(logging.Logger, "_log", counting)
    log_info(logging.getLogger("bridge.worker"), "signal delivered", dict(FIELDS))
    assert records == []
    logging.getLogger().handlers[0].flush()
    assert len(pipe.read_until(1)) == 1


def test_warning_is_written_at_once_after_every_info_line_before_it(pipe: Pipe) -> None:
    """A WARNING reaches the pipe as soon as it is logged, after all INFO lines logged before it."""
    pipe.configure("INFO", "json")
    log = logging.getLogger("bridge.worker")
    for i in range(50):
        log_info(log, "signal delivered", {**FIELDS, "entry_id": f"{i}-0"})
    log.info("resuming own pending entries", extra=log_fields(count=3))
    log_info(log, "signal delivered", {**FIELDS, "entry_id": "50-0"})
    log.warning("delivery failed, will retry", extra=log_fields(entry_id="51-0"))
    lines = [msgspec.json.decode(line) for line in pipe.available().splitlines()]
    assert [line["level"] for line in lines] == ["INFO"] * 52 + ["WARNING"]
    assert [line.get("entry_id") for line in lines] == [
        *(f"{i}-0" for i in range(50)),
        None,
        "50-0",
        "51-0",
    ]


def test_info_lines_arrive_without_a_next_line_or_a_flush(pipe: Pipe) -> None:
    """INFO lines followed by silence still reach the pipe (the 200 ms rule, no exit needed)."""
    pipe.configure("INFO", "json")
    log = logging.getLogger("bridge.worker")
    log_info(log, "signal delivered", {**FIELDS, "entry_id": "1-0"})
    log.info("resuming own pending entries", extra=log_fields(count=1))
    log_info(log, "signal delivered", {**FIELDS, "entry_id": "2-0"})
    lines = pipe.read_until(3, timeout_s=5.0)
    assert [msgspec.json.decode(line).get("entry_id") for line in lines] == ["1-0", None, "2-0"]


def test_large_bursts_are_written_in_order_while_logging(pipe: Pipe) -> None:
    """More than one chunk of lines arrives complete and in order (no line torn or lost)."""
    pipe.configure("INFO", "json")
    log = logging.getLogger("bridge.worker")
    count = 2_000  # about 600 KB: several 64 KiB chunks
    for i in range(count):
        log_info(log, "signal delivered", {**FIELDS, "entry_id": f"{i}-0"})
    logging.getLogger().handlers[0].flush()
    lines = pipe.read_until(count)
    assert [msgspec.json.decode(line)["entry_id"] for line in lines] == [
        f"{i}-0" for i in range(count)
    ]


def test_text_format_gets_the_ordinary_line(pipe: Pipe, frozen_clock: None) -> None:
    """With BRIDGE_LOG_FORMAT=text, log_info writes the human line logger.info writes."""
    pipe.configure("INFO", "text")
    log = logging.getLogger("bridge.worker")
    log_info(log, "signal delivered", dict(FIELDS))
    log.info("signal delivered", extra=log_fields(**FIELDS))
    logging.getLogger().handlers[0].flush()
    fast, ordinary = pipe.read_until(2)
    assert fast == ordinary
    assert fast.startswith(b"2025-11-30T04:46:40.123456Z INFO    bridge.worker: signal delivered ")


def test_warning_level_drops_the_line(pipe: Pipe) -> None:
    """With BRIDGE_LOG_LEVEL=WARNING the delivered line is not written at all."""
    pipe.configure("WARNING", "json")
    log_info(logging.getLogger("bridge.worker"), "signal delivered", dict(FIELDS))
    logging.getLogger("bridge.worker").warning("only this")
    [line] = pipe.read_until(1)
    assert msgspec.json.decode(line)["message"] == "only this"


def test_caplog_sees_the_record_with_its_fields(
    pipe: Pipe, caplog: pytest.LogCaptureFixture
) -> None:
    """With another handler on the root (pytest's caplog), log_info is logger.info + fields."""
    pipe.configure("INFO", "json")  # replaces every root handler, caplog's too: put it back
    logging.getLogger().addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    log_info(logging.getLogger("bridge.worker"), "signal delivered", dict(FIELDS))
    [record] = [r for r in caplog.records if r.name == "bridge.worker"]
    assert (record.levelname, record.getMessage()) == ("INFO", "signal delivered")
    assert record.fields == FIELDS  # type: ignore[attr-defined]
    logging.getLogger().handlers[0].flush()
    assert msgspec.json.decode(pipe.read_until(1)[0])["entry_id"] == FIELDS["entry_id"]


def test_unencodable_field_falls_back_to_the_lenient_line(pipe: Pipe) -> None:
    """A field msgspec cannot encode is written as its str(), as the formatter has always done."""
    pipe.configure("INFO", "json")
    log_info(logging.getLogger("bridge.worker"), "signal delivered", {"path": Path("/x")})
    logging.getLogger().handlers[0].flush()
    assert msgspec.json.decode(pipe.read_until(1)[0])["path"] == "/x"


def test_a_closed_reader_never_reaches_the_caller(
    pipe: Pipe, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once the pipe's reader is gone (EPIPE), logging returns normally; stderr says so once."""
    pipe.configure("INFO", "json")
    os.close(pipe.read_fd)
    pipe.read_fd = os.open(os.devnull, os.O_RDONLY)  # the fixture closes this one instead
    log = logging.getLogger("bridge.worker")
    for i in range(1_000):
        log_info(log, "signal delivered", {**FIELDS, "entry_id": f"{i}-0"})
    log.warning("after the reader left")
    log.error("and again")
    logging.getLogger().handlers[0].flush()
    assert capsys.readouterr().err.count("stdout was closed (EPIPE)") == 1


def test_a_full_disk_drops_lines_and_later_lines_still_go_out(pipe: Pipe) -> None:
    """Writes failing with ENOSPC (/dev/full) lose those lines only; logging carries on."""
    full = io.TextIOWrapper(io.open("/dev/full", "wb"), encoding="utf-8")  # noqa: SIM115, UP020
    configure_on(full, "INFO", "json")
    log = logging.getLogger("bridge.worker")
    for i in range(300):
        log_info(log, "signal delivered", {**FIELDS, "entry_id": f"{i}-0"})
    log.warning("disk full")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(pipe.stream)
    full.close()
    log_info(log, "signal delivered", {**FIELDS, "entry_id": "after-0"})
    handler.flush()
    [line] = pipe.read_until(1)
    assert msgspec.json.decode(line)["entry_id"] == "after-0"


def test_a_full_nonblocking_stdout_never_holds_half_a_line(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full non-blocking pipe drops whole lines only: the reader never sees a torn line."""
    read_fd, write_fd = os.pipe()
    fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(write_fd, False)
    stream = io.TextIOWrapper(
        io.open(write_fd, "wb", buffering=0),  # noqa: SIM115, UP020 - a raw stdout, as with -u
        encoding="utf-8",
        write_through=True,
    )
    try:
        configure_on(stream, "INFO", "json")
        log = logging.getLogger("bridge.worker")
        for i in range(200):  # ~66 KB for a 4 KiB pipe: the write stops inside a line
            log_info(log, "signal delivered", {**FIELDS, "entry_id": f"{i}-0"})
        logging.getLogger().handlers[0].flush()
        first = os.read(read_fd, 1 << 20)
        log.warning("after the pipe drained")
        rest = os.read(read_fd, 1 << 20)
    finally:
        for handler in list(logging.getLogger().handlers):
            handler.close()
            logging.getLogger().removeHandler(handler)
        stream.close()
        os.close(read_fd)
    lines = (first + rest).splitlines()
    records = [msgspec.json.decode(line) for line in lines]  # every line whole
    assert 0 < len(records) < 201
    assert records[-1]["message"] == "after the pipe drained"
    assert [r["entry_id"] for r in records[:-1]] == [f"{i}-0" for i in range(len(records) - 1)]
    assert capsys.readouterr().err.count("stdout is full") == 1


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "PYTHONUNBUFFERED"])
def test_lines_logged_just_before_exit_are_written(tmp_path: Path, unbuffered: str) -> None:
    """A process that logs and exits (normally, or by SIGTERM's handler) writes every line."""
    script = textwrap.dedent(
        """
        import logging, signal, sys
        from bridge.telemetry.logs import configure_logging, log_info
        configure_logging("INFO", "json")
        log = logging.getLogger("bridge.worker")
        for i in range(500):
            log_info(log, "signal delivered", {"entry_id": f"{i}-0"})
        if sys.argv[1] == "sigterm":
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            print("ready", file=sys.stderr, flush=True)
            signal.pause()
        """
    )
    for how in ("exit", "sigterm"):
        out = tmp_path / f"{how}.out"
        with out.open("wb") as stdout:
            child = subprocess.Popen(  # noqa: S603 - this interpreter, our script
                [sys.executable, "-c", script, how],
                stdout=stdout,
                stderr=subprocess.PIPE,
                cwd=Path(__file__).resolve().parents[2],
                env={**os.environ, "PYTHONUNBUFFERED": unbuffered},
            )
            assert child.stderr is not None
            if how == "sigterm":
                assert child.stderr.readline() == b"ready\n"
                child.send_signal(signal.SIGTERM)
            assert child.wait(WAIT_S) == 0, child.stderr.read()
            child.stderr.close()
        lines = out.read_bytes().splitlines()
        assert [msgspec.json.decode(line)["entry_id"] for line in lines] == [
            f"{i}-0" for i in range(500)
        ], how


async def test_signal_bridge_run_writes_each_delivered_line_in_the_shipped_shape(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str, tmp_path: Path
) -> None:
    """A real `signal-bridge run`: every delivery's line on stdout while it idles, keys in order, then a clean stop."""  # noqa: E501
    count = 300  # more than one 64 KiB chunk of lines
    entry_ids = [await publish(redis, make_signal(i), stream=stream_name) for i in range(count)]
    with Replicas(tmp_path) as replicas:
        child = replicas.start("c1", bridge_env(server.url, redis_url, stream_name))

        def delivered_lines() -> list[dict[str, Any]]:
            if not child.alive:
                raise AssertionError(f"the bridge exited early\n{child.output()}")
            text = child.stdout()
            complete = text[: text.rfind("\n") + 1]  # a chunk may be half-written right now
            lines = [msgspec.json.decode(line) for line in complete.splitlines() if line]
            return [line for line in lines if line["message"] == "signal delivered"]

        # No SIGTERM yet: the idle bridge's last lines must reach the file on their own.
        await eventually(
            lambda: len(delivered_lines()) == count, timeout_s=30, what="every delivered line"
        )
        child.send(signal.SIGTERM)
        assert await child.wait(WAIT_S) == 0, child.output()

    lines = [msgspec.json.decode(line) for line in child.stdout().splitlines() if line]
    delivered = [line for line in lines if line["message"] == "signal delivered"]
    assert sorted(line["entry_id"] for line in delivered) == sorted(entry_ids)
    received = {r.signal.signal_id: r.server_signal_id for r in server.app.received}
    for line in delivered:
        assert list(line) == DELIVERED_KEYS, line
        assert (line["level"], line["logger"], line["outcome"]) == (
            "INFO",
            "bridge.worker",
            "success",
        )
        assert line["server_signal_id"] == received[line["signal_id"]]
        assert (len(line["trace_id"]), len(line["span_id"])) == (32, 16)
    assert lines[-1]["message"] == "signal-bridge stopped", child.output()
    assert "Traceback" not in child.output()
