"""Pass 4 of lowering: the data-parallel collectives' NCCL kernels hold SMs of their GPU while
they run, and the compute they overlap runs on the rest (the engine's ``Task.sm_hold``).

Which streams: "gather" (ZeRO-3 / FSDP parameter all-gathers) and "dp" (DDP buckets, ZeRO
reduce-scatters and all-gathers, FSDP's gradient reduce-scatters): NCCL collectives launched
beside the compute. Not these: the "tp" stream's spans (Transformer Engine's userbuffers
overlap, whose ring exchange copies with the copy engines, and async TP), the "collective"
stream (expert all-to-alls: DeepEP's SMs are priced in ``passes.ep_pass``; the context-parallel
ring), pipeline sends ("p2p") and host-to-device copies (copy engines)."""

from __future__ import annotations

from simtrain.sim.engine import Task

#: streams whose tasks are NCCL collectives that overlap the compute stream
HOLDING_STREAMS = frozenset(("gather", "dp"))


def hold_sms(tasks: list[Task], sms: int) -> list[Task]:
    """``tasks`` with ``sm_hold = sms`` on every task of :data:`HOLDING_STREAMS` that takes
    time (``sms`` 0: unchanged)."""
    if not sms:
        return tasks
    return [t._replace(sm_hold=sms)
            if t.stream in HOLDING_STREAMS and (t.duration_ns or t.link_bytes) else t
            for t in tasks]  # fmt: skip


def sm_shared_extra_ns(compute_ns: float, comm_ns: float, share: float) -> float:
    """How much longer ``compute_ns`` of compute takes beside ``comm_ns`` of communication
    whose kernels hold ``share`` of the SMs, both started together (the engine's throttle,
    ``sim.engine``): it runs at 1 − share while they do, so it lengthens by A·share when the
    communication ends first and by C·share/(1 − share) when it outlasts the compute:
    min(A·share, C·share/(1 − share)). The DeepEP pairs (``passes._sm_shared``) and the
    planner's closed form (``apps.plan.estimate``) price it so; ``tests/test_sm_contention.py``
    checks it against the engine."""
    return min(comm_ns * share, compute_ns * share / (1.0 - share))


def rank_sm_counts(tasks: list[Task], sm_count: int) -> dict[int, int] | None:
    """The engine's ``rank_sms``: every simulated GPU's SM count, where some task holds SMs."""
    if not any(t.sm_hold for t in tasks):
        return None
    return dict.fromkeys(sorted({t.rank for t in tasks}), sm_count)
