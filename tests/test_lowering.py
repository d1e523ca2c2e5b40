"""Lowering (a scenario's schedule and costs -> engine tasks) against closed forms.

Every layout must give a well-formed task graph (unique ids, known dependencies, no cycle, not
even through a stream's FIFO order) and exactly the communication its parallelism implies:
m·(p·v − 1) pipeline sends each way, one TP all-reduce pair per layer per forward and per
backward (Megatron, Narayanan et al. 2021 §3.2), DDP buckets, ZeRO reduce-scatters and gathers.
Expected times come from the ring / alpha-beta closed forms written out below from the hardware
profile's numbers, not from the code under test. The planner's fast path (``fuse_tp``,
``merge_recompute``) must simulate to the same step time and peak memory as the detailed graph.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from functools import partial
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from simtrain.apps.simulate import (
    build_lowering_input,
    simulate_scenario,
)
from simtrain.costs.comm import bucket_group_ns, tp_allreduce_ns, tp_edges_ns
from simtrain.costs.memory import estimate_memory
from simtrain.costs.workload import initial_memory, nic_plan, zero2_every_microbatch
from simtrain.layout.step import resolve
from simtrain.sim.engine import Task, simulate
from simtrain.sim.lowering import lower, share_nics
from simtrain.sim.timeline import STREAMS, Timeline
from simtrain.spec.scenario import Scenario, load_scenario, parse_scenario

# ---------------------------------------------------------------------------------------------
# Plumbing: the only place that knows how a scenario becomes tasks and reaches the engine.


def lowered(sc: Scenario, fuse_tp: bool = False, merge_recompute: bool = False) -> list[Task]:
    """The engine tasks of one optimizer step of ``sc``."""
    inp = build_lowering_input(sc, estimate_memory(sc))
    return lower(inp, fuse_tp=fuse_tp, merge_recompute=merge_recompute)


def simulated(sc: Scenario, fuse_tp: bool = False, merge_recompute: bool = False) -> Timeline:
    """``lowered(sc)`` run on the engine, wired as ``simtrain.apps.simulate`` wires it (NIC
    sharing across nodes, static memory per rank)."""
    step = resolve(sc)
    tasks, links = share_nics(lowered(sc, fuse_tp, merge_recompute), nic_plan(sc, step))
    return simulate(tasks, initial_memory(step, estimate_memory(sc)), links)


# ---------------------------------------------------------------------------------------------
# Scenarios and closed forms

SCENARIOS = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.yaml"))
SCHEDULES = ("gpipe", "1f1b", "interleaved", "zb_h1", "pipedream", "naive")

# A small GPT-2-style model (GELU MLP of 4h, biases, LayerNorm, learned positions, tied
# embeddings), trained in bf16: 2 bytes per parameter, gradient and saved activation element.
L, H, HEADS, V, SEQ, POSITIONS = 8, 64, 4, 512, 128, 2048
BYTES = 2
LAYER_PARAMS = 12 * H * H + 13 * H  # W_qkv, W_o: 4h² + 4h; MLP 8h² + 5h; two LayerNorms 4h


def scenario(*, pp: int = 1, v: int = 1, tp: int = 1, dp: int = 1, m: int = 2, zero: int = 0,
             schedule: str = "1f1b", recompute: str = "none", micro_batch: int = 1,
             bucket_mb: float = 25.0, gpus_per_node: int | None = None) -> Scenario:  # fmt: skip
    """``m`` micro-batches per step; one node unless ``gpus_per_node`` splits the GPUs."""
    data: dict = {
        "name": "lowering",
        "model": {"layers": L, "hidden": H, "heads": HEADS, "vocab": V},
        "hardware": "a100_sxm4_80gb",
        "training": {"seq_len": SEQ, "global_batch": m * micro_batch * dp,
                     "micro_batch": micro_batch, "recompute": recompute},
        "parallelism": {"pp": pp, "virtual_stages": v, "tp": tp, "dp": dp, "zero_stage": zero,
                        "schedule": schedule, "bucket_mb": bucket_mb},
    }  # fmt: skip
    if gpus_per_node:
        data["cluster"] = {"nodes": pp * tp * dp // gpus_per_node, "gpus_per_node": gpus_per_node}
    return parse_scenario(data, "test_lowering")


@st.composite
def layouts(draw, max_tp: int = 2, tp1: bool = False, multi_node: bool = False) -> Scenario:
    schedule = draw(st.sampled_from(SCHEDULES))
    pp = draw(st.sampled_from([1, 2, 4]))
    v = draw(st.sampled_from([1, 2])) if schedule == "interleaved" and pp > 1 else 1
    tp = 1 if tp1 else draw(st.sampled_from([t for t in (1, 2, 4) if t <= max_tp]))
    dp = draw(st.sampled_from([1, 2] if not tp1 else [2, 4]))
    m = draw(st.integers(1, 3)) * (pp if schedule == "interleaved" else 1)
    gpus = pp * tp * dp
    assume(multi_node or gpus <= 8)  # closed forms below take every group inside one node
    gpn = draw(st.sampled_from([None, 2])) if multi_node and gpus >= 4 else None
    return scenario(
        pp=pp, v=v, tp=tp, dp=dp, m=m, schedule=schedule, gpus_per_node=gpn,
        zero=draw(st.integers(0, 3)),
        recompute=draw(st.sampled_from(["none", "selective", "full"])),
        micro_batch=draw(st.sampled_from([1, 2])),
        bucket_mb=draw(st.sampled_from([25.0, 0.1, 0.02])),
    )  # fmt: skip


# Corners a few dozen random draws may miss; every property test runs them first.
CORNERS = [
    dict(pp=2, v=2, tp=2, dp=2, m=2, zero=3, schedule="interleaved", recompute="full"),
    dict(pp=2, tp=2, dp=2, m=3, zero=1, schedule="zb_h1", recompute="selective", bucket_mb=0.02),
    dict(pp=4, dp=2, m=3, schedule="pipedream", bucket_mb=0.1),
    dict(pp=4, tp=2, m=2, zero=2, schedule="gpipe", recompute="full", micro_batch=2),
    dict(pp=2, dp=4, m=2, schedule="naive", bucket_mb=0.02),
    dict(pp=4, v=2, dp=2, m=4, zero=3, schedule="interleaved"),
    dict(pp=2, tp=4, m=2, schedule="1f1b", recompute="full"),
]


def corners(test, **fixed):
    """Add ``CORNERS`` (those it can take) as explicit examples of a property test."""
    for kw in CORNERS:
        if fixed.get("tp1") and kw.get("tp", 1) > 1 or kw.get("tp", 1) > fixed.get("max_tp", 4):
            continue
        extra = {k: v for k, v in fixed.items() if k not in ("tp1", "max_tp")}
        test = example(sc=scenario(**kw), **extra)(test)
    return test


def intra_link(sc: Scenario) -> tuple[float, float]:
    """(bytes/s, s) of one GPU's NVLink inside a node, at the NCCL efficiency of the profile."""
    hw = sc.hardware
    return hw.intra_node_bandwidth_bytes_per_s * hw.efficiency.collective, hw.intra_node_latency_s


def nic_link(sc: Scenario) -> tuple[float, float]:
    hw = sc.hardware
    bw = hw.nic_bandwidth_bytes_per_s * hw.efficiency.collective / hw.oversubscription
    return bw, hw.inter_node_latency_s


def ring_all_reduce_ns(size: float, n: int, link: tuple[float, float]) -> float:
    """Ring all-reduce: 2(n−1) steps, each GPU sends 2(n−1)/n of the array (Patarasuk & Yuan
    2009; the nccl-tests bus-bandwidth convention)."""
    bw, lat = link
    return 1e9 * (2 * (n - 1) / n * size / bw + 2 * (n - 1) * lat) if n > 1 else 0.0


def ring_half_ns(size: float, n: int, link: tuple[float, float]) -> float:
    """Ring reduce-scatter or all-gather of a ``size``-byte array: half an all-reduce."""
    bw, lat = link
    return 1e9 * ((n - 1) / n * size / bw + (n - 1) * lat) if n > 1 else 0.0


def rank_params(sc: Scenario, rank: int) -> int:
    """Parameters on pipeline rank ``rank`` (tp = 1, uniform split): its L/p blocks, the token
    and position embeddings on the first rank, the final LayerNorm on the last, and a copy of
    the tied word embedding for the LM head on the last when it is not the first (Megatron)."""
    pp = sc.parallelism.pp
    n = L // pp * LAYER_PARAMS
    if rank == 0:
        n += (V + POSITIONS) * H
    if rank == pp - 1:
        n += 2 * H + (V * H if pp > 1 else 0)
    return n


def by_id(tasks: list[Task]) -> dict[int, Task]:
    return {t.id: t for t in tasks}


# ---------------------------------------------------------------------------------------------
# Structure


def assert_well_formed(sc: Scenario, tasks: list[Task]) -> None:
    p = sc.parallelism
    step = resolve(sc)
    ids = [t.id for t in tasks]
    assert len(set(ids)) == len(ids), "duplicate task ids"
    known = set(ids)
    for t in tasks:
        assert set(t.deps) <= known, f"{t.name}: unknown dependency {set(t.deps) - known}"
        assert t.id not in t.deps, f"{t.name} depends on itself"
        assert type(t.duration_ns) is int and t.duration_ns >= 0, t
        # "host": a runtime that models eager dispatch (passes.host_pass; llama3_8b_cp runs
        # megatron_core's); "paging": a paged optimizer's transfers (passes.paging_pass)
        # torch.nn.DataParallel: GPU 0 and a replica (rank 1) run the one stage
        dp_rows = 2 if p.dp_mode == "data_parallel" and p.dp > 1 else 0
        assert 0 <= t.rank < (dp_rows or p.pp) and t.stream in (*STREAMS, "host", "paging"), t
        if t.stage is not None:  # the resolved chunks: a V schedule has 2 per rank
            assert 0 <= t.stage < len(step.chunks), t
            assert dp_rows or t.rank == step.chunk_rank(t.stage), t
        if t.microbatch is not None and t.kind != "OPT":
            assert 0 <= t.microbatch < sc.num_microbatches, t
    # Acyclic, counting the engine's FIFO order on each (gpu, stream) as edges too: otherwise
    # the engine deadlocks although every dependency exists (Kahn's algorithm).
    after: dict[int, list[int]] = defaultdict(list)
    indeg = Counter({i: 0 for i in ids})
    last_on: dict[tuple[int, str], int] = {}
    for t in tasks:
        before = list(t.deps)
        if (t.rank, t.stream) in last_on:
            before.append(last_on[(t.rank, t.stream)])
        last_on[(t.rank, t.stream)] = t.id
        for d in before:
            after[d].append(t.id)
            indeg[t.id] += 1
    ready = [i for i in ids if indeg[i] == 0]
    seen = 0
    while ready:
        i = ready.pop()
        seen += 1
        for j in after[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    assert seen == len(tasks), f"cycle through {len(tasks) - seen} tasks"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=layouts(max_tp=4, multi_node=True), fuse_tp=st.booleans(), merge=st.booleans())
@partial(corners, fuse_tp=True, merge=True)
def test_every_layout_lowers_to_a_well_formed_acyclic_graph(sc, fuse_tp, merge):
    assert_well_formed(sc, lowered(sc, fuse_tp, merge))


def test_a_cycle_is_caught():
    """The check above can fail: a back edge between two tasks of one graph is reported."""
    tasks = lowered(scenario(pp=2, m=2))
    first, later = tasks[0], tasks[-1]
    broken = [first._replace(deps=(later.id,)), *tasks[1:]]
    with pytest.raises(AssertionError, match="cycle"):
        assert_well_formed(scenario(pp=2, m=2), broken)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_shipped_scenarios_lower_to_well_formed_graphs(path):
    sc = load_scenario(path)
    p, m = sc.parallelism, sc.num_microbatches
    tasks = lowered(sc)
    assert_well_formed(sc, tasks)
    kinds = Counter(t.kind for t in tasks)
    # every chunk boundary, once per micro-batch (a V schedule: 2 chunks per rank)
    sends = m * (len(resolve(sc).chunks) - 1) if p.pp > 1 else 0
    assert kinds["SEND_F"] == kinds["SEND_B"] == sends
    # One optimizer step per rank; PipeDream steps after every backward (Harlap et al. 2018).
    assert kinds["OPT"] == p.pp * (m if p.schedule == "pipedream" and p.pp > 1 else 1)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=layouts(max_tp=2, multi_node=True))
@partial(corners, max_tp=2)
def test_every_stage_runs_every_microbatch_once(sc):
    p, m = sc.parallelism, sc.num_microbatches
    tasks = lowered(sc)
    everything = {(s, mb) for s in range(p.pp * p.virtual_stages) for mb in range(m)}
    compute = [t for t in tasks if t.stream == "compute" and t.kind != "OPT"]
    done = defaultdict(Counter)
    for t in compute:
        done[t.kind][(t.stage, t.microbatch)] += 1
    # ZeRO-3 slices every action per layer so that gathers can interleave (FSDP's units).
    slices = L // (p.pp * p.virtual_stages) if p.zero_stage == 3 and p.dp > 1 else 1
    assert set(done["F"]) == everything and set(done["F"].values()) == {slices}
    split = p.schedule == "zb_h1" and p.pp > 1  # backward split into I and W (Qi et al. 2024)
    assert set(done["I" if split else "B"]) == everything
    assert set(done["W"]) == (everything if split else set())
    assert set(done["R"]) == (everything if sc.training.recompute != "none" else set())


# ---------------------------------------------------------------------------------------------
# Communication volume


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=layouts(max_tp=4))
@corners
def test_pipeline_sends_count_and_time(sc):
    """m·(p·v − 1) sends each way per step (every chunk boundary, every micro-batch), each one
    α + S/B of a b·s·h/t activation (Megatron's scatter/gather, Narayanan et al. 2021 §4.1),
    and the receiver's compute waits for it."""
    p, t, m = sc.parallelism, sc.training, sc.num_microbatches
    tasks = lowered(sc)
    ids = by_id(tasks)
    sends = {k: [x for x in tasks if x.kind == k] for k in ("SEND_F", "SEND_B")}
    expected = m * (p.pp * p.virtual_stages - 1) if p.pp > 1 else 0
    bw, lat = intra_link(sc)  # one node
    one = 1e9 * (lat + BYTES * t.micro_batch * SEQ * H / p.tp / bw)
    for kind, step in (("SEND_F", 1), ("SEND_B", -1)):
        assert len(sends[kind]) == expected
        assert len({(x.stage, x.microbatch) for x in sends[kind]}) == expected
        for x in sends[kind]:
            assert x.stream == "p2p" and abs(x.duration_ns - one) <= 0.5, x
            receiver = [c for c in tasks if c.stream == "compute" and c.microbatch == x.microbatch
                        and c.stage == x.stage + step]  # fmt: skip
            assert any(x.id in c.deps for c in receiver), f"nothing waits for {x.name}"
            assert all(ids[d].stage == x.stage for d in x.deps)  # sent after its own compute


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=layouts(max_tp=4))
@corners
def test_tensor_parallel_all_reduces_two_per_layer_per_pass(sc):
    """Megatron's TP: 2 all-reduces of the b·s·h activation per layer in the forward and 2 in
    the backward (Narayanan et al. 2021 §3.2; Shoeybi et al. 2019 Fig. 4), 2 more when full
    recompute re-runs the forward; selective recompute (the attention core) has none."""
    p, t, m = sc.parallelism, sc.training, sc.num_microbatches
    tasks = lowered(sc)
    ids = by_id(tasks)
    tp_tasks = [x for x in tasks if x.kind == "TP"]
    if p.tp == 1:
        assert tp_tasks == []
        return
    size = BYTES * t.micro_batch * SEQ * H
    ar = ring_all_reduce_ns(size, p.tp, intra_link(sc))
    assert resolve(sc).boundary_bytes == size
    assert abs(tp_allreduce_ns(sc, resolve(sc)) - ar) <= 0.5
    per_chunk = L // (p.pp * p.virtual_stages)
    passes = 2 + (t.recompute == "full")
    # One TP task after each forward and each backward (its recompute's all-reduces included);
    # the first chunk's forward adds the embedding's collective, the last one's the output
    # layer's and the loss's (costs.comm.tp_edges_ns; one chunk holds both at pp 1)
    assert len(tp_tasks) == 2 * m * p.pp * p.virtual_stages
    step = resolve(sc)
    emb, head = tp_edges_ns(sc, step, True, False), tp_edges_ns(sc, step, False, True)
    both = tp_edges_ns(sc, step, True, True)
    last = p.pp * p.virtual_stages - 1

    def extra_f(stage: int) -> int:  # the chunk's own edge: embedding first, head last
        return (emb[0] if stage == 0 else 0) + (head[0] if stage == last else 0)

    for x in tp_tasks:
        after = {ids[d].kind for d in x.deps}
        if after == {"F"}:
            assert abs(x.duration_ns - 2 * per_chunk * ar - extra_f(x.stage)) <= per_chunk, x
    total = sum(x.duration_ns for x in tp_tasks)
    n_all_reduces = m * L * 2 * passes
    edges = m * (sum(both) if p.pp * p.virtual_stages == 1 else sum(emb) + sum(head))
    assert total == n_all_reduces * tp_allreduce_ns(sc, step) + edges
    assert abs(total - edges - n_all_reduces * ar) <= n_all_reduces / 2


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=layouts(tp1=True))
@partial(corners, tp1=True)
def test_data_parallel_traffic_matches_ring_closed_forms(sc):
    """Per pipeline rank with Ψ parameters and G = 2Ψ bytes of bf16 gradients over n = dp GPUs:
    DDP all-reduces G in ⌈G / bucket⌉ buckets (Li et al. 2020 §3.2.3), each paying 2(n−1)
    latencies; ZeRO-1 reduce-scatters the same buckets and all-gathers the 2Ψ bytes of updated
    parameters once (2(n−1)/n·G in all, as DDP: Rajbhandari et al. 2020 §7); ZeRO-2 the same
    all-gather, but each layer's G/L reduce-scattered after its backward, every micro-batch
    (its gradients are sharded: DeepSpeed reduces every micro-step); ZeRO-3 gathers each
    layer's parameters before its forward and backward (and recompute) and reduce-scatters its
    gradients after its backward, every micro-batch; PipeDream all-reduces once, un-bucketed.
    With pp > 1 the first and the last rank also all-reduce the tied word embedding's V x h
    gradient between them (two GPUs, one node here), once, after the step's last backward
    (not under PipeDream's per-micro-batch updates)."""
    p, m = sc.parallelism, sc.num_microbatches
    assume(not (p.pp == 1 and p.schedule == "pipedream"))  # see the xfail test below
    tasks = lowered(sc)
    link = intra_link(sc)  # the DP group of dp consecutive GPUs sits in one node
    for r in range(p.pp):
        mine = [x for x in tasks if x.rank == r]
        tied = [x for x in mine if x.name == "ALLREDUCE tied embedding grads"]
        ends = p.pp > 1 and r in (0, p.pp - 1) and p.schedule != "pipedream"
        assert len(tied) == ends
        if ends:
            assert abs(tied[0].duration_ns - ring_all_reduce_ns(BYTES * V * H, 2, link)) <= 0.5
        dp_tasks = [x for x in mine if x.stream == "dp" and x not in tied]
        gathers = [x for x in mine if x.stream == "gather"]
        g_bytes = BYTES * rank_params(sc, r)
        cap = int(p.bucket_mb * 1e6)
        buckets = -(-g_bytes // cap)

        def total(kind: str, xs=dp_tasks) -> int:
            return sum(x.duration_ns for x in xs if x.kind == kind)

        if p.zero_stage == 3:
            layers = L // p.pp
            per_layer = ring_half_ns(g_bytes / layers, p.dp, link)
            rs = [x for x in dp_tasks if x.kind == "RS"]
            assert len(rs) == m * layers and len(dp_tasks) == len(rs)
            assert all(abs(x.duration_ns - per_layer) <= 1 for x in rs)
            assert all(x.kind == "AG" for x in gathers)
            assert all(abs(x.duration_ns - per_layer) <= 1 for x in gathers)
            # Selective recompute is left out: its slices gather parameters too although the
            # attention core it recomputes has none (Korthikanti et al. 2022 §4.2).
            if sc.training.recompute != "selective":
                passes = 2 + (sc.training.recompute == "full")
                assert len(gathers) == passes * m * layers
            continue
        assert gathers == []
        if p.zero_stage == 2 and p.dp > 1:  # ZeRO-2: each layer's gradients, every backward
            assert zero2_every_microbatch(sc)
            layers = L // p.pp
            rs = [x for x in dp_tasks if x.kind == "RS"]
            assert len(rs) == m * layers and Counter(x.kind for x in dp_tasks)["AG"] == 1
            # each micro-batch: the ring reduce-scatter of the buckets (ZeRO-1's closed form
            # below, once a micro-batch), in one piece per layer
            once = ring_half_ns(g_bytes, p.dp, link) + (buckets - 1) * (p.dp - 1) * link[1] * 1e9
            assert abs(sum(x.duration_ns for x in rs) - m * once) <= m * buckets + len(rs)
            assert abs(total("AG") - ring_half_ns(g_bytes, p.dp, link)) <= 0.5
            continue
        if p.zero_stage in (1, 2):
            assert Counter(x.kind for x in dp_tasks) == {"DP": min(buckets, 16), "AG": 1}
            want = ring_half_ns(g_bytes, p.dp, link) + (buckets - 1) * (p.dp - 1) * link[1] * 1e9
            assert abs(total("DP") - want) <= buckets
            assert total("DP") == sum(bucket_group_ns(sc, resolve(sc), "reduce_scatter", g_bytes))
            assert abs(total("AG") - ring_half_ns(g_bytes, p.dp, link)) <= 0.5
        elif p.schedule == "pipedream" and p.pp > 1:  # not pipedream_2bw: one step, bucketed
            assert len(dp_tasks) == 1
            assert abs(total("DP") - ring_all_reduce_ns(g_bytes, p.dp, link)) <= 0.5
        else:
            assert len(dp_tasks) == min(buckets, 16)  # more than 16 are merged into groups
            want = ring_all_reduce_ns(g_bytes, p.dp, link)
            want += (buckets - 1) * 2 * (p.dp - 1) * link[1] * 1e9
            assert abs(total("DP") - want) <= buckets
            assert total("DP") == sum(bucket_group_ns(sc, resolve(sc), "all_reduce", g_bytes))


@pytest.mark.parametrize("zero", [2, 3])
@pytest.mark.parametrize(("pp", "v", "schedule"),
                         [(2, 1, "1f1b"), (2, 2, "interleaved"), (2, 1, "zb_h1")])  # fmt: skip
def test_pipelining_over_fsdp_reduce_scatters_once_after_the_last_backward(zero, pp, v, schedule):
    """PyTorch pipelining over FSDP2 (runtime ``pipeline_grads_unsharded``) turns the gradient
    sync off in every backward (torch 2.13.0 pipelining/stage.py backward_maybe_with_nosync:
    ``set_requires_gradient_sync(False)``) and reduce-scatters each stage's whole gradients in
    its REDUCE_GRAD action after that stage's last micro-batch (``perform_reduce_grad``,
    schedules.py ``_add_reduce_grad``: one per stage), the compute stream waiting for it
    (FSDP2 ``finalize_backward``): per rank, v reduce-scatters of its 4-byte gradients
    (``grad_reduce_dtype`` fp32) that add up to one ring reduce-scatter of them plus v - 1
    more rounds of latency, not one per layer per micro-batch as ZeRO-2/3 elsewhere. It also
    leaves each stage's parameters gathered after a backward (``set_reshard_after_backward
    (False)``): under ZeRO-3 a 1F1B rank gathers each layer m + 1 times (its first forward
    and every backward that follows a forward), not 2m."""
    m, dp = 2 * pp, 2
    data = {
        "name": "deferred",
        "model": {"layers": L, "hidden": H, "heads": HEADS, "vocab": V},
        "hardware": "a100_sxm4_80gb",
        "training": {"seq_len": SEQ, "global_batch": m * dp, "micro_batch": 1},
        "parallelism": {"pp": pp, "virtual_stages": v, "dp": dp, "zero_stage": zero,
                        "schedule": schedule},
        "runtime": {"name": "torchtitan", "collective_algorithm": "ring"},  # the closed form's
    }  # fmt: skip
    sc = parse_scenario(data, "test_lowering")
    assert sc.runtime.pipeline_grads_unsharded and sc.runtime.grad_reduce_dtype == "fp32"
    tasks = lowered(sc)
    ids = by_id(tasks)
    link = intra_link(sc)
    backward = ("B", "W")  # a split backward's weight half ends it (zb_h1)
    per_chunk = L // (pp * v) * LAYER_PARAMS
    for r in range(pp):
        mine = [x for x in tasks if x.rank == r]
        rs = [x for x in mine if x.kind == "RS"]
        chunks = sorted({x.stage for x in mine if x.kind in backward})
        assert sorted(x.name for x in rs) == [f"REDUCE_GRAD chunk {k}" for k in chunks]
        bw, lat = link
        want = ring_half_ns(4 * rank_params(sc, r), dp, link) + (v - 1) * (dp - 1) * lat * 1e9
        assert abs(sum(x.duration_ns for x in rs) - want) <= v
        for x in rs:  # each chunk's own gradients: its blocks, the embedding, the head's copy
            n = per_chunk + (V + POSITIONS) * H * (x.stage == 0)
            n += (2 * H + V * H) * (x.stage == pp * v - 1)
            assert abs(x.duration_ns - ring_half_ns(4 * n, dp, link)) <= 1, x
        for x in rs:  # after its chunk's last backward; the rank's next compute waits for it
            (dep,) = x.deps
            last_b = max((y for y in mine if y.kind in backward and y.stage == x.stage),
                         key=lambda y: y.id)  # fmt: skip
            assert dep == last_b.id or last_b.id in ids[dep].deps
            nxt = next((y for y in mine if y.stream == "compute" and y.id > x.id), None)
            if nxt is not None:  # the next compute (or the optimizer step) waits for it
                seen, todo = set(), list(nxt.deps)
                while todo and x.id not in seen:
                    d = todo.pop()
                    if d not in seen:
                        seen.add(d)
                        todo += ids[d].deps
                assert x.id in seen, (x, nxt)
        if zero == 3 and schedule == "1f1b":
            ag = [x for x in mine if x.kind == "AG"]
            assert len(ag) == (m + 1) * (L // pp)
    if zero == 3:  # a backward leaves the whole stage gathered: no less than ZeRO-2's peak
        two = parse_scenario({**data, "parallelism": {**data["parallelism"], "zero_stage": 2}},
                             "test_lowering")  # fmt: skip
        for s3, s2 in zip(estimate_memory(sc).stages, estimate_memory(two).stages, strict=True):
            assert s3.peak_memory_bytes >= s2.peak_memory_bytes
    # the rule off: ZeRO-2/3 reduce-scatter every layer's gradients in every backward
    off = parse_scenario({**data, "runtime": {**data["runtime"],
                                              "pipeline_grads_unsharded": False}},
                         "test_lowering")  # fmt: skip
    for r in range(pp):
        mine = [x for x in lowered(off) if x.rank == r]
        assert len([x for x in mine if x.kind == "RS"]) == m * L // pp
        if zero == 3 and schedule == "1f1b":
            assert len([x for x in mine if x.kind == "AG"]) == 2 * m * (L // pp)


@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize(("v", "schedule", "recompute"),
                         [(1, "1f1b", "full"), (2, "interleaved", "full"), (1, "zb_h1", "none"),
                          (2, "interleaved", "none")])  # fmt: skip
def test_the_planners_gather_count_is_the_simulations(v, schedule, recompute, reuse):
    """Under pipelining over FSDP2 a ZeRO-3 chunk gathers only when a forward resharded it
    (passes.zero3_pass); the planner's count of those gathers
    (workload.pipelined_gather_layers, a replayed forward's gathers included) is the lowered
    all-gathers' count on every rank, with FSDP's one gather for a replayed forward and its
    backward and without it."""
    from simtrain.costs.workload import pipelined_gather_layers

    data = {
        "name": "gathers",
        "model": {"layers": L, "hidden": H, "heads": HEADS, "vocab": V},
        "hardware": "a100_sxm4_80gb",
        "training": {"seq_len": SEQ, "global_batch": 8, "micro_batch": 1, "recompute": recompute},
        "parallelism": {"pp": 2, "virtual_stages": v, "dp": 2, "zero_stage": 3,
                        "schedule": schedule},
        "runtime": {"name": "torchtitan", "fsdp_recompute_reuses_gather": reuse},
    }  # fmt: skip
    sc = parse_scenario(data, "test_lowering")
    step = resolve(sc)
    tasks = lowered(sc)
    for r in range(2):
        ag = [x for x in tasks if x.rank == r and x.kind == "AG" and "params" in x.name]
        regathers = recompute == "full" and not sc.runtime.fsdp_recompute_reuses_gather
        assert len(ag) == pipelined_gather_layers(step, r, regathers)


def test_a_one_stage_pipedream_lowers_as_gradient_accumulation():
    """With pp = 1 every schedule is plain gradient accumulation (the resolved step's
    schedule_name), so ``schedule: pipedream`` must give 1F1B's tasks, DDP buckets included."""

    def shape(sc: Scenario) -> list[tuple]:
        return [(t.kind, t.stream, t.duration_ns, t.deps) for t in lowered(sc)]

    pipedream = scenario(dp=2, m=2, schedule="pipedream", bucket_mb=0.1)
    assert shape(pipedream) == shape(scenario(dp=2, m=2, schedule="1f1b", bucket_mb=0.1))


@pytest.mark.parametrize(
    ("kind", "pp", "v"),
    [
        ("SEND_F", 4, 1),
        ("SEND_F", 4, 2),
        ("SEND_B", 4, 1),
    ],
)
def test_sends_cost_the_link_between_sender_and_receiver(kind, pp, v):
    """Two nodes of two GPUs, one pipeline rank per GPU: a hop between GPUs 1 and 2 (and the
    interleaved wrap-around from 3 to 0) crosses nodes, the others stay on NVLink."""
    sc = scenario(pp=pp, v=v, m=pp, schedule="interleaved" if v > 1 else "1f1b",
                  gpus_per_node=2)  # fmt: skip
    size = BYTES * SEQ * H
    step = 1 if kind == "SEND_F" else -1
    for x in (x for x in lowered(sc) if x.kind == kind):
        to = (x.rank + step) % pp
        bw, lat = intra_link(sc) if x.rank // 2 == to // 2 else nic_link(sc)
        assert abs(x.duration_ns - 1e9 * (lat + size / bw)) <= 0.5, (x.name, x.rank, to)


# ---------------------------------------------------------------------------------------------
# The planner's fast path


def stream_totals(tasks: list[Task]) -> Counter:
    """Total duration per (gpu, stream), the TP all-reduces counted with the compute they
    follow (where fuse_tp puts them)."""
    out: Counter = Counter()
    for t in tasks:
        stream = "compute" if t.stream == "collective" else t.stream
        out[(t.rank, stream)] += t.duration_ns
    return out


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sc=layouts(max_tp=2, multi_node=True), fuse_tp=st.booleans(), merge=st.booleans())
@partial(corners, max_tp=2, fuse_tp=True, merge=True)
def test_fast_path_keeps_step_time_and_peak_memory(sc, fuse_tp, merge):
    fuse_tp = fuse_tp and sc.parallelism.tp <= sc.cluster.gpus_per_node  # TP inside a node only
    detailed, fast = lowered(sc), lowered(sc, fuse_tp, merge)
    assert len(fast) <= len(detailed)
    assert stream_totals(fast) == stream_totals(detailed)  # no work lost or invented
    a, b = simulated(sc), simulated(sc, fuse_tp, merge)
    assert b.makespan_ns == a.makespan_ns
    assert [b.peak_memory_bytes(g) for g in b.ranks] == [a.peak_memory_bytes(g) for g in a.ranks]


def test_fast_path_drops_tasks_where_it_applies():
    sc = scenario(pp=2, tp=2, m=4, recompute="full")
    kinds = Counter(t.kind for t in lowered(sc, fuse_tp=True, merge_recompute=True))
    assert kinds["TP"] == 0 and kinds["R"] == 0  # folded into F / B
    assert Counter(t.kind for t in lowered(sc))["TP"] == 2 * 4 * 2


def test_simulated_is_wired_as_the_app():
    """``simulated`` above must stay the app's wiring, or the fast-path test proves nothing."""
    sc = scenario(pp=2, tp=2, dp=2, m=4, recompute="full", gpus_per_node=4)
    assert simulated(sc).makespan_ns == round(simulate_scenario(sc).metrics.step_time_s * 1e9)
    fast = simulate_scenario(sc, detail=False)
    tl = simulated(sc, fuse_tp=True, merge_recompute=True)
    assert tl.makespan_ns == round(fast.metrics.step_time_s * 1e9)
    assert [tl.peak_memory_bytes(g) for g in tl.ranks] == [
        s.peak_memory_bytes for s in fast.metrics.stages
    ]
