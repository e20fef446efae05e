"""The container and compose files, checked without a Docker engine.

No Docker engine runs on the development machines, so these tests check what can be checked:
the compose file parses, every bridge service's environment passes the bridge's own config
loader, every file it mounts exists, published ports are unique, and the collector, Prometheus
and alert configs are valid with the expected pipelines and rules.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from bridge.config.loader import load_config
from bridge.devkit.ingest import HEALTH_PATH
from bridge.devkit.ingest_keys import load_ingest_secrets

ROOT = Path(__file__).resolve().parents[2]


def _yaml(path: str) -> Any:
    return yaml.safe_load((ROOT / path).read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed docker-compose.yml (anchors and merge keys resolved by PyYAML)."""
    data = _yaml("docker-compose.yml")
    assert isinstance(data, dict)
    return data


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose["services"]
    assert isinstance(services, dict)
    return services


def _bridges(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in _services(compose).items()
        if svc.get("command") == ["run"] and "build" in svc
    }


def test_compose_runs_two_bridge_replicas_with_distinct_consumers(compose: dict[str, Any]) -> None:
    """Two replicas, each with its own BRIDGE_CONSUMER, share one group."""
    bridges = _bridges(compose)
    assert len(bridges) == 2
    consumers = {svc["environment"]["BRIDGE_CONSUMER"] for svc in bridges.values()}
    groups = {svc["environment"]["BRIDGE_GROUP"] for svc in bridges.values()}
    assert len(consumers) == 2
    assert len(groups) == 1


def test_every_bridge_environment_passes_the_config_loader(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """Each bridge service's environment validates, with the secret file and CA stubbed."""
    secret = tmp_path / "hmac_secret"
    secret.write_text("x" * 64)
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))  # stands in for the CA the certs service makes
    for name, svc in _bridges(compose).items():
        env = {k: str(v) for k, v in svc["environment"].items()}
        assert "HMAC_PRODUCER_SECRET" not in env, f"{name}: secret must come from a file"
        assert env["HMAC_PRODUCER_SECRET_FILE"].startswith("/run/secrets/")
        env["HMAC_PRODUCER_SECRET_FILE"] = str(secret)
        env["BRIDGE_REDIS_PASSWORD_FILE"] = str(secret)
        env["OUTBOUND_CA_BUNDLE"] = str(ca)
        config = load_config(env=env)
        assert config.outbound.server_url.startswith("https://"), name
        assert config.outbound.secret is not None
        assert config.stream.consumer == env["BRIDGE_CONSUMER"]
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" in config.telemetry.otel_env


def test_ingest_service_secret_comes_from_the_compose_secret(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """The reference server reads the same secret file under the same key id."""
    ingest = _services(compose)["ingest"]
    secret = tmp_path / "hmac_secret"
    secret.write_text("y" * 64)
    env = {k: str(v) for k, v in ingest["environment"].items()}
    env["HMAC_PRODUCER_SECRET_FILE"] = str(secret)
    assert load_ingest_secrets(env) == {"compose": b"y" * 64}
    assert "--ssl-certfile=/certs/ingest.pem" in ingest["command"]


def test_every_mounted_file_exists(compose: dict[str, Any]) -> None:
    """Bind mounts point at files in the repository; named volumes are declared."""
    declared = set(compose.get("volumes", {}))
    for name, svc in _services(compose).items():
        for mount in svc.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
    for secret in compose["secrets"].values():
        directory = (ROOT / secret["file"]).parent
        assert directory.is_dir(), f"secret directory {directory} missing"


def test_published_ports_are_unique(compose: dict[str, Any]) -> None:
    """No two services publish the same host port."""
    ports = [
        str(port).split(":")[-2]  # [host_ip:]host_port:container_port
        for svc in _services(compose).values()
        for port in svc.get("ports", [])
    ]
    assert ports
    assert len(ports) == len(set(ports))


def test_redis_keeps_the_stream_across_restarts(compose: dict[str, Any]) -> None:
    """Redis runs with appendonly on a named volume."""
    redis = _services(compose)["redis"]
    assert "--appendonly" in redis["command"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(mount.endswith(":/data") for mount in redis["volumes"])


def test_collector_config_names_both_pipelines() -> None:
    """OTLP in; traces to Jaeger and metrics to Prometheus."""
    config = _yaml("config/otel-collector.yaml")
    pipelines = config["service"]["pipelines"]
    assert pipelines["traces"]["receivers"] == ["otlp"]
    assert pipelines["traces"]["exporters"] == ["otlp/jaeger"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    for pipeline in pipelines.values():
        for exporter in pipeline["exporters"]:
            assert exporter in config["exporters"]
        for receiver in pipeline["receivers"]:
            assert receiver in config["receivers"]


def test_prometheus_scrapes_the_replicas_and_loads_the_alerts(compose: dict[str, Any]) -> None:
    """Every replica's /metrics is a target, and the alert rules file is mounted and valid."""
    config = _yaml("config/prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = set(jobs["signal-bridge"]["static_configs"][0]["targets"])
    assert targets == {f"{name}:8081" for name in _bridges(compose)}
    alerts = _yaml("config/alerts.yml")
    rules = {rule["alert"]: rule for group in alerts["groups"] for rule in group["rules"]}
    assert "signals_posted_total" in rules["SignalDeliveryFailureRateHigh"]["expr"]
    assert "0.05" in rules["SignalDeliveryFailureRateHigh"]["expr"]
    assert "signals_oldest_pending_age_seconds" in rules["SignalBacklogStale"]["expr"]
    assert "by (instrument)" in rules["SignalInstrumentBlocked"]["expr"]
    assert "signals_lane_blocked_seconds" in rules["SignalInstrumentBlocked"]["expr"]


def test_dockerfile_runs_as_non_root_with_a_readiness_healthcheck() -> None:
    """Multi-stage, dependencies from the lock file, a non-root user, HEALTHCHECK on /readyz."""
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, flags=re.M)) >= 2
    assert "uv sync --frozen --no-dev" in text
    user = re.search(r"^USER (\S+)", text, flags=re.M)
    assert user is not None
    assert not user.group(1).startswith(("root", "0"))
    assert "HEALTHCHECK" in text
    assert "/readyz" in text
    assert 'ENTRYPOINT ["signal-bridge"]' in text


# --- health checks point where each service listens ------------------------------------------

_ONE_SHOT = {"certs", "install-secrets"}


def _image_healthcheck() -> list[str]:
    """The Dockerfile's HEALTHCHECK command (inherited by every service on our image)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])", text, flags=re.M)
    assert found is not None
    return list(yaml.safe_load(found.group(1)))


def _listens_on(name: str, svc: dict[str, Any]) -> int | None:
    """The port a service's own process listens on, from its command or environment."""
    command = [str(part) for part in svc.get("command", [])]
    if command[:1] == ["run"]:
        return int(svc["environment"]["BRIDGE_HEALTH_PORT"])
    if command[:1] == ["ingest-server"]:
        ports = [part.split("=", 1)[1] for part in command if part.startswith("--port=")]
        return int(ports[0]) if ports else 8000
    if name == "redis":
        return int(command[command.index("--port") + 1]) if "--port" in command else 6379
    return None


def _effective_healthcheck(svc: dict[str, Any]) -> list[str] | None:
    """The health check a service runs: its own, else its image's (ours), else none."""
    own = svc.get("healthcheck")
    if own is not None:
        if own.get("disable"):
            return None
        test = own["test"]
        return [test] if isinstance(test, str) else [str(part) for part in test]
    if svc.get("image") == "signal-bridge:local" or "build" in svc:
        return _image_healthcheck()
    return None


def test_every_health_check_points_where_its_service_listens(compose: dict[str, Any]) -> None:
    """Each long-running service with a health check probes the port its process listens on."""
    checked = set()
    for name, svc in _services(compose).items():
        if name in _ONE_SHOT or "profiles" in svc:
            continue
        check = _effective_healthcheck(svc)
        port = _listens_on(name, svc)
        if port is None:
            assert check is None, f"{name}: a health check, but no known port to check"
            continue
        assert check is not None, f"{name} listens on {port} but has no health check"
        text = " ".join(check)
        if name == "redis":
            assert "redis-cli" in text, text
            assert "-p " not in text or f"-p {port}" in text, text
        else:
            probed = re.findall(r"://(?:127\.0\.0\.1|localhost):(\d+)/", text)
            assert probed == [str(port)], f"{name} listens on {port}, its check probes {probed}"
        checked.add(name)
    assert {"redis", "ingest", "bridge-1", "bridge-2"} <= checked


def test_the_ingest_check_asks_the_ingest_server_health_path(compose: dict[str, Any]) -> None:
    """The ingest service probes /healthz over TLS, trusting the stack's CA it mounts."""
    ingest = _services(compose)["ingest"]
    text = " ".join(ingest["healthcheck"]["test"])
    assert f"https://localhost:8443{HEALTH_PATH}" in text
    assert "cafile='/ca/ca.pem'" in text
    assert "ca:/ca:ro" in ingest["volumes"]


def test_bridges_wait_for_a_healthy_ingest_and_get_time_to_drain(compose: dict[str, Any]) -> None:
    """stop_grace_period is above the drain grace; the bridges start once ingest is healthy."""
    for name, svc in _bridges(compose).items():
        grace = str(svc["stop_grace_period"])
        assert grace.endswith("s"), name
        drain = float(svc["environment"].get("BRIDGE_SHUTDOWN_GRACE_SECONDS", 10))
        assert float(grace[:-1]) > drain + 5, name
        assert svc["depends_on"]["ingest"]["condition"] == "service_healthy", name


def test_bridge_metrics_reach_prometheus_once(compose: dict[str, Any]) -> None:
    """Scraped directly, so not exported through the collector as well."""
    for name, svc in _bridges(compose).items():
        assert svc["environment"]["OTEL_METRICS_EXPORTER"] == "none", name


def test_one_shot_services_need_no_network_and_our_image_services_can_build(
    compose: dict[str, Any],
) -> None:
    """The one-shot services run without a network; each service on our image can build it."""
    services = _services(compose)
    for name in _ONE_SHOT:
        assert services[name]["network_mode"] == "none", name
    for name, svc in services.items():
        if svc.get("image") == "signal-bridge:local":
            assert svc.get("build") == ".", f"{name} uses the local image without build:"
    assert not services["jaeger"]["image"].startswith("jaegertracing/all-in-one:1.")
