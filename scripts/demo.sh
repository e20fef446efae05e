#!/usr/bin/env bash
# The main job on its embedded default: set up .venv, then run `signal-bridge demo`
# (a private Redis and the reference ingest server on loopback; no external services).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Only what the demo runs: the service's dependencies and the "demo" group (no test or bench
# tools); a .venv that test.sh set up keeps them.
bash scripts/bootstrap.sh --no-default-groups --group demo
exec .venv/bin/signal-bridge demo "$@"
