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
* **memory bandwidth**: a copy (``y.copy_(x)``: read + write) and an add (``torch.add(x, y,
  out=z)``: two reads + one write) over :data:`STREAM_BYTES`-byte fp32 tensors, bytes moved /
  time, the better of the two (the element-wise kernels of a training step are of these kinds);
* **element-wise rate** (:func:`measure_elementwise`): forward + backward of the element-wise
  ops of one GPT block and its loss, as the reference model (``simtrain.torchref.measure``) runs them --
  two LayerNorms, two residual adds and their gradient sums, the tanh GeLU over the 4h MLP
  activation, scale + causal mask + softmax over the s x s scores, cross-entropy over the logits
  -- at a small GPT's sizes (:data:`CPU_ELEMENTWISE_SHAPE`, :data:`CUDA_ELEMENTWISE_SHAPE`). The
  bytes are counted by the cost model's own functions (``costs.block_elementwise_bytes``,
  ``costs.head_elementwise_bytes``), so ``efficiency.memory_bound`` = (counted bytes / time) /
  memory bandwidth is exactly what ``costs.chunk_costs`` needs to reproduce the time. On a CPU
  this is far below 1 (PyTorch's unfused CPU kernels: tanh, exp and reductions are
  compute-bound, every op allocates its output);
* **optimizer rate**: a ``torch.optim.AdamW`` step (foreach=False, as ``simtrain.torchref.measure``)
  over the fp32 parameters of one GPT block and its embeddings at the same sizes, for ``cpu_adam_params_per_s`` (CPU) and, with
  ``costs.optimizer_bytes_per_param``, ``efficiency.optimizer``.

Threads: ``threads`` fixes ``torch.set_num_threads`` for the calibration (restored after);
``simtrain.torchref.measure.measure_step`` takes the same argument, and a calibration predicts a step
only at the thread count it was measured with (recorded in the profile header).

:func:`write_profile` writes a profile that :func:`simtrain.spec.hardware.load_hardware` reads, with
``efficiency.matmul: 1.0`` (the peaks *are* the measured achievables) and the measured
``memory_bound`` and ``optimizer`` efficiencies.
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
from simtrain.spec.hardware import GIB, MIB

CPU_SIZES = (256, 512, 1024, 2048)
CUDA_SIZES = (1024, 2048, 4096, 8192)
STREAM_BYTES = 256 * 2**20  # per tensor: far beyond any CPU cache
# (micro_batch, seq_len, hidden, heads, vocab, layers) of the GPT whose kernels calibrate the
# matmul and element-wise efficiencies (its blocks weighted layers : 1 against its head). CPU:
# tests/data/closed_loop_cpu.yaml (a GPT the size a CPU trains; GPT-2 small's widths / 1.5);
# CUDA: a 7B-class shape (h 4096, 32 heads, 32 layers, s 2048, GPT-NeoX vocab 50304), b = 1.
CPU_ELEMENTWISE_SHAPE = (4, 256, 512, 8, 8192, 4)
CUDA_ELEMENTWISE_SHAPE = (1, 2048, 4096, 32, 50304, 32)


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
    """Median seconds per call of ``fn`` (see :func:`_timed_samples`)."""
    return statistics.median(_timed_samples(torch, dev, fn, repeats, min_time_s, budget_s))


def _timed_samples(torch: Any, dev: Any, fn: Any, repeats: int, min_time_s: float = 0.05,
                   budget_s: float = 2.0, warmup: int = 1) -> list[float]:  # fmt: skip
    """Seconds per call of ``fn`` for up to ``repeats`` samples, each sample looping ``fn``
    enough times to last ``min_time_s`` (short kernels are batched to beat timer noise); slow
    calls get fewer samples so that one measurement stays within ``budget_s``."""
    for _ in range(warmup):  # warm-up (allocations, kernel selection)
        fn()
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
    return samples


# The size sweep of a dtype stops before a size whose single call would take longer than this
# (8x the last size's time: CPUs without native bf16/fp16 run them at ~1 GFLOP/s, where a
# 2048^3 product would take half a minute).
NEXT_CALL_LIMIT_S = 2.0


def measure_matmul(
    dtype: str, device: str = "cpu", sizes: tuple[int, ...] = CPU_SIZES, repeats: int = 5
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
            if 8 * t > NEXT_CALL_LIMIT_S:  # the next size costs 8x the FLOPs
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


def gpt_parameter_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Parameter shapes of the one-block reference GPT (``simtrain.torchref.measure.ReferenceGPT``) at an
    element-wise calibration ``shape`` (micro_batch, seq_len, hidden, heads, vocab, layers):
    embeddings, the block's linears, biases and norms, the final norm."""
    from simtrain.torchref.measure import ReferenceGPT

    return [tuple(p.shape) for p in ReferenceGPT(*_calibration_model(shape)).parameters()]


def measure_adam(device: str = "cpu", shapes: list[tuple[int, ...]] | None = None,
                 repeats: int = 5) -> float:  # fmt: skip
    """Parameters per second of one ``torch.optim.AdamW`` step (foreach=False, as in
    ``simtrain.torchref.measure``) over fp32 parameters of ``shapes`` (default: a GPT block and its
    embeddings at :data:`CPU_ELEMENTWISE_SHAPE` / :data:`CUDA_ELEMENTWISE_SHAPE`, the tensor
    sizes a training step updates: per-tensor overhead and allocator behaviour depend on them)."""
    torch = _torch()
    dev = torch.device(device)
    if shapes is None:
        default = CUDA_ELEMENTWISE_SHAPE if dev.type == "cuda" else CPU_ELEMENTWISE_SHAPE
        shapes = gpt_parameter_shapes(default)
    params = []
    for shp in shapes:
        p = torch.zeros(*shp, device=dev, requires_grad=True)
        p.grad = torch.rand(*shp, device=dev)
        params.append(p)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, foreach=False)
    t = _timed(torch, dev, opt.step, repeats, min_time_s=0.02)
    return sum(p.numel() for p in params) / t


def gemm_counted_flops(shape: tuple[int, ...]) -> tuple[float, float]:
    """(block, head) FLOPs the cost model counts for one forward + backward of
    :func:`measure_gemm_mix`'s matmuls (``costs.block_flops``, ``costs.head_flops``, fp32)."""
    from simtrain.costs.compute import block_flops, head_flops

    m, t = _calibration_model(shape)
    bf = block_flops(m, t)
    return bf.forward + bf.input_grad + bf.weight_grad, sum(head_flops(m, t))


def _mix_rate(torch: Any, dev: Any, counted: tuple[float, float], block: Any, head: Any,
              layers: int, repeats: int) -> tuple[float, tuple[float, float]]:  # fmt: skip
    """(median rate, (low, high)) of ``layers`` blocks and one head: counted (block, head)
    work over the per-sample times, block and head timed alternately (same machine load)."""
    tb: list[float] = []
    th: list[float] = []
    for _ in range(2):  # warm-up
        block()
        head()
    for _ in range(repeats):
        tb += _timed_samples(torch, dev, block, 1, min_time_s=0.0, budget_s=1e9, warmup=0)
        th += _timed_samples(torch, dev, head, 1, min_time_s=0.0, budget_s=1e9, warmup=0)
    work = layers * counted[0] + counted[1]
    rates = sorted(work / (layers * b + h) for b, h in zip(tb, th, strict=True))
    median = work / (layers * statistics.median(tb) + statistics.median(th))
    return median, (rates[0], rates[-1])


def _calibration_model(shape: tuple[int, ...]) -> tuple[Any, Any]:
    from simtrain.spec.model import ModelSpec
    from simtrain.spec.scenario import TrainingSpec

    b, s, h, heads, vocab, _ = shape
    m = ModelSpec(name="calibration", layers=1, hidden=h, heads=heads, kv_heads=heads,
                  ffn_hidden=4 * h, vocab=vocab, max_positions=s)  # fmt: skip
    return m, TrainingSpec(seq_len=s, global_batch=b, micro_batch=b, precision="fp32")


def measure_gemm_mix(device: str = "cpu", shape: tuple[int, ...] | None = None,
                     repeats: int = 7) -> tuple[float, tuple[float, float]]:  # fmt: skip
    """(cost-model FLOP/s, its (low, high) over the samples) of the matmuls of one fp32 GPT block and its
    tied LM head, forward + backward, as the reference model runs them: ``F.linear`` for q, k,
    v, o, MLP up and down (with bias) and the head (``x @ wteᵀ``), ``q @ kᵀ`` and ``att @ v``
    over (b, heads, s, d); ``layers`` blocks per head. Leaf inputs stand in for the element-wise
    ops between them.
    :func:`calibrate` divides this by the square-product peak for ``efficiency.matmul``: the
    GEMMs of a small model run below a large square product (thin and wide shapes)."""
    import torch.nn.functional as F

    torch = _torch()
    dev = torch.device(device)
    if shape is None:
        shape = CUDA_ELEMENTWISE_SHAPE if dev.type == "cuda" else CPU_ELEMENTWISE_SHAPE
    b, s, h, heads, vocab, _ = shape
    d = h // heads
    gen = torch.Generator(device="cpu").manual_seed(0)

    def leaf(*size: int) -> Any:
        return (0.02 * torch.randn(*size, generator=gen)).to(dev).requires_grad_(True)

    linears = [(h, h)] * 4 + [(h, 4 * h), (4 * h, h)]
    xs = [leaf(b, s, i) for i, _ in linears]
    ws = [(leaf(o, i), leaf(o)) for i, o in linears]
    x_head, wte = leaf(b, s, h), leaf(vocab, h)
    q, k, v = leaf(b, heads, s, d), leaf(b, heads, s, d), leaf(b, heads, s, d)
    leaves = [*xs, *(t for pair in ws for t in pair), x_head, wte, q, k, v]

    # output gradients, allocated once: their fill is not matmul work
    grads = [0.02 * torch.ones(b, s, o, device=dev) for _, o in linears]
    grads += [torch.ones(b, heads, s, d, device=dev), torch.ones(b, heads, s, s, device=dev)]
    head_grad = torch.ones(b, s, vocab, device=dev)

    def block() -> None:
        for t in leaves:
            t.grad = None
        outs = [F.linear(x, w, bias) for x, (w, bias) in zip(xs, ws, strict=True)]
        att = q @ k.transpose(-2, -1)
        outs += [att @ v, att]
        torch.autograd.backward(outs, grads)

    def head() -> None:
        x_head.grad = wte.grad = None
        F.linear(x_head, wte).backward(head_grad)

    return _mix_rate(torch, dev, gemm_counted_flops(shape), block, head, shape[5], repeats)


def elementwise_counted_bytes(shape: tuple[int, ...]) -> tuple[float, float]:
    """(block, head) bytes the cost model charges for one forward + backward of :func:`measure_elementwise`'s
    ops: one fp32 GPT block (LayerNorm, GeLU 4h MLP, learned positions, no dropout, math
    attention) and the loss over its logits, counted by ``simtrain.costs.compute`` itself."""
    from simtrain.costs.compute import block_elementwise_bytes, head_elementwise_bytes

    m, t = _calibration_model(shape)
    return sum(block_elementwise_bytes(m, t)), sum(head_elementwise_bytes(m, t))


def measure_elementwise(device: str = "cpu", shape: tuple[int, ...] | None = None,
                        repeats: int = 7) -> tuple[float, tuple[float, float]]:  # fmt: skip
    """(cost-model bytes per second, its (low, high) over the samples) of the element-wise ops of
    ``layers`` blocks and the loss, forward + backward, run with the reference model's own modules
    (``simtrain.torchref.measure.LayerNorm``, tanh GeLU, masked softmax, ``F.cross_entropy``). The
    matmuls are left out: leaf tensors stand in for their outputs (attention output, MLP up and
    down projections, QKᵀ scores, logits), so the gradient sums at the two residual forks happen
    as in the model. ``shape`` = (micro_batch, seq_len, hidden, heads, vocab, layers)."""
    import math

    import torch.nn.functional as F

    from simtrain.torchref.measure import LayerNorm

    torch = _torch()
    dev = torch.device(device)
    if shape is None:
        shape = CUDA_ELEMENTWISE_SHAPE if dev.type == "cuda" else CPU_ELEMENTWISE_SHAPE
    b, s, h, heads, vocab, _ = shape
    gen = torch.Generator(device="cpu").manual_seed(0)

    def leaf(*size: int) -> Any:
        return torch.randn(*size, generator=gen).to(dev).requires_grad_(True)

    def const(*size: int) -> Any:
        return torch.randn(*size, generator=gen).to(dev)

    x, attn_out, mlp_out = leaf(b, s, h), leaf(b, s, h), leaf(b, s, h)
    up, scores, logits = leaf(b, s, 4 * h), leaf(b, heads, s, s), leaf(b * s, vocab)
    targets = torch.randint(vocab, (b * s,), generator=gen).to(dev)
    dn1, dn2, dup, dsc, dy = const(b, s, h), const(b, s, h), const(b, s, 4 * h), \
        const(b, heads, s, s), const(b, s, h)  # fmt: skip
    ln1, ln2 = LayerNorm(h).to(dev), LayerNorm(h).to(dev)
    gelu = torch.nn.GELU(approximate="tanh")
    mask = torch.ones(s, s, dtype=torch.bool, device=dev).triu(1)
    leaves = (x, attn_out, mlp_out, up, scores, *ln1.parameters(), *ln2.parameters())

    def block() -> None:
        for t in leaves:
            t.grad = None
        n1 = ln1(x)  # as Block.block: norm, attention (scores), residual, norm, MLP, residual
        p = torch.softmax((scores * (1.0 / math.sqrt(h // heads))).masked_fill(mask, -math.inf),
                          dim=-1)  # fmt: skip
        x2 = x + attn_out
        n2 = ln2(x2)
        g = gelu(up)
        y = x2 + mlp_out
        torch.autograd.backward([n1, p, n2, g, y], [dn1, dsc, dn2, dup, dy])

    def head() -> None:
        logits.grad = None
        F.cross_entropy(logits.float(), targets).backward()

    counted = elementwise_counted_bytes(shape)
    return _mix_rate(torch, dev, counted, block, head, shape[5], repeats)


def _physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * GIB


def calibrate(device: str = "cpu", name: str | None = None, *,
              sizes: tuple[int, ...] | None = None, repeats: int = 5,
              dtypes: tuple[str, ...] | None = None, threads: int | None = None,
              elementwise_shape: tuple[int, ...] | None = None) -> Calibration:  # fmt: skip
    """Measure ``device`` (``cpu``, ``cuda``, ``cuda:1``): matmul FLOP/s per dtype and size,
    memory bandwidth, the element-wise rate and the AdamW rate; see the module docstring.
    ``dtypes`` defaults to fp32, bf16, fp16 (and tf32 on CUDA); dtypes not measured get peak 0
    in the profile. ``threads``: torch intra-op threads for the whole calibration."""
    from simtrain.torchref.measure import torch_threads

    with torch_threads(threads):
        return _calibrate(device, name, sizes, repeats, dtypes, elementwise_shape)


def _calibrate(device: str, name: str | None, sizes: tuple[int, ...] | None, repeats: int,
               dtypes: tuple[str, ...] | None,
               elementwise_shape: tuple[int, ...] | None) -> Calibration:  # fmt: skip
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
    ew_shape = elementwise_shape or (
        CUDA_ELEMENTWISE_SHAPE if dev.type == "cuda" else CPU_ELEMENTWISE_SHAPE
    )
    ew_rate, ew_spread = measure_elementwise(device, ew_shape)
    gemm_rate, gemm_spread = measure_gemm_mix(device, ew_shape)
    adam = measure_adam(device)
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
    )


def profile_text(cal: Calibration) -> str:
    """The hardware-profile YAML of a calibration (see :func:`write_profile`)."""
    tf = {dt: cal.matmul_flops_per_s.get(dt, 0.0) / 1e12 for dt in ("tf32", "bf16", "fp16")}
    tf["fp32"] = fp32_peak(cal) / 1e12
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
    pcie_bw = (cal.pcie_bandwidth_bytes_per_s / 1e9) if not cpu else bw
    pcie_tag = "[meas] host -> device copy, pinned memory" if not cpu else "[na] no host link"
    lines += [
        f"name: {cal.name}",
        f'display_name: "{cal.device_name} (calibrated)"',
        f"memory_gib: {cal.memory_bytes / GIB:.6g}          # [sys] "
        + ("physical RAM" if cpu else "torch.cuda.get_device_properties total_memory"),
        "peak_tflops:                      # [meas] matmul rate at the largest n (0: not run)",
        f"  fp32: {tf['fp32']:.6g}          # [meas]"
        + (
            " GEMM mix (above the square product)"
            if tf["fp32"] * 1e12 > cal.matmul_flops_per_s.get("fp32", 0.0)
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
    mm_eff, mem_eff, opt_eff = efficiencies(cal)
    lines += [
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
    lines.append("  collective: 1.0                 # [na] no collective measured")
    return "\n".join(lines) + "\n"


def adam_fp32_bytes_per_param() -> float:
    """Bytes the cost model charges per parameter for the fp32 AdamW step that
    :func:`measure_adam` times (``costs.optimizer_bytes_per_param``: 28 B)."""
    from simtrain.costs.compute import optimizer_bytes_per_param
    from simtrain.spec.scenario import TrainingSpec

    return optimizer_bytes_per_param(TrainingSpec(precision="fp32", optimizer="adamw"))


def fp32_peak(cal: Calibration) -> float:
    """The profile's fp32 peak: the square product at the largest size, or the GEMM mix where a
    noisy machine measured the mix faster (efficiency.matmul = mix / peak stays <= 1 and
    peak x efficiency is the measured mix rate either way)."""
    return max(cal.matmul_flops_per_s.get("fp32", 0.0), cal.gemm_flops_per_s)


def efficiencies(cal: Calibration) -> tuple[float, float, float | None]:
    """(efficiency.matmul, efficiency.memory_bound, efficiency.optimizer) of a calibration: the
    GEMM mix's FLOP/s over the fp32 square-product peak, the element-wise mix's and the AdamW
    step's cost-model bytes per second over the measured bandwidth (each at most 1; 1.0, 1.0
    and None where not measured). matmul is measured in fp32 and applies to every dtype."""
    bw = cal.memory_bandwidth_bytes_per_s
    peak = fp32_peak(cal)
    mm = cal.gemm_flops_per_s / peak if cal.gemm_flops_per_s and peak else 1.0
    mem = min(1.0, cal.elementwise_bytes_per_s / bw) if cal.elementwise_bytes_per_s else 1.0
    opt = None
    if cal.adam_params_per_s:
        opt = min(1.0, cal.adam_params_per_s * adam_fp32_bytes_per_param() / bw)
    return mm, mem, opt


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


def calibrate_command(device: str, out: str, threads: int | None = None) -> str:
    """What ``simtrain calibrate --device DEVICE --out PATH`` prints; writes the profile."""
    name = Path(out).stem
    cal = calibrate(device, name, threads=threads)
    p = write_profile(out, cal)
    return calibration_table(cal) + f"\n\nwrote {p} (hardware: {p})\n"


__all__ = [
    "Calibration", "calibrate", "calibrate_command", "calibration_table", "efficiencies",
    "elementwise_counted_bytes", "measure_adam", "measure_bandwidth", "measure_elementwise",
    "measure_matmul", "profile_text", "write_profile",
]  # fmt: skip
