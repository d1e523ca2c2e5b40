"""The loss kernels of ``cross_entropy: fused | vocab_parallel | te | sharded`` (needs torch)."""

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


def _shifted_softmax_loss(ctx: Any, shifted: torch.Tensor, targets: torch.Tensor,
                          label: str) -> torch.Tensor:  # fmt: skip
    """The rest of Megatron's vocab-parallel cross-entropy on the fp32 logits ``shifted`` by
    their row max (core/tensor_parallel/cross_entropy.py calculate_predicted_logits and
    _VocabParallelCrossEntropy.forward at d98e8a64; nanotron's _ShardedCrossEntropy.forward
    l.48-87 at 2411b022 is the same): the target mask and masked targets, the target logit,
    ``shifted`` exponentiated and normalised in place and saved as the softmax with the mask
    and targets. Returns the per-token loss."""
    vocab = shifted.shape[-1]
    target_mask = (targets < 0) | (targets >= vocab)
    masked_target = targets.clone()
    masked_target[target_mask] = 0
    logits_2d = shifted.view(-1, vocab)
    masked_target_1d = masked_target.view(-1)
    arange_1d = torch.arange(start=0, end=logits_2d.size()[0], device=logits_2d.device)
    predicted_logits = logits_2d[arange_1d, masked_target_1d].clone().contiguous()
    predicted_logits[target_mask.view(-1)] = 0.0
    exp_logits = shifted
    torch.exp(shifted, out=exp_logits)
    sum_exp_logits = exp_logits.sum(dim=-1)
    loss = torch.log(sum_exp_logits) - predicted_logits.view_as(sum_exp_logits)
    exp_logits.div_(sum_exp_logits.unsqueeze(dim=-1))
    ctx.save_for_backward(exp_logits, target_mask, masked_target_1d)
    _label_next_saved(label, "softmax", "target_mask", "masked_target_1d")
    return loss


class _VocabParallelCrossEntropyFn(torch.autograd.Function):
    """Megatron-LM's vocab-parallel cross-entropy on one TP rank (``cross_entropy:
    vocab_parallel``), ported line by line from core/tensor_parallel/cross_entropy.py
    (_VocabParallelCrossEntropy, VocabParallelCrossEntropy at d98e8a64) with the vocabulary
    range the whole of V (the TP all-reduces are identities): an fp32 copy of the logits
    (``.float()``) is shifted in place, then exponentiated and normalised in place and saved as
    the softmax with the target mask and masked targets (:func:`_shifted_softmax_loss`); the
    backward subtracts the one-hot in place, scales in place and returns the fp32 gradient,
    which autograd casts to the logits' dtype. Returns the per-token loss (Megatron masks and
    averages it outside)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        vocab_parallel_logits = logits.float()
        logits_max = torch.max(vocab_parallel_logits, dim=-1)[0]
        vocab_parallel_logits -= logits_max.unsqueeze(dim=-1)
        return _shifted_softmax_loss(ctx, vocab_parallel_logits, targets,
                                     "vocab_parallel_cross_entropy")  # fmt: skip

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        softmax, target_mask, masked_target_1d = ctx.saved_tensors
        grad_input = softmax
        grad_2d = grad_input.view(-1, softmax.size()[-1])
        arange_1d = torch.arange(start=0, end=grad_2d.size()[0], device=grad_2d.device)
        softmax_update = 1.0 - target_mask.view(-1).float()
        grad_2d[arange_1d, masked_target_1d] -= softmax_update
        grad_input.mul_(grad_output.unsqueeze(dim=-1))
        return grad_input, None


class _ShardedCrossEntropyFn(torch.autograd.Function):
    """nanotron's ``sharded_cross_entropy`` on one TP rank (``cross_entropy: sharded``), from
    parallel/tensor_parallel/functional.py _ShardedCrossEntropy (l.31-108 at
    huggingface/nanotron 2411b022) with the shard the whole of V (the TP all-reduces are
    identities). Its input is already fp32 (nanotron's ``cast_to_fp32`` block, and
    ``sharded_cross_entropy``'s ``.to(torch.float)`` returns it). The one difference from
    Megatron's: the max is subtracted out of place (``sharded_logits - logits_max``, l.43), so
    the fp32 input stays beside the copy; the rest of the forward and the backward are
    Megatron's line for line. Returns the per-token loss (nanotron's ``masked_mean``
    outside)."""

    @staticmethod
    def forward(ctx: Any, sharded_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits_max = torch.max(sharded_logits, dim=-1)[0]
        shifted = sharded_logits - logits_max.unsqueeze(dim=-1)
        return _shifted_softmax_loss(ctx, shifted, target, "sharded_cross_entropy")

    backward = staticmethod(_VocabParallelCrossEntropyFn.backward)


class _TECrossEntropyFn(torch.autograd.Function):
    """Transformer Engine's ``parallel_cross_entropy`` on one rank (``cross_entropy: te``),
    with the memory behaviour of its Triton kernels through TE v2.17
    (transformer_engine/pytorch/triton/cross_entropy.py at 36f2dfd28): per-row fp32 ``loss_1d``
    and ``m_d_X_y`` (max, sum of exponentials, target logit), the gradient softmax - one-hot
    written into the logits in place (``return loss, _input``) and saved; the backward scales
    it in place (element_mul_kernel) and returns it. Rows of ``ignore_idx`` (-100) get loss
    and gradient 0. The row-wise fp32 work runs in blocks of :data:`FUSED_CE_ROWS` rows (the
    kernel keeps a row in registers). Returns the per-token loss."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n = logits.shape[0]
        loss_1d = torch.zeros(n, dtype=torch.float32, device=logits.device)
        m_d_x_y = torch.zeros(n * 3, dtype=torch.float32, device=logits.device)
        valid = targets != -100
        for i in range(0, n, FUSED_CE_ROWS):
            rows = slice(i, i + FUSED_CE_ROWS)
            x = logits[rows].float()
            lse = torch.logsumexp(x, -1)
            t = targets[rows].clamp(min=0)
            picked = x.gather(1, t.unsqueeze(1)).squeeze(1)
            row_max = x.amax(-1)  # m, d = sum(exp(x - m)), X_y
            m_d_x_y[3 * i : 3 * i + 3 * x.shape[0]] = torch.stack(
                (row_max, torch.exp(lse - row_max), picked), 1
            ).reshape(-1)
            loss_1d[rows] = (lse - picked) * valid[rows]
            p = x.sub_(lse.unsqueeze(1)).exp_()
            p[torch.arange(p.shape[0]), t] -= 1.0
            p *= valid[rows].unsqueeze(1)
            logits[rows] = p.to(logits.dtype)
        ctx.save_for_backward(logits)
        _label_next_saved("te_cross_entropy", "logits (their gradient, in place)")
        return loss_1d

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        (grad_input,) = ctx.saved_tensors
        grad_input.mul_(grad_output.unsqueeze(1))
        return grad_input, None


#: The per-token loss kernels by ``training.cross_entropy`` (the model masks and averages).
PER_TOKEN_LOSSES: dict[str, type[torch.autograd.Function]] = {
    "vocab_parallel": _VocabParallelCrossEntropyFn,
    "te": _TECrossEntropyFn,
    "sharded": _ShardedCrossEntropyFn,
}
