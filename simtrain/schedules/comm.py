"""Lowering pass: add point-to-point sends and receives to a compute-only schedule."""

from __future__ import annotations

from simtrain.errors import ScheduleError
from simtrain.schedules.actions import (
    COMM_KINDS,
    RECV_B,
    RECV_F,
    SEND_B,
    SEND_F,
    Action,
    B,
    F,
    I,
    Schedule,
    pipeline_of,
    stage_to_rank,
)


def p2p_for(
    action: Action, pp: int, v: int, placement: str = "loop"
) -> tuple[list[Action], list[Action]]:
    """(receives before, sends after) a compute action.

    F(s, j): RECV_F(s, j) before if s > 0, SEND_F(s, j) after if s is not last. B or I (s, j):
    RECV_B(s, j) before if s is not last, SEND_B(s, j) after if s > 0. Neighbouring stages on the
    same rank (pp = 1, or the turn of ZB-V's V: ``placement``) exchange nothing, nor do the
    ends of DualPipe's two pipelines (``placement`` "dual"). SEND carries the sender's stage,
    RECV the receiver's.
    """
    s, kind, j = action
    if pp == 1 or kind not in (F, B, I):
        return [], []
    line = pipeline_of(s, pp * v, placement)

    def remote(other: int) -> bool:
        return other in line and (
            stage_to_rank(other, pp, v, placement) != stage_to_rank(s, pp, v, placement)
        )

    if kind == F:
        return (
            [Action(s, RECV_F, j)] if remote(s - 1) else [],
            [Action(s, SEND_F, j)] if remote(s + 1) else [],
        )
    return (
        [Action(s, RECV_B, j)] if remote(s + 1) else [],
        [Action(s, SEND_B, j)] if remote(s - 1) else [],
    )


def add_p2p(schedule: Schedule, pp: int, v: int = 1, placement: str = "loop") -> Schedule:
    """Return a new schedule with RECV_* just before and SEND_* just after each F, B or I whose
    neighbour stage lives on another rank (PyTorch ``_add_send_recv``). Pure: the input is
    not modified."""
    out: Schedule = {}
    for r, actions in schedule.items():
        lowered: list[Action] = []
        for a in actions:
            if a.kind in COMM_KINDS:
                raise ScheduleError(f"rank {r}: schedule already has communication ({a})")
            before, after = p2p_for(a, pp, v, placement)
            lowered += [*before, a, *after]
        out[r] = lowered
    return out
