"""Progress of a search: the bar with ETA of :mod:`simtrain.report.progress`, and the work the
planner expects after each phase (:func:`work_after`), in the phase's own units."""

from __future__ import annotations

from simtrain.report.progress import Later, Progress, ProgressBar

# Costs in units of screening work (``search.screening_work``: 1 + m/123 per layout, ~0.24 ms
# of one dev-machine core, benchmarks/bench_plan.py and the chunk times of plans/gpt3_175b.yaml;
# only their ratios matter, so they hold on a faster or slower machine):
# - a full simulation of a candidate: ~50 (GPT-3 175B candidates of plans/gpt3_175b.yaml 0.037 s
#   CPU each, ~150 units; plans/llama3_8b.yaml's 7 ms, ~18 units);
# - writing the outputs: pareto.png (pyplot imported and drawn, 1.2 s) ~3,000 units, plus
#   plan.csv, 14 us a row: ~0.03 of the screening work (a layout is ~1.5 units on average).
SIMULATION_WORK = 50.0
OUTPUT_WORK = 3000.0
CSV_SHARE = 0.03


def work_after(candidates: int) -> Later:
    """``later`` for the planner's bar: after the screening, ``candidates`` simulations and the
    outputs (plan.csv grows with the screening's work); after the simulations, the outputs, at
    the screening's rate."""
    screening_total = [0.0]

    def outputs() -> float:
        return OUTPUT_WORK + CSV_SHARE * screening_total[0]

    def later(phase: str, done: float, total: float) -> dict[str, float]:
        if phase == "screening":
            screening_total[0] = total
            return {"screening": candidates * SIMULATION_WORK + outputs()}
        if phase == "simulating":
            return {"screening": outputs()}
        return {}

    return later


__all__ = ["Progress", "ProgressBar", "work_after"]
