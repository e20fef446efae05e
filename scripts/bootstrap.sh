#!/usr/bin/env bash
# Install uv if missing and create .venv from the lock file. Sourced by demo.sh and test.sh.
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
"${UV[@]}" sync --frozen --all-groups --python "$(command -v python3)" --quiet
