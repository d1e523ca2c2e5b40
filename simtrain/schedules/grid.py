"""Text rendering of a schedule: one row per rank, one fixed-width column per step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from simtrain.schedules.actions import Action

_GAP = "  "


def format_grid(schedule: Mapping[int, Sequence[Action | None]]) -> str:
    """Rank x step table; column k is each rank's k-th action (``None`` prints ``.``).

    Example (gpipe, pp=2, m=2)::

        step   | 0     1     2     3     4
        rank 0 | 0F0   0F1   0B0   0B1   0OPT
        rank 1 | 1F0   1F1   1B0   1B1   1OPT
    """
    ranks = sorted(schedule)
    cells = {r: ["." if a is None else str(a) for a in schedule[r]] for r in ranks}
    steps = max((len(c) for c in cells.values()), default=0)
    width = max([3, len(str(max(steps - 1, 0)))] + [len(x) for c in cells.values() for x in c])
    label = max([4] + [len(f"rank {r}") for r in ranks])

    def row(head: str, items: Sequence[str]) -> str:
        return f"{head:<{label}} | {_GAP.join(x.ljust(width) for x in items)}".rstrip()

    lines = [row("step", [str(k) for k in range(steps)])]
    lines += [row(f"rank {r}", cells[r]) for r in ranks]
    return "\n".join(lines)
