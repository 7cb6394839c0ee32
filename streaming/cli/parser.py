"""The ``feedstep`` argument parser: one sub-command per verb."""

from __future__ import annotations

import argparse
import logging

from streaming.cli.demo import cmd_demo
from streaming.cli.produce import cmd_produce
from streaming.cli.record import cmd_record
from streaming.cli.replay import cmd_replay
from streaming.cli.run import cmd_run
from streaming.cli.serve import cmd_serve
from streaming.cli.store import cmd_promote, cmd_rollback, cmd_status

log = logging.getLogger("feedstep")


# -- parser -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="feedstep",
        description="Online-learning sidecar: Kafka feedback in, one regularized step per "
        "micro-batch, Prometheus metrics out.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="json: one object per line (time, level, logger, message, fields) for collectors",
    )
    sub = parser.add_subparsers(dest="verb", required=True)

    demo = sub.add_parser(
        "demo", help="run the pipeline and the promotion gate on a built-in simulated stream"
    )
    demo.add_argument(
        "--events",
        type=int,
        default=None,
        help="simulated events (default 2500; 160 for kto, dpo and sft)",
    )
    demo.add_argument("--metrics-port", type=int, default=None, help="serve /metrics while running")
    demo.add_argument(
        "--model", default=None, help="minilm (default), smollm2, tiny, tiny-causal, or a folder"
    )
    demo.add_argument(
        "--objective", default=None, choices=("reward", "kto", "dpo", "sft"), help="default reward"
    )
    demo.add_argument(
        "--trainable", default=None, choices=("full", "head", "bias", "lora"), help="default full"
    )
    demo.add_argument("--batch-size", type=int, default=None)
    demo.add_argument("--lr", type=float, default=None, help="learning rate (demo default 5e-5)")
    demo.add_argument("--noise", type=float, default=0.1, help="share of flipped labels")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
    demo.add_argument(
        "--store",
        default=None,
        help="model store to publish into (default: a new temporary directory, kept)",
    )
    demo.add_argument(
        "--gate-min-events", type=int, default=None, help="paired events before a promotion"
    )
    demo.add_argument("--gate-alpha", type=float, default=None, help="false-promotion bound")
    demo.add_argument(
        "--drift-quiet-events", type=int, default=None, help="events without a drift alarm"
    )
    demo.add_argument("--config", default=None, help="TOML or YAML config file")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="run the sidecar against a Kafka topic")
    run.add_argument("--config", default=None, help="TOML or YAML config file ($FEEDSTEP_CONFIG)")
    run.add_argument("--bootstrap-servers", default=None, help="host:port[,host:port]")
    run.add_argument("--topic", default=None, help="feedback topic (default 'feedback')")
    run.add_argument("--group-id", default=None, help="consumer group (default 'feedstep')")
    run.add_argument("--model", default=None, help="minilm (default), tiny, or a local folder")
    run.add_argument("--batch-size", type=int, default=None, help="events per step (default 16)")
    run.add_argument("--max-wait-ms", type=int, default=None, help="close a partial batch after")
    run.add_argument("--metrics-port", type=int, default=None, help="default 9108; 0 = any free")
    run.add_argument("--stop-after-events", type=int, default=None, help="end after N records")
    run.add_argument("--stop-when-idle-s", type=float, default=None, help="end after S idle secs")
    run.add_argument("--device", default=None)
    run.add_argument("--lr", type=float, default=None)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument(
        "--store",
        default=None,
        help="model store; its LIVE version is the starting model "
        "when there is one (default ./feedstep-store)",
    )
    run.add_argument(
        "--distributed",
        action="store_true",
        help="one of several ranks training one model in lockstep (launch with torchrun)",
    )
    run.set_defaults(func=cmd_run)

    serve = sub.add_parser(
        "serve",
        help="a follower: serve POST /v1/score from the model store's LIVE version, train nothing",
    )
    serve.add_argument(
        "--store",
        default=None,
        help="the model store the trainer publishes into (shared, may be read-only; default "
        "./feedstep-store)",
    )
    serve.add_argument("--config", default=None, help="TOML or YAML config file ($FEEDSTEP_CONFIG)")
    serve.add_argument("--bootstrap-servers", default=None, help="host:port[,host:port]")
    serve.add_argument(
        "--updates-topic", default=None, help="model-updates topic (default feedstep.model-updates)"
    )
    serve.add_argument(
        "--follow-poll-s", type=float, default=None, help="read the store's LIVE every S s (2)"
    )
    serve.add_argument("--metrics-port", type=int, default=None, help="default 9108; 0 = any free")
    serve.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
    serve.set_defaults(func=cmd_serve)

    produce = sub.add_parser(
        "produce", help="write events or a recording (JSONL) to a topic, keyed, paced"
    )
    produce.add_argument(
        "file", help="JSONL: one event per line, or a recording from `feedstep record` (.gz ok)"
    )
    produce.add_argument("--topic", required=True)
    produce.add_argument("--bootstrap-servers", default=None)
    produce.add_argument(
        "--key-field",
        default="conversation_id",
        help="event field used as key for plain events (a recording keeps its keys)",
    )
    pace = produce.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=None, help="events per second (fixed pace)")
    pace.add_argument(
        "--speed",
        type=float,
        default=None,
        help="replay a recording's timestamp gaps divided by FACTOR (2 = twice as fast)",
    )
    produce.add_argument("--config", default=None)
    produce.set_defaults(func=cmd_produce)

    def range_flags(p: argparse.ArgumentParser) -> None:
        start = p.add_mutually_exclusive_group()
        start.add_argument(
            "--from-offset", type=int, default=None, help="start offset in every partition"
        )
        start.add_argument(
            "--from-time", default=None, help="start at this time (RFC 3339 or epoch ms)"
        )
        p.add_argument(
            "--to-time",
            default=None,
            help="stop before the first record at or after this time (default: the end offsets "
            "at start)",
        )
        p.add_argument("--partitions", default=None, help="e.g. 0,2 (default: all)")
        p.add_argument("--bootstrap-servers", default=None)
        p.add_argument("--config", default=None)

    record = sub.add_parser("record", help="dump a topic range to JSONL (no group, no commits)")
    record.add_argument("--topic", required=True)
    record.add_argument("--out", required=True, help="FILE.jsonl (.gz compresses)")
    record.add_argument(
        "--idle-timeout-s", type=float, default=60.0, help="fail after this long without records"
    )
    range_flags(record)
    record.set_defaults(func=cmd_record)

    replay = sub.add_parser(
        "replay", help="dry-run the learner, monitors and gate over a recording; write a report"
    )
    replay.add_argument(
        "source", help="a JSONL file (events or a recording), or kafka:TOPIC for a topic range"
    )
    replay.add_argument("--report", required=True, help="folder for report.json and the plots")
    range_flags(replay)
    replay.add_argument("--model", default=None, help="minilm (default), tiny, or a local folder")
    replay.add_argument(
        "--store",
        default=None,
        help="start from this model store's LIVE version (read only; default: --model)",
    )
    replay.add_argument("--batch-size", type=int, default=None)
    replay.add_argument("--lr", type=float, default=None)
    replay.add_argument("--seed", type=int, default=None)
    replay.add_argument("--device", default=None)
    replay.add_argument("--gate-min-events", type=int, default=None)
    replay.add_argument("--gate-min-effect", type=float, default=None)
    replay.add_argument("--gate-alpha", type=float, default=None)
    replay.add_argument("--drift-quiet-events", type=int, default=None)
    replay.add_argument("--stop-after-events", type=int, default=None, help="replay N at most")
    replay.set_defaults(func=cmd_replay)

    store_help = "model store directory (default: the config's store, ./feedstep-store)"
    status = sub.add_parser("status", help="show the model store: LIVE, versions, switches")
    status.add_argument("--store", default=None, help=store_help)
    status.add_argument("--config", default=None)
    status.add_argument("--history", type=int, default=10, help="switches to show (default 10)")
    status.add_argument(
        "--verify", action="store_true", help="check every version's sha256 (exit 1 if corrupt)"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(func=cmd_status)

    promote = sub.add_parser(
        "promote", help="make a version LIVE by hand (recorded as 'manual' in the history)"
    )
    promote.add_argument("--version", type=int, required=True, help="the version to make LIVE")
    promote.add_argument("--store", default=None, help=store_help)
    promote.add_argument("--config", default=None)
    promote.add_argument("--reason", default="promoted by hand", help="why, for the audit trail")
    promote.add_argument("--actor", default=None, help="who (default cli:<user name>)")
    promote.set_defaults(func=cmd_promote)

    rollback = sub.add_parser(
        "rollback", help="put back the version that was LIVE before the last promotion"
    )
    rollback.add_argument("--store", default=None, help=store_help)
    rollback.add_argument("--config", default=None)
    rollback.add_argument("--reason", default="rolled back by hand", help="why, for the audit")
    rollback.add_argument("--actor", default=None, help="who (default cli:<user name>)")
    rollback.set_defaults(func=cmd_rollback)
    return parser
