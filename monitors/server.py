"""``/metrics``, ``/healthz``, ``/readyz`` and ``POST /v1/score`` on one port, one thread each.

``/healthz`` answers 200 while the process's main loop keeps beating (it is not wedged);
``/readyz`` answers 200 once the caller says it is ready (model resident, source connected)
and 503 otherwise, so a Kubernetes readiness probe keeps traffic and alerts honest.

``POST /v1/score`` is a generic hook: the server reads the body (at most ``max_body_bytes``,
else 413), parses it as JSON (else 400) and hands the value to the callable given to
:meth:`MetricsServer.set_score`, which answers ``(status, JSON-ready dict)``. Until one is set
the endpoint answers 503. The server never logs a body or echoes it back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

SCORE_PATH = "/v1/score"
ScoreHandler = Callable[[Any], tuple[int, dict[str, Any]]]
"""Takes the parsed JSON body, returns the status code and the JSON-ready answer."""
_GET_PATHS = ("/metrics", "/healthz", "/readyz")


class HealthState:
    """Liveness and readiness flags shared between the loop and the HTTP server.

    Example:
        >>> h = HealthState(stall_after_s=60)
        >>> h.beat(); h.live
        True
        >>> h.ready
        False
    """

    def __init__(self, stall_after_s: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._last_beat = clock()
        self._ready = False
        self.reason = "starting"

    def beat(self) -> None:
        """Record that the main loop is making progress."""
        self._last_beat = self._clock()

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Switch readiness; ``reason`` is shown by ``/readyz`` when not ready."""
        self._ready = ready
        self.reason = reason or ("ok" if ready else "not ready")

    @property
    def live(self) -> bool:
        """False once the loop has not beaten for ``stall_after_s``."""
        return self._clock() - self._last_beat < self.stall_after_s

    @property
    def ready(self) -> bool:
        """True when the caller said so and the loop is live."""
        return self._ready and self.live


class MetricsServer:
    """A tiny HTTP server for the three endpoints.

    Args:
        render: returns the metrics text (``Metrics.render``).
        health: the shared :class:`HealthState`.
        port: TCP port; 0 picks a free one (read it back from :attr:`port`).
        host: interface to bind; ``0.0.0.0`` so a Prometheus in the pod network can scrape.

    Every request runs on its own thread (``ThreadingHTTPServer``), so a slow score request
    never holds up a scrape or a probe.
    """

    def __init__(
        self,
        render: Callable[[], bytes],
        health: HealthState,
        port: int = 9108,
        host: str = "0.0.0.0",
    ) -> None:
        self._render = render
        self._health = health
        self._score: ScoreHandler | None = None
        self._score_observe: Callable[[int, float], None] | None = None
        self._score_max_body_bytes = 1_048_576

        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 30  # seconds a client may take to send its request (a slow body)

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                path = self.path.split("?", 1)[0]
                if path == SCORE_PATH:
                    outer._answer_score(self, time.perf_counter(), 405, _error("use POST"))
                elif path == "/metrics":
                    outer._send(self, 200, outer._render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = outer._health.live
                    outer._send(self, 200 if ok else 503, b"ok\n" if ok else b"stalled\n")
                elif path == "/readyz":
                    ok = outer._health.ready
                    body = f"{'ok' if ok else outer._health.reason}\n".encode()
                    outer._send(self, 200 if ok else 503, body)
                else:
                    outer._send(self, 404, b"try /metrics, /healthz, /readyz or POST /v1/score\n")

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                path = self.path.split("?", 1)[0]
                if path == SCORE_PATH:
                    outer._post_score(self)
                elif path in _GET_PATHS:
                    self.close_connection = True  # the body, if any, was not read
                    outer._send(self, 405, b"use GET\n", extra={"Allow": "GET"})
                else:
                    self.close_connection = True
                    outer._send(self, 404, b"try /metrics, /healthz, /readyz or POST /v1/score\n")

            def _not_allowed(self) -> None:
                self.close_connection = True
                path = self.path.split("?", 1)[0]
                if path == SCORE_PATH:
                    outer._answer_score(self, time.perf_counter(), 405, _error("use POST"))
                else:
                    outer._send(self, 405, b"use GET\n", extra={"Allow": "GET"})

            do_PUT = do_DELETE = do_PATCH = _not_allowed  # noqa: N815 - http.server naming

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return  # scrapes every few seconds would drown the log

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="feedstep-metrics", daemon=True
        )

    def set_score(
        self,
        handler: ScoreHandler | None,
        max_body_bytes: int = 1_048_576,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        """Serve ``POST /v1/score`` with ``handler`` (None: answer 503 again).

        Args:
            handler: takes the parsed JSON body, returns ``(status, JSON-ready dict)``.
            max_body_bytes: a longer body is refused with 413 before it is read.
            observe: called with ``(status, seconds)`` once per ``/v1/score`` request, whatever
                its outcome (``Metrics.observe_score``).
        """
        self._score_max_body_bytes = max_body_bytes
        self._score_observe = observe
        self._score = handler

    def _post_score(self, handler: BaseHTTPRequestHandler) -> None:
        started = time.perf_counter()
        score = self._score
        length_text = handler.headers.get("Content-Length")
        if handler.headers.get("Transfer-Encoding") or length_text is None:
            handler.close_connection = True
            status, body = 411, _error("send the body with a Content-Length header")
        elif not length_text.isdigit():
            handler.close_connection = True
            status, body = 400, _error("the Content-Length header is not a number")
        elif int(length_text) > self._score_max_body_bytes:
            handler.close_connection = True  # not read: the connection cannot be reused
            status, body = (
                413,
                _error(
                    f"request body of {int(length_text)} bytes; the limit is "
                    f"{self._score_max_body_bytes} bytes (score_max_body_bytes)"
                ),
            )
        else:
            raw = handler.rfile.read(int(length_text))
            status, body = self._run_score(score, raw)
        self._answer_score(handler, started, status, body)

    @staticmethod
    def _run_score(score: ScoreHandler | None, raw: bytes) -> tuple[int, dict[str, Any]]:
        if score is None:
            return 503, _error("scoring is not available yet (the model is loading)")
        try:
            request = json.loads(raw)
        except UnicodeDecodeError:
            return 400, _error("the body is not UTF-8 text")
        except RecursionError:
            return 400, _error("the body nests JSON too deeply")
        except json.JSONDecodeError as exc:  # position only: the message never quotes the body
            return 400, _error(
                f"the body is not valid JSON (line {exc.lineno}, column {exc.colno})"
            )
        try:
            return score(request)
        except Exception as exc:  # a bug must answer 500, not kill the connection
            log.error("POST %s failed: %s", SCORE_PATH, type(exc).__name__)
            return 500, _error("internal error while scoring; see the sidecar's log")

    def _answer_score(
        self, handler: BaseHTTPRequestHandler, started: float, status: int, body: dict[str, Any]
    ) -> None:
        payload = json.dumps(body).encode() + b"\n"
        observe = self._score_observe
        if observe is not None:  # before the answer leaves: a client that saw it sees the count
            observe(status, time.perf_counter() - started)
        extra = {"Allow": "POST"} if status == 405 else None
        self._send(handler, status, payload, "application/json", extra)

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        code: int,
        body: bytes,
        ctype: str = "text/plain",
        extra: dict[str, str] | None = None,
    ) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    @property
    def port(self) -> int:
        """The bound port (useful when 0 was asked for)."""
        return int(self._httpd.server_address[1])

    def start(self) -> MetricsServer:
        """Serve in a daemon thread; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()


def _error(message: str) -> dict[str, Any]:
    return {"error": message}
