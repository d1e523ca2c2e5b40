"""Precision recipes of the reference model: parameter dtype, autocast dtype, fp32 master weights,
fp32 gradient accumulation and the fp16 loss scale of each ``training.precision`` (needs torch)."""

from __future__ import annotations

import torch

from simtrain.spec.precision import PRECISIONS

# The precision recipes follow spec.precision.PRECISIONS, so that every precision the memory model knows
# can be measured: 4-byte parameters are fp32 (autocast runs over them), 2-byte ones take the
# compute dtype.
TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PARAM_DTYPE = {
    name: torch.float32 if p.param == 4 else TORCH_DTYPE[p.compute_dtype]
    for name, p in PRECISIONS.items()
}
AUTOCAST_DTYPE = {
    name: TORCH_DTYPE[p.compute_dtype]
    for name, p in PRECISIONS.items()
    if p.weight_copy  # torch.autocast keeps a 16-bit copy of each weight
}
MASTER_WEIGHTS = tuple(n for n, p in PRECISIONS.items() if p.master)  # fp32 master copy
# An fp32 gradient buffer per trainable parameter that each backward's 16-bit gradient is added
# into and the optimizer steps the master weights with (nanotron's FP32GradientAccumulator,
# optim/gradient_accumulator.py).
FP32_GRAD_ACCUMULATION = tuple(n for n, p in PRECISIONS.items() if p.grad_accum)
FP16_LOSS_SCALE = 2.0**10  # static loss scale for fp16 and amp_fp16
