"""Calibration: measure a device and write a hardware profile (``simtrain calibrate``).

:func:`calibrate` times, on the device itself (PyTorch, imported lazily):

* **matmul FLOP/s** per dtype (fp32; tf32 on CUDA; bf16 and fp16 where the device runs them):
  ``C = A @ B`` for square sizes (:data:`CPU_SIZES`, :data:`CUDA_SIZES`), 2·n³ FLOPs each,
  median of a few timed runs after a warm-up. The profile's peak is the rate at the **largest
  size measured** -- a representative large GEMM, the quantity ``peak_tflops x
  efficiency.matmul`` stands for in the cost model (the best size would pick the luckiest
  sample on a shared CPU) -- and the per-size rates are kept in the result and written as a
  comment. A dtype stops growing before a call would exceed :data:`NEXT_CALL_LIMIT_S` (CPUs
  without native bf16/fp16);
* **GEMM shape term** (``efficiency.gemm_edge_elements``, L): fp32 ``A @ B`` for every (M, N,
  K) of :data:`CPU_GEMM_EDGE_SIZES` / :data:`CUDA_GEMM_EDGE_SIZES`, each rate over the fp32
  square-product peak, fitted by ``costs.gemm_shape.fit_gemm_edge`` (the fit that set the
  shipped profiles' L on published GEMM tables). The profile's peaks become the rates the term
  implies for an unboundedly large GEMM (largest square n: rate x (1 + 3L/n)), and the GEMM
  mix's FLOPs include the term (:func:`gemm_mix_edge`), so the profile still reproduces the mix;
* **FlashAttention classes** (CUDA only; ``attention_kernels.<kernel>``): causal bf16
  ``scaled_dot_product_attention`` through PyTorch's FlashAttention-2 and cuDNN fused-attention
  backends, each its own class (``fa2``, ``cudnn``), for every (heads, seq_len) of
  :data:`CUDA_FLASH_SHAPES` (batch 1, head dim 128), forward and backward, each
  call's causal FLOPs over its time and the bf16 peak, fitted by
  ``costs.attention_shape.fit_flash_edge`` on query rows (the fit that set the B200 profile's on
  SimuMax's sweep), and each class's head-dim edge D on :data:`CUDA_FLASH_NARROW_SHAPES` at head
  dim 64 (``costs.attention_shape.fit_head_dim_edge``, e∞ and R held); a CPU has no flash kernel
  and gets no class;
* **memory bandwidth**: a copy (``y.copy_(x)``: read + write) and an add (``torch.add(x, y,
  out=z)``: two reads + one write) over :data:`STREAM_BYTES`-byte fp32 tensors, bytes moved /
  time, the better of the two (the element-wise kernels of a training step are of these kinds);
* **element-wise rate** (:func:`measure_elementwise`): forward + backward of the element-wise
  ops of one GPT block and its loss, as the reference model
  (``simtrain.torchref.reference_model``) runs them -- two LayerNorms, two residual adds and
  their gradient sums, the tanh GeLU over the 4h MLP activation, scale + causal mask + softmax
  over the s x s scores, cross-entropy over the logits -- at a small GPT's sizes
  (:data:`CPU_ELEMENTWISE_SHAPE`, :data:`CUDA_ELEMENTWISE_SHAPE`). The bytes are counted by the
  cost model's own functions (``costs.block_elementwise_bytes``,
  ``costs.head_elementwise_bytes``), so ``efficiency.memory_bound`` = (counted bytes / time) /
  memory bandwidth is exactly what ``costs.chunk_costs`` needs to reproduce the time. On a CPU
  this is far below 1 (PyTorch's unfused CPU kernels: tanh, exp and reductions are
  compute-bound, every op allocates its output);
* **optimizer rate**: a ``torch.optim.AdamW`` step (foreach=False, as
  ``simtrain.torchref.trainer``) over the fp32 parameters of one GPT block and its embeddings at
  the same sizes, for ``cpu_adam_params_per_s`` (CPU) and, with
  ``costs.optimizer_bytes_per_param``, ``efficiency.optimizer``.

Threads: ``threads`` fixes ``torch.set_num_threads`` for the calibration (restored after);
``simtrain.torchref.measure.measure_step`` takes the same argument, and a calibration predicts a
step only at the thread count it was measured with (recorded in the profile header).

:func:`write_profile` writes a profile that :func:`simtrain.spec.hardware.load_hardware` reads,
with ``efficiency.matmul: 1.0`` (the peaks *are* the measured achievables) and the measured
``memory_bound`` and ``optimizer`` efficiencies.
Every number carries a source tag: ``[meas]`` measured here, ``[sys]`` read from the system,
``[na]`` a placeholder for what a single device does not have (links, NICs).

The measurements are in :mod:`simtrain.torchref.microbench`, the profile text and the table in
:mod:`simtrain.torchref.profile_writer`.
"""

from __future__ import annotations

import os
import platform
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simtrain.costs.gemm_shape import EdgeFit, fit_gemm_edge
from simtrain.torchref.microbench import (
    CPU_ELEMENTWISE_SHAPE,
    CPU_GEMM_EDGE_SIZES,
    CPU_SIZES,
    CUDA_ELEMENTWISE_SHAPE,
    CUDA_FLASH_NARROW_SHAPES,
    CUDA_FLASH_SHAPES,
    CUDA_GEMM_EDGE_SIZES,
    CUDA_SIZES,
    FLASH_HEAD_DIM,
    FLASH_NARROW_HEAD_DIM,
    STREAM_BYTES,
    _timed,
    _torch,
    elementwise_counted_bytes,
    gemm_counted_flops,
    gemm_edge_shapes,
    gemm_mix_edge,
    measure_adam,
    measure_bandwidth,
    measure_elementwise,
    measure_flash_attention,
    measure_gemm_mix,
    measure_gemm_shapes,
    measure_matmul,
)
from simtrain.torchref.profile_writer import (
    Calibration,
    calibration_table,
    check_out_path,
    efficiencies,
    flash_fits,
    flash_head_dim_fits,
    profile_text,
    write_profile,
)
from simtrain.units import GIB


def _physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * GIB


def calibrate(device: str = "cpu", name: str | None = None, *,
              sizes: tuple[int, ...] | None = None, repeats: int = 5,
              dtypes: tuple[str, ...] | None = None, threads: int | None = None,
              elementwise_shape: tuple[int, ...] | None = None,
              gemm_edge_sizes: tuple[int, ...] | None = None) -> Calibration:  # fmt: skip
    """Measure ``device`` (``cpu``, ``cuda``, ``cuda:1``): matmul FLOP/s per dtype and size,
    the GEMM shape term, memory bandwidth, the element-wise rate and the AdamW rate; see the
    module docstring. ``dtypes`` defaults to fp32, bf16, fp16 (and tf32 on CUDA); dtypes not
    measured get peak 0 in the profile. ``gemm_edge_sizes``: the shape sweep's sizes (None:
    the device's default; (): no sweep, L = 0). ``threads``: torch intra-op threads for the
    whole calibration."""
    from simtrain.torchref.measure import torch_threads

    with torch_threads(threads):
        return _calibrate(device, name, sizes, repeats, dtypes, elementwise_shape,
                          gemm_edge_sizes)  # fmt: skip


def _calibrate(device: str, name: str | None, sizes: tuple[int, ...] | None, repeats: int,
               dtypes: tuple[str, ...] | None, elementwise_shape: tuple[int, ...] | None,
               gemm_edge_sizes: tuple[int, ...] | None) -> Calibration:  # fmt: skip
    from simtrain.torchref.measure import check_device

    check_device(device)
    torch = _torch()
    dev = torch.device(device)
    notes: list[str] = []
    by_size = _matmul_rates(device, dev.type == "cuda", sizes, repeats, dtypes, notes)
    best = {dt: r[max(r)] for dt, r in by_size.items()}  # the largest size measured
    if gemm_edge_sizes is None:
        gemm_edge_sizes = CUDA_GEMM_EDGE_SIZES if dev.type == "cuda" else CPU_GEMM_EDGE_SIZES
    edge = _gemm_edge_fit(device, gemm_edge_sizes, best.get("fp32", 0.0), repeats, notes)
    bw = measure_bandwidth(device, repeats=repeats)
    ew_shape = elementwise_shape or (
        CUDA_ELEMENTWISE_SHAPE if dev.type == "cuda" else CPU_ELEMENTWISE_SHAPE
    )
    ew_rate, ew_spread = measure_elementwise(device, ew_shape)
    gemm_rate, gemm_spread = measure_gemm_mix(device, ew_shape)
    adam = measure_adam(device)
    flash, narrow = {}, {}
    if dev.type == "cuda" and "bf16" in best:
        flash = measure_flash_attention(device, CUDA_FLASH_SHAPES, repeats=repeats)
        if not flash:
            notes.append("FlashAttention: no flash backend on this device; no kernel class")
        else:
            narrow = measure_flash_attention(device, CUDA_FLASH_NARROW_SHAPES,
                                             head_dim=FLASH_NARROW_HEAD_DIM, repeats=repeats)  # fmt: skip
    if dev.type == "cuda":
        device_name, memory, context, pcie = _cuda_facts(torch, dev, repeats)
    else:
        device_name, memory, context, pcie = _cpu_name(), _physical_memory_bytes(), 0, 0.0
    cal = Calibration(
        name=name or f"{dev.type}_calibrated",
        device=str(dev),
        device_name=device_name,
        torch_version=str(torch.__version__),
        threads=int(torch.get_num_threads()),
        when=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        matmul_flops_per_s=best,
        matmul_by_size=by_size,
        memory_bandwidth_bytes_per_s=max(bw.values()),
        bandwidth_by_kernel=bw,
        elementwise_bytes_per_s=ew_rate,
        elementwise_spread=ew_spread,
        gemm_flops_per_s=gemm_rate,
        gemm_spread=gemm_spread,
        elementwise_shape=tuple(ew_shape),
        memory_bytes=memory,
        host_memory_bytes=_physical_memory_bytes(),
        cuda_context_bytes=context,
        pcie_bandwidth_bytes_per_s=pcie,
        adam_params_per_s=adam,
        notes=tuple(notes),
        gemm_edge=edge,
        flash_times=flash,
        flash_narrow_times=narrow,
    )
    extra = head_dim_notes(cal)
    return replace(cal, notes=cal.notes + extra) if extra else cal


def head_dim_notes(cal: Calibration) -> tuple[str, ...]:
    """A note for each kernel with a class but no fitted head-dim edge (its narrow sweep ran
    fewer than two resolved shapes): said, not silent."""
    classes = flash_fits(cal)
    missing = sorted(set(classes) - set(flash_head_dim_fits(cal, classes)))
    return tuple(f"FlashAttention {k}: no head-dim-{FLASH_NARROW_HEAD_DIM} sweep: D = 0, a "
                 f"narrower head priced as {FLASH_HEAD_DIM}" for k in missing)  # fmt: skip


def _gemm_edge_fit(device: str, sizes: tuple[int, ...], fp32_peak: float, repeats: int,
                   notes: list[str]) -> tuple[EdgeFit, int] | None:  # fmt: skip
    """(the GEMM shape term fitted on the fp32 sweep over ``sizes``, GEMMs measured), each
    GEMM's efficiency its rate over ``fp32_peak``; None (and a note) without a sweep."""
    if not sizes or fp32_peak <= 0:
        return None
    rates = measure_gemm_shapes("fp32", device, gemm_edge_shapes(sizes), repeats)
    if len(rates) < 2:
        notes.append("GEMM shape sweep: fewer than two shapes ran; no shape term")
        return None
    table = tuple((m, n, k, r / fp32_peak) for (m, n, k), r in rates.items())
    return fit_gemm_edge(table), len(table)


def _matmul_rates(device: str, cuda: bool, sizes: tuple[int, ...] | None, repeats: int,
                  dtypes: tuple[str, ...] | None,
                  notes: list[str]) -> dict[str, dict[int, float]]:  # fmt: skip
    """dtype -> size -> matmul FLOP/s of each dtype the device runs (a note for each it does
    not); sizes and dtypes default to the device's (tf32 on CUDA only)."""
    if sizes is None:
        sizes = CUDA_SIZES if cuda else CPU_SIZES
    if dtypes is None:
        dtypes = ("fp32", "tf32", "bf16", "fp16") if cuda else ("fp32", "bf16", "fp16")
    by_size: dict[str, dict[int, float]] = {}
    for dt in dtypes:
        rates = measure_matmul(dt, device, sizes, repeats)
        if rates:
            by_size[dt] = rates
        else:
            notes.append(f"{dt}: matmul not supported on this device")
    return by_size


def _cuda_facts(torch: Any, dev: Any, repeats: int) -> tuple[str, int, int, float]:
    """(device name, memory bytes, CUDA context bytes, host -> device bytes/s) of a GPU."""
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(idx)
    device_name = props.name
    memory = int(props.total_memory)
    free, total = torch.cuda.mem_get_info(idx)
    context = max(0, int(total - free - torch.cuda.memory_reserved(idx)))
    host = torch.empty(STREAM_BYTES // 4, pin_memory=True)
    gpu = torch.empty(STREAM_BYTES // 4, device=dev)
    t = _timed(torch, dev, lambda: gpu.copy_(host, non_blocking=True), repeats)
    return device_name, memory, context, STREAM_BYTES / t


def _cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo; elsewhere what :mod:`platform` knows)."""
    device_name = platform.processor() or platform.machine() or "CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    device_name = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover - non-Linux
        pass
    return device_name


def calibrate_command(device: str, out: str, threads: int | None = None) -> str:
    """What ``simtrain calibrate --device DEVICE --out PATH`` prints; writes the profile."""
    check_out_path(out)
    name = Path(out).stem
    cal = calibrate(device, name, threads=threads)
    p = write_profile(out, cal)
    return calibration_table(cal) + f"\n\nwrote {p} (hardware: {p})\n"


__all__ = [
    "Calibration", "calibrate", "calibrate_command", "calibration_table", "efficiencies",
    "elementwise_counted_bytes", "gemm_counted_flops", "gemm_mix_edge", "measure_adam",
    "measure_bandwidth", "measure_elementwise", "measure_gemm_mix", "measure_matmul",
    "profile_text", "write_profile",
]  # fmt: skip
