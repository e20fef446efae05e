"""The Lua scripts the bridge runs in Redis, read from the ``.lua`` files shipped beside it.

Each script in ``bridge/streams/lua/`` opens with a comment saying its KEYS, ARGV and reply.
Modules load theirs once, at import, and register it with redis-py (EVALSHA, then EVAL).
"""

from __future__ import annotations

from importlib.resources import files

__all__ = ["load"]


def load(name: str) -> str:
    """Return the text of the script ``lua/<name>.lua`` (FileNotFoundError for no such script)."""
    return (files("bridge.streams") / "lua" / f"{name}.lua").read_text(encoding="utf-8")
