"""The docker-compose monitoring files agree with what the workers really expose.

No Docker engine here, so the containers are not run; what can drift silently is checked:
Prometheus scrapes the port and path workers serve, and every Grafana query names a
metric a worker exports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from streamer.engine import StreamEngine
from streamer.metrics import GAUGES
from streamer.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def exported_names() -> set[str]:
    names = {name for name, _, _ in GAUGES.values()}
    for hist in StreamEngine(Settings(n_factors=2)).histograms():
        names |= {f"{hist}_bucket", f"{hist}_sum", f"{hist}_count"}
    return names


def test_compose_wires_workers_prometheus_grafana_and_the_dashboard() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "worker", "dashboard", "prometheus", "grafana"} <= set(services)
    assert services["worker"]["environment"]["RECSYS_WEB_PORT"] == str(Settings().web_port)
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            assert (REPO / source).exists(), f"{service} mounts missing {source}"


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
