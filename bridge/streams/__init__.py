"""Redis Streams: connection, entries, consumer-group operations, dead letters, retention."""
