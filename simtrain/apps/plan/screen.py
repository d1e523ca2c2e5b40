"""Screening one layout: validate it as a scenario file would be, check its memory on the
extreme pipeline stages, estimate its step time in closed form (:mod:`.estimate`) and the whole
run (:mod:`simtrain.apps.goodput`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from simtrain.apps.goodput import FailureModel, run_estimate
from simtrain.apps.plan.estimate import closed_form_step_s
from simtrain.apps.plan.file import Constraints, Plan
from simtrain.apps.plan.layouts import Layout, layout_group, scenario_data
from simtrain.apps.plan.result import Row
from simtrain.costs.compute import model_flops_per_step
from simtrain.costs.memory import StageMemory, stage_memory
from simtrain.costs.params import full_model_param_tensors, model_state_bytes
from simtrain.errors import ConfigError, SimtrainError
from simtrain.layout.step import resolve
from simtrain.spec.scenario import (
    ClusterSpec,
    Scenario,
    check_layout,
    parse_scenario,
    parse_training,
)
from simtrain.units import GIB


@dataclass(frozen=True, slots=True)
class ScreenContext:
    """What a worker needs to screen layouts: one validated base scenario per (hardware,
    global batch), the run parameters and constraints."""

    file: str
    bases: dict[tuple[str, int], Scenario]
    prices: dict[str, float]
    tokens: float
    checkpoint_bytes: float
    failures: FailureModel
    constraints: Constraints
    # the plan's training.recompute_modules, its selective layouts' (validated once here)
    recompute_modules: tuple[str, ...] = ()


def build_context(plan: Plan) -> ScreenContext:
    bases: dict[tuple[str, int], Scenario] = {}
    ckpt = 0.0
    for hw in plan.hardware:
        for gb in plan.global_batches:
            lay = Layout(hw.name, 1, 1, 1, 1, 0, 1, "none", "1f1b", 1, gb)
            data = scenario_data(plan, lay)
            data["training"]["micro_batch"] = 1
            data["training"]["global_batch"] = gb
            if plan.runtime is not None:  # every option: each layout's scenario drops its own
                data["runtime"] = plan.runtime
            sc = parse_scenario(data, plan.file, Path(plan.base_dir))
            bases[(hw.name, gb)] = sc
            if not ckpt:
                ms = model_state_bytes(full_model_param_tensors(sc.model, sc.training),
                                       sc.training)  # fmt: skip
                ckpt = float(ms.parameters + ms.master_weights + ms.optimizer_states)
    modules: tuple[str, ...] = ()
    if "recompute_modules" in plan.training:
        raw = {"recompute": "selective", "recompute_modules": plan.training["recompute_modules"]}
        modules = parse_training(raw, plan.file).recompute_modules
    return ScreenContext(plan.file, bases, {h.name: h.price_per_gpu_hour for h in plan.hardware},
                         plan.tokens, ckpt, plan.failures, plan.constraints,
                         modules)  # fmt: skip


def layout_scenario(base: Scenario, layout: Layout, file: str,
                    recompute_modules: tuple[str, ...] = ()) -> Scenario:  # fmt: skip
    """The layout's scenario from its (hardware, global batch) base: the same object
    ``parse_scenario(scenario_data(...))`` builds (tested), without re-reading the hardware
    file, validated by the same ``check_layout`` (raises ConfigError)."""
    gpn = min(base.hardware.gpus_per_node, layout.gpus)
    sc = replace(
        base,
        cluster=ClusterSpec(nodes=-(-layout.gpus // gpn), gpus_per_node=gpn),
        training=replace(base.training, micro_batch=layout.micro_batch,
                         recompute=layout.recompute,
                         recompute_modules=(recompute_modules
                                            if layout.recompute == "selective" else ()),
                         precision=layout.precision or base.training.precision),  # fmt: skip
        parallelism=replace(
            base.parallelism, dp=layout.dp, tp=layout.tp, pp=layout.pp,
            schedule=layout.schedule, virtual_stages=layout.virtual_stages,
            zero_stage=layout.zero_stage, sequence_parallel=layout.sequence_parallel,
            cp=layout.cp,
            ep=layout.ep,
            zero_replicas=layout.zero_replicas,
            microbatch_group_size=layout_group(layout),
        ),
    )  # fmt: skip
    check_layout(sc, file)
    return sc


def memory_check(sc: Scenario) -> tuple[StageMemory, ...]:
    """The memory model on the first and the last pipeline stage. The peak over all stages is
    on one of them for every schedule the planner enumerates: stage 0 holds the embedding and
    the most micro-batches in flight (1F1B, ZB-H1, interleaved: p − s; GPipe: m on every
    stage), the last stage the LM head and loss; the stages between hold the same blocks with
    fewer activations. (``tests/test_plan.py`` checks this against ``estimate_memory``.) When
    stage 0 does not fit, the layout does not fit and the last stage is not computed. Where the
    split gives the ranks unequal layer counts (``embedding_as_layer``, ``compute_balanced``, a
    list, Megatron's uneven rule) the first middle rank with the most layers is checked too:
    it may hold more than either end (review: DeepSpeed's embedding_as_layer put the peak on
    stage 1)."""
    first = stage_memory(sc, 0)
    pp = sc.parallelism.pp
    if pp == 1 or not first.fits:
        return (first,)
    out = (first, stage_memory(sc, pp - 1))
    step = resolve(sc)
    layers = [step.rank_layers(r) for r in range(pp)]
    if pp > 2 and len(set(layers)) > 1:
        middle = max(range(1, pp - 1), key=lambda r: (layers[r], -r))
        out += (stage_memory(sc, middle),)
    return out


def fit_message(sc: Scenario, stages: tuple[StageMemory, ...]) -> str:
    """ "does not fit: short by X GiB in <category> (stage s)" for the worst stage."""
    worst = max(stages, key=lambda s: s.peak_memory_bytes - s.capacity_bytes)
    short = worst.peak_memory_bytes - worst.capacity_bytes
    cat, val = max(worst.memory_bytes, key=lambda kv: kv[1])
    return (f"does not fit: short by {short / GIB:,.2f} GiB in {cat} ({val / GIB:,.2f} GiB, "
            f"stage {worst.stage}; peak {worst.peak_memory_bytes / GIB:,.2f} of "
            f"{worst.capacity_bytes / GIB:,.2f} GiB)")  # fmt: skip


def meets(c: Constraints, days: float, cost: float) -> bool:
    if c.deadline_days is not None and not days <= c.deadline_days:
        return False
    return not (c.budget is not None and not cost <= c.budget)


#: What a layout turned away by the memory headroom says (plan.csv, the table's counts).
HEADROOM_KEY = "constraints.memory_headroom"


def headroom_short(c: Constraints, peak: int, capacity: int) -> str:
    """Why a fitting peak leaves less than ``constraints.memory_headroom`` of the GPU free, or
    "" (the share it leaves rounded down: 14.96 % is "14.9 %", never the limit itself)."""
    h = c.memory_headroom
    if h is None or peak <= (1 - h) * capacity:
        return ""
    free = math.floor(1000 * (capacity - peak) / capacity) / 10
    return (f"leaves {free:.1f} % of the GPU's memory free (peak {peak / GIB:,.2f} of "
            f"{capacity / GIB:,.2f} GiB), under {HEADROOM_KEY} {100 * h:g} %")  # fmt: skip


def violations(c: Constraints, days: float, cost: float) -> str:
    out = []
    if c.deadline_days is not None and not days <= c.deadline_days:
        out.append(f"over deadline: {days:,.1f} days > {c.deadline_days:g}")
    if c.budget is not None and not cost <= c.budget:
        out.append(f"over budget: ${cost:,.0f} > ${c.budget:,.0f}")
    return "; ".join(out)


def screen_layout(ctx: ScreenContext, layout: Layout) -> Row:
    """Validate, check memory and estimate one layout (never raises on a bad layout)."""
    base = ctx.bases[(layout.hardware, layout.global_batch)]
    try:
        sc = layout_scenario(base, layout, ctx.file, ctx.recompute_modules)
    except ConfigError as exc:
        text = str(exc)
        prefix = f"{ctx.file}: "
        return Row(layout, "rejected", text[len(prefix) :] if text.startswith(prefix) else text)
    try:
        stages = memory_check(sc)
    except SimtrainError as exc:  # e.g. a schedule that cannot be built
        return Row(layout, "rejected", str(exc).splitlines()[0])
    peak = max(s.peak_memory_bytes for s in stages)
    cap = stages[0].capacity_bytes
    if not all(s.fits for s in stages):
        return Row(layout, "no_fit", fit_message(sc, stages), peak, cap)
    if short := headroom_short(ctx.constraints, peak, cap):
        return Row(layout, "no_fit", short, peak, cap)
    step = max(closed_form_step_s(sc, stages), 1e-9)  # durations are whole ns: never 0
    tps = sc.tokens_per_step / step
    hw = sc.hardware
    peak_flops = hw.compute_peak(sc.training.precision_spec.compute_dtype)
    mfu = model_flops_per_step(sc) / (step * layout.gpus * peak_flops)
    try:
        run = run_estimate(ctx.tokens, tps, layout.gpus, ctx.prices[layout.hardware],
                           ctx.checkpoint_bytes, ctx.failures)  # fmt: skip
    except ConfigError as exc:  # a run that never finishes at this size: this layout only
        return Row(layout, "rejected", exc.message, peak, cap)
    ok = meets(ctx.constraints, run.days, run.cost)
    return Row(layout, "estimated", violations(ctx.constraints, run.days, run.cost), peak, cap,
               step, tps, mfu, run.days, run.cost, meets_constraints=ok)  # fmt: skip


def screen_chunk(args: tuple[ScreenContext, list[Layout]]) -> list[Row]:
    """Worker task: screen a chunk of layouts."""
    ctx, layouts = args
    return [screen_layout(ctx, lay) for lay in layouts]
