"""Checkpoints in the loop: offsets committed only with a checkpoint, and a restart resumes
exactly where the checkpoint left off (same weights as never stopping)."""

from __future__ import annotations

import torch

from learner.checkpoint import CheckpointManager
from learner.step import Learner, StepConfig
from monitors.metrics import Metrics
from streaming.runtime.pipeline import Pipeline, PipelineSettings
from streaming.testing import MemorySink, MemorySource
from streaming.testing.simulate import SimulatedFeedback

VALUES = list(SimulatedFeedback(seed=8).payloads(48))


def _learner(tiny_parts, objective):
    return Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-3))


def _run(learner, source, ckpt, stop_after=None):
    settings = PipelineSettings(
        batch_size=8, checkpoint_every_steps=2, stop_after_events=stop_after
    )
    pipe = Pipeline(source, MemorySink(), learner, Metrics(), settings, checkpoints=ckpt)
    restored = pipe.restore()
    return pipe, restored, pipe.run()


def test_commits_follow_checkpoints_and_restart_is_effectively_once(
    tiny_parts, objective, tmp_path
):
    ckpt = CheckpointManager(tmp_path / "ckpt", keep=2)
    first = MemorySource(VALUES)
    _, restored, summary = _run(_learner(tiny_parts, objective), first, ckpt, stop_after=24)
    assert restored is None and summary.trained_examples == 24
    # Every commit is a checkpoint's offsets: whole batches only, the last at shutdown.
    commits = [dict(c)[("feedback", 0)] for c in first.commit_log]
    assert commits and commits[-1] == 24 and all(c % 8 == 0 for c in commits)
    assert len(ckpt.checkpoints()) >= 1

    # A new process: fresh learner and source, same topic; it resumes from the checkpoint.
    second = MemorySource(VALUES)
    resumed = _learner(tiny_parts, objective)
    _, restored, summary = _run(resumed, second, ckpt)
    assert restored == 3
    assert summary.consumed == 24 and summary.trained_examples == 24  # nothing twice, none lost
    assert second.committed() == {("feedback", 0): 48}

    straight = _learner(tiny_parts, objective)
    _run(straight, MemorySource(VALUES), None)
    for (name, a), b in zip(
        resumed.candidate.state_dict().items(),
        straight.candidate.state_dict().values(),
        strict=True,
    ):
        assert torch.allclose(a, b, atol=1e-6), name
