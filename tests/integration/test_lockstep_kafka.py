"""Two ranks train one model in lockstep (torchrun, gloo) from a real broker's 4-partition topic.

One kill -9 trial, kept short: events arrive while both ranks step, one rank is killed, torchrun
restarts the group, every rank resumes from rank 0's checkpoint and the group drains the topic.
Then the group comes back with one rank, which takes over every partition from the checkpoint.
The check is the fault tests' (tests/integration/faultlib.py): the final checkpoint's ledger —
the union of every rank's — covers each offset once, its digest is that of exactly the valid
first-seen events produced, and the group's committed offsets are the topic's ends.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streaming.ingest.offsets import Ledger
from tests.integration.faultlib import (
    REPO,
    Feeder,
    committed_offsets,
    create_topic,
    final_checkpoint,
    sidecar_config,
    verify,
)

pytestmark = pytest.mark.integration

PARTITIONS = 4


def torchrun(config: Path, log: Path, restarts: int = 0, ranks: int = 2) -> subprocess.Popen[bytes]:
    """``feedstep run --distributed`` as ``ranks`` ranks on this machine; output to ``log``."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            str(ranks), "--max-restarts", str(restarts), "-m", "streaming.cli", "run",
            "--distributed", "--config", str(config)]  # fmt: skip
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def wait_for(log: Path, pattern: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text(errors="replace")):
            return
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} in {log} within {timeout}s:\n{log.read_text()[-3000:]}")


def workers(agent: subprocess.Popen[bytes]) -> list[int]:
    """The rank processes torchrun's agent started (its children, from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == agent.pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def test_a_rank_killed_with_sigkill_loses_and_repeats_nothing(
    kafka_bootstrap, topic_name, tmp_path
):
    create_topic(kafka_bootstrap, topic_name, PARTITIONS)
    store = tmp_path / "store"
    config = sidecar_config(
        tmp_path / "ranks.toml", kafka_bootstrap, topic_name, f"{topic_name}-g", store
    )
    log = tmp_path / "ranks.log"
    feeder = Feeder(kafka_bootstrap, topic_name, PARTITIONS, seed=5)
    feeder.start(rate=150.0)
    try:
        agent = torchrun(config, log, restarts=2)
        wait_for(log, r"steps=[1-9]", timeout=120)  # both ranks are stepping
        time.sleep(1.5)
        ranks = workers(agent)
        assert len(ranks) == 2, ranks
        os.kill(ranks[1], signal.SIGKILL)
        wait_for(log, r"rank \d restored checkpoint", timeout=180)  # the group restarted
    finally:
        produced = feeder.stop()
    assert agent.wait(timeout=240) == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert "rank 0 of 2" in text and "rank 1 of 2" in text
    assert "reading partitions [0, 2]" in text and "reading partitions [1, 3]" in text
    _, step, extra = final_checkpoint(store)
    assert extra["world"] == 2 and step > 0
    assert verify([Ledger.from_json(extra["ledger"])], produced) == []
    # every rank committed its own partitions' offsets once the last checkpoint was written
    group = f"{topic_name}-g"
    assert committed_offsets(kafka_bootstrap, group, topic_name, PARTITIONS) == produced.ends()

    # The group comes back with one rank: it reads every partition now, from the checkpoint.
    more = Feeder(kafka_bootstrap, topic_name, PARTITIONS, seed=6)
    more.produce(60)
    produced.messages += more.stop().messages
    alone = torchrun(config, tmp_path / "one-rank.log", ranks=1)
    assert alone.wait(timeout=240) == 0, (tmp_path / "one-rank.log").read_text()[-4000:]
    assert "reading partitions [0, 1, 2, 3]" in (tmp_path / "one-rank.log").read_text()
    _, _, extra = final_checkpoint(store)
    assert extra["world"] == 1
    assert verify([Ledger.from_json(extra["ledger"])], produced) == []
