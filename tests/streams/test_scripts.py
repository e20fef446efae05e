"""The Lua scripts shipped in bridge/streams/lua, as bridge.streams.scripts loads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.streams import scripts


def test_every_lua_script_loads_and_opens_with_its_keys_and_argv() -> None:
    """Each shipped script loads by name and opens with a comment saying its KEYS and ARGV."""
    folder = Path(scripts.__file__).parent / "lua"
    names = sorted(p.stem for p in folder.glob("*.lua"))
    assert names == [
        "ack_leased",
        "ack_receipts",
        "claim_strays",
        "dead_letter",
        "dead_letter_receipt",
        "expire_consumer",
        "fence_raise",
        "heartbeat",
        "lease_acquire",
        "lease_release",
        "lease_renew",
        "take_pending",
        "trim_acked",
    ]
    for name in names:
        text = scripts.load(name)
        first = text.splitlines()[0]
        assert first.startswith("-- KEYS:"), name
        assert "ARGV:" in first, name
        assert "redis.call" in text, name
    with pytest.raises(FileNotFoundError):
        scripts.load("no_such_script")
