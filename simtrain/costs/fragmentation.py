"""What PyTorch's caching allocator reserves beyond the allocated peak of one pipeline rank's
training steps: its allocations and frees, in the order the rank makes them, played through
:mod:`simtrain.costs.caching_allocator`.

The order (:func:`stage_allocation_events`), from the workload's own tensors:

1. at start-up, every parameter tensor (the blocks', then the embedding's and the head's), then
   the persistent buffers (a flat gradient buffer, the master weights tensor by tensor, DDP's
   gradient buckets, cached gather buffers);
2. each step, the rank's schedule (forward and backward actions of its micro-batches): a
   forward allocates each block's saved tensors in the block's order, then what the embedding
   and head save, then the loss working memory, freed at the forward's end; a backward frees
   the head's, then walks the blocks last to first, allocating the block's parameter
   gradients and, for each saved tensor from the last, a gradient of its size, freeing the
   saved tensor and then that gradient. Gradients freed after every micro-batch (nanotron's
   FP32GradientAccumulator) go at the backward's end; others are made by the step's first
   backward and freed after its optimizer step (``zero_grad(set_to_none=True)``);
3. after the last backward the optimizer step: its states, tensor by tensor, at the first step
   (``torch.optim`` creates them lazily), and its working memory, allocated and freed.

The peaks are those of the last of :data:`STEPS` steps (a framework logs a later step: the
allocator's cache then holds what the first step left). What the replay reserves beyond its
own allocated peak (:attr:`~simtrain.costs.caching_allocator.ReplayPeaks.cache_bytes`) is the
fragmentation a reserved memory figure adds to the allocated model's peak; a replay that runs
out of the device's memory, after the allocator has released what it can, is a step that does
not fit (:func:`replay_stage`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

from simtrain.costs.caching_allocator import AllocatorOutOfMemory, replay

#: Steps replayed; the peaks are the last one's. The first makes the optimizer's states; the
#: cache is steady from the second: 3 or 5 steps give the same bytes within 0.01 GiB on 147 of
#: 150 Playbook records (benchmarks/replay_sensitivity.py; the 3 others are runs that ran out of
#: memory, up to 4 GiB apart, whose verdict is "does not fit" either way).
STEPS = 2


@dataclass(frozen=True, slots=True)
class StageAllocations:
    """One pipeline rank's tensors, in bytes, for :func:`stage_allocation_events`."""

    parameters: tuple[int, ...]  # each parameter tensor, in the order the model makes them
    persistent: tuple[int, ...]  # buffers made at start-up and kept (gradients, master, ...)
    layers: int  # decoder blocks on the rank
    layer_saved: tuple[int, ...]  # what one block saves for backward, in forward order
    layer_gradients: tuple[int, ...]  # one block's parameter gradients
    end_saved: int  # what the embedding and head save beyond the blocks
    end_gradients: tuple[int, ...]  # the embedding's and head's parameter gradients
    loss: int  # the loss working memory at a forward's end
    gradients_per_microbatch: bool  # parameter gradients freed at every backward's end
    optimizer_states: tuple[int, ...]  # made at the first optimizer step, kept
    step_working: tuple[int, ...]  # allocated at each optimizer step and freed after it
    actions: tuple[str, ...]  # the rank's schedule: "F" / "B" per micro-batch, in order


def stage_allocation_events(a: StageAllocations) -> Iterator[tuple[str, int]]:
    """The rank's allocations and frees (:func:`simtrain.costs.caching_allocator.replay`'s
    events: an allocation's handle is its index among the allocations)."""
    n = 0

    def alloc(nbytes: int) -> tuple[str, int]:
        nonlocal n
        n += 1
        return ("alloc", max(nbytes, 1))

    for b in (*a.parameters, *a.persistent):
        yield alloc(b)
    kept_grads: list[int] | None = None  # a step's gradients, made by its first backward
    pending: list[tuple[list[list[int]], int]] = []  # forwards not yet backward: (blocks, end)
    for step in range(STEPS):
        if step == STEPS - 1:
            yield ("reset", 0)
        for act in a.actions:
            if act == "F":
                blocks = []
                for _ in range(a.layers):
                    ids = []
                    for b in a.layer_saved:
                        yield alloc(b)
                        ids.append(n - 1)
                    blocks.append(ids)
                end = -1
                if a.end_saved:
                    yield alloc(a.end_saved)
                    end = n - 1
                if a.loss:
                    yield alloc(a.loss)
                    yield ("free", n - 1)
                pending.append((blocks, end))
                continue
            blocks, end = pending.pop(0)
            grads: list[int] = []
            make = kept_grads is None or a.gradients_per_microbatch
            if make:
                for b in a.end_gradients:
                    yield alloc(b)
                    grads.append(n - 1)
            if end >= 0:
                yield ("free", end)
            for ids in reversed(blocks):
                if make:
                    for b in a.layer_gradients:
                        yield alloc(b)
                        grads.append(n - 1)
                for b, i in zip(reversed(a.layer_saved), reversed(ids), strict=True):
                    yield alloc(b)
                    yield ("free", i)
                    yield ("free", n - 1)
            if a.gradients_per_microbatch:
                for i in grads:
                    yield ("free", i)
            elif kept_grads is None:
                kept_grads = grads
        if step == 0:
            for b in a.optimizer_states:
                yield alloc(b)
        first = n
        for b in a.step_working:
            yield alloc(b)
        for i in range(first, n):
            yield ("free", i)
        for i in kept_grads or ():  # zero_grad(set_to_none=True), PyTorch >= 2.0's default
            yield ("free", i)
        kept_grads = None


@lru_cache(maxsize=256)
def replay_stage(a: StageAllocations, allocated_bytes: int, room_bytes: int) -> tuple[int, bool]:
    """(what the allocator reserves beyond the allocated peak in the replay of ``a``'s steps,
    whether it runs out of memory). ``allocated_bytes``: the memory model's allocated peak,
    whose surplus over the replay's own (the backward's working sets, which the replay does
    not play) is held beside it; ``room_bytes``: the device's memory for the allocator. Near
    the room the replay runs again within it less that surplus: the allocator releases its
    free segments and retries before it fails (``release_cached_blocks``), so fragmentation
    alone does not fail a step that fits, while one whose cache cannot be released does."""
    free = replay(stage_allocation_events(a))
    # (signed: allocated + fragmentation = the replay's reserved + surplus, so a replay that
    # runs out of memory is always a peak beyond the room)
    surplus = allocated_bytes - free.allocated_bytes
    if free.reserved_bytes + surplus <= room_bytes:
        return free.cache_bytes, False
    try:
        replay(stage_allocation_events(a), room_bytes - surplus)
    except AllocatorOutOfMemory:
        return free.cache_bytes, True
    return free.cache_bytes, False
