"""HTTP notifications after a switch of LIVE, delivered off the training and ingest threads.

The governor announces every promotion and rollback on the model-updates topic (Kafka) and,
when configured, to two HTTP targets:

* ``webhook``: ``POST <webhook_url>`` with the model-updates message as its JSON body;
* ``vllm``: ``POST <vllm_url>/v1/load_lora_adapter`` with ``{"lora_name", "lora_path",
  "load_inplace": true}``, so a vLLM server started with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``
  serves the new LIVE adapter under the same name (``Authorization: Bearer <vllm_api_key>`` when
  vLLM runs with ``--api-key``).

Either may be slow or down; neither may hold up training. :meth:`Notifier.submit` only queues
and returns; one daemon thread delivers. A failed attempt (connection error, timeout, any status
outside 2xx, a redirect) is retried after ``backoff_initial_s``, doubling up to
``backoff_max_s``, until it is delivered, superseded or given up at :meth:`Notifier.close`. Only
the latest LIVE version matters, so each target holds at most one waiting notification: a newer
one replaces it (counted as ``superseded``). Attempts and outcomes are
``feedstep_notifications_total{target,outcome}``; what is waiting is
``feedstep_notifications_pending{target}``.

Logs name the target, the version, the attempt, the status code and the error class; never a
body (the message's ``reason`` is free text) and never the API key.

Example:
    >>> notifier = Notifier(NotifySettings())  # no target configured: nothing is sent
    >>> notifier.targets
    ()
    >>> notifier.close()
    True
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitors.metrics import NOTIFY_TARGETS, Metrics

log = logging.getLogger(__name__)

__all__ = ["LOAD_LORA_PATH", "NotifySettings", "Notifier", "backoff_s"]

LOAD_LORA_PATH = "/v1/load_lora_adapter"
"""vLLM's endpoint that loads (with ``load_inplace``: replaces) a LoRA adapter at run time."""
_MAX_RESPONSE_BYTES = 65_536  # read (and drop) at most this much of an answer


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """Where notifications go and how hard to try.

    Attributes:
        webhook_url: POST the model-updates message here; None: no webhook.
        vllm_url: a vLLM OpenAI-compatible server's base URL (``http://vllm:8000``, without
            ``/v1``); None: no hot-loading.
        vllm_adapter_name: the ``lora_name`` the adapter is served under (the ``model`` that
            chat requests to vLLM name).
        vllm_api_key: vLLM's ``--api-key``, sent as a bearer token; None: no header.
        timeout_s: one attempt's connect-and-answer timeout.
        backoff_initial_s: the wait after the first failed attempt; it doubles after each.
        backoff_max_s: the cap of that wait.
    """

    webhook_url: str | None = None
    vllm_url: str | None = None
    vllm_adapter_name: str = "feedstep"
    vllm_api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 5.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0


def backoff_s(failures: int, initial_s: float, max_s: float) -> float:
    """The wait before the next attempt after ``failures`` failed ones (1 or more).

    Example:
        >>> [backoff_s(n, 1.0, 60.0) for n in (1, 2, 3, 6, 7, 50)]
        [1.0, 2.0, 4.0, 32.0, 60.0, 60.0]
    """
    return float(min(max_s, initial_s * 2.0 ** min(failures - 1, 60)))


@dataclass(slots=True)
class _Job:
    """One notification for one target, with its retry state."""

    target: str
    version: int
    url: str
    body: bytes
    headers: Mapping[str, str]
    failures: int = 0
    due: float = 0.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would turn a redirected POST into a GET without the body."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        """Never follow; urllib then raises the 3xx as an ``HTTPError`` (a failed attempt)."""
        return None


class Notifier:
    """Delivers webhook and vLLM notifications on one daemon thread, with retries.

    Args:
        settings: the targets and the retry policy (:class:`NotifySettings`).
        metrics: the process's metric set (None: not counted, for tests and tools).

    Example:
        >>> n = Notifier(NotifySettings(webhook_url="http://127.0.0.1:9/hook"))
        >>> n.targets
        ('webhook',)
    """

    def __init__(
        self,
        settings: NotifySettings,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._clock = time.monotonic
        self._cond = threading.Condition()
        self._waiting: dict[str, _Job] = {}  # at most one per target: the newest
        self._in_flight: _Job | None = None
        self._given_up: list[_Job] = []  # failed in flight after close's deadline
        self._thread: threading.Thread | None = None
        self._closing = False
        self._deadline = float("inf")
        self._opener = urllib.request.build_opener(_NoRedirect())

    @property
    def targets(self) -> tuple[str, ...]:
        """The configured targets, of ``webhook`` and ``vllm``."""
        s = self.settings
        return tuple(
            t for t, url in (("webhook", s.webhook_url), ("vllm", s.vllm_url)) if url is not None
        )

    # -- what the governor calls ----------------------------------------------------------------
    def webhook(self, version: int, body: bytes) -> None:
        """Queue ``body`` (the model-updates message) for ``webhook_url``; no-op without one."""
        if self.settings.webhook_url is None:
            return
        self.submit(
            "webhook",
            version,
            self.settings.webhook_url,
            body,
            {"Content-Type": "application/json"},
        )

    def hot_load(self, version: int, adapter_dir: Path) -> None:
        """Queue a hot-load of ``adapter_dir`` (a PEFT adapter folder) into vLLM; no-op without.

        The path is sent absolute: vLLM reads it from its own file system, so the store must be
        mounted there at the same path.
        """
        s = self.settings
        if s.vllm_url is None:
            return
        body = json.dumps(
            {
                "lora_name": s.vllm_adapter_name,
                "lora_path": str(Path(adapter_dir).resolve()),
                "load_inplace": True,  # the name stays; vLLM swaps the weights behind it
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if s.vllm_api_key:
            headers["Authorization"] = f"Bearer {s.vllm_api_key}"
        self.submit("vllm", version, s.vllm_url.rstrip("/") + LOAD_LORA_PATH, body, headers)

    def submit(
        self, target: str, version: int, url: str, body: bytes, headers: Mapping[str, str]
    ) -> None:
        """Queue one POST for ``target`` and return at once; it replaces a waiting older one."""
        if target not in NOTIFY_TARGETS:
            raise ValueError(f"target must be one of {NOTIFY_TARGETS}, got {target!r}")
        with self._cond:
            if self._closing:
                log.warning("%s notification for version %d after close: not sent", target, version)
                self._count(target, "dropped")
                return
            older = self._waiting.get(target)
            if older is not None:
                log.info(
                    "%s notification for version %d superseded by version %d before delivery",
                    target,
                    older.version,
                    version,
                )
                self._count(target, "superseded")
            self._waiting[target] = _Job(target, version, url, body, dict(headers), due=0.0)
            self._set_pending()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="feedstep-notify", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait until nothing is waiting or in flight; False when ``timeout_s`` ran out first."""
        end = self._clock() + timeout_s
        with self._cond:
            while self._waiting or self._in_flight is not None:
                left = end - self._clock()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float = 5.0) -> bool:
        """Deliver what is waiting within ``timeout_s`` (trying each at once), then give up.

        Returns True when everything was delivered. What is left is logged, counted as
        ``dropped`` and not retried here: a webhook is not sent again, and vLLM gets LIVE at the
        next start (:meth:`streaming.promotion.governor.Governor.hot_load_live`).
        """
        with self._cond:
            if self._closing:
                return not self._waiting and self._in_flight is None
            self._closing = True
            self._deadline = self._clock() + timeout_s
            for job in self._waiting.values():
                job.due = 0.0  # one more try now, whatever the backoff said
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s + 0.5)
        with self._cond:
            left = [*self._given_up, *self._waiting.values()]
            if self._in_flight is not None:
                left.append(self._in_flight)
            for job in self._waiting.values():
                self._count(job.target, "dropped")
            self._waiting.clear()
            self._set_pending()
        if left:
            log.warning(
                "%d notification(s) not delivered within %.1f s of shutdown, given up: %s",
                len(left),
                timeout_s,
                ", ".join(f"{j.target} version {j.version}" for j in left),
            )
        return not left

    # -- the delivery thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                job = self._next_job()
                if job is None:
                    return
                self._in_flight = job
            ok = self._attempt(job)
            with self._cond:
                self._in_flight = None
                self._settle(job, ok)
                self._set_pending()
                self._cond.notify_all()

    def _next_job(self) -> _Job | None:
        """The next due job, taken out of the waiting slots; None once closed and done."""
        while True:
            now = self._clock()
            if self._closing and (not self._waiting or now >= self._deadline):
                return None
            if self._waiting:
                job = min(self._waiting.values(), key=lambda j: j.due)
                if job.due <= now:
                    del self._waiting[job.target]
                    return job
                wait: float | None = job.due - now
            else:
                wait = None  # sleep until a submit or a close
            if self._closing:
                wait = min(wait if wait is not None else float("inf"), self._deadline - now)
            self._cond.wait(wait)

    def _attempt(self, job: _Job) -> bool:
        """One POST, off the lock; True on a 2xx answer."""
        request = urllib.request.Request(job.url, data=job.body, method="POST")
        for name, value in job.headers.items():
            request.add_header(name, value)
        attempt = job.failures + 1
        try:
            with self._opener.open(request, timeout=self.settings.timeout_s) as response:
                response.read(_MAX_RESPONSE_BYTES)
                status = response.status
        except urllib.error.HTTPError as exc:  # an answer outside 2xx (or a refused redirect)
            detail = _answer_excerpt(exc)
            self._failed(job, attempt, f"HTTP {exc.code}", detail)
            return False
        except Exception as exc:  # any failure is retried; none may reach the training thread
            self._failed(job, attempt, _error_class(exc), "")
            return False
        self._count(job.target, "ok")
        if job.failures:
            log.info(
                "%s notification for version %d delivered on attempt %d (HTTP %d)",
                job.target,
                job.version,
                attempt,
                status,
            )
        else:
            log.debug("%s notification for version %d delivered", job.target, job.version)
        return True

    def _failed(self, job: _Job, attempt: int, what: str, detail: str) -> None:
        self._count(job.target, "error")
        wait = backoff_s(attempt, self.settings.backoff_initial_s, self.settings.backoff_max_s)
        # The first failure of a notification is a warning; its retries are quieter, so an
        # outage of hours logs one line per version, not one per minute.
        level = logging.WARNING if attempt == 1 else logging.DEBUG
        log.log(
            level,
            "%s notification for version %d failed (attempt %d: %s); retrying in %.0f s, "
            "training goes on",
            job.target,
            job.version,
            attempt,
            what,
            wait,
        )
        if detail:
            log.debug("%s answered: %s", job.target, detail)

    def _settle(self, job: _Job, ok: bool) -> None:
        """After an attempt (under the lock): retry it, or let a newer one take its place."""
        if ok:
            return
        job.failures += 1
        if job.target in self._waiting:  # a newer version arrived while this one was tried
            self._count(job.target, "superseded")
            return
        if self._closing and self._clock() >= self._deadline:
            self._count(job.target, "dropped")  # close() gave up waiting for it
            self._given_up.append(job)
            return
        wait = backoff_s(job.failures, self.settings.backoff_initial_s, self.settings.backoff_max_s)
        job.due = self._clock() + wait
        self._waiting[job.target] = job

    # -- metrics --------------------------------------------------------------------------------
    def _count(self, target: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.notifications.labels(target=target, outcome=outcome).inc()

    def _set_pending(self) -> None:
        if self.metrics is None:
            return
        for target in NOTIFY_TARGETS:
            n = int(target in self._waiting)
            n += int(self._in_flight is not None and self._in_flight.target == target)
            self.metrics.notifications_pending.labels(target=target).set(n)


def _error_class(exc: Exception) -> str:
    """The failure's class, the cause's for urllib's wrapper (``ConnectionRefusedError``).

    Example:
        >>> _error_class(urllib.error.URLError(ConnectionRefusedError(111, "refused")))
        'ConnectionRefusedError'
        >>> _error_class(TimeoutError())
        'TimeoutError'
    """
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return type(exc.reason).__name__
    return type(exc).__name__


def _answer_excerpt(exc: urllib.error.HTTPError) -> str:
    """The start of an error answer, one line, for a debug log (vLLM says why it refused)."""
    try:
        raw = exc.read(512)
    except Exception:  # the answer is only a hint for the log
        return ""
    return raw.decode("utf-8", "replace").replace("\n", " ")[:200]
