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
