"""Terminal tables and JSON documents. The only place (with the CLI) that formats for people."""

from __future__ import annotations

import json
from typing import Any

from simtrain.costs.compute import REFERENCE_HEAD_DIM, flash_class_for, head_dim_factor
from simtrain.costs.memory import NEAR_CAPACITY, MemoryReport, near_capacity
from simtrain.sim.timeline import MEMORY_CATEGORIES
from simtrain.spec.runtime import runtime_settings
from simtrain.units import GIB


def gib(n: float) -> str:
    return f"{n / GIB:,.2f}"


def dumps(doc: Any) -> str:
    """Deterministic JSON: sorted keys, fixed separators, floats as Python repr."""
    return json.dumps(doc, sort_keys=True, indent=2) + "\n"


def memory_table(rep: MemoryReport) -> str:
    """Per-stage memory by category in GiB (2**30 bytes) with GB (1e9 bytes) totals."""
    stages = rep.stages
    # Identical stages collapse into one column to keep the table narrow.
    cols: list[tuple[str, Any]] = []
    for s in stages:
        if cols and cols[-1][1].memory_bytes == s.memory_bytes and cols[-1][1].fits == s.fits:
            label, first = cols[-1]
            start = label.split("-")[0]
            cols[-1] = (f"{start}-{s.stage}", first)
        else:
            cols.append((f"stage {s.stage}", s))
    if rep.replica is not None:  # torch.nn.DataParallel: GPU 0 and a replica differ
        cols = [("GPU 0", stages[0]), ("replica", rep.replica)]
    width = max(12, *(len(c[0]) + 2 for c in cols))
    lines = [
        f"{rep.scenario}: {rep.params:,} parameters, {rep.trainable_params:,} trainable",
        "memory per GPU, GiB (2^30 bytes)",
        f"{'category':<18}" + "".join(f"{c[0]:>{width}}" for c in cols),
    ]
    for cat in MEMORY_CATEGORIES:
        if cat == "stashed_weights" and not any(s.category(cat) for _, s in cols):
            continue  # only asynchronous pipelines stash weight versions
        lines.append(f"{cat:<18}" + "".join(f"{gib(s.category(cat)):>{width}}" for _, s in cols))
    lines.append("-" * (18 + width * len(cols)))
    lines.append(
        f"{'peak (GiB)':<18}" + "".join(f"{gib(s.peak_memory_bytes):>{width}}" for _, s in cols)
    )
    lines.append(
        f"{'peak (GB, 1e9)':<18}"
        + "".join(f"{s.peak_memory_bytes / 1e9:>{width},.2f}" for _, s in cols)
    )
    if rep.paged:  # a paged optimizer: what went to host memory, and the peak had it not
        lines.append(
            f"{'paged out (GiB)':<18}" + "".join(f"{gib(s.paged_bytes):>{width}}" for _, s in cols)
        )
        lines.append(
            f"{'peak unpaged (GiB)':<18}"
            + "".join(f"{gib(s.peak_memory_bytes_unpaged):>{width}}" for _, s in cols)
        )
    if any(s.host_memory_bytes for s in stages):
        lines.append(
            f"{'host (GiB)':<18}" + "".join(f"{gib(s.host_memory_bytes):>{width}}" for _, s in cols)
        )
        lines.append(
            f"{'  pinned (GiB)':<18}"
            + "".join(f"{gib(s.pinned_host_memory_bytes):>{width}}" for _, s in cols)
        )
    lines.append(
        f"{'capacity (GiB)':<18}" + "".join(f"{gib(s.capacity_bytes):>{width}}" for _, s in cols)
    )
    lines.append(f"{'GPUs per stage':<18}" + "".join(f"{s.gpus:>{width}}" for _, s in cols))
    over = [(label, st) for label, st in cols if st.peak_memory_bytes_by_category
            and sum(b for _, b in st.memory_bytes) > st.peak_memory_bytes]  # fmt: skip
    if over:  # each row is its category's own largest value: they do not add up to the peak
        label, st = over[0]
        held = ", ".join(f"{c} {gib(b)}" for c, b in st.peak_memory_bytes_by_category if b)
        lines.append(f"(each category above is its own largest over the step, not all held at "
                     f"once; at the peak {label} holds {held})")  # fmt: skip
    lines.append("")
    lines.append(fit_verdict(rep))
    return "\n".join(lines)


#: What a fit near the GPU's memory (costs.memory.near_capacity) is told: ``simtrain memory`` /
#: ``run`` and the planner's table.
NEAR_CAPACITY_NOTE = (f"within {100 * (1 - NEAR_CAPACITY):.0f} % of the GPU's memory, where the "
                      "caching allocator's fragmentation can still run out of it (replayed only "
                      "for a reserved figure under runtime allocator_replay)")  # fmt: skip


def fit_verdict(rep: MemoryReport) -> str:
    """ "fits" with the headroom (and a warning within ``1 - NEAR_CAPACITY`` of the GPU's
    memory), or "does not fit, short by X GiB in category Y"."""
    worst = max(rep.gpus, key=lambda s: s.peak_memory_bytes - s.capacity_bytes)
    if rep.fits:
        head = worst.capacity_bytes - worst.peak_memory_bytes
        near = ""
        if near_capacity(worst.peak_memory_bytes, worst.capacity_bytes):
            near = f"; {NEAR_CAPACITY_NOTE}"
        return (f"fits: peak {gib(rep.peak_memory_bytes)} GiB of {gib(worst.capacity_bytes)} GiB "
                f"(headroom {gib(head)} GiB on {_where(worst)}){near}"
                + paging_note(rep))  # fmt: skip
    short = worst.peak_memory_bytes - worst.capacity_bytes
    cat, val = max(worst.memory_bytes, key=lambda kv: kv[1])
    return (f"does not fit: {_where(worst)} is short by {gib(short)} GiB; largest category "
            f"{cat} ({gib(val)} GiB)")  # fmt: skip


def _where(s: Any) -> str:
    """``stage 3``, or under torch.nn.DataParallel ``GPU 0`` / ``a replica``."""
    return {"gpu0": "GPU 0", "replica": "a replica"}.get(s.role, f"stage {s.stage}")


def probe_phase_note(probe: MemoryReport) -> str:
    """The line ``simtrain memory`` adds for a two-phase LP-FT scenario: the probe phase's peak
    (the table above is the finetune phase's)."""
    verdict = "fits" if probe.fits else "does not fit"
    return (f"LP-FT: the finetune phase's memory above; the probe phase peaks at "
            f"{gib(probe.peak_memory_bytes)} GiB ({verdict})")  # fmt: skip


def paging_note(rep: MemoryReport) -> str:
    """A paged optimizer that evicts states: how many, and the peak without paging."""
    paged = max((s.paged_bytes for s in rep.stages), default=0)
    if not paged:
        return ""
    unpaged = max(s.peak_memory_bytes_unpaged for s in rep.stages)
    return (f"; paged optimizer: {gib(paged)} GiB of optimizer states paged out to host memory at "
            f"the activation peak (without paging: peak {gib(unpaged)} GiB)")  # fmt: skip


def paging_seconds(timeline: Any) -> tuple[float, float]:
    """(page-out, prefetch) seconds of a paged optimizer on the busiest rank (PAGE_OUT and
    PAGE_IN spans on the "paging" stream; 0, 0 without)."""
    out = {"PAGE_OUT": 0, "PAGE_IN": 0}
    for s in timeline.spans:
        if s.kind in out:
            out[s.kind] = max(out[s.kind], s.duration_ns)
    return out["PAGE_OUT"] / 1e9, out["PAGE_IN"] / 1e9


def phases_json(phased: Any) -> dict[str, Any]:
    """summary.json's ``phases``: each LP-FT phase's cost and the total."""
    doc: dict[str, Any] = {c.phase: c.to_json() for c in phased.costs}
    doc["total"] = phased.total.to_json()
    doc["shown"] = phased.results[-1][0]  # the phase of the stages, metrics and plots
    return doc


def run_summary(res: Any, phased: Any = None) -> dict[str, Any]:
    """summary.json: everything in ``simtrain memory --json`` plus the step metrics. With both
    LP-FT phases (``phased``, ``apps.simulate.PhasedResult``): the stages and metrics are the
    finetune phase's, ``phases`` holds each phase's cost and the total, and
    ``peak_memory_bytes`` / ``fits`` are over both phases."""
    mt = res.metrics
    doc = res.memory.to_json()
    by_stage = {s.stage: s for s in mt.stages}
    rows = [(st, by_stage[st["stage"]]) for st in doc["stages"]]
    if "data_parallel_replica" in doc:  # torch.nn.DataParallel: the replica is rank 1
        rows.append((doc["data_parallel_replica"], by_stage[1]))
    for st, s in rows:
        st["bubble_ratio"] = s.bubble_ratio
        st["busy_s"] = s.busy_s
        st["communication_exposed_s"] = s.communication_exposed_s
        st["trace_peak_memory_bytes"] = s.peak_memory_bytes
    sc = res.scenario
    p = sc.parallelism
    doc.update(
        {
            "hardware": sc.hardware.name,
            "matmul_efficiency": matmul_basis(sc.hardware),
            "runtime": runtime_settings(sc.runtime),
            "gpus": p.gpus,
            "layout": {
                "dp": p.dp,
                "tp": p.tp,
                "pp": p.pp,
                "schedule": p.schedule,
                "virtual_stages": p.virtual_stages,
                "zero_stage": p.zero_stage,
                "microbatches": sc.num_microbatches,
                **({"cp": p.cp} if p.cp > 1 else {}),  # context parallelism, when there is any
                # hybrid sharding's copies of the ZeRO states, when more than one
                **({"zero_replicas": p.zero_replicas} if p.zero_replicas > 1 else {}),
            },  # fmt: skip
            "step_time_s": mt.step_time_s,
            "tokens_per_s": mt.tokens_per_s,
            "samples_per_s": mt.samples_per_s,
            "mfu": mt.mfu,
            "tflops_per_gpu": mt.tflops_per_gpu,
            "bubble_ratio": mt.bubble_ratio,
            "window_s": mt.window_s,
            "fill_drain_s": mt.fill_drain_s,
            "time_breakdown_s": dict(mt.time_breakdown_s),
            "model_flops_per_step": mt.model_flops_per_step,
            "hardware_flops_per_step": mt.hardware_flops_per_step,
        }
    )
    if res.memory.paged:
        out_s, in_s = paging_seconds(res.timeline)
        doc["paging_s"] = {"page_out": out_s, "prefetch": in_s}
    if phased is not None:
        doc["phases"] = phases_json(phased)
        doc["peak_memory_bytes"] = phased.total.peak_memory_bytes
        doc["fits"] = phased.total.fits
    return doc


def phases_table(phased: Any) -> str:
    """The LP-FT phases of ``simtrain run``: steps, step time, time, tokens, GPU-hours, peak."""
    lines = [
        "LP-FT (Kumar et al. 2022 §4): linear probe, then full fine-tuning from the probed head; "
        f"the table above, the plots and the trace are the {phased.results[-1][0]} phase's",
        f"{'phase':<9} {'steps':>9} {'step s':>9} {'time h':>10} {'tokens':>16} {'GPU-hours':>11}"
        f" {'trainable':>15} {'peak GiB':>9}  fits",
    ]
    for c in (*phased.costs, phased.total):
        trainable = f"{c.trainable_params:,}" if c.phase != "total" else ""
        lines.append(
            f"{c.phase:<9} {c.steps:>9,} {c.step_time_s:>9.4f} {c.time_s / 3600:>10.3f} "
            f"{c.tokens:>16,} {c.gpu_hours:>11.3f} {trainable:>15} "
            f"{c.peak_memory_bytes / GIB:>9.2f}  {'yes' if c.fits else 'no'}"
        )
    return "\n".join(lines)


def matmul_basis(hw: Any) -> dict[str, Any]:
    """summary.json's ``matmul_efficiency``: the large-GEMM efficiency the step time rests on,
    the source tag of its line in the profile (``[val]`` fitted on training runs, ``[gemm]`` /
    ``[mm]`` a GEMM table or benchmark, ``[meas]`` ``simtrain calibrate``, ``[est]`` an
    estimate, ...; "" where the line has none) and whether it is an estimate, so that a script
    can tell a rough guide from a fitted prediction as ``simtrain run``'s estimate line does."""
    return {"value": hw.efficiency.matmul, "source_tag": hw.matmul_tag,
            "estimate": hw.matmul_is_estimate}  # fmt: skip


def mfu_peak_text(sc: Any) -> str:
    """The dense peak MFU divides by: the compute dtype's ("the bf16 peak 312 TFLOP/s"), or,
    where the GPU has no rate for it, fp32's, said so (``HardwareProfile.compute_peak``)."""
    hw = sc.hardware
    dtype = sc.training.precision_spec.compute_dtype
    peak = f"{hw.compute_peak(dtype) / 1e12:,.4g} TFLOP/s"
    if hw.peak(dtype):
        return f"the {dtype} peak {peak}"
    return (
        f"the fp32 peak {peak} (this GPU has no {dtype} rate: {dtype} runs through its fp32 units)"
    )


def estimate_note(names: Any) -> str:
    """The caveat for GPUs whose efficiency.matmul is an estimate ([est]), named: what
    ``compare`` and ``plan`` print beneath their tables ("" for none)."""
    names = sorted(set(names))
    if not names:
        return ""
    return (f"{', '.join(names)}: efficiency.matmul is an estimate (no GEMM or training run "
            "measured on it), so its times and costs are a rough guide; `simtrain calibrate "
            "--device cuda` on the GPU measures it")  # fmt: skip


def source_mix_note(gpus: Any) -> str:
    """Where GPUs side by side take their large-GEMM efficiency from different kinds of source
    (``gpus``: (name, efficiency.matmul, ``HardwareProfile.matmul_source_kind``): a
    fraction fitted on training runs carries whatever those runs lost beyond the modelled
    costs, a GEMM benchmark's does not), a line naming each and saying that their step-time
    ratio carries that difference too; "" where the kinds agree (or one GPU)."""
    each = dict((name, (value, kind)) for name, value, kind in gpus)
    if len({kind for _, kind in each.values()}) < 2:
        return ""
    named = "; ".join(f"{n} {v:g} from {k}" for n, (v, k) in sorted(each.items()))
    return (
        f"efficiency.matmul comes from different kinds of source ({named}): a fraction fitted "
        "on training runs also carries what those runs lost beyond the modelled costs, so "
        "the step-time ratio between these GPUs is not the hardware's alone (`simtrain "
        "hardware NAME` gives each number's source)"
    )


def matmul_source_of(hw: Any) -> tuple[str, float, str]:
    """(name, efficiency.matmul, kind of source) of a hardware profile, for
    :func:`source_mix_note`."""
    return hw.name, hw.efficiency.matmul, hw.matmul_source_kind


def _idle_parts(mt: Any) -> str:
    """What the compute stream's idle time is made of, as shares of the step (the time
    breakdown's bubble, exposed communication and exposed host time, which sum to the idle
    fraction): ": pipeline bubble 5.3 %, exposed communication 13.4 %"; "" for a step with
    no idle time."""
    bd, step = dict(mt.time_breakdown_s), mt.step_time_s
    if not step or mt.bubble_ratio <= 0:
        return ""
    parts = [("pipeline bubble", bd.get("bubble", 0.0)),
             ("exposed communication", bd.get("communication_exposed", 0.0))]  # fmt: skip
    if bd.get("host_exposed", 0.0) > 0:
        parts.append(("exposed host time", bd["host_exposed"]))
    return ": " + ", ".join(f"{name} {100 * v / step:.1f} %" for name, v in parts)


def gradient_dtype_line(sc: Any) -> str:
    """Megatron-Core's DDP reduces 16-bit gradients in their own dtype by default
    (``DistributedDataParallelConfig.grad_reduce_in_fp32`` False, the runtime profile's
    ``grad_reduce_dtype: grad``), but Megatron-LM's training script forces fp32 for bf16
    (training/arguments.py: "bfloat16 requires gradient accumulation and all-reduce to be done
    in fp32"), 2 B per parameter more: where a scenario runs runtime megatron_core in bf16 with
    the default, a line saying which it simulates and how to get the other; "" elsewhere."""
    rt = sc.runtime
    if (
        rt.name != "megatron_core"
        or rt.grad_reduce_dtype != "grad"
        or sc.training.precision != "bf16"
    ):
        return ""
    return (
        "gradients        bf16, reduced in bf16 (Megatron-Core's DDP default); Megatron-LM's "
        "--bf16 keeps an fp32 main-gradient buffer instead, 2 B/param more: --set "
        "runtime.grad_reduce_dtype=fp32 (the Megatron importer sets it)"
    )


def estimate_line(hw: Any) -> str:
    """Where the GPU's large-GEMM efficiency is an estimate (its profile's matmul line tagged
    [est]: no GEMM or training run measured on it), a line saying how far to trust the step
    time; "" otherwise."""
    if not hw.matmul_is_estimate:
        return ""
    return (
        f"GPU efficiency   efficiency.matmul {hw.efficiency.matmul:g} of {hw.name} is an "
        "estimate (no GEMM or training run measured on this GPU): the step time is a rough "
        "guide; `simtrain calibrate --device cuda` on the GPU measures it"
    )


def attention_line(sc: Any) -> str:
    """How a flash model's attention core is priced (``costs.compute.flash_class_for``)."""
    cls = flash_class_for(sc)
    if isinstance(cls, str):
        return f"attention        {cls}: priced as GEMM FLOPs (full s² count at efficiency.matmul)"
    line = f"attention        {cls.kernel} kernel class of {sc.hardware.name}"
    d = sc.model.head_dim
    fwd, bwd = (head_dim_factor(cls.forward_head_dim_edge, d),
                head_dim_factor(cls.backward_head_dim_edge, d))  # fmt: skip
    if fwd != 1 or bwd != 1:
        line += (f" (head dim {d}: x{fwd:.3f} forward, x{bwd:.3f} backward of its "
                 f"{REFERENCE_HEAD_DIM}-wide rate)")  # fmt: skip
    elif d > REFERENCE_HEAD_DIM and (cls.forward_head_dim_edge or cls.backward_head_dim_edge):
        line += f" (head dim {d} priced as {REFERENCE_HEAD_DIM}: not measured above it)"
    return line


def run_table(res: Any, phased: Any = None) -> str:
    """The terminal view of ``simtrain run`` (with both LP-FT phases: their table last)."""
    mt, sc = res.metrics, res.scenario
    p = sc.parallelism
    lines = [
        f"{sc.name}: {sc.model.name} on {p.gpus} x {sc.hardware.display_name} "
        f"(dp {p.dp} x tp {p.tp} x pp {p.pp}{f' x cp {p.cp}' if p.cp > 1 else ''}"
        f"{f', ep {p.ep}' if p.ep > 1 else ''}"
        f"{f', ZeRO-{p.zero_stage} in {p.zero_replicas} replicas of {p.zero_shards}' if p.zero_replicas > 1 else ''}"
        f", {p.schedule}, {sc.num_microbatches} micro-batches"
        f" of {sc.training.micro_batch}){'; LP-FT finetune phase' if phased is not None else ''}",
        f"step time        {mt.step_time_s * 1e3:,.1f} ms"
        + (
            f" (steady state, no flush; the window played is {mt.window_s * 1e3:,.1f} ms with "
            f"its fill and drain, {mt.fill_drain_s * 1e3:,.1f} ms)"
            if mt.fill_drain_s
            else ""
        ),
        f"throughput       {mt.tokens_per_s:,.0f} tokens/s, {mt.samples_per_s:,.2f} samples/s",
        f"MFU              {100 * mt.mfu:.1f} %   of {mfu_peak_text(sc)} (hardware "
        f"{mt.tflops_per_gpu:.1f} TFLOP/s per GPU"
        f"{'; MoE: active parameters FLOPs' if sc.model.is_moe else ''})",
        f"bubble ratio     {100 * mt.bubble_ratio:.1f} % (average idle fraction of compute"
        f"{_idle_parts(mt)})",
        f"runtime          {sc.runtime.display_name} [{sc.runtime.name}]"
        + (
            f"; the host issues each TP collective at {sc.runtime.collective_issue_us_per_rank:g} us "
            "per rank of its group"
            if sc.runtime.collective_issue_s_per_rank
            else ""
        ),
        *([attention_line(sc)] if sc.model.flash_attention else []),
        *([line] if (line := estimate_line(sc.hardware)) else []),
        *([line] if (line := gradient_dtype_line(sc)) else []),
        "time breakdown per GPU (s): " + ", ".join(f"{k} {v:.4f}" for k, v in mt.time_breakdown_s),
        "",
        f"{'stage':>5} {'busy s':>10} {'bubble %':>9} {'exposed comm s':>15} {'peak GiB':>9}",
    ]
    dp = res.memory.replica is not None  # torch.nn.DataParallel: GPU 0 and a replica
    for s in mt.stages:
        row = ("GPU 0", "rep.")[s.stage] if dp else s.stage
        lines.append(f"{row:>5} {s.busy_s:>10.4f} {100 * s.bubble_ratio:>9.1f} "
                     f"{s.communication_exposed_s:>15.4f} {s.peak_memory_bytes / GIB:>9.2f}")  # fmt: skip
    lines.append("")
    lines.append(fit_verdict(res.memory))
    if res.memory.paged:
        out_s, in_s = paging_seconds(res.timeline)
        lines.append(f"paging (PCIe, own stream): page-out {out_s * 1e3:,.1f} ms during the "
                     f"step, prefetch {in_s * 1e3:,.1f} ms before the optimizer step")  # fmt: skip
    if phased is not None:
        lines += ["", phases_table(phased)]
    return "\n".join(lines)
