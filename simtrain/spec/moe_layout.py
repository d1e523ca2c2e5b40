"""The layout checks of mixture-of-experts models and expert parallelism (a ``Scenario``'s
model, training and parallelism; called by ``spec.scenario.check_layout``)."""

from __future__ import annotations

from typing import Any

from simtrain.errors import ConfigError
from simtrain.spec.precision import PRECISIONS


def check_moe_layout(s: Any, file: str) -> None:
    """Expert parallelism (Megatron-Core ``parallel_state.initialize_model_parallel``: the
    expert grid is tp x ep x expert-dp x pp with expert-dp = dp·cp·tp / (ep·tp), so ep must
    divide dp; ``arguments.py``: num_experts % expert_model_parallel_size == 0; with tp > 1,
    ``model_parallel_config.py``: "sequence parallelism must be used")."""
    m, t, p = s.model, s.training, s.parallelism
    if m.is_mla and PRECISIONS[t.precision].gemm_dtype:
        ok = " | ".join(n for n, x in PRECISIONS.items() if not x.gemm_dtype)
        raise ConfigError(file, "training.precision", "FP8 GEMMs of multi-head latent attention "
                          "are not modelled (costs.fp8 knows the q, k, v, o GEMMs)", t.precision,
                          ok)  # fmt: skip
    if p.ep > 1 and not m.is_moe:
        raise ConfigError(file, "parallelism.ep", "expert parallelism needs a model with "
                          "experts (model.num_experts > 0); use 1", p.ep)  # fmt: skip
    if not m.is_moe:
        return
    if m.num_experts % p.ep or p.dp % p.ep:
        ok = [d for d in range(1, p.dp + 1) if p.dp % d == 0 and m.num_experts % d == 0]
        raise ConfigError(file, "parallelism.ep", f"must divide model.num_experts = "
                          f"{m.num_experts} and parallelism.dp = {p.dp}", p.ep,
                          " | ".join(map(str, ok)))  # fmt: skip
    if p.ep > 1 and p.tp > 1 and not p.sequence_parallel:
        raise ConfigError(
            file,
            "parallelism.sequence_parallel",
            "expert parallelism with tp > 1 needs sequence parallelism (Megatron-Core)",
            False,
            "true",
        )
    if t.peft.method != "none":
        raise ConfigError(file, "training.peft.method", "PEFT on a mixture-of-experts model is "
                          "not modelled", t.peft.method, "none")  # fmt: skip
