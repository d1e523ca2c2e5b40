"""Running a comparison: the baseline and every variant simulated, one :class:`VariantRow` each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simtrain.apps.compare.variants import Variant, check_keeps_base, parse_variant
from simtrain.apps.simulate import SimulationResult, simulate_scenario
from simtrain.errors import MAX_ECHO, ConfigError, one_line
from simtrain.report.tables import mfu_peak_text
from simtrain.report.trace import memory_steps
from simtrain.sim.timeline import MEMORY_CATEGORIES
from simtrain.spec.precision import STORAGE_DEFAULTS
from simtrain.spec.scenario import Scenario, load_scenario

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class VariantRow:
    """One variant's result (memory of the GPU with the highest peak)."""

    name: str
    description: str
    note: str
    overrides: tuple[str, ...]  # this variant's own overrides
    cumulative_overrides: tuple[str, ...]  # everything applied to the scenario file
    setup: tuple[tuple[str, Any], ...]  # precision, batches, layout, ... (for the reader)
    gpus: int
    peak_stage: int
    memory_bytes: tuple[tuple[str, int], ...]  # as ``simtrain memory`` reports them
    at_peak_bytes: tuple[tuple[str, int], ...]  # held at the moment of the peak (sums to it)
    host_memory_bytes: int
    peak_memory_bytes: int
    capacity_bytes: int
    fits: bool
    step_time_s: float
    tokens_per_s: float
    samples_per_s: float
    mfu: float
    params: int
    trainable_params: int
    time_breakdown_s: tuple[tuple[str, float], ...]

    def category(self, name: str) -> int:
        return dict(self.memory_bytes)[name]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "note": self.note,
            "overrides": list(self.overrides),
            "cumulative_overrides": list(self.cumulative_overrides),
            "setup": dict(self.setup),
            "gpus": self.gpus,
            "peak_stage": self.peak_stage,
            "memory_bytes": dict(self.memory_bytes),
            "at_peak_bytes": dict(self.at_peak_bytes),
            "host_memory_bytes": self.host_memory_bytes,
            "peak_memory_bytes": self.peak_memory_bytes,
            "capacity_bytes": self.capacity_bytes,
            "fits": self.fits,
            "step_time_s": self.step_time_s,
            "tokens_per_s": self.tokens_per_s,
            "samples_per_s": self.samples_per_s,
            "mfu": self.mfu,
            "params": self.params,
            "trainable_params": self.trainable_params,
            "time_breakdown_s": dict(self.time_breakdown_s),
        }


def _at_peak(res: SimulationResult, gpu: int) -> tuple[tuple[str, int], ...]:
    """Bytes per category held by ``gpu`` at the first moment of its simulated peak."""
    times, rows = memory_steps(res.timeline, gpu, MEMORY_CATEGORIES)
    if not rows:
        return tuple((c, 0) for c in MEMORY_CATEGORIES)
    i = max(range(len(rows)), key=lambda k: sum(rows[k]))
    return tuple(zip(MEMORY_CATEGORIES, rows[i], strict=True))


#: The optimizer-storage keys and their defaults (a variant that cannot keep them resets them).
STORAGE_KEYS = {f"training.{k}": d for k, d in STORAGE_DEFAULTS.items()}


def _setup(sc: Scenario) -> tuple[tuple[str, Any], ...]:
    t, p = sc.training, sc.parallelism
    return (
        ("precision", t.precision),
        ("optimizer", t.optimizer),
        ("optimizer_state_dtype", t.optimizer_state_dtype),
        ("master_weights", t.master_weights),
        ("recompute", t.recompute),
        ("peft", t.peft.method),
        ("offload_optimizer", t.offload.optimizer),
        ("seq_len", t.seq_len),
        ("micro_batch", t.micro_batch),
        ("global_batch", t.global_batch),
        ("microbatches", sc.num_microbatches),
        ("dp", p.dp),
        ("tp", p.tp),
        ("pp", p.pp),
        ("zero_stage", p.zero_stage),
        ("hardware", sc.hardware.name),
        ("mfu_peak", mfu_peak_text(sc)),
        ("matmul_estimate", sc.hardware.matmul_is_estimate),
        ("matmul_efficiency", sc.hardware.efficiency.matmul),
        ("matmul_source", sc.hardware.matmul_source_kind),
    )


def make_row(
    sc: Scenario,
    name: str = "baseline",
    description: str = "",
    note: str = "",
    overrides: Sequence[str] = (),
    cumulative: Sequence[str] = (),
) -> VariantRow:
    """Simulate ``sc`` and collect one row."""
    res = simulate_scenario(sc)
    mem, mt = res.memory, res.metrics
    worst = max(mem.stages, key=lambda s: (s.peak_memory_bytes, -s.stage))
    return VariantRow(
        name=name,
        description=description,
        note=note,
        overrides=tuple(overrides),
        cumulative_overrides=tuple(cumulative),
        setup=_setup(sc),
        gpus=sc.parallelism.gpus,
        peak_stage=worst.stage,
        memory_bytes=worst.memory_bytes,
        at_peak_bytes=_at_peak(res, worst.stage),
        host_memory_bytes=worst.host_memory_bytes,
        peak_memory_bytes=worst.peak_memory_bytes,
        capacity_bytes=worst.capacity_bytes,
        fits=mem.fits,
        step_time_s=mt.step_time_s,
        tokens_per_s=mt.tokens_per_s,
        samples_per_s=mt.samples_per_s,
        mfu=mt.mfu,
        params=mem.params,
        trainable_params=mem.trainable_params,
        time_breakdown_s=mt.time_breakdown_s,
    )


@dataclass(frozen=True, slots=True)
class VariantComparison:
    scenario: str  # scenario name
    source: str  # the scenario file
    model: str
    hardware: str  # display name of the GPU
    ladder: bool
    base_overrides: tuple[str, ...]
    rows: tuple[VariantRow, ...] = field(default_factory=tuple)  # rows[0] is the baseline
    # built-in variants that do not apply to this scenario (side by side only): (name, why)
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def mode(self) -> str:
        return "ladder" if self.ladder else "alone"

    def reference(self, i: int) -> VariantRow:
        """The row that row ``i`` is measured against: the previous rung, or the baseline."""
        return self.rows[i - 1] if self.ladder else self.rows[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "scenario": self.scenario,
            "source": self.source,
            "model": self.model,
            "hardware": self.hardware,
            "mode": self.mode,
            "base_overrides": list(self.base_overrides),
            "rows": [r.to_json() for r in self.rows],
            "skipped": [{"variant": n, "reason": why} for n, why in self.skipped],
        }


def _cut(text: str, n: int = 60) -> str:
    text = text.strip()
    return text if len(text) <= n else text[: n - 3] + "..."


def _unique_names(specs: Sequence[str], names: Sequence[str]) -> None:
    """Rows are told apart by name (table, CSV, JSON): one name for two different variants
    (``a:training.seq_len=512,a:training.micro_batch=6``), or a variant named ``baseline``, is
    an error naming both. The same variant twice is allowed (a ladder of ``half_batch,half_batch``
    halves twice)."""
    seen: dict[str, str] = {}
    for spec, name in zip(specs, names, strict=True):
        if name == "baseline":
            raise ConfigError(None, "--variants", f"{_cut(spec)!r}: 'baseline' is the name of "
                              "the scenario's own row; give the variant another name")  # fmt: skip
        if name in seen and "".join(seen[name].split()) != "".join(spec.split()):
            raise ConfigError(
                None, "--variants", f"two different variants are named {_cut(name, 40)!r} "
                f"({_cut(seen[name])!r} and {_cut(spec)!r}): their rows could not be told apart; "
                "give each its own name, NAME:KEY=VALUE",
            )  # fmt: skip
        seen.setdefault(name, spec)


def compare(
    scenario_path: str | Path,
    variants: Sequence[str],
    *,
    ladder: bool = False,
    overrides: Sequence[str] = (),
) -> VariantComparison:
    """Simulate the baseline (the file with ``overrides``) and every variant, each alone against
    the baseline or, with ``ladder``, each on top of the previous ones. Side by side, a
    built-in variant that does not apply to the scenario (``half_batch`` at micro-batch 1, FP8
    dispatch without FP8) is listed as skipped with its reason and the others compared; an
    ad hoc variant, any variant of a ladder, or every variant failing is an error."""
    parsed = [parse_variant(v) for v in variants]  # unknown names fail before any simulation
    _unique_names(variants, [v.name for v in parsed])
    base_ov = tuple(overrides)
    base = load_scenario(scenario_path, base_ov)
    rows = [make_row(base, "baseline", "the scenario file" + (" with --set" if base_ov else ""),
                     cumulative=base_ov)]  # fmt: skip
    current, applied = base, base_ov
    skipped: list[tuple[str, str]] = []
    for v in parsed:
        ref, ref_ov = (current, applied) if ladder else (base, base_ov)
        try:
            ov, note = v.overrides(ref)
            sc, row = _variant_row(scenario_path, v, ov, note, ref_ov, base_ov)
        except ConfigError as exc:
            if ladder or v.adhoc or len(skipped) + 1 == len(parsed):
                raise
            skipped.append((v.name, str(exc)))
            continue
        rows.append(row)
        if ladder:
            current, applied = sc, row.cumulative_overrides
    return VariantComparison(
        scenario=base.name,
        source=str(scenario_path),
        model=base.model.name,
        hardware=base.hardware.display_name,
        ladder=ladder,
        base_overrides=base_ov,
        rows=tuple(rows),
        skipped=tuple(skipped),
    )


def _variant_row(scenario_path: str | Path, v: Variant, ov: tuple[str, ...], note: str,
                 ref_ov: tuple[str, ...], base_ov: tuple[str, ...]) -> tuple[Scenario, VariantRow]:  # fmt: skip
    """Variant ``v``'s scenario and row: its ``ov`` on top of ``ref_ov`` (ConfigError where the
    scenario that gives is invalid)."""
    check_keeps_base(v, ov, base_ov)
    cumulative = ref_ov + ov
    try:
        try:
            sc = load_scenario(scenario_path, cumulative)
        except ConfigError as exc:
            # A variant that brings its own optimizer (CPU Adam, QLoRA's paged one, FSDP's
            # fp32 shard, a precision without a master) replaces the scenario's optimizer
            # storage (training.optimizer_state_dtype, master_weights) with its default.
            # (a key the variant sets itself stays its choice: its error stands)
            mine = {o.split("=", 1)[0] for o in ov}
            if exc.key not in STORAGE_KEYS or exc.key in mine:
                raise
            ov = ov + tuple(f"{k}={d}" for k, d in STORAGE_KEYS.items())
            cumulative = ref_ov + ov
            sc = load_scenario(scenario_path, cumulative)
            note = "; ".join(x for x in (note, f"the optimizer's storage back to its default "
                                         f"({exc.key}: {exc.message})") if x)  # fmt: skip
    except ConfigError as exc:
        raise ConfigError(
            None,
            f"variant {v.name!r}",
            f"gives an invalid scenario ({one_line(', '.join(ov), MAX_ECHO)}): {exc}",
        ) from None
    return sc, make_row(sc, v.name, v.description, note, ov, cumulative)
