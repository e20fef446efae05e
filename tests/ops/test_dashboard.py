"""The Grafana dashboard, proven against a real Prometheus scraping a real bridge.

A ``prometheus`` server (Debian's package; scripts/test.sh installs it in CI) scrapes one
``signal-bridge run`` replica every second while it delivers signals, retries one and
dead-letters two. Every panel's query is then evaluated through Prometheus's HTTP API over that
time, template variables replaced by a regex matching everything: a query that errors or
returns no series fails the test, and so does a metric name the bridge does not export. The
server starts fenced above the replica's token on one shard, so fenced POSTs are counted too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bridge.devkit.embedded import free_port
from tests.ops.dash_rig import BLOCKED_FOR_S, running_bridge
from tests.support import eventually

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT: Final = Path(__file__).resolve().parents[2]
DASHBOARD: Final = ROOT / "config" / "grafana" / "signal-bridge.json"
PROVISIONING: Final = ROOT / "config" / "grafana" / "provisioning"
RATE_WINDOW: Final = "5s"
# Names a query may use that no exporter serves: Prometheus makes them per scrape target.
SYNTHETIC: Final = frozenset({"up"})
_NAME = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{")
_NOT_METRICS: Final = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


def _panels() -> list[dict[str, Any]]:
    """Every panel of the dashboard that queries Prometheus (rows hold none)."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [p for p in dashboard["panels"] if p.get("targets")]


def _queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target, template variables substituted."""
    found = []
    for panel in _panels():
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$__rate_interval", RATE_WINDOW)
                .replace("$instance", ".*")
                .replace("$stream", ".*")
            )
            found.append((panel["title"], expr))
    return found


def _metric_names(expr: str) -> set[str]:
    """The metric names a query selects (an identifier right before a ``{``)."""
    return {name for name in _NAME.findall(expr) if name not in _NOT_METRICS}


@pytest.fixture
def prometheus_bin() -> str:
    """The prometheus server binary, or skip (locally) / fail (under CI) saying what is missing."""
    found = shutil.which("prometheus")
    if found is None:
        message = "no prometheus server: apt-get install prometheus (scripts/test.sh does in CI)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def prometheus_factory(prometheus_bin: str, tmp_path: Path) -> Iterator[Any]:
    """Start Prometheus on a free loopback port scraping a target every second; always stop it."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: signal-bridge\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n",
            encoding="utf-8",
        )
        with (tmp_path / "prometheus.log").open("wb") as log:
            procs.append(
                subprocess.Popen(  # noqa: S603 - the binary found above, arguments of our own
                    [
                        prometheus_bin,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                )
            )
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_every_panel_has_a_query_unit_and_description() -> None:
    """Each panel says what it shows and in which unit, and every row groups at least one panel."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"stream", "instance"} <= names
    for panel in _panels():
        assert panel["description"], panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    kinds = [p["type"] for p in dashboard["panels"]]
    rows = [i for i, kind in enumerate(kinds) if kind == "row"]
    assert rows, "no rows"
    assert all(j + 1 < len(kinds) and kinds[j + 1] != "row" for j in rows), "an empty row"


# Panel title -> (alert, the alert expression's threshold): the panel turns red where it fires.
THRESHOLDS: Final = {
    "Oldest pending age": (
        "SignalBacklogStale",
        r"signals_oldest_pending_age_seconds\S*\) > ([\d.]+)",
    ),
    "Lag": ("SignalBacklogStale", r"signals_group_lag\S*\) > ([\d.]+)"),
    "Failure ratio": ("SignalDeliveryFailureRateHigh", r"\) > ([\d.]+)\s*$"),
    "Blocked instruments": ("SignalInstrumentBlocked", r"\) > ([\d.]+)"),
    "Shards held": ("SignalShardUnowned", r"\) < ([\d.]+)"),
}


def _alerts() -> dict[str, str]:
    """Alert name -> expression, from config/alerts.yml."""
    rules = yaml.safe_load((ROOT / "config" / "alerts.yml").read_text(encoding="utf-8"))
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}


def test_thresholds_are_the_alerts_and_every_alert_has_a_panel() -> None:
    """A panel turns red at its alert's threshold, and every alert is named by some panel."""
    alerts = _alerts()
    panels = {p["title"]: p for p in _panels()}
    for title, (alert, pattern) in THRESHOLDS.items():
        found = re.search(pattern, alerts[alert], re.M)
        assert found, f"{alert}: no threshold in {alerts[alert]!r}"
        steps = panels[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        values = [step["value"] for step in steps if step["value"] is not None]
        assert float(found[1]) in values, f"{title}: {values}, {alert} says {found[1]}"
        assert alert in panels[title]["description"], title
    described = " ".join(p["description"] for p in _panels())
    unnamed = [alert for alert in alerts if alert not in described]
    assert not unnamed, f"alerts no panel names: {unnamed}"


def test_compose_provisions_the_dashboard_and_a_prometheus_data_source() -> None:
    """The provisioning files point Grafana at the dashboard file and the compose Prometheus."""
    datasources = (PROVISIONING / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    assert "http://prometheus:9090" in datasources
    providers = (PROVISIONING / "dashboards" / "signal-bridge.yml").read_text(encoding="utf-8")
    assert "/var/lib/grafana/dashboards" in providers
    compose = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    assert "./config/grafana/signal-bridge.json:/var/lib/grafana/dashboards/" in compose
    assert re.search(r"image: grafana/grafana:\d+\.\d+\.\d+", compose)
    assert '"127.0.0.1:3000:3000"' in compose


async def _exported_names(url: str, stop: asyncio.Event) -> set[str]:
    """Every sample name the bridge's /metrics served, read every 0.25 s until ``stop``."""
    names: set[str] = set()
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            response = await http.get(url)
            if response.status_code == 200:  # a scrape may be answered "busy" (503) meanwhile
                families = text_string_to_metric_families(response.text)
                names |= {s.name for f in families for s in f.samples}
            if stop.is_set():
                return names
            await asyncio.sleep(0.25)


async def _series(prom: httpx.AsyncClient, expr: str) -> int:
    """How many series an instant query returns now (0 on an error)."""
    answer = (await prom.get("/api/v1/query", params={"query": expr})).json()
    return len(answer["data"]["result"]) if answer["status"] == "success" else 0


async def _failing_queries(prom: httpx.AsyncClient, start: float, end: float) -> list[str]:
    """Every panel query that errors or returns no series between ``start`` and ``end``."""
    problems = []
    for title, expr in _queries():
        params = {"query": expr, "start": str(start), "end": str(end), "step": "1s"}
        answer = (await prom.get("/api/v1/query_range", params=params)).json()
        if answer["status"] != "success":
            problems.append(f"{title}: {expr}: {answer.get('error')}")
        elif not answer["data"]["result"]:
            problems.append(f"{title}: {expr}: no series")
    return problems


@pytest.mark.timeout(120)  # ~25 s alone: a replica and Prometheus start on a loaded runner
async def test_every_panel_query_returns_series_from_a_real_prometheus(
    redis_url: str, tmp_path: Path, prometheus_factory: Any
) -> None:
    """Prometheus scraping a delivering bridge answers every panel's query with series."""
    async with running_bridge(redis_url, tmp_path) as rig:
        base = prometheus_factory(f"127.0.0.1:{rig.metrics_port}")
        started = time.time()
        stop = asyncio.Event()
        watcher = asyncio.create_task(_exported_names(rig.metrics_url, stop))
        try:
            async with httpx.AsyncClient(base_url=base, timeout=10) as prom:

                async def scraping() -> bool:
                    try:
                        return await _series(prom, 'up{job="signal-bridge"} == 1') == 1
                    except httpx.HTTPError:
                        return False

                await eventually(scraping, timeout_s=30, interval_s=0.2, what="Prometheus scraping")
                await rig.traffic()
                # Scrapes after the drain see both dead letters; the lane blocked while its signal
                # was retried (BLOCKED_FOR_S and the backoff) was scraped while it waited.

                async def both_dead_letters() -> bool:
                    return (
                        await _series(prom, 'signals_dead_lettered_total{job="signal-bridge"}') == 2
                    )

                await eventually(
                    both_dead_letters,
                    timeout_s=15,
                    interval_s=0.5,
                    what="both dead letters scraped",
                )
                assert (
                    await _series(prom, "max_over_time(signals_lane_blocked_seconds[1m])") >= 1
                ), f"the lane blocked {BLOCKED_FOR_S}s and more was never scraped"
                await asyncio.sleep(3)  # more scrapes: every rate has two samples after the drain
                stop.set()
                exported = await asyncio.wait_for(watcher, 10)
                end = time.time()
                problems = await _failing_queries(prom, started, end)
                assert not problems, "\n".join(problems)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    used = {name for _, expr in _queries() for name in _metric_names(expr)}
    missing = used - SYNTHETIC - exported
    assert not missing, f"not in the bridge's /metrics: {sorted(missing)}"
    # What an operator needs most in an incident is on the dashboard.
    assert {
        "signals_fenced_total",
        "signals_dead_letters_writable",
        "signals_server_clock_skew_seconds",
        "signals_owned_shards",
        "signals_circuit_open",
        "signals_lane_blocked_seconds",
    } <= used
