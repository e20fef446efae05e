"""Redis Streams: connection, entries, consumer-group operations, dead letters, producer, retention.

The Lua scripts these run in Redis live in ``lua/``, loaded by :mod:`bridge.streams.scripts`.
"""
