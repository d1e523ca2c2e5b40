"""Measure one real training step of a reference PyTorch decoder (needs the optional ``torch``).

:func:`build_reference_model` turns a :class:`~simtrain.spec.model.ModelSpec` and a
:class:`~simtrain.spec.scenario.TrainingSpec` into a small, readable nanoGPT-style decoder;
:func:`measure_step` trains it for a few steps on random tokens and returns a
:class:`MeasuredStep` with exact byte counts (parameters, gradients, master weights, optimizer
state, tensors saved for backward, peak) so the analytical memory model can be checked against
what PyTorch really keeps.

Nothing else in :mod:`simtrain` imports this module at import time; torch stays optional.

Conventions (the analytical model counts what *this* implementation saves for backward):

* Pre-norm blocks ``x = x + drop(o(attn(norm1(x))))``, ``x = x + drop(mlp(norm2(x)))``;
  separate q, k, v, o linears; GeLU (tanh) or SwiGLU MLP; learned positions or rotary
  (``rotate_half``) on q and k; tied or untied LM head; loss
  ``cross_entropy(logits.float().view(-1, V), targets.view(-1))``, or with ``cross_entropy:
  fused`` a block-wise kernel that saves only the logits and an fp32 log-sum-exp per row.
* ``flash_attention`` -> ``F.scaled_dot_product_attention(is_causal=True, enable_gqa=...)``
  with ``dropout_p=0`` (attention dropout is *not* applied on this path); otherwise the explicit
  math path (``repeat_interleave`` for GQA, masked_fill with a causal-mask buffer, softmax,
  attention dropout, ``@ v``).
* Device-independent saved tensors. The measurement is meant to predict CUDA runs, so three
  CPU kernels whose saved tensors differ from the CUDA ones are replaced by small equivalents:

  - dropout always calls ``torch.native_dropout`` (saves a 1-byte bool mask, as CUDA does; the
    CPU ``F.dropout`` saves a full-precision noise tensor);
  - on CPU, LayerNorm saves (input, fp32 mean, fp32 rstd) and RMSNorm saves (input, fp32 rstd),
    exactly like CUDA's ``native_layer_norm`` / ``_fused_rms_norm`` (the CPU kernels keep
    mean/rstd in 16 bits, and CPU ``rms_norm`` is an unfused decomposition);
  - under autocast, norms and the math-path softmax run in fp32 as CUDA's autocast policy does
    (CPU autocast runs softmax in 16 bits).

  The flash path uses whatever SDPA kernel the device has: CPU flash saves q, k, v, out and an
  fp32 logsumexp (b, heads, s) -- the same set as CUDA flash (which adds two 8-byte RNG scalars).
* Mixed precision: ``fp32``; ``bf16``/``fp16`` Megatron / apex-O2 style (16-bit model and
  gradients, fp32 master copy of the trainable parameters for the optimizer; fp16 uses a static
  loss scale of 2**10 with no overflow check); ``bf16_pure`` (bf16 model, optimizer on the bf16
  parameters); ``amp_bf16``/``amp_fp16`` (fp32 model under ``torch.autocast``; fp16 autocast on
  CPU works for every op used here in torch >= 2.4).
* PEFT: ``lora``, ``qlora`` (NF4 *emulation*: a uint8 tensor of packed 4-bit codes, in*out/2
  bytes, plus one fp32 absmax per ``quant_block_size`` block, no double quantisation; the weight
  is dequantised on the fly by an autograd.Function that saves only the packed storage),
  ``adapter`` (Houlsby), ``prefix``, ``prompt``, ``linear_probe``, ``lp_ft``, ``bitfit``.
  LoRA targets absent from the model (``gate`` on a GeLU MLP) are skipped. Prefix keys/values
  carry no position (queries keep positions 0..s-1); prompt tokens take positions 0..P-1 and
  their targets are ignored (-100). A frozen body under ``recompute: full`` still saves each
  block's input: torch's checkpoint records its inputs whenever any grad is needed downstream
  (its internal dummy requires grad).
* ``recompute``: ``full`` checkpoints every block (non-reentrant); ``selective`` checkpoints the
  attention core only (QK^T, mask, softmax, dropout, @V -- or SDPA), Korthikanti et al. 2022.
* ``training.offload`` is ignored (everything lives on ``device``).

Cross-checked on CPU: the storage-tracked peak agrees with the CPU allocator's own alloc/free
events (torch.profiler ``profile_memory``) to within 0.5 % (the rest: kernel workspaces).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import checkpoint

from simtrain.costs.memory import PRECISIONS
from simtrain.spec.model import ModelSpec
from simtrain.spec.scenario import TrainingSpec

# The precision recipes follow memory.PRECISIONS, so that every precision the memory model knows
# can be measured: 4-byte parameters are fp32 (autocast runs over them), 2-byte ones take the
# compute dtype.
_TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PARAM_DTYPE = {
    name: torch.float32 if p.param == 4 else _TORCH_DTYPE[p.compute_dtype]
    for name, p in PRECISIONS.items()
}
AUTOCAST_DTYPE = {
    name: _TORCH_DTYPE[p.compute_dtype]
    for name, p in PRECISIONS.items()
    if p.weight_copy  # torch.autocast keeps a 16-bit copy of each weight
}
MASTER_WEIGHTS = tuple(n for n, p in PRECISIONS.items() if p.master)  # fp32 master copy
# An fp32 gradient buffer per trainable parameter that each backward's 16-bit gradient is added
# into and the optimizer steps the master weights with (nanotron's FP32GradientAccumulator,
# optim/gradient_accumulator.py).
FP32_GRAD_ACCUMULATION = tuple(n for n, p in PRECISIONS.items() if p.grad_accum)
FP16_LOSS_SCALE = 2.0**10  # static loss scale for fp16 and amp_fp16

# NF4 code book (Dettmers et al. 2023; bitsandbytes ``functional.py``), ascending.
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip


# =============================================================================================
# Building blocks

_PENDING_LABELS: list[str] = []  # names of the tensors an autograd.Function is about to save


def _label_next_saved(op: str, *names: str) -> None:
    """Describe, for the saved-tensor report, what a custom Function saves (packed in order
    right after its forward returns)."""
    _PENDING_LABELS[:] = [f"{op} {n}" for n in names]


class Dropout(nn.Dropout):
    """``nn.Dropout`` that always uses the fused ``native_dropout`` kernel: it saves a bool mask
    (1 byte per element) for backward on every device, as CUDA's ``F.dropout`` does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return torch.native_dropout(x, self.p, True)[0]


class _LayerNormFn(torch.autograd.Function):
    """LayerNorm saving (input, fp32 mean, fp32 rstd) like CUDA ``native_layer_norm``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
        xf = x.float()
        mean = xf.mean(-1, keepdim=True)
        rstd = torch.rsqrt(xf.var(-1, unbiased=False, keepdim=True) + eps)
        y = ((xf - mean) * rstd * weight.float() + bias.float()).to(x.dtype)
        ctx.save_for_backward(x, mean, rstd, weight)
        _label_next_saved("layer_norm", "input", "mean", "rstd", "weight")
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        x, mean, rstd, weight = ctx.saved_tensors
        xhat = (x.float() - mean) * rstd
        gf = g.float()
        dims = tuple(range(g.dim() - 1))
        gw = (gf * xhat).sum(dims).to(weight.dtype) if ctx.needs_input_grad[1] else None
        gb = gf.sum(dims).to(weight.dtype) if ctx.needs_input_grad[2] else None
        gx = None
        if ctx.needs_input_grad[0]:
            gxh = gf * weight.float()
            gx = rstd * (
                gxh - gxh.mean(-1, keepdim=True) - xhat * (gxh * xhat).mean(-1, keepdim=True)
            )
            gx = gx.to(x.dtype)
        return gx, gw, gb, None


# Rows per block of the fused cross-entropy: its one fp32 temporary is ROWS x V x 4 bytes (the
# real kernel keeps a block in registers; 8 rows of a 50k vocabulary are 1.6 MB).
FUSED_CE_ROWS = 8


class _FusedCrossEntropyFn(torch.autograd.Function):
    """Mean cross-entropy with the memory behaviour of flash-attn's fused kernel
    (``flash_attn/losses/cross_entropy.py``): the log-sum-exp is computed row block by row block
    in fp32, only the logits (in their own dtype) and one fp32 log-sum-exp per row are saved,
    and the backward writes one logit gradient in the logits' dtype. Targets -100 are ignored."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n = logits.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        for i in range(0, n, FUSED_CE_ROWS):
            lse[i : i + FUSED_CE_ROWS] = torch.logsumexp(logits[i : i + FUSED_CE_ROWS].float(), -1)
        valid = targets != -100
        picked = logits.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1).float()
        count = valid.sum().clamp(min=1)
        loss = ((lse - picked) * valid).sum() / count
        ctx.save_for_backward(logits, lse, targets)
        _label_next_saved("fused_cross_entropy", "logits", "lse", "targets")
        return loss

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        logits, lse, targets = ctx.saved_tensors
        valid = targets != -100
        scale = g.float() / valid.sum().clamp(min=1)
        grad = torch.empty_like(logits)
        for i in range(0, logits.shape[0], FUSED_CE_ROWS):
            rows = slice(i, i + FUSED_CE_ROWS)
            p = logits[rows].to(torch.float32, copy=True).sub_(lse[rows].unsqueeze(1)).exp_()
            t = targets[rows]
            p[valid[rows], t[valid[rows]]] -= 1.0
            p *= scale * valid[rows].unsqueeze(1)
            grad[rows] = p.to(logits.dtype)
        return grad, None


class _RMSNormFn(torch.autograd.Function):
    """RMSNorm saving (input, fp32 rstd) like CUDA ``_fused_rms_norm``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float):
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        y = (xf * rstd * weight.float()).to(x.dtype)
        ctx.save_for_backward(x, rstd, weight)
        _label_next_saved("rms_norm", "input", "rstd", "weight")
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        x, rstd, weight = ctx.saved_tensors
        xhat = x.float() * rstd
        gf = g.float()
        dims = tuple(range(g.dim() - 1))
        gw = (gf * xhat).sum(dims).to(weight.dtype) if ctx.needs_input_grad[1] else None
        gx = None
        if ctx.needs_input_grad[0]:
            gxh = gf * weight.float()
            gx = (rstd * (gxh - xhat * (gxh * xhat).mean(-1, keepdim=True))).to(x.dtype)
        return gx, gw, None


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (weight and bias). On CPU it runs :class:`_LayerNormFn` so the saved
    tensors match CUDA (the CPU kernel keeps mean/rstd in the input's 16-bit dtype)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            return _LayerNormFn.apply(x, self.weight, self.bias, self.eps)
        return super().forward(x)


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` (eps 1e-5). On CPU it runs :class:`_RMSNormFn` (CUDA's fused kernel
    saves input and rstd; the CPU ``rms_norm`` is an unfused decomposition saving more)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            return _RMSNormFn.apply(x, self.weight, self.eps)
        return super().forward(x)


def make_norm(spec: ModelSpec) -> nn.Module:
    if spec.norm == "layernorm":
        return LayerNorm(spec.hidden, eps=1e-5, bias=True)
    return RMSNorm(spec.hidden, eps=1e-5)


@contextmanager
def _fp32_region(x: torch.Tensor) -> Iterator[None]:
    """Autocast off: the ops inside run in fp32, as CUDA autocast runs norms and softmax."""
    with torch.autocast(x.device.type, enabled=False):
        yield


def _autocasting(x: torch.Tensor) -> bool:
    return torch.is_autocast_enabled(x.device.type)


def apply_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if _autocasting(x):
        with _fp32_region(x):
            return norm(x.float())
    return norm(x)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021), the Llama/HF ``rotate_half`` form."""
    if cos.dtype != x.dtype:
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


# ---- PEFT modules -------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """y = base(x) + (x @ A @ B) * alpha / r (Hu et al. 2021); A (in x r) Kaiming, B (r x out)
    zeros, no LoRA dropout. The base layer is frozen."""

    def __init__(self, base: nn.Module, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        dtype = base.compute_dtype if isinstance(base, NF4Linear) else base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(self.in_features, rank, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(rank, self.out_features, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A.T, a=math.sqrt(5))  # as HF PEFT (fan_in = in)
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A @ self.lora_B) * self.scaling


def quantize_nf4(w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4-bit NormalFloat codes packed two per byte (uint8, ceil(n/block)*block/2 bytes) and one
    fp32 absmax per block of ``block`` elements (ceil(n/block)*4 bytes)."""
    flat = w.detach().float().reshape(-1)
    pad = (-flat.numel()) % block
    if pad:
        flat = F.pad(flat, (0, pad))
    blocks = flat.view(-1, block)
    absmax = blocks.abs().amax(dim=1).clamp_min(1e-12)
    code = torch.tensor(NF4_CODE, device=w.device)
    codes = torch.bucketize(blocks / absmax[:, None], (code[1:] + code[:-1]) / 2).view(-1)
    if codes.numel() % 2:
        codes = F.pad(codes, (0, 1))
    packed = ((codes[0::2] << 4) | codes[1::2]).to(torch.uint8)
    return packed, absmax


def dequantize_nf4(
    packed: torch.Tensor, absmax: torch.Tensor, shape: tuple[int, int], block: int, dtype: Any
) -> torch.Tensor:
    """16-bit weight from NF4 codes (transients: int32 codes 4n bytes, the n-element result)."""
    n = shape[0] * shape[1]
    codes = torch.empty(2 * packed.numel(), dtype=torch.int32, device=packed.device)
    codes[0::2] = packed >> 4
    codes[1::2] = packed & 15
    w = torch.tensor(NF4_CODE, device=packed.device, dtype=dtype)[codes]
    del codes
    w = w[: absmax.numel() * block].view(-1, block).mul_(absmax[:, None].to(dtype))
    return w.view(-1)[:n].view(shape)


class _NF4LinearFn(torch.autograd.Function):
    """x @ dequant(W)^T for a frozen 4-bit weight. Saves only the packed codes and absmax
    (already resident) and dequantises again in backward, as bitsandbytes' matmul_4bit does."""

    @staticmethod
    def forward(ctx: Any, x, packed, absmax, shape, block):  # type: ignore[no-untyped-def]
        w = dequantize_nf4(packed, absmax, shape, block, x.dtype)
        ctx.save_for_backward(packed, absmax)
        _label_next_saved("nf4_linear", "qweight", "absmax")
        ctx.shape, ctx.block = shape, block
        return x @ w.t()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        packed, absmax = ctx.saved_tensors
        w = dequantize_nf4(packed, absmax, ctx.shape, ctx.block, g.dtype)
        return g @ w, None, None, None, None


class NF4Linear(nn.Module):
    """A frozen linear layer stored in 4 bits (QLoRA emulation: bitsandbytes needs CUDA).

    Buffers ``qweight`` (uint8, two codes a byte) and ``absmax`` (fp32 per block) are persistent
    and counted as parameter bytes; the bias (if any) stays a frozen 16-bit parameter."""

    def __init__(self, linear: nn.Linear, block: int) -> None:
        super().__init__()
        w = linear.weight
        self.out_features, self.in_features = w.shape
        self.compute_dtype = w.dtype
        self.block = block
        packed, absmax = quantize_nf4(w, block)
        self.register_buffer("qweight", packed)
        self.register_buffer("absmax", absmax)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _autocasting(x):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        shape = (self.out_features, self.in_features)
        y = _NF4LinearFn.apply(x, self.qweight, self.absmax, shape, self.block)
        return y if self.bias is None else y + self.bias.to(y.dtype)


class Adapter(nn.Module):
    """Houlsby et al. 2019 bottleneck: x + up(gelu(down(x))); up starts at zero."""

    def __init__(self, hidden: int, size: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = nn.GELU(approximate="tanh")
        self.up = nn.Linear(size, hidden)

    def reset(self) -> None:
        nn.init.normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


# ---- decoder ------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, training: TrainingSpec, method: str) -> None:
        super().__init__()
        h, kv = spec.hidden, spec.kv_dim
        qkv_bias = spec.bias or spec.qkv_bias
        self.heads, self.kv_heads, self.head_dim = spec.heads, spec.kv_heads, spec.head_dim
        self.q = nn.Linear(h, h, bias=qkv_bias)
        self.k = nn.Linear(h, kv, bias=qkv_bias)
        self.v = nn.Linear(h, kv, bias=qkv_bias)
        self.o = nn.Linear(h, h, bias=spec.bias)
        self.attn_drop = Dropout(spec.dropout)
        self.flash = spec.flash_attention
        self.selective = training.recompute == "selective"
        self.prefix_k: nn.Parameter | None = None
        self.prefix_v: nn.Parameter | None = None
        if method == "prefix":
            p = training.peft.prefix_length
            self.prefix_k = nn.Parameter(torch.empty(p, kv))
            self.prefix_v = nn.Parameter(torch.empty(p, kv))

    def core(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """softmax(q k^T / sqrt(d) + causal mask) v, (b, heads, s, d) -> (b, heads, s, d)."""
        gqa = self.kv_heads < self.heads
        if self.flash:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=mask is None, enable_gqa=gqa
            )
        if gqa:  # like HF repeat_kv: every query head gets its own copy of K and V
            rep = self.heads // self.kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        assert mask is not None
        att = att.masked_fill(mask, float("-inf"))
        if _autocasting(att):
            with _fp32_region(att):
                att = torch.softmax(att.float(), dim=-1)
        else:
            att = torch.softmax(att, dim=-1)
        att = self.attn_drop(att)
        return att @ v

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor | None,
        sin: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        b, s, h = x.shape
        d = self.head_dim
        q = self.q(x).view(b, s, self.heads, d).transpose(1, 2)
        k = self.k(x).view(b, s, self.kv_heads, d).transpose(1, 2)
        v = self.v(x).view(b, s, self.kv_heads, d).transpose(1, 2)
        if cos is not None and sin is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.prefix_k is not None and self.prefix_v is not None:
            p = self.prefix_k.shape[0]
            pk = self.prefix_k.view(p, self.kv_heads, d).transpose(0, 1).to(k.dtype)
            pv = self.prefix_v.view(p, self.kv_heads, d).transpose(0, 1).to(v.dtype)
            k = torch.cat([pk.unsqueeze(0).expand(b, -1, -1, -1), k], dim=2)
            v = torch.cat([pv.unsqueeze(0).expand(b, -1, -1, -1), v], dim=2)
        if self.selective and torch.is_grad_enabled():
            y = checkpoint(self.core, q, k, v, mask, use_reentrant=False)
        else:
            y = self.core(q, k, v, mask)
        y = y.transpose(1, 2).contiguous().view(b, s, h)
        return self.o(y)


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        h, f = spec.hidden, spec.ffn_hidden
        self.swiglu = spec.mlp == "swiglu"
        if self.swiglu:
            self.gate = nn.Linear(h, f, bias=spec.bias)
        self.up = nn.Linear(h, f, bias=spec.bias)
        self.act = nn.GELU(approximate="tanh")
        self.down = nn.Linear(f, h, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(self.act(self.up(x)))


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, training: TrainingSpec, method: str) -> None:
        super().__init__()
        self.norm1 = make_norm(spec)
        self.attn = Attention(spec, training, method)
        self.drop1 = Dropout(spec.dropout)
        self.norm2 = make_norm(spec)
        self.mlp = MLP(spec)
        self.drop2 = Dropout(spec.dropout)
        size = training.peft.adapter_size
        self.adapter_attn = Adapter(spec.hidden, size) if method == "adapter" else None
        self.adapter_mlp = Adapter(spec.hidden, size) if method == "adapter" else None
        self.full_recompute = training.recompute == "full"

    def block(self, x: torch.Tensor, cos: Any, sin: Any, mask: Any) -> torch.Tensor:
        a = self.drop1(self.attn(apply_norm(self.norm1, x), cos, sin, mask))
        if self.adapter_attn is not None:
            a = self.adapter_attn(a)
        x = x + a
        m = self.drop2(self.mlp(apply_norm(self.norm2, x)))
        if self.adapter_mlp is not None:
            m = self.adapter_mlp(m)
        return x + m

    def forward(self, x: torch.Tensor, cos: Any, sin: Any, mask: Any) -> torch.Tensor:
        if self.full_recompute and torch.is_grad_enabled():
            return checkpoint(self.block, x, cos, sin, mask, use_reentrant=False)
        return self.block(x, cos, sin, mask)


class ReferenceGPT(nn.Module):
    """nanoGPT-style decoder; ``forward(idx, targets)`` returns the mean cross-entropy loss."""

    def __init__(self, spec: ModelSpec, training: TrainingSpec) -> None:
        super().__init__()
        peft = training.peft
        method = _effective_method(training)
        self.spec, self.method = spec, method
        self.cross_entropy = training.cross_entropy
        self.prompt_length = peft.prompt_length if method == "prompt" else 0
        self.prefix_length = prefix = peft.prefix_length if method == "prefix" else 0
        t = training.seq_len + self.prompt_length
        if spec.positions == "learned" and t > spec.max_positions:
            raise ValueError(
                f"seq_len + prompt_length = {t} exceeds max_positions = {spec.max_positions}"
            )
        h = spec.hidden
        self.wte = nn.Embedding(spec.vocab, h)
        self.wpe = nn.Embedding(spec.max_positions, h) if spec.positions == "learned" else None
        self.prompt = (
            nn.Parameter(torch.empty(self.prompt_length, h)) if method == "prompt" else None
        )
        self.drop = Dropout(spec.dropout)
        self.blocks = nn.ModuleList(Block(spec, training, method) for _ in range(spec.layers))
        self.norm_f = make_norm(spec)
        untied = not spec.tied_embeddings or method == "linear_probe"
        self.lm_head = nn.Linear(h, spec.vocab, bias=False) if untied else None

        # Constant, non-persistent buffers sized for this run's sequence length.
        if self.wpe is not None:
            self.register_buffer("pos_ids", torch.arange(t), persistent=False)
        if spec.positions == "rotary":
            d = spec.head_dim
            inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
            freqs = torch.outer(torch.arange(t, dtype=torch.float32), inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            self.register_buffer("rope_cos", emb.cos(), persistent=False)
            self.register_buffer("rope_sin", emb.sin(), persistent=False)
        masked = torch.ones(t, prefix + t, dtype=torch.bool).triu(prefix + 1)  # key j > query i
        if not spec.flash_attention:
            self.register_buffer("causal_mask", masked, persistent=False)  # True = masked out
        elif prefix:
            self.register_buffer("attn_allowed", ~masked, persistent=False)  # True = attend
        self._init_weights(spec)

    def _init_weights(self, spec: ModelSpec) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            elif isinstance(m, Adapter):
                m.reset()
        for blk in self.blocks:
            for p in (blk.attn.prefix_k, blk.attn.prefix_v):
                if p is not None:
                    nn.init.normal_(p, std=0.02)
        with torch.no_grad():
            if self.prompt is not None:  # Lester et al. 2021: initialise from vocabulary rows
                rows = torch.randint(spec.vocab, (self.prompt_length,))
                self.prompt.copy_(self.wte.weight[rows])
            if self.lm_head is not None and self.method == "linear_probe" and spec.tied_embeddings:
                self.lm_head.weight.copy_(self.wte.weight)  # new untied probe head

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        b, s = idx.shape
        x = self.wte(idx)
        if self.prompt is not None:
            x = torch.cat([self.prompt.unsqueeze(0).expand(b, -1, -1), x], dim=1)
            ignore = targets.new_full((b, self.prompt_length), -100)
            targets = torch.cat([ignore, targets], dim=1)
        t = x.shape[1]
        if self.wpe is not None:
            x = x + self.wpe(self.pos_ids[:t])
        x = self.drop(x)
        cos = sin = None
        if self.spec.positions == "rotary":
            cos, sin = self.rope_cos[:t], self.rope_sin[:t]
            if _autocasting(x):  # cast once per forward, not in every layer
                dtype = torch.get_autocast_dtype(x.device.type)
                cos, sin = cos.to(dtype), sin.to(dtype)
        mask = None  # flash without prefix: is_causal=True
        if not self.spec.flash_attention:
            mask = self.causal_mask[:t, : self.prefix_length + t]
        elif self.prefix_length:
            mask = self.attn_allowed[:t, : self.prefix_length + t]
        for blk in self.blocks:
            x = blk(x, cos, sin, mask)
        x = apply_norm(self.norm_f, x)
        logits = self.lm_head(x) if self.lm_head is not None else F.linear(x, self.wte.weight)
        v = logits.shape[-1]
        if self.cross_entropy == "fused":
            return _FusedCrossEntropyFn.apply(logits.reshape(-1, v), targets.reshape(-1))
        return F.cross_entropy(logits.float().view(-1, v), targets.reshape(-1), ignore_index=-100)


def _effective_method(training: TrainingSpec) -> str:
    method = training.peft.method
    if method == "lp_ft":
        return "linear_probe" if training.peft.phase == "probe" else "none"
    return method


def _trainable(name: str, method: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    if method == "none":
        return True
    if method in ("lora", "qlora"):
        return leaf in ("lora_A", "lora_B")
    if method == "adapter":
        return ".adapter_" in name
    if method == "prefix":
        return leaf in ("prefix_k", "prefix_v")
    if method == "prompt":
        return name == "prompt"
    if method == "linear_probe":
        return name.startswith("lm_head.")
    if method == "bitfit":
        return leaf == "bias"
    raise ValueError(f"unknown PEFT method {method!r}")


def build_reference_model(spec: ModelSpec, training: TrainingSpec) -> nn.Module:
    """The reference decoder in ``training.precision``'s parameter dtype, with PEFT applied and
    ``requires_grad`` set on exactly the trainable parameters. Built on the CPU; move it with
    ``.to(device)`` (never ``.to(dtype)``: QLoRA absmax must stay fp32)."""
    if training.precision not in PARAM_DTYPE:
        raise ValueError(f"unknown precision {training.precision!r}")
    method = _effective_method(training)
    model = ReferenceGPT(spec, training)
    model.to(PARAM_DTYPE[training.precision])
    peft = training.peft
    if method in ("lora", "qlora"):
        for blk in model.blocks:
            for parent, names in (
                (blk.attn, ("q", "k", "v", "o")),
                (blk.mlp, ("gate", "up", "down")),
            ):
                for name in names:
                    base = getattr(parent, name, None)
                    if base is None:
                        continue  # e.g. "gate" on a GeLU MLP: not a module of this model
                    if method == "qlora":
                        base = NF4Linear(base, peft.quant_block_size)
                    if name in peft.target_modules:
                        base = LoRALinear(base, peft.rank, peft.alpha)
                    setattr(parent, name, base)
    trainable = 0
    for name, p in model.named_parameters():
        p.requires_grad_(_trainable(name, method))
        trainable += p.numel() if p.requires_grad else 0
    if trainable == 0:
        raise ValueError(f"PEFT method {method!r} leaves no trainable parameter in this model")
    return model.train()


# =============================================================================================
# Instrumentation


def _storage(t: torch.Tensor) -> tuple[int, int]:
    st = t.untyped_storage()
    return st.data_ptr(), st.nbytes()


class _StorageTracker(TorchDispatchMode):
    """Live tensor-storage bytes, op by op. Every output storage of every ATen op is registered
    once with a weakref whose callback fires when the storage is freed (storages keep their
    Python object alive as long as the C++ storage lives). Each storage is tagged:
    ``param`` (parameters, persistent buffers), ``buffer`` (constant buffers), ``state``
    (optimizer state, master weights), ``act`` (anything computed from the batch), ``wcopy``
    (computed from parameters only, e.g. autocast casts of weights), ``const`` (computed from
    buffers or from nothing, e.g. ``arange``). Allocations inside a kernel (workspaces) are not
    seen."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._info: dict[int, tuple[weakref.ref, int, str]] = {}

    def add(self, t: torch.Tensor, tag: str, retag: bool = False) -> None:
        st = t.untyped_storage()
        ptr, n = st.data_ptr(), st.nbytes()
        if ptr == 0 or n == 0:
            return
        info = self._info.get(ptr)
        if info is not None and info[0]() is st:
            if n != info[1] or retag:
                self.live += n - info[1]
                self._info[ptr] = (info[0], n, tag if retag else info[2])
                self.peak = max(self.peak, self.live)
            return
        if info is not None:  # a dead storage whose address was reused
            self.live -= info[1]
        ref = weakref.ref(st, functools.partial(self._freed, ptr))
        self._info[ptr] = (ref, n, tag)
        self.live += n
        self.peak = max(self.peak, self.live)

    def _freed(self, ptr: int, ref: weakref.ref) -> None:
        info = self._info.get(ptr)
        if info is not None and info[0] is ref:
            del self._info[ptr]
            self.live -= info[1]

    def tag(self, t: torch.Tensor) -> str:
        info = self._info.get(t.untyped_storage().data_ptr())
        return info[2] if info is not None else "act"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = [o for o in tree_leaves(out) if isinstance(o, torch.Tensor)]
        if outs:
            tags = {self.tag(a) for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
            if "act" in tags:
                new = "act"
            elif tags & {"param", "wcopy"}:
                new = "wcopy"
            elif tags & {"state"}:
                new = "state"
            else:
                new = "const"
            for o in outs:
                self.add(o, new)
        return out


class _FunctionNames(TorchFunctionMode):
    """Remembers the torch-level function being called (``linear``, ``softmax``...)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, tuple[Any, ...]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = getattr(func, "__name__", None) or str(func)
        self.stack.append((name, tuple(args) + tuple(kwargs.values())))
        try:
            return func(*args, **kwargs)
        finally:
            self.stack.pop()


@dataclass
class _Saved:
    path: str  # module that saved it (e.g. "blocks.0.attn.q")
    op: str  # torch function / role, e.g. "linear input0"
    shape: tuple[int, ...]
    dtype: str
    ptr: int
    nbytes: int
    tag: str
    charged: int = 0  # storage bytes counted here (0 for a repeat or a parameter)
    note: str = ""


class _SavedRecorder:
    """saved_tensors_hooks pack hook + module-path stack; stores metadata only (no tensor
    references, so recording does not extend any lifetime)."""

    def __init__(self, model: nn.Module, tracker: _StorageTracker, names: _FunctionNames) -> None:
        self.tracker, self.names = tracker, names
        self.path: list[str] = []
        self.records: list[_Saved] = []
        self.handles = []
        for name, mod in model.named_modules():
            self.handles.append(mod.register_forward_pre_hook(functools.partial(self._push, name)))
            self.handles.append(mod.register_forward_hook(self._pop, always_call=True))

    def _push(self, name: str, *_: Any) -> None:
        self.path.append(name or "model")

    def _pop(self, *_: Any) -> None:
        self.path.pop()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        ptr, n = _storage(t)
        if self.names.stack:
            _PENDING_LABELS.clear()
            fname, args = self.names.stack[-1]
            op = f"{fname} output/internal"
            tensors = [(i, a) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
            for i, a in tensors:
                if a.untyped_storage().data_ptr() == ptr:
                    same = a is t or (a.shape == t.shape and a.stride() == t.stride())
                    op = f"{fname} input{i}" + ("" if same else " (view)")
                    break
            else:
                if fname == "native_dropout" and t.dtype == torch.bool:
                    op = "native_dropout mask"
                elif t.is_floating_point():
                    # a cast made by autocast (of a weight if the saved storage is a "wcopy")
                    weight = self.tracker.tag(t) == "wcopy"
                    hits = [
                        i
                        for i, a in tensors
                        if a.is_floating_point()
                        and a.dtype != t.dtype
                        and a.numel() == t.numel()
                        and (self.tracker.tag(a) in ("param", "wcopy")) == weight
                    ]
                    if hits:
                        op = f"{fname} input{hits[0]} (autocast copy)"
        elif _PENDING_LABELS:
            op = _PENDING_LABELS.pop(0)
        else:
            op = "checkpoint input"  # torch.utils.checkpoint's _NoopSaveInputs
        tag = self.tracker.tag(t)
        self.records.append(
            _Saved(self.path[-1] if self.path else "model", op, tuple(t.shape),
                   str(t.dtype).replace("torch.", ""), ptr, n, tag)
        )  # fmt: skip
        return t.detach()


# =============================================================================================
# Measurement


@dataclass(frozen=True)
class MeasuredStep:
    """Exact bytes of one measured training step (one micro-batch, forward + backward + step).

    parameter_bytes: every parameter (trainable and frozen, each storage once -- a tied head is
        counted once) plus persistent buffers (QLoRA's packed codes and absmax).
    trainable_params / frozen_params: element counts (frozen includes 4-bit weights).
    master_weight_bytes: fp32 master copies (``bf16``/``fp16`` precision only).
    gradient_bytes: ``.grad`` of the trainable parameters right after backward (param dtype).
    optimizer_state_bytes: optimizer state tensors after a step, *without* the scalar ``step``
        counters, which are ``optimizer_step_counter_bytes`` (Adam: 4 bytes per tensor).
    activation_bytes: storage saved for backward at the end of the forward pass (loss
        included), each storage counted once at its first saver, excluding parameters,
        storages computed from parameters only (``weight_copy_bytes``: autocast casts of
        weights) and constants (``constant_saved_bytes``: causal mask, rotary tables, position
        ids, masks derived from them).
    block_activation_bytes: activation bytes saved by each block; ``activation_bytes_per_layer``
        is the last block's (block 0 can be smaller under PEFT: its input needs no grad).
    buffer_bytes: non-persistent buffers (rotary tables, causal mask, position ids).
    saved_tensors: (description, shape, dtype, bytes counted) for the first and the last block
        and the ops outside blocks. Description = "module path: torch function + role [tag]";
        bytes is 0 for parameters and for a storage already counted (noted in the text).
    peak_bytes: peak live tensor bytes during the instrumented step (parameters, gradients,
        optimizer state, master weights, activations, temporaries). CPU: storage tracker
        (``tracked_peak_bytes``); CUDA: ``torch.cuda.max_memory_allocated``.
    step_time_s: median wall time of the timed (uninstrumented) steps; ``step_times_s`` all of
        them (their spread says how noisy the machine was), ``threads`` torch's intra-op
        threads while they ran."""

    parameter_bytes: int
    trainable_params: int
    frozen_params: int
    master_weight_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    optimizer_step_counter_bytes: int
    activation_bytes: int
    activation_bytes_per_layer: int
    block_activation_bytes: tuple[int, ...]
    weight_copy_bytes: int
    constant_saved_bytes: int
    buffer_bytes: int
    saved_tensors: tuple[tuple[str, tuple[int, ...], str, int], ...]
    peak_bytes: int
    tracked_peak_bytes: int
    step_time_s: float
    loss: float
    micro_batch: int
    seq_len: int
    device: str
    torch_version: str
    step_times_s: tuple[float, ...] = ()
    threads: int = 0


def _tensor_bytes(tensors: Any) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        ptr, n = _storage(t)
        if ptr not in seen:
            seen.add(ptr)
            total += n
    return total


def make_optimizer(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """torch.optim optimizers with ``foreach=False`` (no multi-tensor temporaries)."""
    lr = 1e-4
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.0, foreach=False)
    if name == "sgd_momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=False)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, foreach=False)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01, foreach=False)
    if name == "adafactor":
        return torch.optim.Adafactor(params, lr=1e-2, foreach=False)
    if name == "adam8bit":
        raise NotImplementedError("adam8bit needs bitsandbytes on CUDA")
    raise ValueError(f"unknown optimizer {name!r}")


class _Trainer:
    """One training step under the precision recipe of ``training.precision``."""

    def __init__(self, model: ReferenceGPT, training: TrainingSpec, device: torch.device) -> None:
        self.model, self.device = model, device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.autocast = AUTOCAST_DTYPE.get(training.precision)
        fp16 = PRECISIONS[training.precision].compute_dtype == "fp16"
        self.scale = FP16_LOSS_SCALE if fp16 else 1.0
        self.masters: list[torch.Tensor] = []
        if training.precision in MASTER_WEIGHTS:
            self.masters = [p.detach().float().clone() for p in self.params]
        self.accum: list[torch.Tensor] = []
        if training.precision in FP32_GRAD_ACCUMULATION:
            self.accum = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.opt = make_optimizer(training.optimizer, self.masters or self.params)

    def zero_grad(self) -> None:
        for p in self.params + self.masters:
            p.grad = None

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.autocast is not None:
            with torch.autocast(self.device.type, dtype=self.autocast):
                return self.model(idx, targets)
        return self.model(idx, targets)

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.scale if self.scale != 1.0 else loss).backward()
        if self.accum:
            with torch.no_grad():
                for a, p in zip(self.accum, self.params, strict=True):
                    if p.grad is not None:
                        a.add_(p.grad)

    def optimizer_step(self) -> None:
        if self.accum:  # the fp32 accumulation buffer is the master weights' gradient
            for m, a in zip(self.masters, self.accum, strict=True):
                m.grad = a
            self.opt.step()
            with torch.no_grad():
                for m, p, a in zip(self.masters, self.params, self.accum, strict=True):
                    p.copy_(m)
                    m.grad = None
                    a.zero_()
        elif self.masters:  # apex O2 / Megatron: fp32 master grads at step time, copy back
            for m, p in zip(self.masters, self.params, strict=True):
                m.grad = None if p.grad is None else p.grad.float()
                if m.grad is not None and self.scale != 1.0:
                    m.grad.div_(self.scale)
            self.opt.step()
            with torch.no_grad():
                for m, p in zip(self.masters, self.params, strict=True):
                    p.copy_(m)
                    m.grad = None
        else:
            if self.scale != 1.0:
                for p in self.params:
                    if p.grad is not None:
                        p.grad.div_(self.scale)
            self.opt.step()

    def step(self, idx: torch.Tensor, targets: torch.Tensor) -> float:
        self.zero_grad()
        loss = self.forward(idx, targets)
        self.backward(loss)
        self.optimizer_step()
        return float(loss.detach())

    def state_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(optimizer state tensors, step counters)."""
        states, steps = [], []
        for st in self.opt.state.values():
            for key, v in st.items():
                if isinstance(v, torch.Tensor):
                    (steps if key == "step" else states).append(v)
        return states, steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step(
    spec: ModelSpec,
    training: TrainingSpec,
    *,
    batch: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    steps: int = 2,
    warmup: int = 1,
    threads: int | None = None,
) -> MeasuredStep:
    """Train the reference model on random tokens and measure one step exactly.

    Runs ``warmup`` (at least one) warm-up steps (the first creates the optimizer state), one
    instrumented step (saved tensors, gradients, storage-level peak; CUDA:
    ``max_memory_allocated``) and ``steps`` timed, uninstrumented steps (``step_time_s`` is
    their median). ``batch`` overrides ``training.micro_batch``; ``threads`` fixes
    ``torch.set_num_threads`` for the call (restored after; use the value the hardware profile
    was calibrated with, ``simtrain.torchref.calibrate.calibrate(threads=...)``)."""
    with torch_threads(threads):
        return _measure_step(spec, training, batch, device, seed, steps, warmup)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block (None: leave it), restored after."""
    prev = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _warm_trainer(spec: ModelSpec, training: TrainingSpec, dev: torch.device, batch: int | None,
                  seed: int, warmup: int) -> tuple[ReferenceGPT, _Trainer, torch.Tensor,
                                                   torch.Tensor]:  # fmt: skip
    """The reference model, its trainer and one batch of random tokens, after ``warmup`` (at
    least one) steps: the first creates the optimizer state."""
    if training.optimizer == "adam8bit":
        raise NotImplementedError("adam8bit needs bitsandbytes on CUDA")
    torch.manual_seed(seed)
    model = build_reference_model(spec, training).to(dev)
    assert isinstance(model, ReferenceGPT)
    b = batch if batch is not None else training.micro_batch
    idx = torch.randint(spec.vocab, (b, training.seq_len), device=dev)
    targets = torch.randint(spec.vocab, (b, training.seq_len), device=dev)
    trainer = _Trainer(model, training, dev)
    for _ in range(max(1, warmup)):
        trainer.step(idx, targets)
    return model, trainer, idx, targets


def _measure_step(spec: ModelSpec, training: TrainingSpec, batch: int | None, device: str,
                  seed: int, steps: int, warmup: int) -> MeasuredStep:  # fmt: skip
    dev = torch.device(device)
    model, trainer, idx, targets = _warm_trainer(spec, training, dev, batch, seed, warmup)

    # ---- instrumented step ------------------------------------------------------------------
    trainer.zero_grad()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    tracker = _StorageTracker()
    persistent = {n for n, _ in model.named_buffers() if _is_persistent(model, n)}
    for p in model.parameters():
        tracker.add(p, "param")
    for n, buf in model.named_buffers():
        tracker.add(buf, "param" if n in persistent else "buffer")
    states, counters = trainer.state_tensors()
    for t in trainer.masters + states + counters:
        tracker.add(t, "state")
    for t in trainer.accum:
        tracker.add(t, "state")
    for t in (idx, targets):
        tracker.add(t, "act")
    names = _FunctionNames()
    recorder = _SavedRecorder(model, tracker, names)
    with tracker:
        try:
            with names, torch.autograd.graph.saved_tensors_hooks(recorder.pack, lambda t: t):
                loss = trainer.forward(idx, targets)
        finally:
            recorder.remove()
        trainer.backward(loss)
        grads = [p.grad for p in trainer.params if p.grad is not None]
        gradient_bytes = _tensor_bytes(grads) + _tensor_bytes(trainer.accum)
        del grads
        trainer.optimizer_step()
    _sync(dev)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else tracker.peak
    loss_value = float(loss.detach())
    del loss

    # ---- timed steps --------------------------------------------------------------------------
    times = []
    for _ in range(max(1, steps)):
        _sync(dev)
        t0 = time.perf_counter()
        trainer.step(idx, targets)
        _sync(dev)
        times.append(time.perf_counter() - t0)

    saved = _charge(recorder.records)
    layers = spec.layers
    per_block = [0] * layers
    for r in saved:
        blk = _block_index(r.path)
        if blk is not None and r.tag == "act":
            per_block[blk] += r.charged
    listed = tuple(
        (f"{r.path}: {r.op} [{r.tag}]{r.note}", r.shape, r.dtype, r.charged)
        for r in saved
        if _block_index(r.path) in (None, 0, layers - 1)
    )
    states, counters = trainer.state_tensors()
    params = list(model.parameters())
    quantized = sum(
        m.out_features * m.in_features for m in model.modules() if isinstance(m, NF4Linear)
    )
    return MeasuredStep(
        parameter_bytes=_tensor_bytes(params)
        + _tensor_bytes([buf for n, buf in model.named_buffers() if n in persistent]),
        trainable_params=sum(p.numel() for p in trainer.params),
        frozen_params=sum(p.numel() for p in params if not p.requires_grad) + quantized,
        master_weight_bytes=_tensor_bytes(trainer.masters),
        gradient_bytes=gradient_bytes,
        optimizer_state_bytes=_tensor_bytes(states),
        optimizer_step_counter_bytes=_tensor_bytes(counters),
        activation_bytes=sum(r.charged for r in saved if r.tag == "act"),
        activation_bytes_per_layer=per_block[-1],
        block_activation_bytes=tuple(per_block),
        weight_copy_bytes=sum(r.charged for r in saved if r.tag == "wcopy"),
        constant_saved_bytes=sum(r.charged for r in saved if r.tag in ("buffer", "const")),
        buffer_bytes=_tensor_bytes(
            [buf for n, buf in model.named_buffers() if n not in persistent]
        ),
        saved_tensors=listed,
        peak_bytes=int(peak),
        tracked_peak_bytes=tracker.peak,
        step_time_s=statistics.median(times),
        loss=loss_value,
        micro_batch=idx.shape[0],
        seq_len=idx.shape[1],
        device=str(dev),
        torch_version=torch.__version__,
        step_times_s=tuple(times),
        threads=torch.get_num_threads(),
    )


def _is_persistent(model: nn.Module, name: str) -> bool:
    mod_name, _, leaf = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    return leaf not in mod._non_persistent_buffers_set


def _block_index(path: str) -> int | None:
    parts = path.split(".")
    if len(parts) >= 2 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None


def _charge(records: list[_Saved]) -> list[_Saved]:
    """Count each saved storage once (at its first saver); parameters are never counted."""
    first: dict[int, _Saved] = {}
    for r in records:
        if r.ptr in first:
            r.note = f" (same storage as {first[r.ptr].path}: {first[r.ptr].op})"
            continue
        first[r.ptr] = r
        r.charged = 0 if r.tag in ("param", "state") else r.nbytes
    return records


__all__ = ["MeasuredStep", "build_reference_model", "measure_step", "make_optimizer"]


# =============================================================================================
# Dispatched-op counts (the eager host cost's unit)


@dataclass(frozen=True, slots=True)
class OpCounts:
    """ATen ops one training step dispatches, per phase: every op, and those that are not views
    (a view launches no kernel). Counted on the device given, after a warm-up step."""

    forward: int
    backward: int
    optimizer: int
    forward_kernels: int
    backward_kernels: int
    optimizer_kernels: int

    @property
    def total(self) -> int:
        return self.forward + self.backward + self.optimizer

    @property
    def total_kernels(self) -> int:
        return self.forward_kernels + self.backward_kernels + self.optimizer_kernels


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.kernels = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops += 1
        if not func.is_view:
            self.kernels += 1
        return func(*args, **(kwargs or {}))


def count_dispatched_ops(spec: ModelSpec, training: TrainingSpec, *, device: str = "cpu",
                         seed: int = 0) -> OpCounts:  # fmt: skip
    """Dispatched ATen ops of one step of the reference decoder under ``training``'s recipe
    (forward with loss, backward with any recompute, optimizer step with the precision's
    master-weight and loss-scale handling), with a ``TorchDispatchMode``. In eager PyTorch every
    op costs host time, so this is the count a host-overhead model multiplies."""
    _, trainer, idx, targets = _warm_trainer(spec, training, torch.device(device), None, seed, 1)
    trainer.zero_grad()
    counts = []
    with _OpCounter() as c:
        loss = trainer.forward(idx, targets)
        counts.append((c.ops, c.kernels))
        trainer.backward(loss)
        counts.append((c.ops, c.kernels))
        trainer.optimizer_step()
        counts.append((c.ops, c.kernels))
    (f, fk), (b_, bk), (o, ok) = counts
    return OpCounts(f, b_ - f, o - b_, fk, bk - fk, ok - bk)
