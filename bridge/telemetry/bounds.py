"""Bounded copies of outside text for log lines and span attributes: 2 KiB each, size noted.

A producer's field, a server's answer or a peer's header can be megabytes; a log line or a span
attribute copies at most :data:`MAX_FIELD_BYTES` of it, ending with ``... [cut: N bytes in all]``
so the reader knows it was cut and how large it was. The check is one ``len`` on strings (a
string of at most a quarter of the limit in code points cannot pass it in UTF-8), so the
delivery's hot path pays next to nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["MAX_FIELD_BYTES", "bounded", "bounded_fields", "cut_text"]

MAX_FIELD_BYTES: Final = 2048
# A str of this many code points or fewer is at most MAX_FIELD_BYTES in UTF-8 (4 bytes each).
_SURELY_SHORT: Final = MAX_FIELD_BYTES // 4


def cut_text(content: bytes | str, limit: int = MAX_FIELD_BYTES) -> str:
    """Return ``content`` as text of at most ``limit`` UTF-8 bytes, noting the original size.

    A cut text ends with ``... [cut: N bytes in all]`` and never splits a UTF-8 character;
    bytes that are not UTF-8 are replaced.
    """
    raw = content.encode("utf-8", "replace") if isinstance(content, str) else content
    if len(raw) <= limit:
        return raw.decode("utf-8", "replace")
    note = f"... [cut: {len(raw)} bytes in all]"
    keep = max(0, limit - len(note.encode()))
    head = raw[:keep].decode("utf-8", "ignore")
    while len(head.encode("utf-8")) > keep:  # a replacement character can grow the text
        head = head[:-1]
    return head + note


def bounded(value: Any) -> Any:  # noqa: ANN401 - passes any value through, cutting long text
    """Return ``value`` cut to MAX_FIELD_BYTES when it is long text or bytes, else unchanged."""
    kind = type(value)
    if kind is str:
        if len(value) <= _SURELY_SHORT:
            return value
        raw = value.encode("utf-8", "replace")
        return value if len(raw) <= MAX_FIELD_BYTES else cut_text(raw)
    if kind is bytes or kind is bytearray:
        return cut_text(bytes(value)) if len(value) > MAX_FIELD_BYTES else value
    return value


def bounded_fields(fields: Mapping[str, Any]) -> dict[str, Any] | None:
    """Return a copy of ``fields`` with long values cut, or None when none needed cutting.

    Only strings longer than a quarter of the limit in code points (and long bytes) are looked
    at further, so the usual log line costs one ``type`` and ``len`` per value.
    """
    for value in fields.values():
        kind = type(value)
        if (kind is str and len(value) > _SURELY_SHORT) or (
            (kind is bytes or kind is bytearray) and len(value) > MAX_FIELD_BYTES
        ):
            break
    else:
        return None
    out = {key: bounded(value) for key, value in fields.items()}
    return out if any(out[key] is not value for key, value in fields.items()) else None
