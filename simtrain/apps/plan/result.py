"""What the planner finds: a :class:`Row` per evaluated layout and the :class:`PlanResult` of a
search, with its ``--json`` document."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from simtrain.apps.plan.file import Plan
from simtrain.apps.plan.layouts import Layout

SCHEMA_VERSION = 1

# The public row of a ranked layout (``--json`` "best" entries), in this order.
BEST_KEYS = (
    "hardware", "gpus", "tp", "pp", "dp", "zero_stage", "zero_replicas", "micro_batch",
    "recompute", "schedule", "step_time_s", "tokens_per_s", "mfu", "peak_memory_bytes", "days", "cost", "virtual_stages",
    "sequence_parallel", "global_batch",
)  # fmt: skip


class Row(NamedTuple):
    """A layout and what the planner found: ``status`` is ``rejected`` (layout checks),
    ``no_fit`` (memory), ``estimated`` (closed form only) or ``simulated``."""

    layout: Layout
    status: str
    reason: str = ""
    peak_memory_bytes: int = 0
    capacity_bytes: int = 0
    est_step_time_s: float = math.nan
    est_tokens_per_s: float = math.nan
    est_mfu: float = math.nan
    est_days: float = math.nan
    est_cost: float = math.nan
    step_time_s: float = math.nan
    tokens_per_s: float = math.nan
    mfu: float = math.nan
    tflops_per_gpu: float = math.nan
    days: float = math.nan
    cost: float = math.nan
    goodput: float = math.nan
    meets_constraints: bool = False

    @property
    def fits(self) -> bool:
        return self.status in ("estimated", "simulated")

    @property
    def final_days(self) -> float:
        return self.days if self.status == "simulated" else self.est_days

    @property
    def final_cost(self) -> float:
        return self.cost if self.status == "simulated" else self.est_cost

    @property
    def headroom_bytes(self) -> int:
        return self.capacity_bytes - self.peak_memory_bytes


@dataclass(frozen=True, slots=True)
class PlanResult:
    plan: Plan
    rows: tuple[Row, ...]  # every evaluated layout, in layout order
    best: tuple[Row, ...]  # simulated, fitting, meeting the constraints; best first
    ranked: tuple[Row, ...]  # every simulated fitting layout, best first (constraints first)
    evaluated: int
    feasible: int
    simulated: int
    interrupted: bool = False
    note: str = ""
    elapsed_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "evaluated": self.evaluated,
            "feasible": self.feasible,
            "best": [best_row(r) for r in self.best],
        }
        if self.interrupted:
            doc["note"] = self.note
        return doc


def best_row(r: Row) -> dict[str, Any]:
    lay = r.layout
    row = {
        "hardware": lay.hardware, "gpus": lay.gpus, "tp": lay.tp, "pp": lay.pp, "dp": lay.dp,
        "zero_stage": lay.zero_stage, "zero_replicas": lay.zero_replicas,
        "micro_batch": lay.micro_batch,
        "recompute": lay.recompute, "schedule": lay.schedule, "step_time_s": r.step_time_s,
        "tokens_per_s": r.tokens_per_s, "mfu": r.mfu, "peak_memory_bytes": r.peak_memory_bytes,
        "days": r.days, "cost": r.cost, **({"cp": lay.cp} if lay.cp > 1 else {}),
        "virtual_stages": lay.virtual_stages, "sequence_parallel": lay.sequence_parallel,
        "global_batch": lay.global_batch,
    }  # fmt: skip
    if lay.ep > 1:  # expert parallelism (models with experts only)
        row["ep"] = lay.ep
    if lay.precision:  # a searched precision (fixed.precision)
        row["precision"] = lay.precision
    return row
