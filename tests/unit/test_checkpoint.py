import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from learner.base import Example
from learner.checkpoint import CheckpointError, CheckpointManager
from learner.step import Learner, StepConfig
from tests.unit import resume_worker as recipe

ROOT = Path(__file__).resolve().parents[2]


def _close(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=atol, rtol=0), key


def test_resume_in_a_fresh_process_equals_uninterrupted_steps(tmp_path):
    k, m = 3, 4
    recipe.seed_everything()
    straight = recipe.build()
    seen = recipe.run(straight, 0, k + m)
    assert any(scale < 1 for _, scale in seen) and any(scale == 1 for _, scale in seen)

    recipe.seed_everything()
    learner = recipe.build()
    recipe.run(learner, 0, k)
    CheckpointManager(tmp_path / "ckpt").save(learner, extra={"offsets": {"feedback:0": 41}})
    recipe.run(learner, k, m)  # the same process carries on: its draws are the reference
    expected_draws = recipe.draws()
    _close(recipe.tensors(straight), recipe.tensors(learner))

    out = tmp_path / "resumed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [str(tmp_path / "ckpt"), str(k), str(m), str(out)]
    subprocess.run(
        [sys.executable, "-m", "tests.unit.resume_worker", *args], cwd=ROOT, env=env, check=True
    )
    facts = json.loads(Path(f"{out}.json").read_text())
    resumed = load_file(f"{out}.safetensors")
    _close(recipe.tensors(straight), resumed)
    assert facts["step"] == straight.steps == k + m
    assert facts["extra"] == {"offsets": {"feedback:0": 41}}
    assert [tuple(x) for x in facts["seen"]] == seen[k:]  # same rates (boost) and scales
    assert facts["draws"] == expected_draws


def test_lora_kto_resume_equals_uninterrupted_steps(tmp_path, tiny_causal_parts):
    from learner.objectives import KTOObjective

    make, tokenizer = tiny_causal_parts
    objective = KTOObjective(tokenizer, max_length=32)
    cfg = StepConfig(trainable="lora", lr=1e-2, lora_r=2, ewc_weight=10.0, l2sp_weight=0.1)
    examples = [
        Example("Boil an egg?", "Nine minutes.", target=1.0),
        Example("Boil an egg?", "Go away.", target=0.0),
        Example("Jet lag?", "Sleep early.", target=1.0),
        Example("Lisbon?", "No idea.", target=0.0),
    ]
    batches = [objective.collate(examples[i:] + examples[:i]) for i in range(4)]
    learner = Learner(make(0), objective, cfg)
    learner.step(batches[0])
    learner.rebase()  # a promotion: the live adapter (the anchor) is no longer the start
    learner.step(batches[1])
    CheckpointManager(tmp_path).save(learner)
    for batch in batches[2:]:
        learner.step(batch)
    fresh = Learner(make(0), objective, cfg)  # new random adapters: all must come from disk
    loaded = CheckpointManager(tmp_path).load_latest(fresh)
    assert loaded is not None and loaded.step == 2
    for batch in batches[2:]:
        fresh.step(batch)
    _close(recipe.tensors(learner), recipe.tensors(fresh))
    for mine, theirs in zip(learner.anchors, fresh.anchors, strict=True):
        assert torch.equal(mine, theirs)
    with torch.no_grad():  # the resumed baseline scores with the restored live adapter
        want = objective.model_values(learner.baseline, batches[0])
        got = objective.model_values(fresh.baseline, batches[0])
    assert torch.equal(got, want)


def _trained(tiny_parts, objective, examples, steps: int, directory: Path, keep: int = 3):
    learner = Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-3, ewc_weight=1.0))
    manager = CheckpointManager(directory, keep=keep)
    snapshots = {}
    batch = objective.collate(examples)
    for _ in range(steps):
        learner.step(batch)
        manager.save(learner, extra={"at": learner.steps})
        snapshots[learner.steps] = recipe.tensors(learner)
    return learner, manager, snapshots


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "flipped weights": lambda d: _flip_bytes(d / "weights.safetensors"),
    "truncated optimizer": lambda d: (d / "optimizer.safetensors").write_bytes(b"\x10\x00"),
    "missing fisher": lambda d: (d / "regularizers.safetensors").unlink(),
    "missing manifest": lambda d: (d / "manifest.json").unlink(),
    "garbled manifest": lambda d: (d / "manifest.json").write_text("{not json"),
}


@pytest.mark.parametrize("damage", sorted(CORRUPTIONS))
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(
    damage, tiny_parts, objective, examples, tmp_path, caplog
):
    _, manager, snapshots = _trained(tiny_parts, objective, examples, 3, tmp_path)
    newest = manager.checkpoints()[-1]
    CORRUPTIONS[damage](newest)
    fresh = Learner(tiny_parts[0](0), objective, StepConfig(lr=1e-3, ewc_weight=1.0))
    with caplog.at_level(logging.WARNING, logger="learner.checkpoint"):
        loaded = manager.load_latest(fresh)
    assert loaded is not None
    assert loaded.step == 2 and loaded.extra == {"at": 2}
    assert loaded.fell_back_from == (newest,) and len(loaded.problems) == 1
    assert newest.name in caplog.text and "corrupt" in caplog.text
    _close(snapshots[2], recipe.tensors(fresh), atol=0)


def test_all_checkpoints_corrupt_is_an_error(tiny_parts, objective, examples, tmp_path):
    learner, manager, _ = _trained(tiny_parts, objective, examples, 2, tmp_path)
    for path in manager.checkpoints():
        _flip_bytes(path / "weights.safetensors")
    with pytest.raises(CheckpointError, match="all 2 checkpoints"):
        manager.load_latest(learner)


def test_no_checkpoint_loads_nothing(tiny_parts, objective, tmp_path):
    learner = Learner(tiny_parts[0](0), objective, StepConfig())
    assert CheckpointManager(tmp_path / "none").load_latest(learner) is None


def test_keeps_the_last_k_and_leaves_no_temporaries(tiny_parts, objective, examples, tmp_path):
    _, manager, _ = _trained(tiny_parts, objective, examples, 5, tmp_path, keep=2)
    assert [p.name for p in manager.checkpoints()] == ["ckpt-000000000004", "ckpt-000000000005"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-000000000004",
        "ckpt-000000000005",
    ]


def test_saving_the_same_step_again_replaces_it(tiny_parts, objective, examples, tmp_path):
    learner, manager, _ = _trained(tiny_parts, objective, examples, 1, tmp_path)
    manager.save(learner, extra={"at": "again"})
    assert [p.name for p in manager.checkpoints()] == ["ckpt-000000000001"]
    loaded = manager.load_latest(learner)
    assert loaded is not None and loaded.extra == {"at": "again"}


def test_files_are_safetensors_or_json_never_pickle(tiny_parts, objective, examples, tmp_path):
    from safetensors.torch import load as st_load

    _, manager, _ = _trained(tiny_parts, objective, examples, 1, tmp_path)
    files = sorted(manager.checkpoints()[-1].iterdir())
    assert {f.name for f in files} >= {"weights.safetensors", "manifest.json", "extra.json"}
    for f in files:
        data = f.read_bytes()
        assert not data.startswith(b"\x80"), f"{f.name} looks like a pickle"
        if f.suffix == ".json":
            json.loads(data)
        else:
            assert f.suffix == ".safetensors"
            st_load(data)
    sources = "\n".join(p.read_text() for p in (ROOT / "learner").rglob("*.py"))
    assert "import pickle" not in sources and "torch.load(" not in sources


def test_a_checkpoint_for_another_trainable_mode_is_refused(
    tiny_parts, objective, examples, tmp_path
):
    _, manager, _ = _trained(tiny_parts, objective, examples, 1, tmp_path)
    head_only = Learner(tiny_parts[0](0), objective, StepConfig(trainable="head"))
    with pytest.raises(CheckpointError, match="other trainable parameters"):
        manager.load_latest(head_only)
    assert head_only.steps == 0


def test_extra_must_be_json(tiny_parts, objective, tmp_path):
    learner = Learner(tiny_parts[0](0), objective, StepConfig())
    with pytest.raises(ValueError, match="JSON"):
        CheckpointManager(tmp_path).save(learner, extra={"when": object()})
    assert CheckpointManager(tmp_path).checkpoints() == []
