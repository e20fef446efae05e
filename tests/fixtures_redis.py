"""Redis fixtures: a private redis-server per session, or REDIS_URL when set."""
