"""XACK sends entry ids as bytes: the same bytes on the wire, whatever form the caller holds."""

from __future__ import annotations

from bridge.streams import group


def test_ack_ids_are_the_utf8_bytes_of_the_ids() -> None:
    """Each id is encoded as redis-py would have encoded the str (UTF-8), in order."""
    ids = ["1700000000000-0", "1700000000000-1", "9-18446744073709551615"]
    assert group._as_bytes(ids) == [i.encode("utf-8") for i in ids]
    assert group._as_bytes([]) == []
