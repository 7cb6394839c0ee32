import json
import subprocess
import sys

SCRIPT = """
import logging
from streaming.cli.logs import setup_logging
setup_logging(False, "json")
log = logging.getLogger("feedstep")
log.info("steps=%d", 3, extra={"topic": "feedback", "partition": 2})
log.debug("not shown at info")
try:
    raise ValueError("boom")
except ValueError:
    log.exception("step failed")
"""


def test_json_log_format_is_one_object_per_line_with_fields():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [(x["level"], x["logger"], x["message"]) for x in lines] == [
        ("INFO", "feedstep", "steps=3"),
        ("ERROR", "feedstep", "step failed"),
    ]
    assert lines[0]["fields"] == {"topic": "feedback", "partition": 2}
    assert lines[0]["time"].endswith("Z") and "T" in lines[0]["time"]
    assert "ValueError: boom" in lines[1]["exception"]


def test_the_parser_offers_text_and_json_logs():
    from streaming.cli.parser import build_parser

    parser = build_parser()
    assert parser.parse_args(["--log-format", "json", "status"]).log_format == "json"
    assert parser.parse_args(["status"]).log_format == "text"
