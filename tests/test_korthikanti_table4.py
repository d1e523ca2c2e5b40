"""One transformer layer of Korthikanti et al. 2022's 22B model (h 6144, 64 heads, s 2048,
micro-batch 4, tp 8, A100 80 GB) against the paper's Table 4 (time per layer, measured on
Megatron-LM 2022): backward 11.9 ms without recompute, 13.2 ms with selective recompute,
19.5 ms with full recompute. The backward is the layer's input- and weight-gradient work, its
exposed TP communication (costs.comm.tp_backward_block_ns) and its recompute with the
recompute's own all-reduces (full)."""

from __future__ import annotations

import pytest

from simtrain.costs import comm
from simtrain.costs.chunk_time import tp_recompute_block
from simtrain.costs.compute import chunk_costs
from simtrain.layout.step import resolve
from simtrain.spec.hardware import load_hardware
from simtrain.spec.scenario import parse_scenario

TABLE4_BACKWARD_MS = {"none": 11.9, "selective": 13.2, "full": 19.5}


def layer_22b(runtime: str, recompute: str):
    return parse_scenario({
        "name": "k22_t4", "hardware": "a100_sxm4_80gb", "runtime": runtime,
        "model": {"layers": 48, "hidden": 6144, "heads": 64, "kv_heads": 64,
                  "ffn_hidden": 24576, "vocab": 51200, "max_positions": 2048,
                  "flash_attention": False, "dropout": 0.1},
        "training": {"seq_len": 2048, "global_batch": 4, "micro_batch": 4, "precision": "fp16",
                     "recompute": recompute},
        "parallelism": {"dp": 1, "tp": 8, "pp": 1},
    }, "test.yaml")  # fmt: skip


def backward_ms(runtime: str, recompute: str) -> float:
    sc = layer_22b(runtime, recompute)
    step = resolve(sc)
    c = chunk_costs(sc, 1, first=False, last=False)
    ns = (c.input_grad_ns + c.weight_grad_ns + comm.tp_backward_block_ns(sc, step) + c.recompute_ns
          + tp_recompute_block(sc, step, 1)[0])  # fmt: skip
    return ns / 1e6


@pytest.mark.parametrize("recompute", list(TABLE4_BACKWARD_MS))
def test_a_22b_layer_backward_matches_table_4(recompute: str) -> None:
    """Megatron-LM 2022 (its backward all-reduces hidden under the weight-gradient GEMMs)
    within 5 % of Table 4; Megatron-LM 2021's synchronous backward is 8 % over it or more."""
    want = TABLE4_BACKWARD_MS[recompute]
    assert backward_ms("megatron_lm_2022", recompute) == pytest.approx(want, rel=0.05)
    assert backward_ms("megatron_lm_2021", recompute) > 1.08 * want


@pytest.mark.xfail(
    strict=True,
    reason="1.57 ms predicted since 2026-12-06: the A100's "
    "element-wise rate fitted at 0.63 of HBM peak with its GEMM table's rate",
)
def test_selective_recompute_costs_what_table_4_measures() -> None:
    """Selective recompute adds 13.2 − 11.9 = 1.3 ms to the layer's backward (Table 4;
    §6.2: "The overhead of selective recomputation is 1.3ms"): the attention core's matmuls
    (~0.2 ms) and its passes over the 4 x 8 heads x 2048² scores replayed. Met (1.30 ms) with
    efficiency.memory_bound at its 0.80 estimate; since the A100 profile takes its GEMM rate
    from its GEMM table (0.79) and fits memory_bound on the end-to-end Megatron rows (0.63),
    the passes over the scores cost 1.36 ms and the whole 1.57 ms (+21 %): the fitted
    element-wise rate carries time of the small models' steps that is not element-wise
    (README, "where it is wrong"). Strict: a change that brings it back is noticed."""
    extra = backward_ms("megatron_lm_2022", "selective") - backward_ms("megatron_lm_2022", "none")
    assert extra == pytest.approx(1.3, rel=0.1)


def _core_matmuls_ms() -> float:
    """The replayed core's two batched matmuls, 4·b·s²·h/t FLOPs, at the profile's GEMM rate."""
    hw = load_hardware("a100_sxm4_80gb")
    return 1e3 * 4 * 4 * 2048 * 2048 * 6144 / 8 / (hw.peak("fp16") * hw.efficiency.matmul)


def test_selective_recompute_miss_stays_as_documented() -> None:
    """The xfail above, pinned where its reason says it is (1.57 ms), so that it cannot drift
    unseen: 1.50-1.65 ms, the core's matmuls under a fifth of it."""
    extra = backward_ms("megatron_lm_2022", "selective") - backward_ms("megatron_lm_2022", "none")
    assert 1.50 < extra < 1.65
    assert _core_matmuls_ms() < extra / 5
