#!/usr/bin/env bash
# The test command: set up .venv, then lint, type-check and run every test with coverage.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh

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
exit "$status"
