"""Shard ownership for strict ordering: assignment, leases and fencing, the coordinator."""
