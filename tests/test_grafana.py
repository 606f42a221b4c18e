"""The Grafana dashboard and the Prometheus config in deploy/ read metrics the gateway exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from gateway.metrics import Metrics
from gateway.policy import PolicyStore
from gateway.stats.build import BaselineCollector
from gateway.stats.prices import Prices
from gateway.stats.recorder import StatsRecorder

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def exported(tmp_path: Path) -> set[str]:
    metrics = Metrics()
    (tmp_path / "granite.yaml").write_text("name: granite\n")
    recorder = StatsRecorder(PolicyStore.open(tmp_path, set()), Prices([]))
    metrics.registry.register(BaselineCollector(recorder))
    text = metrics.render().decode()
    return {name for name, _ in re.findall(r"^# TYPE (\S+) (\S+)", text, re.MULTILINE)}


def test_every_panel_queries_a_metric_the_gateway_exports(tmp_path: Path) -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/certainty-gateway.json").read_text())
    names = exported(tmp_path)
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            queried |= set(re.findall(r"\bgateway_[a-z_]+", target["expr"]))
    assert queried
    for metric in queried:
        base = re.sub(r"_(total|bucket|sum|count)$", "", metric)
        assert {metric, base} & names, f"{metric} is not exported"
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    datasource = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert uids == {datasource["datasources"][0]["uid"]}


def test_prometheus_scrapes_the_gateway_metrics_path() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["gateway:8000"]


def test_the_monitoring_profile_starts_prometheus_and_grafana_with_files_that_exist() -> None:
    root = DEPLOY.parent
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]  # not started by a plain `up`
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert (root / source).exists(), source
    assert "profiles" not in services["gateway"]
    scraped = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = scraped["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["gateway:8000"]  # the compose service's name and port
