"""Python calls per delivered signal, by function: a load-independent profile of the hot path.

Drains a small and a large backlog through ``bench.run`` with signal-bridge started under
``cProfile`` and reports the difference per extra signal, so start-up and imports cancel out.
Call counts do not depend on the machine's load (times do, and cProfile inflates them), so this
is the measure to compare two versions of the hot path on a busy machine::

    .venv/bin/python -m bench.calls                       # 6 instruments, 1,000 and 4,000 signals
    .venv/bin/python -m bench.calls --instruments 32 --top 40
    .venv/bin/python -m bench.calls --json /tmp/calls.json   # keep the per-function table

cProfile counts built-in calls too, and each resumption of a coroutine as a call.
"""

from __future__ import annotations

import argparse
import json
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

_ROOT: Final = Path(__file__).resolve().parent.parent
_TIMEOUT_S: Final = 600


def _profile(signals: int, instruments: int, directory: Path) -> Path:
    """Drain ``signals`` once under cProfile; return the drain's profile file."""
    out = directory / f"drain-{signals}.prof"
    command = [
        sys.executable,
        "-m",
        "bench.run",
        "--signals",
        str(signals),
        "--repeat",
        "1",
        "--rates",
        "",
        "--replica-bridges",
        "",
        "--check-signals",
        "50",
        "--instruments",
        str(instruments),
        "--bridges",
        "signal-bridge",
        "--out",
        str(directory / f"run-{signals}.json"),
        "--signal-bridge-cmd",
        f"{sys.executable} -m cProfile -o {out} -m bridge run",
    ]
    subprocess.run(  # noqa: S603 - our own interpreter and harness
        command, cwd=_ROOT, check=True, timeout=_TIMEOUT_S, capture_output=True
    )
    return out


def _counts(path: Path) -> dict[str, tuple[int, float]]:
    """Map 'file:line(function)' to (calls, own seconds) in one profile."""
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined] # pstats keeps them here
    table: dict[str, tuple[int, float]] = {}
    for (filename, line, name), (_, calls, own, _, _) in stats.items():
        short = filename.replace(str(_ROOT) + "/", "").replace(".venv/lib/python3.11/", "")
        table[f"{short}:{line}({name})"] = (calls, own)
    return table


def main(argv: list[str] | None = None) -> int:
    """Run the two drains and print calls per delivery (total and by function)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000, help="signals in the small drain")
    parser.add_argument("--large", type=int, default=4000, help="signals in the large drain")
    parser.add_argument("--instruments", type=int, default=6, help="instruments in the backlog")
    parser.add_argument("--top", type=int, default=30, help="functions listed")
    parser.add_argument("--json", type=Path, help="write the per-function table here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as tmp:
        small = _counts(_profile(args.small, args.instruments, Path(tmp)))
        large = _counts(_profile(args.large, args.instruments, Path(tmp)))
    extra = args.large - args.small
    rows = []
    for key, (calls, own) in large.items():
        before_calls, before_own = small.get(key, (0, 0.0))
        rows.append((key, (calls - before_calls) / extra, (own - before_own) / extra * 1e6))
    total = sum(per for _, per, _ in rows)
    print(f"Python calls per delivery ({args.instruments} instruments): {total:.1f}")
    print("| calls/delivery | own us (cProfile) | function |")
    print("| ---: | ---: | --- |")
    for key, per, own_us in sorted(rows, key=lambda row: -row[1])[: args.top]:
        print(f"| {per:.2f} | {own_us:.2f} | `{key}` |")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"total": total, "functions": {k: [p, o] for k, p, o in rows}}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
