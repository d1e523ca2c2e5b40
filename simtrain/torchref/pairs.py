"""A model measured by the PyTorch reference (one CPU step, :mod:`simtrain.torchref.measure`)
beside simtrain's estimate of the same model on one GPU: the pairs the measured-memory tests
and ``benchmarks/readme_memory_table.py`` compare, and the tiny models they use. Importing this
module does not import torch (``measure_and_estimate`` does)."""

from __future__ import annotations

from typing import Any

from simtrain.spec.model import ModelSpec
from simtrain.spec.scenario import TrainingSpec

#: The tiny GPT-2 the measured pairs use: GeLU MLP, LayerNorm, learned positions, MHA (4 heads),
#: tied embeddings; each test sets its attention kernel and dropout (dataclasses.replace).
GPT_TINY = ModelSpec("gpt-tiny", 2, 64, 4, 4, 256, 256, 256)

#: The tiny GPT-J: rotary on a quarter of each head, parallel residual, one shared norm.
GPTJ_TINY = ModelSpec("gptj-tiny", 2, 64, 4, 4, 256, 256, 256, positions="rotary",
                      rotary_fraction=0.25, parallel_residual=True, shared_norm=True, bias=False,
                      tied_embeddings=False)  # fmt: skip

#: The tiny Llama the measured pairs use: SwiGLU, RMSNorm, rotary, GQA (4 heads, 2 K/V), untied.
LLAMA_TINY = ModelSpec("llama-tiny", 2, 64, 4, 2, 160, 256, 256, mlp="swiglu",
                       tied_embeddings=False, positions="rotary", bias=False,
                       norm="rmsnorm")  # fmt: skip


def estimate_stage(m: ModelSpec, t: TrainingSpec) -> Any:
    """simtrain's estimate (``costs.memory``'s StageMemory) of ``m`` under ``t`` on one GPU."""
    from simtrain.costs.memory import one_device_stage

    return one_device_stage(m, t)


def measure_and_estimate(m: ModelSpec, t: TrainingSpec) -> tuple[Any, dict[str, int]]:
    """(measure_step's result, the estimate's memory_bytes by category) of ``m`` under ``t``."""
    from simtrain.torchref.measure import measure_step

    return measure_step(m, t, steps=1), dict(estimate_stage(m, t).memory_bytes)
