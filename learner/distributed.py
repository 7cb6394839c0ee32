"""One candidate trained by several processes in lockstep: torch.distributed, launched by torchrun.

Each process (a *rank*) reads its own Kafka partitions and forms its own micro-batches; a step is
a **round** that every rank takes together:

1. a small all-reduce says how many ranks hold a batch, whether a rank asks for a checkpoint or
   a stop, and whether rank 0 switched models (promotion, rollback, a drift boost) since the
   last round; a round in which no rank holds a batch makes no step;
2. after a switch, rank 0's trainable weights, anchors and schedule are broadcast, so every
   rank applies the same switch before the step;
3. every rank computes its gradient of ``Σ wᵢ·lossᵢ`` over its own batch (zero, with weight
   zero, when it has none); one all-reduce sums gradients and weights, and each rank divides
   by the total weight: the gradient of the weighted mean loss over the union of the batches.
   Norm, clipping, the regularizers' pulls and the AdamW step then run on identical numbers on
   every rank, so the candidates stay bit-identical (gloo and NCCL hand every rank the same
   reduced bits);
4. the round's paired outcomes (both models' losses, scores, correctness and event times) are
   gathered, so rank 0's monitors and gate see the evidence of every rank.

Two process groups: ``train`` for the rounds (the training thread; NCCL on GPUs, gloo on CPUs)
and ``control`` (gloo) for what the loop thread exchanges at checkpoints and at start: each
group is used by one thread only, so collectives never interleave.

Example:
    >>> partitions_of(rank=1, world=2, partitions=[0, 1, 2, 3])
    [1, 3]
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from learner.base import ObjectiveOutput

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun sets for every worker; ``--distributed`` needs all of them."""

_PROMOTE, _RESET = 1.0, 2.0  # what rank 0 did since the last round (see Round.switch)


def partitions_of(rank: int, world: int, partitions: Sequence[int]) -> list[int]:
    """The partitions rank ``rank`` of ``world`` reads: every ``world``-th, from ``rank``.

    A function of the rank and the world size only, so a group restarted with another size
    (torchrun's elastic restart) re-derives who reads what, and no Kafka rebalance can move a
    partition in the middle of a step.
    """
    return [p for i, p in enumerate(sorted(partitions)) if i % world == rank]


@dataclass(frozen=True, slots=True)
class Round:
    """What every rank learned from one round's control all-reduce.

    Attributes:
        batches: how many ranks hold a batch (0: no step this round).
        checkpoint: some rank asked for a checkpoint after this round.
        stop: some rank was asked to stop, or every rank is idle and wants to.
        switch: rank 0 changed its models since the last round (its state is broadcast).
        reset: that change cleared the optimizer's moments (a rollback).
    """

    batches: int
    checkpoint: bool
    stop: bool
    switch: bool
    reset: bool


class Lockstep:
    """The collectives of a lockstep run, on an initialised default process group.

    Args:
        rank, world: this process's rank and the number of ranks.
        device: where the training tensors live (the learner's device).
        control: the gloo group of the loop thread (None: a new one).
    """

    def __init__(
        self, rank: int, world: int, device: torch.device | str = "cpu", control: Any = None
    ) -> None:
        self.rank = rank
        self.world = world
        self.device = torch.device(device)
        self.control: Any = control if control is not None else dist.new_group(backend="gloo")
        self._flat: torch.Tensor | None = None
        self.reduced_bytes = 0  # of the last gradient all-reduce
        self.reduced_bytes_total = 0
        self.reduce_seconds = 0.0  # spent in gradient all-reduces so far (bench/lockstep.py)

    @classmethod
    def from_env(cls, device: torch.device | str = "cpu", timeout_s: float = 600.0) -> Lockstep:
        """Join the group torchrun started (its environment variables say where).

        Raises:
            ValueError: the process was not started by torchrun (says how to launch it).
        """
        missing = [name for name in ENV if name not in os.environ]
        if missing:
            raise ValueError(
                f"--distributed needs torchrun's environment, but {', '.join(missing)} "
                "is not set; launch with: torchrun --nproc-per-node N -m streaming.cli run "
                "--distributed ..."
            )
        device = torch.device(device)
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            timeout = timedelta(seconds=timeout_s)
            # torchrun's agent serves the store; the keys of each restart of the group get
            # their own prefix, so no rank reads an address a killed rank published before.
            agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            store = dist.TCPStore(
                os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]),
                world,
                is_master=not agent and rank == 0,
                timeout=timeout,
            )
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            prefixed = dist.PrefixStore(f"feedstep/attempt-{attempt}", store)
            if device.type == "cuda":
                torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
            dist.init_process_group(
                backend, store=prefixed, rank=rank, world_size=world, timeout=timeout
            )
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def leader(self) -> bool:
        """Rank 0: decides, publishes and announces; writes the checkpoints."""
        return self.rank == 0

    # -- the training thread ---------------------------------------------------------------------
    def round(
        self,
        has_batch: bool,
        checkpoint: bool = False,
        stop: bool = False,
        idle: bool = False,
        switched: bool = False,
        reset: bool = False,
    ) -> Round:
        """The control all-reduce every rank makes at the start of each round."""
        lead = self.leader
        code = (_RESET if reset else _PROMOTE) if (lead and (switched or reset)) else 0.0
        t = torch.tensor(
            [float(has_batch), float(checkpoint), float(stop), float(idle), code],
            dtype=torch.float64,
            device=self.device,
        )
        dist.all_reduce(t)
        batches, ckpt, stops, idles, switch = t.tolist()
        return Round(
            batches=int(batches),
            checkpoint=ckpt > 0,
            stop=stops > 0 or int(idles) == self.world,
            switch=switch > 0,
            reset=switch == _RESET,
        )

    def reduce_gradients(
        self, params: Sequence[torch.nn.Parameter], weight: float, finite: bool
    ) -> tuple[float, bool]:
        """Turn each rank's gradient of ``Σ w·loss`` into that of the mean over all ranks.

        ``weight`` is this rank's ``Σ w`` (0 without a batch), ``finite`` whether its loss was
        finite. Returns the total weight and whether every rank's loss was finite. A weight no
        rank's loss reached keeps ``grad = None``, as alone: AdamW leaves such weights be
        (no decay, no momentum), so a zero gradient would not do the same.
        """
        sizes = [p.numel() for p in params]
        total = sum(sizes)
        width = total + 2 + len(params)
        if self._flat is None or self._flat.numel() != width:
            dtype = params[0].dtype if params else torch.float32
            self._flat = torch.zeros(width, dtype=dtype, device=self.device)
        flat = self._flat
        at = 0
        reached = [float(p.grad is not None and finite) for p in params]
        for p, n, by in zip(params, sizes, reached, strict=True):
            view = flat[at : at + n]
            if by:
                view.copy_(p.grad.reshape(-1))  # type: ignore[union-attr]
            else:
                view.zero_()
            at += n
        tail = [weight if finite else 0.0, 0.0 if finite else 1.0, *reached]
        flat[total:].copy_(torch.tensor(tail, dtype=flat.dtype))
        started = time.perf_counter()
        dist.all_reduce(flat)
        self.reduce_seconds += time.perf_counter() - started
        self.reduced_bytes = flat.numel() * flat.element_size()
        self.reduced_bytes_total += self.reduced_bytes
        summed, bad = float(flat[total]), float(flat[total + 1])
        if bad > 0 or summed <= 0:
            return summed, bad == 0
        flat[:total].div_(summed)
        reached_by = flat[total + 2 :].tolist()
        at = 0
        for p, n, by in zip(params, sizes, reached_by, strict=True):
            grad = flat[at : at + n].view_as(p)
            if not by:
                p.grad = None
            elif p.grad is None:
                p.grad = grad.clone()
            else:
                p.grad.copy_(grad)
            at += n
        return summed, True

    def sync_from_leader(self, tensors: Sequence[torch.Tensor], schedule: dict[str, Any]) -> Any:
        """Broadcast rank 0's ``tensors`` (in place) and schedule state; returns the schedule."""
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)
        return self._broadcast_json(schedule, group=None)

    def gather_outputs(
        self, candidate: ObjectiveOutput, baseline: ObjectiveOutput, ts: Sequence[float]
    ) -> tuple[ObjectiveOutput, ObjectiveOutput, list[float]]:
        """Every rank's paired outcomes of this round, in rank order (a rank's may be empty)."""
        n = len(ts)
        rows = torch.zeros(7, n, dtype=torch.float64)
        if n:
            for i, v in enumerate(
                (candidate.loss, candidate.score, candidate.correct, baseline.loss)
                + (baseline.score, baseline.correct)
            ):
                rows[i] = v.detach().to("cpu", torch.float64)
            rows[6] = torch.tensor(list(ts), dtype=torch.float64)
        sizes = self._all_gather_sizes(n, self.device)
        widest = max(sizes)
        padded = torch.zeros(7, widest, dtype=torch.float64)
        padded[:, :n] = rows
        parts = [torch.zeros_like(padded, device=self.device) for _ in range(self.world)]
        dist.all_gather(parts, padded.to(self.device))
        joined = torch.cat([p.cpu()[:, :k] for p, k in zip(parts, sizes, strict=True)], dim=1)

        def out(a: int) -> ObjectiveOutput:
            return ObjectiveOutput(
                loss=joined[a].float(), score=joined[a + 1].float(), correct=joined[a + 2].float()
            )

        return out(0), out(3), joined[6].tolist()

    # -- the loop thread (control group) -------------------------------------------------------
    def gather_json(self, value: Any) -> list[Any] | None:
        """Every rank's ``value`` on rank 0, in rank order (None on the other ranks)."""
        data = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8)
        sizes = self._all_gather_sizes(data.numel(), torch.device("cpu"), self.control)
        padded = torch.zeros(max(sizes), dtype=torch.uint8)
        padded[: data.numel()] = data
        parts = [torch.zeros_like(padded) for _ in range(self.world)] if self.leader else None
        dist.gather(padded, parts, dst=0, group=self.control)
        if parts is None:
            return None
        return [json.loads(p[:k].numpy().tobytes()) for p, k in zip(parts, sizes, strict=True)]

    def broadcast_json(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (the others pass anything, e.g. None)."""
        return self._broadcast_json(value, group=self.control)

    def broadcast_bytes(self, data: bytes | None, src: int = 0) -> bytes:
        """Rank ``src``'s ``data`` on every rank (the others pass None)."""
        mine = self.rank == src
        size = torch.tensor([len(data) if mine and data else 0], dtype=torch.int64)
        dist.broadcast(size, src=src, group=self.control)
        buf = torch.zeros(int(size), dtype=torch.uint8)
        if mine and data:
            buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if int(size):
            dist.broadcast(buf, src=src, group=self.control)
        return (data or b"") if mine else buf.numpy().tobytes()

    def barrier(self) -> None:
        """Wait until every rank's loop thread is here."""
        dist.barrier(group=self.control)

    # -- helpers ---------------------------------------------------------------------------------
    def _all_gather_sizes(self, n: int, device: torch.device, group: Any = None) -> list[int]:
        mine = torch.tensor([n], dtype=torch.int64, device=device)
        sizes = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(sizes, mine, group=group)
        return [int(s) for s in sizes]

    def _broadcast_json(self, value: Any, group: Any) -> Any:
        on = self.device if group is None else torch.device("cpu")
        data = json.dumps(value).encode() if self.leader else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=on)
        dist.broadcast(size, src=0, group=group)
        buf = torch.zeros(int(size), dtype=torch.uint8, device=on)
        if self.leader:
            buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buf, src=0, group=group)
        return json.loads(buf.cpu().numpy().tobytes())
