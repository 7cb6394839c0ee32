"""Every query of the Grafana dashboard returns data from a real Prometheus scraping a real
`feedstep run` on the real broker.

No Grafana server runs here, so the test does what Grafana would: it substitutes the
dashboard's variables ($job, $instance, $__rate_interval, ...) into each panel target and
annotation query and sends it to the Prometheus HTTP API of deploy/local/prometheus.sh, over
the time range of the run. The stream is built so that every panel has something to show:
valid feedback (steps, latencies, prequential windows, the gate), malformed records (dead
letters), re-sent events (duplicates), events whose weight overflows float32 (skipped steps),
a learnable first half (a promotion) and an inverted second half (drift alarms and a rollback),
a few POST /v1/score requests, good and malformed (the score endpoint's panels), and a probe
file (the forgetting panel).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from streaming.testing.simulate import SimulatedFeedback
from tests.integration.faultlib import MALFORMED, run_argv, scrape_metrics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "feedstep.json"
PARTITIONS = 3
LEARNABLE, INVERTED = 600, 600
OVERFLOWING = (100, 250, 400)  # indices whose weight (1e300) is inf as float32: skipped steps
RESENT = 5  # events sent twice: duplicates
SCORED = 10  # good POST /v1/score requests (answered 200)
MALFORMED_SCORE = (b"not json", b'{"prompt": "hi", "responses": "not a list"}')  # 400 each


def _invert(event: dict[str, Any]) -> dict[str, Any]:
    """The same event with the opposite feedback (what a model learned is now wrong)."""
    event = copy.deepcopy(event)
    feedback = event["feedback"]
    if feedback["type"] == "thumb":
        feedback["value"] = -feedback["value"]
    elif feedback["type"] == "rating":
        feedback["value"] = 6 - feedback["value"]
    elif feedback["type"] == "preference":
        feedback["chosen"], feedback["rejected"] = feedback["rejected"], feedback["chosen"]
        event["response"] = feedback["chosen"]
    return event


def _post_score(port: int, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST a body to the sidecar's /v1/score: (HTTP status, the JSON answer)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/score",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _total(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def _api(base: str, path: str, **params: Any) -> dict[str, Any]:
    """GET a Prometheus API path; HTTP errors come back as the JSON body Prometheus sends."""
    url = f"{base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"{}") | {"http_status": exc.code}


def _regex_value(value: str) -> str:
    """A variable value as Grafana puts it into a =~ matcher: regex-escaped, in a PromQL string."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\1", value).replace("\\", "\\\\")


def substitute(expr: str, job: str, instance: str) -> str:
    """The expression Grafana would send with these variable values (a 1 s scrape interval)."""
    out = (
        expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "5s")
        .replace("$__range", "5m")
        .replace("$job", _regex_value(job))
        .replace("$instance", _regex_value(instance))
    )
    assert "$" not in out, f"a variable the test does not know in {expr!r}"
    return out


def dashboard_queries() -> list[tuple[str, str, bool]]:
    """(where, expr, instant) for every panel target and every Prometheus annotation query."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for sub in [panel, *panel.get("panels", [])]:
            for target in sub.get("targets", []):
                where = f"panel {sub['title']!r} target {target['refId']}"
                out.append((where, target["expr"], bool(target.get("instant"))))
    for annotation in dashboard["annotations"]["list"]:
        if not annotation.get("builtIn"):
            out.append((f"annotation {annotation['name']!r}", annotation["expr"], False))
    return out


def _wait(what: str, probe, timeout_s: float, describe=lambda: "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {describe()}")
        time.sleep(0.25)


@pytest.fixture()
def sidecar(kafka_bootstrap, topic_name, tmp_path):
    """A `feedstep run` on a fresh 3-partition topic: (process, metrics port, its log lines)."""
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic_name, num_partitions=PARTITIONS, replication_factor=1)])
    admin.close()
    # A probe set, so the forgetting panel has a KL to show (a cap it never reaches).
    probe = tmp_path / "probe.jsonl"
    probe.write_text(
        "".join(
            json.dumps({"prompt": f"question {i}?", "response": f"answer {i}."}) + "\n"
            for i in range(8)
        )
    )
    config = tmp_path / "feedstep.toml"
    config.write_text(
        "\n".join(
            [
                "gate_min_events = 200",
                "drift_quiet_events = 0",
                "lr = 0.001",
                "max_length = 64",
                f'updates_topic = "{topic_name}.updates"',
                f'probe_file = "{probe}"',
                "probe_every_steps = 2",
                "max_probe_kl = 100.0",
            ]
        )
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [
            *run_argv(kafka_bootstrap, topic_name, f"g-{topic_name}"),
            "--config",
            str(config),
            "--model",
            "tiny",
            "--batch-size",
            "16",
            "--max-wait-ms",
            "200",
            "--metrics-port",
            "0",
            "--seed",
            "3",
            "--store",
            str(tmp_path / "store"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        port = None
        for line in proc.stderr:
            lines.append(line)
            found = re.search(r"metrics on http://[^:]+:(\d+)/metrics", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "".join(lines)
        threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
        yield proc, port, lines
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def test_every_dashboard_query_returns_data_from_a_real_run(
    kafka_bootstrap, topic_name, sidecar, prometheus_url, prometheus_targets_dir
):
    proc, port, lines = sidecar
    job, instance = "feedstep", f"dashboard-{uuid.uuid4().hex[:12]}"

    # Prometheus scrapes the sidecar under the job and instance a deployment would give it.
    target = prometheus_targets_dir / f"pytest-{instance}.json"
    prometheus_targets_dir.mkdir(parents=True, exist_ok=True)
    entry = [{"targets": [f"127.0.0.1:{port}"], "labels": {"job": job, "instance": instance}}]
    target.with_suffix(".tmp").write_text(json.dumps(entry))
    target.with_suffix(".tmp").rename(target)  # Prometheus must never read half a file
    started = time.time()
    try:

        def scraped(query: str) -> list[dict[str, Any]]:
            return _api(prometheus_url, "/api/v1/query", query=query).get("data", {}).get("result")

        def log_tail() -> str:
            return "".join(lines[-20:])

        # Produce only once Prometheus scrapes a ready sidecar: counters it first sees at 0
        # show their increases (promotions, rollbacks) in rate() and increase().
        _wait(
            "Prometheus to scrape a ready sidecar",
            lambda: scraped(f'feedstep_ready{{instance="{instance}"}} == 1'),
            60,
            log_tail,
        )
        # The score endpoint answers 503 until the model is attached: wait for a 200, then
        # send the rest of the good requests and the malformed ones (the score panels).
        good = json.dumps({"prompt": "How do I reset it?", "responses": ["Hold it.", "No."]})

        def scored() -> bool:
            status, answer = _post_score(port, good.encode())
            assert status in (200, 503), (status, answer)
            if status == 200:
                assert len(answer["rewards"]) == 2, answer
            return status == 200

        _wait("the score endpoint to answer 200", scored, 60, log_tail)
        for _ in range(SCORED - 1):
            status, answer = _post_score(port, good.encode())
            assert status == 200 and len(answer["rewards"]) == 2, (status, answer)
        for body in MALFORMED_SCORE:
            status, answer = _post_score(port, body)
            assert status == 400, (status, answer)

        events = list(SimulatedFeedback(seed=11).events(LEARNABLE + INVERTED))
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")

        def send(event: dict[str, Any] | bytes, i: int) -> None:
            value = event if isinstance(event, bytes) else json.dumps(event).encode()
            producer.send(topic_name, value=value, partition=i % PARTITIONS)

        for i, event in enumerate(events[:LEARNABLE]):
            send(dict(event, weight=1e300) if i in OVERFLOWING else event, i)
        for i, event in enumerate(events[:RESENT]):
            send(event, i)
        for i, bad in enumerate(MALFORMED):
            send(bad, i)
        producer.flush()

        metrics: dict[str, float] = {}

        def sidecar_has(condition) -> bool:
            nonlocal metrics
            assert proc.poll() is None, log_tail()
            metrics = scrape_metrics(port)
            return condition(metrics)

        _wait(
            "a promotion",
            lambda: sidecar_has(lambda m: _total(m, "feedstep_promotions_total") >= 1),
            90,
            lambda: f"{metrics}\n{log_tail()}",
        )
        for i, event in enumerate(events[LEARNABLE:]):
            send(_invert(event), i)
        for i, bad in enumerate(MALFORMED):  # a second wave: dead-letter rates above 0
            send(bad, i)
        producer.flush()
        producer.close()
        valid = LEARNABLE + INVERTED
        _wait(
            "the whole stream, a rollback, drift alarms and skipped steps",
            lambda: sidecar_has(
                lambda m: (
                    m.get('feedstep_events_total{outcome="accepted"}') == valid
                    and m.get('feedstep_events_total{outcome="rejected"}') == 2 * len(MALFORMED)
                    and _total(m, "feedstep_rollbacks_total") >= 1
                    and _total(m, "feedstep_drift_alarms_total") >= 1
                    and _total(m, "feedstep_skipped_steps_total") >= 2
                )
            ),
            90,
            lambda: f"{metrics}\n{log_tail()}",
        )
        assert metrics['feedstep_events_total{outcome="duplicate"}'] == RESENT
        assert _total(metrics, "feedstep_dead_letter_total") == 2 * len(MALFORMED)
        assert metrics['feedstep_score_requests_total{status="200"}'] == SCORED
        assert metrics['feedstep_score_requests_total{status="400"}'] == len(MALFORMED_SCORE)
        # Prometheus has the final state, and a few scrapes after it for the rate windows.
        _wait(
            "Prometheus to scrape the final state",
            lambda: scraped(
                f'sum(feedstep_events_total{{instance="{instance}"}}) == '
                f"{valid + RESENT + 2 * len(MALFORMED)}"
            ),
            30,
        )
        time.sleep(3)

        # The dashboard's variables resolve to this sidecar, as Grafana's label_values does.
        jobs = _api(prometheus_url, "/api/v1/label/job/values", **{"match[]": "feedstep_ready"})
        assert job in jobs["data"], jobs
        instances = _api(
            prometheus_url,
            "/api/v1/label/instance/values",
            **{"match[]": f'feedstep_ready{{job=~"{_regex_value(job)}"}}'},
        )
        assert instance in instances["data"], instances

        end = time.time()
        failures = []
        all_queries = dashboard_queries()
        for where, expr, instant in all_queries:
            query = substitute(expr, job, instance)
            if instant:
                answer = _api(prometheus_url, "/api/v1/query", query=query, time=end)
            else:
                answer = _api(
                    prometheus_url,
                    "/api/v1/query_range",
                    query=query,
                    start=started - 5,
                    end=end,
                    step=1,
                )
            if answer.get("status") != "success":
                failures.append(f"{where}: {answer.get('error', answer)}\n    {query}")
                continue
            series = answer["data"]["result"]
            values = [float(v) for s in series for _, v in s.get("values", [s.get("value")])]
            if not series:
                failures.append(f"{where}: no data\n    {query}")
            elif not any(math.isfinite(v) for v in values):
                failures.append(f"{where}: only NaN or Inf\n    {query}")
        assert not failures, f"{len(failures)} of {len(all_queries)} queries:\n" + "\n".join(
            failures
        )
    finally:
        target.unlink(missing_ok=True)
