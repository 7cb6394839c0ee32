"""``feedstep serve``: a follower that serves the model store's LIVE version; it trains nothing."""

from __future__ import annotations

import argparse
import logging

from streaming.cli.wiring import install_signals, serve_metrics

log = logging.getLogger("feedstep")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve ``POST /v1/score`` (and /metrics, /healthz, /readyz) from the store's LIVE version."""
    from monitors.metrics import FollowerMetrics
    from monitors.server import HealthState
    from streaming.config import load_config
    from streaming.kafka.updates import UpdatesListener
    from streaming.serve import Follower, FollowSettings, score_limits

    overrides = {
        key: getattr(args, key)
        for key in (
            "store",
            "bootstrap_servers",
            "updates_topic",
            "follow_poll_s",
            "metrics_port",
            "device",
        )
    }
    config = load_config(args.config, overrides)
    poll_s = config.follow.poll_s
    metrics = FollowerMetrics()
    # The loop beats at least every poll_s (and around each load), so a wedged follower is
    # noticed without a long poll period reading as a stall.
    health = HealthState(stall_after_s=max(300.0, 3 * poll_s))
    settings = FollowSettings(poll_s, config.learner.max_length, config.learner.device)
    limits = score_limits(config)
    follower = Follower(config.promotion.store, metrics, health, settings, limits)
    install_signals(follower, "finishing a load in progress, then stopping")
    server = serve_metrics(metrics, health, config.metrics.port, config.metrics.host)
    server.set_score(follower, max_body_bytes=limits.max_body_bytes, observe=metrics.observe_score)
    listener = None
    try:
        if config.follow.updates:
            topic = config.promotion.updates_topic
            listener = UpdatesListener(config.kafka, topic, follower.notify).start()
        log.info(
            "following the model store %s: LIVE read every %g s%s; POST /v1/score on port %d",
            config.promotion.store,
            poll_s,
            f" and at once on each message of {config.promotion.updates_topic}"
            if listener is not None
            else " (follow_updates = false: no Kafka)",
            server.port,
        )
        follower.run()
    finally:
        if listener is not None:
            listener.stop()
        server.stop()
    print(
        f"served_version={follower.version} switches={follower.switches} "
        f"refused={follower.refusals}"
    )
    return 0
