"""Text views of a comparison: the terminal table and the CSV."""

from __future__ import annotations

import csv
import io

from simtrain.apps.compare.run import VariantComparison, VariantRow
from simtrain.report.tables import estimate_note, source_mix_note
from simtrain.sim.timeline import MEMORY_CATEGORIES
from simtrain.units import GIB

_SHORT = {
    "parameters": "params",
    "stashed_weights": "stashed",
    "master_weights": "master",
    "gradients": "grads",
    "optimizer_states": "optim",
    "activations": "activ",
}


def biggest_change(before: VariantRow, after: VariantRow, at_peak: bool = True) -> tuple[str, int]:
    """(category, bytes) of the largest decrease from ``before`` to ``after`` (negative bytes);
    the largest increase when nothing decreases."""
    a = dict(before.at_peak_bytes if at_peak else before.memory_bytes)
    b = dict(after.at_peak_bytes if at_peak else after.memory_bytes)
    deltas = [(c, b[c] - a[c]) for c in MEMORY_CATEGORIES]
    cat, d = min(deltas, key=lambda kv: kv[1])
    if d >= 0:
        cat, d = max(deltas, key=lambda kv: kv[1])
    return cat, d


def table(comp: VariantComparison) -> str:
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
    head += f"{'MFU %':>7}{'trainable':>19}"
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
        line += f"{r.tokens_per_s:>10,.0f}{100 * r.mfu:>7.1f}{r.trainable_params:>19,}"
        lines.append(line)
    lines.append("")
    lines.append("other = CUDA context + buffers (loss working memory, casts, communication); "
                 "host = CPU memory per GPU (offload)")  # fmt: skip
    against = "the previous row" if comp.ladder else "the baseline"
    lines.append(f"Δpeak (GiB) and Δstep (%) are against {against}.")
    peaks = {r.name: dict(r.setup).get("mfu_peak", "") for r in rows}
    if len(set(peaks.values())) > 1:  # an fp32 row's MFU is against fp32's peak: compare steps
        lines.append("MFU % is against each variant's own peak (compare step s across them): "
                     + "; ".join(f"{k}: {v}" for k, v in peaks.items()))  # fmt: skip
    guessed = sorted({dict(r.setup)["hardware"] for r in rows
                      if dict(r.setup).get("matmul_estimate")})  # fmt: skip
    if guessed:
        lines.append(f"estimated GPU efficiency: {estimate_note(guessed)}")
    mixed = source_mix_note((d["hardware"], d["matmul_efficiency"], d["matmul_source"])
                            for d in (dict(r.setup) for r in rows))  # fmt: skip
    if mixed:
        lines.append(mixed)
    below = [r.name for r in rows if r.peak_memory_bytes < sum(v for _, v in r.memory_bytes)]
    if below:
        lines.append(f"peak < sum of the categories ({', '.join(below)}): transient memory "
                     "(gradients with one micro-batch, loss working memory, recompute working "
                     "set, optimizer-step temporaries) is not all held at once; see `simtrain "
                     "memory --explain`")  # fmt: skip
    for name, why in comp.skipped:
        lines.append(f"not compared: {name}: {why}")
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


def to_csv(comp: VariantComparison) -> str:
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
