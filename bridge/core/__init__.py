"""The contract with the ingest server: signal, canonical body, signing, outcome table; no I/O."""
