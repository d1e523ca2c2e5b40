"""JSON Schema (draft 2020-12) of scenario and plan files, generated from the parsers' own tables.

Nothing here is a second copy of the rules: the keys are the fields of the frozen dataclasses
(``spec.scenario``, ``spec.model``), the allowed values the tuples the parsers check
(``spec.scenario.TRAINING_CHOICES`` ..., ``spec.model.MODEL_CHOICES``, ``spec.runtime.CHOICES``,
the hardware profiles and runtimes shipped), the ranges ``spec.limits.INT_RANGES`` /
``FLOAT_RANGES`` and the plan's limits (``apps.plan.file``). A key added to a dataclass or a value
added to a tuple appears in the schema at once.

What a schema cannot say is left to ``simtrain`` itself: the checks across keys
(``spec.scenario.check_layout``: tp divides heads, tp x pp x dp = the cluster, ...) and
case-insensitive preset names (the schema lists them in lower case, as the shipped files write
them). A file that passes the schema can still be refused by ``simtrain``; a file the schema
refuses is refused by ``simtrain`` too (tests/test_schema.py).

An editor reads it through the yaml-language-server modeline (README, "Editor support"):
``# yaml-language-server: $schema=../schemas/scenario.schema.json``.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, fields
from typing import Any

from simtrain.apps.goodput import INTERVAL_RULES
from simtrain.apps.plan import file as planfile
from simtrain.spec import runtime as rt
from simtrain.spec.hardware import available_profiles
from simtrain.spec.limits import FLOAT_RANGES, INT_RANGES, MAX_GPUS
from simtrain.spec.model import ALIASES, MODEL_CHOICES, PRESETS, ZERO_OK_FIELDS, ModelSpec
from simtrain.spec.scenario import (
    INTERNAL_FIELDS,
    LAYER_SPLITS,
    MAX_NAME,
    NON_POSITIVE_OK,
    PARALLEL_CHOICES,
    PEFT_CHOICES,
    TOP_KEYS,
    TRAINING_CHOICES,
    ClusterSpec,
    OffloadSpec,
    ParallelSpec,
    PeftSpec,
    TrainingSpec,
)

DRAFT = "https://json-schema.org/draft/2020-12/schema"
KINDS = ("scenario", "plan")
#: A name names the output folder plots/<name>/ (spec.scenario.check_name): printable, no / or \.
NAME_PATTERN = r"^[^/\\]*[^/\\\s][^/\\]*$"
#: A hardware profile given by path (spec.hardware.load_hardware reads a path only with this suffix).
YAML_PATH_PATTERN = r"\.ya?ml$"


def _number(key: str, typ: str, positive: bool = True) -> dict[str, Any]:
    """An integer or a number with the key's range from spec.limits; > 0 where the parser
    refuses <= 0 (``spec.scenario._build``) and the range does not already say so."""
    out: dict[str, Any] = {"type": "integer" if typ == "int" else "number"}
    rng = INT_RANGES.get(key) if typ == "int" else FLOAT_RANGES.get(key)
    if rng is not None:
        out["minimum"], out["maximum"] = rng
    if positive and (rng is None or rng[0] <= 0):
        out.pop("minimum", None)
        if typ == "int":
            out["minimum"] = 1
        else:
            out["exclusiveMinimum"] = 0
    return out


def _list_pattern(allowed: tuple[str, ...]) -> str:
    """A comma-separated list of the allowed words (``_build`` splits a string on commas)."""
    word = "(?:" + "|".join(re.escape(a) for a in allowed) + ")"
    return rf"^\s*{word}(?:\s*,\s*{word})*\s*$"


def _default(f: Any) -> Any:
    if f.default is MISSING:
        return MISSING
    d = f.default
    return list(d) if isinstance(d, tuple) else d


def _field(prefix: str, f: Any, choices: dict[str, tuple[Any, ...]],
           non_positive_ok: tuple[str, ...] = NON_POSITIVE_OK) -> dict[str, Any]:  # fmt: skip
    """The schema of one dataclass field, by its annotation (``int``, ``float``, ``bool``,
    ``str``, ``tuple[str, ...]``)."""
    typ = str(f.type)
    key = f"{prefix}{f.name}"
    allowed = choices.get(f.name)
    if typ == "tuple[str, ...]":
        items: dict[str, Any] = {"type": "string"}
        string: dict[str, Any] = {"type": "string"}
        if allowed:
            items["enum"] = list(allowed)
            string["pattern"] = _list_pattern(tuple(str(a) for a in allowed))
        out: dict[str, Any] = {"anyOf": [{"type": "array", "items": items}, string]}
    elif typ == "str | tuple[int, ...]":  # parallelism.layer_split: a name or layers per chunk
        # (0 only for the first and the last chunk, which hold the embedding / the head:
        # spec.stage_split.explicit_split_problem; a schema cannot say where)
        out = {"anyOf": [{"enum": list(allowed or ())},
                         {"type": "array", "items": {"type": "integer", "minimum": 0},
                          "minItems": 1}]}  # fmt: skip
    elif typ == "bool":
        out = {"type": "boolean"}
    elif typ == "str":
        out = {"type": "string"}
        if allowed:
            out["enum"] = list(allowed)
    elif typ in ("int", "float"):
        out = (
            {"enum": list(allowed)} if allowed else _number(key, typ, f.name not in non_positive_ok)
        )
    else:
        raise TypeError(f"no schema for field {key} of type {typ}")
    d = _default(f)
    if d is not MISSING:
        out["default"] = d
    return out


def _section(cls: type, prefix: str, choices: dict[str, tuple[Any, ...]],
             skip: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    """A flat dataclass as a closed object (the parsers refuse unknown keys)."""
    props = {
        f.name: _field(prefix, f, choices)
        for f in fields(cls)
        if f.name not in INTERNAL_FIELDS and f.name not in skip
    }
    return {"type": "object", "properties": props, "additionalProperties": False}


def model_schema() -> dict[str, Any]:
    """``model:``: a preset, an hf_config path or inline shape keys (spec.scenario.parse_model);
    shape keys next to a preset or hf_config override it."""
    shape = {
        f.name: _field("model.", f, MODEL_CHOICES, non_positive_ok=("dropout", *ZERO_OK_FIELDS))
        for f in fields(ModelSpec)
        if f.name != "name"
    }
    props: dict[str, Any] = {
        "preset": {"enum": sorted([*PRESETS, *ALIASES])},
        "hf_config": {"type": "string", "description": "path to a Hugging Face config.json"},
        "name": {"type": "string"},
        **shape,
    }
    return {
        "type": "object",
        "properties": props,
        "additionalProperties": False,
        "anyOf": [
            {"required": ["preset"]},
            {"required": ["hf_config"]},
            {"required": ["layers", "hidden", "heads", "vocab"]},
        ],  # fmt: skip
        "not": {"required": ["preset", "hf_config"]},
    }


def hardware_schema() -> dict[str, Any]:
    """A shipped profile name (hardware/*.yaml) or a path to a profile (.yaml / .yml)."""
    return {
        "type": "string",
        "anyOf": [{"enum": available_profiles()}, {"pattern": YAML_PATH_PATTERN}],
    }


def runtime_schema() -> dict[str, Any]:
    """``runtime:``: a profile name, or ``{name: NAME, KEY: VALUE, ...}`` (spec.runtime)."""
    names = rt.available_runtimes()
    props: dict[str, Any] = {"name": {"enum": names}, "display_name": {"type": "string"}}
    for k, allowed in rt.CHOICES.items():
        props[k] = {"enum": list(allowed)}
    for k in rt.BOOLS:
        props[k] = {"type": "boolean"}
    for k, (lo, hi) in rt.INTS.items():
        props[k] = {"type": "integer", "minimum": lo, "maximum": hi}
    for k, (lo, hi) in rt.FLOATS.items():
        props[k] = {"type": "number", "minimum": lo, "maximum": hi}
    for k, allowed in rt.LISTS.items():
        props[k] = {"type": "array", "items": {"enum": list(allowed)}, "uniqueItems": True}
    assert set(props) == set(rt.KEYS), "spec.runtime.KEYS has a key of no known kind"
    return {
        "anyOf": [
            {"enum": names},
            {"type": "object", "properties": props, "additionalProperties": False},
        ]
    }


def _name_schema(max_len: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_len, "pattern": NAME_PATTERN}


def training_schema() -> dict[str, Any]:
    t = _section(TrainingSpec, "training.", TRAINING_CHOICES, skip=("peft", "offload"))
    t["properties"]["peft"] = _section(PeftSpec, "training.peft.", PEFT_CHOICES)
    t["properties"]["offload"] = _section(OffloadSpec, "training.offload.", {})
    return t


def scenario_schema() -> dict[str, Any]:
    """The schema of a scenario file (spec.scenario.parse_scenario)."""
    props: dict[str, Any] = {
        "name": _name_schema(MAX_NAME),
        "description": {"type": "string"},
        "model": model_schema(),
        "hardware": hardware_schema(),
        "runtime": runtime_schema(),
        "cluster": _section(ClusterSpec, "cluster.", {}),
        "training": training_schema(),
        "parallelism": _section(ParallelSpec, "parallelism.", PARALLEL_CHOICES),
    }
    assert tuple(props) == TOP_KEYS, "spec.scenario.TOP_KEYS changed: add the key here"
    return {
        "$schema": DRAFT,
        "title": "simtrain scenario",
        "description": "A simtrain scenario file (simtrain run / memory SCENARIO.yaml). Checks "
        "across keys (tp divides heads, tp x pp x dp = the cluster's GPUs, ...) are simtrain's.",
        "type": "object",
        "properties": props,
        "required": ["model", "hardware"],
        "additionalProperties": False,
    }


# ------------------------------------------------------------------------------------- plans


def _plan_number(key: str, integer: bool = False, minimum: float = 0.0, strict: bool = True,
                 maximum: float | None = None) -> dict[str, Any]:  # fmt: skip
    """As ``apps.plan.file._num``: > ``minimum`` (>= when not strict), <= the key's maximum."""
    if maximum is None:
        maximum = MAX_GPUS if integer else planfile.MAXIMA.get(key.rsplit(".", 1)[-1], 1e15)
    out: dict[str, Any] = {"type": "integer" if integer else "number"}
    if integer and strict:
        out["minimum"] = int(minimum) + 1
    else:
        out["exclusiveMinimum" if strict else "minimum"] = minimum
    out["maximum"] = maximum
    return out


def _one_or_list(item: dict[str, Any], max_items: int) -> dict[str, Any]:
    return {"anyOf": [item, {"type": "array", "items": item, "minItems": 1,
                             "maxItems": max_items}]}  # fmt: skip


def _plan_training(training: dict[str, Any]) -> dict[str, Any]:
    key = "training.global_batch"
    top = INT_RANGES[key][1]
    one = _plan_number(key, integer=True, maximum=top)
    rng_props = {k: _plan_number(f"{key}.{k}", integer=True, maximum=top)
                 for k in planfile.BATCH_RANGE_KEYS}  # fmt: skip
    batch = {
        "anyOf": [
            one,
            {"type": "array", "items": one, "minItems": 1},
            {"type": "object", "properties": rng_props, "required": ["min", "max"],
             "additionalProperties": False},
        ]
    }  # fmt: skip
    props = {k: batch if k == "global_batch" else training["properties"][k]
             for k in planfile.TRAINING_KEYS}  # fmt: skip
    return {"type": "object", "properties": props, "required": ["global_batch"],
            "additionalProperties": False}  # fmt: skip


def _plan_hardware() -> dict[str, Any]:
    option = {
        "type": "object",
        "properties": {
            "name": hardware_schema(),
            "price_per_gpu_hour": _plan_number("price_per_gpu_hour", strict=False),
        },
        "required": ["name"],
        "additionalProperties": False,
    }
    assert tuple(option["properties"]) == planfile.HARDWARE_KEYS
    one = {"anyOf": [hardware_schema(), option]}
    return _one_or_list(one, planfile.MAX_FIXED_CHOICES)


def _plan_fixed(training: dict[str, Any], parallel: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for k in planfile.FIXED_KEYS:
        if k in planfile.FIXED_RANGES:
            item = _plan_number(f"fixed.{k}", integer=True,
                                maximum=INT_RANGES[planfile.FIXED_RANGES[k]][1])  # fmt: skip
            if k == "zero_replicas":  # or one copy per node
                item = {"anyOf": [item, {"enum": [planfile.NODE_REPLICAS]}]}
        elif k in ("recompute", "precision"):
            item = {"enum": list(TRAINING_CHOICES[k])}
        else:  # schedule, sequence_parallel, zero_stage: the scenario key's values
            item = {x: v for x, v in parallel["properties"][k].items() if x != "default"}
        props[k] = _one_or_list(item, planfile.MAX_FIXED_CHOICES)
    return {"type": "object", "properties": props, "additionalProperties": False}


def _plan_failures() -> dict[str, Any]:
    props: dict[str, Any] = {"enabled": {"type": "boolean"}}
    for k in planfile.FAILURE_KEYS[1:]:
        key = f"failures.{k}"
        if k == "checkpoint_interval":
            props[k] = {"anyOf": [{"enum": list(INTERVAL_RULES)}, _plan_number(key)]}
        elif k in ("checkpoint_s", "restart_s", "relaunch_s"):
            props[k] = _plan_number(key, strict=False)
        else:
            props[k] = _plan_number(key)
    return {"type": "object", "properties": props, "additionalProperties": False}


def plan_schema() -> dict[str, Any]:
    """The schema of a plan file (apps.plan.file.parse_plan)."""
    training = training_schema()
    parallel = _section(ParallelSpec, "parallelism.", PARALLEL_CHOICES)
    constraints = {
        "deadline_days": {"anyOf": [_plan_number("constraints.deadline_days"), {"type": "null"}]},
        "budget": {"anyOf": [_plan_number("constraints.budget"), {"type": "null"}]},
        "max_gpus": {
            "anyOf": [_plan_number("constraints.max_gpus", integer=True), {"type": "null"}]
        },  # fmt: skip
        "memory_headroom": {
            "anyOf": [_plan_number("constraints.memory_headroom"), {"type": "null"}]
        },  # fmt: skip
    }
    gpu = _plan_number("gpus", integer=True)
    props: dict[str, Any] = {
        "name": _name_schema(MAX_NAME - len("_best")),
        "description": {"type": "string"},
        "model": model_schema(),
        "tokens": _plan_number("tokens", minimum=1.0, strict=False, maximum=planfile.MAX_TOKENS),
        "training": _plan_training(training),
        "hardware": _plan_hardware(),
        "runtime": runtime_schema(),
        "gpus": {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {"min": gpu, "max": gpu},
                    "required": ["max"],
                    "additionalProperties": False,
                },
                gpu,
                {"type": "array", "items": gpu, "minItems": 1},
            ]
        },  # fmt: skip
        "constraints": {
            "type": "object",
            "properties": constraints,
            "additionalProperties": False,
        },  # fmt: skip
        "fixed": _plan_fixed(training, parallel),
        "parallelism": {
            "type": "object",
            "properties": {k: parallel["properties"][k] for k in planfile.PARALLEL_SETTING_KEYS}
            | {"layer_split": {"enum": list(LAYER_SPLITS), "default": "uniform"}},  # names only
            "additionalProperties": False,
        },
        "failures": _plan_failures(),
        "objective": {"enum": list(planfile.OBJECTIVES)},
        "top": _plan_number("top", integer=True, maximum=planfile.MAX_TOP),
    }
    assert tuple(props) == planfile.TOP_KEYS, "apps.plan.file.TOP_KEYS changed: add the key here"
    assert tuple(constraints) == planfile.CONSTRAINT_KEYS
    return {
        "$schema": DRAFT,
        "title": "simtrain plan",
        "description": "A simtrain plan file (simtrain plan PLAN.yaml).",
        "type": "object",
        "properties": props,
        "required": ["model", "tokens", "training", "hardware"],
        "additionalProperties": False,
    }


def schema(kind: str) -> dict[str, Any]:
    """The schema of ``kind`` (scenario or plan)."""
    return scenario_schema() if kind == "scenario" else plan_schema()


def schema_json(kind: str) -> str:
    """The schema as the JSON ``simtrain schema`` prints (2-space indent, key order fixed)."""
    return json.dumps(schema(kind), indent=2) + "\n"
