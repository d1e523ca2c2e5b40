"""Ranking layouts: the ranking key, the days/cost frontier and the candidates to simulate."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from simtrain.apps.plan.result import Row


def rank_key(objective: str) -> Callable[[Row], tuple]:
    """Constraint-meeting layouts first, then time-to-train and cost (or cost and time), then
    more memory headroom (equally fast layouts: the one further from running out of memory),
    then the layout itself, so that rankings are deterministic."""

    def key(r: Row) -> tuple:
        # to 6 significant digits: layouts a few nanoseconds apart are equally fast, and the
        # headroom decides between them (a 2 ns difference of two 2.224 s steps outranked
        # 53 GiB of headroom)
        d, c = float(f"{r.final_days:.6g}"), float(f"{r.final_cost:.6g}")
        main = (d, c) if objective == "time" else (c, d)
        return (not r.meets_constraints, *main, -r.headroom_bytes, r.layout)

    return key


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
    fitting = sorted((r for r in rows if r.status == "estimated"), key=rank_key(objective))
    chosen = fitting[:top]
    taken = {r.layout for r in chosen}
    front = [fitting[i] for i in pareto_front([(r.est_days, r.est_cost) for r in fitting])]
    extra = [r for r in front if r.layout not in taken][: max(top // 4, 0)]
    return chosen + extra
