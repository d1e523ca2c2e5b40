"""Megatron-Core's combined 1F1B (``--overlap-moe-expert-parallel-comm``): a forward and the
backward of another micro-batch run as one unit whose expert all-to-alls hide behind each
other's compute (NVIDIA/Megatron-LM d98e8a64 core/pipeline_parallel/combined_1f1b.py,
schedules.py l.966-970). Closed forms from the chunk durations, and Megatron's own checks."""

from __future__ import annotations

import pytest

from simtrain.apps.simulate import simulate_scenario
from simtrain.costs.activations import merged_pairs_backward_first
from simtrain.costs.memory import estimate_memory
from simtrain.costs.workload import lowering_input
from simtrain.errors import ConfigError
from simtrain.layout.step import resolve
from simtrain.schedules.registry import build_schedule, microbatches_in_flight
from simtrain.spec.scenario import parse_scenario

M = 6  # micro-batches


def _sc(schedule: str, **par):
    return parse_scenario({
        "name": "ep", "hardware": "h100_sxm5_80gb",
        "model": {"preset": "mixtral-8x7b", "layers": 2, "flash_attention": True},
        "cluster": {"nodes": 2, "gpus_per_node": 4},  # EP 8 over two nodes: a slow all-to-all
        "training": {"seq_len": 2048, "global_batch": 8 * M, "micro_batch": 1,
                     "precision": "bf16"},
        "parallelism": {"dp": 8, "tp": 1, "pp": 1, "ep": 8, "schedule": schedule, **par},
    }, "ep.yaml")  # fmt: skip


def _compute_window(sc) -> int:
    """From the first forward's start to the last backward's end on the compute stream."""
    spans = [s for s in simulate_scenario(sc).timeline.spans
             if s.rank == 0 and s.stream == "compute" and s.kind in ("F", "B")]  # fmt: skip
    return max(s.end_ns for s in spans) - min(s.start_ns for s in spans)


def test_one_stage_order_has_one_more_warmup_forward():
    """pp = 1: F0, F1 B0, F2 B1, ..., B(m-1) (combined_1f1b_schedule_for_no_pipelining)."""
    order = [(a.kind, a.microbatch) for a in build_schedule("combined_1f1b", 1, 4)[0]]
    assert order == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("F", 3), ("B", 2),
                     ("B", 3), ("OPT", None)]  # fmt: skip
    assert resolve(_sc("combined_1f1b")).schedule_name == "combined_1f1b"


def test_pairs_overlap_the_all_to_alls(monkeypatch):
    """Step window, with C/A a micro-batch's compute/all-to-all time, forward F and backward B:
    1F1B pays m(C_F + A_F + C_B + A_B); combined 1F1B pays F0 and the last B alone and each
    of the m - 1 pairs max(C_F + C_B, A_F + A_B): (C_F + A_F) + (m-1) max(...) + C_B, the
    window ending at the last backward's compute. (The gradient buckets' NCCL kernels would
    slow the last backward they overlap, sim.lowering.sms: held at 0 SMs here, the pairing is
    what is checked; tests/test_sm_contention.py checks the holds.)"""
    monkeypatch.setattr("simtrain.apps.simulate.nccl_kernel_sms", lambda sc: 0)
    sc = _sc("combined_1f1b")
    c = lowering_input(sc, resolve(sc), estimate_memory(sc)).chunks[0]
    cf, cb = c.forward_ns, c.input_grad_ns + c.weight_grad_ns
    af, ab = c.ep_forward_ns, c.ep_backward_ns
    assert af > 0 and ab > 0
    pair = max(cf + cb, af + ab)
    assert _compute_window(sc) == (cf + af) + (M - 1) * pair + cb
    base = _sc("1f1b")
    assert _compute_window(base) == M * (cf + af + cb + ab) - ab
    assert simulate_scenario(sc).metrics.step_time_s < simulate_scenario(base).metrics.step_time_s


def test_one_microbatch_in_flight_without_pipelining():
    """Without pipelining each forward runs merged with the previous micro-batch's backward,
    layer i beside layer L − 1 − i, which releases its saved tensors as the forward stores
    its own (Megatron-Core model_chunk_schedule_plan.py ``run``, ``release_state``): one
    micro-batch in flight, as 1F1B, not the two a whole-chunk walk of F1 before B0 counts (the
    walk is exact but for that one layer). Its schedule keeps the warm-up forward F0, F1 B0."""
    a = estimate_memory(_sc("combined_1f1b")).stages[0]
    b = estimate_memory(_sc("1f1b")).stages[0]
    assert a.microbatches_in_flight == microbatches_in_flight("combined_1f1b", 1, M, 0) == 1
    assert a.category("activations") == b.category("activations")
    order = [(x.kind, x.microbatch) for x in build_schedule("combined_1f1b", 1, M)[0][:4]]
    assert order == [("F", 0), ("F", 1), ("B", 0), ("F", 2)]
    walked = merged_pairs_backward_first(build_schedule("combined_1f1b", 1, M)[0], 1)
    assert [(x.kind, x.microbatch) for x in walked[:4]] == [("F", 0), ("B", 0), ("F", 1), ("B", 1)]


@pytest.mark.parametrize("pp", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 16])
def test_walk_and_closed_form_agree(pp: int, m: int):
    """The compressed walk of combined 1F1B (its merged pairs backward first) gives the peak
    the reference walk gives on that order, with unit chunk bytes the closed form's
    micro-batches in flight, 1F1B's min(m, p − s) (v = 1); only the steady-state pairs move:
    with m at most the warm-up, F(last) then B0 are not merged and count whole."""
    from simtrain.costs.activations import (
        activation_peak,
        activation_peak_of_states,
        rank_activation_states,
    )
    from simtrain.layout.step import rank_schedule
    from simtrain.schedules.generators import interleaved_warmup

    for rank in range(pp):
        actions = rank_schedule("combined_1f1b", pp, m, 1, rank)
        order = merged_pairs_backward_first(actions, interleaved_warmup(rank, pp, m, 1, 1))
        assert sorted(map(str, order)) == sorted(map(str, actions))  # a reordering only
        states = rank_activation_states("combined_1f1b", pp, m, 1, rank)
        unit = {rank: 1}
        got = activation_peak_of_states(states, unit, {rank: 0}, {})
        assert got == activation_peak(order, unit, {rank: 0}, {})
        assert got[0] == microbatches_in_flight("combined_1f1b", pp, m, rank) == min(m, pp - rank)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"parallelism": {"ep": 1}}, "parallelism.schedule"),
        ({"parallelism": {"pp": 2}, "model": {"layers": 4}}, "parallelism.virtual_stages"),
        ({"training": {"recompute": "full"}}, "training.recompute"),
    ],
)
def test_megatron_refusals(change: dict, key: str):
    """Megatron-Core's asserts (transformer_config.py l.3002-3032): EP > 1, virtual stages with
    pp > 1, no full recompute; each one line naming the key."""
    data = {
        "name": "ep", "hardware": "h100_sxm5_80gb",
        "model": {"preset": "mixtral-8x7b", "layers": 2},
        "cluster": {"nodes": 2, "gpus_per_node": 4},
        "training": {"seq_len": 2048, "global_batch": 48, "micro_batch": 1, "precision": "bf16"},
        "parallelism": {"dp": 8, "tp": 1, "pp": 1, "ep": 8, "schedule": "combined_1f1b"},
    }  # fmt: skip
    for sec, kv in change.items():
        data[sec] = {**data[sec], **kv}
    if data["parallelism"]["pp"] == 2:
        data["parallelism"]["dp"] = 4
        data["parallelism"]["ep"] = 4
    with pytest.raises(ConfigError) as e:
        parse_scenario(data, "ep.yaml")
    assert key in str(e.value)


def test_interleaved_pairs_with_a_dense_chunk():
    """pp 2 x v 2 with the first layer dense (a chunk without all-to-alls): the pairs whose
    partner has none are left alone, and overlapping the rest beats interleaved's step."""
    data = {
        "name": "ep", "hardware": "h100_sxm5_80gb",
        "model": {"preset": "mixtral-8x7b", "layers": 4, "first_dense_layers": 1,
                  "flash_attention": True},
        "cluster": {"nodes": 2, "gpus_per_node": 8},
        "training": {"seq_len": 2048, "global_batch": 64, "micro_batch": 1, "precision": "bf16"},
        "parallelism": {"dp": 8, "tp": 1, "pp": 2, "ep": 8, "virtual_stages": 2,
                        "schedule": "combined_1f1b"},
    }  # fmt: skip
    combined = simulate_scenario(parse_scenario(data, "ep.yaml")).metrics
    data["parallelism"] = {**data["parallelism"], "schedule": "interleaved"}
    plain = simulate_scenario(parse_scenario(data, "ep.yaml")).metrics
    assert combined.step_time_s < plain.step_time_s


def test_an_overlapped_all_to_all_waits_for_its_own_actions_input() -> None:
    """In an overlapped F&B pair the second action's all-to-alls start with the pair, but not
    before the second action's own input has arrived: a backward's gradient from the next
    stage, a forward's activation from the previous one (Megatron-Core's combined 1F1B and
    DualPipe receive both inputs before the pair runs). Mixtral 8x7B, combined 1F1B, v 2
    (review: 31 all-to-alls started before their gradient had arrived; the step time the same)."""
    from simtrain.spec.scenario import load_scenario

    sc = load_scenario("scenarios/mixtral_8x7b_ep8.yaml", [
        "parallelism.schedule=combined_1f1b", "parallelism.virtual_stages=2"])  # fmt: skip
    spans = simulate_scenario(sc).timeline.spans
    ends = {(s.kind, s.stage, s.microbatch): s.end_ns for s in spans
            if s.kind in ("SEND_F", "SEND_B")}  # fmt: skip
    forward_end = {(s.stage, s.microbatch): s.end_ns for s in spans if s.kind == "F"}
    checked = 0
    for s in spans:
        if s.kind != "A2A" or "(overlapped)" not in s.name:
            continue
        backward = s.start_ns >= forward_end.get((s.stage, s.microbatch), float("inf"))
        key = ("SEND_B", s.stage + 1, s.microbatch) if backward else ("SEND_F", s.stage - 1,
                                                                       s.microbatch)  # fmt: skip
        if key in ends:
            assert s.start_ns >= ends[key], s.name
            checked += 1
    assert checked > 30
