"""The tensor-parallel exchange of a layer: an all-reduce without sequence parallelism, a
reduce-scatter plus an all-gather with it (Korthikanti et al. 2022 §4.2.2). NCCL has no tree
all-gather or reduce-scatter, so a tree/NVLS-tree all-reduce never prices the SP exchange."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from simtrain.costs import collectives as coll
from simtrain.costs.chunk_time import chunk_durations
from simtrain.costs.comm import collective_ns, tp_allreduce_ns, tp_backward_block_ns, tp_edges_ns
from simtrain.costs.compute import tp_linear_group_ns
from simtrain.layout.step import resolve
from simtrain.sim.lowering.pieces import base_pieces
from simtrain.spec.scenario import Scenario, parse_scenario


def scenario(tp: int, sp: bool, **over: Any) -> Scenario:
    data: dict[str, Any] = {
        "name": "tp",
        "model": {"preset": "llama2-7b", "layers": 2, "flash_attention": True},
        "hardware": "h100_sxm5_80gb",  # NCCL: ring, tree, NVLS; InfiniBand across nodes
        "runtime": {"name": "megatron_core", "collective_algorithm": "nccl"},
        "training": {
            "seq_len": 4096,
            "global_batch": 1,
            "micro_batch": 1,
            "precision": "bf16",
            "optimizer": "adamw",
        },  # fmt: skip
        "parallelism": {"tp": tp, "sequence_parallel": sp},
    }
    for k, v in over.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) else v
    return parse_scenario(copy.deepcopy(data), "tp.yaml")


def _nccl(sc: Scenario, op: str, size: float, n: int, g: int) -> float:
    hw = sc.hardware
    intra, inter = coll.node_links(hw)
    return coll.nccl_time_s(op, size, n, intra=intra, inter=inter, gpus_per_node=g,
                            nvls=hw.nvls, protocols=hw.nccl_protocols or None,
                            algorithms=hw.nccl_algorithms or None,
                            arch=hw.gpu_arch).time_s  # fmt: skip


def test_sequence_parallel_is_a_reduce_scatter_and_an_all_gather_across_nodes() -> None:
    sc = scenario(16, sp=True)  # 16 GPUs: 2 nodes of 8
    step = resolve(sc)
    size = 4096 * 4096 * 2  # b·s·h bf16 bytes of Llama 2 7B, one sequence
    assert step.boundary_bytes == size
    rs = _nccl(sc, "reduce_scatter", size, 16, 8)
    ag = _nccl(sc, "all_gather", size, 16, 8)
    assert tp_allreduce_ns(sc, step) == round(1e9 * rs) + round(1e9 * ag)
    # Without SP the same exchange is one all-reduce, for which NCCL picks its fastest
    # algorithm; here that is not a ring (ring AR = RS + AG plus the multi-node plateau).
    no_sp = scenario(16, sp=False)
    ar = coll.nccl_time_s("all_reduce", size, 16, intra=coll.node_links(sc.hardware)[0],
                          inter=coll.node_links(sc.hardware)[1], gpus_per_node=8,
                          nvls=sc.hardware.nvls, protocols=sc.hardware.nccl_protocols or None,
                          algorithms=sc.hardware.nccl_algorithms or None,
                          arch=sc.hardware.gpu_arch)  # fmt: skip
    assert ar.algorithm != "ring"
    assert tp_allreduce_ns(no_sp, resolve(no_sp)) == round(1e9 * ar.time_s)
    assert tp_allreduce_ns(no_sp, resolve(no_sp)) != tp_allreduce_ns(sc, step)


def test_tp_one_has_no_exchange() -> None:
    sc = scenario(1, sp=False)
    assert tp_allreduce_ns(sc, resolve(sc)) == 0


# ---- the backward's TP collectives (costs.comm.tp_backward_block_ns)


def _runtime(sc: Scenario, **flags: bool) -> Scenario:
    return replace(sc, runtime_profile=replace(sc.runtime, **flags))


def _gemm_ns(sc: Scenario, out: int, row_in: int = 0) -> float:
    """One GEMM by hand over M = T = 4,096 tokens: a column-parallel linear's K = h = 4,096 and
    N = out/tp; a row-parallel one's (``row_in``: its input width) K = row_in/tp, N = out;
    2·M·N·K·(1 + L/M + L/N + L/K) FLOPs (the profile's GEMM shape term L) at its bf16 matmul
    rate."""
    hw = sc.hardware
    tp = sc.parallelism.tp
    m, n, k = (4096, out, row_in // tp) if row_in else (4096, out // tp, 4096)
    edge = hw.efficiency.gemm_edge_elements
    flops = 2.0 * m * n * k * (1 + edge / m + edge / n + edge / k)
    return 1e9 * flops / (hw.peak("bf16") * hw.efficiency.matmul)


@pytest.mark.parametrize("tp", [8, 16])  # one node (NVLink), two nodes (InfiniBand)
def test_backward_collectives_by_hand(tp: int) -> None:
    """Llama 2 7B (h 4096, q = k = v 4096, SwiGLU f 11008): the column-parallel linears are
    QKV (out 3·4096) and gate+up (out 2·11008)."""
    sc = scenario(tp, sp=True)
    step = resolve(sc)
    g = step.groups
    size = step.boundary_bytes
    ag = collective_ns(sc, step, "all_gather", size, g.tp, g.tp_stride)
    rs = collective_ns(sc, step, "reduce_scatter", size, g.tp, g.tp_stride)
    gemms = (_gemm_ns(sc, 3 * 4096), _gemm_ns(sc, 2 * 11008))
    group = tp_linear_group_ns(sc)
    assert (group["attn_in"], group["mlp_in"]) == pytest.approx(gemms, rel=1e-12)
    plain = _runtime(sc, tp_backward_overlap=False, tp_regather_backward=False)
    assert tp_backward_block_ns(plain, step) == 2 * tp_allreduce_ns(sc, step) == 2 * (ag + rs)
    regather = _runtime(sc, tp_backward_overlap=False, tp_regather_backward=True)
    assert tp_backward_block_ns(regather, step) == 4 * ag + 2 * rs
    both = _runtime(sc, tp_backward_overlap=True, tp_regather_backward=True)
    exposed_cols = sum(math.ceil(max(0.0, ag - x)) + math.ceil(max(0.0, rs - x)) for x in gemms)
    assert tp_backward_block_ns(both, step) == 2 * ag + exposed_cols
    if tp == 8:  # NVLink: every GEMM outlasts its collective, only the row gathers show
        assert exposed_cols == 0
    else:  # across nodes the collectives outlast the GEMMs
        assert exposed_cols > 0
    # Megatron-Core's --tp-comm-overlap with sequence parallelism pairs each collective with
    # its GEMM: the column linears' as the backward overlap does, and each row-parallel
    # linear's output-gradient gather pipelined with its input-gradient GEMM (O: K = 4,096 of
    # q/tp; down: 11,008/tp), exposing max(0, C − G·(tp − 1)/tp)
    tpo = _runtime(sc, tp_backward_overlap=True, tp_regather_backward=True, tp_comm_overlap=True)
    rows = (_gemm_ns(sc, 4096, row_in=4096), _gemm_ns(sc, 4096, row_in=11008))
    piped = sum(math.ceil(max(0.0, ag - x * (tp - 1) / tp)) for x in rows)
    assert tp_backward_block_ns(tpo, step) == piped + exposed_cols


def test_backward_all_reduce_hides_under_the_weight_gradient_without_sp() -> None:
    sc = scenario(16, sp=False)
    step = resolve(sc)
    ar = tp_allreduce_ns(sc, step)
    gemms = (_gemm_ns(sc, 3 * 4096), _gemm_ns(sc, 2 * 11008))  # QKV, gate+up
    on = _runtime(sc, tp_backward_overlap=True)
    assert tp_backward_block_ns(on, step) == sum(math.ceil(max(0.0, ar - w)) for w in gemms)
    assert tp_backward_block_ns(_runtime(sc, tp_backward_overlap=False), step) == 2 * ar


def test_split_backward_has_no_weight_gradient_to_hide_behind() -> None:
    """An I action (zero-bubble, DualPipe) runs W apart: its input-gradient reductions are
    exposed and the re-gather waits for W (Megatron's deferred wgrad); a whole B action of the
    same schedule keeps its overlap. The lowering picks the I or the B figure by action."""
    data_pp = {"tp": 16, "sequence_parallel": True, "pp": 2, "schedule": "zb_h1"}
    sc = scenario(16, sp=True, parallelism=data_pp, training={"global_batch": 4})
    step = resolve(sc)
    g = step.groups
    ag = collective_ns(sc, step, "all_gather", step.boundary_bytes, g.tp, g.tp_stride)
    rs = collective_ns(sc, step, "reduce_scatter", step.boundary_bytes, g.tp, g.tp_stride)
    both = _runtime(sc, tp_backward_overlap=True, tp_regather_backward=True)
    assert tp_backward_block_ns(both, step, input_grad_only=True) == 2 * ag + 2 * rs
    gemms = (_gemm_ns(sc, 3 * 4096), _gemm_ns(sc, 2 * 11008))  # QKV, gate+up
    exposed_cols = sum(math.ceil(max(0.0, ag - x)) + math.ceil(max(0.0, rs - x)) for x in gemms)
    assert tp_backward_block_ns(both, step) == 2 * ag + exposed_cols
    durations = chunk_durations(both, step)[0]
    layers = durations.layers[1] - durations.layers[0]
    emb = tp_edges_ns(both, step, True, False)[1]  # the embedding's gradient gather (stage 0)
    assert emb > 0
    assert durations.tp_input_grad_ns == layers * (2 * ag + 2 * rs) + emb
    assert durations.tp_backward_ns == layers * (2 * ag + exposed_cols) + emb
    i_action = next(a for a in step.schedule[0] if a.kind == "I")
    inp = SimpleNamespace(activation_bytes={0: 0}, working_set_bytes={0: 0}, loss_bytes={})
    assert base_pieces(i_action, durations, inp)[1] == durations.tp_input_grad_ns


def test_saved_gathered_input_and_regather_contradict() -> None:
    """A column-parallel linear saves its all-gathered input (torchtitan, nanotron with
    tp_recompute_allgather: false) or gathers its shard again (Megatron): not both."""
    from simtrain.errors import ConfigError
    from simtrain.spec.runtime import parse_scenario_runtime

    with pytest.raises(ConfigError, match="runtime.tp_regather_backward: cannot be true"):
        parse_scenario_runtime({"name": "nanotron", "tp_saves_gathered_input": True}, "s.yaml")
    rt = parse_scenario_runtime(
        {"name": "nanotron", "tp_saves_gathered_input": True, "tp_regather_backward": False},
        "s.yaml",
    )
    assert rt.tp_saves_gathered_input and not rt.tp_regather_backward


# ---- the hidden part: its own "tp" stream in the timeline (issue 13, Deliver 4)


@pytest.mark.parametrize("tp,sp", [(8, True), (16, True), (16, False)])
def test_exposed_plus_hidden_is_every_collective(tp: int, sp: bool) -> None:
    """Overlap moves time from exposed to hidden, never loses any: exposed + hidden with
    ``tp_backward_overlap`` = exposed without it (the same collectives, all after the GEMMs)."""
    from simtrain.costs.comm import tp_backward_block

    sc = scenario(tp, sp=sp)
    step = resolve(sc)
    on = tp_backward_block(_runtime(sc, tp_backward_overlap=True), step)
    off = tp_backward_block(_runtime(sc, tp_backward_overlap=False), step)
    assert off[1] == 0 and on[1] > 0
    assert on[0] + on[1] == off[0]
    # an I action (no weight-gradient GEMM) hides nothing
    assert tp_backward_block(_runtime(sc, tp_backward_overlap=True), step, True)[1] == 0


def test_hidden_collectives_run_on_their_own_stream_beside_the_backward() -> None:
    """Megatron-Core (async TP backward) on two nodes of TP, pp 2: every backward has a "TP
    overlapped" span on the "tp" stream that starts with the backward's compute and ends
    within it, lasting layers × the block's hidden figure; the step time is the same with and
    without those spans (they delay nothing)."""
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.costs.comm import tp_backward_block

    par = {"tp": 16, "sequence_parallel": True, "pp": 2}
    sc = scenario(16, sp=True, parallelism=par, training={"global_batch": 4})
    step = resolve(sc)
    hidden = tp_backward_block(sc, step)[1]
    assert hidden > 0
    res = simulate_scenario(sc)
    spans = res.timeline.spans
    tp_spans = [s for s in spans if s.stream == "tp"]
    backs = {(s.rank, s.stage, s.microbatch): s for s in spans
             if s.stream == "compute" and s.kind == "B"}  # fmt: skip
    assert len(tp_spans) == len(backs) == 2 * 4  # one per backward of each stage's rank
    for s in tp_spans:
        b = backs[(s.rank, s.stage, s.microbatch)]
        assert s.end_ns - s.start_ns == 1 * hidden  # one layer per stage
        assert s.start_ns == b.start_ns and s.end_ns <= b.end_ns
    assert simulate_scenario(sc, detail=False).metrics.step_time_s == res.metrics.step_time_s


def test_tp_overlap_scenario_states_its_own_figures() -> None:
    """scenarios/llama3_70b_tp_overlap.yaml quotes its step time with and without the
    overlap; both come from simulating it (a cost-model change that moves them fails here
    until the comment is updated), and the overlap must save time."""
    import re
    from pathlib import Path

    from simtrain.apps.simulate import simulate_scenario
    from simtrain.spec.scenario import load_scenario

    path = Path(__file__).resolve().parents[1] / "scenarios" / "llama3_70b_tp_overlap.yaml"
    on_s, off_s = map(float, re.search(r"Step ([\d.]+) s; without the overlap ([\d.]+) s",
                                       path.read_text()).groups())  # fmt: skip
    on = simulate_scenario(load_scenario(path), detail=False).metrics.step_time_s
    off_sc = load_scenario(path, overrides=["runtime.tp_backward_overlap=false"])
    off = simulate_scenario(off_sc, detail=False).metrics.step_time_s
    assert (round(on, 2), round(off, 2)) == (on_s, off_s)
    assert on < off


# ---- TP communication overlap, collective by GEMM (runtime tp_comm_overlap with SP)


def test_pipelined_exposure_closed_form() -> None:
    """A collective of C ns pipelined with its G-ns GEMM in tp chunks takes
    max(C + G/tp, G): C = 10, G = 8, tp 4 exposes 10 + 2 − 8 = 4; a collective shorter than
    (tp − 1)/tp of its GEMM exposes nothing; without a GEMM, all of it."""
    from simtrain.costs.comm import pipelined_exposed_ns

    assert pipelined_exposed_ns(10, 8, 4) == 4
    assert pipelined_exposed_ns(5, 8, 4) == 0
    assert pipelined_exposed_ns(10, 0, 8) == 10
    # against the pipeline played chunk by chunk: the local chunk's GEMM at 0, the other
    # tp − 1 chunks' transfers back to back, each chunk's GEMM once its data is in and the
    # previous GEMM is done
    for c_total, g_total, tp in ((3.0, 7.0, 2), (100.0, 40.0, 8), (12.5, 12.5, 16),
                                 (900.0, 1000.0, 8), (1.0, 5000.0, 4)):  # fmt: skip
        g, c = g_total / tp, c_total / (tp - 1)
        end = g
        for j in range(1, tp):
            end = max(end, j * c) + g
        assert pipelined_exposed_ns(c_total, g_total, tp) == math.ceil(end - g_total - 1e-9)


def _forward_pairs_by_hand(sc, step) -> tuple[int, int, list[int]]:
    """(all-gather, reduce-scatter, exposed ns of each forward pair) of Llama 2 7B under the
    paired overlap, worked by hand: the gather before QKV (N = 3·4096/tp) and gate+up
    (2·11008/tp), the reduce-scatter after O (K = 4096/tp) and down (K = 11008/tp), each
    max(0, C − G·(tp − 1)/tp)."""
    g = step.groups
    ag = collective_ns(sc, step, "all_gather", step.boundary_bytes, g.tp, g.tp_stride)
    rs = collective_ns(sc, step, "reduce_scatter", step.boundary_bytes, g.tp, g.tp_stride)
    pairs = ((ag, _gemm_ns(sc, 3 * 4096)), (rs, _gemm_ns(sc, 4096, row_in=4096)),
             (ag, _gemm_ns(sc, 2 * 11008)), (rs, _gemm_ns(sc, 4096, row_in=11008)))  # fmt: skip
    return ag, rs, [math.ceil(max(0.0, c - x * (g.tp - 1) / g.tp)) for c, x in pairs]


@pytest.mark.parametrize("tp", [8, 16])
def test_forward_collectives_pair_with_their_gemms(tp: int) -> None:
    """Llama 2 7B's forward under --tp-comm-overlap with sequence parallelism: the all-gather
    before QKV (N = 3·4096/tp) and before gate+up (2·11008/tp), the reduce-scatter after O
    (K = 4096/tp) and after down (K = 11008/tp), each pipelined with its GEMM; on one node
    (tp 8, NVLink) only gate+up's GEMM is long enough to hide its gather: QKV, O and down
    leave 2,520, 61,816 and 11,785 ns exposed."""
    from simtrain.costs.comm import tp_forward_block

    sc = _runtime(scenario(tp, sp=True), tp_comm_overlap=True)
    step = resolve(sc)
    ag, rs, by_hand = _forward_pairs_by_hand(sc, step)
    exposed, _ = tp_forward_block(sc, step)
    assert exposed == pytest.approx(sum(by_hand), abs=4)  # 1 ns rounding per pair
    if tp == 8:
        assert by_hand == [2_520, 61_816, 0, 11_785]
    assert ag + rs == tp_allreduce_ns(sc, step)  # SP's halves of the all-reduces
    assert 0 < exposed < 2 * (ag + rs)
    # the plain forward exposes them all; so does an overlap without sequence parallelism,
    # which the lowering overlaps with the whole action instead (max of the two)
    assert tp_forward_block(_runtime(sc, tp_comm_overlap=False), step) == (2 * (ag + rs), 0)
    nosp = _runtime(scenario(tp, sp=False), tp_comm_overlap=True)
    step_n = resolve(nosp)
    assert tp_forward_block(nosp, step_n) == (2 * tp_allreduce_ns(nosp, step_n), 0)
    from simtrain.costs.chunk_time import pooled_tp_overlap

    assert pooled_tp_overlap(nosp, step_n) and not pooled_tp_overlap(sc, step)


def test_paired_overlap_runs_hidden_parts_beside_forward_and_backward() -> None:
    """Two nodes of TP (16), pp 2, --tp-comm-overlap with sequence parallelism: each forward
    and each backward has a "TP overlapped" span on the "tp" stream, starting with its compute
    and lasting layers x the block's hidden figure; the exposed excess is the TP op after the
    compute (the sum of the pairs' excesses), and the spans delay nothing."""
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.costs.comm import tp_backward_block, tp_forward_block

    par = {"tp": 16, "sequence_parallel": True, "pp": 2}
    sc = scenario(16, sp=True, parallelism=par, training={"global_batch": 4},
                  runtime={"tp_comm_overlap": True})  # fmt: skip
    step = resolve(sc)
    f_exp, f_hid = tp_forward_block(sc, step)
    b_hid = tp_backward_block(sc, step)[1]
    assert f_hid > 0 and b_hid > 0
    res = simulate_scenario(sc)
    spans = res.timeline.spans
    compute = {(s.rank, s.stage, s.microbatch, s.kind): s for s in spans
               if s.stream == "compute" and s.kind in ("F", "B")}  # fmt: skip
    tp_spans = [s for s in spans if s.stream == "tp"]
    assert len(tp_spans) == 2 * 2 * 4  # a forward and a backward per micro-batch and stage
    kinds = []
    for s in tp_spans:  # each starts with its own action's compute
        kind = next(k for k in ("F", "B")
                    if compute[(s.rank, s.stage, s.microbatch, k)].start_ns == s.start_ns)  # fmt: skip
        kinds.append(kind)
        assert s.end_ns - s.start_ns == (f_hid if kind == "F" else b_hid)  # one layer a stage
    assert kinds.count("F") == kinds.count("B") == 2 * 4
    exposed_tp = {s.end_ns - s.start_ns for s in spans if s.stream == "collective"
                  and s.kind == "TP"}  # fmt: skip
    # the first stage's forward adds the embedding's collective, the last one's the output
    # layer's and the loss's (tp_edges_ns, exposed)
    emb, head = tp_edges_ns(sc, step, True, False)[0], tp_edges_ns(sc, step, False, True)[0]
    for want in (f_exp + emb, f_exp + head):  # (the lowering's slices round to 1 ns)
        assert any(abs(got - want) <= 1 for got in exposed_tp), (want, exposed_tp)
    assert simulate_scenario(sc, detail=False).metrics.step_time_s == res.metrics.step_time_s


def test_split_backward_keeps_the_paired_overlap() -> None:
    """Zero-bubble's I action under --tp-comm-overlap with sequence parallelism: no weight
    gradient, so each row-parallel gather and each column-parallel reduce-scatter is pipelined
    with the input-gradient GEMM it feeds or follows (worked by hand), and the schedule that
    defers W is not slower than 1F1B with the same overlap (before, the I action exposed every
    collective)."""
    from simtrain.apps.simulate import simulate_scenario

    par = {"tp": 8, "sequence_parallel": True, "pp": 2, "schedule": "zb_h1"}
    sc = scenario(8, sp=True, parallelism=par, training={"global_batch": 8},
                  runtime={"tp_comm_overlap": True})  # fmt: skip
    step = resolve(sc)
    g = step.groups
    ag = collective_ns(sc, step, "all_gather", step.boundary_bytes, g.tp, g.tp_stride)
    rs = collective_ns(sc, step, "reduce_scatter", step.boundary_bytes, g.tp, g.tp_stride)
    rows = (_gemm_ns(sc, 4096, row_in=4096), _gemm_ns(sc, 4096, row_in=11008))
    cols = (_gemm_ns(sc, 3 * 4096), _gemm_ns(sc, 2 * 11008))
    piped = [math.ceil(max(0.0, c - x * 7 / 8)) for c, x in
             ((ag, rows[0]), (ag, rows[1]), (rs, cols[0]), (rs, cols[1]))]  # fmt: skip
    assert tp_backward_block_ns(sc, step, input_grad_only=True) == pytest.approx(
        sum(piped), abs=4)  # fmt: skip
    assert tp_backward_block_ns(sc, step, input_grad_only=True) < 2 * (ag + rs)
    res = simulate_scenario(sc)
    zb = res.metrics.step_time_s
    one = simulate_scenario(replace(sc, parallelism=replace(sc.parallelism, schedule="1f1b")),
                            detail=False).metrics.step_time_s  # fmt: skip
    assert zb <= one
    # what the I actions hide is drawn beside them on the "tp" stream, as for F and B
    from simtrain.costs.comm import tp_backward_block

    hidden_i = tp_backward_block(sc, step, input_grad_only=True)[1]
    i_ops = {(s.rank, s.stage, s.microbatch): s for s in res.timeline.spans
             if s.stream == "compute" and s.kind == "I"}  # fmt: skip
    layers = sc.model.layers // 2
    i_spans = [s for s in res.timeline.spans if s.stream == "tp"
               and i_ops.get((s.rank, s.stage, s.microbatch)) is not None
               and i_ops[(s.rank, s.stage, s.microbatch)].start_ns == s.start_ns]  # fmt: skip
    assert hidden_i > 0 and len(i_spans) == len(i_ops) == 2 * 8
    assert all(s.end_ns - s.start_ns == layers * hidden_i for s in i_spans)
    assert simulate_scenario(sc, detail=False).metrics.step_time_s == zb


@pytest.mark.parametrize("schedule", ["1f1b", "zb_h1"])
def test_hidden_spans_end_within_their_slices_with_recompute(schedule: str) -> None:
    """Full recompute under the paired overlap: the recompute's hidden collectives are their own
    span beside the R slice, the backward's (or I's) beside its own slice; each ends by the end
    of the compute slice it starts with (a span folding the recompute's into the backward's
    once ran 0.57 ms past an I slice) and the spans delay nothing."""
    from simtrain.apps.simulate import simulate_scenario

    par = {"tp": 16, "sequence_parallel": True, "pp": 2, "schedule": schedule}
    sc = scenario(16, sp=True, parallelism=par, runtime={"tp_comm_overlap": True},
                  training={"global_batch": 4, "recompute": "full"})  # fmt: skip
    res = simulate_scenario(sc)
    compute = [s for s in res.timeline.spans if s.stream == "compute"]
    tp_spans = [s for s in res.timeline.spans if s.stream == "tp"]
    assert any("recompute" in s.name for s in tp_spans)
    for s in tp_spans:
        start = next(c for c in compute if c.rank == s.rank and c.start_ns == s.start_ns
                     and c.kind in ("F", "R", "B", "I"))  # fmt: skip
        assert s.end_ns <= start.end_ns, (s.name, start.kind)
    assert simulate_scenario(sc, detail=False).metrics.step_time_s == res.metrics.step_time_s


def test_split_backward_pairs_row_gathers_and_column_reduce_scatters(monkeypatch) -> None:
    """An I action's pairing, told apart from the forward's: with an all-gather 3x the
    reduce-scatter (the model prices the two halves alike, so only unequal halves can show
    which collective meets which GEMM), each row linear's gather is pipelined with its
    input-gradient GEMM (O, down) and each column linear's reduce-scatter with its own (QKV,
    gate+up), by hand; the forward's pairing gives another figure."""
    import simtrain.costs.comm as comm

    sc = scenario(8, sp=True, parallelism={"tp": 8, "sequence_parallel": True, "pp": 2,
                                           "schedule": "zb_h1"},
                  training={"global_batch": 8}, runtime={"tp_comm_overlap": True})  # fmt: skip
    step = resolve(sc)
    ag, rs = 300_000, 100_000
    monkeypatch.setattr(comm, "tp_halves_ns", lambda sc_, step_: (ag, rs))
    rows = (_gemm_ns(sc, 4096, row_in=4096), _gemm_ns(sc, 4096, row_in=11008))  # O, down
    cols = (_gemm_ns(sc, 3 * 4096), _gemm_ns(sc, 2 * 11008))  # QKV, gate+up

    def piped(pairs):
        return sum(math.ceil(max(0.0, c - x * 7 / 8)) for c, x in pairs)

    i_pairs = piped(((ag, rows[0]), (ag, rows[1]), (rs, cols[0]), (rs, cols[1])))
    forward_pairs = piped(((ag, cols[0]), (ag, cols[1]), (rs, rows[0]), (rs, rows[1])))
    exposed, hidden = comm.tp_backward_block(sc, step, input_grad_only=True)
    assert exposed == pytest.approx(i_pairs, abs=4) and exposed + hidden == 2 * (ag + rs)
    assert abs(i_pairs - forward_pairs) > 1_000  # the two pairings differ here


def test_selective_op_recompute_gathers_stay_exposed_under_the_paired_overlap() -> None:
    """selective_op replays k, o and up only (costs.op_sac), not the whole GEMM groups its two
    all-gathers feed: under the paired overlap they stay exposed (hidden 0), as without it;
    a full recompute's four collectives pair as the forward's."""
    from simtrain.costs.chunk_time import tp_recompute_block

    sc = scenario(16, sp=True, runtime={"tp_comm_overlap": True},
                  training={"recompute": "selective_op"})  # fmt: skip
    step = resolve(sc)
    assert tp_recompute_block(sc, step, 3) == (3 * tp_allreduce_ns(sc, step), 0)
    full = replace(sc, training=replace(sc.training, recompute="full"))
    step = resolve(full)
    ag, rs, by_hand = _forward_pairs_by_hand(full, step)  # the forward's pairs, by hand
    exposed, hidden = tp_recompute_block(full, step, 3)
    assert exposed == pytest.approx(3 * sum(by_hand), abs=12)  # 1 ns rounding per pair
    assert exposed + hidden == 3 * 2 * (ag + rs) and hidden > 0


def test_tp_linear_groups_agree_with_the_model_split() -> None:
    """costs.compute.TP_LINEAR_GROUPS' output groups are exactly spec.model's row-parallel
    linears (TP_ROW_PARALLEL), its input groups the column-parallel ones of a SwiGLU block: one
    table of which linear is which, not two that can drift."""
    from simtrain.costs.compute import TP_LINEAR_GROUPS
    from simtrain.spec.model import TP_ROW_PARALLEL

    out = {x for g in ("attn_out", "mlp_out") for x in TP_LINEAR_GROUPS[g]}
    col = {x for g in ("attn_in", "mlp_in") for x in TP_LINEAR_GROUPS[g]}
    assert out == set(TP_ROW_PARALLEL)
    assert col == {"q", "k", "v", "gate", "up"} and not col & set(TP_ROW_PARALLEL)


# ---- the embedding's, the output layer's and the loss's TP collectives (costs.comm.tp_edges_ns)


def _head_gemm_ns(sc: Scenario, tp: int, tokens: int = 4096) -> float:
    """The LM head's weight-gradient GEMM by hand: M = tokens, N = 32,000/tp, K = 4,096,
    2·M·N·K·(1 + L/M + L/N + L/K) FLOPs (the profile's shape term L) at the bf16 matmul rate."""
    hw = sc.hardware
    m, n, k = tokens, 32000 // tp, 4096
    edge = hw.efficiency.gemm_edge_elements
    return (
        1e9
        * 2
        * m
        * n
        * k
        * (1 + edge / m + edge / n + edge / k)
        / (hw.peak("bf16") * hw.efficiency.matmul)
    )


def _edges_by_hand(sc: Scenario, embedding: bool, head: bool) -> tuple[int, int]:
    """Megatron's collectives outside the blocks, counted from its code by hand (the sizes:
    b·s·h = 4096·4096·2 B, the loss's b·s fp32 values 4096·4 B, the logits 4096·32000·2 B)."""
    step = resolve(sc)
    g, sp = step.groups, sc.parallelism.sequence_parallel
    bsh, tokens, logits = 4096 * 4096 * 2, 4096 * 4, 4096 * 32000 * 2

    def c(op: str, size: int) -> int:
        return collective_ns(sc, step, op, size, g.tp, g.tp_stride)

    fwd = bwd = 0
    if embedding:  # VocabParallelEmbedding: all-reduce, or reduce-scatter (backward: gather)
        fwd += c("reduce_scatter", bsh) if sp else c("all_reduce", bsh)
        bwd += c("all_gather", bsh) if sp else 0
    if head:  # ColumnParallelLinear: input gather / gradient reduce-scatter (+ its re-gather)
        fwd += c("all_gather", bsh) if sp else 0
        regather = c("all_gather", bsh) if sp and sc.runtime.tp_regather_backward else 0
        reduction = c("reduce_scatter", bsh) if sp else c("all_reduce", bsh)
        rt = sc.runtime
        if rt.tp_backward_overlap and not rt.tp_comm_overlap:  # beside the head's GEMMs
            gemm = _head_gemm_ns(sc, g.tp)
            reduction = math.ceil(max(0.0, reduction - gemm))
            regather = math.ceil(max(0.0, regather - gemm))
        bwd += reduction + regather
        if sc.training.cross_entropy == "gathered":
            fwd += c("all_gather", logits)
        elif sc.training.cross_entropy == "te":  # TE: every rank's max, sum, target logit
            fwd += c("all_gather", 3 * tokens * g.tp)
        else:  # max, target logit, sum of exponentials
            fwd += 3 * c("all_reduce", tokens)
    return fwd, bwd


@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize("tp", [8, 16])
@pytest.mark.parametrize("cross_entropy",
                         ["standard", "gathered", "vocab_parallel", "te", "sharded"])  # fmt: skip
def test_edges_collectives_by_hand(tp: int, sp: bool, cross_entropy: str) -> None:
    sc = scenario(tp, sp=sp, training={"cross_entropy": cross_entropy})
    step = resolve(sc)
    for embedding, head in ((True, False), (False, True), (True, True), (False, False)):
        got = tp_edges_ns(sc, step, embedding, head)
        assert got == _edges_by_hand(sc, embedding, head), (embedding, head)
    assert tp_edges_ns(sc, step, True, True) != (0, 0)
    one = scenario(1, sp=False)
    assert tp_edges_ns(one, resolve(one), True, True) == (0, 0)


def test_a_frozen_embedding_has_no_backward_gather() -> None:
    """LoRA: the embedding's output needs no gradient, so its reduce-scatter has no backward."""
    sc = scenario(8, sp=True, training={"peft": {"method": "lora"}})
    step = resolve(sc)
    assert tp_edges_ns(sc, step, True, False)[1] == 0
    full = scenario(8, sp=True)
    assert tp_edges_ns(full, resolve(full), True, False)[1] > 0


def test_edges_collectives_land_on_the_first_and_last_stages() -> None:
    """With pp 2 the first chunk's forward TP time is its blocks' plus the embedding's, the last
    one's its blocks' plus the output layer's and the loss's: the difference of the two stages'
    TP times (equal blocks) is exactly those collectives (they were priced nowhere)."""
    sc = scenario(8, sp=True, parallelism={"pp": 2}, training={"global_batch": 2})
    step = resolve(sc)
    d = chunk_durations(sc, step)
    emb, head = tp_edges_ns(sc, step, True, False), tp_edges_ns(sc, step, False, True)
    assert d[0].tp_forward_ns - d[1].tp_forward_ns == emb[0] - head[0]
    assert d[0].tp_backward_ns - d[1].tp_backward_ns == emb[1] - head[1]
    block = d[0].tp_forward_ns - emb[0]
    assert block == d[1].tp_forward_ns - head[0] > 0


def test_output_layer_backward_collectives_only_where_they_run() -> None:
    """The head's input-gradient reduction only where the gradient goes on into the blocks (not
    under linear probing), its re-gather only where its weight trains (not under LoRA, whose
    head is frozen); with the backward overlap each hides behind the head's other GEMM
    (llama3_70b_tp_overlap: Megatron-Core, tp 8 over NVLink, all of it). A review, 2026-12-05."""
    plain = {"tp_backward_overlap": False, "tp_comm_overlap": False}
    full = scenario(8, sp=True, runtime={**plain, "tp_regather_backward": True})
    probe = scenario(8, sp=True, runtime={**plain, "tp_regather_backward": True},
                     training={"peft": {"method": "linear_probe"}})  # fmt: skip
    lora = scenario(8, sp=True, runtime={**plain, "tp_regather_backward": True},
                    training={"peft": {"method": "lora"}})  # fmt: skip
    step = resolve(full)
    g = step.groups
    ag = collective_ns(full, step, "all_gather", step.boundary_bytes, g.tp, g.tp_stride)
    rs = collective_ns(full, step, "reduce_scatter", step.boundary_bytes, g.tp, g.tp_stride)
    assert tp_edges_ns(full, step, False, True)[1] == rs + ag
    assert tp_edges_ns(probe, resolve(probe), False, True)[1] == ag  # the weight trains
    assert tp_edges_ns(lora, resolve(lora), False, True)[1] == rs  # gradient flows, head frozen
    from simtrain.spec.scenario import load_scenario

    tpo = load_scenario("scenarios/llama3_70b_tp_overlap.yaml")
    assert tp_edges_ns(tpo, resolve(tpo), False, True)[1] == 0


def test_output_layer_in_an_input_gradient_action_hides_nothing() -> None:
    """An I action of an I/W split (zero-bubble) has no weight-gradient GEMM: the output
    layer's input-gradient reduce-scatter is exposed whole and its re-gather waits for W, as a
    block's (the first version charged I the overlapped B figure: a re-read, 2026-12-05)."""
    sc = scenario(8, sp=True, runtime={"tp_backward_overlap": True, "tp_comm_overlap": False,
                                       "tp_regather_backward": True})  # fmt: skip
    step = resolve(sc)
    g = step.groups
    rs = collective_ns(sc, step, "reduce_scatter", step.boundary_bytes, g.tp, g.tp_stride)
    assert tp_edges_ns(sc, step, False, True, input_grad_only=True)[1] == rs
    assert tp_edges_ns(sc, step, False, True)[1] < rs  # the B action hides it under the GEMM


def test_output_layer_gemm_is_the_cp_ranks_share() -> None:
    """Under context parallelism the head's GEMM covers the rank's s/cp tokens, so it hides
    a collective cp times shorter than the whole sequence's GEMM would (head_flops ran on the
    whole sequence: a re-read, 2026-12-05)."""
    base = {"tp_backward_overlap": True, "tp_comm_overlap": False, "tp_regather_backward": False}
    one = scenario(16, sp=False, runtime=base)  # two nodes
    two = scenario(16, sp=False, runtime=base, parallelism={"cp": 2},
                   model={"flash_attention": True})  # fmt: skip
    s1, s2 = resolve(one), resolve(two)
    gemm = _head_gemm_ns(one, 16)
    ar1 = tp_allreduce_ns(one, s1)
    ar2 = tp_allreduce_ns(two, s2)  # half the bytes (s/cp tokens)
    assert tp_edges_ns(one, s1, False, True)[1] == max(0, math.ceil(ar1 - gemm))
    # the whole sequence's GEMM would have hidden it all (ar2 < gemm)
    half = _head_gemm_ns(one, 16, tokens=2048)  # the rank's s/cp tokens
    assert ar2 < gemm and tp_edges_ns(two, s2, False, True)[1] == math.ceil(ar2 - half) > 0


def test_parallel_residual_forward_reduces_once() -> None:
    """A parallel-residual block (GPT-J, GPT-NeoX, Pythia) sums its attention and MLP outputs
    before one all-reduce in the forward (gpt-neox ce9bee3b ParallelTransformerLayer.forward,
    gpt_j_residual); the backward keeps two (each branch's input copy), and a full recompute
    replays the forward's one."""
    from simtrain.costs.chunk_time import tp_recompute_block
    from simtrain.costs.comm import tp_backward_block, tp_forward_block

    seq = _runtime(scenario(8, sp=False), tp_comm_overlap=False)
    par = replace(seq, model=replace(seq.model, parallel_residual=True))
    step = resolve(par)
    ar = tp_allreduce_ns(par, step)
    assert ar > 0 and ar == tp_allreduce_ns(seq, resolve(seq))
    assert tp_forward_block(seq, step) == (2 * ar, 0)
    assert tp_forward_block(par, step) == (ar, 0)
    assert tp_backward_block(par, step) == tp_backward_block(seq, step)
    full = replace(par, training=replace(par.training, recompute="full"))
    assert tp_recompute_block(full, step, 3) == (3 * ar, 0)
    assert tp_recompute_block(replace(full, model=seq.model), step, 3) == (6 * ar, 0)
    # with sequence parallelism the all-gather / reduce-scatter pairs stay per branch
    sp = _runtime(scenario(8, sp=True), tp_comm_overlap=False)
    sp_par = replace(sp, model=replace(sp.model, parallel_residual=True))
    assert tp_forward_block(sp_par, resolve(sp_par)) == tp_forward_block(sp, resolve(sp))


def test_vocab_parallel_loss_reduces_per_kernel() -> None:
    """The loss's all-reduces of b·s fp32 values over TP: three for Megatron's
    _VocabParallelCrossEntropy, nanotron's _ShardedCrossEntropy (functional.py l.41, l.73, l.78
    at 2411b022) and PyTorch's loss_parallel (max, target logit, sum of exponentials), two for
    the fused kernel, none when the logits are gathered (the b·s·V all-gather instead); the
    embedding's side has no loss."""
    from simtrain.costs.comm import tp_edges_ns

    sc = _runtime(scenario(8, sp=False), tp_comm_overlap=False)
    step = resolve(sc)
    t = sc.training

    def head_fwd(kind: str) -> int:
        return tp_edges_ns(replace(sc, training=replace(t, cross_entropy=kind)), step,
                           False, True)[0]  # fmt: skip

    one = collective_ns(sc, step, "all_reduce", 4 * t.micro_batch * t.seq_len_effective,
                        step.groups.tp, step.groups.tp_stride)  # fmt: skip
    logits = step.boundary_bytes * sc.model.vocab // sc.model.hidden
    gather = collective_ns(sc, step, "all_gather", logits, step.groups.tp, step.groups.tp_stride)
    assert one > 0
    assert head_fwd("standard") - head_fwd("fused") == one
    assert head_fwd("loss_parallel") == head_fwd("standard")
    assert head_fwd("sharded") - head_fwd("fused") == one
    assert head_fwd("standard") - head_fwd("gathered") == 3 * one - gather
    embed = tp_edges_ns(sc, step, True, False)
    for kind in ("fused", "gathered"):
        assert tp_edges_ns(replace(sc, training=replace(t, cross_entropy=kind)), step, True,
                           False) == embed  # fmt: skip


def test_gradient_reduction_op_by_stage_and_runtime() -> None:
    """One rule for the data-parallel gradient collective (memory, workload, NIC plan and
    planner read it): ZeRO-1/2 reduce-scatter under a reduce-scattering runtime
    (Megatron-Core's distributed optimizer), an all-reduce without ZeRO and under nanotron's
    ZeRO-1 (optim/zero.py all-reduces); the NIC plan's DP latency is that collective's."""
    from simtrain.costs.workload import _dp_latency_s, grad_reduction_op, nic_plan

    sc = scenario(1, False, parallelism={"dp": 8}, training={"global_batch": 8})
    zero1 = replace(sc, parallelism=replace(sc.parallelism, zero_stage=1))
    assert grad_reduction_op(sc) == "all_reduce"
    assert grad_reduction_op(zero1) == "reduce_scatter"
    assert grad_reduction_op(replace(zero1, parallelism=replace(sc.parallelism, zero_stage=2))) \
        == "reduce_scatter"  # fmt: skip
    assert grad_reduction_op(_runtime(zero1, zero_grad_reduction="all_reduce")) == "all_reduce"
    step = resolve(zero1)
    assert nic_plan(zero1, step).dp_latency_s == _dp_latency_s(zero1, step, "reduce_scatter")


def test_torchao_tensorwise_tp_gathers_the_float8_input() -> None:
    """torchtitan's tensorwise float8 TP (9dec370a parallelize_llama.py l.147-160:
    PrepareFloat8ModuleInput before Float8ColwiseParallel; 820504e: tensorwise only) casts the
    norm's output to float8 and all-gathers that: the forward's two input all-gathers move
    b·s·h values at 1 B (the memory model saves the same float8 tensor:
    costs.activations.tp_gathered_input_bytes), the reduce-scatters stay bf16, and a full
    recompute replays the float8 gathers (selective_op only them). Rowwise gathers bf16, and a
    runtime that does not run DTensor's TP (Megatron-Core) is untouched."""
    from simtrain.costs.chunk_time import tp_recompute_block
    from simtrain.costs.comm import tp_forward_block, tp_halves_ns, tp_input_gather_ns

    def titan(precision: str, recompute: str = "none") -> Scenario:
        return scenario(8, sp=True, runtime={"name": "torchtitan", "tp_comm_overlap": False},
                        training={"precision": precision, "recompute": recompute})  # fmt: skip

    sc = titan("fp8_tensorwise")
    step = resolve(sc)
    values = 4096 * 4096  # b·s·h of Llama 2 7B, one sequence
    ag8 = round(1e9 * _nccl(sc, "all_gather", values, 8, 8))
    ag16, rs = tp_halves_ns(sc, step)
    assert ag16 == round(1e9 * _nccl(sc, "all_gather", 2 * values, 8, 8))
    assert tp_input_gather_ns(sc, step) == ag8 < ag16
    assert tp_forward_block(sc, step) == (2 * (ag8 + rs), 0)
    full = titan("fp8_tensorwise", "full")
    assert tp_recompute_block(full, resolve(full), 3) == (6 * (ag8 + rs), 0)
    sel = titan("fp8_tensorwise", "selective_op")
    assert tp_recompute_block(sel, resolve(sel), 3) == (6 * ag8, 0)
    for other in (
        titan("fp8_rowwise"),
        titan("bf16"),
        scenario(8, sp=True, training={"precision": "fp8_tensorwise"}),
    ):
        s2 = resolve(other)
        assert tp_input_gather_ns(other, s2) == tp_halves_ns(other, s2)[0] == ag16


def test_transformer_engine_gathers_fp8_under_sequence_parallelism() -> None:
    """Transformer Engine (0004dbd0 module/layernorm_linear.py): with FP8 and sequence
    parallelism a LayerNormLinear writes its norm's output in FP8 (``ln_out_dtype =
    torch.uint8``) and all-gathers that, in the forward and again for the weight gradient; a
    row-parallel Linear gathers its FP8-cast output gradient. So every TP all-gather of a
    dense block moves 1 B per value (per-tensor recipes: MXFP8's block-scaled gathers are priced
    in bf16), the reduce-scatters stay bf16, and an MoE block's MLP gathers (the dispatcher's)
    stay bf16."""
    from simtrain.costs.chunk_time import tp_recompute_block
    from simtrain.costs.comm import (
        tp_backward_block,
        tp_forward_block,
        tp_grad_gather_ns,
        tp_halves_ns,
        tp_input_gather_ns,
    )

    def te(precision: str, hardware: str = "h100_sxm5_80gb") -> Scenario:
        sc = scenario(8, sp=True, training={"precision": precision}, hardware=hardware)
        return _runtime(sc, tp_comm_overlap=False)

    values = 4096 * 4096  # b·s·h of Llama 2 7B, one sequence
    sc = te("fp8_delayed")
    step = resolve(sc)
    ag16, rs = tp_halves_ns(sc, step)
    ag8 = round(1e9 * _nccl(sc, "all_gather", values, 8, 8))
    assert ag8 < ag16
    assert rs == round(1e9 * _nccl(sc, "reduce_scatter", 2 * values, 8, 8))  # bf16, 2 B a value
    for mlp in (False, True):
        assert tp_input_gather_ns(sc, step, mlp) == tp_grad_gather_ns(sc, step, mlp) == ag8
    assert tp_forward_block(sc, step) == (2 * (ag8 + rs), 0)
    bf16 = te("bf16")
    fwd16 = tp_forward_block(bf16, resolve(bf16))[0]
    assert fwd16 - tp_forward_block(sc, step)[0] == 2 * (ag16 - ag8)
    # backward: 2 row gathers + 2 regathers in FP8, 2 reduce-scatters in bf16 (exposed + hidden)
    assert sum(tp_backward_block(sc, step)) == 4 * ag8 + 2 * rs
    assert sum(tp_backward_block(bf16, resolve(bf16))) == 4 * ag16 + 2 * rs
    # current scaling likewise; MXFP8's block-scaled gathers are not read: priced in bf16
    cs = te("fp8_current")
    assert tp_input_gather_ns(cs, resolve(cs)) == ag8
    mx = te("mxfp8", "b200_180gb")
    mx_step = resolve(mx)
    assert tp_input_gather_ns(mx, mx_step) == tp_halves_ns(mx, mx_step)[0]
    # an MoE block: the attention's gathers FP8, the MLP's (the token dispatcher's) bf16
    mixtral = {"preset": "mixtral-8x7b", "layers": 2}
    moe = scenario(8, sp=True, training={"precision": "fp8_delayed"}, model=mixtral)
    moe = _runtime(moe, tp_comm_overlap=False)
    moe_step = resolve(moe)
    moe_ag16 = tp_halves_ns(moe, moe_step)[0]
    assert tp_input_gather_ns(moe, moe_step) < moe_ag16
    assert tp_input_gather_ns(moe, moe_step, mlp=True) == moe_ag16
    assert tp_grad_gather_ns(moe, moe_step, mlp=True) == moe_ag16
    # ... and through the block functions: forward, backward and a full recompute's replay
    moe_ag8, moe_rs = tp_input_gather_ns(moe, moe_step), tp_halves_ns(moe, moe_step)[1]
    assert tp_forward_block(moe, moe_step) == (moe_ag8 + moe_ag16 + 2 * moe_rs, 0)
    assert sum(tp_backward_block(moe, moe_step)) == 2 * (moe_ag8 + moe_ag16) + 2 * moe_rs
    full = replace(moe, training=replace(moe.training, recompute="full"))
    assert tp_recompute_block(full, resolve(full), 3) == (3 * (moe_ag8 + moe_ag16 + 2 * moe_rs), 0)
    # an MLA block's attention gathers bf16, as its backward's all-reduces
    mla = scenario(8, sp=True, training={"precision": "fp8_current"},
                   model={"preset": "deepseek-v3", "layers": 4})  # fmt: skip
    mla = _runtime(mla, tp_comm_overlap=False)
    mla_step = resolve(mla)
    assert tp_input_gather_ns(mla, mla_step) == tp_halves_ns(mla, mla_step)[0]
    # bf16 and torchao rowwise gather bf16
    for other in (te("bf16"), scenario(8, sp=True, training={"precision": "fp8_rowwise"})):
        s2 = resolve(other)
        assert tp_input_gather_ns(other, s2) == tp_grad_gather_ns(other, s2) == ag16
