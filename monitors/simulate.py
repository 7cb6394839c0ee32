"""Seeded synthetic streams for the monitors, and a script that prints their measured behaviour.

Everything here is vectorized numpy, so hundreds of simulated runs take well under a second.
The tests use these generators with fixed seeds; ``python -m monitors.simulate`` prints the
numbers the README quotes (false-promotion rates, power, detection delays).

Paired losses imitate a binary reward model scored by log-loss: each event has a difficulty
(the logit a perfect model would give the observed label); each model adds its own noise to
that logit and pays ``log(1 + exp(-logit))``. With equal noise the two models are exchangeable,
so the paired difference has mean exactly 0 (an A/A test) while being skewed and heavy-tailed
like real log-loss differences. ``effect`` then adds a known constant to the baseline's losses,
so the true mean difference is exactly ``effect``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import numpy as np


def paired_losses(
    rng: np.random.Generator,
    runs: int,
    events: int,
    effect: float = 0.0,
    noise: float = 0.8,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-event (baseline, candidate) log-losses, shape ``(runs, events)`` each.

    Args:
        rng: the seeded generator.
        runs: independent simulated runs.
        events: events per run.
        effect: true mean of ``baseline - candidate`` (> 0: the candidate is better).
        noise: standard deviation of each model's logit noise.

    Example:
        >>> b, c = paired_losses(np.random.default_rng(0), runs=2, events=3)
        >>> b.shape, c.shape
        ((2, 3), (2, 3))
    """
    difficulty = rng.normal(1.0, 1.5, size=(runs, events))
    baseline = np.logaddexp(0.0, -(difficulty + rng.normal(0.0, noise, size=(runs, events))))
    candidate = np.logaddexp(0.0, -(difficulty + rng.normal(0.0, noise, size=(runs, events))))
    return baseline + effect, candidate


def error_stream(
    rng: np.random.Generator, before: int, after: int, rate_before: float, rate_after: float
) -> np.ndarray:
    """0/1 error flags: ``before`` events at one error rate, then ``after`` at another."""
    return np.concatenate(
        [rng.random(before) < rate_before, rng.random(after) < rate_after]
    ).astype(np.float64)


def binomial_quantile(n: int, p: float, q: float) -> int:
    """Smallest k with P(Binomial(n, p) <= k) >= q.

    The margin for sampling error when checking a rate on n simulated runs: with a true rate
    of p, more than this many successes happens with probability below 1 - q.

    Example:
        >>> binomial_quantile(200, 0.05, 0.99)
        18
    """
    total = 0.0
    for k in range(n + 1):
        total += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if total >= q:
            return k
    return n


def naive_z_promotions(
    baseline: np.ndarray,
    candidate: np.ndarray,
    looks: Sequence[int],
    null_mean: float = 0.0,
    alpha: float = 0.05,
) -> np.ndarray:
    """For each run, True if a fixed-sample one-sided z-test was significant at ANY look.

    This is the "peeking" mistake the sequential test avoids: each look is a valid test on
    its own, but stopping at the first significant look is not.
    """
    from statistics import NormalDist

    z_crit = NormalDist().inv_cdf(1.0 - alpha)
    d = baseline - candidate
    significant = np.zeros(d.shape[0], dtype=bool)
    for n in looks:
        head = d[:, :n]
        z = (head.mean(axis=1) - null_mean) * math.sqrt(n) / head.std(axis=1, ddof=1)
        significant |= z > z_crit
    return significant


def promotion_events(
    seed: int, runs: int, events: int, batch: int, effect: float, min_effect: float, alpha: float
) -> np.ndarray:
    """Events until the real :class:`~monitors.gate.Gate` promotes in each run (-1: never)."""
    from monitors.gate import Gate, GateConfig, HoldoutResult

    config = GateConfig(min_events=batch, min_effect=min_effect, alpha=alpha, drift_quiet_events=0)
    baseline, candidate = paired_losses(np.random.default_rng(seed), runs, events, effect)
    holdout = HoldoutResult(baseline_loss=0.5, candidate_loss=0.5)
    promoted_at = np.full(runs, -1)
    for r in range(runs):
        gate = Gate(config, clock=lambda: 0.0)
        for start in range(0, events, batch):
            gate.observe(baseline[r, start : start + batch], candidate[r, start : start + batch])
            if gate.decide(holdout=holdout, param_distance=0.0).action == "promote":
                promoted_at[r] = start + batch
                break
    return promoted_at


def rollback_events(
    seed: int,
    runs: int,
    events: int,
    batch: int,
    degradation: float,
    reference: int = 2000,
    alpha: float = 0.01,
) -> np.ndarray:
    """Events after a promotion until the real rollback watch rolls back (-1: never).

    The previous version leaves ``reference`` per-event log-losses; the promoted one then
    scores ``events`` fresh events with losses ``degradation`` higher on average.
    """
    from monitors.rollback import RollbackConfig, RollbackWatch

    before, _ = paired_losses(np.random.default_rng(seed), runs, reference)
    after, _ = paired_losses(np.random.default_rng([seed, 1]), runs, events, effect=degradation)
    config = RollbackConfig(alpha=alpha, reference_size=reference, watch_events=events + 1)
    rolled_back_at = np.full(runs, -1)
    for r in range(runs):
        watch = RollbackWatch(config, clock=lambda: 0.0)
        watch.observe(before[r])
        watch.promoted("v2", previous_version="v1")
        for start in range(0, events, batch):
            watch.observe(after[r, start : start + batch])
            if watch.decide().action == "rollback":
                rolled_back_at[r] = start + batch
                break
    return rolled_back_at


def main(argv: Sequence[str] | None = None) -> None:
    """Print the measured false-promotion rate, power and drift-detection delay."""
    from monitors.drift import DriftMonitor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--seed", type=int, default=2024)
    args = p.parse_args(argv)
    t0 = time.perf_counter()

    # A/A, 30 looks of 100 events, alpha = 0.05: naive z at every look vs the gate's mSPRT.
    b, c = paired_losses(np.random.default_rng(args.seed), args.runs, 3000)
    naive = naive_z_promotions(b, c, looks=range(100, 3001, 100))
    gate = promotion_events(args.seed, args.runs, 3000, 100, effect=0.0, min_effect=0.0, alpha=0.05)
    print(
        f"A/A, 30 looks x 100 events, alpha 0.05, {args.runs} runs (seed {args.seed}): "
        f"naive z promoted {naive.mean():.1%}, gate (mSPRT) promoted {(gate >= 0).mean():.1%}"
    )
    long = promotion_events(args.seed + 1, args.runs, 20_000, 64, 0.0, 0.0, 0.05)
    print(f"A/A, every batch of 64 up to 20,000 events: gate promoted {(long >= 0).mean():.1%}")
    edge = promotion_events(args.seed + 2, args.runs, 20_000, 64, 0.02, 0.02, 0.05)
    print(f"true effect = min_effect = 0.02, 20,000 events: promoted {(edge >= 0).mean():.1%}")
    power = promotion_events(args.seed + 3, args.runs, 20_000, 64, 0.04, 0.02, 0.05)
    done = power[power >= 0]
    print(
        f"true effect = 2 x min_effect = 0.04: promoted {(power >= 0).mean():.1%} within 20,000; "
        f"events to promotion median {np.median(done):.0f}, 95th pct {np.percentile(done, 95):.0f}"
    )

    healthy = rollback_events(args.seed + 4, args.runs, 5_000, 100, degradation=0.0)
    degraded = rollback_events(args.seed + 5, args.runs, 10_000, 100, degradation=0.1)
    hit = degraded[degraded >= 0]
    print(
        f"rollback watch, alpha 0.01: healthy promotion rolled back in "
        f"{(healthy >= 0).mean():.1%} of runs (5,000 events); degraded by 0.1 rolled back in "
        f"{(degraded >= 0).mean():.1%} within 10,000 (median {np.median(hit):.0f} events)"
    )

    # ADWIN (feedstep defaults) on an error rate jumping 0.2 -> 0.4 after 20,000 events.
    delays, false_alarms = [], 0
    for s in range(args.runs // 4):
        x = error_stream(np.random.default_rng(args.seed + 10 + s), 20_000, 2_000, 0.2, 0.4)
        mon = DriftMonitor("candidate_error", kind="error")
        alarms = mon.update_many(x)
        false_alarms += sum(a.index < 20_000 for a in alarms)
        after = [a.index - 20_000 for a in alarms if a.index >= 20_000]
        delays.append(after[0] if after else -1)
    d = np.array(delays)
    print(
        f"ADWIN, error rate 0.2 -> 0.4 after 20,000 events, {len(d)} runs: delay median "
        f"{np.median(d[d >= 0]):.0f}, max {d.max()}, missed {(d < 0).sum()}, "
        f"false alarms before the change {false_alarms}"
    )
    print(f"({time.perf_counter() - t0:.1f}s)")


if __name__ == "__main__":
    main()
