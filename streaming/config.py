"""Typed, frozen configuration in sections, validated once at start.

Values come from, in rising precedence: defaults, one config file (TOML or YAML), ``FEEDSTEP_*``
environment variables, command-line flags. An unknown key in any of them is an error that
names the key and where it came from.

The configuration is a set of sections, each handed whole to the part that owns it:
``kafka`` (the consumer and producers), ``ingest`` (limits, de-duplication, pair mining, batching),
``learner`` (model and objective), ``step`` (the one-step update, as
:class:`learner.step.StepConfig`), ``checkpoints``, ``gate`` (as :class:`monitors.gate.GateConfig`),
``rollback``, ``promotion`` (store, publishing, holdout, probe, drift), ``metrics``, ``score`` (the
limits of ``POST /v1/score``), ``follow`` (how ``feedstep serve`` follows the store) and
``run``. Every setting also has a flat name, unique over all sections — ``batch_size``,
``gate_min_events``, ``checkpoint_every_steps`` — which is what ``FEEDSTEP_<NAME>`` variables,
command-line flags and flat config files use (:data:`FLAT_KEYS`). A file may use either form::

    batch_size = 32                 # flat
    [gate]
    min_events = 500                # the same as gate_min_events = 500

Example:
    >>> cfg = load_config(overrides={"batch_size": 8, "gate_min_events": 50}, environ={})
    >>> cfg.ingest.batch_size, cfg.gate.min_events, cfg.kafka.dlq_topic
    (8, 50, 'feedback.dlq')
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import tomllib
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from streaming.errors import ConfigError

ENV_PREFIX = "FEEDSTEP_"
CONFIG_ENV = "FEEDSTEP_CONFIG"
_CAUSAL_LM = ("kto", "dpo", "sft")
"""The causal-LM objectives (``learner.objectives.CAUSAL_LM``; not imported: it loads torch)."""
_SECRETS = frozenset({"sasl_plain_password", "vllm_api_key"})
"""Flat names whose values are never echoed: left out of :meth:`FeedstepConfig.flat` and of
error messages."""


def mining_refusal(objective: str, mining: str) -> str | None:
    """Why pair mining ``mining`` cannot train objective ``objective``; None when it can.

    The configuration and the :class:`~streaming.ingest.ingestor.Ingestor` both ask it. ``reward``
    takes every mode (Bradley-Terry on the pairs), ``dpo`` takes ``replace`` (DPO on the pairs;
    a thumb alone teaches it nothing), ``kto`` and ``sft`` none.

    Example:
        >>> mining_refusal("dpo", "replace") is None, mining_refusal("reward", "add") is None
        (True, True)
        >>> print(mining_refusal("kto", "off"))
        None
    """
    if mining == "off" or objective not in _CAUSAL_LM:
        return None
    if objective == "dpo":
        if mining == "replace":
            return None
        return (
            f"mining={mining!r} trains mined pairs besides each thumb's own pointwise example, "
            f"but objective={objective!r} has no pointwise loss for a thumb, so there is "
            'nothing to add to; set mining = "replace" (thumbs and ratings then train dpo in '
            'their mined pairs), or objective = "kto" to learn from unpaired thumbs'
        )
    why = {
        "kto": "learns from unpaired thumbs and refuses preference pairs",
        "sft": "imitates preferred text: a mined pair's chosen reply is a thumb up it already "
        "trains on, and its rejected reply is ignored",
    }[objective]
    return (
        f"mining={mining!r} turns thumbs into preference pairs, but objective={objective!r} "
        f'{why}; set mining = "off", or objective = "dpo" with mining = "replace" to train on '
        "mined pairs"
    )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaConfig(_Section):
    """The broker, the feedback topic and the consumer group."""

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
    max_poll_records: int = Field(default=500, ge=1)
    session_timeout_ms: int = Field(default=45_000, ge=1000)
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    reconnect_backoff_max_ms: int = Field(default=10_000, ge=100)
    """Cap of the client's exponential reconnect backoff while the broker is unreachable."""
    bootstrap_timeout_ms: int = Field(default=30_000, ge=100)
    """How long a client waits at start for any bootstrap server to answer before giving up."""

    @property
    def dlq_topic(self) -> str:
        """The dead-letter topic: ``dead_letter_topic`` or ``<topic>.dlq``."""
        return self.dead_letter_topic or f"{self.topic}.dlq"

    @model_validator(mode="after")
    def _cross_field(self) -> KafkaConfig:
        if self.sasl_mechanism and self.security_protocol not in ("SASL_PLAINTEXT", "SASL_SSL"):
            raise ValueError(
                f"sasl_mechanism={self.sasl_mechanism!r} needs security_protocol SASL_PLAINTEXT "
                f"or SASL_SSL, but security_protocol={self.security_protocol!r}"
            )
        if self.max_poll_interval_ms <= self.session_timeout_ms // 3:
            raise ValueError(
                f"max_poll_interval_ms={self.max_poll_interval_ms} must exceed a third of "
                f"session_timeout_ms={self.session_timeout_ms}"
            )
        return self


class IngestConfig(_Section):
    """Input limits, de-duplication and micro-batching."""

    max_text_chars: int = Field(default=8192, ge=1)
    max_event_bytes: int = Field(default=1_048_576, ge=64)
    dedup_window: int = Field(default=100_000, ge=1)
    dedup_prime_records: int = Field(default=1000, ge=0)
    """Records read back per partition taken over from another member, to know its recent ids."""
    batch_size: int = Field(default=16, ge=1)
    max_wait_ms: int = Field(default=1000, ge=0)
    mining: Literal["off", "add", "replace"] = "off"
    """Pair thumbs/ratings on the same prompt with opposite signals into preference examples
    (:mod:`streaming.ingest.mining`): ``add`` trains the pair besides both pointwise examples,
    ``replace`` instead of both (a pairable event is scored on arrival but trains only in its
    pair, or pointwise once it leaves the buffer unpaired). ``reward`` takes both; ``dpo`` takes
    ``replace`` only (a thumb trains only in its pair; unpaired, it teaches nothing); ``kto`` and
    ``sft`` none (:func:`mining_refusal`)."""
    mining_window_events: int = Field(default=10_000, ge=1)
    """The two halves of a pair are at most this many accepted events apart (per partition)."""
    mining_window_s: float = Field(default=3600.0, gt=0)
    """... and at most this many seconds apart by their ``ts``."""
    mining_min_rating_gap: int = Field(default=2, ge=1, le=4)
    """Ratings pair when they differ by at least this much; a thumb counts as 5 (up) or 1."""
    mining_max_pending: int = Field(default=10_000, ge=1)
    """Unpaired events remembered per partition; the oldest is evicted beyond it."""


class LearnerConfig(_Section):
    """The model, the objective and where it runs."""

    model: str = "minilm"
    objective: Literal["reward", "kto", "dpo", "sft"] = "reward"
    beta: float = Field(default=0.1, gt=0)
    """kto/dpo: strength of the pull toward the reference (the frozen baseline)."""
    kto_desirable_weight: float = Field(default=1.0, gt=0)
    kto_undesirable_weight: float = Field(default=1.0, gt=0)
    device: str = "auto"
    seed: int = 0
    max_length: int = Field(default=256, ge=8)
    reward_reference: Literal["none", "live", "mean"] = "none"
    """reward: the pointwise BCE logit is the reward (``none``), minus the frozen live model's
    reward on the same example (``live``), or minus a running mean of the model's rewards
    (``mean``, as in BCO); see :mod:`learner.objectives.reward`."""
    reward_reference_decay: float = Field(default=0.99, ge=0, lt=1)
    """``mean``: decay of the running mean per step."""
    reward_center: float = Field(default=0.0, ge=0)
    """reward: each preference pair adds ``reward_center · (r_chosen + r_rejected)²`` to its
    loss (reward centering, arXiv 2312.09244), which keeps rewards comparable across prompts,
    versions and the two times a mined pair's halves were scored; 0 turns it off."""


class StepSection(_Section):
    """The one-step update; the fields of :class:`learner.step.StepConfig`."""

    lr: float = Field(default=2e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    l2sp_weight: float = Field(default=0.01, ge=0)
    max_grad_norm: float = Field(default=1.0, ge=0)
    trainable: Literal["full", "head", "bias", "lora"] = "full"
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    lora_target_modules: tuple[str, ...] = ()
    ewc_weight: float = Field(default=0.0, ge=0)
    ewc_decay: float = Field(default=0.99, gt=0, lt=1)
    max_update_norm: float = Field(default=0.0, ge=0)
    """Trust region: cap on the norm of one step's weight change (0 = off)."""
    warmup_steps: int = Field(default=0, ge=0)
    cosine_decay_steps: int = Field(default=0, ge=0)
    min_lr: float = Field(default=0.0, ge=0)
    compile: bool = False
    ema_decay: float = Field(default=0.0, ge=0, lt=1)
    """Weight averaging: the candidate that is scored, gated and published is the moving average
    ``θ̄ ← d·θ̄ + (1-d)·θ`` of the trained weights (0 = off; one more forward per step)."""


class CheckpointConfig(_Section):
    """Checkpoints; offsets are committed to Kafka only after the checkpoint that covers them."""

    dir: str | None = None
    """Empty: ``<store>/checkpoints``. Set ``every_steps = 0`` to turn them off."""
    every_steps: int = Field(default=100, ge=0)
    keep: int = Field(default=3, ge=1)
    every_s: float = Field(default=60.0, gt=0)
    """Also checkpoint (and so commit) once applied work is this old without a checkpoint."""


class GateSection(_Section):
    """The promotion gate; the fields of :class:`monitors.gate.GateConfig` (PromQL as dicts)."""

    min_events: int = Field(default=2000, ge=1)
    min_effect: float = Field(default=0.0, ge=0)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    holdout_tolerance: float = Field(default=0.0, ge=0)
    drift_quiet_events: int = Field(default=1000, ge=0)
    max_param_distance: float = Field(default=float("inf"), gt=0)
    max_probe_kl: float = Field(default=float("inf"), gt=0)
    """Cap on KL(candidate || live) over ``probe_file``, in nats (per token for causal LMs).
    inf: no cap, but with a probe file a promotion still waits for a measurement."""
    prometheus_url: str | None = None
    promql_checks: list[dict[str, str]] = Field(default_factory=list)
    """Each ``{name, query, condition}``, e.g. ``{condition = "< 0.05"}``; config file only."""


class RollbackSection(_Section):
    """The rollback watch after a promotion (:class:`monitors.rollback.RollbackConfig`)."""

    alpha: float = Field(default=0.01, gt=0, lt=1)
    watch_events: int = Field(default=50_000, ge=2)


class PromotionConfig(_Section):
    """The model store, publishing and its announcements, the holdout and probe sets, drift."""

    store: str = "./feedstep-store"
    """Directory of the versioned model store; ``run`` starts from its LIVE version."""
    publish: bool = True
    """False: decisions are computed and exported but nothing is promoted or published."""
    updates_topic: str = "feedstep.model-updates"
    webhook_url: str | None = None
    """POST every model-updates message here too (off the training thread, retried)."""
    holdout_file: str | None = None
    holdout_every_steps: int = Field(default=50, ge=1)
    probe_file: str | None = None
    """JSONL of ``{"prompt": ..., "response": ...}`` lines (response optional for causal LMs;
    the first 256 are used): KL(candidate || live) over them is measured every
    ``probe_every_steps`` steps, exported as ``feedstep_probe_kl`` and gated by ``max_probe_kl``.
    Unset: the ``probe_kl`` check is off."""
    probe_every_steps: int = Field(default=50, ge=1)
    """Measure the probe every N steps: two forwards of the probe set each time."""
    drift_detector: Literal["adwin", "page_hinkley", "kswin", "ddm", "fhddm"] = "adwin"
    vllm_url: str | None = None
    """A vLLM server's base URL (``http://vllm:8000``, no ``/v1``): at every switch of LIVE its
    ``/v1/load_lora_adapter`` loads the LIVE version's adapter in place. Needs
    ``trainable = "lora"``, a causal-LM objective and vLLM run with
    ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``."""
    vllm_adapter_name: str = Field(default="feedstep", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """The adapter's name in vLLM: the ``model`` chat requests ask vLLM for."""
    vllm_api_key: SecretStr | None = None
    """vLLM's ``--api-key``, sent as ``Authorization: Bearer``; a secret, never logged."""
    notify_timeout_s: float = Field(default=5.0, gt=0)
    """One webhook or vLLM attempt's timeout; at shutdown, how long waiting ones still get."""
    notify_backoff_max_s: float = Field(default=60.0, ge=1)
    """Failed notifications are retried after 1 s, doubling up to this cap."""

    @model_validator(mode="after")
    def _urls(self) -> PromotionConfig:
        examples = {"webhook_url": "http://hooks:8080/feedstep", "vllm_url": "http://vllm:8000"}
        for key, example in examples.items():
            url = getattr(self, key)
            if url is None:
                continue
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(
                    f"{key}={url!r} must be an http:// or https:// URL with a host, e.g. {example}"
                )
        if self.vllm_url is not None and urlsplit(self.vllm_url).path.rstrip("/").endswith("/v1"):
            raise ValueError(
                f"vllm_url={self.vllm_url!r} ends in /v1; give the server's base URL "
                f"({self.vllm_url.rstrip('/')[:-3]!r}): feedstep appends /v1/load_lora_adapter"
            )
        return self


class MetricsConfig(_Section):
    """The windowed metrics and the HTTP port of /metrics, /healthz and /readyz."""

    prequential_window: int = Field(default=1000, ge=1)
    port: int = Field(default=9108, ge=0, le=65535)
    host: str = "0.0.0.0"


class ScoreConfig(_Section):
    """Limits of ``POST /v1/score`` on the metrics port (rewards of the LIVE model)."""

    max_responses: int = Field(default=64, ge=1)
    """Responses per request, over all items of a batch request."""
    max_text_chars: int = Field(default=8192, ge=1)
    """Characters per prompt or response (ingest's ``max_text_chars`` default); longer → 400."""
    max_body_bytes: int = Field(default=1_048_576, ge=64)
    """A longer request body is refused with 413 before it is read."""


class FollowConfig(_Section):
    """``feedstep serve``: how a follower notices that the store's LIVE version changed."""

    poll_s: float = Field(default=2.0, gt=0)
    """Read the store's LIVE file this often; a model-updates message makes it read at once."""
    updates: bool = True
    """Also tail ``updates_topic`` (group-less, from its end). False: poll LIVE only, no Kafka."""


class RunConfig(_Section):
    """Ending a run (tests, replays), progress and shutdown."""

    stop_after_events: int | None = Field(default=None, ge=1)
    stop_when_idle_s: float | None = Field(default=None, gt=0)
    log_every_s: float = Field(default=10.0, gt=0)
    shutdown_timeout_s: float = Field(default=30.0, gt=0)
    """SIGTERM/SIGINT: batches not started by then are given up (read again after a restart)."""


class FeedstepConfig(BaseSettings):
    """Every setting of the sidecar, in sections. Units are in the names."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    kafka: KafkaConfig = KafkaConfig()
    ingest: IngestConfig = IngestConfig()
    learner: LearnerConfig = LearnerConfig()
    step: StepSection = StepSection()
    checkpoints: CheckpointConfig = CheckpointConfig()
    gate: GateSection = GateSection()
    rollback: RollbackSection = RollbackSection()
    promotion: PromotionConfig = PromotionConfig()
    metrics: MetricsConfig = MetricsConfig()
    score: ScoreConfig = ScoreConfig()
    follow: FollowConfig = FollowConfig()
    run: RunConfig = RunConfig()

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
    def _cross_section(self) -> FeedstepConfig:
        if self.learner.objective != "reward" and self.learner.reward_reference != "none":
            raise ValueError(
                f"reward_reference={self.learner.reward_reference!r} works with objective "
                f"'reward' only, but objective={self.learner.objective!r}; set "
                'reward_reference = "none", or objective = "reward"'
            )
        problem = mining_refusal(self.learner.objective, self.ingest.mining)
        if problem is not None:
            raise ValueError(problem)
        if self.learner.objective != "reward" and self.learner.reward_center != 0.0:
            raise ValueError(
                f"reward_center={self.learner.reward_center} centres a reward model's pairs, "
                f"but objective={self.learner.objective!r}; set reward_center = 0 or "
                'objective = "reward"'
            )
        if self.learner.objective == "kto" and self.ingest.batch_size < 4:
            raise ValueError(
                f"objective 'kto' estimates its reference point from mismatched pairs within a "
                f"batch and needs batch_size >= 4, but batch_size={self.ingest.batch_size}"
            )
        if self.promotion.vllm_url is not None and (
            self.step.trainable != "lora" or self.learner.objective not in _CAUSAL_LM
        ):
            raise ValueError(
                f"vllm_url={self.promotion.vllm_url!r} hot-loads LoRA adapters into vLLM, so it "
                f"needs trainable='lora' and a causal-LM objective ({', '.join(_CAUSAL_LM)}), "
                f"but trainable={self.step.trainable!r} and "
                f'objective={self.learner.objective!r}; set trainable = "lora" and objective '
                '= "kto", "dpo" or "sft" with a causal LM (model = "smollm2" or a folder), '
                "or unset vllm_url"
            )
        return self

    def given(self) -> set[str]:
        """Flat names of the settings given explicitly (file, environment or overrides)."""
        return {
            key
            for key, (section, name) in FLAT_KEYS.items()
            if name in getattr(self, section).model_fields_set
        }

    def flat(self) -> dict[str, Any]:
        """Every setting under its flat name (JSON-ready; secrets left out)."""
        dumped = self.model_dump(mode="json")
        return {
            key: dumped[section][name]
            for key, (section, name) in FLAT_KEYS.items()
            if key not in _SECRETS
        }


_RENAMED = {
    ("checkpoints", "dir"): "checkpoint_dir",
    ("checkpoints", "every_steps"): "checkpoint_every_steps",
    ("checkpoints", "keep"): "checkpoint_keep",
    ("checkpoints", "every_s"): "checkpoint_every_s",
    ("gate", "min_events"): "gate_min_events",
    ("gate", "min_effect"): "gate_min_effect",
    ("gate", "alpha"): "gate_alpha",
    ("rollback", "alpha"): "rollback_alpha",
    ("rollback", "watch_events"): "rollback_watch_events",
    ("metrics", "port"): "metrics_port",
    ("metrics", "host"): "metrics_host",
    ("score", "max_responses"): "score_max_responses",
    ("score", "max_text_chars"): "score_max_text_chars",
    ("score", "max_body_bytes"): "score_max_body_bytes",
    ("follow", "poll_s"): "follow_poll_s",
    ("follow", "updates"): "follow_updates",
}

FLAT_KEYS: dict[str, tuple[str, str]] = {
    _RENAMED.get((section, name), name): (section, name)
    for section, info in FeedstepConfig.model_fields.items()
    for name in info.annotation.model_fields  # type: ignore[union-attr]
}
"""Flat name of every setting → (section, field); flat names are unique over all sections."""

_SECTIONS = frozenset(FeedstepConfig.model_fields)

_REMOVED = {
    "kafka_fetcher": "the consumer always runs in the sidecar's process",
    "fetcher_prefetch_polls": "there is no fetcher process any more",
    "kafka_record_reader": "kafka-python's own record reader is the only one",
    "predecode": "events are decoded once, by the pipeline",
}
"""Keys of earlier versions, refused with what became of them (not silently ignored)."""


def _check_key(key: str, where: str) -> tuple[str, str]:
    if key in _REMOVED:
        raise ConfigError(
            f"{where}: {key!r} was removed ({_REMOVED[key]}); delete it from your configuration"
        )
    if key not in FLAT_KEYS:
        raise ConfigError(
            f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(FLAT_KEYS))}"
        )
    return FLAT_KEYS[key]


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file into flat settings.

    Top-level keys are flat names; a table named like a section (``[gate]``) holds that
    section's fields. A single ``[feedstep]`` table around everything is allowed.
    """
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
    where = f"config file {str(p)!r}"
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS and isinstance(value, dict):
            fields = {name: flat_key for flat_key, (s, name) in FLAT_KEYS.items() if s == key}
            for name, inner in value.items():
                if name not in fields:
                    raise ConfigError(
                        f"{where}: unknown key {name!r} in section [{key}]; its keys: "
                        f"{', '.join(sorted(fields))}"
                    )
                flat[fields[name]] = inner
        else:
            _check_key(key, where)
            flat[key] = value
    return flat


# What Kubernetes injects for every Service of the namespace (service links): a Service named
# "feedstep" or "feedstep-..." gives FEEDSTEP_SERVICE_HOST, FEEDSTEP_SERVICE_PORT[_<NAME>],
# FEEDSTEP_PORT, FEEDSTEP_PORT_9108_TCP[_PROTO|_PORT|_ADDR], FEEDSTEP_X_SERVICE_HOST, ...
_SERVICE_LINK = re.compile(
    r"FEEDSTEP_(?:[A-Z0-9_]+_)?(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?"
    r"|PORT(?:_[0-9]+_(?:TCP|UDP|SCTP)(?:_PROTO|_PORT|_ADDR)?)?)"
)
_SERVICE_LINK_VALUE = re.compile(r"(?:tcp|udp|sctp)://\S+")


def _env_values(environ: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in _REMOVED:
            _check_key(key, f"environment variable {name}")
        if key in FLAT_KEYS and _SERVICE_LINK_VALUE.fullmatch(value):
            raise ConfigError(
                f"environment variable {name}={value!r} looks like a Kubernetes service link "
                f"(a Service named like feedstep-{key.rsplit('_', 1)[0].replace('_', '-')}), "
                f"not a value for {key!r}; set enableServiceLinks: false in the pod spec or "
                "rename the Service"
            )
        if key not in FLAT_KEYS and _SERVICE_LINK.fullmatch(name):
            continue  # injected by Kubernetes for a Service, not meant for feedstep
        if key not in FLAT_KEYS:
            raise ConfigError(
                f"unknown environment variable {name}; feedstep reads FEEDSTEP_<KEY> for the keys "
                f"{', '.join(sorted(FLAT_KEYS))} - unset it or fix the spelling"
            )
        values[key] = value
    return values


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> FeedstepConfig:
    """Build the configuration: defaults < file < ``FEEDSTEP_*`` env < ``overrides``.

    ``path`` defaults to ``$FEEDSTEP_CONFIG`` when set. ``overrides`` use flat names; ``None``
    values in them mean "not given" (an unset command-line flag).
    """
    env = os.environ if environ is None else environ
    path = path or env.get(CONFIG_ENV)
    merged: dict[str, Any] = read_config_file(path) if path else {}
    merged.update(_env_values(env))
    for key, value in (overrides or {}).items():
        _check_key(key, "setting")
        if value is not None:
            merged[key] = value
    nested: dict[str, dict[str, Any]] = {}
    for key, value in merged.items():
        section, name = FLAT_KEYS[key]
        nested.setdefault(section, {})[name] = value
    try:
        return FeedstepConfig.model_validate(nested)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration - {_problems(exc)}") from exc


def _problems(exc: ValidationError) -> str:
    flat_name = {where: key for key, where in FLAT_KEYS.items()}
    out = []
    for err in exc.errors():
        loc = tuple(str(x) for x in err["loc"])
        name = flat_name.get((loc[0], loc[1])) if len(loc) >= 2 else None
        where = name or ".".join(loc) or "config"
        secret = any(key in where for key in _SECRETS)
        shown = "" if secret else f" (got {err.get('input')!r})"
        if name is None and len(loc) <= 1:
            shown = ""  # a rule across fields: the message names both values
        out.append(f"{where}: {err['msg']}{shown}")
    return "; ".join(out)


def flat_default(key: str) -> Any:
    """The default of the setting with flat name ``key``.

    Example:
        >>> flat_default("gate_min_events"), flat_default("batch_size")
        (2000, 16)
    """
    section, name = _check_key(key, "setting")
    model = FeedstepConfig.model_fields[section].annotation
    return model.model_fields[name].default  # type: ignore[union-attr]
