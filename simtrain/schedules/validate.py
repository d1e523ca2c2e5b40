"""Schedule validator: coverage, placement, per-micro-batch order, OPT placement, p2p pairing
and deadlock freedom. Every failure raises ScheduleError carrying the whole rank x step grid."""

from __future__ import annotations

from collections import Counter

from simtrain.errors import ScheduleError
from simtrain.schedules.actions import (
    COMM_KINDS,
    COMPUTE_KINDS,
    KINDS,
    OPT,
    Action,
    B,
    F,
    I,
    Schedule,
    W,
    microbatch_stages,
    stage_to_rank,
)
from simtrain.schedules.comm import p2p_for
from simtrain.schedules.grid import format_grid
from simtrain.schedules.unit_time import UNIT_DURATIONS, deadlock_message, run_schedule

_MAX_PROBLEMS = 20


def _fail(schedule: Schedule, pp: int, m: int, v: int, problems: list[str]) -> None:
    shown = problems[:_MAX_PROBLEMS]
    if len(problems) > _MAX_PROBLEMS:
        shown.append(f"... and {len(problems) - _MAX_PROBLEMS} more")
    body = "\n".join(f"  - {p}" for p in shown)
    raise ScheduleError(
        f"invalid pipeline schedule (pp={pp}, microbatches={m}, v={v}):\n{body}\n"
        f"{format_grid(schedule)}"
    )


def _structure(
    schedule: Schedule,
    pp: int,
    m: int,
    v: int,
    split_backward: bool | None,
    placement: str = "loop",
) -> list[str]:
    """Every structural problem of ``schedule``, in a fixed order: ranks and actions, coverage
    and per-micro-batch order, OPT placement, then (only if all those pass) p2p pairing."""
    problems, where = _action_problems(schedule, pp, m, v, placement)
    problems += _coverage_problems(where, pp * v, m, split_backward, placement)
    problems += _opt_problems(schedule)
    if problems:  # p2p checks below assume well-formed actions
        return problems
    return _p2p_problems(schedule, pp, v, placement)


def _action_problems(
    schedule: Schedule, pp: int, m: int, v: int, placement: str = "loop"
) -> tuple[list[str], dict[Action, list[tuple[int, int]]]]:
    """Problems with the ranks and with each action on its own (type, kind, stage and micro-batch
    range, placement), and where each well-formed compute/comm action sits: ``(rank, step)``s."""
    problems: list[str] = []
    if sorted(schedule) != list(range(pp)):
        problems.append(f"ranks are {sorted(schedule)}, expected 0..{pp - 1}")
    stages = pp * v
    where: dict[Action, list[tuple[int, int]]] = {}
    for r, actions in schedule.items():
        for k, a in enumerate(actions):
            at = f"rank {r} step {k}"
            if not isinstance(a, Action):
                problems.append(f"{at}: {a!r} is not an Action")
                continue
            if a.kind not in KINDS:
                problems.append(f"{at}: unknown kind {a.kind!r}; allowed: {', '.join(KINDS)}")
                continue
            if a.kind == OPT:
                if a.microbatch is not None or a.stage != r:
                    problems.append(f"{at}: OPT must be Action({r}, 'OPT', None), got {a!r}")
                continue
            if not 0 <= a.stage < stages:
                problems.append(f"{at} ({a}): stage out of range 0..{stages - 1}")
                continue
            if a.microbatch is None or not 0 <= a.microbatch < m:
                problems.append(f"{at} ({a}): micro-batch out of range 0..{m - 1}")
                continue
            home = stage_to_rank(a.stage, pp, v, placement)
            if home != r:
                problems.append(f"{at} ({a}): stage {a.stage} lives on rank {home}")
            route = microbatch_stages(a.microbatch, m, stages, placement)
            if a.stage not in route:
                problems.append(f"{at} ({a}): micro-batch {a.microbatch} runs on stages "
                                f"{route[0]}..{route[-1]} only ({placement} placement)")  # fmt: skip
            where.setdefault(a, []).append((r, k))
    return problems, where


def _coverage_problems(
    where: dict[Action, list[tuple[int, int]]],
    stages: int,
    m: int,
    split_backward: bool | None,
    placement: str = "loop",
) -> list[str]:
    """Compute kinds of the other backward style; each (stage, micro-batch) on the
    micro-batch's route not exactly once per expected kind; a B before its F (or a W before
    its I) on the same rank."""
    problems: list[str] = []
    visits = [(s, j) for j in range(m) for s in microbatch_stages(j, m, stages, placement)]
    visits.sort()
    if split_backward is None:  # mixed (DualPipeV): each (stage, mb) has B, or I and W
        return _mixed_coverage_problems(where, visits)
    wanted = (F, I, W) if split_backward else (F, B)
    for kind in (k for k in COMPUTE_KINDS if k not in wanted):
        for a in where:
            if a.kind == kind:
                problems.append(
                    f"{a}: kind {kind} not expected "
                    f"({'split backward uses F, I, W' if split_backward else 'uses F and B'})"
                )
    for s, j in visits:
        for kind in wanted:
            n = len(where.get(Action(s, kind, j), []))
            if n != 1:
                problems.append(f"{s}{kind}{j} appears {n} times, expected once")
        chain = [Action(s, kind, j) for kind in wanted]
        for x, y in zip(chain, chain[1:], strict=False):
            px, py = where.get(x), where.get(y)
            if px and py and px[0][0] == py[0][0] and px[0][1] > py[0][1]:
                problems.append(
                    f"rank {px[0][0]}: {y} (step {py[0][1]}) before {x} (step {px[0][1]})"
                )
    return problems


def _mixed_coverage_problems(
    where: dict[Action, list[tuple[int, int]]], visits: list[tuple[int, int]]
) -> list[str]:
    """A schedule mixing full and split backwards: every (stage, micro-batch) it ``visits``
    has one F and either one B or one I and one W (not both), F first, I before W on the
    rank."""
    problems: list[str] = []
    for s, j in visits:
        n = {k: len(where.get(Action(s, k, j), [])) for k in (F, B, I, W)}
        if n[F] != 1 or (n[B], n[I], n[W]) not in ((1, 0, 0), (0, 1, 1)):
            problems.append(f"stage {s} micro-batch {j}: F x{n[F]}, B x{n[B]}, I x{n[I]}, "
                            f"W x{n[W]}; expected F once and B, or I and W, once")  # fmt: skip
            continue
        chain = [Action(s, k, j) for k in ((F, B) if n[B] else (F, I, W))]
        for x, y in zip(chain, chain[1:], strict=False):
            px, py = where[x], where[y]
            if px[0][0] == py[0][0] and px[0][1] > py[0][1]:
                problems.append(
                    f"rank {px[0][0]}: {y} (step {py[0][1]}) before {x} (step {px[0][1]})"
                )
    return problems


def _opt_problems(schedule: Schedule) -> list[str]:
    """Ranks whose OPT has no new gradient (B or W) before it, or that do not end with OPT."""
    problems: list[str] = []
    for r, actions in schedule.items():
        seen_grad = False
        last = None
        for k, a in enumerate(actions):
            if not isinstance(a, Action) or a.kind in COMM_KINDS:
                continue
            if a.kind == OPT:
                if not seen_grad:
                    problems.append(f"rank {r} step {k}: OPT with no new gradient before it")
                seen_grad = False
            elif a.kind in (B, W):
                seen_grad = True
            last = a
        if last is None or last.kind != OPT:
            problems.append(f"rank {r}: does not end with OPT")
    return problems


def _p2p_problems(schedule: Schedule, pp: int, v: int, placement: str = "loop") -> list[str]:
    """If the schedule has SEND/RECV actions: each must appear exactly as often as
    :func:`~simtrain.schedules.comm.p2p_for` asks, on the right side of its compute action."""
    comm = Counter((r, a) for r, acts in schedule.items() for a in acts if a.kind in COMM_KINDS)
    if not comm:
        return []
    return _p2p_count_problems(schedule, comm, pp, v, placement) + _p2p_order_problems(
        schedule, pp, v, placement
    )


def _p2p_count_problems(
    schedule: Schedule, comm: Counter[tuple[int, Action]], pp: int, v: int, placement: str
) -> list[str]:
    """(rank, SEND/RECV) pairs present a different number of times than the compute implies."""
    problems: list[str] = []
    expected = Counter(
        (r, c)
        for r, acts in schedule.items()
        for a in acts
        if a.kind in COMPUTE_KINDS
        for c in p2p_for(a, pp, v, placement)[0] + p2p_for(a, pp, v, placement)[1]
    )
    for key in sorted(set(comm) | set(expected)):
        if comm[key] != expected[key]:
            r, a = key
            problems.append(f"rank {r}: {a} appears {comm[key]} times, expected {expected[key]}")
    return problems


def _p2p_order_problems(schedule: Schedule, pp: int, v: int, placement: str) -> list[str]:
    """SEND/RECV actions on the wrong side of the compute action they serve."""
    problems: list[str] = []
    for r, acts in schedule.items():
        index = {a: k for k, a in enumerate(acts)}
        for k, a in enumerate(acts):
            if a.kind in COMPUTE_KINDS:
                before, after = p2p_for(a, pp, v, placement)
                for c in before:
                    if index.get(c, k) > k:
                        problems.append(f"rank {r}: {c} after {a} (step {k})")
                for c in after:
                    if index.get(c, k) < k:
                        problems.append(f"rank {r}: {c} before {a} (step {k})")
    return problems


def validate_schedule(
    schedule: Schedule,
    pp: int,
    m: int,
    v: int = 1,
    *,
    split_backward: bool | None = False,
    placement: str = "loop",
) -> None:
    """Raise ScheduleError (with the grid) unless ``schedule`` is a valid step of training.

    Checks: ranks 0..pp-1; known kinds; each action on its stage's rank (``placement``: stage %
    pp, the V of ZB-V, or DualPipe's "dual": two pipelines, the first half of the micro-batches
    on stages 0..pp-1, the rest on pp..2pp-1); every (stage, micro-batch) of a micro-batch's
    route exactly once per kind (F and B, or F, I and W when ``split_backward``; either,
    per micro-batch, when ``split_backward`` is None: DualPipeV's mixed backwards); F before
    B / I before W on the rank; each rank ends with OPT and every OPT follows new gradients;
    SEND/RECV (if present) exactly as :func:`~simtrain.schedules.comm.add_p2p` places them; and
    no deadlock when run with unit times.
    """
    problems = _structure(schedule, pp, m, v, split_backward, placement)
    if problems:
        _fail(schedule, pp, m, v, problems)
    _, blocked = run_schedule(schedule, pp, v, UNIT_DURATIONS, placement)
    if blocked:
        _fail(schedule, pp, m, v, ["deadlock:\n" + deadlock_message(blocked)])


def has_split_backward(schedule: Schedule) -> bool:
    """True if the schedule uses I/W (split backward) rather than B."""
    return any(a.kind in (I, W) for acts in schedule.values() for a in acts)
