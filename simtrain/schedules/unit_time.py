"""List-scheduling simulator for schedules: no SimPy, per-kind durations, free communication.

Each rank runs its list in order; an action starts at max(rank free, dependencies done)
(dependencies in :mod:`simtrain.schedules.deps`). Used by tests, by the validator's deadlock check
and for fast closed-form screening. Durations may be ints, floats or ``Fraction`` (exact).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from simtrain.errors import ScheduleError
from simtrain.schedules.actions import COMM_KINDS, COMPUTE_KINDS, OPT, Action, Schedule
from simtrain.schedules.deps import Event, produces, requires
from simtrain.schedules.grid import format_grid

#: Durations of one unit per computation; communication and OPT free unless given.
UNIT_DURATIONS: dict[str, int] = {"F": 1, "B": 1, "I": 1, "W": 1, OPT: 0}


class UnitSpan(NamedTuple):
    """One executed action: ``[start, end)`` on its rank."""

    start: Any
    end: Any
    action: Action


class Blocked(NamedTuple):
    """A rank that cannot proceed: its step index, action and the events it still waits for."""

    rank: int
    step: int
    action: Action
    waiting_for: tuple[Event, ...]


def describe_event(event: Event) -> str:
    """Human text for a dependency event, in action notation (``"1F3"``, ``"2B0 or 2I0"``)."""
    kind, s, j = event
    if kind == "G":
        return f"{s}B{j} or {s}I{j}"
    if kind == "W":
        return f"{s}W{j} or {s}B{j}"
    return f"{s}{kind}{j}"


def _duration_of(durations: Mapping[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = {k: 0 for k in (*COMM_KINDS, OPT)}
    for kind, value in durations.items():
        if kind not in table and kind not in COMPUTE_KINDS:
            raise ScheduleError(f"unknown action kind {kind!r} in durations")
        if value < 0:
            raise ScheduleError(f"duration of {kind!r} must be >= 0 (got {value!r})")
        table[kind] = value
    return table


def run_schedule(
    schedule: Schedule, pp: int, v: int, durations: Mapping[str, Any], placement: str = "loop"
) -> tuple[dict[int, list[UnitSpan]], list[Blocked]]:
    """Simulate; returns the spans executed per rank and, on deadlock, each blocked rank.
    ``placement`` "dual": DualPipe's two pipelines (:func:`~simtrain.schedules.deps.requires`)."""
    table = _duration_of(durations)
    num_stages = pp * v
    done: dict[Event, Any] = {}
    pos = dict.fromkeys(schedule, 0)
    free: dict[int, Any] = dict.fromkeys(schedule, 0)
    spans: dict[int, list[UnitSpan]] = {r: [] for r in schedule}
    progressed = True
    while progressed:
        progressed = False
        for r, actions in schedule.items():
            while pos[r] < len(actions):
                action = actions[pos[r]]
                needs = requires(action, num_stages, placement)
                if any(e not in done for e in needs):
                    break
                if action.kind not in table:
                    raise ScheduleError(
                        f"no duration for kind {action.kind!r} (needed by rank {r} action "
                        f"{action}); durations give {', '.join(sorted(durations))}"
                    )
                start = max([free[r], *(done[e] for e in needs)])
                end = start + table[action.kind]
                for event in produces(action):
                    done.setdefault(event, end)
                spans[r].append(UnitSpan(start, end, action))
                free[r] = end
                pos[r] += 1
                progressed = True
    blocked = [
        Blocked(
            r,
            pos[r],
            schedule[r][pos[r]],
            tuple(e for e in requires(schedule[r][pos[r]], num_stages, placement) if e not in done),
        )
        for r in schedule
        if pos[r] < len(schedule[r])
    ]
    return spans, blocked


def deadlock_message(blocked: list[Blocked]) -> str:
    """One line per blocked rank: its step, action and what it waits for."""
    return "\n".join(
        f"  rank {b.rank} step {b.step} ({b.action}) waits for "
        + ", ".join(describe_event(e) for e in b.waiting_for)
        for b in blocked
    )


def simulate_spans(
    schedule: Schedule, pp: int, v: int, durations: Mapping[str, Any], placement: str = "loop"
) -> dict[int, list[UnitSpan]]:
    """Start/end of every action; raises ScheduleError (with the grid) on deadlock."""
    spans, blocked = run_schedule(schedule, pp, v, durations, placement)
    if blocked:
        raise ScheduleError(
            f"schedule deadlocks (pp={pp}, v={v}):\n{deadlock_message(blocked)}\n"
            f"{format_grid(schedule)}"
        )
    return spans


def simulate_unit(
    schedule: Schedule, pp: int, v: int, durations: Mapping[str, Any], placement: str = "loop"
) -> tuple[Any, dict[int, Any]]:
    """(makespan, busy time per rank) of ``schedule`` under per-kind ``durations``.

    ``durations`` maps kind -> time; every compute kind used must be given, SEND/RECV and OPT
    default to 0. Bubble ratio = 1 - sum(busy) / (pp · makespan).
    """
    spans = simulate_spans(schedule, pp, v, durations, placement)
    makespan = max((s.end for ss in spans.values() for s in ss), default=0)
    busy = {r: sum((s.end - s.start for s in ss), 0) for r, ss in spans.items()}
    return makespan, busy


def format_timeline(schedule: Schedule, pp: int, v: int = 1, placement: str = "loop") -> str:
    """Time-aligned grid: every computation and OPT takes one slot, communication none
    (and is not shown); idle slots print ``.`` — shows the pipeline's bubbles."""
    spans = simulate_spans(schedule, pp, v, {**UNIT_DURATIONS, OPT: 1}, placement)
    end = max((s.end for ss in spans.values() for s in ss), default=0)
    grid: dict[int, list[Action | None]] = {r: [None] * end for r in schedule}
    for r, ss in spans.items():
        for s in ss:
            if s.end > s.start:
                grid[r][s.start] = s.action
    return format_grid(grid)
