"""Calibration: measure a device and write a hardware profile (``simtrain calibrate``).

:func:`calibrate` times, on the device itself (PyTorch, imported lazily):

* **matmul FLOP/s** per dtype (fp32; tf32 on CUDA; bf16 and fp16 where the device runs them):
  ``C = A @ B`` for square sizes (:data:`CPU_SIZES`, :data:`CUDA_SIZES`), 2·n³ FLOPs each,
  median of a few timed runs after a warm-up. The profile's peak is the rate at the **largest
  size measured** -- a representative large GEMM, the quantity ``peak_tflops x
  efficiency.matmul`` stands for in the cost model (the best size would pick the luckiest
  sample on a shared CPU) -- and the per-size rates are kept in the result and written as a
  comment. A dtype whose single call exceeds :data:`SLOW_CALL_S` stops growing (CPUs without
  native bf16/fp16);
* **memory bandwidth**: a copy (``y.copy_(x)``: read + write) and an add (``torch.add(x, y,
  out=z)``: two reads + one write) over :data:`STREAM_BYTES`-byte fp32 tensors, bytes moved /
  time, the better of the two (the element-wise kernels of a training step are of these kinds);
* **optimizer rate** (CPU): a ``torch.optim.AdamW`` step over a 16M-element fp32 tensor, for
  ``cpu_adam_params_per_s``.

:func:`write_profile` writes a profile that :func:`simtrain.hardware.load_hardware` reads, with
``efficiency: {matmul: 1.0, memory_bound: 1.0}``: the peaks *are* the measured achievables.
Every number carries a source tag: ``[meas]`` measured here, ``[sys]`` read from the system,
``[na]`` a placeholder for what a single device does not have (links, NICs).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from simtrain.errors import SimtrainError

CPU_SIZES = (256, 512, 1024, 2048)
CUDA_SIZES = (1024, 2048, 4096, 8192)
MATMUL_SIZES = CPU_SIZES
STREAM_BYTES = 256 * 2**20  # per tensor: far beyond any CPU cache
GIB = 2**30
MIB = 2**20


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


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SimtrainError(
            f"simtrain calibrate needs PyTorch: pip install 'simtrain[measure]' ({exc})"
        ) from None
    return torch


def _sync(torch: Any, dev: Any) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(torch: Any, dev: Any, fn: Any, repeats: int, min_time_s: float = 0.05,
           budget_s: float = 2.0) -> float:  # fmt: skip
    """Median seconds per call of ``fn`` over up to ``repeats`` samples, each sample looping
    ``fn`` enough times to last ``min_time_s`` (short kernels are batched to beat timer noise);
    slow calls get fewer samples so that one measurement stays within ``budget_s``."""
    fn()  # warm-up (allocations, kernel selection)
    _sync(torch, dev)
    t0 = time.perf_counter()
    fn()
    _sync(torch, dev)
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time_s / one))
    samples = [one] if one * inner >= budget_s else []
    for _ in range(max(0, min(repeats, int(budget_s / (one * inner))))):
        _sync(torch, dev)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(torch, dev)
        samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


# A size whose single call takes longer than this ends the size sweep of a dtype (CPUs without
# native bf16/fp16 run them at ~1 GFLOP/s: a 2048^3 product would take half a minute).
SLOW_CALL_S = 0.5


def measure_matmul(
    dtype: str, device: str = "cpu", sizes: tuple[int, ...] = MATMUL_SIZES, repeats: int = 5
) -> dict[int, float]:
    """FLOP/s of ``A @ B`` (n x n, 2·n³ FLOPs) per size; {} if the device cannot run the dtype."""
    torch = _torch()
    dev = torch.device(device)
    td = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
          "fp16": torch.float16}[dtype]  # fmt: skip
    out: dict[int, float] = {}
    prev = torch.backends.cuda.matmul.allow_tf32 if dev.type == "cuda" else None
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        for n in sizes:
            try:
                a = torch.randn(n, n, device=dev).to(td)
                b = torch.randn(n, n, device=dev).to(td)
                c = torch.empty(n, n, device=dev, dtype=td)
                t = _timed(torch, dev, lambda a=a, b=b, c=c: torch.matmul(a, b, out=c), repeats)
            except (RuntimeError, TypeError, NotImplementedError):
                return out
            out[n] = 2.0 * n**3 / t
            if t > SLOW_CALL_S or (t * 8 > 4 * SLOW_CALL_S):  # the next size costs 8x
                break
    finally:
        if prev is not None:
            torch.backends.cuda.matmul.allow_tf32 = prev
    return out


def measure_bandwidth(device: str = "cpu", n_bytes: int = STREAM_BYTES,
                      repeats: int = 5) -> dict[str, float]:  # fmt: skip
    """Bytes moved per second by a copy (2 x n_bytes) and an add (3 x n_bytes) of fp32."""
    torch = _torch()
    dev = torch.device(device)
    n = n_bytes // 4
    x = torch.rand(n, device=dev)
    y = torch.rand(n, device=dev)
    z = torch.empty(n, device=dev)
    t_copy = _timed(torch, dev, lambda: y.copy_(x), repeats)
    t_add = _timed(torch, dev, lambda: torch.add(x, y, out=z), repeats)
    return {"copy": 2 * n_bytes / t_copy, "add": 3 * n_bytes / t_add}


def measure_adam(device: str = "cpu", numel: int = 16 * 2**20, repeats: int = 3) -> float:
    """Parameters per second of one ``torch.optim.AdamW`` step (foreach=False, as in
    ``simtrain.measure``) on a single fp32 tensor."""
    torch = _torch()
    dev = torch.device(device)
    p = torch.zeros(numel, device=dev, requires_grad=True)
    p.grad = torch.rand(numel, device=dev)
    opt = torch.optim.AdamW([p], lr=1e-4, weight_decay=0.01, foreach=False)
    t = _timed(torch, dev, opt.step, repeats, min_time_s=0.02)
    return numel / t


def _physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * GIB


def calibrate(device: str = "cpu", name: str | None = None, *,
              sizes: tuple[int, ...] | None = None, repeats: int = 5,
              dtypes: tuple[str, ...] | None = None) -> Calibration:  # fmt: skip
    """Measure ``device`` (``cpu``, ``cuda``, ``cuda:1``): matmul FLOP/s per dtype and size,
    memory bandwidth, and (CPU) the AdamW rate; see the module docstring. ``dtypes`` defaults
    to fp32, bf16, fp16 (and tf32 on CUDA); dtypes not measured get peak 0 in the profile."""
    torch = _torch()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SimtrainError("calibrate: --device cuda but torch.cuda.is_available() is False")
    if dev.type not in ("cpu", "cuda"):
        raise SimtrainError(f"calibrate: unsupported device {device!r}; use cpu or cuda")
    notes: list[str] = []
    if sizes is None:
        sizes = CUDA_SIZES if dev.type == "cuda" else CPU_SIZES
    if dtypes is None:
        dtypes = (
            ("fp32", "tf32", "bf16", "fp16") if dev.type == "cuda" else ("fp32", "bf16", "fp16")
        )
    by_size: dict[str, dict[int, float]] = {}
    for dt in dtypes:
        rates = measure_matmul(dt, device, sizes, repeats)
        if rates:
            by_size[dt] = rates
        else:
            notes.append(f"{dt}: matmul not supported on this device")
    best = {dt: r[max(r)] for dt, r in by_size.items()}  # the largest size measured
    bw = measure_bandwidth(device, repeats=repeats)
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        device_name = props.name
        memory = int(props.total_memory)
        free, total = torch.cuda.mem_get_info(idx)
        context = max(0, int(total - free - torch.cuda.memory_reserved(idx)))
        host = torch.empty(STREAM_BYTES // 4, pin_memory=True)
        gpu = torch.empty(STREAM_BYTES // 4, device=dev)
        t = _timed(torch, dev, lambda: gpu.copy_(host, non_blocking=True), repeats)
        pcie = STREAM_BYTES / t
        adam = 0.0
    else:
        device_name = platform.processor() or platform.machine() or "CPU"
        try:
            with open("/proc/cpuinfo") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        device_name = line.split(":", 1)[1].strip()
                        break
        except OSError:  # pragma: no cover - non-Linux
            pass
        memory = _physical_memory_bytes()
        context = 0
        pcie = 0.0
        adam = measure_adam(device)
    return Calibration(
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
        memory_bytes=memory,
        host_memory_bytes=_physical_memory_bytes(),
        cuda_context_bytes=context,
        pcie_bandwidth_bytes_per_s=pcie,
        adam_params_per_s=adam,
        notes=tuple(notes),
    )


def profile_text(cal: Calibration) -> str:
    """The hardware-profile YAML of a calibration (see :func:`write_profile`)."""
    tf = {dt: cal.matmul_flops_per_s.get(dt, 0.0) / 1e12 for dt in ("fp32", "tf32", "bf16",
                                                                    "fp16")}  # fmt: skip
    cpu = cal.device.startswith("cpu")
    bw = cal.memory_bandwidth_bytes_per_s / 1e9
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
        "#  [sys]   operating system / torch device properties",
        "#  [na]    not applicable to a single device (no links, no NIC): placeholder so the",
        "#          profile loads; do not simulate multi-device layouts with it",
    ]
    for note in cal.notes:
        lines.append(f"#          note: {note}")
    gpn_kind = "pcie"
    link_bw = (cal.pcie_bandwidth_bytes_per_s / 1e9) if not cpu else bw
    pcie_bw = (cal.pcie_bandwidth_bytes_per_s / 1e9) if not cpu else bw
    pcie_tag = "[meas] host -> device copy, pinned memory" if not cpu else "[na] no host link"
    lines += [
        f"name: {cal.name}",
        f'display_name: "{cal.device_name} (calibrated)"',
        f"memory_gib: {cal.memory_bytes / GIB:.6g}          # [sys] "
        + ("physical RAM" if cpu else "torch.cuda.get_device_properties total_memory"),
        "peak_tflops:                      # [meas] matmul rate at the largest n (0: not run)",
        f"  fp32: {tf['fp32']:.6g}          # [meas]",
        f"  tf32: {tf['tf32']:.6g}          # [meas]" + (" (CPU: no TF32)" if cpu else ""),
        f"  fp16: {tf['fp16']:.6g}          # [meas]",
        f"  bf16: {tf['bf16']:.6g}          # [meas]",
        "  fp8: 0                          # [na] not measured",
        "  int8: 0                         # [na] not measured",
        f"hbm_bandwidth_gb_per_s: {bw:.6g}    # [meas] best of copy and add"
        + (" (DRAM; the key keeps its name)" if cpu else ""),
        "gpus_per_node: 1                  # [na] one measured device",
        "intra_node:",
        f"  kind: {gpn_kind}                      # [na] single device",
        f"  bandwidth_gb_per_s: {link_bw:.6g}    # [na] single device: placeholder",
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
                     "torch.optim.AdamW step, 16M fp32 parameters, foreach=False")  # fmt: skip
    lines += [
        "efficiency:                       # the peaks above are the measured achievables",
        "  matmul: 1.0                     # [meas] peak_tflops is the achieved rate",
        "  memory_bound: 1.0               # [meas] hbm_bandwidth_gb_per_s is the achieved rate",
        "  collective: 1.0                 # [na] no collective measured",
    ]
    return "\n".join(lines) + "\n"


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
    if cal.adam_params_per_s:
        lines.append(f"AdamW step: {cal.adam_params_per_s / 1e6:,.1f} M params/s")
    if cal.pcie_bandwidth_bytes_per_s:
        lines.append(f"host -> device: {cal.pcie_bandwidth_bytes_per_s / 1e9:,.1f} GB/s")
    if cal.cuda_context_bytes:
        lines.append(f"CUDA context: {cal.cuda_context_bytes / MIB:,.0f} MiB")
    lines.extend(f"note: {n}" for n in cal.notes)
    return "\n".join(lines)


def calibrate_command(device: str, out: str) -> str:
    """What ``simtrain calibrate --device DEVICE --out PATH`` prints; writes the profile."""
    name = Path(out).stem
    cal = calibrate(device, name)
    p = write_profile(out, cal)
    return calibration_table(cal) + f"\n\nwrote {p} (hardware: {p})\n"


__all__ = [
    "Calibration", "calibrate", "calibrate_command", "calibration_table", "measure_adam",
    "measure_bandwidth", "measure_matmul", "profile_text", "write_profile",
]  # fmt: skip
