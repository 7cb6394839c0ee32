"""deploy/compose: the local stack fits together, though no container engine runs here.

The compose file is read as YAML and checked for what ``docker compose up`` would need: the
services, their ports, bind mounts of files that exist (read-only), the trainer's build and
configuration (loaded by feedstep's own loader), Prometheus scraping feedstep's port with
feedstep's rules (``promtool check config``; in CI a missing promtool fails), Grafana mounted
where its provisioning files say. ``docker-compose config`` (Debian's docker-compose, or the
``docker compose`` plugin) also parses it when one is installed; it needs no daemon. The
example chat service's events decode with feedstep's decoder, and (integration) it writes
them to a real broker.
"""

from __future__ import annotations

import copy
import doctest
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from streaming.config import flat_default, load_config
from streaming.events.decode import decode_event
from streaming.events.schema import FeedbackEvent

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
CHAT_SERVICE = COMPOSE_DIR / "chat_service.py"
METRICS_PORT = flat_default("metrics_port")
SERVICES = {"kafka", "kafka-init", "chat-service", "feedstep", "prometheus", "grafana"}


@functools.cache
def _compose_text(mtime_ns: int) -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose() -> dict:
    return copy.deepcopy(_compose_text(COMPOSE.stat().st_mtime_ns))


def service(name: str) -> dict:
    return compose()["services"][name]


def mounts(name: str) -> list[dict]:
    """The service's volumes in the long syntax: type, source, target, read_only."""
    out = []
    for volume in service(name).get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            kind = "bind" if source.startswith((".", "/")) else "volume"
            out.append(
                {"type": kind, "source": source, "target": target, "read_only": mode == ["ro"]}
            )
        else:
            out.append(volume)
    return out


def bind_source(name: str, target: str) -> Path:
    (mount,) = [m for m in mounts(name) if m["target"] == target]
    assert mount["type"] == "bind", f"{name}: {target} is not a bind mount"
    assert mount.get("read_only") is True, f"{name}: {target} should be mounted read-only"
    return (COMPOSE_DIR / mount["source"]).resolve()


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


def feedstep_config():
    env = {k: str(v) for k, v in service("feedstep")["environment"].items()}
    return load_config(bind_source("feedstep", env["FEEDSTEP_CONFIG"]), environ=env)


def kafka_advertised(listener: str) -> str:
    advertised = service("kafka")["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    found = dict(item.split("://", 1) for item in advertised.split(","))
    return found[listener]


def test_the_stack_has_its_services():
    assert set(compose()["services"]) == SERVICES


def test_every_bind_mount_source_exists():
    for name in SERVICES:
        for mount in mounts(name):
            if mount["type"] == "bind":
                source = (COMPOSE_DIR / mount["source"]).resolve()
                assert source.exists(), f"{name}: bind mount {mount['source']} does not exist"
                assert REPO in source.parents, f"{name}: {mount['source']} is outside the repo"
            else:
                assert mount["source"] in compose()["volumes"], f"{name}: undeclared volume"


def test_kafka_is_a_single_kraft_node_reachable_inside_and_outside():
    kafka = service("kafka")
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in key for key in env)
    host_port = kafka_advertised("HOST").rsplit(":", 1)[1]
    assert f"{host_port}:{host_port}" in kafka["ports"]


def test_kafka_init_creates_the_topics_feedstep_uses():
    config = feedstep_config()
    script = service("kafka-init")["command"][0]
    for topic in (config.kafka.topic, config.kafka.dlq_topic, config.promotion.updates_topic):
        assert f"{topic}:" in script, f"topic {topic} is not created"
    for name in ("feedstep", "chat-service"):
        depends = service(name)["depends_on"]
        assert depends["kafka-init"]["condition"] == "service_completed_successfully"


def test_feedstep_is_built_from_the_cpu_dockerfile_with_a_valid_config():
    feedstep = service("feedstep")
    context = (COMPOSE_DIR / feedstep["build"]["context"]).resolve()
    assert context == REPO, "the build context is the repository root"
    assert (context / feedstep["build"]["dockerfile"]) == REPO / "deploy/docker/Dockerfile.cpu"
    config = feedstep_config()  # raises ConfigError on an unknown key or a bad value
    assert config.metrics.port == METRICS_PORT
    assert f"{METRICS_PORT}:{METRICS_PORT}" in feedstep["ports"]
    assert config.kafka.bootstrap_servers == kafka_advertised("PLAINTEXT")
    # SIGTERM: finish the step, checkpoint, commit; docker's default stop timeout is 10 s.
    grace = seconds(feedstep["stop_grace_period"])
    assert grace > config.run.shutdown_timeout_s and grace > flat_default("shutdown_timeout_s")


def test_feedstep_writes_only_to_its_volumes():
    feedstep = service("feedstep")
    assert feedstep["read_only"] is True
    writable = set(feedstep["tmpfs"]) | {
        m["target"] for m in mounts("feedstep") if m["type"] == "volume"
    }
    text = (REPO / "deploy/docker/Dockerfile.cpu").read_text()
    hf_home = re.search(r"HF_HOME=(\S+)", text).group(1)
    config = feedstep_config()
    for path in ("/tmp", hf_home, config.promotion.store, config.checkpoints.dir):
        assert any(path == w or path.startswith(w + "/") for w in writable), path


def test_prometheus_scrapes_feedstep_and_loads_its_rules():
    prometheus_yml = bind_source("prometheus", "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load(prometheus_yml.read_text())
    targets = [
        (job.get("metrics_path", "/metrics"), target)
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert ("/metrics", f"feedstep:{METRICS_PORT}") in targets
    (rule_file,) = config["rule_files"]
    assert bind_source("prometheus", rule_file) == REPO / "deploy/prometheus/feedstep-rules.yaml"


def test_promtool_accepts_the_prometheus_config():
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool:
        message = "promtool not found (Debian package prometheus; deploy/local/prometheus.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    text = bind_source("prometheus", "/etc/prometheus/prometheus.yml").read_text()
    (rule_file,) = yaml.safe_load(text)["rule_files"]
    local = str(bind_source("prometheus", rule_file))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "prometheus.yml"
        copy.write_text(text.replace(rule_file, local))
        result = subprocess.run(
            [promtool, "check", "config", str(copy)], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_mounts_match_its_provisioning():
    provisioning = bind_source("grafana", "/etc/grafana/provisioning")
    assert provisioning == REPO / "deploy/grafana/provisioning"
    (provider_file,) = (provisioning / "dashboards").glob("*.y*ml")
    providers = yaml.safe_load(provider_file.read_text())["providers"]
    for provider in providers:
        dashboards = bind_source("grafana", provider["options"]["path"])
        assert (dashboards / "feedstep.json").is_file()
        json.loads((dashboards / "feedstep.json").read_text())
    datasources = yaml.safe_load(next((provisioning / "datasources").glob("*.y*ml")).read_text())
    urls = {d["url"] for d in datasources["datasources"] if d["type"] == "prometheus"}
    assert "http://prometheus:9090" in urls, "the data source points at the prometheus service"
    assert "9090:9090" in service("prometheus")["ports"]
    assert "3000:3000" in service("grafana")["ports"]


def test_chat_service_talks_to_the_broker_feedstep_reads():
    chat = service("chat-service")
    env = chat["environment"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == kafka_advertised("PLAINTEXT")
    assert env["FEEDBACK_TOPIC"] == feedstep_config().kafka.topic
    script = bind_source("chat-service", "/app/chat_service.py")
    assert script == CHAT_SERVICE
    command = " ".join(chat["command"])
    assert "/app/chat_service.py" in command
    pyproject = (REPO / "pyproject.toml").read_text()
    (kafka_python,) = re.findall(r'"(kafka-python[^"]*)"', pyproject)
    assert f"'{kafka_python}'" in command, "the same kafka-python range as feedstep"


def test_chat_service_events_decode_with_feedsteps_decoder():
    result = subprocess.run(
        [sys.executable, str(CHAT_SERVICE), "--stdout", "--max-events", "300", "--seed", "0"],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.splitlines()
    assert len(lines) == 300
    kinds = set()
    for line in lines:
        event = decode_event(line)
        assert isinstance(event, FeedbackEvent), (line, event)
        kinds.add(event.feedback.type)
    assert kinds == {"thumb", "rating", "preference", "correction"}


def test_compose_config_parses_the_file_when_a_compose_tool_is_installed():
    if shutil.which("docker-compose"):
        command = ["docker-compose"]
    elif (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        command = ["docker", "compose"]
    else:
        message = "no docker-compose (Debian package docker-compose; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_chat_service_writes_feedback_to_kafka(kafka_bootstrap, topic_name):
    from kafka import KafkaConsumer

    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "FEEDBACK_TOPIC": topic_name,
        "EVENTS_PER_S": "500",
        "MAX_EVENTS": "20",
        "SEED": "3",
    }
    result = subprocess.run(
        [sys.executable, str(CHAT_SERVICE)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "stopped after 20 feedback events" in result.stderr
    consumer = KafkaConsumer(
        topic_name,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
    )
    try:
        records = []
        for record in consumer:
            records.append(record)
            if len(records) == 20:
                break
    finally:
        consumer.close()
    assert len(records) == 20
    for record in records:
        event = decode_event(record.value)
        assert isinstance(event, FeedbackEvent)
        assert record.key.decode() == event.conversation_id


def test_chat_service_doctests():
    spec = importlib.util.spec_from_file_location("chat_service", CHAT_SERVICE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["chat_service"] = module  # doctest finds the examples through it
    spec.loader.exec_module(module)
    result = doctest.testmod(module)
    assert result.attempted and not result.failed
