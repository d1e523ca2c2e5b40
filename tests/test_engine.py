"""Tests of the SimPy engine: timing, memory, deadlock, link sharing and invariants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simtrain.errors import DeadlockError
from simtrain.sim.engine import Task, simulate
from simtrain.sim.timeline import Timeline

GB = 10**9  # bytes; also ns per second
BW = {"nic": 1e9}  # 1 GB/s


def task(tid: int, gpu: int = 0, stream: str = "compute", dur: int = 10, **kw) -> Task:
    return Task(
        id=tid,
        rank=gpu,
        stream=stream,
        kind=kw.pop("kind", "F"),
        name=f"t{tid}",
        duration_ns=dur,
        **kw,
    )


def span(tl: Timeline, tid: int):
    (s,) = [s for s in tl.spans if s.task_id == tid]
    return s


# --- timing ------------------------------------------------------------------------------------


def test_chain_on_one_stream_makespan_is_sum():
    tl = simulate([task(0, dur=3), task(1, dur=5), task(2, dur=7)])
    assert tl.makespan_ns == 15
    assert [(s.start_ns, s.end_ns) for s in tl.spans] == [(0, 3), (3, 8), (8, 15)]


def test_two_streams_run_in_parallel_makespan_is_max():
    tl = simulate([task(0, stream="compute", dur=10), task(1, stream="p2p", dur=4)])
    assert tl.makespan_ns == 10
    assert span(tl, 1).start_ns == 0


def test_cross_gpu_dependency_waits():
    tl = simulate([task(0, gpu=0, dur=10), task(1, gpu=1, dur=5, deps=(0,)), task(2, gpu=1, dur=1)])
    assert (span(tl, 1).start_ns, span(tl, 1).end_ns) == (10, 15)
    # FIFO: task 2 is behind task 1 on gpu 1 even though it has no deps.
    assert (span(tl, 2).start_ns, span(tl, 2).end_ns) == (15, 16)
    assert tl.ranks == [0, 1]


def test_zero_duration_and_empty_input():
    tl = simulate([task(0, dur=0), task(1, dur=0, deps=(0,))])
    assert tl.makespan_ns == 0 and len(tl.spans) == 2
    empty = simulate([])
    assert empty.spans == [] and empty.makespan_ns == 0


def test_dependency_listed_later_in_input_is_fine_across_streams():
    tl = simulate([task(0, gpu=0, dur=2, deps=(1,)), task(1, gpu=1, dur=3)])
    assert span(tl, 0).start_ns == 3


def test_span_order_and_fields():
    tasks = [
        task(5, gpu=1, stream="p2p", dur=1, microbatch=2, stage=1),
        task(4, gpu=1, stream="compute", dur=1),
        task(3, gpu=0, stream="collective", dur=1),
        task(2, gpu=0, stream="custom", dur=1),
    ]
    tl = simulate(tasks, rank_labels={1: "stage 1", 0: "stage 0"})
    # All start at 0: by gpu, then stream order (compute, p2p, collective, others).
    assert [s.task_id for s in tl.spans] == [3, 2, 4, 5]
    s5 = span(tl, 5)
    assert (s5.microbatch, s5.stage, s5.kind, s5.name) == (2, 1, "F", "t5")
    assert tl.rank_labels == {0: "stage 0", 1: "stage 1"}
    assert tl.events_processed > 0


# --- validation --------------------------------------------------------------------------------


def test_unknown_dep_duplicate_id_negative_duration_raise():
    with pytest.raises(ValueError, match="unknown dependency id"):
        simulate([task(0, deps=(7,))])
    with pytest.raises(ValueError, match="duplicate task id 0"):
        simulate([task(0), task(0, gpu=1)])
    with pytest.raises(ValueError, match="duration_ns must be >= 0"):
        simulate([task(0, dur=-1)])
    with pytest.raises(ValueError, match="integer number of ns"):
        simulate([task(0, dur=1.5)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bandwidth"):
        simulate([task(0)], link_bandwidth_bytes_per_s={"nic": 0.0})
    with pytest.raises(ValueError, match="bandwidth"):
        simulate([task(0)], link_bandwidth_bytes_per_s={"nic": float("inf")})


# --- memory ------------------------------------------------------------------------------------


def test_memory_alloc_free_samples_and_peak():
    tasks = [
        task(0, dur=10, alloc=(("activations", 100),)),
        task(1, dur=10, alloc=(("activations", 50),)),
        task(2, dur=10, free=(("activations", 150),)),
    ]
    tl = simulate(tasks, initial_memory={0: {"parameters": 1000}})
    got = [(m.time_ns, m.rank, m.category, m.bytes) for m in tl.memory]
    assert got == [
        (0, 0, "parameters", 1000),
        (0, 0, "activations", 100),
        (10, 0, "activations", 150),
        (30, 0, "activations", 0),
    ]
    assert tl.peak_memory_bytes(0) == 1150


def test_memory_same_time_changes_coalesce():
    # Task 0 frees at t=10 while task 1 allocates at t=10: one sample with the final value.
    tasks = [
        task(0, dur=10, alloc=(("activations", 100),), free=(("activations", 100),)),
        task(1, dur=10, alloc=(("activations", 70),), free=(("activations", 70),)),
    ]
    tl = simulate(tasks)
    got = [(m.time_ns, m.bytes) for m in tl.memory]
    assert got == [(0, 100), (10, 70), (20, 0)]
    assert tl.peak_memory_bytes(0) == 100


def test_memory_negative_is_an_error():
    with pytest.raises(ValueError, match="negative"):
        simulate([task(0, free=(("activations", 1),))])
    with pytest.raises(ValueError, match=">= 0 bytes"):
        simulate([task(0, alloc=(("activations", -1),))])


def test_initial_memory_only_gpu_is_listed():
    tl = simulate([task(0, gpu=1)], initial_memory={3: {"parameters": 8}})
    assert tl.ranks == [1, 3]
    assert tl.peak_memory_bytes(3) == 8


# --- deadlock ----------------------------------------------------------------------------------


def test_cycle_is_deadlock_naming_blocked_tasks():
    tasks = [task(0, gpu=0, deps=(1,)), task(1, gpu=1, deps=(0,)), task(2, gpu=2)]
    with pytest.raises(DeadlockError) as info:
        simulate(tasks)
    msg = str(info.value)
    assert "2 of 3 tasks never ran" in msg
    assert "gpu 0 compute: 't0' (id 0) waits for 't1' (id 1" in msg
    assert "gpu 1 compute: 't1' (id 1) waits for 't0' (id 0" in msg
    assert info.value.blocked == ((0, "compute", 0, (1,)), (1, "compute", 1, (0,)))


def test_first_task_waiting_for_later_task_of_same_stream_is_deadlock():
    tasks = [task(0, dur=1), task(1, dur=1, deps=(2,)), task(2, dur=1), task(3, gpu=1, deps=(2,))]
    with pytest.raises(DeadlockError) as info:
        simulate(tasks)
    msg = str(info.value)
    assert "'t1' (id 1) waits for 't2' (id 2" in msg
    assert "queued behind 't1' (id 1)" in msg
    assert "gpu 1 compute: 't3' (id 3)" in msg


def test_self_dependency_is_deadlock():
    with pytest.raises(DeadlockError, match="'t0' \\(id 0\\) waits for 't0'"):
        simulate([task(0, deps=(0,))])


# --- link sharing ------------------------------------------------------------------------------


def xfer(tid: int, gpu: int, nbytes: int, dur: int = 0, deps: tuple[int, ...] = ()) -> Task:
    return task(tid, gpu=gpu, stream="p2p", dur=dur, deps=deps, link="nic", link_bytes=nbytes)


def test_one_transfer_alone_takes_bytes_over_bandwidth_plus_latency():
    assert simulate([xfer(0, 0, GB)], link_bandwidth_bytes_per_s=BW).makespan_ns == GB
    tl = simulate([xfer(0, 0, GB, dur=100)], link_bandwidth_bytes_per_s=BW)
    assert tl.makespan_ns == GB + 100


def test_two_transfers_starting_together_share_bandwidth():
    tl = simulate([xfer(0, 0, GB), xfer(1, 1, GB)], link_bandwidth_bytes_per_s=BW)
    assert [(s.start_ns, s.end_ns) for s in tl.spans] == [(0, 2 * GB), (0, 2 * GB)]


def test_staggered_transfers_fluid_answer():
    # A alone for 0.5 s (0.5 GB done), then A and B share 0.5 GB/s each: A's last 0.5 GB takes
    # 1 s -> A ends at 1.5 s; B has 0.5 GB done then and finishes alone in 0.5 s -> 2.0 s.
    tasks = [task(9, gpu=1, dur=GB // 2), xfer(0, 0, GB), xfer(1, 1, GB, deps=(9,))]
    tl = simulate(tasks, link_bandwidth_bytes_per_s=BW)
    assert (span(tl, 0).start_ns, span(tl, 0).end_ns) == (0, 3 * GB // 2)
    assert (span(tl, 1).start_ns, span(tl, 1).end_ns) == (GB // 2, 2 * GB)


def test_three_way_sharing_fluid_answer():
    # 0-0.5 s: A, B at 0.5 GB/s -> 0.25 GB each. C (0.5 GB) joins: all at 1/3 GB/s; C needs
    # 1.5 s -> ends 2.0 s; A, B then have 0.25 GB left at 0.5 GB/s -> end 2.5 s.
    tasks = [task(9, gpu=2, dur=GB // 2), xfer(0, 0, GB), xfer(1, 1, GB), xfer(2, 2, GB // 2)]
    tasks[3] = tasks[3]._replace(deps=(9,))
    tl = simulate(tasks, link_bandwidth_bytes_per_s=BW)
    assert span(tl, 2).end_ns == 2 * GB
    assert span(tl, 0).end_ns == span(tl, 1).end_ns == 5 * GB // 2


def test_latency_is_not_shared_and_precedes_transfer():
    # B's 0.5 s latency does not use the link; its bytes join at 0.5 s like the staggered case.
    tl = simulate([xfer(0, 0, GB), xfer(1, 1, GB, dur=GB // 2)], link_bandwidth_bytes_per_s=BW)
    assert span(tl, 0).end_ns == 3 * GB // 2
    assert span(tl, 1).end_ns == 2 * GB


def test_fractional_completion_rounds_up_to_next_ns():
    tl = simulate([xfer(0, 0, 1)], link_bandwidth_bytes_per_s={"nic": 3.0})
    assert tl.makespan_ns == 333_333_334


def test_link_without_bandwidth_or_link_none_takes_duration():
    assert simulate([xfer(0, 0, GB, dur=7)]).makespan_ns == 7
    t = task(0, dur=7, link_bytes=GB)
    assert simulate([t], link_bandwidth_bytes_per_s=BW).makespan_ns == 7


def test_different_links_do_not_share():
    a = xfer(0, 0, GB)
    b = xfer(1, 1, GB)._replace(link="nic2")
    tl = simulate([a, b], link_bandwidth_bytes_per_s={"nic": 1e9, "nic2": 1e9})
    assert tl.makespan_ns == GB


# --- properties on random DAGs -----------------------------------------------------------------

STREAM_NAMES = ("compute", "p2p", "collective")


@st.composite
def dags(draw, max_tasks: int = 25) -> list[Task]:
    n = draw(st.integers(1, max_tasks))
    tasks = []
    for i in range(n):
        gpu = draw(st.integers(0, 2))
        stream = draw(st.sampled_from(STREAM_NAMES))
        dur = draw(st.integers(0, 50))
        deps = tuple(sorted(draw(st.sets(st.integers(0, i - 1), max_size=3)))) if i else ()
        nbytes = draw(st.integers(0, 100))
        tasks.append(
            Task(
                id=1000 + i,
                rank=gpu,
                stream=stream,
                kind="F",
                name=f"T{i}",
                duration_ns=dur,
                deps=tuple(1000 + d for d in deps),
                alloc=(("activations", nbytes),),
                free=(("activations", nbytes),),
            )
        )
    return tasks


def reference_times(tasks: list[Task]) -> dict[int, tuple[int, int]]:
    """Max-plus recurrence: start = max(end of stream predecessor, ends of deps)."""
    times: dict[int, tuple[int, int]] = {}
    last_end: dict[tuple[int, str], int] = {}
    for t in tasks:  # deps only on earlier tasks, so input order is a topological order
        s = max([last_end.get((t.rank, t.stream), 0)] + [times[d][1] for d in t.deps])
        times[t.id] = (s, s + t.duration_ns)
        last_end[(t.rank, t.stream)] = s + t.duration_ns
    return times


def critical_path(tasks: list[Task]) -> int:
    finish: dict[int, int] = {}
    for t in tasks:
        finish[t.id] = max([0] + [finish[d] for d in t.deps]) + t.duration_ns
    return max(finish.values())


@settings(max_examples=150, deadline=None)
@given(dags())
def test_random_dag_matches_reference_and_invariants(tasks):
    tl = simulate(tasks, initial_memory={0: {"parameters": 10}})
    ref = reference_times(tasks)
    assert {s.task_id: (s.start_ns, s.end_ns) for s in tl.spans} == ref
    # Per-(gpu, stream) busy time == sum of durations; spans do not overlap on a stream.
    for gpu in tl.ranks:
        for stream in STREAM_NAMES:
            spans = sorted(tl.spans_of(gpu, stream), key=lambda s: s.start_ns)
            want = sum(t.duration_ns for t in tasks if (t.rank, t.stream) == (gpu, stream))
            assert sum(s.duration_ns for s in spans) == want
            assert all(a.end_ns <= b.start_ns for a, b in zip(spans, spans[1:], strict=False))
    loads: dict[tuple[int, str], int] = {}
    for t in tasks:
        loads[(t.rank, t.stream)] = loads.get((t.rank, t.stream), 0) + t.duration_ns
    assert tl.makespan_ns >= critical_path(tasks)
    assert tl.makespan_ns >= max(loads.values())
    # Spans sorted by (start, gpu, stream order, id).
    keys = [(s.start_ns, s.rank, STREAM_NAMES.index(s.stream), s.task_id) for s in tl.spans]
    assert keys == sorted(keys)
    # Memory: samples in time order, allocations and frees balance, peak matches a sweep.
    times = [m.time_ns for m in tl.memory]
    assert times == sorted(times)
    final: dict[tuple[int, str], int] = {}
    for m in tl.memory:
        assert m.bytes >= 0
        final[(m.rank, m.category)] = m.bytes
    assert all(v == 0 for (g, c), v in final.items() if c == "activations")
    assert final[(0, "parameters")] == 10
    for gpu in tl.ranks:
        assert tl.peak_memory_bytes(gpu) == sweep_peak(tasks, ref, gpu, 10 if gpu == 0 else 0)
    # Identical runs give identical timelines.
    assert simulate(tasks, initial_memory={0: {"parameters": 10}}) == tl


def sweep_peak(tasks, ref, gpu, initial) -> int:
    deltas: dict[int, int] = {0: 0}
    for t in tasks:
        if t.rank == gpu:
            b = t.alloc[0][1]
            s, e = ref[t.id]
            deltas[s] = deltas.get(s, 0) + b
            deltas[e] = deltas.get(e, 0) - b
    level, peak = initial, initial
    for tm in sorted(deltas):
        level += deltas[tm]
        peak = max(peak, level)
    return peak


@settings(max_examples=100, deadline=None)
@given(dags(), st.data())
def test_makespan_monotone_in_every_duration(tasks, data):
    i = data.draw(st.integers(0, len(tasks) - 1))
    grow = data.draw(st.integers(1, 100))
    longer = list(tasks)
    longer[i] = tasks[i]._replace(duration_ns=tasks[i].duration_ns + grow)
    assert simulate(longer).makespan_ns >= simulate(tasks).makespan_ns


@settings(max_examples=100, deadline=None)
@given(dags(), st.integers(2, 1000))
def test_scaling_durations_by_k_scales_makespan_exactly(tasks, k):
    base = simulate(tasks)
    scaled = simulate([t._replace(duration_ns=t.duration_ns * k) for t in tasks])
    assert scaled.makespan_ns == k * base.makespan_ns
    assert [(s.start_ns, s.end_ns) for s in scaled.spans] == [
        (k * s.start_ns, k * s.end_ns) for s in base.spans
    ]


@st.composite
def link_dags(draw) -> list[Task]:
    tasks = draw(dags(max_tasks=15))
    return [
        t._replace(link=draw(st.sampled_from(["a", "b"])), link_bytes=draw(st.integers(0, 10**6)))
        if t.stream == "p2p"
        else t
        for t in tasks
    ]


@settings(max_examples=100, deadline=None)
@given(link_dags())
def test_links_deterministic_and_never_faster_than_alone(tasks):
    bw = {"a": 1e9, "b": 3e8}
    tl = simulate(tasks, link_bandwidth_bytes_per_s=bw)
    assert simulate(tasks, link_bandwidth_bytes_per_s=bw) == tl
    for s in tl.spans:
        t = next(t for t in tasks if t.id == s.task_id)
        alone = t.duration_ns
        if t.link is not None and t.link_bytes:
            alone += -(-t.link_bytes * GB // int(bw[t.link]))
        assert s.duration_ns >= alone
    # Every realized duration is >= the plain one, and the schedule is monotone in durations.
    plain = simulate(tasks)
    assert tl.makespan_ns >= plain.makespan_ns
