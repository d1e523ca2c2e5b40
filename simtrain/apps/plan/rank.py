"""Ranking layouts: the ranking key, the days/cost frontier and the candidates to simulate."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from simtrain.apps.plan.result import Row

#: Layouts whose first ranking figure (days, or cost) is within this fraction of each other's
#: are equally fast (or cheap): the simulation's integer nanoseconds and the closed form's
#: float sums differ by parts in 10^9 between layouts that run the same work (a 2 ns difference
#: of two 2.224 s steps outranked 53 GiB of headroom); a millionth is far below any difference
#: the model resolves.
TIE_FRACTION = 1e-6


def rank_key(objective: str) -> Callable[[Row], tuple]:
    """The exact order: constraint-meeting layouts first, then time-to-train and cost (or cost
    and time), then more memory headroom, then the layout itself (deterministic). Near ties
    are :func:`rank_rows`'."""

    def key(r: Row) -> tuple:
        main = (r.final_days, r.final_cost) if objective == "time" else (r.final_cost, r.final_days)
        return (not r.meets_constraints, *main, -r.headroom_bytes, r.layout)

    return key


def rank_rows(rows: Iterable[Row], objective: str) -> list[Row]:
    """``rows`` in :func:`rank_key`'s order, where each run of layouts whose first figure is
    within :data:`TIE_FRACTION` of the run's first (and that meet the constraints alike) is
    ordered by memory headroom, then layout: equally fast layouts, the one further from
    running out of memory first."""
    key = rank_key(objective)
    exact = sorted(rows, key=key)
    out: list[Row] = []
    i = 0
    while i < len(exact):
        head = key(exact[i])
        j = i + 1
        while (
            j < len(exact)
            and key(exact[j])[0] == head[0]
            and (key(exact[j])[1] - head[1] <= TIE_FRACTION * abs(head[1]))
        ):
            j += 1
        out += sorted(exact[i:j], key=lambda r: (-r.headroom_bytes, r.layout))
        i = j
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (lower is better),
    sorted by the first coordinate."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def select_candidates(rows: Sequence[Row], objective: str, top: int) -> list[Row]:
    """The top ``top`` fitting layouts by the closed-form ranking, plus up to ``top // 4`` more
    from the closed-form days/cost frontier (so that the Pareto plot has simulated points at the
    cheap end too)."""
    fitting = rank_rows((r for r in rows if r.status == "estimated"), objective)
    chosen = fitting[:top]
    taken = {r.layout for r in chosen}
    front = [fitting[i] for i in pareto_front([(r.est_days, r.est_cost) for r in fitting])]
    extra = [r for r in front if r.layout not in taken][: max(top // 4, 0)]
    return chosen + extra
