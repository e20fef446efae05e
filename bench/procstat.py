"""CPU time and peak RSS of a process tree, read from /proc (no psutil needed)."""

from __future__ import annotations

import ctypes
import os
import signal
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """Return ``pid`` and all its live descendants (via /proc/<pid>/task/<tid>/children)."""
    seen: list[int] = []
    todo = [pid]
    while todo and len(seen) < 1000:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return seen


def cpu_seconds(pid: int) -> float:
    """Return utime+stime (plus reaped children's) of one process in seconds, 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after "(comm)": state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / _CLK_TCK


def status_kb(pid: int, key: str) -> int:
    """Return one ``kB`` value (e.g. VmHWM, VmRSS) of /proc/<pid>/status, 0 if unavailable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def tree_cpu_seconds(pids: list[int]) -> float:
    """Return the summed CPU seconds of the given processes and their descendants."""
    return sum(cpu_seconds(p) for root in pids for p in process_tree(root))


def tree_peak_rss_mb(pids: list[int]) -> float:
    """Return the summed peak RSS (VmHWM) in MiB of the given processes and their descendants."""
    return sum(status_kb(p, "VmHWM") for root in pids for p in process_tree(root)) / 1024


def machine_busy_seconds() -> float:
    """Return the CPU seconds all cores spent busy since boot (from /proc/stat)."""
    with Path("/proc/stat").open() as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest is counted in user already)
    busy = fields[0] + fields[1] + fields[2] + sum(fields[5:8])
    return busy / _CLK_TCK


def self_cpu_seconds() -> float:
    """Return this process's own CPU seconds (from /proc, like the others)."""
    return cpu_seconds(os.getpid())


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this (child) process when its parent dies (Popen preexec_fn).

    So that nothing the harness started outlives it, even when the harness is SIGKILLed.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
