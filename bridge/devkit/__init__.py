"""Dev tools: reference ingest server, demo, embedded Redis; the service never uses them."""
