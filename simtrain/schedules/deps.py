"""Data dependencies between actions, shared by the validator and the unit-time simulator.

An action *produces* events and *requires* events; an action may start once every required event
has been produced (and the previous action of its rank has finished). Events:
``("F", s, j)`` forward output of stage s on micro-batch j; ``("G", s, j)`` input gradient of
stage s (from B or I); ``("W", s, j)`` weight gradient (from B or W); ``("SEND_F"|"SEND_B", s, j)``
a p2p message posted by stage s.
"""

from __future__ import annotations

from simtrain.schedules.actions import (
    COMPUTE_KINDS,
    OPT,
    RECV_B,
    RECV_F,
    SEND_B,
    SEND_F,
    Action,
    B,
    F,
    I,
    W,
    pipeline_of,
)

Event = tuple[str, int, int]


def produces(action: Action) -> tuple[Event, ...]:
    """Events that become available when ``action`` finishes."""
    s, kind, j = action
    if kind == OPT or j is None:
        return ()
    if kind == F:
        return (("F", s, j),)
    if kind == B:
        return (("G", s, j), ("W", s, j))
    if kind == I:
        return (("G", s, j),)
    if kind == W:
        return (("W", s, j),)
    if kind in (SEND_F, SEND_B):
        return ((kind, s, j),)
    return ()


def requires(action: Action, num_stages: int, placement: str = "loop") -> tuple[Event, ...]:
    """Events ``action`` waits for (besides its rank's previous action).

    F(s, j) needs F(s-1, j); B or I (s, j) needs F(s, j) and the input gradient of s+1;
    W(s, j) needs I(s, j); RECV_F(s, j) needs SEND_F(s-1, j); RECV_B(s, j) needs SEND_B(s+1, j).
    Stage s-1 and s+1 only within s's pipeline (``placement`` "dual": DualPipe's two).
    """
    s, kind, j = action
    if j is None:
        return ()
    line = pipeline_of(s, num_stages, placement) if placement == "dual" else range(num_stages)
    first, last = s == line[0], s == line[-1]
    if kind == F:
        return (("F", s - 1, j),) if not first else ()
    if kind in (B, I):
        return (("F", s, j),) + ((("G", s + 1, j),) if not last else ())
    if kind == W:
        return (("G", s, j),)
    if kind == SEND_F:
        return (("F", s, j),)
    if kind == SEND_B:
        return (("G", s, j),)
    if kind == RECV_F:
        return ((SEND_F, s - 1, j),)
    if kind == RECV_B:
        return ((SEND_B, s + 1, j),)
    return ()


def is_compute(action: Action) -> bool:
    """True for F, B, I and W."""
    return action.kind in COMPUTE_KINDS
