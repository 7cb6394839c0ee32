"""deploy/prometheus/feedstep-rules.yaml: valid for promtool, unit-tested by promtool, every alert
tested firing and not firing, and only metrics that feedstep exports.

promtool comes with Debian's ``prometheus`` package (deploy/local/prometheus.sh installs it);
``PROMTOOL`` names another binary. In CI (``CI`` set) a missing promtool fails these tests.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "deploy" / "prometheus"
RULES = RULES_DIR / "feedstep-rules.yaml"
RULES_TEST = RULES_DIR / "feedstep-rules.test.yaml"
METRICS_MODULE = REPO / "monitors" / "metrics.py"

# Sample names each metric type of prometheus_client exposes, from the name it is declared with.
_SUFFIXES = {
    "Counter": ("_total", "_created"),
    "_PerRecordCounter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_count", "_sum", "_created"),
    "_BatchHistogram": ("_bucket", "_count", "_sum", "_created"),
    "Info": ("_info",),
}
_PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}  # fmt: skip


def exported_metric_names() -> set[str]:
    """Every sample name monitors/metrics.py declares, read from its source (not imported)."""
    names = set()
    for node in ast.walk(ast.parse(METRICS_MODULE.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        suffixes = _SUFFIXES.get(node.func.id)
        if suffixes and node.args and isinstance(node.args[0], ast.Constant):
            names.update(f"{node.args[0].value}{suffix}" for suffix in suffixes)
    return names


def metric_names_in(expr: str) -> set[str]:
    """The metric (and recorded series) names a PromQL expression reads.

    Label matchers, range and subquery brackets, strings and the label lists of ``by``, ``on``
    and friends are removed first; what is left that is neither a function, a keyword nor a
    number is a metric name.

    >>> sorted(metric_names_in('sum by (le) (rate(x_total{job=~"$job"}[5m])) / on (job) y:r'))
    ['x_total', 'y:r']
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def promtool() -> str:
    """The promtool binary; a failure in CI, a skip elsewhere, when there is none."""
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if found and os.access(found, os.X_OK):
        return found
    message = (
        "promtool not found (set PROMTOOL, or install Debian's prometheus package: "
        "`deploy/local/prometheus.sh start` does, or `apt-get install prometheus`)"
    )
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must run the rule tests")
    pytest.skip(message)


def _run(*argv: str | Path, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def _rules() -> list[dict]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def _alerts() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def test_promtool_checks_the_rule_file():
    out = _run(promtool(), "check", "rules", RULES)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in out.stdout


def test_the_rules_pass_their_promtool_unit_tests():
    out = _run(promtool(), "test", "rules", RULES_TEST.name)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_alerts_issue_15_asks_for_are_there():
    assert set(_alerts()) == {
        "FeedstepStalled",  # lag grows while no steps are made
        "FeedstepConsumerLagHigh",
        "FeedstepDeadLetterRateHigh",
        "FeedstepSkippedSteps",
        "FeedstepGateInconclusive",
        "FeedstepRolledBack",
        "FeedstepBrokerDisconnected",
        "FeedstepNotReady",
        "FeedstepScoreErrors",  # 5xx share of POST /v1/score
        "FeedstepScoreSlow",  # p99 of POST /v1/score latency
        "FeedstepHotLoadFailing",  # vLLM refuses or cannot be reached for the LIVE adapter
    }


@pytest.mark.parametrize("name", sorted(_alerts()))
def test_every_alert_has_a_for_a_severity_a_summary_and_a_runbook(name):
    rule = _alerts()[name]
    assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
    assert rule["labels"]["severity"] in {"critical", "warning", "info"}
    assert set(rule["annotations"]) == {"summary", "runbook"}
    assert "{{ $labels.instance }}" in rule["annotations"]["summary"]
    assert len(rule["annotations"]["runbook"]) > 80, "the runbook says what to check and do"


def test_every_alert_is_unit_tested_firing_and_not_firing():
    cases: dict[str, list[list]] = {}
    for test in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    for name in _alerts():
        assert any(cases.get(name, [])), f"{name}: no test case where it fires"
        assert any(not c for c in cases.get(name, [])), f"{name}: no test case where it is quiet"
    assert set(cases) <= set(_alerts()), "test cases for alerts the rule file does not have"


@pytest.mark.parametrize("name", sorted(_alerts()))
def test_the_unit_tests_catch_an_alert_that_never_fires(name, tmp_path):
    """Mutation check: with the alert's expression replaced by one that is always empty,
    promtool's unit tests must fail, so the firing cases really are checked."""
    exe = promtool()
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == name:
                rule["expr"] = "vector(1) == 0"
    (tmp_path / RULES.name).write_text(yaml.safe_dump(document, sort_keys=False))
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    out = _run(exe, "test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert out.returncode != 0, out.stdout + out.stderr
    assert f"alertname: {name}," in out.stdout + out.stderr


def test_the_rules_read_only_metrics_feedstep_exports():
    exported = exported_metric_names()
    assert {"feedstep_events_total", "feedstep_step_duration_seconds_bucket"} <= exported
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    for rule in _rules():
        unknown = metric_names_in(rule["expr"]) - exported - recorded
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {sorted(unknown)}"
    for name in recorded:
        level, metric, _ = name.split(":")
        assert level == "instance" and metric.startswith("feedstep_"), name


def test_the_unit_tests_feed_series_named_as_feedstep_names_them():
    exported = exported_metric_names()
    for test in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for series in test["input_series"]:
            name = series["series"].split("{", 1)[0]
            assert name in exported, f"{test['name']}: {name} is not a feedstep metric"
