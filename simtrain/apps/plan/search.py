"""The search (:func:`run_plan`): enumerate, screen on the executor, simulate the candidates,
rank."""

from __future__ import annotations

import time
from typing import Any

from simtrain.apps.goodput import run_estimate
from simtrain.apps.plan.execute import LocalExecutor
from simtrain.apps.plan.file import Plan
from simtrain.apps.plan.layouts import Layout, enumerate_layouts, scenario_data
from simtrain.apps.plan.progress import Progress
from simtrain.apps.plan.rank import rank_rows, select_candidates
from simtrain.apps.plan.result import PlanResult, Row
from simtrain.apps.plan.screen import (
    ScreenContext,
    build_context,
    headroom_short,
    meets,
    screen_chunk,
    violations,
)
from simtrain.apps.plan.simulate import SimOutcome, indexed_simulate
from simtrain.errors import ConfigError
from simtrain.units import GIB


def screening_work(layout: Layout) -> float:
    """Relative cost of screening ``layout`` (the progress bar's unit): 1 + m / 123 with m its
    micro-batches per step. Fitted on the CPU time of each 256-layout chunk of
    plans/gpt3_175b.yaml in the planner's order (the memory model and the estimate walk the m
    micro-batches; later chunks, of smaller dp, cost 2.6x the first ones): an ETA by layout count
    said 55 s at 10 % of an 80 s screening (-31 %), by this weight 85 s (+6 %); out of sample, on
    plans/llama3_8b.yaml, -1 % from a quarter of the screening on."""
    return 1.0 + layout.global_batch / (layout.dp * layout.micro_batch) / 123.0


def _chunks(layouts: list[Layout], size: int) -> list[list[Layout]]:
    """Chunks in schedule-cache order: layouts sharing (global batch, pp, dp, schedule, v)
    share the pipeline schedules the memory model walks (``memory._cached_schedule``)."""
    order = sorted(layouts, key=lambda x: (x.global_batch, x.pp, x.dp, x.schedule,
                                           x.virtual_stages, x.micro_batch, x))  # fmt: skip
    return [order[i : i + size] for i in range(0, len(order), size)]


#: How goodput.run_estimate's refusal of a run that never finishes begins.
NEVER = "the run never finishes"


def run_plan(
    plan: Plan,
    executor: Any = None,
    top: int | None = None,
    progress: Progress | None = None,
    chunk_size: int = 256,
) -> PlanResult:
    """Search ``plan`` (module docstring). Ctrl-C (KeyboardInterrupt) stops the search and
    returns what was found so far, with a note."""
    t0 = time.perf_counter()
    executor = executor or LocalExecutor(1)
    top = plan.top if top is None else top
    ctx = build_context(plan)
    any_base = next(iter(ctx.bases.values()))
    layouts = enumerate_layouts(plan, any_base.model.layers, any_base.model.heads,
                                any_base.model.num_experts)  # fmt: skip
    total = len(layouts)
    rows: list[Row] = []
    interrupted = False
    note = ""
    sims: dict[Layout, SimOutcome] = {}
    candidates: list[Row] = []
    try:
        tasks = [(ctx, c) for c in _chunks(layouts, chunk_size)]
        total_work, done_work = sum(map(screening_work, layouts)), 0.0
        if progress:
            progress("screening", 0, total_work)
        for part in executor.map_unordered(screen_chunk, tasks):
            rows.extend(part)
            done_work += sum(screening_work(r.layout) for r in part)
            if progress:
                progress("screening", done_work, total_work)
        # every layout that fits is one the run never finishes on under the failure model:
        # the plan has no answer (one such GPU count among others only rejects its layouts)
        stuck = [r for r in rows if r.status == "rejected" and r.reason.startswith(NEVER)]
        if stuck and not any(r.status == "estimated" for r in rows):
            raise ConfigError(None, "failures", stuck[0].reason)
        candidates = select_candidates(rows, plan.objective, top)
        items = [(scenario_data(plan, r.layout), plan.file, plan.base_dir) for r in candidates]
        by_index = {i: r.layout for i, r in enumerate(candidates)}
        if progress:
            progress("simulating", 0, len(items))
        done = 0
        for i, out in executor.map_unordered(indexed_simulate, list(enumerate(items))):
            sims[by_index[i]] = out
            done += 1
            if progress:
                progress("simulating", done, len(items))
    except KeyboardInterrupt:
        interrupted = True
        if len(rows) < total:
            note = (f"interrupted (Ctrl-C) while screening: {len(rows):,} of {total:,} layouts "
                    f"screened, best by the closed-form estimate below were "
                    f"{'simulated' if sims else 'not simulated'}")  # fmt: skip
        else:
            note = (f"interrupted (Ctrl-C) while simulating: {len(sims)} of "
                    f"{len(candidates)} candidates simulated; best found so far")  # fmt: skip
    finally:
        close = getattr(executor, "close", None)
        if close is not None:
            close(terminate=interrupted)
    return _finish(plan, ctx, rows, sims, interrupted, note, time.perf_counter() - t0)


def _finish(plan: Plan, ctx: ScreenContext, rows: list[Row], sims: dict[Layout, SimOutcome],
            interrupted: bool, note: str, elapsed: float) -> PlanResult:  # fmt: skip
    out: list[Row] = []
    for r in rows:
        s = sims.get(r.layout)
        if s is None:
            out.append(r)
            continue
        if s.error:
            out.append(r._replace(status="rejected", reason=f"simulation failed: {s.error}",
                                  meets_constraints=False))  # fmt: skip
            continue
        peak = max(s.peak_memory_bytes, s.timeline_peak_bytes)  # the estimate's or the trace's
        if not s.fits:
            out.append(r._replace(
                status="no_fit", peak_memory_bytes=peak,
                reason=f"does not fit in the full simulation: peak {peak / GIB:,.2f} of "
                f"{s.capacity_bytes / GIB:,.2f} GiB", meets_constraints=False))  # fmt: skip
            continue
        if short := headroom_short(ctx.constraints, peak, s.capacity_bytes):
            out.append(r._replace(status="no_fit", peak_memory_bytes=peak, reason=short,
                                  meets_constraints=False))  # fmt: skip
            continue
        try:
            run = run_estimate(ctx.tokens, s.tokens_per_s, r.layout.gpus,
                               ctx.prices[r.layout.hardware], ctx.checkpoint_bytes, ctx.failures)  # fmt: skip
        except ConfigError as exc:  # a run that never finishes at this size: this layout only
            out.append(r._replace(status="rejected", reason=exc.message, meets_constraints=False))
            continue
        out.append(r._replace(
            status="simulated", reason=violations(ctx.constraints, run.days, run.cost),
            peak_memory_bytes=s.peak_memory_bytes, step_time_s=s.step_time_s,
            tokens_per_s=s.tokens_per_s, mfu=s.mfu, tflops_per_gpu=s.tflops_per_gpu,
            days=run.days, cost=run.cost, goodput=run.goodput,
            meets_constraints=meets(ctx.constraints, run.days, run.cost)))  # fmt: skip
    out.sort(key=lambda r: r.layout)
    ranked = rank_rows((r for r in out if r.status == "simulated"), plan.objective)
    if not ranked and interrupted:  # nothing simulated yet: the closed-form best
        ranked = rank_rows((r for r in out if r.status == "estimated"), plan.objective)[: plan.top]
    best = tuple(r for r in ranked if r.status == "simulated" and r.meets_constraints)
    counts: dict[str, int] = {}
    for r in out:
        counts[r.status] = counts.get(r.status, 0) + 1
    feasible = sum(1 for r in out if r.fits and r.meets_constraints)
    return PlanResult(plan, tuple(out), best, tuple(ranked), len(out), feasible,
                      sum(1 for r in out if r.status == "simulated"), interrupted, note,
                      elapsed, counts)  # fmt: skip
