"""Capacity planning: which hardware, GPU count and parallel layout train a model soonest (or
cheapest) within a deadline and a budget.

``PLAN.yaml`` names a model, the tokens to train, the training settings (global batch: one
value, a list or a range), candidate hardware with a price per GPU-hour, a GPU-count range,
constraints, fixed choices (``fixed:``) and settings every layout shares (``parallelism:``
bucket_mb, dp_mode, layer_split). The planner

1. enumerates tp (divisors of the heads, at most a node) × pp (divisors of the layers) × dp ×
   ZeRO stage (0-3) × micro-batch (1, 2, 4, 8 dividing the per-replica batch) × recompute
   (none, selective, full) × schedule (1F1B, interleaved with v = 2, ZB-H1, GPipe) over GPU
   counts that fill whole nodes, for every hardware candidate;
2. validates each layout exactly as a scenario file (``spec.scenario.check_layout``; rejections keep
   its message);
3. drops what does not fit with the memory model (``costs.memory.stage_memory`` on the first and the
   last pipeline stage, the two extremes: see :func:`memory_check`);
4. ranks the rest with a closed-form step time built from the library's own costs
   (:func:`closed_form_step_s`) and the whole-run model of :mod:`simtrain.apps.goodput`;
5. simulates the top K (plus a few layouts of the closed-form days/cost frontier) in full with
   ``simulate_scenario`` -- each from a scenario mapping through ``parse_scenario``, exactly as
   ``simtrain run`` loads a file -- and ranks them by time-to-train, then cost.

Work runs on a local process pool or a Dask distributed cluster (same tasks, results sorted by
layout, so identical rankings). ``plan_command`` is what ``simtrain plan`` prints; it also writes
``plan.csv`` (every evaluated layout with its status and reason), ``pareto.png`` and
``best.yaml`` (a scenario ``simtrain run`` accepts).

The package, by job:

- :mod:`.file`: ``PLAN.yaml`` parsed and validated into a :class:`Plan`;
- :mod:`.layouts`: the candidate layouts and the scenario mapping of each;
- :mod:`.screen`: validation, the memory check and the estimate of one layout (a :class:`Row`);
- :mod:`.estimate`: the closed-form step time;
- :mod:`.simulate`: the full simulation of a candidate;
- :mod:`.execute`: the local process pool and the Dask executor;
- :mod:`.rank`: the ranking, the days/cost frontier and the candidates to simulate;
- :mod:`.search`: :func:`run_plan`, and :mod:`.result` what it returns;
- :mod:`.output`: plan.csv, pareto.png, best.yaml and the terminal table;
- :mod:`.progress`: the progress bar; :mod:`.command`: ``simtrain plan``.
"""

from __future__ import annotations

from simtrain.apps.goodput import FailureModel
from simtrain.apps.plan.command import plan_command
from simtrain.apps.plan.estimate import closed_form_step_s
from simtrain.apps.plan.execute import DaskExecutor, LocalExecutor, make_executor
from simtrain.apps.plan.file import Constraints, HardwareOption, Plan, load_plan, parse_plan
from simtrain.apps.plan.layouts import Layout, enumerate_layouts, gpu_counts, scenario_data
from simtrain.apps.plan.output import (
    CSV_COLUMNS,
    difference_line,
    plan_table,
    write_best_yaml,
    write_csv,
    write_pareto,
)
from simtrain.apps.plan.progress import Progress, ProgressBar
from simtrain.apps.plan.rank import pareto_front, rank_key, select_candidates
from simtrain.apps.plan.result import BEST_KEYS, SCHEMA_VERSION, PlanResult, Row, best_row
from simtrain.apps.plan.screen import (
    ScreenContext,
    build_context,
    fit_message,
    layout_scenario,
    memory_check,
    screen_chunk,
    screen_layout,
    violations,
)
from simtrain.apps.plan.search import run_plan
from simtrain.apps.plan.simulate import SimOutcome, simulate_layout

__all__ = [
    "BEST_KEYS", "CSV_COLUMNS", "SCHEMA_VERSION", "Constraints", "DaskExecutor", "FailureModel",
    "HardwareOption", "Layout", "LocalExecutor", "Plan", "PlanResult", "Progress", "ProgressBar",
    "Row", "ScreenContext", "SimOutcome", "best_row", "build_context", "closed_form_step_s",
    "difference_line", "enumerate_layouts", "fit_message", "gpu_counts", "layout_scenario",
    "load_plan", "make_executor", "memory_check", "pareto_front", "parse_plan", "plan_command",
    "plan_table", "rank_key", "run_plan", "scenario_data", "screen_chunk", "screen_layout",
    "select_candidates", "simulate_layout", "violations", "write_best_yaml", "write_csv",
    "write_pareto",
]  # fmt: skip
