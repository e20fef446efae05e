"""Refusing bad settings: every invalid value stops the start with exit 2 and one line naming it.

Loader-level cases run in-process (``load_config``); the start-up cases that only show when the
service binds or connects (a busy health port, a Redis database the server lacks) run
``signal-bridge run`` as a process, the way an operator meets them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from bridge.app.health import HealthServer
from bridge.config.loader import load_config
from bridge.errors import ConfigError
from bridge.streams.settings import redis_db
from bridge.telemetry.otel_env import otel_exporter_names
from bridge.telemetry.setup import setup_telemetry
from tests.support import bridge_env

ROOT: Final = Path(__file__).resolve().parents[2]
BASE_ENV: Final = {
    "HMAC_PRODUCER_SECRET": "settings-test-secret-0123456789",
    "OUTBOUND_SERVER_URL": "https://api.example.com",
}
_SETTING_PREFIXES: Final = ("BRIDGE_", "HMAC_", "OUTBOUND_", "OTEL_", "INGEST_", "PRODUCER_ID")
# `run` must give up well within this (the issue: "ends the start within seconds").
START_LIMIT_S: Final = 20.0


def _refused(**env: str) -> ConfigError:
    """Load BASE_ENV plus ``env`` and return the ConfigError it must raise."""
    with pytest.raises(ConfigError) as info:
        load_config(env={**BASE_ENV, **env})
    return info.value


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEM files: a CA, a client certificate and its key, another key, and broken files."""
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    leaf = ca.issue_cert("bridge.example")
    other = trustme.CA().issue_cert("other.example")
    files = {name: root / f"{name}.pem" for name in ("ca", "cert", "key", "other_key", "both")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(files["cert"]))
    leaf.private_key_pem.write_to_path(str(files["key"]))
    other.private_key_pem.write_to_path(str(files["other_key"]))
    leaf.private_key_and_cert_chain_pem.write_to_path(str(files["both"]))
    files["der"] = root / "ca.der"
    files["der"].write_bytes(b"\x30\x82\x01\x0a\x02\x82\x01\x01\x00" * 20)
    files["garbled"] = root / "garbled.pem"
    files["garbled"].write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
    )
    files["encrypted"] = root / "encrypted.pem"
    files["encrypted"].write_text(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    return files


# --- TLS files -----------------------------------------------------------------------------------


def test_pem_ca_and_matching_client_pair_are_accepted(pki: dict[str, Path]) -> None:
    """A PEM CA, a certificate with its key, or both in one file, all load."""
    config = load_config(
        env={
            **BASE_ENV,
            "OUTBOUND_CA_BUNDLE": str(pki["ca"]),
            "OUTBOUND_CLIENT_CERT": str(pki["cert"]),
            "OUTBOUND_CLIENT_KEY": str(pki["key"]),
        }
    )
    assert config.outbound.client_key == str(pki["key"])
    combined = load_config(env={**BASE_ENV, "OUTBOUND_CLIENT_CERT": str(pki["both"])})
    assert combined.outbound.client_key is None


@pytest.mark.parametrize(
    ("env", "variable", "words"),
    [
        ({"OUTBOUND_CA_BUNDLE": "der"}, "OUTBOUND_CA_BUNDLE", "is not a PEM certificate"),
        ({"OUTBOUND_CA_BUNDLE": "garbled"}, "OUTBOUND_CA_BUNDLE", "holds no usable certificate"),
        ({"OUTBOUND_CA_BUNDLE": "key"}, "OUTBOUND_CA_BUNDLE", "is not a PEM certificate"),
        ({"OUTBOUND_CA_BUNDLE": "/"}, "OUTBOUND_CA_BUNDLE", "no such file"),
        ({"OUTBOUND_CLIENT_CERT": "der"}, "OUTBOUND_CLIENT_CERT", "is not a PEM certificate"),
        ({"OUTBOUND_CLIENT_CERT": "cert"}, "OUTBOUND_CLIENT_CERT", "holds no private key"),
        (
            {"OUTBOUND_CLIENT_CERT": "cert", "OUTBOUND_CLIENT_KEY": "other_key"},
            "OUTBOUND_CLIENT_KEY",
            "does not match OUTBOUND_CLIENT_CERT",
        ),
        (
            {"OUTBOUND_CLIENT_CERT": "cert", "OUTBOUND_CLIENT_KEY": "ca"},
            "OUTBOUND_CLIENT_KEY",
            "is not a PEM private key",
        ),
        (
            {"OUTBOUND_CLIENT_CERT": "cert", "OUTBOUND_CLIENT_KEY": "encrypted"},
            "OUTBOUND_CLIENT_KEY",
            "encrypted key",
        ),
    ],
    ids=[
        "ca-der",
        "ca-garbled",
        "ca-is-a-key",
        "ca-directory",
        "cert-der",
        "cert-without-key",
        "key-mismatch",
        "key-is-a-cert",
        "key-encrypted",
    ],
)
def test_unusable_tls_files_are_refused(
    pki: dict[str, Path], env: dict[str, str], variable: str, words: str
) -> None:
    """A non-PEM, garbled, mismatched or encrypted TLS file is refused, naming its variable."""
    resolved = {name: str(pki.get(value, value)) for name, value in env.items()}
    error = _refused(**resolved)
    assert error.variable == variable
    assert str(error).startswith(variable)
    assert words in str(error)


# --- names, Redis URL, health address -------------------------------------------------------------


@pytest.mark.parametrize(
    "variable",
    ["BRIDGE_STREAM", "BRIDGE_GROUP", "BRIDGE_CONSUMER", "BRIDGE_DLQ_STREAM", "BRIDGE_STREAMS"],
)
@pytest.mark.parametrize("value", ["", "  "], ids=["empty", "blank"])
def test_empty_names_are_refused_not_defaulted(variable: str, value: str) -> None:
    """A stream, group or consumer variable set to nothing is refused (it used to default)."""
    error = _refused(**{variable: value})
    assert error.variable == variable
    assert "empty" in str(error) or "no stream" in str(error)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://localhost:6379/abc", "(path /abc) must be a number"),
        ("redis://localhost:6379/0?db=x", "(?db=x) must be a number"),
        ("redis://localhost:99999/0", "invalid port"),
        ("redis:///0", "needs a host"),
    ],
)
def test_bad_redis_urls_are_refused(url: str, words: str) -> None:
    """A non-numeric database, a bad port or a missing host in BRIDGE_REDIS_URL is refused."""
    error = _refused(BRIDGE_REDIS_URL=url)
    assert error.variable == "BRIDGE_REDIS_URL"
    assert words in str(error)


def test_redis_database_numbers() -> None:
    """The database comes from the path or ?db=; Redis Cluster refuses any but 0."""
    assert redis_db("redis://h:6379") == 0
    assert redis_db("redis://h:6379/3") == 3
    assert redis_db("rediss://h:6379/0?db=5") == 5
    assert redis_db("unix:///run/redis.sock?db=2") == 2
    error = _refused(BRIDGE_REDIS_URL="redis://h:6379/1", BRIDGE_REDIS_CLUSTER="true")
    assert "only database 0" in str(error)


@pytest.mark.parametrize("host", ["999.1.1.1", "bad host", "-lead.example", "1.2.3"])
def test_bad_health_hosts_are_refused(host: str) -> None:
    """BRIDGE_HEALTH_HOST that is neither an IP address nor a host name is refused."""
    assert _refused(BRIDGE_HEALTH_HOST=host).variable == "BRIDGE_HEALTH_HOST"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::1]", "localhost", "bridge-1.svc.local"])  # noqa: S104
def test_good_health_hosts_are_accepted(host: str) -> None:
    """Addresses and host names load unchanged."""
    assert load_config(env={**BASE_ENV, "BRIDGE_HEALTH_HOST": host}).telemetry.health_host == host


async def test_health_server_bind_failures_name_the_setting() -> None:
    """An address this host does not have names BRIDGE_HEALTH_HOST; a busy port, the port."""
    with pytest.raises(ConfigError) as missing:
        async with HealthServer(list, host="192.0.2.1", port=0):  # TEST-NET-1: never local
            pass
    assert missing.value.variable == "BRIDGE_HEALTH_HOST"
    assert str(missing.value).startswith("BRIDGE_HEALTH_HOST: 192.0.2.1:0 cannot be listened on")
    async with HealthServer(list, host="127.0.0.1", port=0) as first:
        with pytest.raises(ConfigError) as busy:
            async with HealthServer(list, host="127.0.0.1", port=first.port):
                pass
    assert busy.value.variable == "BRIDGE_HEALTH_PORT"
    assert "is already in use" in str(busy.value)


# --- OTEL_* -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "variable", "words"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER", "unknown exporter 'zipkin'"),
        ({"OTEL_TRACES_EXPORTER": "otlp,jaeger"}, "OTEL_TRACES_EXPORTER", "'jaeger'"),
        ({"OTEL_METRICS_EXPORTER": "prometheus"}, "OTEL_METRICS_EXPORTER", "/metrics"),
        ({"OTEL_LOGS_EXPORTER": "otlp"}, "OTEL_LOGS_EXPORTER", "JSON lines on stdout"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc or"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "not supported by the Python OTLP exporters",
        ),
        ({"OTEL_SDK_DISABLED": "yes please"}, "OTEL_SDK_DISABLED", "true or false"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http(s) URL",
        ),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER", "unknown sampler"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            "OTEL_TRACES_SAMPLER_ARG",
            "between 0 and 1",
        ),
    ],
)
def test_unsupported_otel_settings_are_refused(
    env: dict[str, str], variable: str, words: str
) -> None:
    """Exporters, protocols and switches the SDK would ignore or replace are refused by name."""
    error = _refused(**env)
    assert error.variable == variable
    assert words in str(error)


def test_otel_exporters_resolve_like_the_sdk() -> None:
    """OTLP picks the HTTP or gRPC exporter by protocol; no endpoint, no export; none is none."""
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert otel_exporter_names(endpoint, "traces") == ["otlp_proto_http"]
    grpc = {**endpoint, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc"}
    assert otel_exporter_names(grpc, "metrics") == ["otlp_proto_grpc"]
    assert otel_exporter_names(grpc, "traces") == ["otlp_proto_http"]
    assert otel_exporter_names({}, "traces") == []
    assert otel_exporter_names({"OTEL_TRACES_EXPORTER": "console,otlp"}, "traces") == ["console"]
    assert otel_exporter_names({**endpoint, "OTEL_TRACES_EXPORTER": "none"}, "traces") == []
    assert (
        otel_exporter_names({"OTEL_SDK_DISABLED": "true", "OTEL_LOGS_EXPORTER": "none"}, "logs")
        == []
    )
    # Disabled, the exporter names are not looked at (the SDK does not run).
    load_config(env={**BASE_ENV, "OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "zipkin"})


def test_console_exporters_write_one_line_each_to_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Console spans and metrics go to stderr as one JSON object per line; stdout stays logs."""
    handle = setup_telemetry(
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "console"},
        instance_id="console-test",
        prometheus=False,
    )
    with handle.tracer.start_as_current_span("process console-test"):
        handle.metrics.acked_total.add(1, {"outcome": "success"})
    handle.shutdown()
    out, err = capsys.readouterr()
    assert out == ""
    records = [json.loads(line) for line in err.splitlines()]
    assert any(r.get("name") == "process console-test" for r in records), err
    assert any("resource_metrics" in r for r in records), err


def test_sdk_disabled_still_serves_metrics_but_records_no_spans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_SDK_DISABLED=true: spans are not recorded, /metrics still has every bridge metric.

    Set in the process environment, as an operator sets it: the SDK's own providers read it
    there too.
    """
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    handle = setup_telemetry({"OTEL_SDK_DISABLED": "true"}, instance_id="off", prometheus=True)
    try:
        with handle.tracer.start_as_current_span("process off") as span:
            assert not span.is_recording()
        handle.metrics.acked_total.add(2, {"outcome": "success"})
        text = handle.prometheus_text().decode()
    finally:
        handle.shutdown()
    samples = [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "signals_acked_total"
    ]
    assert [(s.labels["outcome"], s.value) for s in samples] == [("success", 2.0)], text


# --- as an operator meets them: `signal-bridge run` ----------------------------------------------


def _run(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Start `signal-bridge run` with only ``env`` as settings; return its result and duration."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "run"],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, time.monotonic() - started


def _assert_refused(result: subprocess.CompletedProcess[str], variable: str, words: str) -> None:
    """Exit 2, one stderr line naming the variable, no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert words in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("extra", "variable", "words"),
    [
        ({"BRIDGE_HEALTH_HOST": "999.1.1.1"}, "BRIDGE_HEALTH_HOST", "IP address or a host name"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER", "unknown exporter"),
    ],
    ids=["health-host", "zipkin"],
)
def test_run_refuses_bad_settings_in_one_line(
    extra: dict[str, str], variable: str, words: str
) -> None:
    """`run` with an invalid value exits 2 at once with one line naming it, never a traceback.

    Two representatives: every loader refusal above takes the same path through main().
    """
    env = bridge_env("http://127.0.0.1:9", "redis://127.0.0.1:1/0", "s", **extra)
    result, elapsed = _run(env)
    _assert_refused(result, variable, words)
    assert elapsed < START_LIMIT_S


def test_run_refuses_a_busy_health_port() -> None:
    """A health port another process holds ends the start with exit 2 naming BRIDGE_HEALTH_PORT."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = bridge_env(
            "http://127.0.0.1:9",
            "redis://127.0.0.1:1/0",
            "s",
            BRIDGE_HEALTH_HOST="127.0.0.1",
            BRIDGE_HEALTH_PORT=str(port),
        )
        result, elapsed = _run(env)
    _assert_refused(result, "BRIDGE_HEALTH_PORT", "already in use")
    assert elapsed < START_LIMIT_S


@pytest.mark.redis
def test_run_refuses_a_database_the_server_does_not_have(redis_url: str) -> None:
    """BRIDGE_REDIS_URL=.../99 on a 16-database server: exit 2 naming it, not "unavailable"."""
    base = redis_url.rsplit("/", 1)[0]
    env = bridge_env("http://127.0.0.1:9", f"{base}/99", "s")
    result, elapsed = _run(env)
    _assert_refused(result, "BRIDGE_REDIS_URL", "database 99")
    assert elapsed < START_LIMIT_S
