"""Dispatched-op counts of one training step of the reference model (needs torch): the unit of
the eager host cost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from simtrain.spec.model import ModelSpec
from simtrain.spec.scenario import TrainingSpec
from simtrain.torchref.trainer import _warm_trainer


@dataclass(frozen=True, slots=True)
class OpCounts:
    """ATen ops one training step dispatches, per phase: every op, and those that are not views
    (a view launches no kernel). Counted on the device given, after a warm-up step."""

    forward: int
    backward: int
    optimizer: int
    forward_kernels: int
    backward_kernels: int
    optimizer_kernels: int

    @property
    def total(self) -> int:
        return self.forward + self.backward + self.optimizer

    @property
    def total_kernels(self) -> int:
        return self.forward_kernels + self.backward_kernels + self.optimizer_kernels


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.kernels = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops += 1
        if not func.is_view:
            self.kernels += 1
        return func(*args, **(kwargs or {}))


def count_dispatched_ops(spec: ModelSpec, training: TrainingSpec, *, device: str = "cpu",
                         seed: int = 0) -> OpCounts:  # fmt: skip
    """Dispatched ATen ops of one step of the reference decoder under ``training``'s recipe
    (forward with loss, backward with any recompute, optimizer step with the precision's
    master-weight and loss-scale handling), with a ``TorchDispatchMode``. In eager PyTorch every
    op costs host time, so this is the count a host-overhead model multiplies."""
    _, trainer, idx, targets = _warm_trainer(spec, training, torch.device(device), None, seed, 1)
    trainer.zero_grad()
    counts = []
    with _OpCounter() as c:
        loss = trainer.forward(idx, targets)
        counts.append((c.ops, c.kernels))
        trainer.backward(loss)
        counts.append((c.ops, c.kernels))
        trainer.optimizer_step()
        counts.append((c.ops, c.kernels))
    (f, fk), (b_, bk), (o, ok) = counts
    return OpCounts(f, b_ - f, o - b_, fk, bk - fk, ok - bk)
