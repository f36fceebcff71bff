"""The docker-compose monitoring files agree with what the workers really expose.

No Docker engine here, so the containers are not run; what can drift silently is checked:
Prometheus scrapes the port and path workers serve, and every Grafana query names a
metric a worker exports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser
import pytest
import yaml

from streamer.engine import StreamEngine
from streamer.metrics import DEADLETTER_KINDS, DEADLETTERS_BY_REASON, GAUGES
from streamer.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def exported_names() -> set[str]:
    names = {name for name, _, _ in GAUGES.values()} | {DEADLETTERS_BY_REASON}
    for hist in StreamEngine(Settings(n_factors=2)).histograms():
        names |= {f"{hist}_bucket", f"{hist}_sum", f"{hist}_count"}
    return names


def test_compose_wires_workers_prometheus_grafana_and_the_dashboard() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "worker", "dashboard", "prometheus", "grafana"} <= set(services)
    worker = services["worker"]
    assert worker["environment"]["RECSYS_WEB_PORT"] == str(Settings().web_port)
    # A worker that dies comes back (in its container, with its snapshots); snapshots
    # outlive no Kafka log (it is in the broker's container): one kept past `down` could
    # be loaded against a new log once its offsets were passed.
    assert worker["restart"] == services["dashboard"]["restart"] == "unless-stopped"
    assert "RECSYS_SNAPSHOT_DIR" not in worker["environment"] and "volumes" not in compose
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            assert (REPO / source).exists(), f"{service} mounts missing {source}"


async def test_the_compose_healthcheck_fails_until_the_worker_is_ready() -> None:
    """The worker's healthcheck command, run as compose would, against a worker's
    server: non-zero while ``/readyz`` answers 503, zero once it answers 200."""
    import asyncio
    import sys

    from streamer.web import MetricsServer

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    check = worker["healthcheck"]["test"]
    assert check[:2] == ["CMD", "python"] and worker["environment"]["RECSYS_WEB_PORT"] == "6066"
    ready = {"now": False}
    server = MetricsServer(lambda: "", lambda: (ready["now"], {"ready": ready["now"]}))
    url = await server.start("127.0.0.1", 0)
    port = url.rsplit(":", 1)[1].split("/")[0]
    try:
        codes = []
        for now in (False, True):
            ready["now"] = now
            command = [sys.executable, *[part.replace("6066", port) for part in check[2:]]]
            done = await asyncio.create_subprocess_exec(*command)
            codes.append(await done.wait())
        assert codes[0] != 0 and codes[1] == 0, codes
    finally:
        await server.stop()


def test_prometheus_scrapes_the_worker_endpoint() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == Settings().web_port


def test_every_grafana_query_names_an_exported_metric() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "recsys-online.json").read_text())
    exported = exported_names()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    used = {m for e in exprs for m in re.findall(r"\brecsys_[a-z_]+", e)}
    assert used and used <= exported, used - exported
    # everything the issue asks to watch has a panel
    for name in (
        "recsys_rmse",
        "recsys_ndcg_at_k",
        "recsys_consumer_lag",
        "recsys_freshness_seconds_bucket",
        "recsys_events_total",
        "recsys_deadletters_total",
        "recsys_refresh_seconds_bucket",
    ):
        assert name in used, name
    datasource = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert all(p["datasource"]["uid"] == datasource["uid"] for p in dashboard["panels"])


def _alert_rules() -> list[dict]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_prometheus_loads_the_alert_rules_compose_mounts_beside_its_config() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_parses_and_watches_what_a_worker_exports(rule: dict) -> None:
    """No promtool here: each expression is parsed as PromQL, names only metrics a worker
    exports (or Prometheus's own ``up``), and only kinds of dead letters that exist."""
    promql_parser.parse(rule["expr"])
    used = set(re.findall(r"\brecsys_[a-z_]+", rule["expr"]))
    assert used <= exported_names(), used - exported_names()
    assert used or "up{" in rule["expr"]
    kinds = {kind for _, kind in DEADLETTER_KINDS} | {"invalid"}
    for value in re.findall(r'reason=~?"([^"]+)"', rule["expr"]):
        assert set(value.split("|")) <= kinds, value
    assert rule["labels"]["severity"] in ("critical", "warning")
    assert rule["annotations"]["summary"]


def test_every_grafana_query_parses() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "recsys-online.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            promql_parser.parse(target["expr"])
