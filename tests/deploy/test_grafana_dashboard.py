"""deploy/grafana: the dashboard JSON is well formed for Grafana 10/11, every query is scoped by
the job and instance variables and reads only metrics feedstep exports, and the provisioning
files point Grafana at the dashboards folder.

That the queries return data from a real Prometheus scraping a real sidecar is
tests/integration/test_dashboard_queries.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml

from tests.deploy.test_prometheus_rules import exported_metric_names, metric_names_in

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "feedstep.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "feedstep.yaml"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
SCOPE = re.compile(r'\{job=~"\$job", instance=~"\$instance"(?:, [a-z_]+=~?"[^"]*")*\}')


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows included, and the panels of collapsed rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, expr) of every panel target and every Prometheus annotation query."""
    out = [
        (f"panel {p['id']} {p['title']!r} target {t['refId']}", t["expr"])
        for p in panels(dashboard)
        for t in p.get("targets", [])
    ]
    out += [
        (f"annotation {a['name']!r}", a["expr"])
        for a in dashboard["annotations"]["list"]
        if not a.get("builtIn")
    ]
    return out


def test_the_dashboard_is_a_grafana_10_dashboard():
    dashboard = load()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] == "feedstep" and dashboard["title"] == "feedstep"
    assert dashboard["id"] is None, "a provisioned dashboard carries no database id"
    assert dashboard["time"]["from"].startswith("now-")


def test_it_has_datasource_job_and_instance_variables():
    variables = {v["name"]: v for v in load()["templating"]["list"]}
    assert set(variables) == {"datasource", "job", "instance"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    exported = exported_metric_names()
    for name in ("job", "instance"):
        var = variables[name]
        assert var["type"] == "query" and var["datasource"] == DATASOURCE_REF
        assert var["includeAll"] and var["multi"] and var["allValue"] == ".+"
        query = var["query"]["query"]
        assert query == var["definition"]
        found = re.fullmatch(r"label_values\((\w+)(\{.*\})?, (\w+)\)", query)
        assert found and found.group(3) == name, query
        assert found.group(1) in exported, query
    assert '{job=~"$job"}' in variables["instance"]["query"]["query"]


def test_every_panel_uses_the_datasource_variable_and_has_targets():
    for panel in panels(load()):
        if panel["type"] == "row":  # layout only: a row has no query of its own
            assert "targets" not in panel, panel["title"]
            continue
        assert panel["datasource"] == DATASOURCE_REF, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE_REF, (panel["title"], target["refId"])
            assert target["expr"].strip(), (panel["title"], target["refId"])


def test_every_query_is_scoped_to_the_selected_job_and_instance():
    all_queries = queries(load())
    assert len(all_queries) >= 20
    for where, expr in all_queries:
        selectors = re.findall(r"\b(feedstep_\w+)(\{[^}]*\})?", expr)
        assert selectors, f"{where}: no feedstep metric in {expr!r}"
        for metric, braces in selectors:
            assert SCOPE.fullmatch(braces), f"{where}: {metric}{braces} is not scoped"


def test_every_query_reads_only_metrics_feedstep_exports():
    exported = exported_metric_names()
    for where, expr in queries(load()):
        unknown = metric_names_in(expr) - exported
        assert not unknown, f"{where}: {sorted(unknown)} not declared in monitors/metrics.py"


def test_latency_panels_take_quantiles_of_histogram_buckets():
    by_title = {p["title"]: p for p in panels(load())}
    for title in ("Step duration", "Feedback-to-update latency", "Score latency"):
        for target in by_title[title]["targets"]:
            assert re.match(r"histogram_quantile\(0\.\d+, sum by \(le\) \(rate\(", target["expr"])
            assert "_seconds_bucket{" in target["expr"]


def test_the_panels_issue_15_asks_for_are_there():
    dashboard = load()
    text = {
        p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in panels(dashboard)
    }
    wanted = {
        "Events by outcome": "feedstep_events_total",
        "Dead letters by reason": "feedstep_dead_letter_total",
        "Consumer lag per partition": "feedstep_consumer_lag_messages",
        "Steps and skipped steps": "feedstep_skipped_steps_total",
        "Step duration": "feedstep_step_duration_seconds_bucket",
        "Feedback-to-update latency": "feedstep_feedback_to_update_seconds_bucket",
        "Prequential loss: baseline vs candidate": "feedstep_prequential_loss",
        "Prequential accuracy: baseline vs candidate": "feedstep_prequential_accuracy_ratio",
        "Gate test statistic against its threshold": "feedstep_gate_check_threshold",
        "Gate check states": "feedstep_gate_check_state",
        "Drift alarms": "feedstep_drift_alarms_total",
        "Score requests by status": "feedstep_score_requests_total",
        "Score latency": "feedstep_score_duration_seconds_bucket",
        "Mined pairs and evictions per second": "feedstep_mining_evictions_total",
        "Unpaired events held by the miner": "feedstep_mining_pending_events",
    }
    for title, metric in wanted.items():
        assert metric in text.get(title, ""), title
    annotations = {a["name"]: a.get("expr", "") for a in dashboard["annotations"]["list"]}
    assert "feedstep_promotions_total" in annotations["Promotions"]
    assert "feedstep_rollbacks_total" in annotations["Rollbacks"]
    for a in dashboard["annotations"]["list"]:
        if not a.get("builtIn"):
            assert a["datasource"] == DATASOURCE_REF and a["enable"], a["name"]


def test_panel_ids_are_unique_and_panels_do_not_overlap():
    all_panels = panels(load())
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), sorted(ids)
    cells: dict[tuple[int, int], str] = {}
    for p in all_panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


def test_the_datasource_provisioning_defines_a_prometheus():
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["access"] == "proxy"
    assert datasource["url"].startswith("http")


def test_the_dashboard_provider_points_at_the_dashboards_folder():
    document = yaml.safe_load(PROVIDERS.read_text())
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    path = PurePosixPath(provider["options"]["path"])
    assert path.is_absolute() and path.name == DASHBOARD.parent.name == "dashboards"
    assert f"deploy/grafana/dashboards at {path}" in PROVIDERS.read_text(), "say what to mount"
    assert sorted(p.name for p in DASHBOARD.parent.iterdir()) == ["feedstep.json"]


@pytest.mark.parametrize("path", [DATASOURCES, PROVIDERS])
def test_provisioning_files_are_version_1(path):
    assert yaml.safe_load(path.read_text())["apiVersion"] == 1
