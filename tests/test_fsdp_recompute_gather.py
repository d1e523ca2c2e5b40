"""FSDP gathers a layer's parameters once for its recompute and the backward after it (runtime
``fsdp_recompute_reuses_gather``): the pre-backward hook unshards, and the recomputed forward
skips its own unshard (torch 2.13.0 ``distributed/fsdp/_runtime_utils.py`` l.374-375 for FSDP1,
``_fully_shard/_fsdp_state.py`` l.293-301 for FSDP2). Counted on the simulated timeline."""

from __future__ import annotations

from collections import Counter

import pytest

from simtrain.apps.simulate import simulate_scenario
from simtrain.spec.scenario import parse_scenario

LAYERS, MICROBATCHES = 4, 2


def _scenario(runtime: dict, recompute: str = "full"):
    data = {
        "name": "fsdp_recompute",
        "model": {"layers": LAYERS, "hidden": 256, "heads": 4, "kv_heads": 4, "ffn_hidden": 512,
                  "vocab": 1024, "max_positions": 256, "mlp": "swiglu", "norm": "rmsnorm",
                  "positions": "rotary", "bias": False, "tied_embeddings": False},
        "hardware": "h100_sxm5_80gb",
        "runtime": runtime,
        "training": {"seq_len": 128, "global_batch": 2 * MICROBATCHES, "micro_batch": 1,
                     "precision": "bf16", "optimizer": "adamw", "recompute": recompute},
        "parallelism": {"dp": 2, "tp": 1, "pp": 1, "zero_stage": 3},
    }  # fmt: skip
    return parse_scenario(data, "fsdp_recompute.yaml")


def _rank0(sc, kind: str) -> int:
    return sum(1 for s in simulate_scenario(sc).timeline.spans if s.rank == 0 and s.kind == kind)


@pytest.mark.parametrize(
    ("runtime", "gathers", "copies"),
    [
        # FSDP2 (torchtitan): forward and recompute gather, the backward reuses; its copy-out
        # after each gather
        ({"name": "torchtitan"}, 2, 2),
        # without the reuse: forward, recompute and backward gather; no copy-out before a
        # recompute (it would run under its backward's unshard)
        ({"name": "torchtitan", "fsdp_recompute_reuses_gather": False}, 3, 2),
        # FSDP1 (llm-foundry): the same reuse, no copy-out
        ({"name": "llm_foundry"}, 2, 0),
        # the deepspeed profile: recompute and backward each fetch (spec.runtime: its reuse
        # depends on stage3_max_reuse_distance and the prefetch trace, not read)
        ({"name": "deepspeed"}, 3, 0),
    ],
)
def test_gathers_per_layer_and_microbatch(runtime: dict, gathers: int, copies: int) -> None:
    sc = _scenario(runtime)
    assert _rank0(sc, "AG") == gathers * LAYERS * MICROBATCHES
    assert _rank0(sc, "CPY") == copies * LAYERS * MICROBATCHES


def test_without_recompute_forward_and_backward_gather() -> None:
    sc = _scenario({"name": "torchtitan"}, recompute="none")
    assert _rank0(sc, "AG") == 2 * LAYERS * MICROBATCHES
    names = Counter(s.name.split(" ")[2] for s in simulate_scenario(sc).timeline.spans
                    if s.rank == 0 and s.kind == "AG")  # fmt: skip
    assert set(names.values()) == {2 * MICROBATCHES}  # each layer twice a micro-batch
