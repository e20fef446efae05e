"""Property-based fuzzing of every parser an outsider feeds: stream entries, signed requests, HTTP.

Hypothesis draws arbitrary field maps, bytes, JSON of every shape (huge, deeply nested, every
Unicode category including lone surrogates), hostile headers and timestamps, and raw HTTP answers.
The properties: nothing raises outside the documented errors, every refusal carries a reason,
and every stream entry ends delivered, dead-lettered with a reason, or pending. Example counts
are bounded so the file runs in about fifteen seconds; ``bench/fuzz.py`` runs coverage-guided
fuzzing of the same targets for longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

import httpx
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.core.signal import decode_signal, encode_canonical, guess_signal_id
from bridge.core.signing import build_signature
from bridge.core.timestamps import format_timestamp
from bridge.core.verification import Verification, verify_request
from bridge.delivery.jobs import idempotency_key
from bridge.delivery.worker import Worker
from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.edge.client import HmacClient
from bridge.edge.clockskew import SkewEstimator
from bridge.edge.protocol import Connection, Limits, RawResponse
from bridge.edge.results import Delivered, IngestResponse
from bridge.errors import DeliveryError, InvalidSignalError
from bridge.streams.entries import DLQ_PREFIX, Entry
from bridge.streams.group import SignalStream
from bridge.telemetry.logs import JsonFormatter
from tests import support
from tests.fixtures_ingest import KEY_ID, PRODUCER_ID, TEST_SECRET, Server, make_outbound_config

# A failing example with a 100 kB body makes Hypothesis warn about its repr: keep the failure.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

CHECKS: Final = {"headers", "window", "key", "signature"}
SIGNAL_KEYS: Final = (
    "instrument",
    "side",
    "entry_price",
    "take_profit",
    "stop_loss",
    "risk_percent",
    "comment",
    "strategy_name",
    "timestamp",
    "signal_id",
)
FAST_FUZZ: Final = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies -----------------------------------------------------------------------------

# Every Unicode category, lone surrogates (Cs) included: JSON can carry them as \ud800 escapes.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


def _json(value: object) -> bytes:
    """Encode like a careless producer: NaN and lone surrogates escaped, never rejected."""
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


# Depths around the interpreter recursion limit (1000) and far past it.
deep_nesting = (st.sampled_from([900, 1000, 5000, 100_000]) | st.integers(1, 3000)).flatmap(
    lambda depth: st.sampled_from(
        [
            b"[" * depth + b"]" * depth,
            b'{"a":' * depth + b"1" + b"}" * depth,
            b'{"comment":' + b"[" * depth,
        ]
    )
)
huge_values = st.integers(10_000, 300_000).map(
    lambda n: _json({"instrument": "XAUUSD", "comment": "x" * n})
)


def _valid_signal(i: int, **overrides: Any) -> dict[str, Any]:
    """A valid signal's JSON fields without signal_id (its key then comes from the entry id)."""
    signal = support.make_signal(i, signal_id=None)
    fields = json.loads(encode_canonical(signal))
    fields.update(overrides)
    return cast(dict[str, Any], fields)


valid_bodies = st.integers(0, 50).map(lambda i: _json(_valid_signal(i)))
mutated_bodies = st.builds(
    lambda i, key, value: _json(_valid_signal(i, **{key: value})),
    st.integers(0, 50),
    st.sampled_from([*SIGNAL_KEYS, "extra"]),
    json_values,
)
# Raw bytes (often invalid UTF-8) spliced into otherwise valid JSON, inside a string or not.
spliced_bodies = st.builds(
    lambda body, at, junk: body[: at % len(body)] + junk + body[at % len(body) :],
    valid_bodies,
    st.integers(0, 10_000),
    st.binary(min_size=1, max_size=4),
)
signal_values = st.one_of(
    spliced_bodies,
    valid_bodies,
    mutated_bodies,
    st.binary(max_size=200),
    json_values.map(_json),
    deep_nesting,
    huge_values,
)
field_names = st.sampled_from([b"signal", b"traceparent", b"tracestate", b"origin"]) | st.binary(
    max_size=12
)
field_maps = st.dictionaries(
    field_names, st.binary(max_size=60) | signal_values, min_size=0, max_size=5
) | st.builds(lambda body: {b"signal": body}, signal_values)


# --- the worker's decode path ---------------------------------------------------------------


@pytest.fixture(scope="module")
def decoding_worker() -> Worker:
    """A Worker that is never run: only its decode step (``_prepare``) is exercised."""
    config = support.bridge_config("http://127.0.0.1:9", "redis://127.0.0.1:9/0", "fuzz")
    redis = aioredis.Redis.from_url("redis://127.0.0.1:9/0")  # never connected
    stream = SignalStream(redis, stream="fuzz", group="g", consumer="c1", dlq_stream="fuzz:dlq")
    client = HmacClient(config.outbound)
    return Worker(stream, client, config.stream)


@FAST_FUZZ
@given(fields=field_maps, entry_ms=st.integers(0, 2**48))
def test_every_entry_decodes_or_is_refused_with_a_reason(
    decoding_worker: Worker, fields: dict[bytes, bytes], entry_ms: int
) -> None:
    """Any field map: a canonical, re-decodable body and a key, or an InvalidSignalError."""
    job = decoding_worker._prepare(Entry(f"{entry_ms}-0", fields))
    if job.signal is None:
        assert isinstance(job.error, InvalidSignalError)
        assert job.error.reason in ("invalid", "too_large")
        assert str(job.error)
        return
    assert job.error is None
    assert 0 < len(job.body) <= decoding_worker.client.max_body_size
    assert decode_signal(job.body) == job.signal
    assert encode_canonical(decode_signal(job.body)) == job.body
    uuid.UUID(job.key)


# --- verify_request -------------------------------------------------------------------------

SERVER_NOW: Final = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
header_names = st.sampled_from(
    ["X-Producer-Id", "X-Timestamp", "X-Signature", "X-Key-Id", "x-signature", "X-TIMESTAMP"]
) | st.text(max_size=12)
timestamps = st.one_of(
    any_text,
    st.datetimes(timezones=st.just(UTC)).map(format_timestamp),
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "2026-03-01T12:00:00Z",
            "2026-03-01T12:00:60Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "2026-03-01T12:00:00+99:00",
            "2026-03-01T12:00:00.1234567890123Z",
            "+002026-03-01T12:00:00Z",
            "2026-03-01T12:00:00\x00Z",
        ]
    ),
)


def _assert_refusal(verdict: Verification) -> None:
    assert isinstance(verdict, Verification)
    if not verdict.ok:
        assert verdict.reason
        assert verdict.check in CHECKS


@FAST_FUZZ
@given(
    headers=st.dictionaries(header_names, any_text | timestamps, max_size=6),
    body=st.binary(max_size=300),
    tolerance=st.floats(0, 1e6),
)
def test_verify_request_never_raises_and_names_every_refusal(
    headers: dict[str, str], body: bytes, tolerance: float
) -> None:
    """Hostile headers, bodies and timestamps: a Verification, never an exception, never ok."""
    verdict = verify_request(
        headers, body, {KEY_ID: TEST_SECRET}, now=SERVER_NOW, tolerance_s=tolerance
    )
    _assert_refusal(verdict)
    assert not verdict.ok


@FAST_FUZZ
@given(
    body=st.binary(min_size=1, max_size=300),
    offset_s=st.floats(-1000, 1000).filter(lambda s: abs(abs(s) - 300) > 0.5),
    flip=st.integers(0, 299),
    timestamp_form=st.sampled_from(["micro", "seconds", "offset"]),
)
def test_signed_requests_pass_inside_the_window_and_tampering_is_caught(
    body: bytes, offset_s: float, flip: int, timestamp_form: str
) -> None:
    """A correct signature passes iff inside the window; one flipped body byte fails 'signature'."""
    sent = SERVER_NOW + timedelta(seconds=offset_s)
    timestamp = {
        "micro": format_timestamp(sent),
        "seconds": sent.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "offset": sent.astimezone(UTC).isoformat(),
    }[timestamp_form]
    headers = {
        "X-Producer-Id": PRODUCER_ID,
        "X-Timestamp": timestamp,
        "X-Signature": build_signature(TEST_SECRET, body, timestamp, PRODUCER_ID),
    }
    verdict = verify_request(headers, body, {KEY_ID: TEST_SECRET}, now=SERVER_NOW)
    _assert_refusal(verdict)
    inside = abs(offset_s) <= 300
    assert verdict.ok == inside, verdict.reason
    assert verdict.check == ("" if inside else "window")
    tampered = bytearray(body)
    tampered[flip % len(body)] ^= 0x01
    again = verify_request(headers, bytes(tampered), {KEY_ID: TEST_SECRET}, now=SERVER_NOW)
    assert not again.ok
    assert again.check == ("signature" if inside else "window")


# --- HTTP answers fed to the client's parser ------------------------------------------------


class _Sink(asyncio.Transport):
    """A transport that swallows what the connection writes."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Drop the request bytes."""
        del data

    def close(self) -> None:
        """Remember the close."""
        self.closing = True

    def abort(self) -> None:
        """Remember the abort (the transport aborts on a malformed answer)."""
        self.closing = True

    def is_closing(self) -> bool:
        """Tell whether close() was called."""
        return self.closing


status_codes = st.integers(100, 999) | st.sampled_from([200, 201, 401, 409, 422, 429, 503])
header_lines = st.lists(
    st.tuples(
        st.sampled_from(
            [b"Date", b"Retry-After", b"Content-Type", b"X-Junk", b"Transfer-Encoding"]
        ),
        st.binary(max_size=40).filter(lambda v: b"\r" not in v and b"\n" not in v),
    ),
    max_size=4,
)
response_bodies = (
    signal_values
    | st.builds(
        lambda sid, junk: b'{"signal_id":"' + junk + b'","status":"received"}',
        any_text,
        st.binary(),
    )
    | st.builds(
        lambda sid, date: _json(
            {"signal_id": sid, "status": "received", "server_timestamp": date, "message": None}
        ),
        any_text,
        timestamps,
    )
)


def _framed(code: int, headers: list[tuple[bytes, bytes]], body: bytes, chunked: bool) -> bytes:
    head = [f"HTTP/1.1 {code} X".encode(), *(name + b": " + value for name, value in headers)]
    if chunked:
        head.append(b"Transfer-Encoding: chunked")
        payload = (
            (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n") if body else b"0\r\n\r\n"
        )
    else:
        head.append(f"Content-Length: {len(body)}".encode())
        payload = body
    return b"\r\n".join(head) + b"\r\n\r\n" + payload


raw_answers = st.one_of(
    st.binary(max_size=400),
    st.builds(_framed, status_codes, header_lines, response_bodies, st.booleans()),
)


async def _parse(data: bytes, splits: list[int]) -> RawResponse | BaseException:
    """Feed ``data`` (in pieces) to one connection as the server's answer; return the outcome."""
    conn = Connection(Limits())
    conn.connection_made(_Sink())
    waiter = conn.send(b"POST / HTTP/1.1\r\n\r\n")
    start = 0
    for cut in [*sorted(s % (len(data) + 1) for s in splits), len(data)]:
        conn.data_received(data[start:cut])
        start = cut
    conn.connection_lost(None)
    try:
        return await waiter
    except BaseException as exc:
        return exc


@pytest.fixture(scope="module")
def interpreting_client() -> HmacClient:
    """A client that is never opened: only its answer interpretation is exercised."""
    return HmacClient(make_outbound_config("http://127.0.0.1:9"))


@FAST_FUZZ
@given(data=raw_answers, splits=st.lists(st.integers(0, 10_000), max_size=3))
def test_any_http_answer_parses_or_fails_as_documented(
    interpreting_client: HmacClient, data: bytes, splits: list[int]
) -> None:
    """Raw answers: a response or httpx.RemoteProtocolError; then a result or a DeliveryError."""
    outcome = asyncio.run(_parse(data, splits))
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, httpx.RemoteProtocolError), repr(outcome)
        return
    SkewEstimator().observe(outcome.headers.get("date"), 0.0, 0.0)
    error: DeliveryError | None = None
    try:
        _interpret(interpreting_client, outcome.status, outcome.headers, outcome.body)
    except DeliveryError as exc:
        error = exc
    if error is not None:
        assert str(error)
        assert error.http_code == outcome.status
        assert JsonFormatter().format(_record(error))


def _interpret(
    client: HmacClient, code: int, headers: Mapping[str, str], body: bytes
) -> tuple[IngestResponse | None, str | None]:
    """Judge an answer as post_signal does: (answer, warning) when acked, else raise its error."""
    outcome = client._judge(code, headers, body, time.perf_counter())
    if isinstance(outcome, Delivered):
        return outcome.response, outcome.warning
    raise outcome.cause


def _record(exc: DeliveryError) -> logging.LogRecord:
    """The client's failure log line, as the bridge would format it."""
    return logging.makeLogRecord({"msg": "Signal post failed", "fields": {"details": exc.details}})


@FAST_FUZZ
@given(
    code=status_codes,
    body=response_bodies | deep_nesting,
    retry_after=st.none() | any_text | timestamps,
)
def test_any_answer_body_becomes_a_result_or_a_delivery_error(
    interpreting_client: HmacClient, code: int, body: bytes, retry_after: str | None
) -> None:
    """Every status with any body (deep JSON too): an IngestResponse or a DeliveryError."""
    headers = {} if retry_after is None else {"retry-after": retry_after}
    with contextlib.suppress(DeliveryError):
        _interpret(interpreting_client, code, headers, body)


# --- every entry ends delivered, dead-lettered with a reason, or pending --------------------


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[tuple[IngestApp, str]]:
    """One reference server for every example (keys differ per stream)."""
    app = IngestApp(secrets={support.KEY_ID: support.SECRET.encode()})
    with serve_in_thread(app) as url:
        yield app, url


async def _run_entries(
    redis_url: str, server_url: str, stream: str, entries: list[dict[bytes, bytes]]
) -> tuple[list[str], dict[str, bytes], int]:
    """Publish the entries, run a Worker until drained; return (ids, DLQ reasons by id, pending)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        ids = [str(await client.xadd(stream, fields), "ascii") for fields in entries]  # type: ignore[arg-type]
        config = support.bridge_config(server_url, redis_url, stream)
        async with support.running(client, config):
            await support.eventually(
                lambda: support.drained(client, stream), what="fuzzed entries handled"
            )
        dead: list[tuple[bytes, dict[bytes, bytes]]] = await client.xrange(f"{stream}:dlq")  # type: ignore[assignment]
        reasons = {
            fields[f"{DLQ_PREFIX}source_id".encode()].decode(): fields[
                f"{DLQ_PREFIX}reason".encode()
            ]
            for _, fields in dead
        }
        pending = int((await client.xpending(stream, "g"))["pending"])
        await client.delete(stream, f"{stream}:dlq")
        return ids, reasons, pending
    finally:
        await client.aclose()


stream_entries = st.dictionaries(
    st.sampled_from([b"signal", b"traceparent", b"other"]), signal_values, min_size=1, max_size=3
)


@pytest.mark.redis
@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(entries=st.lists(stream_entries, min_size=1, max_size=25))
def test_every_fuzzed_entry_is_delivered_or_dead_lettered_with_a_reason(
    redis_url: str, fuzz_server: tuple[IngestApp, str], entries: list[dict[bytes, bytes]]
) -> None:
    """Through real Redis and the reference server: each entry delivered xor dead-lettered."""
    app, url = fuzz_server
    stream = f"fuzz:{uuid.uuid4().hex[:10]}"
    ids, reasons, pending = asyncio.run(_run_entries(redis_url, url, stream, entries))
    assert pending == 0
    delivered = app.keys()
    for entry_id, fields in zip(ids, entries, strict=True):
        try:
            signal = decode_signal(fields[b"signal"]) if b"signal" in fields else None
        except InvalidSignalError:
            signal = None
        key = idempotency_key(stream, entry_id, signal.signal_id) if signal else None
        landed = key in delivered
        assert landed != (entry_id in reasons), (entry_id, fields, reasons.get(entry_id))
        if entry_id in reasons:
            assert reasons[entry_id] in (b"invalid", b"too_large", b"rejected", b"expired")


def test_deeply_nested_answers_found_by_fuzzing_are_delivery_errors(
    interpreting_client: HmacClient,
) -> None:
    """Kept from fuzzing: JSON nested past the recursion limit, in a 201 or a 422 body."""
    deep_object = b'{"a":' * 5000 + b"1" + b"}" * 5000
    answer, warning = _interpret(interpreting_client, 201, {}, deep_object)
    assert answer is None  # acked all the same: a 201 is final whatever its body
    assert warning is not None
    assert "not an IngestResponse" in warning
    with pytest.raises(DeliveryError) as rejected:
        _interpret(interpreting_client, 422, {}, b"[" * 5000 + b"]" * 5000)
    assert isinstance(rejected.value.details, str)
    assert rejected.value.details.startswith("[[[")


def test_bad_utf8_inside_json_strings_found_by_fuzzing_is_refused_with_a_reason(
    interpreting_client: HmacClient,
) -> None:
    """Kept from atheris: raw non-UTF-8 bytes inside a JSON string, in an entry or an answer."""
    with pytest.raises(InvalidSignalError, match="not valid UTF-8"):
        decode_signal(b'{"comment":"\xe3"}')
    answer, warning = _interpret(
        interpreting_client, 201, {}, b'{"signal_id":"srv_\xe3","status":"received"}'
    )
    assert answer is None  # acked with a warning: a 201 is final whatever its body
    assert warning is not None
    assert "utf-8" in warning
    with pytest.raises(DeliveryError) as rejected:
        _interpret(interpreting_client, 422, {}, b'{"detail":"\xff"}')
    assert rejected.value.details == '{"detail":"\ufffd"}'


async def _first_dead_second_delivered(
    server: Server, redis: aioredis.Redis, redis_url: str, stream: str, first: bytes
) -> bytes:
    """XADD ``first`` and a valid signal; only ``first`` is dead-lettered; return its error.

    Runs a Worker until the stream is drained and checks the second entry reached the server.
    """
    await redis.xadd(stream, {"signal": first})
    await redis.xadd(stream, {"signal": _json(_valid_signal(2))})
    config = support.bridge_config(server.url, redis_url, stream)
    async with support.running(redis, config):
        await support.eventually(lambda: support.drained(redis, stream), what="both handled")
    dead: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(f"{stream}:dlq")  # type: ignore[assignment]
    assert [fields[b"dlq_reason"] for _, fields in dead] == [b"invalid"]
    assert len(server.app.received) == 1
    return dead[0][1][b"dlq_error"]


@pytest.mark.redis
async def test_an_entry_with_bad_utf8_is_dead_lettered_and_the_worker_goes_on(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """Before the fix this entry crashed the read loop on every restart (a poison pill)."""
    poison = _json(_valid_signal(1)).replace(b'"n=1"', b'"n=\xe3"')
    error = await _first_dead_second_delivered(server, redis, redis_url, stream_name, poison)
    assert b"not valid UTF-8" in error


def test_the_signal_id_guess_for_logs_survives_deep_nesting() -> None:
    """Kept from fuzzing: the best-effort signal_id of an invalid entry never raises."""
    assert guess_signal_id(b"[" * 5000 + b"]" * 5000) is None
    assert guess_signal_id(b'{"signal_id":"\xe3"}') is None
    assert guess_signal_id(b'{"signal_id":"s-1","side":"up"}') == "s-1"


@pytest.mark.redis
async def test_a_decoder_bug_dead_letters_the_entry_and_the_worker_goes_on(
    server: Server,
    redis: aioredis.Redis,
    redis_url: str,
    stream_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any unexpected error while decoding (a bug, not bad input) dead-letters that entry as invalid, naming the error, and the next entry is still delivered."""  # noqa: E501
    real_decode = decode_signal

    def flaky_decode(raw: bytes) -> Any:
        if b'"n=1"' in raw:
            raise RuntimeError("decoder bug")
        return real_decode(raw)

    monkeypatch.setattr("bridge.delivery.jobs.decode_signal", flaky_decode)
    first = _json(_valid_signal(1))
    error = await _first_dead_second_delivered(server, redis, redis_url, stream_name, first)
    assert b"RuntimeError: decoder bug" in error
