"""``/metrics``, ``/healthz`` and ``/readyz`` on one port, served from a daemon thread.

``/healthz`` answers 200 while the process's main loop keeps beating (it is not wedged);
``/readyz`` answers 200 once the caller says it is ready (model resident, source connected)
and 503 otherwise, so a Kubernetes readiness probe keeps traffic and alerts honest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST


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

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    outer._send(self, 200, outer._render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = outer._health.live
                    outer._send(self, 200 if ok else 503, b"ok\n" if ok else b"stalled\n")
                elif path == "/readyz":
                    ok = outer._health.ready
                    body = f"{'ok' if ok else outer._health.reason}\n".encode()
                    outer._send(self, 200 if ok else 503, body)
                else:
                    outer._send(self, 404, b"try /metrics, /healthz or /readyz\n")

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return  # scrapes every few seconds would drown the log

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="feedstep-metrics", daemon=True
        )

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str = "text/plain"
    ) -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(body)))
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
