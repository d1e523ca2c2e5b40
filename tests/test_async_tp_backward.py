"""Megatron-LM 2022's asynchronous TP backward (runtime ``tp_backward_overlap``; megatron/mpu/
layers.py LinearWithGradAccumulationAndAsyncCommunication.backward at d898a8991d): each
column-parallel linear's backward collective runs under that linear's own GEMM, and only what it
takes beyond the GEMM is on the critical path (costs.comm.tp_backward_block_ns). The GEMM times
here are worked by hand from the FLOPs, the A100's 312 TFLOP/s, efficiency.matmul 0.79 and the
GEMM shape term (L = 140: 2·M·N·K·(1 + L/M + L/N + L/K) FLOPs at that rate)."""

from __future__ import annotations

import math

from simtrain.apps.simulate import simulate_scenario
from simtrain.apps.validate.conventions import runtime_of
from simtrain.costs import comm
from simtrain.layout.step import resolve
from simtrain.spec.scenario import parse_scenario

A100_GEMM_FLOPS = (
    312e12 * 0.79
)  # hardware/a100_sxm4_80gb.yaml: peak fp16/bf16 x matmul (its GEMM table's rate)
A100_GEMM_EDGE = 140  # hardware/a100_sxm4_80gb.yaml: efficiency.gemm_edge_elements


def scenario(runtime: str, hidden: int, seq: int, tp: int, sp: bool = False, layers: int = 2,
             micro_batch: int = 1, global_batch: int = 2):  # fmt: skip
    return parse_scenario({
        "name": "async_tp", "hardware": "a100_sxm4_80gb", "runtime": runtime,
        "model": {"layers": layers, "hidden": hidden, "heads": hidden // 128,
                  "kv_heads": hidden // 128, "ffn_hidden": 4 * hidden, "vocab": 1024,
                  "max_positions": seq},
        "training": {"seq_len": seq, "global_batch": global_batch, "micro_batch": micro_batch,
                     "precision": "bf16"},
        "parallelism": {"dp": 1, "tp": tp, "pp": 1, "sequence_parallel": sp},
    }, "test.yaml")  # fmt: skip


def _gemm_ns(m: int, n: int, k: int) -> float:
    """An (m x k) @ (k x n) GEMM on the A100 profile, in ns."""
    shape = 1 + A100_GEMM_EDGE / m + A100_GEMM_EDGE / n + A100_GEMM_EDGE / k
    return 1e9 * 2 * m * n * k * shape / A100_GEMM_FLOPS


def test_small_gemms_hide_only_their_own_length_of_the_all_reduce():
    """h 256, s 512, tp 2: QKV's weight-gradient GEMM is 2·512·256·768/2 FLOPs (~0.89 us with
    its shape term x 2.19), the MLP-in's 2·512·256·1024/2 (~1.14 us, x 2.09); each all-reduce is longer (its latency alone is
    2 x 3 us), so a block exposes 2·ar minus the two GEMMs, each rounded up."""
    sc = scenario("megatron_lm_2022", hidden=256, seq=512, tp=2)
    step = resolve(sc)
    ar = comm.tp_allreduce_ns(sc, step)
    w_qkv = _gemm_ns(512, 768 // 2, 256)
    w_fc1 = _gemm_ns(512, 1024 // 2, 256)
    assert ar > w_fc1 > w_qkv > 0
    want = math.ceil(ar - w_qkv) + math.ceil(ar - w_fc1)
    assert comm.tp_backward_block_ns(sc, step) == want
    assert 3 * comm.tp_backward_block_ns(sc, step) == 3 * want  # per block, times 3
    # Megatron-LM 2021 waits for both all-reduces
    old = scenario("megatron_lm_2021", hidden=256, seq=512, tp=2)
    assert 3 * comm.tp_backward_block_ns(old, resolve(old)) == 6 * ar


def test_large_gemms_hide_the_whole_backward_all_reduce():
    """GPT-3's layer (h 12288, s 2048, tp 8): QKV's weight-gradient GEMM 2·2048·12288·36864/8
    FLOPs is ~1.1 ms, the 50 MB all-reduce a few hundred us: nothing is exposed."""
    sc = scenario("megatron_lm_2022", hidden=12288, seq=2048, tp=8)
    step = resolve(sc)
    ar = comm.tp_allreduce_ns(sc, step)
    assert _gemm_ns(2048, 36864 // 8, 12288) > ar > 0
    assert 4 * comm.tp_backward_block_ns(sc, step) == 0


def test_sequence_parallel_exposes_the_row_parallel_all_gathers_only():
    """With sequence parallelism the column-parallel all-gather and reduce-scatter hide under
    the big GEMMs; the two row-parallel backward all-gathers stay: 2·ag per block, which is
    about one all-reduce (a ring all-reduce is a reduce-scatter then an all-gather:
    Korthikanti et al. 2022 §4.2.2), half of what the synchronous backward exposes."""
    sc = scenario("megatron_lm_2022", hidden=12288, seq=2048, tp=8, sp=True)
    step = resolve(sc)
    ar = comm.tp_allreduce_ns(sc, step)
    g = step.groups
    ag = comm.collective_ns(sc, step, "all_gather", step.boundary_bytes, g.tp, g.tp_stride)
    assert 5 * comm.tp_backward_block_ns(sc, step) == 5 * 2 * ag
    assert abs(2 * ag - ar) <= 0.01 * ar
    old = scenario("megatron_lm_2021", hidden=12288, seq=2048, tp=8, sp=True)
    assert 5 * comm.tp_backward_block_ns(old, resolve(old)) == 5 * 2 * ar


def test_the_step_shortens_by_the_hidden_all_reduces():
    """pp 1, 2 micro-batches of 2 blocks (h 8192, s 2048, tp 8; no recompute): the 2022 step is
    the 2021 step less 2 micro-batches x 2 blocks x 2 all-reduces (each hidden whole under a
    ~0.5 ms weight-gradient GEMM), and less what of the output layer's input-gradient
    all-reduce hides under its own (1,024-word: short) weight-gradient GEMM."""
    old = scenario("megatron_lm_2021", hidden=8192, seq=2048, tp=8)
    new = scenario("megatron_lm_2022", hidden=8192, seq=2048, tp=8)
    step = resolve(old)
    ar = comm.tp_allreduce_ns(old, step)
    assert _gemm_ns(2048, 3 * 8192 // 8, 8192) > ar
    t_old = simulate_scenario(old).timeline.makespan_ns
    t_new = simulate_scenario(new).timeline.makespan_ns
    head = (
        comm.tp_edges_ns(old, step, False, True)[1]
        - comm.tp_edges_ns(new, resolve(new), False, True)[1]
    )
    # the head's all-reduce hides under its weight-gradient GEMM (2048 x 1024/8 x 8192, with
    # its shape term): that GEMM's length of it
    assert head == ar - math.ceil(ar - _gemm_ns(2048, 1024 // 8, 8192)) > 0
    assert t_old - t_new == 2 * 2 * 2 * ar + 2 * head


def test_korthikanti_runs_on_megatron_lm_2022_and_sc21_on_2021():
    assert runtime_of("korthikanti2022") == "megatron_lm_2022"
    assert runtime_of("megatron_sc21") == "megatron_lm_2021"
