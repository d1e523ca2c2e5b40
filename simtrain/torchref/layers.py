"""Building blocks of the reference model whose saved tensors match CUDA's on every device:
dropout (``native_dropout``'s 1-byte mask), LayerNorm / RMSNorm (fp32 mean and rstd), the fp32
regions of autocast, and rotary position embedding."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from simtrain.spec.model import ModelSpec
from simtrain.torchref.instrument import _label_next_saved


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


class SwiGLUFunction(torch.autograd.Function):
    """Megatron-Core's fused SwiGLU (megatron/core/fusions/fused_bias_swiglu.py ``SwiGLUFunction``
    at d98e8a64, without bias, clamp or FP8 input store): ``silu(a) * b`` of the fc1 output
    ``y = [a, b]``, saving only ``y`` and recomputing silu in the backward (``swiglu_back``,
    in fp32 there as here). Autograd's eager ``silu(a) * b`` saves a, silu's output and b."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y)
        _label_next_saved("swiglu", "input")
        a, b = torch.chunk(y, 2, -1)
        return torch.nn.functional.silu(a) * b

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        a, b = (t.float() for t in torch.chunk(y, 2, -1))
        sig = torch.sigmoid(a)
        gf = g.float()
        da = gf * b * sig * (1 + a * (1 - sig))
        db = gf * a * sig
        return torch.cat((da, db), -1).to(y.dtype)
