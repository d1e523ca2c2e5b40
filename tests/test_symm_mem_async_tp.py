"""PyTorch's async TP (runtime ``tp_overlap_symm_mem``; Inductor's micro_pipeline_tp pass over
symmetric memory): a reduce-scatter fuses only with the one matmul that produces its input, so
the backward reduce-scatter of a column group of separate linears (torchtitan's wq/wk/wv and
w1/w3) stays a plain collective, exposed; each fused all-gather copies the rank's shard into
its buffer first and each fused reduce-scatter sums the tp partials it received
(costs.compute.symm_mem_tp_bytes). The expected values are worked by hand from the formulas
in torch/distributed/_symmetric_memory/__init__.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from simtrain.apps.simulate import simulate_scenario
from simtrain.costs import comm
from simtrain.costs.compute import (
    symm_mem_tp_bytes,
    tp_group_gemms,
    unfused_column_reductions,
)
from simtrain.layout.step import resolve
from simtrain.spec.scenario import cp_rank_training, parse_scenario


def scenario(runtime, tp: int = 8, hidden: int = 4096, seq: int = 2048, micro_batch: int = 2,
             precision: str = "bf16", sp: bool = True):  # fmt: skip
    return parse_scenario({
        "name": "symm_mem", "hardware": "h100_sxm5_80gb", "runtime": runtime,
        "model": {"layers": 2, "hidden": hidden, "heads": hidden // 128, "kv_heads": 8,
                  "ffn_hidden": 14336, "vocab": 32000, "mlp": "swiglu", "norm": "rmsnorm",
                  "positions": "rotary", "max_positions": seq},
        "training": {"seq_len": seq, "global_batch": micro_batch, "micro_batch": micro_batch,
                     "precision": precision},
        "parallelism": {"dp": 1, "tp": tp, "pp": 1, "sequence_parallel": sp},
    }, "test.yaml")  # fmt: skip


ASYNC = {"name": "torchtitan", "tp_comm_overlap": True}


def test_separate_linears_leave_both_backward_reduce_scatters_unfused():
    sc = scenario(ASYNC)
    # (N, K) per TP rank by hand: h 4096, q 32 x 128, kv 8 x 128, ffn 14336, tp 8
    assert tp_group_gemms(sc) == {
        "attn_in": ((512, 4096), (128, 4096), (128, 4096)), "attn_out": ((4096, 512),),
        "mlp_in": ((1792, 4096), (1792, 4096)), "mlp_out": ((4096, 1792),)}  # fmt: skip
    assert unfused_column_reductions(sc) == (True, True)
    fused = scenario({**ASYNC, "fused_qkv": True, "fused_gate_up": True})
    assert tp_group_gemms(fused)["attn_in"] == ((768, 4096),)
    assert tp_group_gemms(fused)["mlp_in"] == ((3584, 4096),)
    assert unfused_column_reductions(fused) == (False, False)
    # Transformer Engine's userbuffers overlap (no tp_overlap_symm_mem), and async TP off
    assert unfused_column_reductions(scenario({"name": "megatron_core",
                                               "tp_comm_overlap": True})) == (False, False)  # fmt: skip
    assert unfused_column_reductions(scenario("torchtitan")) == (False, False)


def test_an_unfused_reduce_scatter_is_exposed_whole():
    """The backward exposes the two column reduce-scatters whole where they are unfused, and
    only what their weight-gradient GEMMs do not cover where they fuse: the difference is
    rs - beside(rs, W) for each group, W that group's forward GEMM time (its weight gradient
    has its FLOPs)."""
    sep = scenario(ASYNC)
    fused = scenario({**ASYNC, "fused_qkv": True, "fused_gate_up": True})
    step = resolve(sep)
    rs = comm.tp_halves_ns(sep, step)[1]
    assert rs > 0
    exp_sep, hid_sep = comm.tp_backward_block(sep, step)
    exp_fused, hid_fused = comm.tp_backward_block(fused, resolve(fused))
    groups = comm.tp_linear_group_ns(fused)
    want = sum(rs - comm.beside_ns(rs, groups[k]) for k in ("attn_in", "mlp_in"))
    assert exp_sep - exp_fused == want
    # what is exposed is not also counted as hidden
    assert (exp_sep + hid_sep) == (exp_fused + hid_fused)


@pytest.mark.parametrize("tp", [2, 8])
def test_symmetric_memory_copies_and_reductions_by_hand(tp):
    """T = 2·2048 tokens, h = 4096, e = 2 B. Forward: two shard copies (a read and a write of
    T/tp·h·e each) and two reductions (T·h·e read, T/tp·h·e written); backward: the two output
    gradients' shard copies, no reduction (both column groups unfused)."""
    sc = scenario(ASYNC, tp=tp)
    t = cp_rank_training(sc.training, 1)
    T, h, e = 2 * 2048, 4096, 2
    copy = 2 * T * h * e / tp
    reduce = T * h * e + T * h * e / tp
    fwd, bwd = symm_mem_tp_bytes(sc, t)
    assert fwd == pytest.approx(2 * copy + 2 * reduce, rel=1e-12)
    assert bwd == pytest.approx(2 * copy, rel=1e-12)
    fused = scenario({**ASYNC, "fused_qkv": True, "fused_gate_up": True}, tp=tp)
    assert symm_mem_tp_bytes(fused, t)[1] == pytest.approx(2 * copy + 2 * reduce, rel=1e-12)
    # none without async TP, without sequence parallelism, and under Transformer Engine's
    assert symm_mem_tp_bytes(scenario("torchtitan", tp=tp), t) == (0.0, 0.0)
    assert symm_mem_tp_bytes(scenario(ASYNC, tp=tp, sp=False), t) == (0.0, 0.0)
    te = scenario({"name": "megatron_core", "tp_comm_overlap": True}, tp=tp)
    assert symm_mem_tp_bytes(te, t) == (0.0, 0.0)


def test_the_profile_flag_slows_torchtitans_async_tp_step():
    """The same async-TP step with and without the symmetric-memory costs: slower with them,
    never slower than the synchronous TP it overlaps (micro-batches of 4 x 8,192 tokens: the
    GPU, not eager dispatch, sets the step)."""
    sc = scenario(ASYNC, seq=8192, micro_batch=4)
    without = replace(sc, runtime_profile=replace(sc.runtime, tp_overlap_symm_mem=False))
    vanilla = scenario("torchtitan", seq=8192, micro_batch=4)
    t_async = simulate_scenario(sc, detail=False).metrics.step_time_s
    t_ideal = simulate_scenario(without, detail=False).metrics.step_time_s
    t_sync = simulate_scenario(vanilla, detail=False).metrics.step_time_s
    assert t_ideal < t_async < t_sync
