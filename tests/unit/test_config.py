import pytest

from streaming.cli import main
from streaming.config import load_config
from streaming.errors import ConfigError


def test_precedence_file_then_env_then_flags(tmp_path):
    cfg = tmp_path / "feedstep.toml"
    cfg.write_text('topic = "from-file"\nbatch_size = 4\nlr = 0.001\n')
    env = {"FEEDSTEP_BATCH_SIZE": "8", "FEEDSTEP_GROUP_ID": "env-group"}
    c = load_config(cfg, {"lr": 0.5, "topic": None}, environ=env)
    assert (c.topic, c.batch_size, c.group_id, c.lr) == ("from-file", 8, "env-group", 0.5)
    assert c.dlq_topic == "from-file.dlq"


def test_yaml_file_and_config_env_var(tmp_path):
    cfg = tmp_path / "f.yaml"
    cfg.write_text("feedstep:\n  topic: yaml-topic\n  max_wait_ms: 5\n")
    c = load_config(environ={"FEEDSTEP_CONFIG": str(cfg)})
    assert c.topic == "yaml-topic" and c.max_wait_ms == 5


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
    assert c.sasl_plain_password.get_secret_value() == "hunter2"


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
