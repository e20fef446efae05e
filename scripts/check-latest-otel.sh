#!/usr/bin/env bash
# Run the SDK mirrors' differential tests against the newest OpenTelemetry release.
#
# Builds a scratch venv (uv) with the locked dependencies except OpenTelemetry, which comes at
# its newest release (api, sdk, exporter-otlp, exporter-prometheus and what they pull in), and
# runs tests/telemetry/test_lean_spans.py, test_local_histogram.py, test_otlp.py, test_gate.py
# and tests/delivery/test_hot_path.py (the trace-header shortcut against the SDK's propagators) there with the installed versions treated as verified by the fast-path gate.
# Prints the versions it tested and PASS or FAIL (exit 0 or 1). On PASS, add the version to
# VERIFIED_VERSIONS in bridge/telemetry/fastpath/gate.py. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if command -v uv >/dev/null 2>&1; then
  UV=(uv)
else
  UV=(python3 -m uv)
fi
export UV_PYTHON_DOWNLOADS=never

OTEL_PACKAGES=(
  opentelemetry-api
  opentelemetry-sdk
  opentelemetry-exporter-otlp
  opentelemetry-exporter-prometheus
)
TESTS=(
  tests/telemetry/test_lean_spans.py
  tests/telemetry/test_local_histogram.py
  tests/telemetry/test_otlp.py
  tests/telemetry/test_gate.py
  tests/delivery/test_hot_path.py
)

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
venv="$scratch/venv"

"${UV[@]}" venv --quiet --python "$(command -v python3)" "$venv"
# The locked runtime and dev dependencies, without any OpenTelemetry package.
"${UV[@]}" export --frozen --group dev --no-hashes --no-emit-project --no-header \
  | grep -v -i '^opentelemetry-' >"$scratch/requirements.txt"
upgrades=()
for package in "${OTEL_PACKAGES[@]}"; do
  upgrades+=(--upgrade-package "$package")
done
# The Prometheus exporter has only pre-releases: allowed where a package has nothing else.
"${UV[@]}" pip install --quiet --python "$venv/bin/python" --prerelease if-necessary \
  -r "$scratch/requirements.txt" "${upgrades[@]}" "${OTEL_PACKAGES[@]}"
"${UV[@]}" pip install --quiet --python "$venv/bin/python" --no-deps .

tested="$("$venv/bin/python" - <<'EOF'
from importlib import metadata

names = (
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-exporter-otlp-proto-common",
    "opentelemetry-exporter-prometheus",
)
print(", ".join(f"{name} {metadata.version(name)}" for name in names))
EOF
)"
echo "check-latest-otel: testing against ${tested}"

status=0
SIGNAL_BRIDGE_TEST_TRUST_OTEL=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
  "${TESTS[@]}" "$@" || status=$?

if [ "$status" -eq 0 ]; then
  echo "check-latest-otel: PASS (${tested})"
else
  echo "check-latest-otel: FAIL (${tested})"
fi
exit "$status"
