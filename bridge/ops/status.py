"""``signal-bridge status``: each stream's group at a glance, as text or JSON.

In strict ordering it also shows each shard's lease: the holder (consumer and process), its
fencing token and the time left (the token the ingest server fences on).
"""

from __future__ import annotations

import argparse

import msgspec

from bridge.config.loader import BridgeConfig
from bridge.ownership.leases import LeaseHolder, LeaseStore, members_key
from bridge.streams.connection import connect
from bridge.streams.group import signal_streams

__all__ = ["run_status"]


async def run_status(config: BridgeConfig, args: argparse.Namespace) -> int:
    """Print each stream's length, lag, pending, oldest pending age and dead letters.

    ``--json`` prints a list with one object per stream, always (one stream or many).
    """
    cfg = config.stream
    strict = cfg.ordering == "strict"
    leases: list[LeaseHolder | None] = []
    async with connect(cfg.redis_url, cluster=cfg.cluster, password=cfg.redis_password) as redis:
        streams = signal_streams(cfg, redis)
        statuses = [await stream.status() for stream in streams]
        if strict:
            store = LeaseStore(
                redis, group=cfg.group, members_key=members_key(cfg.stream_names(), cfg.group)
            )
            leases = [await store.describe(stream.stream) for stream in streams]
    if args.json:
        # One shape whatever the number of streams or the ordering mode: a list of objects,
        # each with every key ("lease" is null in parallel mode and for a free shard).
        rows = [msgspec.structs.asdict(status) for status in statuses]
        for i, row in enumerate(rows):
            lease = leases[i] if strict else None
            row["lease"] = None if lease is None else msgspec.structs.asdict(lease)
        print(msgspec.json.encode(rows).decode())
        return 0
    for i, status in enumerate(statuses):
        age = status.oldest_pending_age_ms
        print(f"stream        {status.stream} ({status.length} entries)")
        if status.group_exists:
            print(f"group         {status.group}")
            print(f"lag           {'unknown' if status.lag is None else status.lag}")
        else:
            print(
                f"group         {status.group} MISSING (run creates it at "
                f"BRIDGE_START_ID={cfg.start_id})"
            )
            print("lag           - (no group)")
        print(f"pending       {status.pending}")
        print(f"oldest        {'-' if age is None else f'{age / 1000:.1f}s'}")
        print(f"dead letters  {status.dead_letters} in {config.stream.dlq_for(status.stream)}")
        if status.dead_letter_error:
            print(f"PROBLEM       {status.dead_letter_error}")
        if strict:
            print(f"lease         {_lease_text(leases[i])}")
        for consumer in status.consumers:
            print(
                f"  consumer {consumer.name}: {consumer.pending} pending, "
                f"idle {consumer.idle_ms} ms"
            )
    return 0


def _lease_text(lease: LeaseHolder | None) -> str:
    """Describe a shard's lease in one line: its holder and fencing token, or free."""
    if lease is None:
        return "free (no replica holds this shard)"
    return (
        f"{lease.consumer} (process {lease.instance or '?'}), fencing token "
        f"{lease.fencing_token}, expires in {lease.expires_in_ms} ms unless renewed"
    )
