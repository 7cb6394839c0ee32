"""Typed, frozen configuration, validated once at start.

Values come from, in rising precedence: defaults, one config file (TOML or YAML), ``FEEDSTEP_*``
environment variables, command-line flags. An unknown key in any of them is an error that
names the key and where it came from.

Example:
    >>> cfg = load_config(overrides={"batch_size": 8}, environ={})
    >>> cfg.batch_size, cfg.dlq_topic
    (8, 'feedback.dlq')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import tomllib
import yaml
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from streaming.errors import ConfigError

ENV_PREFIX = "FEEDSTEP_"
CONFIG_ENV = "FEEDSTEP_CONFIG"


class FeedstepConfig(BaseSettings):
    """Every setting of the sidecar. Units are in the names."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    # Kafka
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "feedback"
    group_id: str = "feedstep"
    group_instance_id: str | None = None
    """Static group membership (KIP-345), e.g. the pod name: a restarted sidecar with the same id
    gets its partitions back at once, without a rebalance, if it returns within the session
    timeout. Unset: dynamic membership (a clean exit leaves the group at once)."""
    client_id: str = "feedstep"
    dead_letter_topic: str = ""
    """Empty means ``<topic>.dlq``."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: str | None = None
    max_poll_records: int = Field(500, ge=1)
    session_timeout_ms: int = Field(45_000, ge=1000)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    reconnect_backoff_max_ms: int = Field(10_000, ge=100)
    """Cap of the client's exponential reconnect backoff while the broker is unreachable."""
    # Events
    max_text_chars: int = Field(8192, ge=1)
    max_event_bytes: int = Field(1_048_576, ge=64)
    dedup_window: int = Field(100_000, ge=1)
    dedup_prime_records: int = Field(1000, ge=0)
    """Records read back per partition taken over from another member, to know its recent ids."""
    # Batching
    batch_size: int = Field(16, ge=1)
    max_wait_ms: int = Field(1000, ge=0)
    # Model and step
    model: str = "minilm"
    objective: Literal["reward", "kto", "dpo", "sft"] = "reward"
    beta: float = Field(0.1, gt=0)
    """kto/dpo: strength of the pull toward the reference (the frozen baseline)."""
    kto_desirable_weight: float = Field(1.0, gt=0)
    kto_undesirable_weight: float = Field(1.0, gt=0)
    device: str = "auto"
    seed: int = 0
    max_length: int = Field(256, ge=8)
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    l2sp_weight: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    trainable: Literal["full", "head", "bias", "lora"] = "full"
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_target_modules: list[str] | None = None
    ewc_weight: float = Field(0.0, ge=0)
    ewc_decay: float = Field(0.99, gt=0, lt=1)
    max_update_norm: float = Field(0.0, ge=0)
    """Trust region: cap on the norm of one step's weight change (0 = off)."""
    warmup_steps: int = Field(0, ge=0)
    cosine_decay_steps: int = Field(0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    compile: bool = False
    # Checkpoints (offsets are committed to Kafka only after the checkpoint that covers them)
    checkpoint_dir: str | None = None
    """Empty: ``<store>/checkpoints``. Set ``checkpoint_every_steps = 0`` to turn them off."""
    checkpoint_every_steps: int = Field(100, ge=0)
    checkpoint_keep: int = Field(3, ge=1)
    checkpoint_every_s: float = Field(60.0, gt=0)
    """Also checkpoint (and so commit) once applied work is this old without a checkpoint."""
    shutdown_timeout_s: float = Field(30.0, gt=0)
    """SIGTERM/SIGINT: batches not started by then are given up (read again after a restart)."""
    # Model store
    store: str = "./feedstep-store"
    """Directory of the versioned model store; ``run`` starts from its LIVE version."""
    # Monitoring
    prequential_window: int = Field(1000, ge=1)
    metrics_port: int = Field(9108, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    # Promotion gate, drift, publishing
    publish: bool = True
    """False: decisions are computed and exported but nothing is promoted or published."""
    gate_min_events: int = Field(2000, ge=1)
    gate_min_effect: float = Field(0.0, ge=0)
    gate_alpha: float = Field(0.05, gt=0, lt=1)
    holdout_file: str | None = None
    holdout_every_steps: int = Field(50, ge=1)
    holdout_tolerance: float = Field(0.0, ge=0)
    drift_detector: Literal["adwin", "page_hinkley", "kswin", "ddm", "fhddm"] = "adwin"
    drift_quiet_events: int = Field(1000, ge=0)
    max_param_distance: float = Field(float("inf"), gt=0)
    prometheus_url: str | None = None
    promql_checks: list[dict[str, str]] = Field(default_factory=list)
    """Each ``{name, query, condition}``, e.g. ``{condition = "< 0.05"}``; config file only."""
    rollback_alpha: float = Field(0.01, gt=0, lt=1)
    rollback_watch_events: int = Field(50_000, ge=2)
    updates_topic: str = "feedstep.model-updates"
    webhook_url: str | None = None
    # Ending a run (tests, replays)
    stop_after_events: int | None = Field(None, ge=1)
    stop_when_idle_s: float | None = Field(None, gt=0)
    log_every_s: float = Field(10.0, gt=0)

    @classmethod
    def settings_customise_sources(  # type: ignore[override]
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        **_others: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only explicit values: :func:`load_config` merges file, env and flags itself."""
        return (init_settings,)

    @model_validator(mode="after")
    def _cross_field(self) -> FeedstepConfig:
        if self.sasl_mechanism and self.security_protocol not in ("SASL_PLAINTEXT", "SASL_SSL"):
            raise ValueError(
                f"sasl_mechanism={self.sasl_mechanism!r} needs security_protocol SASL_PLAINTEXT "
                f"or SASL_SSL, but security_protocol={self.security_protocol!r}"
            )
        if self.objective == "kto" and self.batch_size < 4:
            raise ValueError(
                f"objective 'kto' estimates its reference point from mismatched pairs within a "
                f"batch and needs batch_size >= 4, but batch_size={self.batch_size}"
            )
        if self.max_poll_interval_ms <= self.session_timeout_ms // 3:
            raise ValueError(
                f"max_poll_interval_ms={self.max_poll_interval_ms} must exceed a third of "
                f"session_timeout_ms={self.session_timeout_ms}"
            )
        return self

    @property
    def dlq_topic(self) -> str:
        """The dead-letter topic: ``dead_letter_topic`` or ``<topic>.dlq``."""
        return self.dead_letter_topic or f"{self.topic}.dlq"


_FIELDS = frozenset(FeedstepConfig.model_fields)

_REMOVED = {
    "kafka_fetcher": "the consumer always runs in the sidecar's process",
    "fetcher_prefetch_polls": "there is no fetcher process any more",
    "kafka_record_reader": "kafka-python's own record reader is the only one",
    "predecode": "events are decoded once, by the pipeline",
}
"""Keys of earlier versions, refused with what became of them (not silently ignored)."""


def _check_key(key: str, where: str) -> None:
    if key in _REMOVED:
        raise ConfigError(
            f"{where}: {key!r} was removed ({_REMOVED[key]}); delete it from your configuration"
        )
    if key not in _FIELDS:
        raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(_FIELDS))}")


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file into a flat dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass an existing TOML/YAML file")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {str(p)!r} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {str(p)!r} does not parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(p)!r} must hold a table of keys, got {type(data).__name__}"
        )
    if isinstance(data.get("feedstep"), dict) and len(data) == 1:
        data = data["feedstep"]  # allow a [feedstep] table
    for key in data:
        _check_key(key, f"config file {str(p)!r}")
    return dict(data)


def _env_values(environ: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in _REMOVED:
            _check_key(key, f"environment variable {name}")
        if key not in _FIELDS:
            raise ConfigError(
                f"unknown environment variable {name}; feedstep reads FEEDSTEP_<KEY> for the keys "
                f"{', '.join(sorted(_FIELDS))} - unset it or fix the spelling"
            )
        values[key] = value
    return values


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> FeedstepConfig:
    """Build the configuration: defaults < file < ``FEEDSTEP_*`` env < ``overrides``.

    ``path`` defaults to ``$FEEDSTEP_CONFIG`` when set. ``None`` values in ``overrides`` mean
    "not given" (an unset command-line flag).
    """
    env = os.environ if environ is None else environ
    path = path or env.get(CONFIG_ENV)
    merged: dict[str, Any] = read_config_file(path) if path else {}
    merged.update(_env_values(env))
    for key, value in (overrides or {}).items():
        _check_key(key, "setting")
        if value is not None:
            merged[key] = value
    try:
        return FeedstepConfig(**merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or 'config'}: {err['msg']}"
            + ("" if "password" in str(err["loc"]) else f" (got {err.get('input')!r})")
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration - {problems}") from exc
