"""What every importer shares: the result (:class:`Imported`), the bookkeeping of what a foreign
file said (:class:`Reading`), the emitted YAML and the loading of the imported scenario.

An importer reads one framework's configuration and sorts every setting it meets into one of:

- **mapped**: it sets a scenario key (``--num-layers 96`` -> ``model.layers: 96``);
- **no effect**: known to the importer and without effect on one simulated training step
  (learning rate, data paths, logging, checkpoint intervals); listed in the YAML's comments;
- **not simulated**: simtrain has nothing for it (FP8, context parallelism, mixture of experts,
  a flag the importer does not know); listed in the YAML's comments and on stderr, an error with
  ``--strict``. Never dropped silently.

What the file does not say and the scenario needs (the GPU model, a default the framework fills
in) is an assumption, listed with its source. A value the scenario cannot do without and no
default exists for (the vocabulary of a tokenizer the importer cannot size, the GPU count of a
file that names none) is a *need*: the import fails with one line naming the flag, unless a
``--set`` override gives the key.
"""

from __future__ import annotations

import copy
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simtrain.errors import ConfigError, one_line
from simtrain.spec.limits import MAX_GPUS, as_float, check_range
from simtrain.spec.scenario import (
    Scenario,
    _blame_overrides,
    _parse_fields,
    apply_override,
    check_layout,
    check_runtime_options,
)

#: The GPU of a scenario imported from a file that names none (none of the four formats does):
#: the A100 80 GB, the GPU of Megatron-LM's and torchtitan's published runs (torchtitan's
#: llama3_8b.toml: "a preset for 64 A100 GPUs"). Override with ``--set hardware=NAME``.
DEFAULT_HARDWARE = "a100_sxm4_80gb"
#: Megatron-LM 2021's "local" DDP reduces the whole contiguous gradient buffer in one all-reduce
#: after the backward (arguments.py --DDP-impl local, the default until 2022): one bucket larger
#: than any gradient (also validate's for sources whose runs reduce after the backward; within
#: spec.limits FLOAT_RANGES).
ONE_BUCKET_MB = 1e9


@dataclass(frozen=True, slots=True)
class Need:
    """A scenario key the file does not give and no default exists for: ``key`` (a key path a
    ``--set`` may give), the flag or key of the foreign file to blame, and what to do."""

    key: str
    flag: str
    message: str


@dataclass(frozen=True, slots=True)
class Imported:
    """A foreign configuration read as a scenario document (for ``spec.scenario``)."""

    kind: str  # megatron | deepspeed | torchtitan | nanotron
    file: str
    data: dict[str, Any]
    assumptions: tuple[str, ...] = ()  # defaults filled in and readings made, with sources
    unsupported: tuple[str, ...] = ()  # settings read but not simulated (--strict: an error)
    no_effect: tuple[str, ...] = ()  # settings without effect on a simulated step
    needs: tuple[Need, ...] = ()
    # (scenario key, the foreign flag or key it came from): an error about the key names both
    origins: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Reading:
    """The importer's notebook while it reads one file (mutable; frozen into :class:`Imported`)."""

    kind: str
    file: str
    assumptions: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    no_effect: list[str] = field(default_factory=list)
    needs: list[Need] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)

    def origin(self, key: str, flag: str) -> None:
        """The scenario ``key`` came from ``flag`` of the foreign file."""
        self.origins.setdefault(key, flag)

    def assume(self, text: str) -> None:
        self.assumptions.append(text)

    def unsupported_(self, setting: str, why: str) -> None:
        self.unsupported.append(f"{setting}: {why}")

    def ignore(self, setting: str) -> None:
        self.no_effect.append(setting)

    def need(self, key: str, flag: str, message: str) -> None:
        self.needs.append(Need(key, flag, message))

    def error(
        self, key: str, message: str, value: Any = None, allowed: str | None = None
    ) -> ConfigError:
        return ConfigError(self.file, key, message, value, allowed)

    def scenario(self, description: str, no_gpu: str, model: dict[str, Any],
                 runtime: dict[str, Any], training: dict[str, Any],
                 par: dict[str, Any]) -> Imported:  # fmt: skip
        """The imported scenario on :data:`DEFAULT_HARDWARE` (``no_gpu``: why, e.g. "a nanotron
        config names no GPU"), with what was read."""
        self.assume(f"hardware {DEFAULT_HARDWARE}: {no_gpu}")
        return self.done({
            "name": scenario_name(self.file), "description": description, "model": model,
            "hardware": DEFAULT_HARDWARE, "runtime": runtime, "training": training,
            "parallelism": par,
        })  # fmt: skip

    def done(self, data: dict[str, Any]) -> Imported:
        return Imported(self.kind, self.file, data, tuple(self.assumptions),
                        tuple(self.unsupported), tuple(self.no_effect), tuple(self.needs),
                        tuple(self.origins.items()))  # fmt: skip


def world_and_dp(r: Reading, world: int | None, world_from: str, gpus: int | None,
                 model_parallel: int, mp_text: str) -> int:  # fmt: skip
    """The data-parallel size: world / (the model-parallel product); the world from ``--gpus``,
    else from the file (``world_from`` says where); none, or a world that is not a multiple, is
    an error naming where it came from."""
    if gpus is not None:
        world, world_from = gpus, "--gpus"
    if world is None:
        raise r.error("--gpus", f"the file gives no GPU count: give --gpus N (a multiple of "
                      f"{mp_text} = {model_parallel})")  # fmt: skip
    if world < 1 or world > MAX_GPUS:
        raise r.error(world_from, f"GPU count must be 1 to {MAX_GPUS:,}", world)
    if world % model_parallel:
        raise r.error(world_from, f"{world} GPUs are not a multiple of {mp_text} = "
                      f"{model_parallel}: give the job's GPU count with --gpus", world)  # fmt: skip
    if world_from != "--gpus":
        r.assume(f"GPUs: {world} ({world_from}); change with --gpus")
    return world // model_parallel


#: The ``parallelism`` keys an importer writes, in the order the scenario file shows them.
PARALLEL_KEYS = ("dp", "tp", "pp", "cp", "ep", "expert_tp", "schedule", "virtual_stages",
                 "microbatch_group_size",
                 "zero_stage", "zero_replicas", "sequence_parallel", "bucket_mb",
                 "zero3_max_live_params",
                 "first_stage_layers",
                 "last_stage_layers", "account_for_embedding", "account_for_loss", "layer_split")  # fmt: skip


def parallel_section(par: dict[str, Any]) -> dict[str, Any]:
    """The ``parallelism`` section of an imported scenario: the keys of :data:`PARALLEL_KEYS`
    that the reading set (its working values under other names are left out), in that order."""
    return {k: par[k] for k in PARALLEL_KEYS if k in par}


def grad_bucket_mb(elements: float, grad_bytes: int) -> float:
    """A bucket of ``elements`` gradient elements in MB (simtrain's bucket_mb counts bytes:
    costs.comm.ddp_buckets)."""
    return elements * grad_bytes / 1e6


def as_bool(value: Any, file: str | None, key: str) -> bool:
    """A switch of a foreign file: a real boolean, or the string ``"true"`` / ``"false"`` (any
    case: what a template or an environment variable leaves behind); anything else (``"no"``,
    ``1``, ``null``, a list) is an error naming ``key``, never the truthiness of a value."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfigError(file, key, "must be a boolean", value, "true | false")


def whole_number(value: Any, file: str | None, key: str, lo: int = 1,
                 hi: int | None = None) -> int:  # fmt: skip
    """An integer setting of a foreign file: an int, or a float that is one (JSON's ``1e9``),
    within ``lo`` .. ``hi``; a string, a boolean, null, a fraction, NaN, infinity or a number
    out of range is an error naming ``key`` (never an OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        what = "a positive integer" if lo == 1 else f"an integer >= {lo}"
        raise ConfigError(file, key, f"must be {what}", value)
    if isinstance(value, float):
        f = as_float(value, file, key)
        if not f.is_integer():
            raise ConfigError(file, key, "must be a whole number", value)
        value = int(f)
    if lo == 1 and value < 1:
        raise ConfigError(file, key, "must be positive", value)
    check_range(value, file, key, lo, hi if hi is not None else 2**62)
    return value


def clean_number(x: float) -> float | int:
    """``x`` as an int when it is one (YAML without a trailing ``.0``)."""
    return int(x) if isinstance(x, float) and math.isfinite(x) and x.is_integer() else x


# --------------------------------------------------------------------------- YAML and loading


#: Width of the emitted YAML's comment lines (the house line length).
COMMENT_WIDTH = 100


def _comment(lines: list[str], title: str, items: tuple[str, ...]) -> None:
    if not items:
        return
    lines.append(f"# {title}")
    for it in items:
        lines += textwrap.wrap(one_line(it), COMMENT_WIDTH, initial_indent="#   - ",
                               subsequent_indent="#     ", break_on_hyphens=False)  # fmt: skip


def to_yaml(imp: Imported, command: str) -> str:
    """The scenario YAML of an import, its comment block first: the command, the source file,
    the assumptions, what is not simulated and what has no effect. Deterministic."""
    lines = [f"# Imported by: {one_line(command)}", f"# from: {one_line(imp.file)} ({imp.kind})"]
    _comment(lines, "assumptions (not in the file, or read as stated; change with --set):",
             imp.assumptions)  # fmt: skip
    _comment(lines, "NOT SIMULATED (read, but simtrain has nothing for it; --strict refuses):",
             imp.unsupported)  # fmt: skip
    if imp.no_effect:
        lines += textwrap.wrap("read, no effect on a simulated step: " + one_line(", ".join(
            imp.no_effect)), COMMENT_WIDTH, initial_indent="# ", subsequent_indent="#   ",
            break_on_hyphens=False)  # fmt: skip
    body = yaml.safe_dump(imp.data, sort_keys=False, default_flow_style=False, width=100)
    return "\n".join(lines) + "\n" + body


def strict_check(imp: Imported) -> None:
    """``--strict``: the first setting not simulated is an error naming it."""
    if imp.unsupported:
        setting, _, why = imp.unsupported[0].partition(": ")
        more = len(imp.unsupported) - 1
        raise ConfigError(imp.file, setting, f"not simulated (--strict): {why}"
                          + (f" (and {more} more)" if more else ""))  # fmt: skip


def _has(data: dict[str, Any], key: str) -> bool:
    node: Any = data
    for k in key.split("."):
        if not isinstance(node, dict) or k not in node:
            return False
        node = node[k]
    return True


def with_overrides(imp: Imported, overrides: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """The imported document with ``--set`` overrides applied; a need no override met is an
    error naming the foreign file's flag."""
    data = copy.deepcopy(imp.data)
    for o in overrides:
        apply_override(data, o)
    for n in imp.needs:
        if not _has(data, n.key):
            raise ConfigError(imp.file, n.flag, n.message)
    return data


def load_imported(imp: Imported, overrides: tuple[str, ...] | list[str] = ()) -> Scenario:
    """The validated scenario of an import with ``--set`` overrides (errors as
    ``spec.scenario.load_scenario``'s: a value an override set names ``--set``)."""
    data = with_overrides(imp, overrides)
    base = Path(imp.file).parent
    try:
        sc = _parse_fields(data, imp.file, base)
    except ConfigError as exc:
        raise _blame(imp, exc, overrides, across=False) from None
    try:
        check_layout(sc, imp.file)
        check_runtime_options(sc, data.get("runtime"), imp.file)
    except ConfigError as exc:
        raise _blame(imp, exc, overrides, across=True) from None
    return sc


def _blame(imp: Imported, exc: ConfigError, overrides: tuple[str, ...] | list[str],
           across: bool) -> ConfigError:  # fmt: skip
    """As load_scenario's blame; an error about a key the foreign file set names its flag too
    (``--tensor-model-parallel-size (parallelism.tp): must divide ...``)."""
    if overrides:
        blamed = _blame_overrides(exc, imp.file, overrides, across)
        if blamed.file != imp.file:  # the value came from --set, or from the file with them
            return blamed
    flag = dict(imp.origins).get(str(exc.key))
    if flag is None:
        return exc
    return ConfigError(imp.file, f"{flag} ({exc.key})", exc.message, exc.value, exc.allowed)


def scenario_name(path: str) -> str:
    """The scenario name of an imported file: its stem, as a scenario file's default name."""
    stem = Path(path).stem or "imported"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:100]
