"""Terminal tables and JSON documents. The only place (with the CLI) that formats for people."""

from __future__ import annotations

import json
from typing import Any

from simtrain.costs.memory import MemoryReport
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
            cols.append((str(s.stage), s))
    width = max(12, *(len(c[0]) + 8 for c in cols))
    lines = [
        f"{rep.scenario}: {rep.params:,} parameters, {rep.trainable_params:,} trainable",
        "memory per GPU, GiB (2^30 bytes)",
        f"{'category':<18}" + "".join(f"{'stage ' + c[0]:>{width}}" for c in cols),
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
    lines.append("")
    lines.append(fit_verdict(rep))
    return "\n".join(lines)


def fit_verdict(rep: MemoryReport) -> str:
    """ "fits" with the headroom, or "does not fit, short by X GiB in category Y"."""
    worst = max(rep.stages, key=lambda s: s.peak_memory_bytes - s.capacity_bytes)
    if rep.fits:
        head = worst.capacity_bytes - worst.peak_memory_bytes
        return (f"fits: peak {gib(rep.peak_memory_bytes)} GiB of {gib(worst.capacity_bytes)} GiB "
                f"(headroom {gib(head)} GiB on stage {worst.stage})")  # fmt: skip
    short = worst.peak_memory_bytes - worst.capacity_bytes
    cat, val = max(worst.memory_bytes, key=lambda kv: kv[1])
    return (f"does not fit: stage {worst.stage} is short by {gib(short)} GiB; largest category "
            f"{cat} ({gib(val)} GiB)")  # fmt: skip


def run_summary(res: Any) -> dict[str, Any]:
    """summary.json: everything in ``simtrain memory --json`` plus the step metrics."""
    mt = res.metrics
    doc = res.memory.to_json()
    by_stage = {s.stage: s for s in mt.stages}
    for st in doc["stages"]:
        s = by_stage[st["stage"]]
        st["bubble_ratio"] = s.bubble_ratio
        st["busy_s"] = s.busy_s
        st["communication_exposed_s"] = s.communication_exposed_s
        st["trace_peak_memory_bytes"] = s.peak_memory_bytes
    sc = res.scenario
    p = sc.parallelism
    doc.update(
        {
            "hardware": sc.hardware.name,
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
    return doc


def run_table(res: Any) -> str:
    """The terminal view of ``simtrain run``."""
    mt, sc = res.metrics, res.scenario
    p = sc.parallelism
    lines = [
        f"{sc.name}: {sc.model.name} on {p.gpus} x {sc.hardware.display_name} "
        f"(dp {p.dp} x tp {p.tp} x pp {p.pp}{f' x cp {p.cp}' if p.cp > 1 else ''}"
        f"{f', ep {p.ep}' if p.ep > 1 else ''}, {p.schedule}, {sc.num_microbatches} micro-batches"
        f" of {sc.training.micro_batch})",
        f"step time        {mt.step_time_s * 1e3:,.1f} ms"
        + (
            f" (steady state, no flush; the window played is {mt.window_s * 1e3:,.1f} ms with "
            f"its fill and drain, {mt.fill_drain_s * 1e3:,.1f} ms)"
            if mt.fill_drain_s
            else ""
        ),
        f"throughput       {mt.tokens_per_s:,.0f} tokens/s, {mt.samples_per_s:,.2f} samples/s",
        f"MFU              {100 * mt.mfu:.1f} %   (hardware {mt.tflops_per_gpu:.1f} TFLOP/s per GPU"
        f"{'; MoE: active parameters FLOPs' if sc.model.is_moe else ''})",
        f"bubble ratio     {100 * mt.bubble_ratio:.1f} % (average idle fraction of compute)",
        f"runtime          {sc.runtime.display_name} [{sc.runtime.name}]",
        "time breakdown per GPU (s): " + ", ".join(f"{k} {v:.4f}" for k, v in mt.time_breakdown_s),
        "",
        f"{'stage':>5} {'busy s':>10} {'bubble %':>9} {'exposed comm s':>15} {'peak GiB':>9}",
    ]
    for s in mt.stages:
        lines.append(f"{s.stage:>5} {s.busy_s:>10.4f} {100 * s.bubble_ratio:>9.1f} "
                     f"{s.communication_exposed_s:>15.4f} {s.peak_memory_bytes / GIB:>9.2f}")  # fmt: skip
    lines.append("")
    lines.append(fit_verdict(res.memory))
    return "\n".join(lines)
