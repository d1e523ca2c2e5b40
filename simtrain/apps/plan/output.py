"""What a search writes: ``plan.csv``, ``pareto.png``, ``best.yaml`` and the terminal table."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path
from typing import Any

from simtrain.apps.plan.layouts import Layout, gpu_counts, scenario_data
from simtrain.apps.plan.rank import pareto_front
from simtrain.apps.plan.result import PlanResult, Row
from simtrain.costs.memory import near_capacity
from simtrain.report.mpl import plain_text
from simtrain.report.tables import (
    NEAR_CAPACITY_NOTE,
    estimate_note,
    matmul_source_of,
    source_mix_note,
)
from simtrain.spec.hardware import load_hardware
from simtrain.units import GIB

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
        checked = any(r.status == "no_fit" for r in result.rows)
        ax.text(
            0.5,
            0.5,
            (
                "no layout fits in memory"
                + (" with the headroom" if result.plan.constraints.memory_headroom else "")
            )
            if checked
            else "no layout passes the layout checks",
            transform=ax.transAxes,
            ha="center",
        )
    ax.set_xlabel("expected days to train (incl. checkpoints and failures)")
    ax.set_ylabel("cost ($)")
    ax.set_title(f"{result.plan.name}: days vs cost")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    plain_text(fig)  # the plan's name is never mathtext (report.mpl)
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
        f"{lay.hardware}, tp {lay.tp} x pp {lay.pp} x dp {lay.dp}{_cp(lay)}\n"
        f"# simulated step {r.step_time_s:.3f} s, {r.tokens_per_s:,.0f} tokens/s, MFU "
        f"{100 * r.mfu:.1f} %, {r.days:,.2f} days, ${r.cost:,.0f}\n"
        f"# run it: simtrain run {path.name}\n"
    )
    if not r.meets_constraints:
        head += f"# no simulated layout meets the constraints; this is the nearest ({r.reason})\n"
    path.write_text(head + yaml.safe_dump(data, sort_keys=False, default_flow_style=None))
    return True


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


def _no_layout_reason(p: Any) -> str:
    """Why a plan had no layout to evaluate: the GPU counts it tries (``layouts.gpu_counts``:
    whole nodes, or within one node) are none, or none of them is a multiple of tp x pp (x cp)
    for the fixed choices."""
    tried = {hw.name: gpu_counts(p, hw.gpus_per_node) for hw in p.hardware}
    span = (f"gpus {p.gpus_min}..{p.gpus_max}" if p.gpu_counts is None
            else f"gpus {list(p.gpu_counts)}")  # fmt: skip
    if not any(tried.values()):
        nodes = sorted({hw.gpus_per_node for hw in p.hardware})
        return (
            f"no GPU count in {span} fills whole nodes of {' or '.join(map(str, nodes))} "
            "GPUs or fits in one node (the planner places a job on whole nodes); widen gpus"
        )
    counts = "; ".join(f"{name}: {', '.join(map(str, c)) or 'none'}" for name, c in tried.items())
    return (
        f"none of the GPU counts tried ({counts}: whole nodes, or within one node) is a "
        "multiple of tp x pp (x cp) for the fixed choices (a fixed tp may also need to "
        "divide the heads); widen gpus or fixed"
    )


def plan_table(result: PlanResult, rows: int = 10) -> str:
    p, c = result.plan, result.plan.constraints
    gb = "/".join(str(b) for b in p.global_batches)
    seq = p.training.get("seq_len", "")
    cons = []
    if c.deadline_days is not None:
        cons.append(f"deadline {c.deadline_days:g} day{'' if c.deadline_days == 1 else 's'}")
    if c.budget is not None:
        cons.append(f"budget ${c.budget:,.0f}")
    if c.max_gpus is not None:
        cons.append(f"at most {c.max_gpus} GPUs")
    if c.memory_headroom is not None:
        cons.append(f"{100 * c.memory_headroom:g} % of each GPU's memory left free")
    model = p.model.get("preset") or p.model.get("hf_config") or "custom model"
    counts = result.counts
    # layouts that fit in memory but not with the headroom (a no_fit row within the GPU's
    # memory: apps.plan.screen.headroom_short) are counted apart
    n = sum(
        1 for r in result.rows if r.status == "no_fit" and r.peak_memory_bytes <= r.capacity_bytes
    )
    by_headroom = f" ({n:,} of them only for the memory headroom)" if n else ""
    lines = [
        f"plan {p.name}: {model}, {p.tokens:.3g} tokens, global batch {gb} x {seq}; "
        f"{len(p.hardware)} hardware option(s); {', '.join(cons) or 'no constraints'}",
        f"{result.evaluated:,} layouts in {result.elapsed_s:.1f} s: "
        f"{counts.get('rejected', 0):,} rejected by layout checks, "
        f"{counts.get('no_fit', 0):,} do not fit{by_headroom}, "
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
        misses = [r for r in result.rows if r.status == "no_fit" and r.capacity_bytes]
        if not result.evaluated and not result.interrupted:
            lines.append(f"no layout to evaluate: {_no_layout_reason(p)}")
            return "\n".join(lines)
        if not misses and counts.get("rejected", 0):
            # nothing reached the memory check: say why the layouts were rejected
            reasons = Counter(r.reason for r in result.rows if r.status == "rejected")
            reason, n = min(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
            lines.append(f"no layout passes the layout checks; the most common reason "
                         f"({n:,} of {counts['rejected']:,}): {reason}")  # fmt: skip
            lines.append("see plan.csv for every layout's reason")
            return "\n".join(lines)
        lines.append("no layout fits" + (" with the memory headroom" if c.memory_headroom else "")
                     + ": see plan.csv for the reasons")  # fmt: skip
        if misses:
            r = min(misses, key=lambda r: r.peak_memory_bytes / r.capacity_bytes)  # first of ties
            lay = r.layout
            lines.append(
                f"closest: {lay.gpus} x {lay.hardware}, tp {lay.tp} x pp {lay.pp} x dp {lay.dp}"
                f"{_cp(lay)}, "
                f"ZeRO {lay.zero_stage}"
                f"{f' hsdp x{lay.zero_replicas}' if lay.zero_replicas > 1 else ''}, "
                f"mb {lay.micro_batch}, recompute {lay.recompute}, "
                f"{lay.schedule}: {r.reason}"
            )
        return "\n".join(lines)
    lines.append("")
    batches = len(p.global_batches)
    width = max([15, *(len(_schedule_text(r.layout, batches)) + 1 for r in shown)])
    hdr = (f"{'#':>3}  {'hardware':<16}{'GPUs':>6}  {'tp x pp x dp':<13}{'ZeRO':>5}{'mb':>4}  "
           f"{'recompute':<10}{'schedule':<{width}}{'step s':>9}{'MFU %':>7}{'headroom GiB':>14}"
           f"{'days':>9}{'cost $':>14}")  # fmt: skip
    lines.append(hdr)
    # GPUs whose efficiency.matmul is an estimate ([est]): their rows marked *, with the caveat
    guessed_hw = {h for h in {r.layout.hardware for r in shown}
                  if load_hardware(h).matmul_is_estimate}  # fmt: skip
    for i, r in enumerate(shown, 1):
        lay = r.layout
        sched = _schedule_text(lay, batches)
        sim = r.status == "simulated"
        step = r.step_time_s if sim else r.est_step_time_s
        mfu = r.mfu if sim else r.est_mfu
        mark = "" if sim else "~"
        lines.append(
            f"{i:>3}  {lay.hardware + ('*' if lay.hardware in guessed_hw else ''):<16}"
            f"{lay.gpus:>6}  "
            f"{f'{lay.tp} x {lay.pp} x {lay.dp}' + (f' ep{lay.ep}' if lay.ep > 1 else ''):<13}"
            f"{lay.zero_stage:>5}{lay.micro_batch:>4}  "
            f"{lay.recompute:<10}{sched:<{width}}{mark + f'{step:.3f}':>9}{100 * mfu:>7.1f}"
            f"{r.headroom_bytes / GIB:>14.2f}{_big(r.final_days, '.2f', 9):>9}"
            f"{_big(r.final_cost, ',.0f', 14):>14}"
        )
    more = len(result.best) - len(shown)
    if more > 0:
        lines.append(f"... {more:,} more simulated proposal(s) in plan.csv")
    if len(shown) >= 2:
        lines.append("")
        lines.append(difference_line(shown[0], shown[1]))
    if any(r.status != "simulated" for r in shown):
        lines.append("~ closed-form estimate (not simulated)")
    near = [i for i, r in enumerate(shown, 1)
            if r.capacity_bytes and near_capacity(r.peak_memory_bytes, r.capacity_bytes)]  # fmt: skip
    if near:
        lines.append(f"! #{', #'.join(map(str, near))}: {NEAR_CAPACITY_NOTE} "
                     "(constraints.memory_headroom)")  # fmt: skip
    if guessed_hw:
        lines.append(f"* {estimate_note(guessed_hw)}")
    mixed = source_mix_note(matmul_source_of(load_hardware(h))
                            for h in sorted({r.layout.hardware for r in shown}))  # fmt: skip
    if mixed:
        lines.append(f"! {mixed}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def _big(x: float, fmt: str, width: int) -> str:
    """``x`` in ``fmt``, or in 3 significant digits where that would not leave a space in a
    column ``width`` wide (a run that failures slow down takes e^(R/M) times its compute: days
    like 7.5e+10 stay one short cell, apart from the column before)."""
    text = format(x, fmt)
    return format(x, ".3g") if len(text) >= width else text


def _cp(lay: Any) -> str:
    """`` x cp N`` for a context-parallel layout, else nothing."""
    return f" x cp {lay.cp}" if lay.cp > 1 else ""


def _schedule_text(lay: Layout, batches: int = 1) -> str:
    """The schedule column: schedule, virtual stages, cp, sequence parallelism (sp), hybrid
    sharding's copies of the ZeRO states (hsdp x R), a searched precision and, where the plan
    searches more than one, the global batch (gb)."""
    out = lay.schedule + (f" v{lay.virtual_stages}" if lay.virtual_stages > 1 else "")
    out += f" cp{lay.cp}" if lay.cp > 1 else ""
    out += f" hsdp x{lay.zero_replicas}" if lay.zero_replicas > 1 else ""
    out += " sp" if lay.sequence_parallel else ""
    out += f" {lay.precision}" if lay.precision else ""
    return out + (f" gb{lay.global_batch}" if batches > 1 else "")
