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
2. validates each layout exactly as a scenario file (``config.check_layout``; rejections keep
   its message);
3. drops what does not fit with the memory model (``memory.stage_memory`` on the first and the
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
"""

from __future__ import annotations

import csv
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from simtrain.apps.goodput import INTERVAL_RULES, FailureModel, run_estimate
from simtrain.apps.simulate import dp_ns, simulate_scenario, tp_allreduce_ns
from simtrain.costs.collectives import group_link, p2p_time_s
from simtrain.costs.compute import chunk_costs, model_flops_per_step, optimizer_step_ns
from simtrain.costs.memory import (
    PRECISIONS,
    StageMemory,
    full_model_param_tensors,
    model_state_bytes,
    pipeline_schedule,
    scenario_chunks,
    stage_memory,
)
from simtrain.errors import ConfigError, SimtrainError
from simtrain.spec.hardware import load_hardware
from simtrain.spec.scenario import (
    RECOMPUTE,
    SCHEDULES,
    ClusterSpec,
    Scenario,
    _mapping,
    _no_unknown,
    check_layout,
    parse_model,
    parse_parallelism,
    parse_scenario,
    parse_training,
)
from simtrain.spec.yamlfile import load_yaml

GIB = 2**30
SCHEMA_VERSION = 1
DEFAULT_TOP = 32
DEFAULT_MICRO_BATCHES = (1, 2, 4, 8)
DEFAULT_ZERO_STAGES = (0, 1, 2, 3)
DEFAULT_RECOMPUTE = ("none", "selective", "full")
DEFAULT_SCHEDULES = ("1f1b", "interleaved", "zb_h1", "gpipe")
DEFAULT_VIRTUAL_STAGES = 2
OBJECTIVES = ("time", "cost")

TOP_KEYS = (
    "name", "description", "model", "tokens", "training", "hardware", "gpus", "constraints",
    "fixed", "parallelism", "failures", "objective", "top",
)  # fmt: skip
TRAINING_KEYS = (
    "seq_len", "global_batch", "precision", "optimizer", "cross_entropy", "peft", "offload",
)  # fmt: skip
HARDWARE_KEYS = ("name", "price_per_gpu_hour")
GPUS_KEYS = ("min", "max")
CONSTRAINT_KEYS = ("deadline_days", "budget", "max_gpus")
FIXED_KEYS = (
    "tp", "pp", "dp", "zero_stage", "micro_batch", "recompute", "schedule", "virtual_stages",
    "sequence_parallel",
)  # fmt: skip
# Settings every layout shares (not searched): the DP gradient bucket (Megatron-LM 2021's
# "local" DDP is one bucket reduced after the backward: bucket_mb >= the gradient), the DP
# implementation and the pipeline layer split.
PARALLEL_SETTING_KEYS = ("bucket_mb", "dp_mode", "layer_split", "zero3_max_live_params")
FAILURE_KEYS = (
    "enabled", "mtbf_gpu_hours", "checkpoint_interval", "checkpoint_s", "restart_s",
    "relaunch_s", "checkpoint_write_gb_per_s_per_gpu",
)  # fmt: skip
BATCH_RANGE_KEYS = ("min", "max", "step")

# The public row of a ranked layout (``--json`` "best" entries), in this order.
BEST_KEYS = (
    "hardware", "gpus", "tp", "pp", "dp", "zero_stage", "micro_batch", "recompute", "schedule",
    "step_time_s", "tokens_per_s", "mfu", "peak_memory_bytes", "days", "cost",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True, slots=True)
class HardwareOption:
    name: str  # profile name (hardware/*.yaml) or an absolute path to a profile
    price_per_gpu_hour: float
    gpus_per_node: int
    display_name: str


@dataclass(frozen=True, slots=True)
class Constraints:
    deadline_days: float | None = None
    budget: float | None = None
    max_gpus: int | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    file: str
    base_dir: str
    model: dict[str, Any]  # the model mapping, as a scenario file takes it (paths absolute)
    tokens: float
    training: dict[str, Any]  # training keys except global_batch (searched ones excluded)
    global_batches: tuple[int, ...]
    hardware: tuple[HardwareOption, ...]
    gpu_counts: tuple[int, ...] | None  # explicit counts, or None for the range below
    gpus_min: int
    gpus_max: int
    constraints: Constraints
    fixed: dict[str, tuple[Any, ...]]  # key -> allowed values
    failures: FailureModel
    parallelism: dict[str, Any] = field(default_factory=dict)  # PARALLEL_SETTING_KEYS
    objective: str = "time"
    top: int = DEFAULT_TOP
    description: str = ""


def _num(value: Any, file: str, key: str, *, integer: bool = False, minimum: float = 0.0,
         strict: bool = True) -> float:  # fmt: skip
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(file, key, "must be an integer" if integer else "must be a number",
                          value)  # fmt: skip
    if integer and not float(value).is_integer():
        raise ConfigError(file, key, "must be an integer", value)
    if (value <= minimum) if strict else (value < minimum):
        raise ConfigError(file, key, f"must be {'>' if strict else '>='} {minimum:g}", value)
    return int(value) if integer else float(value)


def _global_batches(value: Any, file: str) -> tuple[int, ...]:
    """An integer, a list of integers, or ``{min, max[, step]}``: with ``step`` an arithmetic
    range, without it min, 2·min, 4·min ... up to max."""
    key = "training.global_batch"
    if isinstance(value, dict):
        _no_unknown(value, BATCH_RANGE_KEYS, file, f"{key}.")
        for k in ("min", "max"):
            if k not in value:
                raise ConfigError(file, f"{key}.{k}", "missing required key")
        lo = int(_num(value["min"], file, f"{key}.min", integer=True))
        hi = int(_num(value["max"], file, f"{key}.max", integer=True))
        if hi < lo:
            raise ConfigError(file, f"{key}.max", f"must be >= min = {lo}", hi)
        if "step" in value:
            step = int(_num(value["step"], file, f"{key}.step", integer=True))
            return tuple(range(lo, hi + 1, step))
        out, b = [], lo
        while b <= hi:
            out.append(b)
            b *= 2
        return tuple(out)
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(file, key, "must not be empty", value)
    batches = [int(_num(v, file, key, integer=True)) for v in items]
    return tuple(sorted(set(batches)))


def _choices(key: str, value: Any, file: str) -> tuple[Any, ...]:
    """A fixed choice: one value or a list of them, each checked like a scenario key."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(file, f"fixed.{key}", "must not be empty", value)
    out: list[Any] = []
    for v in items:
        if key in ("recompute", "schedule"):
            allowed = RECOMPUTE if key == "recompute" else SCHEDULES
            if v not in allowed:
                raise ConfigError(file, f"fixed.{key}", "unknown value", v, " | ".join(allowed))
        elif key == "sequence_parallel":
            if not isinstance(v, bool):
                raise ConfigError(file, f"fixed.{key}", "must be true or false", v)
        elif key == "zero_stage":
            if v not in (0, 1, 2, 3) or isinstance(v, bool):
                raise ConfigError(file, f"fixed.{key}", "unknown value", v, "0 | 1 | 2 | 3")
        else:
            v = int(_num(v, file, f"fixed.{key}", integer=True))
        out.append(v)
    return tuple(dict.fromkeys(out))


def _resolve_path(value: Any, base_dir: Path) -> Any:
    """Relative file paths in a plan are relative to the plan's folder; make them absolute so
    that best.yaml works from any folder."""
    if isinstance(value, str):
        p = Path(value)
        if not p.is_absolute() and not p.exists() and (base_dir / p).exists():
            return str((base_dir / p).resolve())
        if not p.is_absolute() and p.exists():
            return str(p.resolve())
    return value


def parse_plan(data: Any, file: str, base_dir: Path | None = None) -> Plan:
    """Validate a plan mapping. Errors name the file, the key, the value and what is allowed."""
    base = base_dir if base_dir is not None else Path(".")
    data = _mapping(data, file, "<root>")
    _no_unknown(data, TOP_KEYS, file, "")
    for k in ("model", "tokens", "training", "hardware"):
        if k not in data:
            raise ConfigError(file, k, "missing required key")
    model = dict(_mapping(data["model"], file, "model"))
    if "hf_config" in model:
        model["hf_config"] = _resolve_path(model["hf_config"], base)
    parse_model(model, file, base)  # validate now: errors name the plan file
    tokens = _num(data["tokens"], file, "tokens")

    training = dict(_mapping(data["training"], file, "training"))
    for k in ("micro_batch", "recompute"):
        if k in training:
            raise ConfigError(file, f"training.{k}", f"is searched by the planner; fix it with "
                              f"fixed.{k}", training[k])  # fmt: skip
    _no_unknown(training, TRAINING_KEYS, file, "training.")
    if "global_batch" not in training:
        raise ConfigError(file, "training.global_batch", "missing required key")
    batches = _global_batches(training.pop("global_batch"), file)
    parse_training({**training, "global_batch": batches[0]}, file)  # validate the other keys

    hw_raw = data["hardware"]
    if isinstance(hw_raw, dict | str):
        hw_raw = [hw_raw]
    if not isinstance(hw_raw, list) or not hw_raw:
        raise ConfigError(file, "hardware", "must be a list of {name, price_per_gpu_hour}", hw_raw)
    options: list[HardwareOption] = []
    for i, h in enumerate(hw_raw):
        key = f"hardware[{i}]"
        if isinstance(h, str):
            h = {"name": h}
        h = _mapping(h, file, key)
        _no_unknown(h, HARDWARE_KEYS, file, f"{key}.")
        if "name" not in h:
            raise ConfigError(file, f"{key}.name", "missing required key")
        if not isinstance(h["name"], str):
            raise ConfigError(file, f"{key}.name", "must be a profile name or a path", h["name"])
        name = (
            str(_resolve_path(h["name"], base))
            if h["name"].endswith((".yaml", ".yml"))
            else h["name"]
        )
        prof = load_hardware(name, file, f"{key}.name", base)
        price = _num(h.get("price_per_gpu_hour", 0.0), file, f"{key}.price_per_gpu_hour",
                     minimum=0.0, strict=False)  # fmt: skip
        options.append(HardwareOption(name, price, prof.gpus_per_node, prof.display_name))
    if len({o.name for o in options}) != len(options):
        raise ConfigError(file, "hardware", "lists a profile twice", [o.name for o in options])

    counts: tuple[int, ...] | None = None
    g = data.get("gpus", {"min": 1, "max": 1024})
    if isinstance(g, dict):
        _no_unknown(g, GPUS_KEYS, file, "gpus.")
        lo = int(_num(g.get("min", 1), file, "gpus.min", integer=True))
        if "max" not in g:
            raise ConfigError(file, "gpus.max", "missing required key")
        hi = int(_num(g["max"], file, "gpus.max", integer=True))
        if hi < lo:
            raise ConfigError(file, "gpus.max", f"must be >= gpus.min = {lo}", hi)
    else:
        items = g if isinstance(g, list) else [g]
        counts = tuple(sorted({int(_num(v, file, "gpus", integer=True)) for v in items}))
        if not counts:
            raise ConfigError(file, "gpus", "must not be empty", g)
        lo, hi = counts[0], counts[-1]

    c = _mapping(data.get("constraints"), file, "constraints")
    _no_unknown(c, CONSTRAINT_KEYS, file, "constraints.")
    constraints = Constraints(
        deadline_days=_num(c["deadline_days"], file, "constraints.deadline_days")
        if c.get("deadline_days") is not None else None,
        budget=_num(c["budget"], file, "constraints.budget")
        if c.get("budget") is not None else None,
        max_gpus=int(_num(c["max_gpus"], file, "constraints.max_gpus", integer=True))
        if c.get("max_gpus") is not None else None,
    )  # fmt: skip

    fixed_raw = _mapping(data.get("fixed"), file, "fixed")
    _no_unknown(fixed_raw, FIXED_KEYS, file, "fixed.")
    fixed = {k: _choices(k, v, file) for k, v in fixed_raw.items()}
    par = dict(_mapping(data.get("parallelism"), file, "parallelism"))
    searched = [k for k in par if k in FIXED_KEYS]
    if searched:
        raise ConfigError(file, f"parallelism.{searched[0]}", f"is searched by the planner; fix "
                          f"it with fixed.{searched[0]}", par[searched[0]])  # fmt: skip
    _no_unknown(par, PARALLEL_SETTING_KEYS, file, "parallelism.")
    parse_parallelism(par, file)  # validate the values now: errors name the plan file

    fm = _failure_model(_mapping(data.get("failures"), file, "failures"), file)

    objective = data.get("objective", "time")
    if objective not in OBJECTIVES:
        raise ConfigError(file, "objective", "unknown value", objective, " | ".join(OBJECTIVES))
    top = int(_num(data.get("top", DEFAULT_TOP), file, "top", integer=True))
    name = data.get("name") or (Path(file).stem if file else "plan")
    return Plan(
        name=str(name), file=file, base_dir=str(base), model=model, tokens=tokens,
        training=training, global_batches=batches, hardware=tuple(options), gpu_counts=counts,
        gpus_min=lo, gpus_max=hi, constraints=constraints, fixed=fixed, failures=fm,
        parallelism=par, objective=str(objective), top=top,
        description=str(data.get("description", "")),
    )  # fmt: skip


def _failure_model(f: dict[str, Any], file: str) -> FailureModel:
    _no_unknown(f, FAILURE_KEYS, file, "failures.")
    enabled = f.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(file, "failures.enabled", "must be true or false", enabled)
    kw: dict[str, Any] = {}
    if "mtbf_gpu_hours" in f:
        kw["mtbf_gpu_hours"] = _num(f["mtbf_gpu_hours"], file, "failures.mtbf_gpu_hours")
    if not enabled:
        kw["mtbf_gpu_hours"] = None
    ci = f.get("checkpoint_interval", "young")
    if isinstance(ci, str):
        if ci not in INTERVAL_RULES:
            raise ConfigError(file, "failures.checkpoint_interval", "unknown value", ci,
                              " | ".join(INTERVAL_RULES) + " | seconds")  # fmt: skip
        kw["interval_rule"] = ci
    else:
        kw["checkpoint_interval_s"] = _num(ci, file, "failures.checkpoint_interval")
    for k in ("checkpoint_s", "restart_s", "relaunch_s"):
        if k in f:
            kw[k] = _num(f[k], file, f"failures.{k}", minimum=0.0, strict=False)
    if "checkpoint_write_gb_per_s_per_gpu" in f:
        kw["checkpoint_bytes_per_s_per_gpu"] = 1e9 * _num(
            f["checkpoint_write_gb_per_s_per_gpu"],
            file,
            "failures.checkpoint_write_gb_per_s_per_gpu",
        )
    return FailureModel(**kw)


def load_plan(path: str | Path) -> Plan:
    p = Path(path)
    data = load_yaml(p)
    if not isinstance(data, dict):
        raise ConfigError(str(p), "<root>", "a plan must be a mapping",
                          type(data).__name__ if data is not None else None)  # fmt: skip
    return parse_plan(data, str(p), p.parent)


# ---------------------------------------------------------------------------------------------
# Layouts and rows


class Layout(NamedTuple):
    """One candidate, in sort order (rankings break ties on this tuple)."""

    hardware: str
    gpus: int
    tp: int
    pp: int
    dp: int
    zero_stage: int
    micro_batch: int
    recompute: str
    schedule: str
    virtual_stages: int
    global_batch: int
    sequence_parallel: bool = False


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


def scenario_data(plan: Plan, layout: Layout, name: str | None = None) -> dict[str, Any]:
    """The scenario mapping of a layout, exactly what a scenario file would hold."""
    gpn = min(_gpus_per_node(plan, layout.hardware), layout.gpus)
    par: dict[str, Any] = {
        **plan.parallelism,
        "dp": layout.dp, "tp": layout.tp, "pp": layout.pp, "schedule": layout.schedule,
        "virtual_stages": layout.virtual_stages, "zero_stage": layout.zero_stage,
    }  # fmt: skip
    if layout.sequence_parallel:
        par["sequence_parallel"] = True
    return {
        "name": name or plan.name,
        "model": dict(plan.model),
        "hardware": layout.hardware,
        "cluster": {"nodes": -(-layout.gpus // gpn), "gpus_per_node": gpn},
        "training": {
            **plan.training,
            "global_batch": layout.global_batch,
            "micro_batch": layout.micro_batch,
            "recompute": layout.recompute,
        },
        "parallelism": par,
    }


def _gpus_per_node(plan: Plan, hardware: str) -> int:
    for h in plan.hardware:
        if h.name == hardware:
            return h.gpus_per_node
    raise KeyError(hardware)


def _price(plan: Plan, hardware: str) -> float:
    for h in plan.hardware:
        if h.name == hardware:
            return h.price_per_gpu_hour
    raise KeyError(hardware)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def gpu_counts(plan: Plan, gpus_per_node: int) -> list[int]:
    """GPU counts to try: the explicit list, or every count in [min, max] (and at most
    ``constraints.max_gpus``) that is whole nodes, or fits in one node."""
    hi = plan.gpus_max
    if plan.constraints.max_gpus is not None:
        hi = min(hi, plan.constraints.max_gpus)
    if plan.gpu_counts is not None:
        return [g for g in plan.gpu_counts if g <= hi]
    return [g for g in range(plan.gpus_min, hi + 1) if g <= gpus_per_node or g % gpus_per_node == 0]


def enumerate_layouts(plan: Plan, model_layers: int, heads: int) -> list[Layout]:
    """Every candidate layout (module docstring). A (hardware, GPUs, tp, pp) whose dp does not
    divide the global batch gives one layout, for check_layout to reject with its reason;
    otherwise micro-batches not dividing the per-replica batch are skipped (unless fixed)."""
    fx = plan.fixed
    out: list[Layout] = []
    sp_opts = fx.get("sequence_parallel", (False,))
    for hw in plan.hardware:
        gpn = hw.gpus_per_node
        tps = fx.get("tp") or tuple(d for d in _divisors(heads) if d <= gpn)
        pps = fx.get("pp") or tuple(_divisors(model_layers))
        for gb in plan.global_batches:
            for g in gpu_counts(plan, gpn):
                for tp in tps:
                    for pp in pps:
                        if g % (tp * pp):
                            continue
                        dp = g // (tp * pp)
                        if "dp" in fx and dp not in fx["dp"]:
                            continue
                        out.extend(_group_layouts(plan, hw.name, gb, g, tp, pp, dp, sp_opts))
    return out


def _group_layouts(plan: Plan, hw: str, gb: int, g: int, tp: int, pp: int, dp: int,
                   sp_opts: tuple[Any, ...]) -> list[Layout]:  # fmt: skip
    fx = plan.fixed
    rcs = fx.get("recompute", DEFAULT_RECOMPUTE)
    mbs_all = fx.get("micro_batch", DEFAULT_MICRO_BATCHES)
    if gb % dp:  # no micro-batch can work: one layout carries check_layout's reason
        return [Layout(hw, g, tp, pp, dp, 0, mbs_all[0], rcs[0], "1f1b", 1, gb, sp_opts[0])]
    per_replica = gb // dp
    mbs = mbs_all if "micro_batch" in fx else tuple(b for b in mbs_all if per_replica % b == 0)
    zeros = fx.get("zero_stage", DEFAULT_ZERO_STAGES if dp > 1 else (0,))
    if dp == 1 and "zero_stage" not in fx:
        zeros = (0,)
    # With pp = 1 every schedule is plain gradient accumulation (memory.pipeline_schedule).
    scheds = fx.get("schedule", DEFAULT_SCHEDULES) if pp > 1 else ("1f1b",)
    vs = fx.get("virtual_stages", (DEFAULT_VIRTUAL_STAGES,))
    out = []
    for sched in scheds:
        for v in vs if sched == "interleaved" else (1,):
            for mb in mbs:
                for z in zeros:
                    for rc in rcs:
                        for sp in sp_opts:
                            out.append(Layout(hw, g, tp, pp, dp, z, mb, rc, sched, v, gb, sp))
    return out


# ---------------------------------------------------------------------------------------------
# Screening: validation, memory, closed-form estimate


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


def build_context(plan: Plan) -> ScreenContext:
    bases: dict[tuple[str, int], Scenario] = {}
    ckpt = 0.0
    for hw in plan.hardware:
        for gb in plan.global_batches:
            lay = Layout(hw.name, 1, 1, 1, 1, 0, 1, "none", "1f1b", 1, gb)
            data = scenario_data(plan, lay)
            data["training"]["micro_batch"] = 1
            data["training"]["global_batch"] = gb
            sc = parse_scenario(data, plan.file, Path(plan.base_dir))
            bases[(hw.name, gb)] = sc
            if not ckpt:
                ms = model_state_bytes(full_model_param_tensors(sc.model, sc.training),
                                       sc.training)  # fmt: skip
                ckpt = float(ms.parameters + ms.master_weights + ms.optimizer_states)
    return ScreenContext(plan.file, bases, {h.name: h.price_per_gpu_hour for h in plan.hardware},
                         plan.tokens, ckpt, plan.failures, plan.constraints)  # fmt: skip


def layout_scenario(base: Scenario, layout: Layout, file: str) -> Scenario:
    """The layout's scenario from its (hardware, global batch) base: the same object
    ``parse_scenario(scenario_data(...))`` builds (tested), without re-reading the hardware
    file, validated by the same ``check_layout`` (raises ConfigError)."""
    gpn = min(base.hardware.gpus_per_node, layout.gpus)
    sc = replace(
        base,
        cluster=ClusterSpec(nodes=-(-layout.gpus // gpn), gpus_per_node=gpn),
        training=replace(base.training, micro_batch=layout.micro_batch,
                         recompute=layout.recompute),  # fmt: skip
        parallelism=replace(
            base.parallelism, dp=layout.dp, tp=layout.tp, pp=layout.pp,
            schedule=layout.schedule, virtual_stages=layout.virtual_stages,
            zero_stage=layout.zero_stage, sequence_parallel=layout.sequence_parallel,
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
    stage 0 does not fit, the layout does not fit and the last stage is not computed."""
    first = stage_memory(sc, 0)[0]
    if sc.parallelism.pp == 1 or not first.fits:
        return (first,)
    return first, stage_memory(sc, sc.parallelism.pp - 1)[0]


def fit_message(sc: Scenario, stages: tuple[StageMemory, ...]) -> str:
    """ "does not fit: short by X GiB in <category> (stage s)" for the worst stage."""
    worst = max(stages, key=lambda s: s.peak_memory_bytes - s.capacity_bytes)
    short = worst.peak_memory_bytes - worst.capacity_bytes
    cat, val = max(worst.memory_bytes, key=lambda kv: kv[1])
    return (f"does not fit: short by {short / GIB:,.2f} GiB in {cat} ({val / GIB:,.2f} GiB, "
            f"stage {worst.stage}; peak {worst.peak_memory_bytes / GIB:,.2f} of "
            f"{worst.capacity_bytes / GIB:,.2f} GiB)")  # fmt: skip


class _Rank(NamedTuple):
    forward_ns: float  # F + its TP all-reduces
    input_ns: float  # recompute + input-gradient + their TP all-reduces
    weight_ns: float  # weight-gradient matmuls

    @property
    def total(self) -> float:
        return self.forward_ns + self.input_ns + self.weight_ns


def _bucketed_exposed_ns(sc: Scenario, op: str, grad_bytes: int, last_backward_ns: float) -> float:
    """Exposed time of DDP / ZeRO-1/2 gradient buckets launched as the last backward produces
    them (``simulation.ddp_bucket_ns`` / ``zero_bucket_ns``: buckets of ``bucket_mb``). Bucket
    i follows slice i of k; the collective stream runs them back to back, so the sync ends at
    max(T_B + d_last, T_B/k + Σd)."""
    cap = int(sc.parallelism.bucket_mb * 1e6)
    k = max(1, -(-grad_bytes // cap))
    last = grad_bytes - cap * (k - 1)
    full = dp_ns(sc, op, cap) if k > 1 else 0
    d_last = dp_ns(sc, op, last)
    total = (k - 1) * full + d_last
    return max(d_last, last_backward_ns / k + total - last_backward_ns)


def closed_form_step_s(sc: Scenario, stages: tuple[StageMemory, ...]) -> float:
    """Fast step-time estimate from the library's own costs, no event simulation.

    - Per micro-batch and rank: ``costs.chunk_costs`` of each of its chunks (forward,
      recompute, input and weight gradients) plus Megatron's TP all-reduces
      (``simulation.tp_allreduce_ns``: 2 per layer after F and after B, 2 more after a full
      recompute), as ``simulation.build_lowering_input`` lowers them.
    - Pipeline (uniform-stage closed forms; Narayanan et al. 2021 Eq. 1 and §2.2.2; formulas.md
      §3): ``m·T_max + (p−1)·T_avg/v`` for GPipe, 1F1B and interleaved (bubble (p−1)/(v·m+p−1)
      of the total); ZB-H1 ``m·T_max + (p−1)·(T_F + T_I − T_W)`` (Qi et al. 2024, "Zero Bubble
      Pipeline Parallelism", §3: the 1F1B bubble less the deferred weight gradients); plus the
      p2p hops of filling and draining the pipeline (``collectives.p2p_time_s``).
    - Data parallelism on stage 0 (whose last backward ends the step): DDP / ZeRO-1/2 buckets
      overlapped with the last backward (:func:`_bucketed_exposed_ns`), ZeRO-1/2's parameter
      all-gather after the step, ZeRO-3's per-layer gathers and reduce-scatters beyond the
      compute they hide behind (``simulation.dp_ns``); the optimizer step
      (``costs.optimizer_step_ns``).
    """
    m, t, p = sc.model, sc.training, sc.parallelism
    prec = PRECISIONS[t.precision]
    pp = p.pp
    blocks = scenario_chunks(sc)  # virtual stage -> what it holds (parallelism.layer_split)
    n_chunks = len(blocks)
    ar = tp_allreduce_ns(sc, prec.act_mm * t.micro_batch * t.seq_len * m.hidden)
    cache: dict[tuple[int, bool, bool], _Rank] = {}

    def chunk(k: int) -> tuple[int, bool, bool]:
        b = blocks[k]
        key = (b.layers, b.embedding, b.head)
        if key not in cache:
            n = b.layers
            c = chunk_costs(sc, n, b.embedding, b.head)
            tp_b = 2 * n * ar if c.input_grad_ns else 0
            tp_r = 2 * n * ar if (c.recompute_ns and t.recompute == "full") else 0
            cache[key] = _Rank(c.forward_ns + 2 * n * ar,
                               c.recompute_ns + c.input_grad_ns + tp_b + tp_r,
                               c.weight_grad_ns)  # fmt: skip
        return key

    rank_cache: dict[tuple, _Rank] = {}

    def rank(r: int) -> _Rank:
        keys = tuple(chunk(k) for k in range(r, n_chunks, pp))
        if keys not in rank_cache:
            parts = [cache[k] for k in keys]
            rank_cache[keys] = _Rank(*(sum(x[i] for x in parts) for i in range(3)))
        return rank_cache[keys]

    ranks = [rank(r) for r in range(pp)]
    r0 = ranks[0]
    t_max = max(r.total for r in ranks)
    if pp == 1:
        t_avg = r0.total
        bubble_ns = 0.0
    else:
        t_avg = sum(r.total for r in ranks) / pp
        if p.schedule == "zb_h1":
            avg = [sum(r[i] for r in ranks) / pp for i in range(3)]
            bubble_ns = (pp - 1) * max(avg[0] + avg[1] - avg[2], 0.0)
        elif p.schedule == "naive":
            bubble_ns = (pp - 1) * sc.num_microbatches * t_avg
        else:
            bubble_ns = (pp - 1) * t_avg / p.virtual_stages
        gpn = sc.cluster.gpus_per_node
        span = 2 * p.dp * p.tp if p.dp * p.tp < gpn else sc.cluster.gpus + 1
        link = group_link(sc.hardware, gpn, span)
        send = 1e9 * p2p_time_s(prec.act_mm * t.micro_batch * t.seq_len * m.hidden / p.tp, link)
        bubble_ns += 2 * (n_chunks - 1) * send
    mb = sc.num_microbatches
    step_ns = mb * t_max + bubble_ns

    s0 = stages[0]
    grad_bytes = s0.trainable * prec.grad
    trainable_here = s0.trainable // (p.dp if p.zero_stage >= 1 else 1)
    opt_ns = optimizer_step_ns(trainable_here, t, sc.hardware)
    dp_exposed = 0.0
    if p.dp > 1 and grad_bytes:
        last_b = cache[chunk(0)]  # stage 0's first chunk: its backward ends the step
        last_backward = last_b.input_ns + last_b.weight_ns
        if p.zero_stage == 3:
            layers_here = sum(e - s for s, e in s0.layers)
            per_layer = s0.params * prec.param // max(layers_here, 1)
            gathers = 3 if t.recompute == "full" else 2
            comm = layers_here * (gathers * dp_ns(sc, "all_gather", per_layer)
                                  + dp_ns(sc, "reduce_scatter", grad_bytes // max(layers_here, 1)))  # fmt: skip
            dp_exposed = mb * max(0.0, comm - r0.total)
        else:
            op = "all_reduce" if p.zero_stage == 0 else "reduce_scatter"
            bucketable = pipeline_schedule(sc)[0][-2].kind in ("B", "W")
            if bucketable and p.schedule != "pipedream":
                dp_exposed = _bucketed_exposed_ns(sc, op, grad_bytes, last_backward)
            else:
                dp_exposed = dp_ns(sc, "all_reduce", grad_bytes)
            if p.zero_stage in (1, 2):
                dp_exposed += dp_ns(sc, "all_gather", s0.params * prec.param)
    return (step_ns + dp_exposed + opt_ns) / 1e9


def _meets(c: Constraints, days: float, cost: float) -> bool:
    if c.deadline_days is not None and not days <= c.deadline_days:
        return False
    return not (c.budget is not None and not cost <= c.budget)


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
        sc = layout_scenario(base, layout, ctx.file)
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
    step = closed_form_step_s(sc, stages)
    tps = sc.tokens_per_step / step
    hw = sc.hardware
    peak_flops = hw.compute_peak(PRECISIONS[sc.training.precision].compute_dtype)
    mfu = model_flops_per_step(sc) / (step * layout.gpus * peak_flops)
    run = run_estimate(ctx.tokens, tps, layout.gpus, ctx.prices[layout.hardware],
                       ctx.checkpoint_bytes, ctx.failures)  # fmt: skip
    ok = _meets(ctx.constraints, run.days, run.cost)
    return Row(layout, "estimated", violations(ctx.constraints, run.days, run.cost), peak, cap,
               step, tps, mfu, run.days, run.cost, meets_constraints=ok)  # fmt: skip


def screen_chunk(args: tuple[ScreenContext, list[Layout]]) -> list[Row]:
    """Worker task: screen a chunk of layouts."""
    ctx, layouts = args
    return [screen_layout(ctx, lay) for lay in layouts]


class SimOutcome(NamedTuple):
    step_time_s: float
    tokens_per_s: float
    mfu: float
    tflops_per_gpu: float
    peak_memory_bytes: int
    timeline_peak_bytes: int
    capacity_bytes: int
    fits: bool
    error: str = ""  # a domain error of the simulation (the layout is then rejected)


def simulate_layout(args: tuple[dict[str, Any], str, str]) -> SimOutcome:
    """Worker task: load the scenario mapping as ``simtrain run`` loads a file
    (``parse_scenario``) and simulate one step."""
    data, file, base_dir = args
    try:
        sc = parse_scenario(data, file, Path(base_dir))
        res = simulate_scenario(sc, detail=False)
    except SimtrainError as exc:
        nan = math.nan
        return SimOutcome(nan, nan, nan, nan, 0, 0, 0, False, str(exc).splitlines()[0])
    mt = res.metrics
    tl_peak = max((s.peak_memory_bytes for s in mt.stages), default=0)
    cap = sc.hardware.memory_bytes
    fits = res.memory.fits and tl_peak <= cap
    return SimOutcome(mt.step_time_s, mt.tokens_per_s, mt.mfu, mt.tflops_per_gpu,
                      res.memory.peak_memory_bytes, tl_peak, cap, fits)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Executors


def _ignore_sigint() -> None:  # pragma: no cover - runs in worker processes
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalExecutor:
    """A process pool on this machine (``workers`` processes; 1 = in this process)."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers if workers else (os.cpu_count() or 1))
        self._pool: Any = None

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        if self.workers == 1 or len(items) <= 1:
            for it in items:
                yield fn(it)
            return
        if self._pool is None:
            import multiprocessing as mp

            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["simtrain.apps.plan"])
            self._pool = ctx.Pool(self.workers, initializer=_ignore_sigint)
        ok = False
        try:
            yield from self._pool.imap_unordered(fn, items)
            ok = True
        finally:
            if not ok:  # interrupted or failed: stop the workers now
                self.close(terminate=True)

    def close(self, terminate: bool = False) -> None:
        if self._pool is not None:
            if terminate:
                self._pool.terminate()
            else:
                self._pool.close()
            self._pool.join()
            self._pool = None


class DaskExecutor:
    """Tasks on a Dask distributed cluster: ``scheduler`` is its address (``tcp://host:8786``);
    None starts a local cluster of ``workers`` processes. Workers need simtrain installed (and
    the plan's files, if it names any, at the same paths)."""

    def __init__(self, scheduler: str | None = None, workers: int | None = None,
                 client: Any = None) -> None:  # fmt: skip
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(None, "--executor", "dask needs dask.distributed: pip install "
                              f"'simtrain[dask]' ({exc})", "dask") from None  # fmt: skip
        self._cluster = None
        self._own = client is None
        if client is not None:
            self.client = client
        elif scheduler:
            self.client = Client(scheduler)
        else:
            self._cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1,
                                         threads_per_worker=1)  # fmt: skip
            self.client = Client(self._cluster)

    def map_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        from dask.distributed import as_completed

        futures = self.client.map(fn, list(items), pure=False)
        ok = False
        try:
            for fut in as_completed(futures):
                yield fut.result()
            ok = True
        finally:
            if not ok:
                self.client.cancel(futures)

    def close(self, terminate: bool = False) -> None:
        if self._own:
            self.client.close()
            if self._cluster is not None:
                self._cluster.close()


def make_executor(executor: str, workers: int | None, scheduler: str | None) -> Any:
    if executor == "local":
        return LocalExecutor(workers)
    if executor == "dask":
        return DaskExecutor(scheduler, workers)
    raise ConfigError(None, "--executor", "unknown value", executor, "local | dask")


# ---------------------------------------------------------------------------------------------
# The search


Progress = Callable[[str, int, int], None]


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
    return {
        "hardware": lay.hardware, "gpus": lay.gpus, "tp": lay.tp, "pp": lay.pp, "dp": lay.dp,
        "zero_stage": lay.zero_stage, "micro_batch": lay.micro_batch,
        "recompute": lay.recompute, "schedule": lay.schedule, "step_time_s": r.step_time_s,
        "tokens_per_s": r.tokens_per_s, "mfu": r.mfu, "peak_memory_bytes": r.peak_memory_bytes,
        "days": r.days, "cost": r.cost,
    }  # fmt: skip


def rank_key(objective: str) -> Callable[[Row], tuple]:
    """Constraint-meeting layouts first, then time-to-train and cost (or cost and time), then
    more memory headroom (equally fast layouts: the one further from running out of memory),
    then the layout itself, so that rankings are deterministic."""

    def key(r: Row) -> tuple:
        d, c = r.final_days, r.final_cost
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


def _chunks(layouts: list[Layout], size: int) -> list[list[Layout]]:
    """Chunks in schedule-cache order: layouts sharing (global batch, pp, dp, schedule, v)
    share the pipeline schedules the memory model walks (``memory._cached_schedule``)."""
    order = sorted(layouts, key=lambda x: (x.global_batch, x.pp, x.dp, x.schedule,
                                           x.virtual_stages, x.micro_batch, x))  # fmt: skip
    return [order[i : i + size] for i in range(0, len(order), size)]


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
    layouts = enumerate_layouts(plan, any_base.model.layers, any_base.model.heads)
    total = len(layouts)
    rows: list[Row] = []
    interrupted = False
    note = ""
    sims: dict[Layout, SimOutcome] = {}
    candidates: list[Row] = []
    try:
        if progress:
            progress("screening", 0, total)
        tasks = [(ctx, c) for c in _chunks(layouts, chunk_size)]
        for part in executor.map_unordered(screen_chunk, tasks):
            rows.extend(part)
            if progress:
                progress("screening", len(rows), total)
        candidates = select_candidates(rows, plan.objective, top)
        items = [(scenario_data(plan, r.layout), plan.file, plan.base_dir) for r in candidates]
        by_index = {i: r.layout for i, r in enumerate(candidates)}
        if progress:
            progress("simulating", 0, len(items))
        done = 0
        for i, out in executor.map_unordered(_indexed_simulate, list(enumerate(items))):
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


def _indexed_simulate(arg: tuple[int, tuple[dict[str, Any], str, str]]) -> tuple[int, SimOutcome]:
    i, item = arg
    return i, simulate_layout(item)


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
        if not s.fits:
            out.append(r._replace(
                status="no_fit", peak_memory_bytes=max(s.peak_memory_bytes, s.timeline_peak_bytes),
                reason=f"does not fit in the full simulation: peak "
                f"{max(s.peak_memory_bytes, s.timeline_peak_bytes) / GIB:,.2f} of "
                f"{s.capacity_bytes / GIB:,.2f} GiB", meets_constraints=False))  # fmt: skip
            continue
        run = run_estimate(ctx.tokens, s.tokens_per_s, r.layout.gpus,
                           ctx.prices[r.layout.hardware], ctx.checkpoint_bytes, ctx.failures)  # fmt: skip
        out.append(r._replace(
            status="simulated", reason=violations(ctx.constraints, run.days, run.cost),
            peak_memory_bytes=s.peak_memory_bytes, step_time_s=s.step_time_s,
            tokens_per_s=s.tokens_per_s, mfu=s.mfu, tflops_per_gpu=s.tflops_per_gpu,
            days=run.days, cost=run.cost, goodput=run.goodput,
            meets_constraints=_meets(ctx.constraints, run.days, run.cost)))  # fmt: skip
    out.sort(key=lambda r: r.layout)
    key = rank_key(plan.objective)
    ranked = sorted((r for r in out if r.status == "simulated"), key=key)
    if not ranked and interrupted:  # nothing simulated yet: the closed-form best
        ranked = sorted((r for r in out if r.status == "estimated"), key=key)[: plan.top]
    best = tuple(r for r in ranked if r.status == "simulated" and r.meets_constraints)
    counts: dict[str, int] = {}
    for r in out:
        counts[r.status] = counts.get(r.status, 0) + 1
    feasible = sum(1 for r in out if r.fits and r.meets_constraints)
    return PlanResult(plan, tuple(out), best, tuple(ranked), len(out), feasible,
                      sum(1 for r in out if r.status == "simulated"), interrupted, note,
                      elapsed, counts)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Output: CSV, Pareto plot, best.yaml, terminal table

CSV_COLUMNS = (
    *Layout._fields, "status", "reason", "peak_memory_bytes", "capacity_bytes",
    "est_step_time_s", "est_tokens_per_s", "est_mfu", "est_days", "est_cost", "step_time_s",
    "tokens_per_s", "mfu", "tflops_per_gpu", "days", "cost", "goodput", "meets_constraints",
)  # fmt: skip


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


def write_csv(result: PlanResult, path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for r in result.rows:
            w.writerow([_cell(x) for x in (*r.layout, *r[1:])])


def write_pareto(result: PlanResult, path: Path) -> None:
    """Days vs cost of every fitting layout (simulated ones large, closed-form estimates small),
    a colour per hardware, the frontier of all of them highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in result.rows if r.fits]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    colours = plt.get_cmap("tab10")
    for i, hw in enumerate(h.name for h in result.plan.hardware):
        est = [r for r in pts if r.layout.hardware == hw and r.status == "estimated"]
        sim = [r for r in pts if r.layout.hardware == hw and r.status == "simulated"]
        if est:
            ax.scatter([r.est_days for r in est], [r.est_cost for r in est], s=4, alpha=0.25,
                       color=colours(i), linewidths=0)  # fmt: skip
        ax.scatter([r.days for r in sim], [r.cost for r in sim], s=28, color=colours(i),
                   edgecolors="black", linewidths=0.4,
                   label=f"{hw} ({len(sim)} simulated, {len(est):,} estimated)")  # fmt: skip
    if pts:
        xy = [(r.final_days, r.final_cost) for r in pts]
        front = pareto_front(xy)
        ax.plot([xy[i][0] for i in front], [xy[i][1] for i in front], "-", color="black",
                lw=1.2, drawstyle="steps-post", label="Pareto frontier")  # fmt: skip
        ax.scatter([xy[i][0] for i in front], [xy[i][1] for i in front], s=60,
                   facecolors="none", edgecolors="black", linewidths=1.2)  # fmt: skip
    c = result.plan.constraints
    if c.deadline_days is not None:
        ax.axvline(c.deadline_days, color="red", ls="--", lw=0.8, label="deadline")
    if c.budget is not None:
        ax.axhline(c.budget, color="red", ls=":", lw=0.8, label="budget")
    if result.best:
        b = result.best[0]
        ax.scatter([b.days], [b.cost], marker="*", s=220, color="gold", edgecolors="black",
                   zorder=5, label="best")  # fmt: skip
    # Log axes need positive values: none fit, or a free price list, leaves them linear.
    if pts and all(r.final_days > 0 for r in pts):
        ax.set_xscale("log")
    if pts and all(r.final_cost > 0 for r in pts):
        ax.set_yscale("log")
    if not pts:
        ax.text(0.5, 0.5, "no layout fits in memory", transform=ax.transAxes, ha="center")
    ax.set_xlabel("expected days to train (incl. checkpoints and failures)")
    ax.set_ylabel("cost ($)")
    ax.set_title(f"{result.plan.name}: days vs cost")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_best_yaml(result: PlanResult, path: Path) -> bool:
    """The best layout as a scenario file for ``simtrain run``; False if there is none."""
    import yaml

    rows = result.best or tuple(r for r in result.ranked if r.status == "simulated")
    if not rows:
        return False
    r = rows[0]
    data = scenario_data(result.plan, r.layout, name=f"{result.plan.name}_best")
    lay = r.layout
    head = (
        f"# Best layout of plan {result.plan.name} ({result.plan.file}): {lay.gpus} x "
        f"{lay.hardware}, tp {lay.tp} x pp {lay.pp} x dp {lay.dp}\n"
        f"# simulated step {r.step_time_s:.3f} s, {r.tokens_per_s:,.0f} tokens/s, MFU "
        f"{100 * r.mfu:.1f} %, {r.days:,.2f} days, ${r.cost:,.0f}\n"
        f"# run it: simtrain run {path.name}\n"
    )
    if not r.meets_constraints:
        head += f"# no simulated layout meets the constraints; this is the nearest ({r.reason})\n"
    path.write_text(head + yaml.safe_dump(data, sort_keys=False, default_flow_style=None))
    return True


def layout_label(lay: Layout) -> str:
    sched = lay.schedule + (f" v{lay.virtual_stages}" if lay.virtual_stages > 1 else "")
    return (f"{lay.tp}x{lay.pp}x{lay.dp} z{lay.zero_stage} mb{lay.micro_batch} "
            f"{lay.recompute} {sched}" + (" sp" if lay.sequence_parallel else ""))  # fmt: skip


def difference_line(a: Row, b: Row) -> str:
    """What sets ``a`` (the best) apart from ``b`` (the runner-up): the layout choices that
    differ, then time, cost and memory headroom."""
    diffs = []
    for n in Layout._fields:
        x, y = getattr(a.layout, n), getattr(b.layout, n)
        if x != y:
            diffs.append(f"{n} {x} (vs {y})")
    what = ", ".join(diffs) if diffs else "the same layout"
    dd = b.final_days - a.final_days
    dc = b.final_cost - a.final_cost
    parts = []
    if a.status == b.status == "simulated":
        parts.append(f"step {a.step_time_s:.3f} s vs {b.step_time_s:.3f} s")
    if abs(dd) > 1e-9 * max(a.final_days, 1e-30) or abs(dc) > 1e-9 * max(a.final_cost, 1e-30):
        parts.append(f"{abs(dd):,.2f} days {'sooner' if dd >= 0 else 'later'}")
        parts.append(f"${abs(dc):,.0f} {'cheaper' if dc >= 0 else 'dearer'}")
    else:
        parts.append("same time and cost")
    ha, hb = a.headroom_bytes / GIB, b.headroom_bytes / GIB
    if abs(ha - hb) >= 0.005:
        parts.append(f"{'more' if ha > hb else 'less'} memory headroom ({ha:,.2f} vs "
                     f"{hb:,.2f} GiB)")  # fmt: skip
    return f"best vs runner-up: {what}: " + ", ".join(parts)


def plan_table(result: PlanResult, rows: int = 10) -> str:
    p, c = result.plan, result.plan.constraints
    gb = "/".join(str(b) for b in p.global_batches)
    seq = p.training.get("seq_len", "")
    cons = []
    if c.deadline_days is not None:
        cons.append(f"deadline {c.deadline_days:g} days")
    if c.budget is not None:
        cons.append(f"budget ${c.budget:,.0f}")
    if c.max_gpus is not None:
        cons.append(f"at most {c.max_gpus} GPUs")
    model = p.model.get("preset") or p.model.get("hf_config") or "custom model"
    counts = result.counts
    lines = [
        f"plan {p.name}: {model}, {p.tokens:.3g} tokens, global batch {gb} x {seq}; "
        f"{len(p.hardware)} hardware option(s); {', '.join(cons) or 'no constraints'}",
        f"{result.evaluated:,} layouts in {result.elapsed_s:.1f} s: "
        f"{counts.get('rejected', 0):,} rejected by layout checks, "
        f"{counts.get('no_fit', 0):,} do not fit, "
        f"{counts.get('estimated', 0) + counts.get('simulated', 0):,} fit "
        f"({result.simulated} simulated in full); {result.feasible:,} feasible",
    ]
    if result.interrupted:
        lines.append(f"note: {result.note}")
    shown = list(result.best[:rows])
    if not shown:
        shown = list(result.ranked[:rows])
        if shown and not result.interrupted:
            lines.append("no simulated layout meets the constraints; the nearest:")
    if not shown:
        lines.append("no layout fits: see plan.csv for the reasons")
        misses = [r for r in result.rows if r.status == "no_fit" and r.capacity_bytes]
        if misses:
            r = min(misses, key=lambda r: r.peak_memory_bytes / r.capacity_bytes)  # first of ties
            lay = r.layout
            lines.append(
                f"closest: {lay.gpus} x {lay.hardware}, tp {lay.tp} x pp {lay.pp} x dp {lay.dp}, "
                f"ZeRO {lay.zero_stage}, mb {lay.micro_batch}, recompute {lay.recompute}, "
                f"{lay.schedule}: {r.reason}"
            )
        return "\n".join(lines)
    lines.append("")
    hdr = (f"{'#':>3}  {'hardware':<16}{'GPUs':>6}  {'tp x pp x dp':<13}{'ZeRO':>5}{'mb':>4}  "
           f"{'recompute':<10}{'schedule':<15}{'step s':>9}{'MFU %':>7}{'headroom GiB':>14}"
           f"{'days':>9}{'cost $':>14}")  # fmt: skip
    lines.append(hdr)
    for i, r in enumerate(shown, 1):
        lay = r.layout
        sched = lay.schedule + (f" v{lay.virtual_stages}" if lay.virtual_stages > 1 else "")
        sim = r.status == "simulated"
        step = r.step_time_s if sim else r.est_step_time_s
        mfu = r.mfu if sim else r.est_mfu
        mark = "" if sim else "~"
        lines.append(
            f"{i:>3}  {lay.hardware:<16}{lay.gpus:>6}  "
            f"{f'{lay.tp} x {lay.pp} x {lay.dp}':<13}{lay.zero_stage:>5}{lay.micro_batch:>4}  "
            f"{lay.recompute:<10}{sched:<15}{mark + f'{step:.3f}':>9}{100 * mfu:>7.1f}"
            f"{r.headroom_bytes / GIB:>14.2f}{r.final_days:>9.2f}{r.final_cost:>14,.0f}"
        )
    if len(shown) >= 2:
        lines.append("")
        lines.append(difference_line(shown[0], shown[1]))
    if any(r.status != "simulated" for r in shown):
        lines.append("~ closed-form estimate (not simulated)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Progress bar and the command


class ProgressBar:
    """Plain-text progress with ETA on a stream, at most every ``interval_s`` (``\\r`` on a
    terminal, one line per update otherwise, then at most every 10 s)."""

    def __init__(self, stream: Any = None, interval_s: float = 0.5, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._phase = ""
        self._start = 0.0
        self._last = 0.0
        self._shown = False

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if phase != self._phase:
            self._finish_line()
            self._phase, self._start, self._last = phase, now, now
            return
        every = self.interval_s if self.tty else max(self.interval_s, 10.0)
        if done < total and now - self._last < every:
            return
        if done >= total and not self._shown:
            return  # quick phases print nothing
        self._last = now
        self._shown = True
        elapsed = now - self._start
        frac = done / total if total else 1.0
        eta = elapsed * (1 - frac) / frac if frac > 0 else math.inf
        n = int(self.width * frac)
        bar = "=" * n + (">" if n < self.width else "") + " " * max(self.width - n - 1, 0)
        eta_s = f"ETA {eta:,.0f} s" if math.isfinite(eta) else "ETA ?"
        text = (f"{phase:<10} [{bar}] {100 * frac:5.1f} % {done:,}/{total:,}  "
                f"{elapsed:,.0f} s  {eta_s}")  # fmt: skip
        self.stream.write(("\r" + text) if self.tty else text + "\n")
        self.stream.flush()

    def _finish_line(self) -> None:
        if self._shown and self.tty:
            self.stream.write("\n")
            self.stream.flush()
        self._shown = False

    def close(self) -> None:
        self._finish_line()


def plan_command(
    plan_path: str,
    as_json: bool = False,
    out_dir: str | None = None,
    workers: int | None = None,
    executor: str = "local",
    scheduler: str | None = None,
    top: int | None = None,
    progress: Progress | None = None,
) -> str:
    """What ``simtrain plan PLAN.yaml [--json] [--out DIR] [--workers N] [--executor
    local|dask] [--scheduler ADDRESS] [--top N]`` prints; writes plan.csv, pareto.png and
    best.yaml into ``out_dir`` (default ``plots/<plan name>``). Progress goes to stderr."""
    from simtrain.report.tables import dumps

    plan = load_plan(plan_path)
    if top is not None and top < 1:
        raise ConfigError(None, "--top", "must be >= 1", top)
    if executor == "dask" or scheduler:
        ex = DaskExecutor(scheduler, workers)
    else:
        ex = make_executor(executor, workers, None)
    bar = ProgressBar() if progress is None else None
    result = run_plan(plan, ex, top, progress or bar)
    if bar is not None:
        bar.close()
    folder = Path(out_dir) if out_dir else Path("plots") / plan.name
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(result, folder / "plan.csv")
    write_pareto(result, folder / "pareto.png")
    wrote_best = write_best_yaml(result, folder / "best.yaml")
    if as_json:
        return dumps(result.to_json())
    files = ["plan.csv", "pareto.png"] + (["best.yaml"] if wrote_best else [])
    return plan_table(result) + f"\n\nwrote {folder}/" + ", ".join(files) + "\n"


__all__ = [
    "BEST_KEYS", "DaskExecutor", "FailureModel", "Layout", "LocalExecutor", "Plan",
    "PlanResult", "ProgressBar", "Row", "closed_form_step_s", "enumerate_layouts", "load_plan",
    "memory_check", "parse_plan", "plan_command", "run_plan", "screen_layout",
    "scenario_data", "simulate_layout", "write_best_yaml",
]  # fmt: skip
