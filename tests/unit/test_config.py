import pytest

from streaming.cli import main
from streaming.config import load_config
from streaming.errors import ConfigError


def test_precedence_file_then_env_then_flags(tmp_path):
    cfg = tmp_path / "feedstep.toml"
    cfg.write_text('topic = "from-file"\nbatch_size = 4\nlr = 0.001\n')
    env = {"FEEDSTEP_BATCH_SIZE": "8", "FEEDSTEP_GROUP_ID": "env-group"}
    c = load_config(cfg, {"lr": 0.5, "topic": None}, environ=env)
    assert (c.kafka.topic, c.ingest.batch_size, c.kafka.group_id, c.step.lr) == (
        "from-file",
        8,
        "env-group",
        0.5,
    )
    assert c.kafka.dlq_topic == "from-file.dlq"


def test_yaml_file_and_config_env_var(tmp_path):
    cfg = tmp_path / "f.yaml"
    cfg.write_text("feedstep:\n  topic: yaml-topic\n  max_wait_ms: 5\n")
    c = load_config(environ={"FEEDSTEP_CONFIG": str(cfg)})
    assert c.kafka.topic == "yaml-topic" and c.ingest.max_wait_ms == 5


def test_unknown_file_key_is_named(tmp_path):
    cfg = tmp_path / "f.toml"
    cfg.write_text("batch_sise = 3\n")
    with pytest.raises(ConfigError, match="unknown key 'batch_sise'"):
        load_config(cfg, environ={})


def test_unknown_env_var_is_named():
    with pytest.raises(ConfigError, match="FEEDSTEP_BATCHSIZE"):
        load_config(environ={"FEEDSTEP_BATCHSIZE": "3"})


def test_invalid_value_names_key_and_value():
    with pytest.raises(ConfigError, match=r"batch_size.*got 0"):
        load_config(overrides={"batch_size": 0}, environ={})


def test_cross_field_rule_names_both_values():
    with pytest.raises(ConfigError, match="sasl_mechanism.*security_protocol"):
        load_config(overrides={"sasl_mechanism": "PLAIN"}, environ={})


def test_password_is_secret_and_not_echoed():
    c = load_config(
        overrides={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_password": "hunter2",
        },
        environ={},
    )
    assert "hunter2" not in repr(c)
    assert c.kafka.sasl_plain_password.get_secret_value() == "hunter2"


def test_cli_exits_2_with_the_reason_on_bad_config(tmp_path, capsys):
    cfg = tmp_path / "f.toml"
    cfg.write_text("nonsense = 1\n")
    assert main(["run", "--config", str(cfg)]) == 2
    assert "unknown key 'nonsense'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "key", ["kafka_fetcher", "fetcher_prefetch_polls", "kafka_record_reader", "predecode"]
)
def test_a_removed_key_says_it_was_removed_wherever_it_is_set(tmp_path, key):
    cfg = tmp_path / "f.toml"
    cfg.write_text(f"{key} = 1\n")
    with pytest.raises(ConfigError, match=f"'{key}' was removed.*delete it"):
        load_config(cfg, environ={})
    with pytest.raises(ConfigError, match=f"FEEDSTEP_{key.upper()}: '{key}' was removed"):
        load_config(environ={f"FEEDSTEP_{key.upper()}": "1"})
    with pytest.raises(ConfigError, match=f"'{key}' was removed"):
        load_config(overrides={key: 1}, environ={})


def test_a_file_may_use_sections_or_flat_names_and_both_mean_the_same(tmp_path):
    flat = tmp_path / "flat.toml"
    flat.write_text(
        "gate_min_events = 50\ncheckpoint_every_steps = 7\nmetrics_port = 0\nlr = 0.1\n"
    )
    nested = tmp_path / "nested.toml"
    nested.write_text(
        "[gate]\nmin_events = 50\n[checkpoints]\nevery_steps = 7\n[metrics]\nport = 0\n"
        "[step]\nlr = 0.1\n"
    )
    a, b = load_config(flat, environ={}), load_config(nested, environ={})
    assert a == b
    assert (a.gate.min_events, a.checkpoints.every_steps, a.metrics.port, a.step.lr) == (
        50,
        7,
        0,
        0.1,
    )
    assert a.given() == {"gate_min_events", "checkpoint_every_steps", "metrics_port", "lr"}
    env = load_config(environ={"FEEDSTEP_GATE_MIN_EVENTS": "60"})  # flat env names keep working
    assert env.gate.min_events == 60


def test_an_unknown_key_inside_a_section_names_the_section_and_its_keys(tmp_path):
    cfg = tmp_path / "f.toml"
    cfg.write_text("[gate]\nmin_evnts = 3\n")
    with pytest.raises(
        ConfigError, match=r"unknown key 'min_evnts' in section \[gate\].*min_events"
    ):
        load_config(cfg, environ={})


def test_every_flat_name_is_unique_and_reaches_its_section():
    from streaming.config import FLAT_KEYS, FeedstepConfig, flat_default

    sections = FeedstepConfig.model_fields
    fields = [(s, n) for s, info in sections.items() for n in info.annotation.model_fields]
    assert sorted(FLAT_KEYS.values()) == sorted(fields)  # one flat name per field, no clash
    assert flat_default("gate_min_events") == 2000 and flat_default("metrics_port") == 9108
    flat = load_config(environ={}).flat()
    assert "sasl_plain_password" not in flat and flat["batch_size"] == 16


def test_sections_are_handed_whole_to_the_parts_that_own_them():
    from learner.step import StepConfig
    from monitors.gate import GateConfig
    from streaming.runtime.pipeline import PipelineSettings

    c = load_config(overrides={"lr": 0.5, "gate_alpha": 0.01, "batch_size": 4}, environ={})
    assert StepConfig(**c.step.model_dump()).lr == 0.5
    assert GateConfig(**c.gate.model_dump(exclude={"promql_checks"})).alpha == 0.01
    settings = PipelineSettings.from_config(c)
    assert (settings.batch_size, settings.dead_letter_topic) == (4, "feedback.dlq")


def test_kubernetes_service_links_are_ignored_and_real_keys_still_checked():
    links = {
        "FEEDSTEP_SERVICE_HOST": "10.96.0.12",
        "FEEDSTEP_SERVICE_PORT": "9108",
        "FEEDSTEP_SERVICE_PORT_METRICS": "9108",
        "FEEDSTEP_PORT": "tcp://10.96.0.12:9108",
        "FEEDSTEP_PORT_9108_TCP": "tcp://10.96.0.12:9108",
        "FEEDSTEP_PORT_9108_TCP_PROTO": "tcp",
        "FEEDSTEP_PORT_9108_TCP_PORT": "9108",
        "FEEDSTEP_PORT_9108_TCP_ADDR": "10.96.0.12",
        "FEEDSTEP_TRAINER_SERVICE_HOST": "10.96.0.13",
        "FEEDSTEP_TRAINER_PORT_9108_UDP_PROTO": "udp",
    }
    c = load_config(environ={**links, "FEEDSTEP_BATCH_SIZE": "8", "FEEDSTEP_METRICS_PORT": "9200"})
    assert (c.ingest.batch_size, c.metrics.port) == (8, 9200)
    with pytest.raises(ConfigError, match="unknown environment variable FEEDSTEP_BATCHSIZE"):
        load_config(environ={**links, "FEEDSTEP_BATCHSIZE": "8"})
    # a Service named feedstep-metrics injects FEEDSTEP_METRICS_PORT=tcp://...: say what it is
    with pytest.raises(ConfigError, match="service link.*enableServiceLinks: false"):
        load_config(environ={"FEEDSTEP_METRICS_PORT": "tcp://10.96.0.14:9108"})


LORA_SFT = {"trainable": "lora", "objective": "sft", "model": "tiny-causal"}


@pytest.mark.parametrize(
    ("given", "wrong"),
    [({}, "trainable='full' and objective='reward'"), ({"objective": "sft"}, "trainable='full'")],
)
def test_vllm_hot_load_needs_lora_and_a_causal_lm_objective(given, wrong):
    with pytest.raises(ConfigError, match=rf'vllm_url.*{wrong}.*set trainable = "lora"'):
        load_config(overrides={"vllm_url": "http://vllm:8000", **given}, environ={})
    c = load_config(overrides={"vllm_url": "http://vllm:8000", **LORA_SFT}, environ={})
    assert (c.promotion.vllm_url, c.promotion.vllm_adapter_name) == ("http://vllm:8000", "feedstep")


def test_the_causal_lm_objectives_are_the_learners():
    from learner.objectives import CAUSAL_LM
    from streaming.config import _CAUSAL_LM

    assert set(_CAUSAL_LM) == CAUSAL_LM


@pytest.mark.parametrize(
    ("key", "url", "says"),
    [
        ("vllm_url", "vllm:8000", "must be an http:// or https:// URL"),
        ("vllm_url", "http://vllm:8000/v1", r"ends in /v1.*'http://vllm:8000'"),
        ("webhook_url", "file:///etc/hosts", "must be an http:// or https:// URL"),
    ],
)
def test_notification_urls_must_be_http(key, url, says):
    with pytest.raises(ConfigError, match=says):
        load_config(overrides={key: url, **LORA_SFT}, environ={})


def test_the_vllm_api_key_is_secret_and_not_echoed():
    env = {"FEEDSTEP_VLLM_API_KEY": "sk-hunter2"}
    c = load_config(overrides={"vllm_url": "http://vllm:8000", **LORA_SFT}, environ=env)
    assert c.promotion.vllm_api_key.get_secret_value() == "sk-hunter2"
    assert "sk-hunter2" not in repr(c) and "vllm_api_key" not in c.flat()
    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"vllm_api_key": 12345}, environ={})
    assert "vllm_api_key" in str(caught.value) and "12345" not in str(caught.value)


def test_notifications_go_to_the_notifier_not_the_governor_settings():
    from streaming.cli.wiring import notify_settings

    overrides = {"vllm_url": "http://vllm:8000", "vllm_api_key": "sk-1", **LORA_SFT}
    c = load_config(overrides={**overrides, "notify_backoff_max_s": 5}, environ={})
    s = notify_settings(c)
    assert (s.vllm_url, s.vllm_api_key, s.backoff_max_s) == ("http://vllm:8000", "sk-1", 5.0)
    assert "sk-1" not in repr(s)  # the key is left out of its repr
    dry = load_config(overrides={**overrides, "publish": False}, environ={})
    assert notify_settings(dry).vllm_url is None  # a dry run announces nothing
