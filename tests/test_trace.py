"""Chrome trace: every span one X event, exact times, pid/tid mapping, counters, determinism."""

from __future__ import annotations

import json

import pytest

from simtrain.report.trace import (
    GIB,
    HEADROOM_COUNTER,
    MEMORY_COUNTER,
    chrome_trace,
    dumps_chrome_trace,
    flows,
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
        assert {"ph", "name", "pid", "tid"} <= set(e)
        if e["ph"] in "MXC":
            assert "args" in e
        if e["ph"] in "sf":  # flow events: cat, id and ts, no args (Trace Event Format)
            assert {"cat", "id", "ts"} <= set(e)
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


# ----------------------------------------------------------------------- streaming writer


def odd_timeline() -> Timeline:
    """Names and values json.dumps escapes or writes in its own way."""
    spans = [
        Span(0, 0, "compute", "F", 'F "quoted" \\ back\tslash', 0, 7, microbatch=0, stage=0),
        Span(1, 0, "compute", "B", "B é ünïcode → 🚀", 7, 10**13 + 1, microbatch=None, stage=None),
        Span(2, 3, "ẑ stream", "Ω", "\x00\x1f ctl", 5, 5),
    ]
    memory = [
        MemorySample(0, 0, "parameters", 3),
        MemorySample(0, 0, "zzz_custom", 10**15),
        MemorySample(9, 3, "activations", 1),
        MemorySample(9, 3, "Äbuffers", GIB),
    ]
    return Timeline(spans=spans, memory=memory, ranks=[0, 3], rank_labels={3: 'GPU "3" ☃'})


@pytest.mark.parametrize("make", [small_timeline, odd_timeline, Timeline])
@pytest.mark.parametrize("capacity", [None, 80 * GIB])
def test_stream_writes_the_bytes_of_one_json_dump(tmp_path, make, capacity) -> None:
    """The streamed file is byte for byte json.dumps of the whole trace dict (sorted keys,
    compact separators, ASCII escapes), which the golden digests were taken from."""
    meta = {"scenario": 'ẞ "x"\\', "n": 1, "f": 0.1}
    path = write_chrome_trace(make(), tmp_path / "t.json", capacity_bytes=capacity, metadata=meta)
    whole = dumps_chrome_trace(chrome_trace(make(), capacity_bytes=capacity, metadata=meta))
    assert path.read_bytes() == whole.encode("utf-8")
    json.loads(path.read_text())


def test_stream_on_a_simulated_pipeline(tmp_path) -> None:
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.spec.scenario import load_scenario

    tl = simulate_scenario(load_scenario("scenarios/interleaved_8gpu.yaml")).timeline
    path = write_chrome_trace(tl, tmp_path / "t.json", capacity_bytes=80 * GIB)
    assert path.read_text() == dumps_chrome_trace(chrome_trace(tl, capacity_bytes=80 * GIB))


# --------------------------------------------------------------------------- flow events


def flow_pairs(trace: dict) -> dict[int, dict[str, dict]]:
    """id -> {"s": event, "f": event}; fails on a repeated (id, phase)."""
    out: dict[int, dict[str, dict]] = {}
    for e in trace["traceEvents"]:
        if e["ph"] in ("s", "f"):
            assert e["ph"] not in out.setdefault(e["id"], {}), e
            out[e["id"]][e["ph"]] = e
    return out


def enclosing(trace: dict, e: dict) -> list[dict]:
    """The X events on the flow event's (pid, tid) whose [ts, ts + dur) holds its ts."""
    return [
        x
        for x in trace["traceEvents"]
        if x["ph"] == "X"
        and (x["pid"], x["tid"]) == (e["pid"], e["tid"])
        and x["ts"] <= e["ts"] < x["ts"] + x["dur"]
    ]


def check_send_flows(tl: Timeline) -> int:
    """Every send has exactly one flow, from inside the send's slice to inside the slice of the
    compute task that receives it, on the receiving stage's rank; ids unique; JSON loads."""
    trace = json.loads(dumps_chrome_trace(chrome_trace(tl, capacity_bytes=GIB)))
    pairs = flow_pairs(trace)
    assert all(set(p) == {"s", "f"} for p in pairs.values())  # each id: one start, one end
    stage_rank = {
        (s.stage, s.microbatch, s.kind): s.rank for s in tl.spans if s.stream == "compute"
    }
    sends = [s for s in tl.spans if s.kind in ("SEND_F", "SEND_B")]
    p2p = {i: p for i, p in pairs.items() if p["s"]["cat"] == "p2p"}
    assert len(p2p) == len(sends)
    seen: set[int] = set()
    for p in p2p.values():
        start, end = p["s"], p["f"]
        assert end["bp"] == "e"  # binds to the enclosing slice
        assert (start["name"], start["cat"]) == (end["name"], end["cat"])
        [src] = enclosing(trace, start)  # strictly one slice holds each end
        [dst] = enclosing(trace, end)
        send = next(s for s in sends if s.task_id == src["args"]["task_id"])
        assert send.task_id not in seen
        seen.add(send.task_id)
        assert src["name"] == start["name"] == send.name
        mb = send.microbatch
        if send.kind == "SEND_F":
            want_stage, want_kinds = send.stage + 1, ("F",)
        else:
            want_stage, want_kinds = send.stage - 1, ("B", "I")
        assert dst["cat"] in want_kinds
        assert (dst["args"]["stage"], dst["args"]["microbatch"]) == (want_stage, mb)
        assert end["pid"] == stage_rank[(want_stage, mb, dst["cat"])]  # the receiving rank
        assert end["tid"] == 0  # the compute stream
        # The receiver starts after the send ends (the engine's dependency).
        assert dst["ts"] >= src["ts"] + src["dur"] - 1e-9
    assert seen == {s.task_id for s in sends}
    return len(p2p)


def test_flow_from_each_send_to_its_receiver_small() -> None:
    assert check_send_flows(small_timeline()) == 1  # SEND_F mb0 of stage 0 -> F mb0 on rank 1


@pytest.mark.parametrize(
    "scenario",
    [
        "1f1b_8gpu",
        "gpipe_8gpu",
        "interleaved_8gpu",
        "zero_bubble_8gpu",
        "naive_mp_4gpu",
        "pipedream_4gpu",
        "3d_128gpu",
    ],
)
def test_flow_from_each_send_to_its_receiver_scenarios(scenario: str) -> None:
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.spec.scenario import load_scenario

    tl = simulate_scenario(load_scenario(f"scenarios/{scenario}.yaml")).timeline
    n_sends = sum(1 for s in tl.spans if s.kind in ("SEND_F", "SEND_B"))
    assert n_sends > 0
    assert check_send_flows(tl) == n_sends


def test_flow_ids_unique_and_deterministic() -> None:
    a = flows(small_timeline())
    tl = small_timeline()
    tl.spans.reverse()
    b = flows(tl)
    assert [f.id for f in a] == list(range(1, len(a) + 1))
    assert [(f.id, f.source, f.dest) for f in a] == [(f.id, f.source, f.dest) for f in b]


def test_send_whose_receiver_is_missing_has_no_flow() -> None:
    tl = small_timeline()
    tl.spans = [s for s in tl.spans if not (s.kind == "F" and s.stage == 1)]
    assert [f for f in flows(tl) if f.cat == "p2p"] == []


def test_split_backward_receives_at_its_first_piece() -> None:
    spans = [
        Span(0, 1, "compute", "B", "B mb0 part 2", 500, 900, microbatch=0, stage=1),
        Span(1, 1, "compute", "B", "B mb0 part 1", 100, 500, microbatch=0, stage=1),
        Span(2, 2, "p2p", "SEND_B", "SEND_B mb0", 0, 90, microbatch=0, stage=2),
    ]
    [fl] = flows(Timeline(spans=spans))
    assert fl.source.task_id == 2 and fl.dest.task_id == 1


def test_collective_on_several_ranks_gets_flows_from_its_lowest_rank() -> None:
    spans = [
        Span(0, 2, "dp", "BROADCAST", "broadcast params", 100, 300),
        Span(1, 0, "dp", "BROADCAST", "broadcast params", 100, 300),
        Span(2, 1, "dp", "BROADCAST", "broadcast params", 100, 300),
        Span(3, 1, "dp", "BROADCAST", "broadcast params", 400, 600),  # another one: alone
        Span(4, 3, "dp", "ALLREDUCE", "broadcast params", 100, 300),  # another kind
    ]
    trace = json.loads(dumps_chrome_trace(chrome_trace(Timeline(spans=spans))))
    pairs = flow_pairs(trace)
    assert len(pairs) == 2
    for p in pairs.values():
        assert p["s"]["cat"] == p["f"]["cat"] == "collective"
        assert p["s"]["pid"] == 0
        assert enclosing(trace, p["s"])[0]["args"]["task_id"] == 1
        assert enclosing(trace, p["f"])
    assert sorted(p["f"]["pid"] for p in pairs.values()) == [1, 2]


def test_flow_event_binds_inside_its_slice() -> None:
    """Both ends sit strictly inside their slice (the middle), never on an edge a viewer might
    give to the neighbouring slice."""
    trace = chrome_trace(small_timeline())
    for p in flow_pairs(trace).values():
        for e in p.values():
            [x] = enclosing(trace, e)
            assert x["ts"] < e["ts"] < x["ts"] + x["dur"]
