"""Read-only analyses of schedules."""

from __future__ import annotations

from simtrain.schedules.actions import B, F, Schedule, W


def peak_in_flight(schedule: Schedule, release: tuple[str, ...] = (B, W)) -> dict[int, int]:
    """Most micro-batch chunks each rank holds at once: counted from F until the first action of
    a kind in ``release`` for that (stage, micro-batch). Default releases on B or W (activations
    kept until the weight gradient); ``(B, I)`` counts chunks awaiting their input gradient."""
    peaks: dict[int, int] = {}
    for r, actions in schedule.items():
        held: set[tuple[int, int | None]] = set()
        peak = 0
        for a in actions:
            key = (a.stage, a.microbatch)
            if a.kind == F:
                held.add(key)
                peak = max(peak, len(held))
            elif a.kind in release:
                held.discard(key)
        peaks[r] = peak
    return peaks


def sharded_at_start(actions: list[tuple[int, str]]) -> list[bool]:
    """For a rank's actions in order, as (chunk, kind), whether each finds its chunk's
    parameters sharded when it starts, under PyTorch pipelining over FSDP2: a backward (B, I,
    W) leaves them gathered (stage.py backward_maybe_with_nosync:
    ``set_reshard_after_backward(False)``), a forward reshards them after each layer
    (reshard_after_forward); sharded before the chunk's first action. The gathers of
    ``sim.lowering.passes.zero3_pass`` and of the planner (``costs.workload.pipelined_gather_layers``)."""
    gathered: set[int] = set()
    out = []
    for chunk, kind in actions:
        out.append(chunk not in gathered)
        if kind in ("B", "I", "W"):
            gathered.add(chunk)
        else:
            gathered.discard(chunk)
    return out
