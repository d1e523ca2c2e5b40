"""The data-parallel collectives' NCCL kernels hold SMs and the compute they overlap runs on the
rest: the engine's throttle against closed forms worked by hand, and the lowering's holds on a
scenario (``sim.lowering.sms``, ``costs.comm.nccl_kernel_sms``)."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from simtrain.apps.simulate import lower_scenario, simulate_scenario
from simtrain.costs import collectives as coll
from simtrain.costs.comm import nccl_kernel_sms
from simtrain.costs.memory import estimate_memory
from simtrain.sim.engine import Task, simulate
from simtrain.sim.lowering.sms import HOLDING_STREAMS
from simtrain.spec.hardware import load_hardware
from simtrain.spec.scenario import load_scenario

S = 132  # an H100's SMs


def _compute_end(c_ns: int, holders: list[tuple[int, int, int]], sms: int = S) -> int:
    """End of a compute task of ``c_ns`` started at 0 beside ``holders`` (start, duration,
    SMs held), each on a stream of its own, started by a host task of its start's length."""
    tasks = [Task(0, 0, "compute", "F", "c", c_ns)]
    for k, (start, dur, hold) in enumerate(holders):
        deps: tuple[int, ...] = ()
        if start:
            tasks.append(Task(100 + k, 0, f"host{k}", "H", f"h{k}", start))
            deps = (100 + k,)
        tasks.append(Task(1 + k, 0, f"dp{k}", "RS", f"a{k}", dur, deps, sm_hold=hold))
    tl = simulate(tasks, rank_sms={0: sms})
    return next(s.end_ns for s in tl.spans if s.name == "c")


def test_overlap_for_part_of_the_compute_costs_a_times_the_share():
    # 1,000 ns of compute beside a 300 ns collective on 24 of 132 SMs: the collective's 300 ns
    # serve 300 x 108 SM-ns, the rest runs at full rate: C + A x 24/132 = 1,054.5 -> 1,055
    assert _compute_end(1000, [(0, 300, 24)]) == math.ceil(1000 + 300 * 24 / 132) == 1055
    # the same collective later in the compute: the same cost
    assert _compute_end(1000, [(500, 300, 24)]) == 1055


def test_a_collective_outlasting_the_compute_slows_all_of_it():
    # 1,000 ns at 108 / 132 of the rate: 1,000 x 132 / 108 = 1,222.2 -> 1,223
    assert _compute_end(1000, [(0, 5000, 24)]) == math.ceil(1000 * 132 / 108) == 1223


def test_concurrent_holds_add_up_and_leave_one_sm():
    # two 24-SM kernels at once: 84 of 132 serve
    assert _compute_end(1000, [(0, 5000, 24), (0, 5000, 24)]) == math.ceil(1000 * 132 / 84)
    # more than the GPU has: one SM is left to the compute
    assert _compute_end(10, [(0, 10**6, 100), (0, 10**6, 100)]) == 10 * 132


def test_no_hold_or_no_sm_count_leaves_the_compute_alone():
    assert _compute_end(1000, [(0, 300, 0)]) == 1000
    tasks = [Task(0, 0, "compute", "F", "c", 1000), Task(1, 0, "dp", "RS", "a", 300, sm_hold=24)]
    assert simulate(tasks).spans[0].end_ns == 1000  # rank_sms not given
    assert simulate(tasks, rank_sms={1: S}).spans[0].end_ns == 1000  # another GPU's count


def test_a_hold_on_another_gpu_does_not_slow_this_one():
    tasks = [Task(0, 0, "compute", "F", "c", 1000), Task(1, 1, "dp", "RS", "a", 300, sm_hold=24)]
    assert simulate(tasks, rank_sms={0: S, 1: S}).spans[0].end_ns == 1000


@settings(max_examples=60, deadline=None)
@given(c=st.integers(1, 10_000), start=st.integers(0, 10_000), dur=st.integers(1, 10_000),
       hold=st.integers(1, S - 1))  # fmt: skip
def test_the_compute_takes_its_duration_plus_the_overlap_times_the_share(c, start, dur, hold):
    # fluid answer: the compute loses hold / S of its rate for the part of the collective
    # that falls within it; found by stepping the two phases by hand in exact fractions
    end = _compute_end(c, [(start, dur, hold)])
    if start >= c:
        assert end == c
        return
    lost_rate = hold / S
    slow = min(dur, (c - start) / (1 - lost_rate))  # time the compute runs slowed
    expect = c + slow * lost_rate
    assert end == math.ceil(expect - 1e-9) or end == math.ceil(expect)
    assert c <= end <= math.ceil(c * S / (S - hold))


def test_nccl_kernel_sms_from_the_profile_or_ncclS_default():
    a100 = load_hardware("a100_sxm4_80gb")
    h100 = load_hardware("h100_sxm5_80gb")
    sc = load_scenario("scenarios/zero3_64gpu.yaml")
    assert nccl_kernel_sms(replace(sc, hardware=a100)) == a100.nccl_channels_one_node == 24
    assert h100.nccl_channels_one_node == 0
    assert nccl_kernel_sms(replace(sc, hardware=h100)) == coll.NCCL_CHANNELS == 24
    assert nccl_kernel_sms(replace(sc, hardware=replace(h100, sm_count=0))) == 0
    assert nccl_kernel_sms(replace(sc, hardware=replace(h100, sm_count=16))) == 15


def test_blackwell_ultra_profiles_have_their_sms():
    """The Blackwell Ultra profiles carry their 160 SMs (NVIDIA's Blackwell Ultra blog, 2025):
    without them the NCCL kernels held none and the compute beside the collectives ran at its
    full rate there, where every other profile it shares a model with slows it."""
    for name in ("b300_288gb", "gb300_nvl72"):
        hw = load_hardware(name)
        assert hw.sm_count == 160
        sc = load_scenario("scenarios/zero3_64gpu.yaml")
        assert nccl_kernel_sms(replace(sc, hardware=hw)) == coll.NCCL_CHANNELS


def test_zero3_gathers_hold_sms_and_slow_the_step_they_overlap():
    sc = load_scenario("scenarios/zero3_64gpu.yaml")
    tasks, _ = lower_scenario(sc, estimate_memory(sc))
    holding = [t for t in tasks if t.sm_hold]
    assert holding and {t.stream for t in holding} <= HOLDING_STREAMS
    assert {t.sm_hold for t in holding} == {nccl_kernel_sms(sc)}
    assert not any(t.sm_hold for t in tasks if t.stream not in HOLDING_STREAMS)
    with_sms = simulate_scenario(sc).metrics.step_time_s
    without = simulate_scenario(replace(sc, hardware=replace(sc.hardware, sm_count=0)))
    assert with_sms > without.metrics.step_time_s


@settings(max_examples=40, deadline=None)
@given(c=st.integers(1, 10_000), a=st.integers(1, 20_000), hold=st.integers(1, S - 1))
def test_the_closed_form_the_planner_and_deepep_pairs_use_is_the_engines(c, a, hold) -> None:
    """sim.lowering.sms.sm_shared_extra_ns (the planner's and the DeepEP pairs' pricing) is what
    the engine's throttle does to compute and communication started together, to the ns the
    engine rounds up."""
    from simtrain.sim.lowering.sms import sm_shared_extra_ns

    end = _compute_end(c, [(0, a, hold)])
    assert end - 1 <= c + sm_shared_extra_ns(c, a, hold / S) <= end + 1e-6
