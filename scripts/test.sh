#!/usr/bin/env bash
# The test command: set up .venv, then lint, type-check and run every test with coverage.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh

# Debian's prometheus package: promtool runs the alert-rule tests, the prometheus server the
# dashboard test (tests/ops/test_dashboard.py); CI runs as root on Debian.
if { ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; } \
  && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# nginx for the HTTP conformance suite (tests/edge/test_conformance.py): installed from Debian when
# missing and we may (CI runs as root); elsewhere those tests skip and say why.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ] \
  && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >/dev/null
fi

# tmux drives `signal-bridge top` like a terminal (tests/ops/test_top.py): installed from Debian
# when missing and we may (CI runs as root); elsewhere that test skips and says why.
if ! command -v tmux >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tmux >/dev/null
fi

# Node.js and npm run the npm verifiers of the interop tests (tests/edge/test_interop.py):
# installed from Debian when missing and we may (CI runs as root); the packages from the lock file.
if ! command -v npm >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if command -v npm >/dev/null 2>&1; then
  npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error >/dev/null
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
rm -f .coverage .coverage.*
status=0
.venv/bin/coverage run -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
  exit 1
fi
.venv/bin/coverage combine --quiet
.venv/bin/coverage report
# The verdict last, below the coverage table, where a reader (or a CI log tail) looks.
if [ "$status" -eq 0 ]; then
  echo "test.sh: PASSED (ruff, mypy and every test)"
else
  echo "test.sh: FAILED: pytest exited $status; the failures are listed above the coverage table"
fi
exit "$status"
