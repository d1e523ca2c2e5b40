"""Megatron-Core snippets transcribed for the tests that count what they dispatch and move
(tests/test_moe_host_ops.py, tests/test_gpt_oss_experts.py); torch is imported inside."""

from __future__ import annotations


def megatron_apply_bias(intermediate_parallel, bias_parallel, tokens_per_expert, permuted_probs):
    """Megatron-Core's ``TEGroupedMLP._apply_bias`` (megatron/core/transformer/moe/experts.py at
    a329dd6da5, the eager path at d98e8a64), transcribed: the fc2 bias added expert by
    expert, weighted by the routing probabilities."""
    import torch

    shape = intermediate_parallel.shape
    return (
        torch.cat(
            [
                t + b * p
                for t, b, p in zip(
                    torch.split(intermediate_parallel.view(-1, shape[-1]), tokens_per_expert),
                    bias_parallel,
                    torch.split(permuted_probs, tokens_per_expert),
                    strict=True,
                )
            ]
        )
        .view(shape)
        .to(intermediate_parallel.dtype)
    )


def megatron_glu_clamp(inp, clamp_value: float = 7.0):
    """The clamp of megatron/core/fusions/fused_bias_geglu.py weighted_bias_quick_geglu_impl
    (l.410-440 at d98e8a64), up to the compiled kernel it feeds."""
    import torch

    ori_shape = inp.shape
    x_glu, x_linear = inp.chunk(2, -1)
    inp = torch.cat((x_glu.clamp(min=None, max=clamp_value),
                     x_linear.clamp(min=-clamp_value, max=clamp_value)), -1)  # fmt: skip
    return inp.view(-1, ori_shape[-1])
