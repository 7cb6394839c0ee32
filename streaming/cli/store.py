"""``feedstep status``, ``promote`` and ``rollback``: read and switch the model store."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
from typing import Any

log = logging.getLogger("feedstep")


def _actor(args: argparse.Namespace) -> str:
    if args.actor:
        return str(args.actor)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        user = os.environ.get("HOSTNAME", "unknown")
    return f"cli:{user}"


def _open_store(args: argparse.Namespace) -> Any:
    from learner.store import ModelStore
    from streaming.config import load_config

    root = args.store or load_config(args.config).promotion.store
    return ModelStore(root, create=False)


def _fmt_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in sorted(metrics.items()):
        shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value)
        parts.append(f"{key}={shown}")
    return " ".join(parts) or "-"


def _fmt_switch(s: Any) -> str:
    origin = "none" if s.from_version is None else str(s.from_version)
    return (
        f"  #{s.seq:<3} {s.at}  {s.action:<8} {origin:>4} -> {s.to_version:<4} "
        f"by {s.actor}: {s.reason}"
    )


def cmd_status(args: argparse.Namespace) -> int:
    """Print the LIVE version, every version, and the last switches of a model store."""
    store = _open_store(args)
    live = store.live_version()
    versions = store.versions()
    history = store.history()
    reports = {v.version: store.verify(v.version) for v in versions} if args.verify else {}
    shown = history[len(history) - args.history :] if args.history > 0 else []
    if args.json:
        print(
            json.dumps(
                {
                    "store": str(store.root),
                    "live": live,
                    "versions": [
                        {
                            "version": v.version,
                            "parent": v.parent,
                            "created_at": v.created_at,
                            "kind": v.kind,
                            "model_type": v.model_type,
                            "objective": v.objective,
                            "metrics": v.metrics,
                            "reason": v.reason,
                            "path": str(v.path),
                            **(
                                {"problems": list(reports[v.version].problems)}
                                if v.version in reports
                                else {}
                            ),
                        }
                        for v in versions
                    ],
                    "history": [s.to_json() for s in shown],
                },
                indent=2,
            )
        )
    else:
        print(f"store {store.root}")
        if live is None:
            print("LIVE: none (make a version live with `feedstep promote --version N`)")
        else:
            print(f"LIVE: version {live}")
        if history and history[-1].to_version != live:
            print(
                f"warning: the last recorded switch (#{history[-1].seq}) went to version "
                f"{history[-1].to_version} but LIVE is {live}: a switch was interrupted; the next "
                "promote or rollback completes it"
            )
        print(f"versions: {len(versions) or 'none'}")
        if versions:
            check = "  check  " if args.verify else "  "
            print(
                f"    {'version':>7}  {'parent':>6}  {'created_at':<24}  {'objective':<9}"
                f"  {'kind':<4}{check}metrics / reason"
            )
        for v in reversed(versions):
            mark = "*" if v.version == live else " "
            parent = "-" if v.parent is None else str(v.parent)
            state = ""
            if args.verify:
                state = "  ok     " if reports[v.version].ok else "  CORRUPT"
            print(
                f"  {mark} {v.version:>7}  {parent:>6}  {v.created_at:<24}  {v.objective:<9}"
                f"  {v.kind:<4}{state or '  '}{_fmt_metrics(v.metrics)} / {v.reason}"
            )
            for problem in reports[v.version].problems if args.verify else ():
                print(f"              {problem}")
        print(f"last switches: {len(shown)} of {len(history)}")
        for s in shown:
            print(_fmt_switch(s))
    return 1 if any(not r.ok for r in reports.values()) else 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Make a version live by hand (recorded as ``manual`` in the store's history)."""
    store = _open_store(args)
    switch = store.promote(args.version, reason=args.reason, actor=_actor(args), manual=True)
    print("LIVE:", _fmt_switch(switch).strip())
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Put back the version that was live before the last promotion."""
    store = _open_store(args)
    switch = store.rollback(reason=args.reason, actor=_actor(args))
    print("LIVE:", _fmt_switch(switch).strip())
    return 0
