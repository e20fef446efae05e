"""BRIDGE_REDIS_PASSWORD_FILE: the Redis password from a file, never in a URL or any output."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from tests.ops.test_cli import cli

pytestmark = pytest.mark.redis


@pytest.fixture
async def acl_user(redis: aioredis.Redis) -> AsyncIterator[tuple[str, str]]:
    """An ACL user on the session's Redis that needs a password; yield (user, password)."""
    user, password = f"pwfile-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    await redis.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"]
    )
    try:
        yield user, password
    finally:
        await redis.acl_deluser(user)


async def test_commands_authenticate_with_the_password_file_and_never_print_it(
    tmp_path: Path, redis_url: str, stream_name: str, acl_user: tuple[str, str]
) -> None:
    """publish, status and check reach Redis as the ACL user with the file's password, unshown."""
    user, password = acl_user
    secret = tmp_path / "redis_password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    env = {
        "BRIDGE_REDIS_URL": f"redis://{user}@{urlsplit(redis_url).netloc}/0",
        "BRIDGE_REDIS_PASSWORD_FILE": str(secret),
        "BRIDGE_STREAM": stream_name,
        "BRIDGE_DLQ_STREAM": f"{stream_name}:dlq",
    }
    published = await asyncio.to_thread(cli, "publish", "--sample", "2", env=env)
    status = await asyncio.to_thread(cli, "status", env=env)
    check = await asyncio.to_thread(
        cli,
        "check",
        env={
            **env,
            "HMAC_PRODUCER_SECRET": "pwfile-secret-0123456789abcdef",
            "OUTBOUND_SERVER_URL": "http://127.0.0.1:1",
        },
    )
    assert published.returncode == 0, published.stderr
    assert status.returncode == 0, status.stderr
    assert f"stream        {stream_name} (2 entries)" in status.stdout
    assert "(password from BRIDGE_REDIS_PASSWORD_FILE)" in check.stdout + check.stderr
    assert check.returncode == 1, check.stdout + check.stderr  # only the ingest server is down
    assert "check failed: ingest" in check.stderr, check.stderr
    for result in (published, status, check):
        assert password not in result.stdout + result.stderr
        assert "WARNING" not in result.stderr


def test_a_password_in_both_the_url_and_the_file_is_refused(tmp_path: Path) -> None:
    """Both a URL password and BRIDGE_REDIS_PASSWORD_FILE: one line naming the file variable."""
    secret = tmp_path / "redis_password"
    secret.write_text("from-file")
    secret.chmod(0o600)
    result = cli(
        "status",
        env={
            "BRIDGE_REDIS_URL": "redis://u:in-url@127.0.0.1:1/0",
            "BRIDGE_REDIS_PASSWORD_FILE": str(secret),
        },
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "BRIDGE_REDIS_PASSWORD_FILE is set: give one" in line
    assert "in-url" not in line
    assert "from-file" not in line
