#!/usr/bin/env bash
# Install uv if missing and create .venv from the lock file. Run by demo.sh (with
# `--no-default-groups --group demo`: the service and the demo only) and test.sh (every group).
# Needs only python3 (3.11+) and pip; works where pip refuses system installs (PEP 668).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if command -v uv >/dev/null 2>&1; then
  UV=(uv)
elif python3 -m uv --version >/dev/null 2>&1; then
  UV=(python3 -m uv)
else
  echo "bootstrap: installing uv with pip" >&2
  python3 -m pip install --quiet --user uv 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages uv 2>/dev/null \
    || python3 -m pip install --quiet uv
  UV=(python3 -m uv)
fi

# The project's Python: the python3 on PATH (no interpreter downloads).
export UV_PYTHON_DOWNLOADS=never
# Arguments choose the dependency groups (demo.sh: only the demo's); none means all of them.
# --inexact with a choice keeps what a fuller sync installed (the test tools stay usable).
if [ "$#" -gt 0 ]; then
  SYNC_GROUPS=("$@" --inexact)
else
  SYNC_GROUPS=(--all-groups)
fi
"${UV[@]}" sync --frozen "${SYNC_GROUPS[@]}" --python "$(command -v python3)" --quiet
