"""CPU per POST of HTTP engines, in this process, against an nginx sink on loopback.

``python -m bench.engines`` sends the same signed-looking POST (same headers, same body) through
each engine with a fixed number in flight and prints a Markdown table: CPU per request of this
process (``time.process_time``: every thread, so Rust runtimes count too), wall throughput, and
the answers seen. Engines, in alternated rounds so drift hits all alike:

- ``fast``: the project's ``bridge.edge.http.FastTransport.post`` with prebuilt request bytes (its
  limits on, as shipped);
- ``pyreqwest``: pyreqwest's async ``Client`` (Rust reqwest on tokio);
- ``aiohttp``: ``aiohttp.ClientSession`` with a 32-connection ``TCPConnector``;
- ``httpx``: ``httpx.AsyncClient`` on its default transport (httpcore); far fewer requests,
  it is 20-50x slower.

Needs nginx (``bench/sink.py`` finds it; ``--install-nginx`` installs it) and the ``bench``
dependency group (aiohttp, pyreqwest). An engine that cannot be imported is skipped with a line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Final

import httpx

from bench.sink import find_nginx, install_nginx, start_nginx
from bridge.core.signing import INGEST_PATH
from bridge.edge.http import FastTransport

BODY: Final = json.dumps({"instrument": "XAUUSD", "side": "buy", "entry_price": 2000.5}).encode()
HEADERS: Final = {
    "Content-Type": "application/json",
    "User-Agent": "signal-bridge-bench",
    "X-Producer-Id": "bench-producer",
    "X-Timestamp": "2026-01-01T00:00:00.000000Z",
    "X-Signature": "c2lnbmF0dXJlLW9mLWZpeGVkLWxlbmd0aC1mb3ItdGhlLWJlbmNobWFyaw==",
    "X-Idempotency-Key": "6f1c7a52-8a0e-5d0c-9a3c-1d2f7e0b9a11",
}

Post = Callable[[], Awaitable[int]]
Engine = Callable[[str, int], Awaitable[tuple[Post, Callable[[], Awaitable[None]]]]]


async def _fast(url: str, in_flight: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    transport = FastTransport(url, max_connections=in_flight)
    headers = [*HEADERS.items(), ("Content-Length", str(len(BODY)))]
    request = transport.request_head("POST", INGEST_PATH, headers) + BODY

    async def post() -> int:
        return (await transport.post(request, 30.0)).status

    return post, transport.aclose


async def _pyreqwest(url: str, in_flight: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    from pyreqwest.client import ClientBuilder  # noqa: PLC0415 - optional engine

    client = ClientBuilder().max_connections(in_flight).timeout(timedelta(seconds=30)).build()
    target = url + INGEST_PATH

    async def post() -> int:
        response = await client.post(target).headers(HEADERS).body_bytes(BODY).build().send()
        await response.bytes()
        return response.status

    return post, client.close


async def _aiohttp(url: str, in_flight: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    import aiohttp  # noqa: PLC0415 - optional engine

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight))
    target = url + INGEST_PATH

    async def post() -> int:
        async with session.post(target, data=BODY, headers=HEADERS) as response:
            await response.read()
            return response.status

    return post, session.close


async def _httpx(url: str, in_flight: int) -> tuple[Post, Callable[[], Awaitable[None]]]:
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    client = httpx.AsyncClient(limits=limits, timeout=30, trust_env=False)
    target = url + INGEST_PATH

    async def post() -> int:
        return (await client.post(target, content=BODY, headers=HEADERS)).status_code

    return post, client.aclose


ENGINES: Final[dict[str, Engine]] = {
    "fast": _fast,
    "pyreqwest": _pyreqwest,
    "aiohttp": _aiohttp,
    "httpx": _httpx,
}


async def _run(engine: Engine, url: str, requests: int, in_flight: int) -> dict[str, float]:
    """Send ``requests`` POSTs with ``in_flight`` workers; return CPU us/request and rate."""
    post, close = await engine(url, in_flight)
    statuses: dict[int, int] = {}
    try:
        for _ in range(min(200, requests)):  # warm-up: connections, caches
            await post()
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                status = await post()
                statuses[status] = statuses.get(status, 0) + 1

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await close()
    if set(statuses) != {201}:
        raise RuntimeError(f"unexpected answers: {statuses}")
    return {"cpu_us": cpu / requests * 1e6, "rate": requests / wall}


def main(argv: list[str] | None = None) -> None:
    """Measure every engine, alternating rounds; print the table of medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--httpx-requests", type=int, default=2_000)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--install-nginx", action="store_true")
    args = parser.parse_args(argv)
    nginx = find_nginx() or (install_nginx() if args.install_nginx else None)
    if nginx is None:
        sys.exit("bench.engines: needs nginx (--install-nginx installs it)")
    if args.loop == "uvloop":
        import uvloop  # noqa: PLC0415 - the loop the service runs on

        uvloop.install()
    sink = start_nginx(nginx)
    results: dict[str, list[dict[str, float]]] = {}
    try:
        for round_no in range(args.rounds):
            for name in args.engines.split(","):
                count = args.httpx_requests if name == "httpx" else args.requests
                try:
                    result = asyncio.run(_run(ENGINES[name], sink.url, count, args.in_flight))
                except ImportError as exc:
                    print(f"SKIP {name}: {exc}")
                    continue
                results.setdefault(name, []).append(result)
                print(
                    f"round {round_no + 1} {name}: {result['cpu_us']:.1f} us/request, "
                    f"{result['rate']:,.0f} requests/s",
                    file=sys.stderr,
                )
    finally:
        sink.stop()
    title = f"engine ({args.loop}, {args.in_flight} in flight, nginx)"
    print(f"\n| {title} | CPU us/request | requests/s |")
    print("| --- | --- | --- |")
    for name, runs in results.items():
        cpu = statistics.median(r["cpu_us"] for r in runs)
        rate = statistics.median(r["rate"] for r in runs)
        print(f"| {name} | {cpu:.1f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
