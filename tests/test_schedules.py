"""Pipeline schedules: exact bubble formulas, in-flight limits, validity and simulator invariants."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_pipelining import planned_orders, torch_schedules

from simtrain.errors import ScheduleError
from simtrain.schedules import (
    KINDS,
    SCHEDULES,
    Action,
    add_p2p,
    build_schedule,
    format_grid,
    format_timeline,
    gpipe,
    has_split_backward,
    interleaved,
    naive,
    one_f_one_b,
    peak_in_flight,
    pipedream,
    pipedream_weight_versions,
    rank_stages,
    simulate_spans,
    simulate_unit,
    stage_to_rank,
    validate_schedule,
    zb_h1,
    zb_v,
)
from simtrain.schedules.generators import dualpipe_v

PPS = range(1, 9)
MS = range(1, 17)
T_PAIRS = [(1, 1), (1, 2), (2, 3), (3, 1)]


def bubble(makespan, busy, pp) -> Fraction:
    return 1 - Fraction(sum(busy.values())) / (pp * Fraction(makespan))


# ---------------------------------------------------------------- actions


def test_action_str_and_parse_round_trip():
    assert str(Action(1, "F", 3)) == "1F3"
    assert str(Action(0, "OPT")) == "0OPT"
    assert str(Action(12, "SEND_B", 7)) == "12SEND_B7"
    for kind in KINDS:
        a = Action(2, kind, None if kind == "OPT" else 5)
        assert Action.parse(str(a)) == a
    for bad in ["F3", "1X3", "1F", "0OPT2", ""]:
        with pytest.raises(ScheduleError):
            Action.parse(bad)


def test_stage_to_rank_interleaved_layout():
    assert [stage_to_rank(s, 4, 2) for s in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert rank_stages(1, 4, 3) == [1, 5, 9]
    with pytest.raises(ScheduleError):
        stage_to_rank(8, 4, 2)
    with pytest.raises(ScheduleError):
        rank_stages(4, 4, 1)


# ---------------------------------------------------------------- exact bubble formulas


@pytest.mark.parametrize("gen", [gpipe, one_f_one_b, pipedream])
@pytest.mark.parametrize("pp", PPS)
def test_gpipe_1f1b_makespan_and_bubble_exact(gen, pp):
    for m in MS:
        schedule = gen(pp, m)
        for t_f, t_b in T_PAIRS:
            makespan, busy = simulate_unit(schedule, pp, 1, {"F": t_f, "B": t_b})
            assert makespan == (m + pp - 1) * (t_f + t_b), (pp, m, t_f, t_b)
            assert bubble(makespan, busy, pp) == Fraction(pp - 1, m + pp - 1)


@pytest.mark.parametrize("pp", PPS)
@pytest.mark.parametrize("v", [2, 3, 4])
def test_interleaved_bubble_exact(pp, v):
    for m in range(pp, 17, pp):
        schedule = interleaved(pp, m, v)
        for t_f, t_b in T_PAIRS:
            durations = {"F": Fraction(t_f, v), "B": Fraction(t_b, v)}
            makespan, busy = simulate_unit(schedule, pp, v, durations)
            assert makespan == Fraction(v * m + pp - 1, v) * (t_f + t_b), (pp, m, v)
            assert bubble(makespan, busy, pp) == Fraction(pp - 1, v * m + pp - 1)


def test_interleaved_v1_is_1f1b_and_bad_m_rejected():
    assert interleaved(4, 6, 1) == one_f_one_b(4, 6)
    with pytest.raises(ScheduleError, match="last group of 2 .* groups that work for m = 6: 6"):
        interleaved(4, 6, 2)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("pp", [2, 3, 4, 8])
def test_registry_bubble_is_the_executed_orders(name, pp):
    """Each registry entry's closed-form bubble equals the bubble of its executed order with
    uniform unit costs (F = 1, B = 2; split backward I = W = 1), for m >= p."""
    traits = SCHEDULES[name]
    v = 2 if traits.virtual else 1
    durations = {"F": Fraction(1, v), "B": Fraction(2, v), "I": Fraction(1, v),
                 "W": Fraction(1, v)}  # fmt: skip
    for m in range(pp, 4 * pp + 1, pp):
        if name in ("zb_v", "dualpipe_v", "dualpipe") and m < 2 * pp:
            continue  # the closed forms are stated for m >= 2p - 1 (ZB-V), 2p (DualPipe(V))
        if traits.bidirectional and (pp % 2 or m % 2):
            continue  # DualPipe: even pp, even m (tests/test_dualpipe.py)
        makespan, busy = simulate_unit(traits.generator(pp, m, v), pp, v, durations,
                                       traits.placement)  # fmt: skip
        if traits.asynchronous:
            # no flush: the step is the steady state, the busiest rank's time (report.metrics)
            makespan = max(busy.values())
        assert bubble(makespan, busy, pp) == pytest.approx(traits.bubble(pp, m, v), abs=1e-12)


@pytest.mark.parametrize("name", ["pipedream", "pipedream_2bw"])
@pytest.mark.parametrize("pp", [2, 3, 4, 8])
def test_asynchronous_steady_state_is_the_marginal_mini_batch(name, pp):
    """The steady state an asynchronous schedule reports (the busiest rank's time per
    micro-batch) is what one more micro-batch adds to a long window, an independent reading of
    the executed order: with F = 1, B = 2 each extra micro-batch adds exactly 3, and the window
    is the steady state plus 1F1B's fill and drain, (p-1)(F+B)."""
    gen = SCHEDULES[name].generator
    durations = {"F": 1, "B": 2}
    spans = {m: simulate_unit(gen(pp, m, 1), pp, 1, durations) for m in (4 * pp, 4 * pp + 1)}
    (w0, busy0), (w1, _) = spans[4 * pp], spans[4 * pp + 1]
    assert w1 - w0 == 3
    assert max(busy0.values()) == 3 * 4 * pp
    assert w0 - max(busy0.values()) == (pp - 1) * 3


@pytest.mark.parametrize("pp", PPS)
def test_zb_h1_bubble_exact(pp):
    for m in MS:
        makespan, busy = simulate_unit(zb_h1(pp, m), pp, 1, {"F": 1, "I": 1, "W": 1})
        if m >= pp:
            assert makespan == 3 * m + pp - 1, (pp, m)
            assert bubble(makespan, busy, pp) == Fraction(pp - 1, 3 * m + pp - 1)
            assert all(makespan - b == pp - 1 for b in busy.values())
        else:  # outside the paper's regime: pinned, and never worse than 1F1B with B = I + W
            assert makespan == 2 * m + 2 * pp - 1, (pp, m)
        assert makespan <= 3 * (m + pp - 1)


@pytest.mark.parametrize("pp", PPS)
def test_naive_one_gpu_busy_at_a_time(pp):
    for m in (1, 3, 8):
        makespan, busy = simulate_unit(naive(pp, m), pp, 1, {"F": 1, "B": 2})
        assert makespan == m * pp * 3
        assert all(Fraction(b, makespan) == Fraction(1, pp) for b in busy.values())


# ---------------------------------------------------------------- in-flight micro-batches


@pytest.mark.parametrize("pp", PPS)
def test_in_flight_limits(pp):
    for m in MS:
        ofob = peak_in_flight(one_f_one_b(pp, m))
        assert ofob == {r: min(pp - r, m) for r in range(pp)}
        assert peak_in_flight(gpipe(pp, m)) == dict.fromkeys(range(pp), m)
        # ZB-H1: waiting for I, same as 1F1B; waiting for W, never above 1F1B's peak (rank 0).
        assert peak_in_flight(zb_h1(pp, m), release=("B", "I")) == ofob
        assert max(peak_in_flight(zb_h1(pp, m)).values()) == max(ofob.values())
        assert peak_in_flight(pipedream(pp, m)) == ofob


@pytest.mark.parametrize("pp", PPS)
@pytest.mark.parametrize("v", [2, 3, 4])
def test_interleaved_in_flight_is_megatron_warmup_plus_one(pp, v):
    for m in range(pp, 17, pp):
        expected = {r: min(2 * (pp - r - 1) + (v - 1) * pp + 1, v * m) for r in range(pp)}
        assert peak_in_flight(interleaved(pp, m, v)) == expected


def test_pipedream_opt_after_every_backward_and_weight_versions():
    pp, m = 4, 6
    for r, actions in pipedream(pp, m).items():
        assert sum(a.kind == "OPT" for a in actions) == m
        for k, a in enumerate(actions):
            if a.kind == "B":
                assert actions[k + 1] == Action(r, "OPT")
        assert pipedream_weight_versions(pp, r) == pp - r == peak_in_flight({r: actions})[r]
    with pytest.raises(ScheduleError):
        pipedream_weight_versions(4, 4)


@pytest.mark.parametrize("name", sorted(set(SCHEDULES) - {"pipedream"}))
def test_synchronous_schedules_end_with_one_opt(name):
    for r, actions in build_schedule(name, 4, 8, 2 if name == "interleaved" else 1).items():
        assert actions[-1] == Action(r, "OPT")
        assert sum(a.kind == "OPT" for a in actions) == 1


# ---------------------------------------------------------------- properties

DURATION = st.integers(min_value=1, max_value=6)


@st.composite
def cases(draw):
    name = draw(st.sampled_from(sorted(SCHEDULES)))
    pp = draw(st.integers(1, 8))
    if name == "interleaved":
        v = draw(st.integers(1, 4))
        m = pp * draw(st.integers(1, 16 // pp)) if v > 1 else draw(st.integers(1, 16))
    else:
        v, m = 1, draw(st.integers(1, 16))
    if SCHEDULES[name].bidirectional:  # DualPipe: even pp, even m
        pp, m = pp + pp % 2, m + m % 2
    if SCHEDULES[name].min_microbatches_per_stage:  # DualPipe(V): m >= 2p
        m = max(m, 2 * pp)
    durations = {k: draw(DURATION) for k in ("F", "B", "I", "W")}
    durations["OPT"] = draw(st.integers(0, 3))
    return name, pp, m, v, durations


@settings(max_examples=100, deadline=None)
@given(cases(), st.sampled_from(["F", "B", "I", "W", "OPT"]), st.integers(1, 5), st.integers(2, 4))
def test_schedule_properties(case, kind, bump, k):
    name, pp, m, v, durations = case
    tr = SCHEDULES[name]
    split = None if tr.mixed_backward else tr.split_backward
    place = tr.placement
    v = tr.chunks_per_rank or v
    schedule = build_schedule(name, pp, m, v)
    validate_schedule(schedule, pp, m, v, split_backward=split, placement=place)
    assert has_split_backward(schedule) == (split is not False)
    lowered = add_p2p(schedule, pp, v, place)
    validate_schedule(lowered, pp, m, v, split_backward=split, placement=place)

    makespan, busy = simulate_unit(schedule, pp, v, durations, place)
    assert 0 <= bubble(makespan, busy, pp) < 1
    for r, actions in schedule.items():
        assert busy[r] == sum(durations[a.kind] for a in actions)
    assert simulate_unit(lowered, pp, v, durations, place) == (makespan, busy)

    longer = {**durations, kind: durations[kind] + bump}
    assert simulate_unit(schedule, pp, v, longer, place)[0] >= makespan
    scaled = {key: value * k for key, value in durations.items()}
    assert simulate_unit(schedule, pp, v, scaled, place)[0] == k * makespan


# ---------------------------------------------------------------- invalid schedules


def _assert_rejected(schedule, pp, m, v=1, split=False, match=None):
    with pytest.raises(ScheduleError, match=match) as info:
        validate_schedule(schedule, pp, m, v, split_backward=split)
    assert format_grid(schedule) in str(info.value)


def test_removed_action_rejected_with_grid():
    schedule = one_f_one_b(3, 4)
    del schedule[1][2]
    _assert_rejected(schedule, 3, 4, match="appears 0 times")


def test_backward_before_forward_rejected_with_grid():
    schedule = gpipe(2, 2)
    acts = schedule[1]
    acts[0], acts[2] = acts[2], acts[0]  # 1B0 before 1F0
    _assert_rejected(schedule, 2, 2, match="before")


def test_deadlock_rejected_with_grid():
    schedule = {
        0: [Action(0, "F", 0), Action(0, "B", 0), Action(0, "F", 1), Action(0, "B", 1)],
        1: [Action(1, "F", 1), Action(1, "B", 1), Action(1, "F", 0), Action(1, "B", 0)],
    }
    schedule = {r: [*a, Action(r, "OPT")] for r, a in schedule.items()}
    _assert_rejected(schedule, 2, 2, match="deadlock")
    with pytest.raises(ScheduleError, match="waits for 0F1"):
        simulate_spans(schedule, 2, 1, {"F": 1, "B": 1})


def test_other_invalid_schedules():
    _assert_rejected(zb_h1(2, 2), 2, 2, split=False, match="not expected")
    wrong_rank = gpipe(2, 2)
    wrong_rank[0][0] = Action(1, "F", 0)
    _assert_rejected(wrong_rank, 2, 2, match="lives on rank 1")
    no_opt = gpipe(2, 2)
    no_opt[0].pop()
    _assert_rejected(no_opt, 2, 2, match="does not end with OPT")
    lowered = add_p2p(gpipe(2, 2), 2, 1)
    lowered[1] = [a for a in lowered[1] if a != Action(1, "RECV_F", 1)]
    _assert_rejected(lowered, 2, 2, match="RECV_F1 appears 0 times")


def test_registry_errors():
    with pytest.raises(
        ScheduleError,
        match="1f1b, dualpipe, dualpipe_v, gpipe, interleaved, naive, pipedream, pipedream_2bw, "
        "zb_h1, zb_v",
    ):
        build_schedule("chimera", 4, 8)
    with pytest.raises(ScheduleError, match="runs one model chunk per rank"):
        build_schedule("gpipe", 4, 8, 2)
    with pytest.raises(ScheduleError, match="pp must be"):
        build_schedule("1f1b", 0, 8)
    with pytest.raises(ScheduleError, match="no duration for kind 'I'"):
        simulate_unit(zb_h1(2, 2), 2, 1, {"F": 1, "B": 1})


# ---------------------------------------------------------------- comm lowering


def test_add_p2p_is_pure_and_places_pairs():
    schedule = one_f_one_b(2, 2)
    before = {r: list(a) for r, a in schedule.items()}
    lowered = add_p2p(schedule, 2, 1)
    assert schedule == before
    assert [str(a) for a in lowered[0]] == [
        "0F0", "0SEND_F0", "0F1", "0SEND_F1", "0RECV_B0", "0B0", "0RECV_B1", "0B1", "0OPT",
    ]  # fmt: skip
    assert [str(a) for a in lowered[1]] == [
        "1RECV_F0", "1F0", "1B0", "1SEND_B0", "1RECV_F1", "1F1", "1B1", "1SEND_B1", "1OPT",
    ]  # fmt: skip
    assert add_p2p(interleaved(1, 2, 2), 1, 2) == interleaved(1, 2, 2)
    with pytest.raises(ScheduleError, match="already has communication"):
        add_p2p(lowered, 2, 1)


# ---------------------------------------------------------------- rendering


def test_format_grid_snapshot_gpipe():
    assert format_grid(gpipe(2, 2)) == (
        "step   | 0     1     2     3     4\n"
        "rank 0 | 0F0   0F1   0B0   0B1   0OPT\n"
        "rank 1 | 1F0   1F1   1B0   1B1   1OPT"
    )


def test_format_timeline_shows_bubbles():
    assert format_timeline(gpipe(2, 2), 2) == (
        "step   | 0     1     2     3     4     5     6\n"
        "rank 0 | 0F0   0F1   .     .     0B0   0B1   0OPT\n"
        "rank 1 | .     1F0   1F1   1B0   1B1   1OPT  ."
    )


# ---------------------------------------------------------------- ZB-V against PyTorch's own


def _torch_zbv_order(pp: int, m: int) -> dict[int, list[Action]]:
    """torch 2.13's ``ScheduleZBVZeroBubble`` per-rank order (its planner, run without building
    stages; tests/torch_pipelining.py)."""
    cls = torch_schedules().ScheduleZBVZeroBubble
    return planned_orders(cls, pp, num_stages=2 * pp, _n_microbatches=m)


@pytest.mark.parametrize("pp", PPS)
def test_zb_v_is_torch_executed_order(pp):
    """ZB-V's action lists are torch 2.13's, action for action, for every m up to 24; so in unit
    time (F = 1, B = 2, I = W = 1 per stage, halved per chunk) the makespan and the bubble are
    torch's executed order's; the V placement holds (stage s on rank s, then 2p - 1 - s) and the
    order is a valid, deadlock-free step."""
    half = Fraction(1, 2)
    durations = {"F": half, "I": half, "W": half}
    for m in range(1, 25):
        ours = zb_v(pp, m, 2)
        theirs = _torch_zbv_order(pp, m)
        assert {r: acts[:-1] for r, acts in ours.items()} == theirs, (pp, m)
        assert all(acts[-1] == Action(r, "OPT") for r, acts in ours.items())
        validate_schedule(ours, pp, m, 2, split_backward=True, placement="v")
        theirs_opt = {r: [*acts, Action(r, "OPT")] for r, acts in theirs.items()}
        assert simulate_unit(ours, pp, 2, durations) == simulate_unit(theirs_opt, pp, 2, durations)
        if m >= 2 * pp - 1:
            makespan, busy = simulate_unit(ours, pp, 2, durations)
            assert makespan == 3 * m + Fraction(pp - 1, 2)
            assert bubble(makespan, busy, pp) == Fraction(pp - 1, 6 * m + pp - 1)


def test_zb_v_placement_and_peak():
    """The V: rank r holds stages r and 2p - 1 - r (torch ``generate_stage_to_rank_mapping``,
    style "v"); once m >= 2p - 1 every rank holds 2p chunk activations, p micro-batches of its
    layers: 1F1B's first-stage peak on every rank (Qi et al. 2024 §6)."""
    assert [stage_to_rank(s, 4, 2, "v") for s in range(8)] == [0, 1, 2, 3, 3, 2, 1, 0]
    assert rank_stages(1, 4, 2, "v") == [1, 6]
    for pp in (2, 4, 8):
        for m in (2 * pp - 1, 4 * pp):
            assert set(peak_in_flight(zb_v(pp, m, 2)).values()) == {2 * pp}
    with pytest.raises(ScheduleError, match="2 chunks"):
        zb_v(4, 8, 1)


def _torch_dualpipe_v_order(pp: int, m: int) -> dict[int, list[Action]]:
    """torch 2.13's ``ScheduleDualPipeV`` per-rank order, each ``OVERLAP_F_B`` flattened into
    its sub-actions (F then B) as its runtime executes them (tests/torch_pipelining.py)."""
    cls = torch_schedules().ScheduleDualPipeV
    return planned_orders(cls, pp, num_stages=2 * pp, _n_microbatches=m)


@pytest.mark.parametrize("pp", PPS)
def test_dualpipe_v_is_torch_executed_order(pp):
    """DualPipeV's action lists are torch 2.13's executed order (overlapped F&B run as F then
    B), for m = 2p .. 2p + 15, so the unit-time makespan and bubble are torch's; a valid step
    mixing full and split backwards. Each rank ends (p-1)/2 after its 3m of work with chunk
    F = I = W = 1/2, B = 1, and holds 2p + 1 chunk activations: the DualPipe README's
    "Activation Per Device PP+1" for PP = 2p stages (github.com/deepseek-ai/DualPipe, 3da1bbe)."""
    half = Fraction(1, 2)
    durations = {"F": half, "B": 1, "I": half, "W": half}
    for m in range(2 * pp, 2 * pp + 16):
        ours = dualpipe_v(pp, m, 2)
        theirs = _torch_dualpipe_v_order(pp, m)
        assert {r: acts[:-1] for r, acts in ours.items()} == theirs, (pp, m)
        validate_schedule(ours, pp, m, 2, split_backward=None, placement="v")
        makespan, busy = simulate_unit(ours, pp, 2, durations)
        assert set(busy.values()) == {3 * m}
        assert makespan == 3 * m + Fraction(pp - 1, 2)
        assert set(peak_in_flight(ours).values()) == {2 * pp + 1}
    with pytest.raises(ScheduleError, match="at least as many micro-batches"):
        dualpipe_v(pp, 2 * pp - 1, 2)


@pytest.mark.parametrize("pp", PPS)
def test_dualpipe_v_pairs_are_torchs_overlap_f_b_actions(pp):
    """The forwards that open DualPipeV's overlapped F&B pairs are exactly the forward
    sub-actions of torch 2.13's ``OVERLAP_F_B`` actions (ScheduleDualPipeV), m = 2p .. 2p + 7."""
    from simtrain.schedules import dualpipe_v_fb_pairs

    schedules = pytest.importorskip("torch.distributed.pipelining.schedules")
    import types

    for m in range(2 * pp, 2 * pp + 8):
        fake = types.SimpleNamespace(pp_group_size=pp, num_stages=2 * pp, _n_microbatches=m)
        ours = dualpipe_v_fb_pairs(pp, m)
        for r in range(pp):
            theirs = set()
            for a in schedules.ScheduleDualPipeV._calculate_single_rank_operations(fake, r):
                if a is not None and a.computation_type.name == "OVERLAP_F_B":
                    f = next(x for x in a.sub_actions if x.computation_type.name == "FORWARD")
                    theirs.add(Action(f.stage_index, "F", f.microbatch_index))
            assert ours[r] == theirs, (pp, m, r)


@pytest.mark.parametrize(("pp", "v"), [(2, 2), (4, 2), (4, 3), (8, 2)])
def test_megatron_2021_interleaved_runs_every_forward_first_at_m_equal_pp(pp: int, v: int) -> None:
    """Megatron-LM 2021-2024 (megatron/schedules.py, dd88906264 l.106-108): with m = pp
    micro-batches every rank runs its v·m forwards, then its v·m backwards, so every rank holds
    all v·m micro-batch chunks at its peak; Megatron-Core since 4295be1a6c (2024-11) and
    simtrain's ``interleaved`` keep the usual warm-up, 2(p - r - 1) + (v - 1)·p forwards,
    where the last rank holds fewer. Any other m: the same order as ``interleaved``."""
    from simtrain.schedules import interleaved, interleaved_all_warmup, peak_in_flight

    legacy = interleaved_all_warmup(pp, pp, v)
    for r, actions in legacy.items():
        kinds = [a.kind for a in actions[:-1]]  # the optimizer step last
        assert kinds == ["F"] * (v * pp) + ["B"] * (v * pp), r
        assert sorted(actions[:-1]) == sorted(interleaved(pp, pp, v)[r][:-1])
    assert set(peak_in_flight(legacy).values()) == {v * pp}
    usual = peak_in_flight(interleaved(pp, pp, v))
    assert usual[pp - 1] == min(v * pp, (v - 1) * pp + 1) < v * pp
    assert interleaved_all_warmup(pp, 2 * pp, v) == interleaved(pp, 2 * pp, v)


def test_the_runtime_picks_the_interleaved_order_and_its_memory() -> None:
    """scenarios/interleaved_8gpu.yaml (pp 8, v 2, m 8) under Megatron-LM 2021: the last rank
    holds all 16 micro-batch chunks at its peak (every forward first: 8 micro-batches of whole
    stage-7 work in the walk's units, one chunk = half of it), Megatron-Core's order 9 chunks
    (warm-up (v - 1)·p = 8 forwards, then one more before its first backward); the step time is
    the same (the order moves no work onto the critical path here)."""
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.costs.memory import estimate_memory
    from simtrain.spec.scenario import load_scenario

    path = "scenarios/interleaved_8gpu.yaml"
    legacy = load_scenario(path, ["runtime.interleaved_all_warmup_at_pp=true"])
    core = load_scenario(path, ["runtime.interleaved_all_warmup_at_pp=false"])
    a, b = estimate_memory(legacy).stages[7], estimate_memory(core).stages[7]
    assert (a.microbatches_in_flight, b.microbatches_in_flight) == (8.0, 4.5)
    assert a.category("activations") > b.category("activations")
    assert a.peak_memory_bytes > b.peak_memory_bytes
    ta = simulate_scenario(legacy).metrics.step_time_s
    tb = simulate_scenario(core).metrics.step_time_s
    assert ta == pytest.approx(tb, rel=1e-3)
