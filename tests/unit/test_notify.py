"""The notifier: webhook and vLLM hot-load requests, delivered off the caller's thread.

Every test talks to a real HTTP server on 127.0.0.1 (a ``ThreadingHTTPServer`` on a free port)
that checks each request as vLLM documents ``POST /v1/load_lora_adapter`` and answers as vLLM
does. Servers that must be slow wait on an Event the test sets, so no test sleeps and none
measures time; retries use backoffs of milliseconds.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from monitors.metrics import Metrics
from streaming.promotion.notify import LOAD_LORA_PATH, Notifier, NotifySettings

FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}
WAIT_S = 10.0  # the most a correct test waits for the delivery thread: a guard, not a measure


class FakeVLLM:
    """A local HTTP server that checks requests the way vLLM's OpenAI server reads them.

    ``answers``: statuses to answer in turn (then 200); ``hold``: each request waits for this
    Event before it is answered. ``problems`` lists every way a request broke the contract.
    """

    def __init__(self, api_key: str | None = None, answers=(), hold=None):
        self.api_key = api_key
        self.answers = list(answers)
        self.hold = hold
        self.requests: list[dict] = []
        self.problems: list[str] = []
        self.arrived = threading.Semaphore(0)
        self.answered = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                fake._handle(self)

            def do_GET(self):  # noqa: N802
                fake.problems.append(f"GET {self.path}: vLLM's endpoint takes POST")
                self.send_error(405)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever,
            args=(0.01,),
            daemon=True,  # quick to shut down
        )
        self.thread.start()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length", 0)))
        with self._lock:
            self.requests.append({"path": h.path, "headers": dict(h.headers), "body": body})
            status = self.answers.pop(0) if self.answers else 200
        self.arrived.release()
        if self.hold is not None:
            self.hold.wait()
        if h.path == LOAD_LORA_PATH:
            self._check_load_request(h, body)
        if status == 200:
            text = b"Success: LoRA adapter 'feedstep' added successfully."
            h.send_response(200)
            h.send_header("Content-Type", "text/plain")
        else:  # vLLM's ErrorResponse
            text = json.dumps(
                {"object": "error", "message": "engine busy", "type": "Error", "code": status}
            ).encode()
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            if 300 <= status < 400:  # urllib's default would follow this as a GET
                h.send_header("Location", h.path)
        h.send_header("Content-Length", str(len(text)))
        h.end_headers()
        # Counted before the body goes out: the client may read it and the test check the
        # count before this thread runs again.
        with self._lock:
            self.answered += 1
        try:
            h.wfile.write(text)
        except OSError:  # the client gave up (a timeout test): not an answer
            with self._lock:
                self.answered -= 1

    def _check_load_request(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        bad = self.problems.append
        if h.headers.get("Content-Type", "").split(";")[0] != "application/json":
            bad(f"Content-Type {h.headers.get('Content-Type')!r}, not application/json")
        auth = h.headers.get("Authorization")
        want = None if self.api_key is None else f"Bearer {self.api_key}"
        if auth != want:
            bad(f"Authorization {auth!r}, expected {want!r}")
        try:
            body = json.loads(raw)
        except ValueError:
            bad("the body is not JSON")
            return
        if not isinstance(body, dict) or set(body) != {"lora_name", "lora_path", "load_inplace"}:
            bad(f"body keys {sorted(body) if isinstance(body, dict) else body!r}")
            return
        if not isinstance(body["lora_name"], str) or not body["lora_name"]:
            bad(f"lora_name {body['lora_name']!r}")
        path = body["lora_path"]
        if not isinstance(path, str) or not Path(path).is_absolute():
            bad(f"lora_path {path!r} is not an absolute path")
        elif not all((Path(path) / f).is_file() for f in ADAPTER_FILES):
            bad(f"lora_path {path!r} is not a PEFT adapter folder")
        if body["load_inplace"] is not True:
            bad(f"load_inplace {body['load_inplace']!r}")

    def wait_arrived(self) -> None:
        assert self.arrived.acquire(timeout=WAIT_S), "no request reached the server"

    def bodies(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@pytest.fixture()
def servers():
    made: list[FakeVLLM] = []

    def make(**kwargs) -> FakeVLLM:
        made.append(FakeVLLM(**kwargs))
        return made[-1]

    yield make
    for server in made:
        server.close()


def adapter_folder(root: Path, version: int) -> Path:
    """A version folder's ``adapter/`` with dummy PEFT files (vLLM only needs them to exist)."""
    folder = root / "versions" / str(version) / "adapter"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    return folder


def count(metrics: Metrics, target: str, outcome: str) -> float:
    return metrics.notifications.labels(target=target, outcome=outcome)._value.get()


def pending(metrics: Metrics, target: str) -> float:
    return metrics.notifications_pending.labels(target=target)._value.get()


def wait_for(condition) -> None:
    """Poll ``condition`` until it holds (the delivery thread's progress); fail after WAIT_S."""
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.005)):
        if condition():
            return
        done.wait(0.005)
    raise AssertionError("the delivery thread did not get there")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the vLLM contract ------------------------------------------------------------------------
@pytest.mark.parametrize("api_key", [None, "sk-feedstep-test"])
def test_hot_load_posts_what_vllm_documents(servers, tmp_path, monkeypatch, api_key):
    vllm = servers(api_key=api_key)
    adapter = adapter_folder(tmp_path, 3)
    monkeypatch.chdir(tmp_path)  # a relative folder is sent absolute: vLLM resolves nothing
    metrics = Metrics()
    notifier = Notifier(
        NotifySettings(
            vllm_url=vllm.url + "/", vllm_adapter_name="chat-live", vllm_api_key=api_key
        ),
        metrics,
    )
    notifier.hot_load(3, Path("versions/3/adapter"))
    assert notifier.close(WAIT_S)
    assert vllm.problems == []
    assert [r["path"] for r in vllm.requests] == [LOAD_LORA_PATH]
    assert vllm.bodies() == [
        {"lora_name": "chat-live", "lora_path": str(adapter.resolve()), "load_inplace": True}
    ]
    assert count(metrics, "vllm", "ok") == 1 and count(metrics, "vllm", "error") == 0
    assert pending(metrics, "vllm") == 0


def test_the_contract_server_catches_a_wrong_request(servers, tmp_path):
    """The checks above can fail: a request without the key or with a bad path is caught."""
    vllm = servers(api_key="sk-expected")
    notifier = Notifier(NotifySettings(vllm_url=vllm.url), Metrics())
    notifier.hot_load(1, tmp_path / "not-an-adapter")
    assert notifier.close(WAIT_S)
    assert any("Authorization" in p for p in vllm.problems)
    assert any("not a PEFT adapter folder" in p for p in vllm.problems)


def test_the_webhook_gets_the_message_as_json(servers):
    hook = servers()
    message = json.dumps({"action": "promote", "version": 4, "reason": "all checks passed"})
    metrics = Metrics()
    notifier = Notifier(NotifySettings(webhook_url=hook.url + "/hooks/feedstep"), metrics)
    notifier.webhook(4, message.encode())
    assert notifier.close(WAIT_S)
    (request,) = hook.requests
    assert request["path"] == "/hooks/feedstep" and request["body"] == message.encode()
    assert request["headers"]["Content-Type"] == "application/json"
    assert "Authorization" not in request["headers"]
    assert count(metrics, "webhook", "ok") == 1 and count(metrics, "vllm", "ok") == 0


# -- retries ----------------------------------------------------------------------------------
def test_a_failing_server_is_retried_until_it_answers(servers, tmp_path, caplog):
    vllm = servers(answers=[500, 503])
    metrics = Metrics()
    notifier = Notifier(NotifySettings(vllm_url=vllm.url, **FAST), metrics)
    with caplog.at_level(logging.DEBUG, logger="streaming.promotion.notify"):
        notifier.hot_load(7, adapter_folder(tmp_path, 7))
        assert notifier.flush(WAIT_S)
    assert len(vllm.requests) == 3 and vllm.problems == []
    assert count(metrics, "vllm", "error") == 2 and count(metrics, "vllm", "ok") == 1
    assert pending(metrics, "vllm") == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "HTTP 500" in warnings[0]  # once per notification, not per try
    assert "engine busy" not in " ".join(warnings)  # an answer's text is for debug logs only
    assert any("delivered on attempt 3" in r.getMessage() for r in caplog.records)
    notifier.close(WAIT_S)


def test_connection_errors_are_counted_and_retried(tmp_path):
    metrics = Metrics()
    notifier = Notifier(
        NotifySettings(vllm_url=f"http://127.0.0.1:{closed_port()}", **FAST), metrics
    )
    notifier.hot_load(2, adapter_folder(tmp_path, 2))
    wait_for(lambda: count(metrics, "vllm", "error") >= 2)  # nothing listens: it keeps trying
    assert count(metrics, "vllm", "ok") == 0 and pending(metrics, "vllm") == 1
    assert not notifier.close(0.1)


def test_a_hung_server_times_out_and_is_retried(servers, tmp_path):
    hold = threading.Event()
    vllm = servers(hold=hold)
    metrics = Metrics()
    notifier = Notifier(NotifySettings(vllm_url=vllm.url, timeout_s=0.2, **FAST), metrics)
    notifier.hot_load(5, adapter_folder(tmp_path, 5))
    vllm.wait_arrived()
    vllm.wait_arrived()  # a second attempt: the first one timed out
    hold.set()
    assert notifier.flush(WAIT_S)
    assert count(metrics, "vllm", "error") >= 1 and count(metrics, "vllm", "ok") == 1
    notifier.close(WAIT_S)


# -- never on the caller's thread -------------------------------------------------------------
def test_submit_returns_before_the_server_answers(servers):
    hold = threading.Event()
    hook = servers(hold=hold)
    metrics = Metrics()
    notifier = Notifier(NotifySettings(webhook_url=hook.url), metrics)
    notifier.webhook(1, b"{}")  # returns although the server answers only once `hold` is set
    hook.wait_arrived()
    assert hook.answered == 0 and pending(metrics, "webhook") == 1
    hold.set()
    assert notifier.close(WAIT_S)
    assert hook.answered == 1 and count(metrics, "webhook", "ok") == 1


# -- superseding ------------------------------------------------------------------------------
def test_a_newer_version_supersedes_one_still_waiting(servers, tmp_path):
    hold = threading.Event()
    vllm = servers(hold=hold)
    metrics = Metrics()
    notifier = Notifier(NotifySettings(vllm_url=vllm.url, **FAST), metrics)
    folders = {v: adapter_folder(tmp_path, v) for v in (1, 2, 3)}
    notifier.hot_load(1, folders[1])
    vllm.wait_arrived()  # 1 is in flight (the server holds it); 2 waits behind it
    notifier.hot_load(2, folders[2])
    notifier.hot_load(3, folders[3])  # replaces 2, which is never sent
    assert pending(metrics, "vllm") == 2  # 1 in flight, 3 waiting
    hold.set()
    assert notifier.close(WAIT_S)
    sent = [Path(b["lora_path"]).parent.name for b in vllm.bodies()]
    assert sent == ["1", "3"] and vllm.problems == []
    assert count(metrics, "vllm", "superseded") == 1 and count(metrics, "vllm", "ok") == 2


def test_a_newer_version_supersedes_one_waiting_for_a_retry(servers, tmp_path):
    vllm = servers(answers=[503])
    metrics = Metrics()
    # a long backoff: version 1 would wait 60 s for its retry; version 2 goes at once
    notifier = Notifier(NotifySettings(vllm_url=vllm.url, backoff_initial_s=60.0), metrics)
    notifier.hot_load(1, adapter_folder(tmp_path, 1))
    wait_for(lambda: count(metrics, "vllm", "error") == 1)  # the 503 has been read and counted
    notifier.hot_load(2, adapter_folder(tmp_path, 2))
    assert notifier.flush(WAIT_S)
    sent = [Path(b["lora_path"]).parent.name for b in vllm.bodies()]
    assert sent == ["1", "2"]
    assert [count(metrics, "vllm", o) for o in ("error", "superseded", "ok")] == [1, 1, 1]
    notifier.close(WAIT_S)


def test_targets_are_independent(servers, tmp_path):
    hook, vllm = servers(), servers()
    metrics = Metrics()
    notifier = Notifier(NotifySettings(webhook_url=hook.url, vllm_url=vllm.url), metrics)
    notifier.webhook(1, b'{"version": 1}')
    notifier.hot_load(1, adapter_folder(tmp_path, 1))  # does not supersede the webhook's
    assert notifier.close(WAIT_S)
    assert len(hook.requests) == len(vllm.requests) == 1
    assert count(metrics, "webhook", "superseded") == count(metrics, "vllm", "superseded") == 0


# -- close ------------------------------------------------------------------------------------
def test_close_tries_what_waits_at_once_and_delivers_it(servers, tmp_path):
    vllm = servers(answers=[503])
    metrics = Metrics()
    notifier = Notifier(NotifySettings(vllm_url=vllm.url, backoff_initial_s=60.0), metrics)
    notifier.hot_load(1, adapter_folder(tmp_path, 1))
    wait_for(lambda: count(metrics, "vllm", "error") == 1)
    assert notifier.close(WAIT_S)  # the 60 s backoff is cut short: one more try now
    assert len(vllm.requests) == 2 and count(metrics, "vllm", "ok") == 1
    assert count(metrics, "vllm", "dropped") == 0


def test_close_gives_up_on_an_unreachable_target_and_says_so(tmp_path, caplog):
    metrics = Metrics()
    url = f"http://127.0.0.1:{closed_port()}"
    notifier = Notifier(NotifySettings(webhook_url=url, vllm_url=url, **FAST), metrics)
    notifier.webhook(9, b'{"reason": "free text never logged"}')
    notifier.hot_load(9, adapter_folder(tmp_path, 9))
    with caplog.at_level(logging.WARNING, logger="streaming.promotion.notify"):
        assert notifier.close(0.2) is False
    assert count(metrics, "webhook", "dropped") == count(metrics, "vllm", "dropped") == 1
    assert pending(metrics, "webhook") == pending(metrics, "vllm") == 0
    (line,) = [r.getMessage() for r in caplog.records if "given up" in r.getMessage()]
    assert "webhook version 9" in line and "vllm version 9" in line
    assert "free text" not in caplog.text
    assert not notifier._thread.is_alive()
    notifier.webhook(10, b"{}")  # after close: counted, not sent, no thread started again
    assert count(metrics, "webhook", "dropped") == 2


def test_no_target_means_no_thread():
    notifier = Notifier(NotifySettings(), Metrics())
    notifier.webhook(1, b"{}")
    notifier.hot_load(1, Path("/nowhere"))
    assert notifier.targets == () and notifier._thread is None
    assert notifier.close(0.1)


def test_a_redirect_is_a_failure_not_a_get(servers):
    """urllib would follow a 302 as a GET without the body; the notifier counts it failed."""
    hook = servers(answers=[302])
    metrics = Metrics()
    notifier = Notifier(NotifySettings(webhook_url=hook.url, **FAST), metrics)
    notifier.webhook(1, b"{}")
    assert notifier.flush(WAIT_S)
    assert count(metrics, "webhook", "error") == 1 and count(metrics, "webhook", "ok") == 1
    assert hook.problems == []  # no GET arrived
    notifier.close(WAIT_S)


# -- the governor -----------------------------------------------------------------------------
def _governor(tiny_parts, objective, store, notifier, metrics, sink=None):
    from learner.step import Learner, StepConfig
    from monitors.gate import GateConfig
    from streaming.promotion.governor import GovernanceSettings, Governor

    learner = Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-3))
    settings = GovernanceSettings(
        gate=GateConfig(min_events=1, drift_quiet_events=0, holdout_required=False),
        input_drift=False,
    )
    return Governor(learner, store, sink, metrics, settings, notifier=notifier)


def test_a_promotion_does_not_wait_for_a_hanging_webhook(
    servers, tiny_parts, objective, examples, tmp_path
):
    from learner.store import ModelStore
    from monitors.decision import GateDecision
    from streaming.testing import MemorySink

    hold = threading.Event()
    hook = servers(hold=hold)
    metrics, sink = Metrics(), MemorySink()
    # timeout_s: should after_step wait for the server, the attempt would time out (the test
    # sets `hold` only after after_step returned) and be counted an error below
    notifier = Notifier(NotifySettings(webhook_url=hook.url, timeout_s=WAIT_S), metrics)
    governor = _governor(
        tiny_parts, objective, ModelStore(tmp_path / "store"), notifier, metrics, sink
    )
    governor.ensure_initial_version(objective.tokenizer)  # announces version 1
    hook.wait_arrived()  # version 1 is in flight, held by the server
    promote = GateDecision("promote", (), 64, 0.1, 9.0, 0.0)
    governor.gate.decide = lambda **_: promote  # the gate says promote at this step
    result = governor.learner.step(objective.collate(examples))
    governor.after_step(result, [], objective.tokenizer)
    assert governor.live_version == 2 and hook.answered == 0
    hold.set()
    assert governor.close(WAIT_S)
    assert count(metrics, "webhook", "error") == 0 and count(metrics, "webhook", "ok") == 2
    messages = [m.value for m in sink.by_topic("feedstep.model-updates")]
    assert [r["body"] for r in hook.requests] == messages  # the webhook body is the message
    assert [json.loads(m)["version"] for m in messages] == [1, 2]


class _LoraStore:
    """The two store calls the governor makes to hot-load: LIVE and a version's manifest."""

    def __init__(self, root: Path, kinds: dict[int, str]):
        self.root, self.kinds = root, kinds

    def live_version(self):
        return max(self.kinds)

    def path(self, version):
        return self.root / "versions" / str(version)

    def version(self, version):
        return SimpleNamespace(version=version, kind=self.kinds[version], path=self.path(version))


def test_the_governor_hot_loads_lora_versions_only(
    servers, tiny_parts, objective, tmp_path, caplog
):
    vllm = servers()
    metrics = Metrics()
    adapter = adapter_folder(tmp_path, 3)
    notifier = Notifier(NotifySettings(vllm_url=vllm.url), metrics)
    store = _LoraStore(tmp_path, {1: "full", 2: "full", 3: "lora"})
    governor = _governor(tiny_parts, objective, store, notifier, metrics)
    governor.hot_load_live()  # at start: LIVE (3) is a lora version
    assert governor.close(WAIT_S)
    assert vllm.bodies() == [
        {"lora_name": "feedstep", "lora_path": str(adapter.resolve()), "load_inplace": True}
    ]
    assert vllm.problems == []

    notifier = Notifier(NotifySettings(vllm_url=vllm.url), metrics)
    governor = _governor(
        tiny_parts, objective, _LoraStore(tmp_path, {1: "full", 2: "full"}), notifier, metrics
    )
    with caplog.at_level(logging.WARNING, logger="streaming.promotion.governor"):
        governor._hot_load(1)
        governor._hot_load(2)
    assert governor.close(WAIT_S)
    assert len(vllm.requests) == 1  # nothing more sent
    said = [
        r.getMessage() for r in caplog.records if "needs versions of kind 'lora'" in r.getMessage()
    ]
    assert len(said) == 1  # said once, not at every switch
