"""The reference ingest server: the server side of the signing contract, as a small ASGI app.

It verifies the signature with :func:`bridge.core.verification.verify_request` before parsing
any JSON (v1 or v2; ``required_version`` refuses the other) and refuses a signature it has already
accepted (:mod:`bridge.devkit.replay`); every such 401 says only "invalid signature" (or
"invalid request"), while its log line names the reason and the failed ``check``. It
validates the body as a :class:`~bridge.core.signal.Signal` (422), drops a repeated
(producer id, idempotency key) (409) and answers 201 with an IngestResponse. A key id bound to
producer ids (``producers``) signs for those only. The demo, the tests, the benchmark and
docker compose run it; the server team can read it as a model.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import msgspec
from opentelemetry import propagate, trace
from opentelemetry.semconv.attributes import http_attributes, url_attributes

from bridge.core.ed25519 import Ed25519PublicKey
from bridge.core.fencing import PROBLEM_CONTENT_TYPE, stale_lease_problem
from bridge.core.secrets import key_fingerprint
from bridge.core.signal import DEFAULT_MAX_BODY_SIZE, Signal, decode_signal
from bridge.core.signing import DEFAULT_TOLERANCE_S, INGEST_PATH
from bridge.core.timestamps import format_timestamp
from bridge.core.verification import verify_request
from bridge.devkit.fences import Fences, LeaseVerdict
from bridge.devkit.replay import ReplayCache
from bridge.errors import BridgeError, InvalidSignalError
from bridge.telemetry.logs import log_fields
from bridge.telemetry.tracing import get_tracer

if TYPE_CHECKING:
    from bridge.devkit.ingest_guard import ServerLimits

__all__ = ["HEALTH_PATH", "IngestApp", "Received", "serve_in_thread"]

log = logging.getLogger("bridge.ingest")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ENCODER: Final = msgspec.json.Encoder()


HEALTH_PATH: Final = "/healthz"


@dataclass(frozen=True, slots=True)
class Problem:
    """A refusal sent as ``application/problem+json`` (RFC 9457) rather than plain JSON."""

    body: dict[str, object]


class _Answer(NamedTuple):
    """One request's status and JSON payload; ``reason`` and ``check`` go to the log only."""

    status: int
    payload: object
    reason: str | None = None
    check: str | None = None


@dataclass(frozen=True, slots=True)
class Received:
    """One accepted signal as the server stored it."""

    idempotency_key: str
    signal: Signal
    server_signal_id: str
    producer_id: str
    key_id: str | None
    received_at: float
    traceparent: str | None


@dataclass
class IngestApp:
    """ASGI app for ``POST /api/v1/signals/ingest``; keeps what it accepted in memory.

    ``fault`` lets a test force a status for the next requests (return None to serve normally).
    ``producers`` binds a key id to the producer ids it may sign for; a key id absent from it
    signs for any (one WARNING at start lists those).
    """

    secrets: Mapping[str, bytes] = field(repr=False)
    # Ed25519 public keys by key id (their fingerprint), for the standard-webhooks and rfc9421
    # schemes (INGEST_ED25519_PUBLIC_KEYS).
    public_keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict, repr=False)
    tolerance_s: float = DEFAULT_TOLERANCE_S
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    clock: Callable[[], float] = time.time
    fault: Callable[[Mapping[str, str]], int | None] | None = None
    max_stored: int = 100_000
    tracer: trace.Tracer | None = None
    producers: Mapping[str, frozenset[str]] = field(default_factory=dict)
    required_version: int | None = None
    received: list[Received] = field(default_factory=list)
    requests_total: int = 0
    refusals: dict[str, int] = field(default_factory=dict)
    # Idempotency keys are scoped by the producer that sent them: (producer id, key) -> id.
    _keys: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)
    # Signatures already accepted: v1 does not sign the idempotency key, so without this a
    # captured request could be replayed under a new key inside the replay window.
    _replays: ReplayCache = field(default_factory=ReplayCache, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Per (producer, shard) the highest lease token accepted (INGEST_FENCING); see devkit/fences.
    fences: Fences = field(default_factory=Fences)

    def __post_init__(self) -> None:
        """Log each key id with its fingerprint, so both teams can compare keys without sharing."""
        for key_id, secret in sorted(self.secrets.items()):
            log.info(
                "ingest key loaded",
                extra=log_fields(key_id=key_id, key_fingerprint=key_fingerprint(secret)),
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI request (lifespan events are acknowledged and ignored)."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self._warn_unbound_keys()
                    log.info(
                        "ingest server ready",
                        extra=log_fields(
                            key_ids=sorted(self.secrets), tolerance_s=self.tolerance_s
                        ),
                    )
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == HEALTH_PATH and scope["method"] in ("GET", "HEAD"):
            # Liveness for container health checks: no span, no log line, not counted.
            await _respond(
                send, 200, {"status": "ok"}, date=email.utils.formatdate(self.clock(), usegmt=True)
            )
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        started = time.perf_counter()
        tracer = self.tracer if self.tracer is not None else get_tracer()
        with tracer.start_as_current_span(
            f"{scope['method']} {scope['path']}",
            context=propagate.extract(headers),
            kind=trace.SpanKind.SERVER,
            attributes={
                http_attributes.HTTP_REQUEST_METHOD: scope["method"],
                url_attributes.URL_PATH: scope["path"],
            },
        ) as span:
            try:
                answer = await self._handle(scope, receive, headers)
            except _ClientGone:  # the server's limits closed it (and logged why)
                return
            span.set_attribute(http_attributes.HTTP_RESPONSE_STATUS_CODE, answer.status)
            if answer.status >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
            _log_outcome(scope, headers, answer, time.perf_counter() - started)
        await _respond(
            send,
            answer.status,
            answer.payload,
            date=email.utils.formatdate(self.clock(), usegmt=True),
        )

    def _warn_unbound_keys(self) -> None:
        """Log one WARNING naming the key ids that may sign for any producer, if there are any."""
        unbound = sorted(set(self.secrets) - set(self.producers))
        if unbound:
            log.warning(
                "ingest keys not bound to producer ids: each may sign for any producer",
                extra=log_fields(key_ids=unbound),
            )

    async def _handle(self, scope: Scope, receive: Receive, headers: Mapping[str, str]) -> _Answer:
        """Decide the status and JSON payload of one request."""
        self.requests_total += 1
        if scope["path"] != INGEST_PATH:
            return _Answer(404, {"detail": "not found"})
        if scope["method"] != "POST":
            return _Answer(405, {"detail": "method not allowed"})
        body = await _read_body(receive, self.max_body_size)
        if body is None:
            return self._refuse(413, "body too large")
        if self.fault is not None:
            forced = self.fault(headers)
            if forced is not None:
                return self._refuse(forced, "fault injected")
        return self._judge(scope, headers, body)

    def _judge(self, scope: Scope, headers: Mapping[str, str], body: bytes) -> _Answer:
        """Verify the signature, then answer the probe or decode, deduplicate and store."""
        verdict = verify_request(
            headers,
            body,
            self.secrets,
            now=datetime.fromtimestamp(self.clock(), UTC),
            tolerance_s=self.tolerance_s,
            path=INGEST_PATH,
            producers=self.producers,
            required_version=self.required_version,
            public_keys=self.public_keys,
            target_uri=f"{scope.get('scheme', 'http')}://{headers.get('host', '')}{INGEST_PATH}",
        )
        if not verdict.ok:
            kind = "timestamp outside window" if verdict.check == "window" else None
            return self._refuse(
                401, verdict.reason, kind=kind, answer=verdict.answer, check=verdict.check
            )
        if headers.get("x-signal-probe") == "1":
            # `signal-bridge check --signed-probe`: the signature holds; nothing is stored.
            return _Answer(
                200, {"probe": "ok", "producer_id": verdict.producer_id, "key_id": verdict.key_id}
            )
        try:
            signal = decode_signal(body)
        except InvalidSignalError as exc:
            return self._refuse(422, str(exc), kind="invalid signal", errors=[str(exc)])
        key = headers.get("x-idempotency-key") or ""
        try:
            uuid.UUID(key)
        except ValueError:
            return self._refuse(400, "X-Idempotency-Key must be a UUID")
        producer_id = verdict.producer_id or ""
        # Remembered until its timestamp leaves the window: no later copy can pass before then.
        # Only X-Signature requests need it (v1 leaves the key unsigned); the profiles sign the
        # key, so for them the key check suffices.
        until = (verdict.timestamp.timestamp() if verdict.timestamp else 0.0) + self.tolerance_s
        with self._lock:
            lease = self.fences.check(producer_id, headers)
            if lease.malformed or lease.stale:
                return self._refuse_lease(lease)
            self.fences.record(producer_id, lease)
            existing = self._keys.get((producer_id, key))
            replayed = (
                existing is None
                and verdict.signature is not None
                and not self._replays.first_use(verdict.signature, until=until, now=self.clock())
            )
            if existing is None and not replayed:
                server_id = f"srv_{uuid.uuid4().hex[:16]}"
                self._store(
                    (producer_id, key),
                    Received(
                        idempotency_key=key,
                        signal=signal,
                        server_signal_id=server_id,
                        producer_id=producer_id,
                        key_id=verdict.key_id,
                        received_at=self.clock(),
                        traceparent=headers.get("traceparent"),
                    ),
                )
        if existing is not None:
            return self._refuse(409, "duplicate idempotency key", signal_id=existing)
        if replayed:
            return self._refuse(
                401, "replayed signature", answer="invalid signature", check="replayed_signature"
            )
        return _Answer(
            201,
            {
                "signal_id": server_id,
                "status": "received",
                "server_timestamp": format_timestamp(datetime.fromtimestamp(self.clock(), UTC)),
                "message": None,
                "errors": None,
            },
        )

    def _store(self, key: tuple[str, str], accepted: Received) -> None:
        """Keep an accepted signal and its key; past ``max_stored`` forget the oldest first.

        A forgotten key is accepted again as new: the bound keeps the demo's memory flat (about
        0.7 KiB a signal); a real server keeps its keys in its database for as long as producers
        may retry.
        """
        self._keys[key] = accepted.server_signal_id
        self.received.append(accepted)
        while len(self._keys) > self.max_stored:
            del self._keys[next(iter(self._keys))]
        # Trimmed in batches (an eighth of the bound) so each accept stays O(1) on average.
        if len(self.received) > self.max_stored + max(1, self.max_stored // 8):
            del self.received[: len(self.received) - self.max_stored]

    def _refuse_lease(self, lease: LeaseVerdict) -> _Answer:
        """Refuse a malformed lease header (400) or a stale lease (409 problem+json)."""
        if lease.stamp is None or lease.current_token is None:
            return self._refuse(400, 'X-Signal-Lease must be shard="<stream>", token=<n>')
        self.refusals["stale lease"] = self.refusals.get("stale lease", 0) + 1
        problem = stale_lease_problem(lease.stamp, lease.current_token)
        return _Answer(409, Problem(problem), "stale lease", None)

    def _refuse(
        self,
        status: int,
        reason: str,
        *,
        kind: str | None = None,
        answer: str | None = None,
        check: str | None = None,
        **extra: object,
    ) -> _Answer:
        """Count a refusal (by a bounded kind) and build its answer.

        The client reads ``answer`` when given (a 401 names no check), else the reason; the
        log line gets the reason and the check either way.
        """
        self.refusals[kind or reason] = self.refusals.get(kind or reason, 0) + 1
        return _Answer(status, {"detail": answer or reason, **extra}, reason, check)

    def keys(self) -> set[str]:
        """Return the idempotency keys accepted so far (from any producer)."""
        with self._lock:
            return {key for _, key in self._keys}


def _log_outcome(
    scope: Scope, headers: Mapping[str, str], answer: _Answer, duration_s: float
) -> None:
    """Log one request's outcome as one line: INFO when stored or a duplicate, else WARNING.

    A refusal's line carries the reason and the failed check the client was not told.
    """
    status, payload = answer.status, answer.payload
    outcome = {201: "accepted", 409: "duplicate"}.get(status, "refused")
    if isinstance(payload, Problem):  # a stale lease: refused, not a duplicate
        outcome, payload = "refused", payload.body
    level = logging.INFO if outcome != "refused" else logging.WARNING
    if not log.isEnabledFor(level):
        return
    detail = payload.get("detail") if isinstance(payload, dict) else None
    log.log(
        level,
        f"ingest {outcome}",
        extra=log_fields(
            method=scope["method"],
            path=scope["path"],
            http_code=status,
            outcome=outcome,
            reason=answer.reason or detail,
            check=answer.check,
            producer_id=headers.get("x-producer-id"),
            key_id=headers.get("x-key-id"),
            idempotency_key=headers.get("x-idempotency-key"),
            server_signal_id=(payload.get("signal_id") if isinstance(payload, dict) else None),
            duration_ms=round(duration_s * 1000, 3),
        ),
    )


class _ClientGone(Exception):
    """The connection closed before the whole body arrived: there is no one to answer."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """Read the whole request body; None once it grows past ``limit``.

    Raises :class:`_ClientGone` on a disconnect (a body timeout of the server's limits, or the
    client leaving): a partial body is never judged.
    """
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _respond(send: Send, status: int, payload: object, *, date: str) -> None:
    """Send a JSON response with a ``Date`` header from the app's own (injectable) clock."""
    media = b"application/json"
    if isinstance(payload, Problem):
        payload, media = payload.body, PROBLEM_CONTENT_TYPE.encode()
    body = _ENCODER.encode(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media),
                (b"content-length", str(len(body)).encode()),
                (b"date", date.encode("latin-1")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def serve_in_thread(
    app: Callable[[Scope, Receive, Send], Awaitable[None]],
    host: str = "127.0.0.1",
    port: int = 0,
    limits: ServerLimits | None = None,
) -> Iterator[str]:
    """Run an ASGI ``app`` (IngestApp or a bench sink) on uvicorn in a thread; yield its URL.

    The server runs within ``limits`` (:mod:`bridge.devkit.ingest_guard`); the app writes its
    own Date header, from its clock (a test can set it 400 s off).
    """
    import uvicorn  # noqa: PLC0415 - the server is optional at import time of this module

    from bridge.devkit.ingest_guard import ServerLimits, uvicorn_config  # noqa: PLC0415 - ditto

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this: without it a response written in two parts waits out the
    # client's delayed ACK (about 40 ms a request on Linux).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, limits or ServerLimits()))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="ingest-server", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise BridgeError("ingest server did not start")
            time.sleep(0.01)
        url_host = f"[{host}]" if ":" in host else host
        yield f"http://{url_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
