"""`dlq show` and `dlq list` print a hostile dead letter's control characters escaped."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from bridge.ops.dlq import shown
from bridge.streams.entries import DeadLetter
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish_raw
from tests.ops.test_cli import cli

pytestmark = pytest.mark.redis

# Sets the terminal's window title, erases the line, then hides the rest behind an RTL override.
HOSTILE: bytes = b"\x1b]0;owned\x07\x1b[2Kfake ok\nline\xe2\x80\xaeevil\x9b31m"


async def test_dlq_show_and_list_print_escape_bytes_escaped(
    redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """No raw ESC, BEL, newline or C1 byte of the entry reaches stdout; each reads as an escape."""
    env = {
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_STREAM": stream_name,
        "BRIDGE_DLQ_STREAM": f"{stream_name}:dlq",
    }
    stream = SignalStream(
        redis,
        stream=stream_name,
        group="signal-bridge",
        consumer="ops",
        dlq_stream=f"{stream_name}:dlq",
    )
    await stream.ensure_group("0")
    await publish_raw(redis, {"signal": HOSTILE, "note\x1b[1m": HOSTILE}, stream=stream_name)
    [entry] = await stream.read(10, None)
    await stream.dead_letter(
        entry, DeadLetter(reason="invalid", error=HOSTILE.decode("utf-8", "replace"))
    )
    letters: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(f"{stream_name}:dlq")  # type: ignore[assignment]
    [(dlq_id, _)] = letters

    show = cli("dlq", "show", dlq_id.decode(), env=env)
    listing = cli("dlq", "list", env=env)
    for result in (show, listing):
        assert result.returncode == 0, result.stderr
        out = result.stdout
        for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
            assert raw not in out
        assert "\\x1b]0;owned\\x07\\x1b[2Kfake ok\\nline\\u202eevil" in out
    assert "note\\x1b[1m: " in show.stdout
    assert len(listing.stdout.splitlines()) == 1


def test_shown_keeps_printable_text_and_marks_its_own_backslashes() -> None:
    """Printable text (accents, CJK) is kept; a backslash in the data is doubled."""
    assert shown("XAUUSD é 金") == "XAUUSD é 金"
    assert shown("a\\x1b") == "a\\\\x1b"
    assert shown("tab\there") == "tab\\there"
