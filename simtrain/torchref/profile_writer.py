"""A calibration's record (:class:`Calibration`) and its text: the hardware-profile YAML that ``simtrain calibrate`` writes (every
number with its source tag), the efficiencies it derives, and the table it prints."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from simtrain.costs.attention_shape import HEAD_DIM_GRID, fit_flash_edge, fit_head_dim_edge
from simtrain.costs.compute import flash_time_factor
from simtrain.costs.gemm_shape import EdgeFit, shape_factor
from simtrain.errors import ConfigError
from simtrain.spec.hardware import FLASH_DIRECTIONS
from simtrain.torchref.microbench import (
    FLASH_HEAD_DIM,
    FLASH_NARROW_HEAD_DIM,
    flash_causal_flops,
    gemm_counted_flops,
    gemm_mix_edge,
)
from simtrain.units import GIB, MIB


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` measured (SI units)."""

    name: str
    device: str
    device_name: str
    torch_version: str
    threads: int
    when: str  # ISO 8601, UTC
    matmul_flops_per_s: dict[str, float]  # dtype -> rate at the largest size measured
    matmul_by_size: dict[str, dict[int, float]]  # dtype -> size -> rate
    memory_bandwidth_bytes_per_s: float
    bandwidth_by_kernel: dict[str, float]  # copy / add -> bytes/s
    memory_bytes: int
    host_memory_bytes: int
    cuda_context_bytes: int = 0
    pcie_bandwidth_bytes_per_s: float = 0.0  # host -> device (CUDA)
    adam_params_per_s: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    elementwise_bytes_per_s: float = 0.0  # cost-model bytes / s of the element-wise mix; 0: none
    elementwise_spread: tuple[float, float] = (0.0, 0.0)  # (low, high) over the timed samples
    gemm_flops_per_s: float = 0.0  # cost-model FLOP/s of the GPT's fp32 GEMM mix; 0: none
    gemm_spread: tuple[float, float] = (0.0, 0.0)  # (low, high) over the timed samples
    # (micro_batch, seq_len, hidden, heads, vocab, layers) of the element-wise and GEMM mixes
    elementwise_shape: tuple[int, ...] = ()
    # the GEMM shape term fitted on the fp32 shape sweep, and the GEMMs it was fitted on; None:
    # no sweep (L = 0)
    gemm_edge: tuple[EdgeFit, int] | None = None
    # kernel -> (heads, seq_len) -> (forward, backward) seconds of causal bf16 FlashAttention over
    # one sequence of head dim 128 (microbench.measure_flash_attention; CUDA only); {}: none
    flash_times: dict[str, dict[tuple[int, int], tuple[float, float]]] = field(default_factory=dict)
    # the same at head dim microbench.FLASH_NARROW_HEAD_DIM over CUDA_FLASH_NARROW_SHAPES: each
    # kernel's head-dim edge D; {}: none
    flash_narrow_times: dict[str, dict[tuple[int, int], tuple[float, float]]] = field(
        default_factory=dict)  # fmt: skip

    @property
    def gemm_edge_elements(self) -> float:
        """L of the profile (0 without a sweep)."""
        return self.gemm_edge[0].edge if self.gemm_edge else 0.0


def profile_text(cal: Calibration) -> str:
    """The hardware-profile YAML of a calibration (see :func:`write_profile`)."""
    lines = _source_lines(cal) + _device_lines(cal) + _efficiency_lines(cal) + _attention_lines(cal)
    return "\n".join(lines) + "\n"


def _source_lines(cal: Calibration) -> list[str]:
    """The profile's header: where it comes from, how each source tag was measured, the
    per-size and per-kernel rates, and the calibration's notes."""
    sizes = "; ".join(
        f"{dt} " + ", ".join(f"{n}: {r / 1e12:.3g}" for n, r in sorted(rates.items()))
        for dt, rates in cal.matmul_by_size.items()
    )
    kernels = ", ".join(f"{k} {v / 1e9:.3g} GB/s" for k, v in cal.bandwidth_by_kernel.items())
    lines = [
        f"# {cal.device_name} ({cal.device}): hardware profile measured by `simtrain calibrate`",
        f"# on {cal.when} with torch {cal.torch_version}, {cal.threads} intra-op threads.",
        "# Sources:",
        "#  [meas]  simtrain calibrate on this device: median of timed runs after a warm-up;",
        "#          matmul = square n x n product (2n^3 FLOP) at the largest n measured;",
        "#          bandwidth = best of copy",
        "#          (2 x bytes) and add (3 x bytes) over 256 MiB fp32 tensors",
        f"#          matmul TFLOP/s by size: {sizes}",
        f"#          bandwidth by kernel: {kernels}",
        "#          GEMM mix = forward + backward of a GPT's linears, attention bmm and tied",
        "#          head (calibrate.measure_gemm_mix), FLOPs as simtrain.costs.compute counts them: "
        + (
            f"{cal.gemm_flops_per_s / 1e12:.3g} TFLOP/s, spread {cal.gemm_spread[0] / 1e12:.3g}"
            f"-{cal.gemm_spread[1] / 1e12:.3g}"
            if cal.gemm_flops_per_s
            else "(not measured)"
        ),
        "#          element-wise mix = forward + backward of the GPT's norms, residual adds,",
        "#          GeLU, masked softmax and loss (calibrate.measure_elementwise), at",
        f"#          (micro_batch, seq, hidden, heads, vocab, layers) = {cal.elementwise_shape};",
        "#          bytes as simtrain.costs.compute counts them: "
        + (
            f"{cal.elementwise_bytes_per_s / 1e9:.3g} GB/s, spread "
            f"{cal.elementwise_spread[0] / 1e9:.3g}-{cal.elementwise_spread[1] / 1e9:.3g} GB/s"
            if cal.elementwise_bytes_per_s
            else "(not measured)"
        ),
        "#  [sys]   operating system / torch device properties",
        "#  [na]    not applicable to a single device (no links, no NIC): placeholder so the",
        "#          profile loads; do not simulate multi-device layouts with it",
    ]
    for note in cal.notes:
        lines.append(f"#          note: {note}")
    return lines


def _device_lines(cal: Calibration) -> list[str]:
    """The profile's device keys: name, memory, peaks, bandwidths, placeholders for the links
    and network a single device does not have, and the AdamW rate."""
    tf = {dt: large_gemm_rate(cal, dt) / 1e12 for dt in ("tf32", "bf16", "fp16")}
    tf["fp32"] = fp32_peak(cal) / 1e12
    cpu = cal.device.startswith("cpu")
    bw = cal.memory_bandwidth_bytes_per_s / 1e9
    pcie_bw = (cal.pcie_bandwidth_bytes_per_s / 1e9) if not cpu else bw
    pcie_tag = "[meas] host -> device copy, pinned memory" if not cpu else "[na] no host link"
    lines = [
        # JSON strings are YAML strings: a name or device with ': ', '#' or quotes stays valid
        # YAML (a fuzz campaign: --out "a: [b #c.yaml" wrote a profile its loader refused)
        f"name: {json.dumps(cal.name)}",
        f"display_name: {json.dumps(cal.device_name + ' (calibrated)')}",
        f"memory_gib: {cal.memory_bytes / GIB:.6g}          # [sys] "
        + ("physical RAM" if cpu else "torch.cuda.get_device_properties total_memory"),
        "peak_tflops:                      # [meas] matmul rate at the largest n (0: not run)"
        + (f" x (1 + 3L/n), L = {cal.gemm_edge_elements:g}" if cal.gemm_edge_elements else ""),
        f"  fp32: {tf['fp32']:.6g}          # [meas]"
        + (
            " GEMM mix (above the square product)"
            if tf["fp32"] * 1e12 > large_gemm_rate(cal, "fp32")
            else ""
        ),
        f"  tf32: {tf['tf32']:.6g}          # [meas]" + (" (CPU: no TF32)" if cpu else ""),
        f"  fp16: {tf['fp16']:.6g}          # [meas]",
        f"  bf16: {tf['bf16']:.6g}          # [meas]",
        "  fp8: 0                          # [na] not measured",
        "  int8: 0                         # [na] not measured",
        f"hbm_bandwidth_gb_per_s: {bw:.6g}    # [meas] best of copy and add"
        + (" (DRAM; the key keeps its name)" if cpu else ""),
        "gpus_per_node: 1                  # [na] one measured device",
        "intra_node:",
        "  kind: pcie                      # [na] single device",
        f"  bandwidth_gb_per_s: {pcie_bw:.6g}    # [na] single device: placeholder",
        "  latency_us: 10                  # [na] single device: placeholder",
        f"pcie_bandwidth_gb_per_s: {pcie_bw:.6g}    # {pcie_tag}",
        "nic_bandwidth_gbit_per_s: 1       # [na] no network measured",
        "inter_node_latency_us: 10         # [na] no network measured",
        "oversubscription: 1.0             # [na] no network measured",
        f"cuda_context_mib: {cal.cuda_context_bytes / MIB:.6g}          # "
        + ("[na] CPU: no CUDA context" if cpu else "[meas] mem_get_info used - reserved"),
        f"host_memory_gib: {cal.host_memory_bytes / GIB:.6g}      # [sys] physical RAM",
    ]
    if cal.adam_params_per_s:
        lines.append(f"cpu_adam_params_per_s: {cal.adam_params_per_s:.6g}   # [meas] "
                     "torch.optim.AdamW step, GPT-block fp32 parameters, foreach=False")  # fmt: skip
    return lines


def _efficiency_lines(cal: Calibration) -> list[str]:
    """The profile's ``efficiency`` block (see :func:`efficiencies`)."""
    mm_eff, mem_eff, opt_eff = efficiencies(cal)
    lines = [
        "efficiency:                       # measured: a small GPT's kernels / the peaks above",
        f"  matmul: {mm_eff:.4g}                # [meas] GEMM mix: "
        + (f"{cal.gemm_flops_per_s / 1e12:.3g} TFLOP/s / fp32 peak (applied to every dtype)"
           if cal.gemm_flops_per_s else "not measured: peak_tflops is the achieved rate"),
        f"  memory_bound: {mem_eff:.4g}          # [meas] element-wise mix: "
        + (f"{cal.elementwise_bytes_per_s / 1e9:.3g} GB/s of cost-model bytes / bandwidth"
           if cal.elementwise_bytes_per_s else "not measured: the bandwidth itself"),
    ]  # fmt: skip
    if opt_eff is not None:
        lines.append(f"  optimizer: {opt_eff:.4g}             # [meas] AdamW step x "
                     f"{adam_fp32_bytes_per_param():g} B/param / bandwidth")  # fmt: skip
    if cal.gemm_edge:
        fit, n = cal.gemm_edge
        lines.append(f"  gemm_edge_elements: {fit.edge:g}        # [meas] GEMM shape "
                     f"term fitted on {n} fp32 GEMMs: {_fit_quality(fit, 'GEMM')}")  # fmt: skip
    lines.append("  collective: 1.0                 # [na] no collective measured")
    return lines


def _attention_lines(cal: Calibration) -> list[str]:
    """The profile's ``attention_kernels`` block: one class per SDPA backend swept
    (:func:`flash_fits`); none without a sweep."""
    lines: list[str] = []
    fits = flash_fits(cal)
    if fits:
        lines.append("attention_kernels:                # [meas] causal bf16 SDPA per backend "
                     f"(b 1, d {FLASH_HEAD_DIM}; costs.attention_shape)")  # fmt: skip
    dims = flash_head_dim_fits(cal, fits)
    for kernel, pair in fits.items():
        n = len(_resolved(cal.flash_times[kernel]))
        lines.append(f"  {kernel}:")
        for i, (direction, fit) in enumerate(zip(FLASH_DIRECTIONS, pair, strict=True)):
            lines.append(f"    {direction}: {fit.efficiency:.4g}           # [meas] {direction} "
                         f"over {n} shapes: {_fit_quality(fit, 'kernel')}")  # fmt: skip
            lines.append(f"    {direction}_rows_edge: {fit.edge:g}    # [meas] R, query rows "
                         "b·H·s")  # fmt: skip
            if kernel in dims:
                d = dims[kernel][i]
                end = (", at the grid's end: the sweep is not this term's shape, check it"
                       if d.edge >= HEAD_DIM_GRID[-1] else "")  # fmt: skip
                lines.append(f"    {direction}_head_dim_edge: {d.edge:g}    # [meas] D, over "
                             f"{len(_resolved(cal.flash_narrow_times[kernel]))} shapes of head dim "
                             f"{FLASH_NARROW_HEAD_DIM}: {_fit_quality(d, 'kernel')} (one "
                             f"efficiency for all: D = 0){end}")  # fmt: skip
    return lines


def _fit_quality(fit: EdgeFit, kernel: str) -> str:
    """How well an edge term fits its sweep, against one efficiency for every shape."""
    return (f"MAPE of {kernel} time {fit.mape_pct:.2f} %, one efficiency for all "
            f"{fit.constant_mape_pct:.2f} %")  # fmt: skip


def _resolved(sweep: dict[tuple[int, int], tuple[float, float]]
              ) -> dict[tuple[int, int], tuple[float, float]]:  # fmt: skip
    """The calls of a flash sweep whose forward and backward times are both positive (a call the
    timer did not resolve carries no rate; the fits skip it)."""
    return {shape: times for shape, times in sweep.items() if min(times) > 0}


def flash_fits(cal: Calibration) -> dict[str, tuple[EdgeFit, EdgeFit]]:
    """Each kernel's FlashAttention class (forward, backward) fitted on the calibration's flash
    sweep of that kernel, each call's causal FLOPs (``microbench.flash_causal_flops``) over its
    time and the bf16 peak the profile writes (:func:`large_gemm_rate`), R on query rows
    (``costs.attention_shape.fit_flash_edge``); none for a kernel with fewer than two shapes
    or without a bf16 rate."""
    peak = large_gemm_rate(cal, "bf16")
    out: dict[str, tuple[EdgeFit, EdgeFit]] = {}
    if peak <= 0:
        return out
    for kernel, timed in sorted(cal.flash_times.items()):
        sweep = _resolved(timed)
        if len(sweep) < 2:
            continue
        tables: tuple[list[tuple[float, float]], list[tuple[float, float]]] = ([], [])
        for (heads, s), times in sorted(sweep.items()):
            for table, flops, t in zip(tables, flash_causal_flops(heads, s), times, strict=True):
                table.append((float(heads * s), flops / (t * peak)))
        out[kernel] = (fit_flash_edge(tuple(tables[0])), fit_flash_edge(tuple(tables[1])))
    return out


def flash_head_dim_fits(cal: Calibration, classes: dict[str, tuple[EdgeFit, EdgeFit]]
                        ) -> dict[str, tuple[EdgeFit, EdgeFit]]:  # fmt: skip
    """Each kernel's head-dim edge D (forward, backward) fitted on the calibration's narrow-head
    sweep against that kernel's class (``classes``, :func:`flash_fits` of ``cal``: its e∞ and R
    held, each call's ``costs.compute.flash_time_factor`` of R over its rows b·H·s;
    ``costs.attention_shape.fit_head_dim_edge``); none for a kernel
    with fewer than two narrow shapes or no class."""
    peak = large_gemm_rate(cal, "bf16")
    out: dict[str, tuple[EdgeFit, EdgeFit]] = {}
    for kernel, timed in sorted(cal.flash_narrow_times.items()):
        sweep = _resolved(timed)
        if kernel not in classes or len(sweep) < 2:
            continue
        fits = []
        for i, cls in enumerate(classes[kernel]):
            rows = tuple(
                (flash_time_factor(cls.edge, heads * s, 0.0, s),
                 flash_causal_flops(heads, s, FLASH_NARROW_HEAD_DIM)[i] / (times[i] * peak))
                for (heads, s), times in sorted(sweep.items()))  # fmt: skip
            fits.append(fit_head_dim_edge(rows, FLASH_NARROW_HEAD_DIM, cls.efficiency))
        out[kernel] = (fits[0], fits[1])
    return out


def large_gemm_rate(cal: Calibration, dtype: str) -> float:
    """The rate the profile's GEMM shape term implies for an unboundedly large GEMM of
    ``dtype``: the square product's at the largest n measured x (1 + 3L/n), which the cost model
    prices back at exactly the measured rate (``costs.gemm_shape.shape_factor``); the measured
    rate itself without a term (L = 0), 0 where the dtype was not measured."""
    rates = cal.matmul_by_size.get(dtype)
    if not rates:
        return cal.matmul_flops_per_s.get(dtype, 0.0)
    n = max(rates)
    return rates[n] * shape_factor(cal.gemm_edge_elements, n, n, n)


def priced_mix_rate(cal: Calibration) -> float:
    """The GEMM mix's rate in the FLOPs the cost model prices it at: its counted FLOPs plus L
    x its shape term (``calibrate.gemm_mix_edge``), over its measured time."""
    if not cal.gemm_flops_per_s or not cal.gemm_edge_elements or not cal.elementwise_shape:
        return cal.gemm_flops_per_s
    layers = cal.elementwise_shape[5]
    (block, head), (e_block, e_head) = (gemm_counted_flops(cal.elementwise_shape),
                                        gemm_mix_edge(cal.elementwise_shape))  # fmt: skip
    work = layers * block + head
    return (
        cal.gemm_flops_per_s * (work + cal.gemm_edge_elements * (layers * e_block + e_head)) / work
    )


def adam_fp32_bytes_per_param() -> float:
    """Bytes the cost model charges per parameter for the fp32 AdamW step that
    :func:`measure_adam` times (``costs.optimizer_bytes_per_param``: 28 B)."""
    from simtrain.costs.compute import optimizer_bytes_per_param
    from simtrain.spec.scenario import TrainingSpec

    return optimizer_bytes_per_param(TrainingSpec(precision="fp32", optimizer="adamw"))


def fp32_peak(cal: Calibration) -> float:
    """The profile's fp32 peak: the square product at the largest size (x (1 + 3L/n) with a
    shape term: :func:`large_gemm_rate`), or the GEMM mix's priced rate where a noisy machine
    measured the mix faster (efficiency.matmul = mix / peak stays <= 1 and the cost model
    reproduces the measured mix either way)."""
    return max(large_gemm_rate(cal, "fp32"), priced_mix_rate(cal))


def efficiencies(cal: Calibration) -> tuple[float, float, float | None]:
    """(efficiency.matmul, efficiency.memory_bound, efficiency.optimizer) of a calibration: the
    GEMM mix's priced FLOP/s (:func:`priced_mix_rate`) over :func:`fp32_peak`, the element-wise mix's and the AdamW
    step's cost-model bytes per second over the measured bandwidth (each at most 1; 1.0, 1.0
    and None where not measured). matmul is measured in fp32 and applies to every dtype."""
    bw = cal.memory_bandwidth_bytes_per_s
    peak = fp32_peak(cal)
    mm = priced_mix_rate(cal) / peak if cal.gemm_flops_per_s and peak else 1.0
    mem = min(1.0, cal.elementwise_bytes_per_s / bw) if cal.elementwise_bytes_per_s else 1.0
    opt = None
    if cal.adam_params_per_s:
        opt = min(1.0, cal.adam_params_per_s * adam_fp32_bytes_per_param() / bw)
    return mm, mem, opt


def check_out_path(out: str) -> None:
    """``--out`` before anything is measured (a calibration takes minutes, and its path was
    checked only when the profile was written: a fuzz campaign): a ``.yaml`` path, not a
    folder, under a folder this process may write (the nearest one that exists)."""
    p = Path(out)
    allowed = "a path ending in .yaml in a folder you may write"
    if p.suffix != ".yaml" or not p.stem:
        raise ConfigError(None, "--out", "a hardware profile is a .yaml file", out, allowed)
    if p.is_dir():
        raise ConfigError(None, "--out", "is a folder", out, allowed)
    parent = p.parent.resolve()
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(None, "--out", f"cannot write under {parent}", out, allowed)


def write_profile(path: str | Path, cal: Calibration) -> Path:
    """Write ``cal`` as a hardware profile YAML (loadable by ``load_hardware(path)``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(profile_text(cal))
    return p


def calibration_table(cal: Calibration) -> str:
    lines = [f"{cal.device_name} ({cal.device}), torch {cal.torch_version}, "
             f"{cal.threads} threads, {cal.when}"]  # fmt: skip
    sizes = sorted({n for r in cal.matmul_by_size.values() for n in r})
    lines.append("matmul TFLOP/s " + "".join(f"{'n=' + str(n):>10}" for n in sizes)
                 + f"{'peak':>10}")  # fmt: skip
    for dt, rates in cal.matmul_by_size.items():
        lines.append(f"  {dt:<12} " + "".join(f"{rates.get(n, 0) / 1e12:>10.3f}" for n in sizes)
                     + f"{rates[max(rates)] / 1e12:>10.3f}")  # fmt: skip
    for k, v in cal.bandwidth_by_kernel.items():
        lines.append(f"memory bandwidth ({k}): {v / 1e9:,.1f} GB/s")
    if cal.gemm_flops_per_s:
        lo, hi = cal.gemm_spread
        lines.append(f"GEMM mix (cost-model FLOPs): {cal.gemm_flops_per_s / 1e12:,.4f} TFLOP/s"
                     f" (spread {lo / 1e12:,.4f}-{hi / 1e12:,.4f})")  # fmt: skip
    if cal.gemm_edge:
        fit, n = cal.gemm_edge
        lines.append(f"GEMM shape term: L = {fit.edge:g} over {n} fp32 GEMMs "
                     f"({_fit_quality(fit, 'GEMM')})")  # fmt: skip
    classes = flash_fits(cal)
    dims = flash_head_dim_fits(cal, classes)
    for kernel, (fwd, bwd) in classes.items():
        dim = (f"; head dim {FLASH_NARROW_HEAD_DIM}: D {dims[kernel][0].edge:g} / "
               f"{dims[kernel][1].edge:g}" if kernel in dims else "")  # fmt: skip
        lines.append(f"FlashAttention {kernel} (causal bf16, {len(_resolved(cal.flash_times[kernel]))} "
                     f"shapes): forward {fwd.efficiency:.3f} of peak, R {fwd.edge:g} rows; "
                     f"backward {bwd.efficiency:.3f}, R {bwd.edge:g}{dim}")  # fmt: skip
    if cal.elementwise_bytes_per_s:
        lo, hi = cal.elementwise_spread
        lines.append(f"element-wise mix (cost-model bytes): {cal.elementwise_bytes_per_s / 1e9:,.2f}"
                     f" GB/s (spread {lo / 1e9:,.2f}-{hi / 1e9:,.2f})")  # fmt: skip
    if cal.adam_params_per_s:
        lines.append(f"AdamW step: {cal.adam_params_per_s / 1e6:,.1f} M params/s")
    mm_eff, mem_eff, opt_eff = efficiencies(cal)
    lines.append(
        f"efficiency.matmul {mm_eff:.3f}, memory_bound {mem_eff:.3f}"
        + (f", optimizer {opt_eff:.3f}" if opt_eff is not None else "")
    )
    if cal.pcie_bandwidth_bytes_per_s:
        lines.append(f"host -> device: {cal.pcie_bandwidth_bytes_per_s / 1e9:,.1f} GB/s")
    if cal.cuda_context_bytes:
        lines.append(f"CUDA context: {cal.cuda_context_bytes / MIB:,.0f} MiB")
    lines.extend(f"note: {n}" for n in cal.notes)
    return "\n".join(lines)
