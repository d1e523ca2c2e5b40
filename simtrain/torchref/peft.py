"""PEFT modules of the reference model: LoRA, the QLoRA NF4 emulation and Houlsby adapters."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from simtrain.torchref.instrument import _label_next_saved
from simtrain.torchref.layers import _autocasting

# NF4 code book (Dettmers et al. 2023; bitsandbytes ``functional.py``), ascending.
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip


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
