"""``simtrain compare``: what each memory-saving technique buys (GiB) and costs (seconds).

The lecture's question "how to optimize?" answered on the user's own model and GPU. A *variant*
is a named list of ``--set``-style overrides (``key.path=value``). Built-ins cover the lecture's
list: mixed precision, gradient checkpointing, smaller batches, gradient accumulation, PEFT
(LoRA, QLoRA, prefix and prompt tuning, adapters, linear probing), CPU offload and ZeRO; any
``key=value`` list is a variant too.

Two modes:

- **alone** (default): every variant is applied to the baseline by itself;
- **ladder** (``--ladder``): each variant is applied on top of the previous ones, so the rows walk
  from the baseline to the scenario with every technique (the lecture's 84 GB -> 33 GB walk).
  A ladder row is exactly the scenario file loaded with all the overrides so far.

Every number comes from the memory model and the simulated step (:func:`simulate_scenario`); no
technique has a fixed cost: checkpointing costs the recompute forward the engine plays,
frozen weights skip their weight-gradient matmuls, offload pays PCIe transfers and a CPU Adam
step, ZeRO pays its collectives.

Variants whose overrides depend on the scenario are functions of the *current* scenario (the
baseline in alone mode, the previous rung in ladder mode): ``half_batch`` and ``grad_accum_4``
(its batch sizes), ``amp`` and ``qlora`` (bf16, or fp16 on GPUs without bf16), ``qlora`` (the
model's linear modules), ``zero1/2/3`` (dp = all GPUs of the scenario; a 1-GPU scenario, or one
with dp = 1, becomes pure data parallelism over 8 GPUs of one node, resp. over all its GPUs,
each GPU keeping its micro-batches, so the global batch grows with dp; the row's note says so).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.textpath import TextPath
from matplotlib.ticker import FuncFormatter

from simtrain.apps.simulate import SimulationResult, simulate_scenario
from simtrain.errors import ConfigError
from simtrain.report.plot import CATEGORY_COLOURS, DPI, save_png
from simtrain.report.tables import dumps
from simtrain.report.trace import memory_steps
from simtrain.sim.timeline import MEMORY_CATEGORIES
from simtrain.spec.hardware import GIB
from simtrain.spec.scenario import Scenario, load_scenario

SCHEMA_VERSION = 1
ZERO_GPUS_FOR_ONE_GPU = 8  # a 1-GPU scenario gets ZeRO over one node of this many GPUs

# A variant's overrides as a function of the current scenario: (overrides, note for the reader).
OverrideFn = Callable[[Scenario], tuple[tuple[str, ...], str]]


# ---------------------------------------------------------------------------------------------
# Built-in variants


def _fixed(*overrides: str, note: str = "") -> OverrideFn:
    return lambda sc: (tuple(overrides), note)


def _half_dtype(sc: Scenario) -> str:
    """bf16 where the GPU has bf16 tensor cores, else fp16 (e.g. V100)."""
    try:
        bf16 = sc.hardware.peak("bf16")
    except KeyError:
        bf16 = 0.0
    return "bf16" if bf16 > 0 else "fp16"


def _amp(sc: Scenario) -> tuple[tuple[str, ...], str]:
    dtype = _half_dtype(sc)
    note = "" if dtype == "bf16" else f"{sc.hardware.name} has no bf16 tensor cores: fp16"
    return (f"training.precision={dtype}",), note


def _half_batch(sc: Scenario) -> tuple[tuple[str, ...], str]:
    t = sc.training
    if t.micro_batch % 2:
        raise ConfigError(
            sc.source or None, "--variants", "half_batch needs an even training.micro_batch",
            t.micro_batch,
        )  # fmt: skip
    return (
        (
            f"training.micro_batch={t.micro_batch // 2}",
            f"training.global_batch={t.global_batch // 2}",
        ),
        f"micro-batch {t.micro_batch} -> {t.micro_batch // 2}, global batch {t.global_batch} -> "
        f"{t.global_batch // 2} sequences per step",
    )


def _grad_accum(k: int) -> OverrideFn:
    def fn(sc: Scenario) -> tuple[tuple[str, ...], str]:
        t = sc.training
        if t.micro_batch % k:
            raise ConfigError(
                sc.source or None, "--variants", f"grad_accum_{k} needs training.micro_batch "
                f"divisible by {k}", t.micro_batch,
            )  # fmt: skip
        mb = t.micro_batch // k
        m = t.global_batch // (mb * sc.parallelism.dp)
        return (
            (f"training.micro_batch={mb}",),
            f"micro-batch {t.micro_batch} -> {mb}: {m} accumulation steps, same global batch "
            f"{t.global_batch}",
        )

    return fn


def _linear_modules(sc: Scenario) -> str:
    return "[" + ", ".join(sc.model.linear_weight_shapes()) + "]"


def _qlora(sc: Scenario) -> tuple[tuple[str, ...], str]:
    return (
        "training.peft.method=qlora",
        f"training.precision={_half_dtype(sc)}",
        f"training.peft.target_modules={_linear_modules(sc)}",
    ), "NF4 base weights, LoRA on every linear module (QLoRA paper setting)"


def _zero(stage: int) -> OverrideFn:
    """ZeRO-``stage`` with dp = all GPUs of the scenario. A scenario with dp = 1 is re-laid out as
    pure data parallelism over its GPUs (1 GPU: over one node of 8); every GPU keeps its
    micro-batch size and accumulation steps, so the global batch grows with dp."""

    def fn(sc: Scenario) -> tuple[tuple[str, ...], str]:
        p, t = sc.parallelism, sc.training
        ov = [f"parallelism.zero_stage={stage}"]
        note = ""
        if p.dp == 1:
            gpus = sc.cluster.gpus
            if gpus == 1:
                gpus = min(ZERO_GPUS_FOR_ONE_GPU, sc.hardware.gpus_per_node)
                ov += ["cluster.nodes=1", f"cluster.gpus_per_node={gpus}"]
                note = f"the scenario has 1 GPU: ZeRO over {gpus} GPUs of one node"
            else:
                note = f"dp was 1: re-laid out as data parallelism over all {gpus} GPUs"
            gb = t.micro_batch * gpus * sc.num_microbatches
            ov += [
                f"parallelism.dp={gpus}", "parallelism.tp=1", "parallelism.pp=1",
                "parallelism.virtual_stages=1", "parallelism.sequence_parallel=false",
                f"training.global_batch={gb}",
            ]  # fmt: skip
            note += (f"; each GPU keeps {sc.num_microbatches} micro-batch(es) of "
                     f"{t.micro_batch}, so the global batch is {t.global_batch} -> {gb}")  # fmt: skip
        if p.dp_mode != "ddp":
            ov.append("parallelism.dp_mode=ddp")
        return tuple(ov), note

    return fn


BUILTIN_VARIANTS: dict[str, tuple[str, OverrideFn]] = {
    "amp": ("mixed precision: 16-bit weights, gradients, activations; fp32 master + Adam", _amp),
    "checkpointing": ("gradient checkpointing: keep block inputs, recompute the forward",
                      _fixed("training.recompute=full")),
    "selective_recompute": ("recompute only the attention core (Korthikanti et al. 2022)",
                            _fixed("training.recompute=selective")),
    "half_batch": ("halve the micro-batch and the global batch", _half_batch),
    "grad_accum_4": ("micro-batch / 4, same global batch (4x gradient accumulation)",
                     _grad_accum(4)),
    "lora": ("LoRA: frozen base, low-rank trainable matrices (default r=8 on q, v)",
             _fixed("training.peft.method=lora")),
    "qlora": ("QLoRA: 4-bit NF4 base + LoRA on all linear modules, 16-bit compute", _qlora),
    "prefix": ("prefix tuning: trainable key/value prefixes per layer",
               _fixed("training.peft.method=prefix")),
    "prompt": ("prompt tuning: trainable soft tokens", _fixed("training.peft.method=prompt")),
    "adapter": ("bottleneck adapters after attention and MLP",
                _fixed("training.peft.method=adapter")),
    "linear_probe": ("train only a new head on frozen features",
                     _fixed("training.peft.method=linear_probe")),
    "offload": ("optimizer states and master weights in CPU memory, CPU Adam",
                _fixed("training.offload.optimizer=true")),
    "zero1": ("ZeRO-1: optimizer states sharded over data parallelism", _zero(1)),
    "zero2": ("ZeRO-2: + gradients sharded", _zero(2)),
    "zero3": ("ZeRO-3: + parameters sharded", _zero(3)),
}  # fmt: skip

ADHOC_HELP = "NAME:KEY=VALUE,KEY=VALUE or KEY=VALUE,..."


def builtin_names() -> tuple[str, ...]:
    return tuple(BUILTIN_VARIANTS)


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    description: str
    overrides: OverrideFn


_KEY_START = re.compile(r",\s*(?=[A-Za-z_][\w.]*\s*=)")


def _split_assignments(text: str) -> tuple[str, ...]:
    """``a.b=1,c=[x, y],d=q,k`` -> ("a.b=1", "c=[x, y]", "d=q,k"): a comma starts a new
    assignment only when a ``key=`` follows it, so list values keep their commas."""
    parts = [p.strip() for p in _KEY_START.split(text) if p.strip()]
    for p in parts:
        if "=" not in p:
            raise ConfigError(None, "--variants", "expected KEY.PATH=VALUE", p, ADHOC_HELP)
    return tuple(parts)


def parse_variant(spec: str) -> Variant:
    """One variant: a built-in name, ``NAME:KEY=VALUE,...`` or ``KEY=VALUE,...``."""
    spec = spec.strip()
    if spec in BUILTIN_VARIANTS:
        desc, fn = BUILTIN_VARIANTS[spec]
        return Variant(spec, desc, fn)
    head, sep, rest = spec.partition(":")
    if sep and "=" not in head and head.strip():
        name, body = head.strip(), rest
    elif "=" in spec:
        body = spec
        name = ",".join(a.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + a.split("=", 1)[1]
                        for a in _split_assignments(spec))  # fmt: skip
    else:
        raise ConfigError(None, "--variants", "unknown variant", spec,
                          ", ".join(BUILTIN_VARIANTS) + f", or {ADHOC_HELP}")  # fmt: skip
    overrides = _split_assignments(body)
    if not overrides:
        raise ConfigError(None, "--variants", "empty variant", spec, ADHOC_HELP)
    return Variant(name, "ad hoc: " + ", ".join(overrides), _fixed(*overrides))


def split_variants(text: str) -> list[str]:
    """The CLI's ``--variants`` string -> variant specs.

    Commas separate variants, except inside brackets and inside an ad-hoc variant: after
    ``NAME:KEY=VALUE`` or ``KEY=VALUE``, further ``KEY=VALUE`` items belong to it (and items that
    are not built-in names continue its last value, e.g. a list ``q,k,v``). Name ad-hoc variants
    (``a:...,b:...``) to put two of them side by side.
    """
    tokens: list[str] = []
    depth, cur = 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            tokens.append(cur)
            cur = ""
        else:
            cur += ch
    tokens.append(cur)
    specs: list[str] = []
    adhoc = False
    for tok in (t.strip() for t in tokens):
        if not tok:
            continue
        named = ":" in tok and "=" not in tok.split(":", 1)[0] and "=" in tok
        if named or ("=" in tok and not adhoc):
            specs.append(tok)
            adhoc = True
        elif "=" in tok or (adhoc and tok not in BUILTIN_VARIANTS):
            specs[-1] += "," + tok
        else:
            specs.append(tok)
            adhoc = False
    return specs


# ---------------------------------------------------------------------------------------------
# Rows


@dataclass(frozen=True, slots=True)
class Row:
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


def _setup(sc: Scenario) -> tuple[tuple[str, Any], ...]:
    t, p = sc.training, sc.parallelism
    return (
        ("precision", t.precision),
        ("optimizer", t.optimizer),
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
    )


def make_row(
    sc: Scenario,
    name: str = "baseline",
    description: str = "",
    note: str = "",
    overrides: Sequence[str] = (),
    cumulative: Sequence[str] = (),
) -> Row:
    """Simulate ``sc`` and collect one row."""
    res = simulate_scenario(sc)
    mem, mt = res.memory, res.metrics
    worst = max(mem.stages, key=lambda s: (s.peak_memory_bytes, -s.stage))
    return Row(
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
class Comparison:
    scenario: str  # scenario name
    source: str  # the scenario file
    model: str
    hardware: str  # display name of the GPU
    ladder: bool
    base_overrides: tuple[str, ...]
    rows: tuple[Row, ...] = field(default_factory=tuple)  # rows[0] is the baseline

    @property
    def mode(self) -> str:
        return "ladder" if self.ladder else "alone"

    def reference(self, i: int) -> Row:
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
        }


def compare(
    scenario_path: str | Path,
    variants: Sequence[str],
    *,
    ladder: bool = False,
    overrides: Sequence[str] = (),
) -> Comparison:
    """Simulate the baseline (the file with ``overrides``) and every variant, each alone against
    the baseline or, with ``ladder``, each on top of the previous ones."""
    parsed = [parse_variant(v) for v in variants]  # unknown names fail before any simulation
    base_ov = tuple(overrides)
    base = load_scenario(scenario_path, base_ov)
    rows = [make_row(base, "baseline", "the scenario file" + (" with --set" if base_ov else ""),
                     cumulative=base_ov)]  # fmt: skip
    current, applied = base, base_ov
    for v in parsed:
        ref, ref_ov = (current, applied) if ladder else (base, base_ov)
        ov, note = v.overrides(ref)
        cumulative = ref_ov + ov
        try:
            sc = load_scenario(scenario_path, cumulative)
        except ConfigError as exc:
            raise ConfigError(
                None, f"variant {v.name!r}", f"gives an invalid scenario ({', '.join(ov)}): {exc}"
            ) from None
        rows.append(make_row(sc, v.name, v.description, note, ov, cumulative))
        if ladder:
            current, applied = sc, cumulative
    return Comparison(
        scenario=base.name,
        source=str(scenario_path),
        model=base.model.name,
        hardware=base.hardware.display_name,
        ladder=ladder,
        base_overrides=base_ov,
        rows=tuple(rows),
    )


# ---------------------------------------------------------------------------------------------
# Text: table and CSV

_SHORT = {
    "parameters": "params",
    "master_weights": "master",
    "gradients": "grads",
    "optimizer_states": "optim",
    "activations": "activ",
}


def biggest_change(before: Row, after: Row, at_peak: bool = True) -> tuple[str, int]:
    """(category, bytes) of the largest decrease from ``before`` to ``after`` (negative bytes);
    the largest increase when nothing decreases."""
    a = dict(before.at_peak_bytes if at_peak else before.memory_bytes)
    b = dict(after.at_peak_bytes if at_peak else after.memory_bytes)
    deltas = [(c, b[c] - a[c]) for c in MEMORY_CATEGORIES]
    cat, d = min(deltas, key=lambda kv: kv[1])
    if d >= 0:
        cat, d = max(deltas, key=lambda kv: kv[1])
    return cat, d


def table(comp: Comparison) -> str:
    """The terminal view: one line per variant, GiB per category, peak, time, throughput."""
    rows = comp.rows
    r0 = rows[0]
    cap = r0.capacity_bytes / GIB
    any_host = any(r.host_memory_bytes for r in rows)
    name_w = max(12, *(len(r.name) + 2 for r in rows))
    name_w = min(name_w, 28)
    mode = ("ladder: each variant on top of the previous ones" if comp.ladder
            else "each variant alone against the baseline")  # fmt: skip
    lines = [
        f"{comp.scenario}: {comp.model} on {comp.hardware} ({cap:.2f} GiB per GPU); {mode}",
        "memory per GPU in GiB (2^30 bytes), as `simtrain memory` reports it; peak on the fullest "
        "GPU",
        "",
    ]
    head = f"{'variant':<{name_w}}{'gpus':>5}"
    head += "".join(f"{_SHORT[c]:>8}" for c in _SHORT) + f"{'other':>7}"
    head += f"{'host':>7}" if any_host else ""
    head += f"{'peak':>8}{'Δpeak':>8} {'fits':<5}{'step s':>9}{'Δstep':>8}{'tokens/s':>10}"
    head += f"{'MFU %':>7}{'trainable':>15}"
    lines += [head, "-" * len(head)]
    for i, r in enumerate(rows):
        ref = comp.reference(i) if i else r
        mb = dict(r.memory_bytes)
        other = mb["cuda_context"] + mb["buffers"]
        line = f"{r.name[: name_w - 1]:<{name_w}}{r.gpus:>5}"
        line += "".join(f"{mb[c] / GIB:>8.2f}" for c in _SHORT) + f"{other / GIB:>7.2f}"
        line += f"{r.host_memory_bytes / GIB:>7.2f}" if any_host else ""
        dpeak = (r.peak_memory_bytes - ref.peak_memory_bytes) / GIB
        dstep = (r.step_time_s / ref.step_time_s - 1) * 100 if ref.step_time_s else 0.0
        line += f"{r.peak_memory_bytes / GIB:>8.2f}"
        line += f"{dpeak:>+8.2f} " if i else f"{'':>8} "
        line += f"{'yes' if r.fits else 'NO':<5}{r.step_time_s:>9.3f}"
        line += f"{dstep:>+7.0f}%" if i else f"{'':>8}"
        line += f"{r.tokens_per_s:>10,.0f}{100 * r.mfu:>7.1f}{r.trainable_params:>15,}"
        lines.append(line)
    lines.append("")
    lines.append("other = CUDA context + buffers (loss working memory, casts, communication); "
                 "host = CPU memory per GPU (offload)")  # fmt: skip
    against = "the previous row" if comp.ladder else "the baseline"
    lines.append(f"Δpeak (GiB) and Δstep (%) are against {against}.")
    below = [r.name for r in rows if r.peak_memory_bytes < sum(v for _, v in r.memory_bytes)]
    if below:
        lines.append(f"peak < sum of the categories ({', '.join(below)}): transient memory "
                     "(gradients with one micro-batch, loss working memory, recompute working "
                     "set, optimizer-step temporaries) is not all held at once; see `simtrain "
                     "memory --explain`")  # fmt: skip
    lines.append("")
    lines.append("variants:")
    for r in rows[1:]:
        lines.append(f"  {r.name}: {r.description}")
        lines.append(f"      --set {' --set '.join(r.overrides)}")
        if r.note:
            lines.append(f"      note: {r.note}")
    return "\n".join(lines)


CSV_FIELDS = (
    ["variant", "overrides", "cumulative_overrides", "gpus"]
    + [f"{c}_bytes" for c in MEMORY_CATEGORIES]
    + ["host_memory_bytes", "peak_memory_bytes", "capacity_bytes", "fits", "step_time_s",
       "tokens_per_s", "samples_per_s", "mfu", "params", "trainable_params", "note"]
)  # fmt: skip


def to_csv(comp: Comparison) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for r in comp.rows:
        mb = dict(r.memory_bytes)
        w.writerow(
            [r.name, ";".join(r.overrides), ";".join(r.cumulative_overrides), r.gpus]
            + [mb[c] for c in MEMORY_CATEGORIES]
            + [r.host_memory_bytes, r.peak_memory_bytes, r.capacity_bytes, r.fits,
               repr(r.step_time_s), repr(r.tokens_per_s), repr(r.samples_per_s), repr(r.mfu),
               r.params, r.trainable_params, r.note]
        )  # fmt: skip
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Pictures


def _label(comp: Comparison, i: int) -> str:
    r = comp.rows[i]
    if i == 0:
        s = dict(r.setup)
        text = f"baseline\n{s['precision']}, b={s['micro_batch']}"
    else:
        text = ("+ " if comp.ladder else "") + r.name
    if r.gpus != comp.rows[0].gpus:
        text += f"\n({r.gpus} GPUs)"
    return text


def _pretty(cat: str) -> str:
    return cat.replace("_", " ")


def ladder_plot(comp: Comparison, path: str | Path) -> Path:
    """Waterfall of the peak memory per GPU (GiB): one stacked bar per rung (categories held at
    the moment of the peak), the memory each step removes as a hatched ghost, the step's change
    and the category it shrinks most written above, and the GPU's capacity as a red line."""
    rows = comp.rows
    n = len(rows)
    cap = rows[0].capacity_bytes / GIB
    many = n > 8  # narrower bars: smaller text, labels on three lines, slanted names
    fig = Figure(figsize=(min(17.0, max(9.0, 1.25 * n + 3.5)), 6.8), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.62
    top = max(max(r.peak_memory_bytes for r in rows) / GIB, cap)
    for i, r in enumerate(rows):
        base = 0.0
        for cat, b in r.at_peak_bytes:
            if b:
                ax.bar(i, b / GIB, width, bottom=base, color=CATEGORY_COLOURS[cat],
                       edgecolor="white", linewidth=0.5)  # fmt: skip
            base += b / GIB
        peak = r.peak_memory_bytes / GIB
        colour = "#1B7F3B" if r.fits else "#B00020"
        ax.text(i, peak + 0.012 * top, f"{peak:.1f} GiB" + ("" if r.fits else "\ndoes not fit"),
                ha="center", va="bottom", fontsize=10, fontweight="bold", color=colour,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0}, zorder=4)  # fmt: skip
        if i == 0:
            continue
        ref = comp.reference(i)
        prev = ref.peak_memory_bytes / GIB
        if comp.ladder:  # waterfall connector from the previous bar's top
            ax.plot([i - 1 + width / 2, i - width / 2], [prev, prev], color="#555555",
                    linestyle=":", linewidth=1.0)  # fmt: skip
        if prev > peak:  # the memory this step removed, as a ghost bar
            ax.bar(i, prev - peak, width, bottom=peak, facecolor="none", edgecolor="#777777",
                   hatch="///", linewidth=0.8, linestyle="--")  # fmt: skip
        cat, d = biggest_change(ref, r)
        delta = peak - prev
        text = f"{delta:+.1f} GiB" if many else f"peak {delta:+.1f} GiB"
        if d:
            text += f"\n{_pretty(cat)}" + ("\n" if many else " ") + f"{d / GIB:+.1f}"
        lift = (0.075 if r.fits else 0.12) + (0.1 if many and i % 2 == 0 else 0.0)
        ax.text(i, max(prev, peak) + lift * top, text.replace("-", "−"),
                ha="center", va="bottom", fontsize=7.5 if many else 8.5, color="#333333",
                linespacing=1.15)  # fmt: skip
    ax.axhline(cap, color="#B00020", linestyle="--", linewidth=1.4)
    ax.set_xticks(range(n), [_label(comp, i) for i in range(n)], fontsize=8.5 if many else 9)
    if many:
        for tick in ax.get_xticklabels():
            tick.set_rotation(30)
            tick.set_ha("right")
            tick.set_rotation_mode("anchor")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, top * (1.42 if many else 1.32))
    ax.set_ylabel("peak memory per GPU (GiB)", fontsize=11)
    ax.grid(axis="y", color="#E8E8E8", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    how = ("each technique added on top of the previous ones" if comp.ladder
           else "each technique alone, against the baseline")  # fmt: skip
    ax.set_title(f"Peak GPU memory of {comp.model} on {comp.hardware}: {how}", fontsize=12,
                 loc="left")  # fmt: skip
    present = [c for c in MEMORY_CATEGORIES if any(dict(r.at_peak_bytes)[c] for r in rows)]
    legend = {"buffers": "buffers (loss, casts)"}
    handles = [Patch(facecolor=CATEGORY_COLOURS[c], label=legend.get(c, _pretty(c)))
               for c in present[::-1]]  # fmt: skip
    handles.append(
        Patch(
            facecolor="none",
            edgecolor="#777777",
            hatch="///",
            label="removed" if comp.ladder else "removed vs baseline",
        )
    )
    handles.append(
        Line2D([], [], color="#B00020", linestyle="--", label=f"GPU memory {cap:.1f} GiB")
    )
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9,
              frameon=False, title="memory at the peak", title_fontsize=9)  # fmt: skip
    against = "the previous bar" if comp.ladder else "the baseline"
    fig.text(0.01, 0.01, "Bars: what one GPU holds at the moment of its peak, by category. Green "
             "number: fits on the GPU; red: does not fit.\nAbove each bar: change of the peak "
             f"against {against} and the category that changes most (GiB).",
             fontsize=8, color="#555555", va="bottom")  # fmt: skip
    fig.subplots_adjust(left=0.07, right=0.82, top=0.92, bottom=0.17)
    return save_png(fig, path)


def _place_labels(
    ax: Any, points: list[tuple[float, float]], texts: list[str], fontsize: float = 9
) -> None:
    """Label each point to its right. Going from the lowest point up, a label that would overlap
    one already placed (or another point's marker) moves up just above it, so labels keep the
    points' vertical order; a moved label gets a thin leader line to its point."""
    tr = ax.transData
    h = fontsize * 1.5 * DPI / 72
    pix = [tuple(tr.transform(p)) for p in points]
    markers = [(px - 7, py - 7, px + 7, py + 7) for px, py in pix]
    placed: list[tuple[float, float, float, float]] = []
    for i in sorted(range(len(points)), key=lambda k: (pix[k][1], pix[k][0])):
        px, py = pix[i]
        w = TextPath((0, 0), texts[i], size=fontsize).get_extents().width * DPI / 72 + 2
        others = placed + [m for j, m in enumerate(markers) if j != i]

        def free(x: float, y: float, w: float = w, others: list = others) -> bool:
            return not any(x < b[2] and b[0] < x + w and y < b[3] and b[1] < y + h for b in others)

        x0, y0 = px + 9, py - h / 2
        if not free(x0, y0) and free(px - 9 - w, y0):
            x0 = px - 9 - w  # the left side is free
        for _ in range(4 * len(points) + 4):
            hits = [
                b for b in others if x0 < b[2] and b[0] < x0 + w and y0 < b[3] and b[1] < y0 + h
            ]
            if not hits:
                break
            y0 = max(b[3] for b in hits) + 1
        placed.append((x0, y0, x0 + w, y0 + h))
        dy = y0 + h / 2 - py
        ax.annotate(
            texts[i], points[i], xytext=(x0 - px, dy), textcoords="offset pixels",
            fontsize=fontsize, va="center", ha="left",
            arrowprops={"arrowstyle": "-", "color": "#999999", "lw": 0.6,
                        "shrinkA": 0, "shrinkB": 5} if abs(dy) > 1 else None,
        )  # fmt: skip


def tradeoff_plot(comp: Comparison, path: str | Path) -> Path:
    """Peak memory per GPU (GiB) against step time (s): one labelled point per variant, the
    ladder's path as arrows, the GPU's capacity as a red line. Lower is smaller, left is faster."""
    rows = comp.rows
    cap = rows[0].capacity_bytes / GIB
    fig = Figure(figsize=(10.0, 6.8), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    fig.subplots_adjust(left=0.09, right=0.97, top=0.92, bottom=0.12)
    xs = [r.step_time_s for r in rows]
    ys = [r.peak_memory_bytes / GIB for r in rows]
    lo, hi = min(xs), max(xs)
    log = lo > 0 and hi / lo > 6
    if log:
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.4, hi * 3.0)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(
            FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else "")
        )
    else:
        ax.set_xlim(0, hi * 1.35 if hi else 1)
    ax.set_ylim(0, max(max(ys), cap) * 1.12)
    if comp.ladder:
        for i in range(1, len(rows)):
            ax.annotate("", (xs[i], ys[i]), (xs[i - 1], ys[i - 1]),
                        arrowprops={"arrowstyle": "->", "color": "#999999", "lw": 1.0,
                                    "shrinkA": 5, "shrinkB": 5})  # fmt: skip
    for i, r in enumerate(rows):
        colour = "#1B7F3B" if r.fits else "#B00020"
        ax.scatter([xs[i]], [ys[i]], s=60 if i else 90, color=colour, zorder=3,
                   marker="o" if i else "s", edgecolor="black", linewidth=0.6)  # fmt: skip
    labels = [_label(comp, i).replace("\n", " ") for i in range(len(rows))]
    _place_labels(ax, list(zip(xs, ys, strict=True)), labels)
    ax.axhline(cap, color="#B00020", linestyle="--", linewidth=1.4)
    ax.text(0.01, cap, f"GPU memory {cap:.1f} GiB", transform=ax.get_yaxis_transform(),
            ha="left", va="bottom", fontsize=9, color="#B00020")  # fmt: skip
    ax.set_xlabel("step time (s)" + (", log scale" if log else "") + "  — left is faster",
                  fontsize=11)  # fmt: skip
    ax.set_ylabel("peak memory per GPU (GiB)  — lower is smaller", fontsize=11)
    ax.grid(color="#E8E8E8", linewidth=0.6)
    ax.grid(which="minor", axis="x", color="#F2F2F2", linewidth=0.5)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    how = "technique by technique" if comp.ladder else "each technique alone"
    ax.set_title(f"Memory vs speed of one training step: {comp.model} on {comp.hardware}, {how}",
                 fontsize=12, loc="left")  # fmt: skip
    fig.text(0.01, 0.01, "square: baseline; green: fits on the GPU, red: does not fit"
             + ("; arrows: the ladder's order" if comp.ladder else "")
             + ". Step time of one optimizer step (simulated).", fontsize=8, color="#555555")  # fmt: skip
    return save_png(fig, path)


# ---------------------------------------------------------------------------------------------
# The command


def write_outputs(comp: Comparison, out_dir: str | Path) -> list[Path]:
    """compare.csv, compare.json, ladder.png and tradeoff.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.csv").write_text(to_csv(comp))
    (out / "compare.json").write_text(dumps(comp.to_json()))
    return [
        out / "compare.csv",
        out / "compare.json",
        ladder_plot(comp, out / "ladder.png"),
        tradeoff_plot(comp, out / "tradeoff.png"),
    ]


def compare_command(
    scenario: str,
    variants: str,
    ladder: bool,
    out_dir: str | None,
    as_json: bool,
    overrides: tuple[str, ...],
) -> str:
    """What ``simtrain compare`` prints; writes compare.csv, compare.json, ladder.png and
    tradeoff.png into ``out_dir`` (default ``plots/<scenario name>/compare``)."""
    specs = split_variants(variants or "")
    if not specs:
        raise ConfigError(None, "--variants", "give at least one variant", variants,
                          ", ".join(BUILTIN_VARIANTS) + f", or {ADHOC_HELP}")  # fmt: skip
    comp = compare(scenario, specs, ladder=ladder, overrides=overrides)
    folder = Path(out_dir) if out_dir else Path("plots") / comp.scenario / "compare"
    paths = write_outputs(comp, folder)
    if as_json:
        return dumps(comp.to_json())
    return table(comp) + "\n\nwrote " + ", ".join(str(p) for p in paths) + "\n"
