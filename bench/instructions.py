"""Machine instructions per delivered signal: the whole bridge process under callgrind.

Drains a small and a large backlog through ``bench.run`` with signal-bridge started under
``valgrind --tool=callgrind`` and reports ``(Ir(large) - Ir(small)) / (large - small)``: Python,
uvloop, hiredis, httptools and OpenSSL alike, start-up cancelled out. Instruction counts repeat
to within about half a percent under any load, so two versions of the hot path can be compared
on a busy machine where rates and CPU times cannot (each drain takes a few minutes)::

    .venv/bin/python -m bench.instructions                        # 6 instruments, 300 and 1,500
    .venv/bin/python -m bench.instructions --instruments 32
    .venv/bin/python -m bench.instructions --bridge-cmd "../old/.venv/bin/python -P -m bridge run"

``--bridge-cmd`` is run directly under valgrind, which follows no child process: give it the
interpreter itself (``-P`` keeps this checkout's ``bridge`` off the path of another one's).

The contract check fails under valgrind (its start-up is slower than the check allows); the
drains do not, and only they are counted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Final

from bench import run as bench_run

_STOP_WAIT_S: Final = 300.0  # callgrind writes its profile after SIGTERM, slowly
_TOTALS: Final = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def _instructions(profile: Path) -> int:
    """Read the total instruction count (Ir) of one callgrind profile."""
    found = _TOTALS.search(profile.read_bytes())
    if found is None:
        raise SystemExit(f"no totals in {profile}")
    return int(found.group(1))


def _drain(signals: int, instruments: int, bridge_cmd: str, directory: Path) -> int:
    """Drain ``signals`` once under callgrind; return the drain's instruction count."""
    out = directory / f"n{signals}"
    out.mkdir()
    command = f"/usr/bin/valgrind --tool=callgrind --callgrind-out-file={out}/cg.%p {bridge_cmd}"
    argv = [
        *("--signals", str(signals), "--repeat", "1", "--rates", "", "--replica-bridges", ""),
        *("--check-signals", "20", "--instruments", str(instruments), "--bridges", "signal-bridge"),
        *("--stall-timeout", "900", "--timeout", "1800", "--out", str(directory / "r.json")),
        *("--signal-bridge-cmd", command),
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        bench_run.main(argv)
    profiles = sorted(out.glob("cg.*"), key=lambda path: path.stat().st_mtime)
    if not profiles:
        raise SystemExit(f"callgrind wrote no profile for the {signals}-signal drain")
    return _instructions(profiles[-1])  # the drain's: the contract check's comes first


def main(argv: list[str] | None = None) -> int:
    """Run the two drains and print instructions per delivered signal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=300, help="signals in the small drain")
    parser.add_argument("--large", type=int, default=1500, help="signals in the large drain")
    parser.add_argument("--instruments", type=int, default=6, help="instruments in the backlog")
    parser.add_argument(
        "--bridge-cmd",
        default=f"{sys.executable} -m bridge run",
        help="the bridge's command (shlex), run under callgrind",
    )
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install -y valgrind)")
    shlex.split(args.bridge_cmd)  # a malformed command fails here, not under valgrind
    bench_run.Processes.stop.__defaults__ = (_STOP_WAIT_S,)
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        small = _drain(args.small, args.instruments, args.bridge_cmd, Path(tmp))
        large = _drain(args.large, args.instruments, args.bridge_cmd, Path(tmp))
    per_signal = (large - small) / (args.large - args.small)
    print(
        f"instructions per delivered signal ({args.instruments} instruments, "
        f"{args.small} and {args.large} signals): {per_signal:,.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
