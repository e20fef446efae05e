#!/usr/bin/env bash
# The main job on its embedded default: set up .venv, then run `signal-bridge demo`
# (a private Redis and the reference ingest server on loopback; no external services).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
exec .venv/bin/signal-bridge demo "$@"
