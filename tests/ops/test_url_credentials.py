"""URLs as an operator sees them: credentials never shown, every malformed URL one line, exit 2.

The password test runs the real commands (``check``, ``status``, ``run``) against a private Redis
whose ACL user needs the password given in the URL's query string, and greps every line.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from bridge.core.secrets import redact_url
from bridge.streams.producer import publish
from tests.fixtures_ingest import Server
from tests.ops.test_cli import cli
from tests.otlp_receiver import OtlpReceiver
from tests.procs import Replicas
from tests.support import bridge_env, eventually, make_signal

GOOD: Final = {
    "HMAC_PRODUCER_SECRET": "url-test-secret-0123456789abcdef",
    "OUTBOUND_SERVER_URL": "https://api.example.com",
    "BRIDGE_REDIS_URL": "redis://127.0.0.1:1/0",
}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OUTBOUND_SERVER_URL", "https://api.example.com:5290x", "has an invalid port"),
        ("OUTBOUND_SERVER_URL", "https://api.example.com:99999", "has an invalid port"),
        ("OUTBOUND_SERVER_URL", "http://[::1", "is not a valid URL"),
        ("BRIDGE_REDIS_URL", "redis://127.0.0.1:5290x/0", "has an invalid port"),
        ("BRIDGE_REDIS_URL", "redis://[::1/0", "is not a valid URL"),
        ("OUTBOUND_PROXY_URL", "http://proxy:99999", "has an invalid port"),
        ("OUTBOUND_PROXY_URL", "http://[proxy:3128", "is not a valid URL"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:5290x", "has an invalid port"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://[otel:4318", "is not a valid URL"),
        ("OUTBOUND_SERVER_URL", "https://api.example.com/?token=t0k3n", "query or fragment"),
        ("OUTBOUND_SERVER_URL", "https://api.example.com/#frag", "query or fragment"),
    ],
)
def test_a_malformed_url_is_one_line_and_exit_2(variable: str, value: str, message: str) -> None:
    """Each bad URL setting stops `check` with one line naming the variable; no traceback."""
    result = cli("check", env={**GOOD, variable: value})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"signal-bridge: configuration error: {variable} "), lines[0]
    assert message in lines[0]
    assert "t0k3n" not in result.stderr + result.stdout


def test_redact_url_hides_userinfo_and_credential_parameters() -> None:
    """Passwords, user tokens and credential-named query or fragment parameters become ***."""
    assert redact_url("redis://u:pw@h:6379/0?password=pw2&db=1") == (
        "redis://u:***@h:6379/0?password=***&db=1"
    )
    assert redact_url("https://h/v1/traces?api_key=K&x=1#access_token=T") == (
        "https://h/v1/traces?api_key=***&x=1#access_token=***"
    )
    assert redact_url("redis://tok@[::1/0?secret=s") == "redis://***@[::1/0?secret=***"
    assert redact_url("http://proxy:3128") == "http://proxy:3128"


@pytest.mark.parametrize(
    ("content", "line", "why"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 1, "JSON nested deeper than 512 levels"),
        (b'{"a": 1}\n{"instrument": "X\xff"}\n', 2, "not UTF-8 (byte 0xff)"),
        (b'[\n{"a": 1},\n{"b" 2}\n]', 3, "not valid JSON"),
    ],
)
def test_publish_file_errors_are_one_line_naming_the_file_and_line(
    tmp_path: Path, content: bytes, line: int, why: str
) -> None:
    """Deep nesting, bad UTF-8 and malformed JSON in --file: one line, file and line, exit 2."""
    path = tmp_path / "signals.json"
    path.write_bytes(content)
    result = cli("publish", "--file", str(path), env={"BRIDGE_REDIS_URL": GOOD["BRIDGE_REDIS_URL"]})
    assert result.returncode == 2, result.stderr
    [only] = result.stderr.strip().splitlines()
    assert only.startswith(f"signal-bridge publish: --file {path} line {line}: {why}"), only


@pytest.mark.redis
@pytest.mark.slow
async def test_a_password_in_the_redis_url_query_never_appears_in_any_output(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, stream_name: str, server: Server
) -> None:
    """`check`, `status` and a running bridge (DEBUG logs) never print the query's password."""
    password = f"pw-{uuid.uuid4().hex}"
    user = f"u-{uuid.uuid4().hex[:8]}"
    await redis.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["~*"],
        channels=["&*"],
        commands=["+@all"],
    )
    base = urlsplit(redis_url)
    secret_url = f"redis://{base.netloc}/0?username={user}&password={password}"
    api_key = f"key-{uuid.uuid4().hex}"
    try:
        with OtlpReceiver() as receiver, Replicas(tmp_path) as children:
            env = bridge_env(
                server.url,
                secret_url,
                stream_name,
                BRIDGE_LOG_LEVEL="DEBUG",
                OTEL_EXPORTER_OTLP_ENDPOINT=f"{receiver.endpoint}?api_key={api_key}",
                OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                OTEL_METRICS_EXPORTER="none",
            )
            outputs: list[str] = []
            for command in (("check",), ("status",), ("status", "--json")):
                result = await asyncio.to_thread(cli, *command, env=env)
                assert result.returncode == 0, result.stdout + result.stderr
                outputs.append(result.stdout + result.stderr)
            assert "password=***" in outputs[0], outputs[0]
            assert "api_key=***" in outputs[0], outputs[0]
            await publish(redis, make_signal(1), stream=stream_name)
            bridge = children.start("bridge", env)
            await eventually(lambda: len(server.app.received) == 1, what="delivery", timeout_s=30)
            bridge.send(signal.SIGTERM)
            assert await bridge.wait(20) == 0, bridge.output()
            outputs.append(bridge.output())
            assert "password=***" in bridge.stdout(), bridge.output()
    finally:
        await redis.acl_deluser(user)
    for output in outputs:
        assert password not in output
        assert api_key not in output


def test_the_ingest_server_refuses_a_malformed_otlp_endpoint_in_one_line() -> None:
    """`ingest-server` with OTEL_EXPORTER_OTLP_ENDPOINT=...:5290x exits 2 with one line."""
    result = cli(
        "ingest-server",
        "--port",
        "1",
        env={
            "INGEST_SECRETS": "k1=url-test-secret-0123456789abcdef",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:5290x",
        },
        timeout=30,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        "signal-bridge: configuration error: OTEL_EXPORTER_OTLP_ENDPOINT has an invalid port"
    )
