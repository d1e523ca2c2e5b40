"""DualPipe (bidirectional; DeepSeek-AI github.com/deepseek-ai/DualPipe 3da1bbe
``dualpipe/dualpipe.py`` ``DualPipe.step``): the action lists, the "dual" placement, validity,
the README's bubble and activation peak in unit time, and the scenario refusal."""

from __future__ import annotations

import copy
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from test_invariants import check_outputs, scenario_data

from simtrain.errors import ConfigError, ScheduleError
from simtrain.schedules import (
    COMM_KINDS,
    SCHEDULES,
    Action,
    add_p2p,
    build_schedule,
    dualpipe,
    dualpipe_p2p,
    microbatch_stages,
    peak_in_flight,
    rank_stages,
    simulate_unit,
    stage_to_rank,
    validate_schedule,
)
from simtrain.spec.scenario import parse_scenario

ROOT = Path(__file__).resolve().parent.parent
UNIT = {"F": 1, "B": 2, "I": 1, "W": 1}  # a stage's F, full B = I + W
PPS = (2, 4, 6, 8)


def _ms(pp: int) -> range:
    return range(2 * pp, 2 * pp + 13, 2)


def _idle(schedule, pp: int, durations) -> set:
    makespan, busy = simulate_unit(schedule, pp, 2, durations, "dual")
    return {makespan - b for b in busy.values()}


def test_dual_placement_and_routes():
    """Virtual stage p+s is model stage s's copy on rank p-1-s (example_dualpipe.py l.138:
    rank r holds full_modules[r] and full_modules[pp-1-r]); micro-batches 0..m/2-1 run down
    stages 0..p-1, the rest up p..2p-1."""
    assert [stage_to_rank(s, 4, 2, "dual") for s in range(8)] == [0, 1, 2, 3, 3, 2, 1, 0]
    assert rank_stages(0, 4, 2, "dual") == [0, 7]
    assert [list(microbatch_stages(j, 8, 8, "dual")) for j in (0, 3, 4, 7)] == [
        [0, 1, 2, 3], [0, 1, 2, 3], [4, 5, 6, 7], [4, 5, 6, 7]]  # fmt: skip
    # rank 0 is the first stage down (F from the data) and the last stage up (the loss)
    lowered = add_p2p(dualpipe(2, 4), 2, 2, "dual")
    assert [str(a) for a in lowered[0][:5]] == ["0F0", "0SEND_F0", "3RECV_F2", "3F2", "0F1"]
    assert Action(3, "SEND_F", 2) not in lowered[1]  # stage 3 (rank 0) is up's last: no send


def test_rank_order_hand_derived_pp4_m8():
    """pp = 4, m = 8 by hand from DualPipe.step: rank 0 (half_rank 0): step 1 two F0, step 2
    (F0, F1), step 3 one (I1, W, F1), step 4 m/2-pp+1 = 1 (F0&B1, F1&B0), step 5 one (B1,
    F1&B0), step 6 (B1, B0) with zero bubble from i = 0 on (half_rank even: B1 full, I0), step
    7 (W, I0), step 8 one W. Rank 3 is rank 0 with the directions swapped."""
    s = dualpipe(4, 8)
    assert [str(a) for a in s[0]] == [
        "0F0", "0F1", "0F2", "7F4", "7I4", "7W4", "7F5", "0F3", "7B5", "7F6", "0B0",
        "7B6", "7F7", "0B1", "7B7", "0I2", "0W2", "0I3", "0W3", "0OPT",
    ]  # fmt: skip
    assert [str(a) for a in s[3]] == [
        "4F4", "4F5", "4F6", "3F0", "3I0", "3W0", "3F1", "4F7", "3B1", "3F2", "4B4",
        "3B2", "3F3", "4B5", "3B3", "4I6", "4W6", "4I7", "4W7", "3OPT",
    ]  # fmt: skip


@pytest.mark.parametrize("pp", PPS)
def test_valid_step_and_p2p_order(pp):
    """Every (stage, micro-batch) of each micro-batch's own pipeline has one F and either one
    B or one I and one W, F before B, I before W, on the stage's rank; nothing off the route;
    the lowered lists (add_p2p's, and DualPipe's own send/receive points) pair every SEND
    with its RECV and run without deadlock."""
    for m in _ms(pp):
        s = dualpipe(pp, m)
        validate_schedule(s, pp, m, 2, split_backward=None, placement="dual")
        validate_schedule(add_p2p(s, pp, 2, "dual"), pp, m, 2, split_backward=None,
                          placement="dual")  # fmt: skip
        own = dualpipe_p2p(pp, m)
        validate_schedule(own, pp, m, 2, split_backward=None, placement="dual")
        assert {r: [a for a in acts if a.kind not in COMM_KINDS] for r, acts in own.items()} == s
        counts = {k: sum(a.kind == k for acts in s.values() for a in acts) for k in "FBIW"}
        assert counts["F"] == pp * m and counts["B"] + counts["I"] == pp * m
        assert counts["I"] == counts["W"] > 0


def test_validator_rejects_off_route_and_one_pipeline_deps():
    s = dualpipe(2, 4)
    s[0][0] = Action(0, "F", 2)  # micro-batch 2 runs up, not on stage 0
    with pytest.raises(ScheduleError, match="micro-batch 2 runs on stages 2..3 only"):
        validate_schedule(s, 2, 4, 2, split_backward=None, placement="dual")
    with pytest.raises(ScheduleError):  # as one pipeline 0..2p-1 the up direction never starts
        validate_schedule(dualpipe(2, 4), 2, 4, 2, split_backward=None, placement="v")


@pytest.mark.parametrize("pp", PPS)
def test_bubble_readme_with_dualpipes_sends(pp):
    """README table (3da1bbe): DualPipe's bubble (PP/2-1)(F&B+B-3W), PP = ranks. With
    DualPipe's own send points (both outputs of an overlapped F&B leave after the pair,
    ``_forward_backward_chunk``), F&B = F + B, every rank idles exactly that: F = 1, B = 2,
    W = 1 gives PP - 2; so do F = 2, B = 3, W = 1 and F = 3, B = 5, W = 2 (W <= F)."""
    for m in _ms(pp):
        for d in (UNIT, {"F": 2, "B": 3, "I": 2, "W": 1}, {"F": 3, "B": 5, "I": 3, "W": 2}):
            readme = (pp // 2 - 1) * (d["F"] + d["B"] + d["B"] - 3 * d["W"])
            assert _idle(dualpipe_p2p(pp, m), pp, d) == {readme}, (pp, m, d)
        makespan, busy = simulate_unit(dualpipe_p2p(pp, m), pp, 2, UNIT, "dual")
        assert set(busy.values()) == {3 * m}  # m/2 micro-batches x 2 directions x (F + B)
        assert makespan == 3 * m + pp - 2


@pytest.mark.parametrize("pp", PPS)
def test_bubble_flattened_f_then_b_is_smaller(pp):
    """Run as F then B with each output sent when its own computation ends (add_p2p, what
    simtrain plays), the pair's forward output leaves F earlier, and each rank idles
    (PP/2-1)(2B-3W): F = 1, B = 2, W = 1 gives PP/2 - 1, half the README's; the registry's
    closed form (p-2)/(6m+p-2)."""
    for m in _ms(pp):
        for d in (UNIT, {"F": 2, "B": 3, "I": 2, "W": 1}, {"F": 3, "B": 5, "I": 3, "W": 2}):
            flat = (pp // 2 - 1) * (2 * d["B"] - 3 * d["W"])
            assert _idle(dualpipe(pp, m), pp, d) == {flat}, (pp, m, d)
            assert _idle(add_p2p(dualpipe(pp, m), pp, 2, "dual"), pp, d) == {flat}
        makespan, busy = simulate_unit(dualpipe(pp, m), pp, 2, UNIT, "dual")
        bubble = 1 - Fraction(sum(busy.values()), pp * makespan)
        assert bubble == Fraction(pp - 2, 6 * m + pp - 2)
        assert SCHEDULES["dualpipe"].bubble(pp, m, 2) == pytest.approx(float(bubble), abs=1e-12)


@pytest.mark.parametrize("pp", PPS)
def test_activation_peak_is_pp_plus_one(pp):
    """README: "Activation Per Device PP+1": every rank holds at most PP + 1 stage
    activations (F until its B or W), the registry's in-flight closed form."""
    for m in _ms(pp):
        assert set(peak_in_flight(dualpipe(pp, m)).values()) == {pp + 1}
        # in micro-batches of the rank's layers (both copies), the memory walk's unit
        assert SCHEDULES["dualpipe"].in_flight(pp, m, 0, 2) == (pp + 1) / 2


def test_bad_input_one_line_errors():
    for pp, m, match in ((3, 12, "pp must be even"), (4, 6, "at least 2 x pp = 8"),
                         (4, 9, "must be even"), (0, 8, "pp must be an integer")):  # fmt: skip
        with pytest.raises(ScheduleError, match=match) as err:
            build_schedule("dualpipe", pp, m)
        assert "\n" not in str(err.value)
    with pytest.raises(ScheduleError, match="2 chunks"):
        dualpipe(4, 8, 1)


def _scenario(*extra: str):
    from simtrain.spec.scenario import load_scenario

    return load_scenario(
        ROOT / "scenarios" / "zero_bubble_8gpu.yaml",
        ["parallelism.pp=4", "parallelism.dp=2", "training.global_batch=128", *extra],
    )  # fmt: skip


def test_engine_runs_both_directions_and_conserves_time():
    """gpt2-xl on 8 A100s, pp = 4, m = 8: every rank runs m/2 micro-batches on each of its
    two stage copies (4 down, 4 up), time is conserved (test_metrics.check_step, each chunk's
    work counted over the micro-batches of its direction), no message crosses between the
    two pipelines (stage 3 sends nothing forward, stage 4 nothing back), and the step is
    shorter than DualPipeV's and 1F1B's on the same layout."""
    from test_metrics import check_step

    from simtrain.apps.simulate import simulate_scenario

    sc = _scenario("parallelism.schedule=dualpipe")
    check_step(sc)
    res = simulate_scenario(sc)
    fwd = [s for s in res.timeline.spans if s.stream == "compute" and s.kind == "F"]
    for rank in range(4):
        down, up = rank, 7 - rank
        mine = {(s.stage, s.microbatch) for s in fwd if s.rank == rank}
        assert mine == {(down, j) for j in range(4)} | {(up, j) for j in range(4, 8)}
    sends = {(s.kind, s.stage) for s in res.timeline.spans if s.stream == "p2p"}
    assert ("SEND_F", 3) not in sends and ("SEND_B", 4) not in sends
    assert ("SEND_F", 2) in sends and ("SEND_B", 5) in sends
    step = res.metrics.step_time_s
    for other in ("dualpipe_v", "1f1b"):
        assert (
            step < simulate_scenario(_scenario(f"parallelism.schedule={other}")).metrics.step_time_s
        )


def test_memory_holds_both_copies():
    """Rank r holds model stages r and pp-1-r (README "Parameter Per Device 2x"): its
    parameters, gradients and optimizer states are 1F1B's ranks r and pp-1-r together; the
    memory walk's peak is PP + 1 = 5 stage activations, 2.5 micro-batches of both copies."""
    from simtrain.costs.memory import estimate_memory

    dual = estimate_memory(_scenario("parallelism.schedule=dualpipe")).stages
    flush = estimate_memory(_scenario("parallelism.schedule=1f1b")).stages
    for r in range(4):
        assert dual[r].params == flush[r].params + flush[3 - r].params
        assert dual[r].microbatches_in_flight == 2.5  # PP + 1 = 5 stage activations


def test_planner_closed_form_tracks_the_engine():
    """apps.plan.estimate: m x (a rank's two chunks)/2 plus (p/2-1)(2B-3W), against the event
    simulation of the same layout (gpt2-xl, 8 A100s, pp = 4, m = 8). Measured when written:
    1.242 vs 1.185 s (+4.8 %); the bound is the other zero-bubble schedules' 8 %."""
    from simtrain.apps.plan.estimate import closed_form_step_s
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.costs.memory import estimate_memory

    sc = _scenario("parallelism.schedule=dualpipe")
    est = closed_form_step_s(sc, estimate_memory(sc).stages)
    assert est == pytest.approx(simulate_scenario(sc).metrics.step_time_s, rel=0.08)


@pytest.mark.parametrize(
    ("extra", "key", "text"),
    [
        (["parallelism.pp=2", "parallelism.dp=4", "training.global_batch=16"],
         "training.global_batch", "needs at least 4 micro-batches"),  # m = 2 < 2 x pp
        (["training.global_batch=144"], "training.global_batch", "= 9 must be even"),
        (["parallelism.pp=3", "cluster.gpus_per_node=6"], "parallelism.pp", "needs an even pp"),
        (["parallelism.layer_split=compute_balanced"], "parallelism.layer_split",
         "pp stages, each held twice"),
        (["parallelism.virtual_stages=4"], "parallelism.virtual_stages", "2 chunks per rank"),
    ],
)  # fmt: skip
def test_scenario_bad_input_names_the_key(extra, key, text):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        _scenario("parallelism.schedule=dualpipe", *extra)
    assert text in str(err.value) and "\n" not in str(err.value)


def test_hardware_flops_count_each_micro_batch_once():
    """Each micro-batch runs through one copy of each stage: the step's hardware FLOPs are
    1F1B's on the same layout, not twice them."""
    from simtrain.costs.compute import hardware_flops_per_step

    assert hardware_flops_per_step(_scenario("parallelism.schedule=dualpipe")) == (
        pytest.approx(hardware_flops_per_step(_scenario("parallelism.schedule=1f1b")), rel=1e-12)
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario_data(schedule="dualpipe"))
def test_generated_dualpipe_scenarios_keep_every_invariant(data):
    """tests/test_invariants.py's checks (bubble, utilisation at most 1, memory, time
    conservation, outputs) on generated layouts that run DualPipe (drawn as such, pp 2 or 4)."""
    assert data["parallelism"]["schedule"] == "dualpipe" and data["parallelism"]["pp"] > 1
    check_outputs(parse_scenario(copy.deepcopy(data), "hyp.yaml"))


def test_engine_overlaps_dualpipes_own_pairs():
    """The F&B pairs are DualPipe.step's ``_forward_backward_chunk`` calls: on rank 0 of pp 4,
    m 8: step 4's (0F3, 7B5) and (7F6, 0B0), step 5's lone 7B6 then (7F7, 0B1); a greedy
    pairing of adjacent F/B would take (7B6, 7F7) and leave 0B1 alone. An MoE model with
    expert parallelism: each paired action's all-to-all ends in a join, one per action."""
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.schedules import dualpipe_fb_pairs

    assert dualpipe_fb_pairs(4, 8)[0] == {Action(0, "F", 3), Action(7, "F", 6), Action(7, "F", 7)}
    # the middle ranks' first step-4 pair is not overlapped ("to further reduce bubble size")
    assert [len(dualpipe_fb_pairs(4, 8)[r]) for r in range(4)] == [3, 3, 3, 3]
    sc = parse_scenario({
        "name": "ep", "hardware": "h100_sxm5_80gb",
        "model": {"preset": "mixtral-8x7b", "layers": 4, "flash_attention": True},
        "cluster": {"nodes": 2, "gpus_per_node": 4},
        "training": {"seq_len": 2048, "global_batch": 16, "micro_batch": 1, "precision": "bf16"},
        "parallelism": {"dp": 2, "tp": 1, "pp": 4, "ep": 2, "schedule": "dualpipe"},
    }, "ep.yaml")  # fmt: skip
    spans = simulate_scenario(sc).timeline.spans
    joins = sorted((s.stage, s.microbatch) for s in spans if s.rank == 0 and s.kind == "JOIN")
    assert joins == [(0, 0), (0, 1), (0, 3), (7, 5), (7, 6), (7, 7)]
