"""PromQL checks against an in-process fake of Prometheus' /api/v1/query."""

import json
import math
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from monitors.gate import Gate, GateConfig, HoldoutResult
from monitors.promql import PromQLCheck, PromQLClient, parse_condition, parse_response


def vector(*values: str) -> dict:
    result = [{"metric": {"pod": f"p{i}"}, "value": [1.7e9, v]} for i, v in enumerate(values)]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


# query -> (HTTP status, body: dict is sent as JSON, bytes as they are, float = sleep seconds)
ANSWERS: dict[str, tuple[int, object]] = {
    "ok": (200, vector("0.01")),
    "two_series": (200, vector("0.01", "0.2")),
    "empty": (200, vector()),
    "scalar": (
        200,
        {"status": "success", "data": {"resultType": "scalar", "result": [1.7e9, "3"]}},
    ),
    "matrix": (
        200,
        {"status": "success", "data": {"resultType": "matrix", "result": [{"values": []}]}},
    ),
    "nan": (200, vector("NaN")),
    "inf": (200, vector("+Inf")),
    "bad_query": (
        400,
        {"status": "error", "errorType": "bad_data", "error": 'parse error: unexpected "}"'},
    ),
    "unavailable": (503, b"<html>maintenance</html>"),
    "not_json": (200, b"hello"),
    "error_in_200": (200, {"status": "error", "errorType": "timeout", "error": "query timed out"}),
    "slow": (200, 1.0),
    'sum(rate(x{job="a b"}[5m])) / 2': (200, vector("1")),
}


class FakePrometheus(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        url = urllib.parse.urlparse(self.path)
        if url.path != "/api/v1/query":
            self.send_error(404)
            return
        query = urllib.parse.parse_qs(url.query)["query"][0]
        status, body = ANSWERS.get(query, (200, vector()))
        if isinstance(body, float):
            time.sleep(body)
            body = vector("0")
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format, *args):  # noqa: A002
        return


@pytest.fixture(scope="module")
def prometheus_fake():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run(url: str, query: str, condition: str = "< 0.05", timeout_s: float = 5.0):
    return PromQLClient(url, timeout_s=timeout_s).evaluate(PromQLCheck("q", query, condition))


def test_a_series_meeting_the_condition_passes(prometheus_fake):
    c = run(prometheus_fake, "ok")
    assert (c.name, c.state, c.value, c.threshold) == ("promql_q", "pass", 0.01, 0.05)


def test_every_series_must_meet_it_and_the_worst_is_reported(prometheus_fake):
    c = run(prometheus_fake, "two_series")
    assert (c.state, c.value) == ("fail", 0.2)
    assert "1 of 2 series fail < 0.05" in c.detail
    assert run(prometheus_fake, "two_series", "> 0").value == 0.01  # all pass: closest to failing


def test_scalar_results_are_read(prometheus_fake):
    assert run(prometheus_fake, "scalar", ">= 3").state == "pass"
    assert run(prometheus_fake, "scalar", "!= 3").state == "fail"


def test_infinity_is_a_value_and_can_fail(prometheus_fake):
    c = run(prometheus_fake, "inf")
    assert c.state == "fail" and c.value == math.inf
    assert c.to_dict()["value"] is None  # strict JSON


@pytest.mark.parametrize(
    "query,reason",
    [
        ("empty", "no data for 'empty'"),
        ("nan", "returned NaN"),
        ("matrix", "'matrix' result"),
        ("bad_query", 'HTTP 400 from Prometheus: bad_data: parse error: unexpected "}"'),
        ("unavailable", "HTTP 503 from Prometheus: no error message"),
        ("not_json", "not JSON"),
        ("error_in_200", "query failed: timeout: query timed out"),
    ],
)
def test_no_data_and_errors_are_inconclusive_with_the_reason(prometheus_fake, query, reason):
    c = run(prometheus_fake, query)
    assert c.passed is None and c.state == "inconclusive"
    assert reason in c.detail


def test_a_slow_server_is_inconclusive_not_a_hang(prometheus_fake):
    start = time.monotonic()
    c = run(prometheus_fake, "slow", timeout_s=0.2)
    assert c.state == "inconclusive" and "unreachable" in c.detail
    assert time.monotonic() - start < 1.0


def test_a_closed_port_is_inconclusive():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = run(f"http://127.0.0.1:{port}", "ok", timeout_s=1.0)
    assert c.state == "inconclusive" and f"unreachable at http://127.0.0.1:{port}" in c.detail


def test_queries_are_url_encoded(prometheus_fake):
    assert run(prometheus_fake, 'sum(rate(x{job="a b"}[5m])) / 2', "== 1").state == "pass"


def test_gate_with_a_real_client_against_the_fake(prometheus_fake):
    cfg = GateConfig(
        min_events=100,
        drift_quiet_events=0,
        prometheus_url=prometheus_fake + "/",
        promql=(PromQLCheck("errors", "ok", "< 0.05"), PromQLCheck("latency", "empty", "< 2")),
    )
    g = Gate(cfg, clock=lambda: 0.0)
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 0.3, 2000)
    g.observe(base, base - 0.2)
    d = g.decide(holdout=HoldoutResult(0.5, 0.4), param_distance=0.0)
    assert d.check("promql_errors").state == "pass"
    assert d.check("promql_latency").state == "inconclusive"
    assert d.action == "hold"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("< 0.05", ("<", 0.05)),
        ("<=1", ("<=", 1.0)),
        (" >= -2e-3 ", (">=", -0.002)),
        ("== 0", ("==", 0.0)),
        ("!= .5", ("!=", 0.5)),
        ("> 10.", (">", 10.0)),
    ],
)
def test_conditions_parse(text, expected):
    assert parse_condition(text) == expected


@pytest.mark.parametrize("text", ["0.05", "< ", "<< 1", "=< 1", "< 1 or > 2", "< abc", "", "< nan"])
def test_bad_conditions_are_refused_with_the_accepted_form(text):
    with pytest.raises(ValueError, match=r"must look like '< 0.05'"):
        PromQLCheck("q", "up", text)


@pytest.mark.parametrize(
    "kwargs,message",
    [({"name": "Error-Rate"}, "name must match"), ({"query": "  "}, "non-empty query")],
)
def test_bad_checks_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromQLCheck(**{"name": "q", "query": "up", "condition": "< 1", **kwargs})


def test_client_refuses_non_http_urls():
    with pytest.raises(ValueError, match="http"):
        PromQLClient("file:///etc/passwd")


def test_parse_response_rejects_malformed_vectors():
    body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [{}]}})
    assert "malformed vector" in (parse_response(body.encode()).error or "")
