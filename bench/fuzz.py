"""Coverage-guided fuzzing (atheris, libFuzzer) of the signal decoder, verifier and HTTP answers.

The regular suite fuzzes the same targets with Hypothesis for a bounded number of examples; this
runs libFuzzer for a fixed time per target, steered by the coverage of ``bridge``'s code. Any
exception outside the documented ones is a crash: libFuzzer stops, writes the input under
``--artifacts`` and this script exits non-zero. What it finds is fixed and kept as a test.

atheris is not a project dependency (it builds from source where no wheel exists); use a scratch
venv::

    python3 -m venv /tmp/fuzz && /tmp/fuzz/bin/pip install atheris -e .
    /tmp/fuzz/bin/python bench/fuzz.py --seconds 60            # each of decode, verify, http
    /tmp/fuzz/bin/python bench/fuzz.py --target verify --seconds 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

__all__ = ["main"]

TARGETS: Final = ("decode", "verify", "http")
_SECRET: Final = b"fuzz-secret-0123456789abcdef"
_NOW_S: Final = 1_800_000_000.0
_SEEDS: Final = {
    "decode": [
        b'{"comment":"n=0","entry_price":100.0,"instrument":"XAUUSD","risk_percent":1.0,'
        b'"side":"buy","signal_id":"sig-0","stop_loss":95.0,"strategy_name":"s",'
        b'"take_profit":110.0,"timestamp":"2027-01-15T08:00:00.000000Z"}',
    ],
    "verify": [b"\x00\x01 2027-01-15T08:00:00.000000Z|mt5|sig|{}"],
    "http": [
        b"HTTP/1.1 201 Created\r\nDate: Fri, 15 Jan 2027 08:00:00 GMT\r\nContent-Length: 82\r\n\r\n"
        b'{"signal_id":"srv_1","status":"received","server_timestamp":"2027-01-15T08:00:00Z"}',
        b"HTTP/1.1 401 X\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{}  \r\n0\r\n\r\n",
    ],
}


def _decode_target(atheris: Any) -> Any:  # noqa: ANN401 - atheris is untyped
    """Any bytes as a stream entry's ``signal``: a canonical round trip or InvalidSignalError."""
    with atheris.instrument_imports():
        from bridge.core.signal import decode_signal, encode_canonical  # noqa: PLC0415
        from bridge.errors import InvalidSignalError  # noqa: PLC0415 - instrumented import

    def one(data: bytes) -> None:
        try:
            signal = decode_signal(data)
            body = encode_canonical(signal)
        except InvalidSignalError as exc:
            if not str(exc):
                raise AssertionError("a refusal without a reason") from exc
            return
        if decode_signal(body) != signal or encode_canonical(decode_signal(body)) != body:
            raise AssertionError(f"canonical round trip differs for {data!r}")

    return one


def _verify_target(atheris: Any) -> Any:  # noqa: ANN401 - atheris is untyped
    """Headers, body and timestamp from the input: a Verification with a reason, never an error."""
    with atheris.instrument_imports():
        from datetime import UTC, datetime  # noqa: PLC0415

        from bridge.core.signing import build_signature  # noqa: PLC0415
        from bridge.core.verification import verify_request  # noqa: PLC0415

    now = datetime.fromtimestamp(_NOW_S, UTC)

    def one(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        mode = fdp.ConsumeIntInRange(0, 3)
        timestamp = fdp.ConsumeUnicodeNoSurrogates(40)
        producer = fdp.ConsumeUnicodeNoSurrogates(20)
        key_id = fdp.ConsumeUnicodeNoSurrogates(8) if mode == 3 else None
        body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 400))
        signature = fdp.ConsumeUnicodeNoSurrogates(60)
        if mode >= 1 and body and producer:
            # A real signature, so the fuzzer reaches the window and key checks.
            with contextlib.suppress(ValueError):
                signature = build_signature(_SECRET, body, timestamp, producer)
        headers = {"X-Producer-Id": producer, "X-Timestamp": timestamp, "X-Signature": signature}
        if key_id is not None:
            headers["X-Key-Id"] = key_id
        verdict = verify_request(headers, body, {"k1": _SECRET}, now=now)
        if not verdict.ok and not (verdict.reason and verdict.check):
            raise AssertionError(f"a refusal without a reason or check: {verdict!r}")

    return one


def _http_target(atheris: Any) -> Any:  # noqa: ANN401 - atheris is untyped
    """Raw bytes as the server's answer: parsed or RemoteProtocolError; then judged into a value."""
    # Third-party code first and uninstrumented (instrumenting httpx and OpenTelemetry takes
    # minutes); coverage guides the fuzzer through bridge's own parsing and interpretation.
    import httptools  # noqa: F401, PLC0415
    import httpx  # noqa: PLC0415
    import opentelemetry.sdk.metrics  # noqa: PLC0415
    import opentelemetry.sdk.trace  # noqa: F401, PLC0415

    with atheris.instrument_imports():
        from bridge.config.loader import load_config  # noqa: PLC0415
        from bridge.edge.client import HmacClient  # noqa: PLC0415
        from bridge.edge.clockskew import SkewEstimator  # noqa: PLC0415
        from bridge.edge.protocol import Connection, Limits  # noqa: PLC0415

    env = {
        "HMAC_PRODUCER_SECRET": _SECRET.decode(),
        "PRODUCER_ID": "fuzz",
        "OUTBOUND_SERVER_URL": "http://127.0.0.1:9",
    }
    client = HmacClient(load_config(env=env).outbound)
    loop = asyncio.new_event_loop()

    class Sink(asyncio.Transport):
        """Swallows the request bytes."""

        def write(self, data: bytes | bytearray | memoryview) -> None:
            """Drop them."""

        def is_closing(self) -> bool:
            """Never closing."""
            return False

        def close(self) -> None:
            """Nothing to close."""

        def abort(self) -> None:
            """Nothing to abort."""

    async def parse(data: bytes) -> Any:  # noqa: ANN401 - a RawResponse or an exception
        conn = Connection(Limits())
        conn.connection_made(Sink())
        waiter = conn.send(b"POST / HTTP/1.1\r\n\r\n")
        half = len(data) // 2
        conn.data_received(data[:half])
        conn.data_received(data[half:])
        conn.connection_lost(None)
        try:
            return await waiter
        except httpx.RemoteProtocolError as exc:
            return exc

    def one(data: bytes) -> None:
        outcome = loop.run_until_complete(parse(data))
        if isinstance(outcome, Exception):
            return
        SkewEstimator().observe(outcome.headers.get("date"), _NOW_S, _NOW_S)
        client._judge(outcome.status, outcome.headers, outcome.body, 0.0)

    return one


def _child(target: str, libfuzzer_args: list[str]) -> None:
    """Run one target under libFuzzer (does not return: libFuzzer exits the process)."""
    atheris = importlib.import_module("atheris")
    builder = {"decode": _decode_target, "verify": _verify_target, "http": _http_target}[target]
    one = builder(atheris)
    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()


_STATS: Final = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+)")


def _run(target: str, seconds: int, artifacts: Path) -> tuple[int, str]:
    """Run one target in a child process for ``seconds``; return (exit code, summary)."""
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))
    for i, seed in enumerate(_SEEDS[target]):
        (corpus / f"seed{i}").write_bytes(seed)
    artifacts.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    command = [
        sys.executable,
        __file__,
        "--child",
        target,
        f"-max_total_time={seconds}",
        f"-artifact_prefix={artifacts}/{target}-",
        "-rss_limit_mb=2048",
        "-max_len=4096",
        str(corpus),
    ]
    try:
        proc = subprocess.run(  # noqa: S603 - our own interpreter and script
            command, capture_output=True, text=True, timeout=seconds + 600, check=False
        )
    except subprocess.TimeoutExpired:
        return (
            1,
            f"| {target} | - | - | - | - | no result: start-up or run over {seconds + 600} s |",
        )
    elapsed = time.monotonic() - started
    match = _STATS.search(proc.stderr)
    runs, cov, features = match.groups() if match else ("?", "?", "?")
    summary = (
        f"| {target} | {elapsed:.0f} | {runs} | {cov} | {features} | "
        f"{'none' if proc.returncode == 0 else 'CRASH, see ' + str(artifacts)} |"
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
    return proc.returncode, summary


def main(argv: list[str] | None = None) -> int:
    """Fuzz each selected target for a fixed time and print a Markdown table."""
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--child"]:
        _child(args_in[1], args_in[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    parser.add_argument("--target", choices=[*TARGETS, "all"], default="all")
    parser.add_argument("--artifacts", type=Path, default=Path("bench/results/fuzz"))
    args = parser.parse_args(args_in)
    try:
        importlib.import_module("atheris")
    except ImportError:
        print("atheris is not installed: see the module docstring for a scratch venv")
        return 2
    print("| target | seconds | inputs run | coverage (edges) | features | crashes |")
    print("| --- | --- | --- | --- | --- | --- |")
    worst = 0
    for target in TARGETS if args.target == "all" else (args.target,):
        code, summary = _run(target, args.seconds, args.artifacts)
        print(summary, flush=True)
        worst = worst or code
    return worst


if __name__ == "__main__":
    sys.exit(main())
