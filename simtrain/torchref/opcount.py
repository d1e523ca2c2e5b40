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


#: Ops that move no element of their own: views, and the allocations whose writes the next
#: op's count already holds.
_NO_TRAFFIC = {"view", "_unsafe_view", "expand", "detach", "reshape", "view_as_complex",
               "view_as_real", "t", "transpose", "alias", "unsqueeze", "squeeze", "slice",
               "select", "as_strided", "empty_like", "zeros_like", "ones_like"}  # fmt: skip


def dispatched_bytes(fn: Any, shapes: list[tuple[int, ...]], dtype: Any) -> tuple[float, float]:
    """(forward, backward) bytes per element of the first input that ``fn``'s ATen kernels read
    and write, counted with a ``TorchDispatchMode``: every op that is not a view
    (``OpOverload.is_view``, :data:`_NO_TRAFFIC`) counts its tensor arguments and results,
    leaving out those of fewer than half the first input's elements (a row's statistic, a
    weight, a per-row probability). ``fn`` takes one tensor per shape (random, requiring
    gradients); the backward is its result's, from a random gradient. The unit the
    element-wise byte counts of ``costs.compute`` and ``costs.moe`` are checked in."""
    from torch.utils._pytree import tree_flatten

    n_el = 1
    for d in shapes[0]:
        n_el *= d

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            out = func(*args, **(kwargs or {}))
            if not func.is_view and func._overloadpacket.__name__ not in _NO_TRAFFIC:
                ts = [t for t in tree_flatten((args, kwargs, out))[0]
                      if isinstance(t, torch.Tensor) and t.numel() >= n_el // 2]  # fmt: skip
                self.total += sum(t.numel() * t.element_size() for t in ts)
            return out

    torch.manual_seed(0)
    xs = [torch.randn(*sh, dtype=dtype, requires_grad=True) for sh in shapes]
    with Count() as f:
        y = fn(*xs)
    g = torch.randn_like(y)
    with Count() as b:
        y.backward(g)
    return f.total / n_el, b.total / n_el


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
