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
)


def p2p_for(action: Action, pp: int, v: int) -> tuple[list[Action], list[Action]]:
    """(receives before, sends after) a compute action.

    F(s, j): RECV_F(s, j) before if s > 0, SEND_F(s, j) after if s is not last. B or I (s, j):
    RECV_B(s, j) before if s is not last, SEND_B(s, j) after if s > 0. Neighbouring stages on the
    same rank (pp = 1) exchange nothing. SEND carries the sender's stage, RECV the receiver's.
    """
    s, kind, j = action
    last = pp * v - 1
    if pp == 1 or kind not in (F, B, I):
        return [], []
    if kind == F:
        return (
            [Action(s, RECV_F, j)] if s > 0 else [],
            [Action(s, SEND_F, j)] if s < last else [],
        )
    return (
        [Action(s, RECV_B, j)] if s < last else [],
        [Action(s, SEND_B, j)] if s > 0 else [],
    )


def add_p2p(schedule: Schedule, pp: int, v: int = 1) -> Schedule:
    """Return a new schedule with RECV_* just before and SEND_* just after each F, B or I whose
    neighbour stage lives on another rank (PyTorch ``_add_send_recv``). Pure: the input is
    not modified."""
    out: Schedule = {}
    for r, actions in schedule.items():
        lowered: list[Action] = []
        for a in actions:
            if a.kind in COMM_KINDS:
                raise ScheduleError(f"rank {r}: schedule already has communication ({a})")
            before, after = p2p_for(a, pp, v)
            lowered += [*before, a, *after]
        out[r] = lowered
    return out
