"""Chrome trace: every span one X event, exact times, pid/tid mapping, counters, determinism."""

from __future__ import annotations

import json

import pytest

from simtrain.report.trace import (
    GIB,
    HEADROOM_COUNTER,
    MEMORY_COUNTER,
    chrome_trace,
    write_chrome_trace,
)
from simtrain.sim.timeline import STREAMS, MemorySample, Span, Timeline


def small_timeline() -> Timeline:
    spans = [
        Span(0, 0, "compute", "F", "F mb0", 0, 1_000_001, microbatch=0, stage=0),
        Span(1, 0, "p2p", "SEND_F", "SEND_F mb0", 1_000_001, 1_250_000, microbatch=0, stage=0),
        Span(2, 1, "p2p", "RECV_F", "RECV_F mb0", 1_000_001, 1_250_000, microbatch=0, stage=1),
        Span(3, 1, "compute", "F", "F mb0", 1_250_000, 2_250_123, microbatch=0, stage=1),
        Span(4, 0, "compute", "F", "F mb1", 1_000_001, 2_000_000, microbatch=1, stage=0),
        Span(5, 1, "compute", "B", "B mb0", 2_250_123, 4_250_123, microbatch=0, stage=1),
        Span(6, 0, "compute", "OPT", "optimizer", 5_000_000, 5_000_007),
        Span(7, 1, "collective", "ALLREDUCE", "allreduce grads", 4_250_123, 4_900_000),
    ]
    memory = [
        MemorySample(0, 0, "parameters", 2 * GIB),
        MemorySample(0, 0, "optimizer_states", 4 * GIB),
        MemorySample(0, 1, "parameters", 2 * GIB),
        MemorySample(1_000_001, 0, "activations", GIB // 2),
        MemorySample(2_000_000, 0, "activations", GIB),
        MemorySample(2_000_000, 0, "gradients", GIB // 4),  # same time: merged into one event
        MemorySample(1_250_000, 1, "activations", 3 * GIB),
        MemorySample(4_250_123, 1, "activations", 0),
    ]
    return Timeline(
        spans=spans,
        memory=memory,
        ranks=[0, 1],
        rank_labels={0: "stage 0 (tp 2 x dp 4)"},
    )


def events(trace: dict, ph: str) -> list[dict]:
    return [e for e in trace["traceEvents"] if e["ph"] == ph]


def test_top_level_shape() -> None:
    trace = chrome_trace(small_timeline(), metadata={"scenario": "tiny"})
    assert set(trace) == {"traceEvents", "displayTimeUnit", "otherData"}
    assert trace["displayTimeUnit"] == "ms"
    assert trace["otherData"] == {"scenario": "tiny"}
    assert chrome_trace(small_timeline())["otherData"] == {}


def test_every_span_is_one_x_event_with_exact_microseconds() -> None:
    tl = small_timeline()
    xs = events(chrome_trace(tl), "X")
    assert len(xs) == len(tl.spans)
    by_task = {e["args"]["task_id"]: e for e in xs}
    assert set(by_task) == {s.task_id for s in tl.spans}
    for s in tl.spans:
        e = by_task[s.task_id]
        assert e["name"] == s.name
        assert e["cat"] == s.kind
        assert e["pid"] == s.rank
        assert e["ts"] == s.start_ns / 1000
        assert e["dur"] == s.duration_ns / 1000
        # Exact to the nanosecond: scaling back gives the integer ns.
        assert round(e["ts"] * 1000) == s.start_ns
        assert round(e["dur"] * 1000) == s.duration_ns
        assert e["args"] == {"microbatch": s.microbatch, "stage": s.stage, "task_id": s.task_id}
    assert by_task[0]["dur"] == 1000.001
    assert by_task[6]["dur"] == 0.007


def test_tid_per_stream() -> None:
    trace = chrome_trace(small_timeline())
    tid_of = {"compute": 0, "p2p": 1, "collective": 2}
    for e in events(trace, "X"):
        task = next(s for s in small_timeline().spans if s.task_id == e["args"]["task_id"])
        assert e["tid"] == tid_of[task.stream]


def test_unknown_stream_gets_tid_after_standard_ones() -> None:
    tl = small_timeline()
    tl.spans.append(Span(9, 0, "zeta", "X1", "x", 0, 10))
    tl.spans.append(Span(10, 0, "alpha", "X2", "y", 0, 10))
    trace = chrome_trace(tl)
    tids = {e["cat"]: e["tid"] for e in events(trace, "X")}
    n = len(STREAMS)  # compute, p2p, collective, dp, gather come first
    assert tids["X2"] == n  # alpha
    assert tids["X1"] == n + 1  # zeta


def test_metadata_names_processes_and_threads() -> None:
    trace = chrome_trace(small_timeline())
    meta = events(trace, "M")
    names = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert names == {0: "stage 0 (tp 2 x dp 4)", 1: "GPU 1"}
    sort = {e["pid"]: e["args"]["sort_index"] for e in meta if e["name"] == "process_sort_index"}
    assert sort == {0: 0, 1: 1}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert threads == {
        (0, 0): "compute",
        (0, 1): "p2p",
        (1, 0): "compute",
        (1, 1): "p2p",
        (1, 2): "collective",
    }
    # Every (pid, tid) used by an X event has a thread name.
    assert {(e["pid"], e["tid"]) for e in events(trace, "X")} <= set(threads)


def test_gpu_without_spans_still_named() -> None:
    tl = Timeline(ranks=[0, 3], rank_labels={3: "last"})
    meta = events(chrome_trace(tl), "M")
    names = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert names == {0: "GPU 0", 3: "last"}


def current_bytes(tl: Timeline, gpu: int, t: int) -> dict[str, int]:
    """Reference: the last sample of each category at or before t (list order breaks ties)."""
    out: dict[str, int] = {}
    for m in sorted((m for m in tl.memory if m.rank == gpu), key=lambda m: m.time_ns):
        if m.time_ns <= t:
            out[m.category] = m.bytes
    return out


def test_memory_counters_merge_samples_and_match_them() -> None:
    tl = small_timeline()
    counters = [e for e in events(chrome_trace(tl), "C") if e["name"] == MEMORY_COUNTER]
    # One counter event per distinct (gpu, time).
    assert len(counters) == len({(m.rank, m.time_ns) for m in tl.memory})
    categories = {m.category for m in tl.memory}
    for e in counters:
        assert e["cat"] == "memory"
        t_ns = round(e["ts"] * 1000)
        ref = current_bytes(tl, e["pid"], t_ns)
        # Each event carries every category (0 until first sampled), in GiB.
        assert set(e["args"]) == categories
        for cat, gib in e["args"].items():
            assert gib == ref.get(cat, 0) / GIB
        assert sum(e["args"].values()) == pytest.approx(sum(ref.values()) / GIB)
    at_2ms = next(e for e in counters if e["pid"] == 0 and e["ts"] == 2000.0)
    assert at_2ms["args"]["activations"] == 1.0
    assert at_2ms["args"]["gradients"] == 0.25
    assert sum(at_2ms["args"].values()) == 7.25
    # The counter peak equals the timeline's peak.
    for gpu in (0, 1):
        peak = max(sum(e["args"].values()) for e in counters if e["pid"] == gpu)
        assert peak == tl.peak_memory_bytes(gpu) / GIB


def test_headroom_counter_with_capacity() -> None:
    tl = small_timeline()
    trace = chrome_trace(tl, capacity_bytes=8 * GIB, metadata={"a": 1})
    assert trace["otherData"] == {"a": 1, "memory_capacity_gib": 8.0}
    mem = {
        (e["pid"], e["ts"]): sum(e["args"].values())
        for e in events(trace, "C")
        if e["name"] == MEMORY_COUNTER
    }
    head = {
        (e["pid"], e["ts"]): e["args"]["headroom"]
        for e in events(trace, "C")
        if e["name"] == HEADROOM_COUNTER
    }
    assert set(head) == set(mem)
    for key, total in mem.items():
        assert head[key] == pytest.approx(8.0 - total)
    assert not any(e["name"] == HEADROOM_COUNTER for e in events(chrome_trace(tl), "C"))


def test_metadata_argument_not_mutated() -> None:
    meta = {"x": 1}
    chrome_trace(small_timeline(), capacity_bytes=GIB, metadata=meta)
    assert meta == {"x": 1}


def test_events_sorted_metadata_first_then_time() -> None:
    evs = chrome_trace(small_timeline())["traceEvents"]
    phases = [e["ph"] for e in evs]
    n_meta = phases.count("M")
    assert set(phases[:n_meta]) == {"M"}
    timed = evs[n_meta:]
    assert [e["ts"] for e in timed] == sorted(e["ts"] for e in timed)
    # Independent of input order.
    tl = small_timeline()
    tl.spans.reverse()
    tl.memory.reverse()
    rev = chrome_trace(tl)["traceEvents"]
    # Reversing the memory list flips which of two same-time same-category samples wins;
    # there are none in this timeline, so everything must match.
    assert rev == evs


def test_required_fields_per_phase() -> None:
    for e in chrome_trace(small_timeline(), capacity_bytes=GIB)["traceEvents"]:
        assert {"ph", "name", "pid", "tid", "args"} <= set(e)
        if e["ph"] == "X":
            assert {"ts", "dur", "cat"} <= set(e)
            assert e["dur"] >= 0
        if e["ph"] == "C":
            assert "ts" in e
            assert all(isinstance(v, float) for v in e["args"].values())


def test_json_round_trip_and_byte_identical_writes(tmp_path) -> None:
    tl = small_timeline()
    a = write_chrome_trace(tl, tmp_path / "a.json", capacity_bytes=80 * GIB, metadata={"k": "v"})
    b = write_chrome_trace(
        small_timeline(), tmp_path / "sub" / "b.json", capacity_bytes=80 * GIB, metadata={"k": "v"}
    )
    assert a.read_bytes() == b.read_bytes()
    loaded = json.loads(a.read_text())
    assert loaded == chrome_trace(tl, capacity_bytes=80 * GIB, metadata={"k": "v"})
    text = a.read_text()
    assert ", " not in text and ": " not in text  # compact separators
    assert text.startswith('{"displayTimeUnit":"ms","otherData"')  # sorted keys


def test_empty_timeline() -> None:
    trace = chrome_trace(Timeline())
    assert trace["traceEvents"] == []
    json.dumps(trace)
