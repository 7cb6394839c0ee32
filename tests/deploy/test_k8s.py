"""deploy/k8s: every overlay renders with kustomize, validates, and is what feedstep expects.

``kubectl kustomize`` (offline; ``KUBECTL`` names another binary, a standalone ``kustomize`` on
PATH also works) renders each overlay with kustomize's default load restrictions, so
``kubectl apply -k`` works as written. The rendered objects validate strictly (unknown fields
are errors) with the PyPI package ``kubernetes-validate`` against Kubernetes 1.29 (native
sidecars) and the newest version it knows; it has no schema for the Prometheus Operator's
PodMonitor and PrometheusRule, which are checked by hand here. The rest checks what a schema
cannot: the native sidecar, the lockstep StatefulSet's torchrun line (parsed by torch's own
launcher and feedstep's CLI) and its headless Service, the probes and the port against
feedstep's own defaults, the grace period against shutdown_timeout_s, the security context
against the image's user, the configuration loaded by feedstep's own loader, and the
monitoring copies in sync with deploy/prometheus and deploy/grafana. In CI (``CI`` set) a
missing kubectl or kubernetes-validate fails these tests.
"""

from __future__ import annotations

import base64
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
from typing import Any

import pytest
import yaml

from streaming.config import flat_default, load_config

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ["sidecar", "trainer", "trainer-gpu", "trainer-lockstep"]
VERSIONS = ["1.29", "latest"]
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
LOCKSTEP = "trainer-lockstep"
RENDEZVOUS_PORT = 29400
METRICS_PORT = flat_default("metrics_port")
SHUTDOWN_TIMEOUT_S = flat_default("shutdown_timeout_s")


def _missing(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@functools.cache
def _render_command() -> list[str] | None:
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not kubectl and Path("/usr/bin/kubectl").is_file():
        kubectl = "/usr/bin/kubectl"
    if kubectl:
        return [kubectl, "kustomize"]
    go_bin = Path(os.environ.get("GOPATH", Path.home() / "go")) / "bin"
    kustomize = shutil.which("kustomize") or shutil.which("kustomize", path=str(go_bin))
    return [kustomize, "build"] if kustomize else None


@functools.cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    command = _render_command()
    assert command is not None
    result = subprocess.run(
        [*command, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kustomize overlays/{overlay}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.fixture(params=OVERLAYS)
def overlay(request) -> str:
    return request.param


@pytest.fixture()
def docs(overlay) -> tuple[dict[str, Any], ...]:
    if _render_command() is None:
        _missing("kubectl not found (nor kustomize): deploy/README.md says how to get one")
    return _render(overlay)


@pytest.fixture()
def kv():
    try:
        import kubernetes_validate
    except ImportError:
        _missing('kubernetes-validate not installed: python3 -m pip install ".[dev]"')
    return kubernetes_validate


def one(docs, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workload(docs) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    return found


def pod_spec(docs) -> dict[str, Any]:
    return workload(docs)["spec"]["template"]["spec"]


def feedstep_container(docs) -> dict[str, Any]:
    spec = pod_spec(docs)
    found = [
        c for c in spec.get("containers", []) + spec.get("initContainers", [])
        if c["name"] == "feedstep"
    ]  # fmt: skip
    assert len(found) == 1, "one container named feedstep per pod"
    return found[0]


def env_of(container) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def shutdown_timeout_s(container) -> float:
    value = env_of(container).get("FEEDSTEP_SHUTDOWN_TIMEOUT_S", {}).get("value")
    return float(value) if value is not None else SHUTDOWN_TIMEOUT_S


def dockerfile_env(flavour: str) -> dict[str, str]:
    """ENV of a Dockerfile, KEY=value pairs only (what the images set)."""
    text = (REPO / "deploy" / "docker" / f"Dockerfile.{flavour}").read_text()
    env: dict[str, str] = {}
    for chunk in text.replace("\\\n", " ").splitlines():
        if chunk.startswith("ENV "):
            for pair in chunk[4:].split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def dockerfile_user(flavour: str) -> int:
    text = (REPO / "deploy" / "docker" / f"Dockerfile.{flavour}").read_text()
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    return int(users[-1].split(":")[0])


def flavour_of(container) -> str:
    return "cuda" if "cuda" in container["image"] else "cpu"


@functools.cache
def sync_module():
    spec = importlib.util.spec_from_file_location("sync_monitoring", K8S / "sync_monitoring.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sync_monitoring"] = module  # doctest finds the examples through it
    spec.loader.exec_module(module)
    return module


# --- rendering and schema ---------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_rendered_objects_validate_strictly(docs, kv, version):
    version = kv.latest_version() if version == "latest" else version
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            # The validator has no schema for CRDs; make sure that is all it says.
            with pytest.raises(kv.utils.SchemaNotFoundError):
                kv.validate(doc, version, strict=True)
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} against {version}: {exc}")
    assert {"ConfigMap", "Secret", "Service", "PodMonitor", "PrometheusRule"} <= kinds


def test_strict_validation_rejects_an_unknown_field(kv):
    if _render_command() is None:
        _missing("kubectl not found (nor kustomize)")
    broken = copy.deepcopy(workload(_render("sidecar")))
    broken["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, "1.29", strict=True)


def test_every_overlay_renders_without_relaxed_load_restrictions(docs):
    # Reaching files outside a kustomization needs --load-restrictor LoadRestrictionsNone,
    # which `kubectl apply -k` does not take; the renders above used the defaults.
    assert "--load-restrictor" not in (_render_command() or [])
    assert len(docs) == len({(d["kind"], d["metadata"]["name"]) for d in docs})


# --- the topologies -------------------------------------------------------------------


def test_sidecar_is_a_native_sidecar_beside_the_placeholder_chat_service():
    if _render_command() is None:
        _missing("kubectl not found (nor kustomize)")
    docs = _render("sidecar")
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (init,) = [c for c in spec["initContainers"] if c["name"] == "feedstep"]
    assert init["restartPolicy"] == "Always", "a native sidecar (Kubernetes >= 1.29)"
    assert [c["image"] for c in spec["containers"]] == ["example.com/chat-service:latest"]
    # One learner: more replicas would train different models; Recreate never runs two.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("overlay_name", ["trainer", "trainer-gpu"])
def test_trainer_keeps_store_and_checkpoints_on_a_persistent_volume(overlay_name):
    if _render_command() is None:
        _missing("kubectl not found (nor kustomize)")
    docs = _render(overlay_name)
    statefulset = one(docs, "StatefulSet")
    assert statefulset["spec"]["replicas"] == 1, "one trainer per model"
    assert statefulset["spec"]["serviceName"] == one(docs, "Service")["metadata"]["name"]
    claims = {t["metadata"]["name"] for t in statefulset["spec"]["volumeClaimTemplates"]}
    container = feedstep_container(docs)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/data"] in claims, "/data is the PersistentVolumeClaim"
    env = env_of(container)
    assert env["FEEDSTEP_STORE"]["value"] == "/data/store"
    assert env["FEEDSTEP_CHECKPOINT_DIR"]["value"].startswith("/data/")
    assert "initContainers" not in statefulset["spec"]["template"]["spec"]


# torchrun's agent gives a worker this long after it forwards SIGTERM, then kills it.
TORCHRUN_SHUTDOWN_S = 30


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes's ``$(VAR)`` expansion in command and args (the overlay uses no ``$$``)."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], text)


def test_lockstep_ranks_rendezvous_through_the_headless_service_of_pod_0():
    if _render_command() is None:
        _missing("kubectl not found (nor kustomize)")
    from torch.distributed.run import parse_args as torchrun_args

    from streaming.cli.parser import build_parser
    from streaming.cli.run import cmd_run

    docs = _render(LOCKSTEP)
    statefulset = one(docs, "StatefulSet")
    spec, name = statefulset["spec"], statefulset["metadata"]["name"]
    replicas, service_name = spec["replicas"], spec["serviceName"]
    assert replicas >= 2, "several ranks"
    # No pod gets ready before every rank has joined: OrderedReady would wait on pod 0.
    assert spec["podManagementPolicy"] == "Parallel"

    # torchrun (on the image's PATH), or the image's python -m torch.distributed.run.
    container = feedstep_container(docs)
    argv = [*container["command"], *container["args"]]
    if argv[0] == "torchrun":
        path = dockerfile_env(flavour_of(container))["PATH"].split(":")
        assert "/opt/feedstep/bin" in path, "torchrun comes with torch into the image's venv"
        argv = argv[1:]
    else:
        assert argv[:3] == ["python", "-m", "torch.distributed.run"], argv
        argv = argv[3:]
    env = env_of(container)
    for ref in re.findall(r"\$\((\w+)\)", " ".join(argv)):
        assert ref in env, f"$({ref}) names no variable of the container"
    values = {"POD_NAME": f"{name}-1", "FEEDSTEP_CONFIG": env["FEEDSTEP_CONFIG"]["value"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    launch = torchrun_args([expand(a, values) for a in argv])  # torch's own parser

    assert launch.nnodes in (str(replicas), f"{replicas}:{replicas}"), "nnodes = replicas"
    assert launch.nproc_per_node == "1", "one rank per pod: LOCAL_RANK 0, metrics port 9108"
    assert launch.rdzv_backend == "c10d"
    host, _, port = launch.rdzv_endpoint.rpartition(":")
    assert host == f"{name}-0.{service_name}", "the rendezvous is on pod 0's stable name"
    assert int(port) == RENDEZVOUS_PORT
    assert launch.rdzv_id and launch.rdzv_id != "none", "one id for the whole group"
    assert launch.max_restarts >= 1, "a killed rank restarts the group"
    # This pod's own stable name: what the others connect to, and the order of the ranks.
    assert launch.local_addr == f"{name}-1.{service_name}"
    assert launch.module and launch.training_script == "streaming.cli"
    assert not launch.standalone and not launch.no_python

    # The worker: `feedstep run --distributed` with the ConfigMap's file.
    worker = build_parser().parse_args(launch.training_script_args)
    assert worker.func is cmd_run and worker.distributed is True
    assert worker.config == env["FEEDSTEP_CONFIG"]["value"]

    # What a lockstep run needs of the configuration, and a stop within torchrun's grace.
    config = rendered_config(docs, container)
    assert config.checkpoints.every_steps > 0, "a lockstep run needs checkpoints"
    assert config.ingest.mining == "off", "a lockstep run needs mining off"
    assert shutdown_timeout_s(container) < TORCHRUN_SHUTDOWN_S
    assert pod_spec(docs)["terminationGracePeriodSeconds"] > TORCHRUN_SHUTDOWN_S

    # The headless Service: a DNS name per pod, published before the pods are ready.
    headless = one(docs, "Service", service_name)
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    labels = spec["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= labels.items()
    assert headless["spec"]["selector"] == spec["selector"]["matchLabels"]
    (rendezvous,) = headless["spec"]["ports"]
    assert rendezvous["port"] == RENDEZVOUS_PORT
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert rendezvous["targetPort"] in ("rendezvous", RENDEZVOUS_PORT)
    assert ports["rendezvous"] == RENDEZVOUS_PORT

    # Every pod has the store and checkpoint claim (whichever is rank 0 writes it).
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/data"] in claims
    assert env["FEEDSTEP_STORE"]["value"] == "/data/store"
    assert env["FEEDSTEP_CHECKPOINT_DIR"]["value"].startswith("/data/")


def test_only_the_gpu_trainer_asks_for_a_gpu_and_runs_the_cuda_image(overlay, docs):
    container = feedstep_container(docs)
    limits = container["resources"]["limits"]
    if overlay == "trainer-gpu":
        assert int(limits["nvidia.com/gpu"]) == 1
        assert int(container["resources"]["requests"]["nvidia.com/gpu"]) == 1
        assert container["image"].endswith("-cuda")
        assert env_of(container)["FEEDSTEP_DEVICE"]["value"] == "cuda"
    else:
        assert "nvidia.com/gpu" not in limits
        assert container["image"].endswith("-cpu")


# --- probes, port, shutdown -------------------------------------------------------------


def test_probes_and_port_match_feedstep_defaults(overlay, docs):
    container = feedstep_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if overlay == LOCKSTEP:  # and torchrun's rendezvous (test_lockstep_...)
        assert ports.pop("rendezvous") == RENDEZVOUS_PORT
    assert ports == {"metrics": METRICS_PORT}
    config = rendered_config(docs, container)
    assert config.metrics.port == METRICS_PORT
    expected = {
        "startupProbe": "/healthz",
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
    }
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{probe} path"
        assert get["port"] in ("metrics", METRICS_PORT), f"{probe} port"
    startup = container["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget >= 120, f"the startup probe allows {budget} s for the model load"


def test_grace_period_exceeds_the_shutdown_timeout(docs):
    grace = pod_spec(docs)["terminationGracePeriodSeconds"]
    container = feedstep_container(docs)
    assert grace > shutdown_timeout_s(container), (grace, shutdown_timeout_s(container))
    assert grace > SHUTDOWN_TIMEOUT_S


def test_group_instance_id_is_the_pod_name(overlay, docs):
    env = env_of(feedstep_container(docs))
    if overlay == LOCKSTEP:
        # Lockstep ranks read the partitions of their rank (assigned, not subscribed): they
        # are no members of the consumer group, so static membership has nothing to keep.
        assert "FEEDSTEP_GROUP_INSTANCE_ID" not in env
        return
    fieldref = env["FEEDSTEP_GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]
    assert fieldref["fieldPath"] == "metadata.name"


# --- the pod's hygiene ----------------------------------------------------------------


def test_no_service_links_and_no_api_token(docs):
    spec = pod_spec(docs)
    assert spec["enableServiceLinks"] is False, "FEEDSTEP_* service links would break config"
    assert spec["automountServiceAccountToken"] is False


def test_feedstep_runs_non_root_read_only_without_privileges(docs):
    spec = pod_spec(docs)
    container = feedstep_container(docs)
    pod_ctx, ctx = spec.get("securityContext", {}), container.get("securityContext", {})

    def effective(key):
        return ctx.get(key, pod_ctx.get(key))

    assert effective("runAsNonRoot") is True
    assert effective("runAsUser") == dockerfile_user(flavour_of(container)), "the image's USER"
    assert effective("runAsUser") != 0 and effective("runAsGroup") != 0
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"] and not ctx["capabilities"].get("add")
    assert effective("seccompProfile") == {"type": "RuntimeDefault"}
    assert not ctx.get("privileged")


def test_every_path_feedstep_writes_is_a_writable_volume(docs):
    container = feedstep_container(docs)
    env = dockerfile_env(flavour_of(container))
    spec = pod_spec(docs)
    volumes = {v["name"]: v for v in spec["volumes"]}
    claims = {t["metadata"]["name"] for t in workload(docs)["spec"].get("volumeClaimTemplates", [])}
    writable = {
        m["mountPath"]
        for m in container["volumeMounts"]
        if not m.get("readOnly") and (m["name"] in claims or "emptyDir" in volumes[m["name"]])
    }
    config = rendered_config(docs, container)
    needed = {
        "/tmp": "/tmp",
        "HF_HOME": env["HF_HOME"],
        "MPLCONFIGDIR": env["MPLCONFIGDIR"],
        "store": config.promotion.store,
        "checkpoint_dir": config.checkpoints.dir,
    }
    for what, path in needed.items():
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in writable), (
            f"{what} ({path}) is not on a writable volume: {sorted(writable)}"
        )


# A Kubernetes quantity (the schema only says "string or number").
_QUANTITY = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[mkMGTPE])?")


def test_every_container_has_requests_and_limits(docs):
    spec = pod_spec(docs)
    quantities = []
    for container in spec.get("initContainers", []) + spec["containers"]:
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
        assert "memory" in resources["limits"], container["name"]
        quantities += [*resources["requests"].values(), *resources["limits"].values()]
    feedstep = feedstep_container(docs)["resources"]
    assert {"cpu", "memory"} <= set(feedstep["limits"])
    quantities += [v["emptyDir"]["sizeLimit"] for v in spec["volumes"] if "emptyDir" in v]
    for claim in workload(docs)["spec"].get("volumeClaimTemplates", []):
        quantities.append(claim["spec"]["resources"]["requests"]["storage"])
    for quantity in quantities:
        assert _QUANTITY.fullmatch(str(quantity)), f"{quantity!r} is not a quantity"


# --- configuration and secrets ----------------------------------------------------------


def rendered_config(docs, container):
    """feedstep's configuration as the pod would load it (ConfigMap file + container env)."""
    env = env_of(container)
    config_path = env["FEEDSTEP_CONFIG"]["value"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    directory, _, filename = config_path.rpartition("/")
    volume = next(v for v in pod_spec(docs)["volumes"] if v["name"] == mounts[directory])
    configmap = one(docs, "ConfigMap", volume["configMap"]["name"])
    environ = {}
    for name, item in env.items():
        if "value" in item:
            environ[name] = item["value"]
        elif "fieldRef" in item["valueFrom"]:
            environ[name] = "feedstep-0"
        else:
            environ[name] = "placeholder"
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / filename
        local.write_text(configmap["data"][filename])
        return load_config(local, environ=environ)


def test_config_comes_from_the_configmap_and_loads(overlay, docs):
    container = feedstep_container(docs)
    config = rendered_config(docs, container)  # raises ConfigError on an unknown key or value
    expected = None if overlay == LOCKSTEP else "feedstep-0"  # see test_group_instance_id_...
    assert config.kafka.group_instance_id == expected
    assert config.kafka.sasl_plain_username == "placeholder"
    assert config.run.shutdown_timeout_s == shutdown_timeout_s(container)


def test_sasl_credentials_come_from_the_placeholder_secret(docs):
    env = env_of(feedstep_container(docs))
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    for name in ("FEEDSTEP_SASL_PLAIN_USERNAME", "FEEDSTEP_SASL_PLAIN_PASSWORD"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        secret = secrets[ref["name"]]
        assert ref["key"] in secret["data"], f"{name}: key {ref['key']} not in the Secret"
    # Placeholders only: no credential is ever committed.
    (secret,) = secrets.values()
    values = {base64.b64decode(v).decode() for v in secret["data"].values()}
    assert values == {"CHANGE-ME"}


# --- Service, PodMonitor, PrometheusRule, dashboard -------------------------------------


def test_service_exposes_the_metrics_port_of_the_feedstep_pods(docs):
    service = one(docs, "Service", "feedstep")  # lockstep adds its headless Service
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["port"] == METRICS_PORT
    assert port["targetPort"] == METRICS_PORT, "numeric: a native sidecar's port is an init one"
    labels = workload(docs)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_podmonitor_scrapes_the_metrics_port_of_the_feedstep_pods(docs):
    monitor = one(docs, "PodMonitor")
    labels = workload(docs)["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    names = {p["name"] for p in feedstep_container(docs)["ports"]}
    assert endpoint["port"] in names and endpoint["path"] == "/metrics"


def test_prometheusrule_embeds_the_rules_of_deploy_prometheus(docs):
    rule = one(docs, "PrometheusRule")
    source = yaml.safe_load((REPO / "deploy" / "prometheus" / "feedstep-rules.yaml").read_text())
    assert rule["spec"]["groups"] == source["groups"]


def test_dashboard_configmap_is_labelled_for_grafana_and_matches_deploy_grafana(docs):
    configmap = one(docs, "ConfigMap", "feedstep-grafana-dashboard")  # no hash suffix
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = REPO / "deploy" / "grafana" / "dashboards" / "feedstep.json"
    assert json.loads(configmap["data"]["feedstep.json"]) == json.loads(source.read_text())


def test_monitoring_copies_are_in_sync_with_their_sources():
    module = sync_module()
    stale = [str(p.relative_to(REPO)) for p in module.stale()]
    assert not stale, f"stale copies {stale}: run python3 deploy/k8s/sync_monitoring.py"


def test_sync_monitoring_doctest():
    result = doctest.testmod(sync_module())
    assert result.attempted and not result.failed
