"""The plan file: ``PLAN.yaml`` read and validated into a :class:`Plan`.

Errors are :class:`~simtrain.errors.ConfigError` naming the plan file, the key, the value and
what is allowed; the model, training and parallelism keys are checked by the scenario parsers,
so that a plan and a scenario file reject the same values with the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from simtrain.apps.goodput import INTERVAL_RULES, FailureModel
from simtrain.errors import ConfigError, unknown_value
from simtrain.spec.hardware import load_hardware
from simtrain.spec.limits import INT_RANGES, MAX_GPUS, as_float, check_range
from simtrain.spec.model import ModelSpec
from simtrain.spec.precision import PRECISIONS
from simtrain.spec.runtime import parse_scenario_runtime
from simtrain.spec.scenario import (
    INTERNAL_FIELDS,
    MAX_NAME,
    RECOMPUTE,
    SCHEDULES,
    TrainingSpec,
    _mapping,
    _no_unknown,
    check_description,
    check_name,
    model_unused_runtime_options,
    parse_model,
    parse_parallelism,
    parse_training,
    refuse_unused_settings,
)
from simtrain.spec.yamlfile import exists, load_yaml

DEFAULT_TOP = 32
OBJECTIVES = ("time", "cost")

TOP_KEYS = (
    "name", "description", "model", "tokens", "training", "hardware", "runtime", "gpus",
    "constraints", "fixed", "parallelism", "failures", "objective", "top",
)  # fmt: skip
#: A scenario's training keys but those the planner searches (micro_batch, recompute: fixed.*).
TRAINING_KEYS = tuple(f.name for f in fields(TrainingSpec)
                      if f.name not in (*INTERNAL_FIELDS, "micro_batch", "recompute"))  # fmt: skip
HARDWARE_KEYS = ("name", "price_per_gpu_hour")
GPUS_KEYS = ("min", "max")
CONSTRAINT_KEYS = ("deadline_days", "budget", "max_gpus", "memory_headroom")
FIXED_KEYS = (
    "tp", "pp", "dp", "zero_stage", "micro_batch", "recompute", "schedule", "virtual_stages",
    "sequence_parallel", "cp", "ep", "precision", "zero_replicas",
)  # fmt: skip
# Settings every layout shares (not searched): the DP gradient bucket (Megatron-LM 2021's
# "local" DDP is one bucket reduced after the backward: bucket_mb >= the gradient), the DP
# implementation, the pipeline layer split and the expert-TP size (1: whole experts, the EP
# group searched over tp x dp x cp: apps.plan.layouts).
PARALLEL_SETTING_KEYS = ("bucket_mb", "dp_mode", "layer_split", "zero3_max_live_params",
                         "expert_tp")  # fmt: skip
FAILURE_KEYS = (
    "enabled", "mtbf_gpu_hours", "checkpoint_interval", "checkpoint_s", "restart_s",
    "relaunch_s", "checkpoint_write_gb_per_s_per_gpu",
)  # fmt: skip
BATCH_RANGE_KEYS = ("min", "max", "step")

# Limits of a plan (spec.limits has those it shares with a scenario file). Each is far above
# the shipped plans and keeps every figure a plan prints finite.
#: Training tokens: 10^18 (Llama 3 trained on 1.56e13).
MAX_TOKENS = 1e18
#: Global batch sizes one plan searches: 1,024 (``{min, max, step}`` could ask for millions).
MAX_GLOBAL_BATCHES = 1024
#: Values of one fixed choice (fixed.tp: [1, 2, 4, 8]), and hardware profiles: 64.
MAX_FIXED_CHOICES = 64
#: Proposals simulated and printed (``top``): 1,000 (shipped plans: 16 and the default 32).
MAX_TOP = 1000
#: Largest price, deadline, budget, durations (their unit each): a bound, not a guess.
MAXIMA = {
    "price_per_gpu_hour": 1e6, "deadline_days": 1e6, "budget": 1e15, "mtbf_gpu_hours": 1e12,
    "checkpoint_interval": 1e12, "checkpoint_s": 1e12, "restart_s": 1e12, "relaunch_s": 1e12,
    "checkpoint_write_gb_per_s_per_gpu": 1e6, "memory_headroom": 0.9,
}  # fmt: skip
# The plan's fixed choices share the scenario keys' ranges.
FIXED_RANGES = {
    "tp": "parallelism.tp", "pp": "parallelism.pp", "dp": "parallelism.dp", "cp": "parallelism.cp",
    "virtual_stages": "parallelism.virtual_stages", "micro_batch": "training.micro_batch",
    "ep": "parallelism.ep", "zero_replicas": "parallelism.zero_replicas",
}  # fmt: skip

#: ``fixed.zero_replicas``'s word for ZeRO-3's one copy per node (apps.plan.layouts.zero_options).
NODE_REPLICAS = "node"


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
    # The share of each GPU's memory a layout must leave free (0 < h <= 0.9): PyTorch's caching
    # allocator needs room beyond what is allocated (costs.memory.NEAR_CAPACITY's evidence); an
    # input bound, not a measurement: above 0.9 free no real model's layout would remain
    memory_headroom: float | None = None


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
    # The framework every layout runs under (a scenario's ``runtime:``, as written; None: the
    # default profile).
    runtime: Any = None


def _num(value: Any, file: str, key: str, *, integer: bool = False, minimum: float = 0.0,
         strict: bool = True, maximum: float | None = None) -> float:  # fmt: skip
    """A finite number > ``minimum`` (>= when not ``strict``) and <= ``maximum`` (by default
    :data:`MAXIMA` of the key's last part, or the GPU limit for an integer)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(file, key, "must be an integer" if integer else "must be a number",
                          value)  # fmt: skip
    if integer and not (isinstance(value, int) or value.is_integer()):
        raise ConfigError(file, key, "must be an integer", value)
    if maximum is None:
        maximum = MAX_GPUS if integer else MAXIMA.get(key.rsplit(".", 1)[-1], 1e15)
    v = int(value) if integer else as_float(value, file, key)
    if (v <= minimum) if strict else (v < minimum):
        raise ConfigError(file, key, f"must be {'>' if strict else '>='} {minimum:g}", value)
    check_range(v, file, key, minimum, maximum)
    return v


def _global_batches(value: Any, file: str) -> tuple[int, ...]:
    """An integer, a list of integers, or ``{min, max[, step]}``: with ``step`` an arithmetic
    range, without it min, 2·min, 4·min ... up to max."""
    key = "training.global_batch"
    if isinstance(value, dict):
        _no_unknown(value, BATCH_RANGE_KEYS, file, f"{key}.")
        for k in ("min", "max"):
            if k not in value:
                raise ConfigError(file, f"{key}.{k}", "missing required key")
        top = INT_RANGES[key][1]
        lo = int(_num(value["min"], file, f"{key}.min", integer=True, maximum=top))
        hi = int(_num(value["max"], file, f"{key}.max", integer=True, maximum=top))
        if hi < lo:
            raise ConfigError(file, f"{key}.max", f"must be >= min = {lo}", hi)
        if "step" in value:
            step = int(_num(value["step"], file, f"{key}.step", integer=True, maximum=top))
            if (hi - lo) // step + 1 > MAX_GLOBAL_BATCHES:
                raise ConfigError(file, f"{key}.step", f"gives {(hi - lo) // step + 1:,} batch "
                                  f"sizes: at most {MAX_GLOBAL_BATCHES:,}", step)  # fmt: skip
            return tuple(range(lo, hi + 1, step))
        out, b = [], lo
        while b <= hi:
            out.append(b)
            b *= 2
        return tuple(out)
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(file, key, "must not be empty", value)
    batches = [int(_num(v, file, key, integer=True, maximum=INT_RANGES[key][1])) for v in items]
    if len(set(batches)) > MAX_GLOBAL_BATCHES:
        raise ConfigError(file, key, f"lists {len(set(batches)):,} batch sizes: at most "
                          f"{MAX_GLOBAL_BATCHES:,}")  # fmt: skip
    return tuple(sorted(set(batches)))


def _choices(key: str, value: Any, file: str) -> tuple[Any, ...]:
    """A fixed choice: one value or a list of them, each checked like a scenario key."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(file, f"fixed.{key}", "must not be empty", value)
    if len(items) > MAX_FIXED_CHOICES:
        raise ConfigError(file, f"fixed.{key}", f"lists {len(items):,} values: at most "
                          f"{MAX_FIXED_CHOICES}")  # fmt: skip
    out: list[Any] = []
    for v in items:
        if key in ("recompute", "schedule", "precision"):
            allowed = tuple({"recompute": RECOMPUTE, "schedule": SCHEDULES,
                             "precision": PRECISIONS}[key])  # fmt: skip
            if v not in allowed:
                raise unknown_value(file, f"fixed.{key}", v, allowed)
        elif key == "sequence_parallel":
            if not isinstance(v, bool):
                raise ConfigError(file, f"fixed.{key}", "must be true or false", v)
        elif key == "zero_stage":
            if v not in (0, 1, 2, 3) or isinstance(v, bool):
                raise unknown_value(file, f"fixed.{key}", v, (0, 1, 2, 3))
        elif key == "zero_replicas" and isinstance(v, str):
            if v != NODE_REPLICAS:
                raise ConfigError(file, f"fixed.{key}", "a number of copies of the ZeRO states "
                                  "(1: none, sharded over all of dp x cp) or node (one per "
                                  "node: HSDP)", v, "1 | 2 | ... | node")  # fmt: skip
        else:
            top = INT_RANGES[FIXED_RANGES[key]][1]
            v = int(_num(v, file, f"fixed.{key}", integer=True, maximum=top))
        out.append(v)
    return tuple(dict.fromkeys(out))


def _check_fixed_replicas(fixed: dict[str, tuple[Any, ...]], file: str) -> None:
    """``fixed.zero_replicas`` copies that no ``fixed.zero_stage`` can have: "node" is ZeRO-3's
    per-node copy, a number of copies needs sharded states (stage 1-3). The planner had read
    them as one copy (stage 0 with "node": a fuzz campaign) or laid out nothing."""
    reps, stages = fixed.get("zero_replicas"), fixed.get("zero_stage")
    if reps is None or stages is None:
        return
    for r in reps:
        if r == NODE_REPLICAS and 3 not in stages or r != NODE_REPLICAS and r > 1 and not any(
                stages):  # fmt: skip
            what, need = (("node (ZeRO-3's one copy per node) needs", "3")
                          if r == NODE_REPLICAS else
                          (f"{r} copies of the ZeRO states need", "1, 2 or 3"))  # fmt: skip
            raise ConfigError(file, "fixed.zero_replicas", f"{what} zero_stage {need}, and "
                              f"fixed.zero_stage allows {list(stages)}", r)  # fmt: skip


def _resolve_path(value: Any, base_dir: Path) -> Any:
    """Relative file paths in a plan are relative to the plan's folder; make them absolute so
    that best.yaml works from any folder."""
    if isinstance(value, str):
        p = Path(value)
        if not p.is_absolute() and not exists(p) and exists(base_dir / p):
            return str((base_dir / p).resolve())
        if not p.is_absolute() and exists(p):
            return str(p.resolve())
    return value


def parse_plan(data: Any, file: str, base_dir: Path | None = None) -> Plan:
    """Validate a plan mapping. Errors name the file, the key, the value and what is allowed
    (checked in this order: the top level, model, tokens, training, hardware, gpus,
    constraints, fixed, parallelism, failures, objective, top)."""
    base = base_dir if base_dir is not None else Path(".")
    data = _mapping(data, file, "<root>")
    _no_unknown(data, TOP_KEYS, file, "")
    for k in ("model", "tokens", "training", "hardware"):
        if k not in data:
            raise ConfigError(file, k, "missing required key")
    name = data.get("name")
    name = check_name(name, file) if name is not None else (Path(file).stem or "plan")
    if len(name) > MAX_NAME - len("_best"):  # best.yaml is named <plan>_best
        raise ConfigError(file, "name", f"must be at most {MAX_NAME - len('_best')} characters",
                          name)  # fmt: skip
    description = check_description(data.get("description"), file)
    model, spec = _model(data["model"], file, base)
    tokens = _num(data["tokens"], file, "tokens", minimum=1.0, strict=False, maximum=MAX_TOKENS)
    training, batches = _training(data["training"], file)
    options = _hardware_options(data["hardware"], file, base)
    counts, lo, hi = _gpus(data.get("gpus", {"min": 1, "max": 1024}), file)
    constraints = _constraints(data.get("constraints"), file)
    fixed_raw = _mapping(data.get("fixed"), file, "fixed")
    _no_unknown(fixed_raw, FIXED_KEYS, file, "fixed.")
    fixed = {k: _choices(k, v, file) for k, v in fixed_raw.items()}
    _check_fixed_replicas(fixed, file)
    par = _parallelism(data.get("parallelism"), file)
    fm = _failure_model(_mapping(data.get("failures"), file, "failures"), file)
    objective = data.get("objective", "time")
    if objective not in OBJECTIVES:
        raise unknown_value(file, "objective", objective, OBJECTIVES)
    top = int(_num(data.get("top", DEFAULT_TOP), file, "top", integer=True, maximum=MAX_TOP))
    runtime = data.get("runtime")
    if runtime is not None:
        rt = parse_scenario_runtime(runtime, file)  # the same checks and messages as a scenario's
        if isinstance(runtime, dict):  # (deepep on a dense model was dropped: a fuzz campaign)
            unusable = model_unused_runtime_options(spec)
            refuse_unused_settings(unusable, runtime, rt, file)
    return Plan(
        name=str(name), file=file, base_dir=str(base), model=model, tokens=tokens,
        training=training, global_batches=batches, hardware=options, gpu_counts=counts,
        gpus_min=lo, gpus_max=hi, constraints=constraints, fixed=fixed, failures=fm,
        parallelism=par, objective=str(objective), top=top, description=description,
        runtime=runtime,
    )  # fmt: skip


def _model(value: Any, file: str, base: Path) -> tuple[dict[str, Any], ModelSpec]:
    """The model mapping, ``hf_config`` made absolute, and its ModelSpec, parsed now (errors
    name the plan file)."""
    model = dict(_mapping(value, file, "model"))
    if "hf_config" in model:
        model["hf_config"] = _resolve_path(model["hf_config"], base)
    return model, parse_model(model, file, base)


def _training(value: Any, file: str) -> tuple[dict[str, Any], tuple[int, ...]]:
    """The training keys except ``global_batch``, and the global batches to search."""
    training = dict(_mapping(value, file, "training"))
    for k in ("micro_batch", "recompute"):
        if k in training:
            raise ConfigError(file, f"training.{k}", f"is searched by the planner; fix it with "
                              f"fixed.{k}", training[k])  # fmt: skip
    _no_unknown(training, TRAINING_KEYS, file, "training.")
    if "global_batch" not in training:
        raise ConfigError(file, "training.global_batch", "missing required key")
    batches = _global_batches(training.pop("global_batch"), file)
    parse_training({**training, "global_batch": batches[0]}, file)  # validate the other keys
    return training, batches


def _hardware_options(value: Any, file: str, base: Path) -> tuple[HardwareOption, ...]:
    """One profile (a name, a path or a mapping) or a list of them, each loaded now."""
    hw_raw = [value] if isinstance(value, dict | str) else value
    if not isinstance(hw_raw, list) or not hw_raw:
        raise ConfigError(file, "hardware", "must be a list of {name, price_per_gpu_hour}", hw_raw)
    if len(hw_raw) > MAX_FIXED_CHOICES:
        raise ConfigError(file, "hardware", f"lists {len(hw_raw):,} profiles: at most "
                          f"{MAX_FIXED_CHOICES}")  # fmt: skip
    options = [_hardware_option(h, file, f"hardware[{i}]", base) for i, h in enumerate(hw_raw)]
    if len({o.name for o in options}) != len(options):
        raise ConfigError(file, "hardware", "lists a profile twice", [o.name for o in options])
    return tuple(options)


def _hardware_option(h: Any, file: str, key: str, base: Path) -> HardwareOption:
    if isinstance(h, str):
        h = {"name": h}
    h = _mapping(h, file, key)
    _no_unknown(h, HARDWARE_KEYS, file, f"{key}.")
    if "name" not in h:
        raise ConfigError(file, f"{key}.name", "missing required key")
    if not isinstance(h["name"], str):
        raise ConfigError(file, f"{key}.name", "must be a profile name or a path", h["name"])
    name = (
        str(_resolve_path(h["name"], base)) if h["name"].endswith((".yaml", ".yml")) else h["name"]
    )
    prof = load_hardware(name, file, f"{key}.name", base)
    price = _num(h.get("price_per_gpu_hour", 0.0), file, f"{key}.price_per_gpu_hour",
                 minimum=0.0, strict=False)  # fmt: skip
    return HardwareOption(name, price, prof.gpus_per_node, prof.display_name)


def _gpus(g: Any, file: str) -> tuple[tuple[int, ...] | None, int, int]:
    """``gpus``: ``{min, max}`` (counts None: the range), or one count or a list of them."""
    counts: tuple[int, ...] | None = None
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
    return counts, lo, hi


def _constraints(value: Any, file: str) -> Constraints:
    c = _mapping(value, file, "constraints")
    _no_unknown(c, CONSTRAINT_KEYS, file, "constraints.")
    return Constraints(
        deadline_days=_num(c["deadline_days"], file, "constraints.deadline_days")
        if c.get("deadline_days") is not None else None,
        budget=_num(c["budget"], file, "constraints.budget")
        if c.get("budget") is not None else None,
        max_gpus=int(_num(c["max_gpus"], file, "constraints.max_gpus", integer=True))
        if c.get("max_gpus") is not None else None,
        memory_headroom=_num(c["memory_headroom"], file, "constraints.memory_headroom")
        if c.get("memory_headroom") is not None else None,
    )  # fmt: skip


def _parallelism(value: Any, file: str) -> dict[str, Any]:
    """The settings every layout shares; a searched key here is an error."""
    par = dict(_mapping(value, file, "parallelism"))
    searched = [k for k in par if k in FIXED_KEYS]
    if searched:
        raise ConfigError(file, f"parallelism.{searched[0]}", f"is searched by the planner; fix "
                          f"it with fixed.{searched[0]}", par[searched[0]])  # fmt: skip
    _no_unknown(par, PARALLEL_SETTING_KEYS, file, "parallelism.")
    if isinstance(par.get("layer_split"), list):  # layers per stage fit one pp, not a search
        raise ConfigError(file, "parallelism.layer_split", "a list of layers per stage fits one "
                          "layout, and the planner searches pp: give a name",
                          par["layer_split"], "uniform | compute_balanced | embedding_as_layer")  # fmt: skip
    parse_parallelism(par, file)  # validate the values now: errors name the plan file
    return par


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
            raise unknown_value(
                file, "failures.checkpoint_interval", ci, INTERVAL_RULES, also=" | seconds"
            )
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
