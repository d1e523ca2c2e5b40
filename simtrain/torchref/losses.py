"""The fused cross-entropy of ``cross_entropy: fused`` (needs torch)."""

from __future__ import annotations

from typing import Any

import torch

from simtrain.torchref.instrument import _label_next_saved

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
