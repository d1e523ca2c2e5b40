"""torchtitan's per-op selective checkpointing policy for the reference model
(``training.recompute: selective_op``, :mod:`simtrain.costs.op_sac`).

:func:`op_sac_context` is ``_get_custom_policy`` of pytorch/torchtitan
``torchtitan/parallelisms/parallelize_llama.py`` at 9dec370a, with its ``_save_list`` plus the
CPU's SDPA kernel (``_scaled_dot_product_flash_attention_for_cpu``: the same saved set as CUDA
flash), for ``torch.utils.checkpoint(..., context_fn=op_sac_context)``. The outputs the policy
caches are not saved through ``saved_tensors_hooks``; :data:`CACHE_LISTENERS` (the measurement's
recorder) are told of each one."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

_ops = torch.ops.aten
SAVE_LIST = {
    _ops.mm.default,
    _ops._scaled_dot_product_efficient_attention.default,
    _ops._scaled_dot_product_flash_attention.default,
    torch.ops._c10d_functional.reduce_scatter_tensor.default,
    _ops.abs.default,
    _ops.max.default,
    _ops._scaled_dot_product_flash_attention_for_cpu.default,  # CPU: not in torchtitan's list
}

#: Called with each tensor the policy keeps in a forward (not in the recompute).
CACHE_LISTENERS: list[Callable[[torch.Tensor], None]] = []


def _policy(meta: dict[str, int]) -> Callable[..., CheckpointPolicy]:
    def _custom_policy(ctx: Any, func: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
        mode = "recompute" if ctx.is_recompute else "forward"
        mm_count_key = f"{mode}_mm_count"
        if func == torch.ops.aten.mm.default:
            meta[mm_count_key] += 1
        # Saves output of all compute ops, except every second mm
        to_save = func in SAVE_LIST and not (
            func == torch.ops.aten.mm.default and meta[mm_count_key] % 2 == 0
        )
        if to_save and not ctx.is_recompute:
            for out in tree_leaves(getattr(ctx, "op_output", None)):
                if isinstance(out, torch.Tensor):
                    for listener in CACHE_LISTENERS:
                        listener(out)
        return CheckpointPolicy.MUST_SAVE if to_save else CheckpointPolicy.PREFER_RECOMPUTE

    return _custom_policy


def op_sac_context() -> Any:
    """torchtitan's ``selective_checkpointing_context_fn``: a fresh counter per call."""
    return create_selective_checkpoint_contexts(_policy(defaultdict(int)))
