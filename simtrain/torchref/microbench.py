"""The timed measurements of ``simtrain calibrate`` (PyTorch, imported lazily): matmul FLOP/s per
dtype and size, memory bandwidth, the AdamW rate, and the GEMM and element-wise mixes of a small
GPT with the work the cost model counts for them; see :mod:`simtrain.torchref.calibrate`."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

from simtrain.costs.compute import REFERENCE_HEAD_DIM
from simtrain.errors import SimtrainError

CPU_SIZES = (256, 512, 1024, 2048)
CUDA_SIZES = (1024, 2048, 4096, 8192)
STREAM_BYTES = 256 * 2**20  # per tensor: far beyond any CPU cache
# (micro_batch, seq_len, hidden, heads, vocab, layers) of the GPT whose kernels calibrate the
# matmul and element-wise efficiencies (its blocks weighted layers : 1 against its head). CPU:
# tests/data/closed_loop_cpu.yaml (a GPT the size a CPU trains; GPT-2 small's widths / 1.5);
# CUDA: a 7B-class shape (h 4096, 32 heads, 32 layers, s 2048, GPT-NeoX vocab 50304), b = 1.
CPU_ELEMENTWISE_SHAPE = (4, 256, 512, 8, 8192, 4)
CUDA_ELEMENTWISE_SHAPE = (1, 2048, 4096, 32, 50304, 32)
# The GEMM shape term's sweep: every (M, N, K) of these sizes (27 and 64 GEMMs), from skinny to
# square, in the GEMM mix's dtype (fp32), on which calibrate fits ``efficiency.gemm_edge_elements``.
CPU_GEMM_EDGE_SIZES = (32, 128, 512)
CUDA_GEMM_EDGE_SIZES = (128, 512, 2048, 8192)


#: (heads, seq_len) of the FlashAttention sweep on CUDA (batch 1, head dim 128, bf16, causal):
#: 16,384 to 1,048,576 query rows b·H·s, below and above where a GPU's thread blocks fill it,
#: few rows from few heads over long sequences, so that each call's kernels (>= ~0.1 ms on a
#: current GPU) outlast its dispatch from Python and the timing is the GPU's.
CUDA_FLASH_SHAPES = ((1, 16384), (2, 16384), (4, 8192), (8, 8192), (16, 4096), (32, 4096),
                     (64, 4096), (64, 16384))  # fmt: skip
#: The sweep's head dim: the one the classes' rates are at (their head-dim edge prices the others).
FLASH_HEAD_DIM = REFERENCE_HEAD_DIM
#: The narrow-head sweep that fits each class's head-dim edge D (costs.attention_shape): heads of
#: 64 (Llama-3.2-1B's, GPT-2's), twice the heads of three of the sweep's shapes, so the same
#: query rows per head and the same FLOPs.
FLASH_NARROW_HEAD_DIM = 64
CUDA_FLASH_NARROW_SHAPES = ((2, 16384), (16, 8192), (128, 4096))


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


def _torch_dtype(name: str):  # -> torch.dtype (torch imported lazily)
    """The torch dtype of a simtrain dtype name (``torchref.precision.TORCH_DTYPE``; tf32 is
    fp32 storage with TF32 matmuls switched on by the caller)."""
    from simtrain.torchref.precision import TORCH_DTYPE

    return TORCH_DTYPE["fp32" if name == "tf32" else name]


def _timed_matmuls(dtype: str, device: str, shapes: list[tuple[int, int, int]],
                   repeats: int) -> Iterator[tuple[tuple[int, int, int], float]]:  # fmt: skip
    """((m, k, n), seconds per call) of ``A @ B`` (A m x k, B k x n, in ``dtype``) for each shape
    in order, until one the device cannot run; TF32 on CUDA only for ``tf32`` (restored after)."""
    torch = _torch()
    dev = torch.device(device)
    td = _torch_dtype(dtype)
    prev = torch.backends.cuda.matmul.allow_tf32 if dev.type == "cuda" else None
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        for m, k, n in shapes:
            try:
                a = torch.randn(m, k, device=dev).to(td)
                b = torch.randn(k, n, device=dev).to(td)
                c = torch.empty(m, n, device=dev, dtype=td)
                t = _timed(torch, dev, lambda a=a, b=b, c=c: torch.matmul(a, b, out=c), repeats)
            except (RuntimeError, TypeError, NotImplementedError):
                return
            yield (m, k, n), t
    finally:
        if prev is not None:
            torch.backends.cuda.matmul.allow_tf32 = prev


def measure_matmul(
    dtype: str, device: str = "cpu", sizes: tuple[int, ...] = CPU_SIZES, repeats: int = 5
) -> dict[int, float]:
    """FLOP/s of ``A @ B`` (n x n, 2·n³ FLOPs) per size; {} if the device cannot run the dtype."""
    out: dict[int, float] = {}
    with closing(_timed_matmuls(dtype, device, [(n, n, n) for n in sizes], repeats)) as runs:
        for (n, _, _), t in runs:
            out[n] = 2.0 * n**3 / t
            if 8 * t > NEXT_CALL_LIMIT_S:  # the next size costs 8x the FLOPs
                break
    return out


def measure_gemm_shapes(dtype: str, device: str,
                        shapes: tuple[tuple[int, int, int], ...],
                        repeats: int = 5) -> dict[tuple[int, int, int], float]:  # fmt: skip
    """FLOP/s of ``A @ B`` with A ``M x K`` and B ``K x N`` (2·M·N·K FLOPs) for each (M, N, K)
    of ``shapes`` (the order of ``costs.compute.gemm_edge`` and of the GEMM tables), keyed the
    same, in order, stopping at the first the device cannot run ({} if it cannot run the
    dtype): the table ``costs.gemm_shape.fit_gemm_edge`` fits the GEMM shape term
    on."""
    mkn = [(m, k, n) for m, n, k in shapes]  # _timed_matmuls takes (M, K, N)
    with closing(_timed_matmuls(dtype, device, mkn, repeats)) as runs:
        return {(m, n, k): 2.0 * m * n * k / t for (m, k, n), t in runs}


def gemm_edge_shapes(sizes: tuple[int, ...]) -> tuple[tuple[int, int, int], ...]:
    """Every (M, N, K) with M, N and K in ``sizes``."""
    return tuple(itertools.product(sizes, repeat=3))


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
    """Parameter shapes of the one-block reference GPT
    (``simtrain.torchref.reference_model.ReferenceGPT``) at an element-wise calibration ``shape``
    (micro_batch, seq_len, hidden, heads, vocab, layers): embeddings, the block's linears, biases
    and norms, the final norm."""
    from simtrain.torchref.reference_model import ReferenceGPT

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


def mix_linears(h: int) -> list[tuple[int, int]]:
    """(in, out) of the GEMM mix's linears (:func:`measure_gemm_mix`): the reference model's
    q, k, v, o (h -> h), MLP up (h -> 4h) and down (4h -> h)."""
    return [(h, h)] * 4 + [(h, 4 * h), (4 * h, h)]


def gemm_mix_edge(shape: tuple[int, ...]) -> tuple[float, float]:
    """(block, head) ``costs.compute.gemm_edge`` of :func:`measure_gemm_mix`'s linear GEMMs,
    forward + backward (3x the forward's: the three GEMMs of a linear are the same sizes
    permuted): q, k, v, o (h -> h), MLP up (h -> 4h) and down (4h -> h), and the head (h -> V),
    each over M = b·s tokens. The attention core's batched GEMMs carry no shape term in the cost
    model and get none here. Times L, the FLOPs the shape term adds to the mix."""
    from simtrain.costs.compute import gemm_edge

    b, s, h, _, vocab, _ = shape
    linears = mix_linears(h)
    block = 3 * sum(gemm_edge(b * s, o, i) for i, o in linears)
    return block, 3 * gemm_edge(b * s, vocab, h)


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

    linears = mix_linears(h)
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
    (``simtrain.torchref.layers.LayerNorm``, tanh GeLU, masked softmax, ``F.cross_entropy``). The
    matmuls are left out: leaf tensors stand in for their outputs (attention output, MLP up and
    down projections, QKᵀ scores, logits), so the gradient sums at the two residual forks happen
    as in the model. ``shape`` = (micro_batch, seq_len, hidden, heads, vocab, layers)."""
    import math

    import torch.nn.functional as F

    from simtrain.torchref.layers import LayerNorm

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


def flash_causal_flops(heads: int, seq_len: int, head_dim: int = FLASH_HEAD_DIM,
                       batch: int = 1) -> tuple[float, float]:  # fmt: skip
    """(forward, backward) FLOPs of one causal attention call as the cost model counts them:
    the attention core of ``costs.block_flops`` for ``batch`` sequences of ``seq_len`` over
    ``heads`` heads of ``head_dim``, through ``costs.compute.flash_kernel_flops``."""
    from simtrain.costs.compute import block_flops, flash_kernel_flops

    m, t = _calibration_model((batch, seq_len, heads * head_dim, heads, 256, 1))
    return flash_kernel_flops(block_flops(m, t).attention_core, t)


def measure_flash_attention(device: str, shapes: tuple[tuple[int, int], ...],
                            head_dim: int = FLASH_HEAD_DIM, repeats: int = 5, dtype: str = "bf16"
                            ) -> dict[str, dict[tuple[int, int], tuple[float, float]]]:  # fmt: skip
    """kernel -> (heads, seq_len) -> (forward, backward) seconds of causal
    ``torch.nn.functional.scaled_dot_product_attention`` over one sequence (q, k and v of shape
    1 x heads x seq_len x head_dim), in order, each fused backend the device runs on its own
    (``sdpa_kernel`` with :data:`FLASH_BACKENDS`: FlashAttention-2 as ``fa2`` and, on CUDA,
    cuDNN's fused attention, which Transformer Engine uses on Hopper and Blackwell, as
    ``cudnn``), a backend's sweep stopping at the first shape it cannot run; {} where none
    runs. The backward is the forward-and-backward time less the forward's
    (``torch.autograd.grad``: no gradient accumulation in the timing)."""
    torch = _torch()
    dev = torch.device(device)
    td = _torch_dtype(dtype)
    out: dict[str, dict[tuple[int, int], tuple[float, float]]] = {}
    for name, backend in flash_backends(torch, dev):
        times: dict[tuple[int, int], tuple[float, float]] = {}
        for heads, s in shapes:
            t = _time_attention(torch, dev, backend, heads, s, head_dim, td, repeats)
            if not t:
                break
            times[(heads, s)] = t
        if times:
            out[name] = times
    return out


#: SDPA backends the flash sweep times (names in torch.nn.attention.SDPBackend), where present,
#: with the kernel (spec.hardware.ATTENTION_KERNELS) each runs.
FLASH_BACKENDS = (("FLASH_ATTENTION", "fa2"), ("CUDNN_ATTENTION", "cudnn"))


def flash_backends(torch: Any, dev: Any) -> list[tuple[str, Any]]:
    """(kernel, backend) of the :data:`FLASH_BACKENDS` this torch has (cuDNN's on CUDA only)."""
    from torch.nn.attention import SDPBackend

    pairs = FLASH_BACKENDS if dev.type == "cuda" else FLASH_BACKENDS[:1]
    return [(k, getattr(SDPBackend, n)) for n, k in pairs if hasattr(SDPBackend, n)]


def _time_attention(torch: Any, dev: Any, backend: Any, heads: int, s: int, head_dim: int,
                    td: Any, repeats: int) -> tuple[float, float] | None:  # fmt: skip
    """(forward, backward) seconds of one causal SDPA call through ``backend``; None where
    the backend cannot run it."""
    from torch.nn.attention import sdpa_kernel

    sdpa = torch.nn.functional.scaled_dot_product_attention
    try:
        q, k, v = (torch.randn(1, heads, s, head_dim, device=dev, dtype=td, requires_grad=True)
                   for _ in range(3))  # fmt: skip
        grad = torch.randn(1, heads, s, head_dim, device=dev, dtype=td)
        with sdpa_kernel(backend):
            fwd = _timed(torch, dev, lambda: sdpa(q, k, v, is_causal=True), repeats)

            def both() -> None:
                torch.autograd.grad(sdpa(q, k, v, is_causal=True), (q, k, v), grad)

            total = _timed(torch, dev, both, repeats)
    except (RuntimeError, TypeError, NotImplementedError):
        return None
    # timing noise can leave a pair's difference below nothing on the smallest calls: the
    # backward is kept positive (0.1 % of the pair, a guard, not a rate)
    return fwd, max(total - fwd, 1e-3 * total)
