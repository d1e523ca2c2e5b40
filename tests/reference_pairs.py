"""The measured pairs' models and helpers (now :mod:`simtrain.torchref.pairs`, which the
benchmarks share), re-exported for the tests, and the tests' Playbook 1B shape."""

from __future__ import annotations

from simtrain.torchref.pairs import (  # noqa: F401 (re-exported for the tests)
    GPT_TINY,
    GPTJ_TINY,
    LLAMA_TINY,
    estimate_stage,
    measure_and_estimate,
)

#: The Ultra-Scale Playbook sweep's 1B model (nanotron scripts/scaling_benchmarks.py): 16
#: layers of h 2048, 32 heads, SwiGLU f 8192, vocabulary 131,072, tied embeddings.
PLAYBOOK_1B = {"layers": 16, "hidden": 2048, "heads": 32, "ffn_hidden": 8192, "vocab": 131072,
               "mlp": "swiglu", "norm": "rmsnorm", "positions": "rotary", "bias": False,
               "tied_embeddings": True, "flash_attention": True, "dropout": 0.0}  # fmt: skip
