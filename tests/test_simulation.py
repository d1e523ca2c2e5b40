"""The simulated step against closed forms, the memory model, and itself (determinism)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simtrain.costs.comm import bucket_group_ns
from simtrain.layout.step import resolve
from simtrain.schedules import build_schedule
from simtrain.sim.engine import simulate
from simtrain.sim.lowering import ChunkDurations, LoweringInput, RankWork, lower
from simtrain.spec.scenario import load_scenario
from simtrain.spec.yamlfile import load_yaml

SCENARIOS_DIR = Path(__file__).resolve().parent.parent / "scenarios"
SCENARIOS = sorted(SCENARIOS_DIR.glob("*.yaml"))


def _uniform(name: str, pp: int, m: int, v: int, tf: int, ti: int, tw: int):
    """Lower a schedule with uniform chunk durations and free communication."""
    chunks = {
        s: ChunkDurations(forward_ns=tf, input_grad_ns=ti, weight_grad_ns=tw, layers=(s, s + 1))
        for s in range(pp * v)
    }
    inp = LoweringInput(
        schedule=build_schedule(name, pp, m, v),
        pp=pp,
        v=v,
        chunks=chunks,
        ranks={r: RankWork() for r in range(pp)},
        activation_bytes={s: 1000 for s in range(pp * v)},
        working_set_bytes={s: 0 for s in range(pp * v)},
    )
    return simulate(lower(inp))


def _idle_and_makespan(tl, gpu):
    busy = sum(s.duration_ns for s in tl.spans_of(gpu, "compute"))
    return tl.makespan_ns - busy, tl.makespan_ns


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
@pytest.mark.parametrize(("pp", "m"), [(2, 1), (4, 8), (8, 8), (8, 32), (3, 5)])
def test_gpipe_1f1b_bubble_and_makespan_exact(name, pp, m):
    tf, tb = 1000, 2000  # backward = 2 x forward
    tl = _uniform(name, pp, m, 1, tf, tb, 0)
    # GPipe (Huang et al. 2019 §2.3), 1F1B (Narayanan et al. 2021 §2.2.1)
    assert tl.makespan_ns == (m + pp - 1) * (tf + tb)
    for g in range(pp):
        idle, total = _idle_and_makespan(tl, g)
        assert idle * (m + pp - 1) == (pp - 1) * total  # bubble == (p-1)/(m+p-1) exactly


@pytest.mark.parametrize(("pp", "m", "v"), [(2, 4, 2), (4, 8, 2), (4, 8, 4), (8, 16, 2)])
def test_interleaved_bubble_exact(pp, m, v):
    tf, tb = 1200, 2400  # per stage; each of v chunks takes 1/v
    tl = _uniform("interleaved", pp, m, v, tf // v, tb // v, 0)
    for g in range(pp):
        idle, total = _idle_and_makespan(tl, g)
        assert idle * (v * m + pp - 1) == (pp - 1) * total  # (p-1)/(v·m+p-1)


@pytest.mark.parametrize(("pp", "m"), [(2, 4), (4, 4), (4, 8), (8, 16)])
def test_zb_h1_bubble_exact(pp, m):
    t = 1000  # T_F = T_I = T_W (Qi et al. 2023 §2.1): bubble (p-1)/(3m+p-1)
    tl = _uniform("zb_h1", pp, m, 1, t, t, t)
    assert tl.makespan_ns == (3 * m + pp - 1) * t
    for g in range(pp):
        idle, total = _idle_and_makespan(tl, g)
        assert idle * (3 * m + pp - 1) == (pp - 1) * total


@pytest.mark.parametrize("pp", [2, 4, 8])
def test_naive_model_parallel_one_gpu_busy_at_a_time(pp):
    tl = _uniform("naive", pp, 1, 1, 1000, 2000, 0)
    for g in range(pp):
        busy = sum(s.duration_ns for s in tl.spans_of(g, "compute"))
        assert busy * pp == tl.makespan_ns
    # No two compute spans overlap in time.
    spans = sorted((s.start_ns, s.end_ns) for s in tl.spans if s.stream == "compute")
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(["gpipe", "1f1b", "zb_h1", "naive", "pipedream"]),
    pp=st.integers(1, 6),
    m=st.integers(1, 10),
    tf=st.integers(1, 50),
    tb=st.integers(1, 50),
    k=st.integers(2, 5),
)
def test_makespan_scales_and_allocations_balance(name, pp, m, tf, tb, k):
    split = name == "zb_h1"
    tl = _uniform(name, pp, m, 1, tf, tb, tb if split else 0)
    tl_k = _uniform(name, pp, m, 1, k * tf, k * tb, k * tb if split else 0)
    assert tl_k.makespan_ns == k * tl.makespan_ns
    assert tl.makespan_ns > 0
    for g in tl.ranks:
        idle, total = _idle_and_makespan(tl, g)
        assert 0 <= idle < total or pp == 1
        final = [s for s in tl.memory if s.rank == g and s.category == "activations"]
        assert final[-1].bytes == 0  # every F's allocation is freed by its B or W


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_trace_peak_memory_equals_memory_model(path):
    from simtrain.apps.simulate import simulate_scenario

    res = simulate_scenario(load_scenario(path))
    # every simulated GPU: one per stage, or DataParallel's GPU 0 and a replica
    for sm, mt in zip(res.memory.gpus, res.metrics.stages, strict=True):
        assert mt.peak_memory_bytes == sm.peak_memory_bytes
    # Conservation of time: the breakdown of an average GPU sums to the step time.
    bd = dict(res.metrics.time_breakdown_s)
    parts = bd["compute"] + bd["recompute"] + bd["optimizer"] + bd["communication_exposed"]
    parts += bd["host_exposed"]  # a host-bound GPU's wait for the host is not a bubble
    assert parts + bd["bubble"] == pytest.approx(res.metrics.step_time_s, rel=1e-9)
    assert 0.0 <= res.metrics.bubble_ratio < 1.0
    assert 0.0 < res.metrics.mfu < 1.0


def _with_overrides(data: dict, overrides: list[str]):
    """``data`` with ``--set``-style overrides applied, parsed as a scenario."""
    import copy

    from simtrain.spec.scenario import apply_override, parse_scenario

    data = copy.deepcopy(data)
    for ov in overrides:
        apply_override(data, ov)
    return parse_scenario(data, data["name"])


@pytest.mark.parametrize("overrides", [[], ["parallelism.pp=2", "training.global_batch=4"]])
def test_trace_peak_with_fp32_gradient_buffer(overrides):
    """bf16_fp32_grads: the fp32 accumulation buffer is held all step, the 16-bit gradients come
    and go with one micro-batch; trace and memory model agree on the peak either way."""
    from simtrain.apps.simulate import simulate_scenario

    data = {
        "name": "acc",
        "model": {"preset": "gpt2"},
        "hardware": "a100_sxm4_80gb",
        "training": {"seq_len": 256, "global_batch": 2, "micro_batch": 2,
                     "precision": "bf16_fp32_grads"},
        "parallelism": {"schedule": "1f1b"},
    }  # fmt: skip
    sc = _with_overrides(data, overrides)
    res = simulate_scenario(sc)
    for sm, mt in zip(res.memory.stages, res.metrics.stages, strict=True):
        assert mt.peak_memory_bytes == sm.peak_memory_bytes
    plain = simulate_scenario(_with_overrides(data, [*overrides, "training.precision=bf16"]))
    extra = [a.category("gradients") - b.category("gradients")
             for a, b in zip(res.memory.stages, plain.memory.stages, strict=True)]  # fmt: skip
    assert extra == [4 * sm.trainable for sm in res.memory.stages]  # 4 B per parameter
    # plain bf16 casts its gradients to fp32 at the step instead (4 B per parameter, transient)
    assert [sm.optimizer_working_bytes for sm in plain.memory.stages] == [
        a.optimizer_working_bytes + 4 * a.trainable for a in res.memory.stages
    ]


def test_run_outputs_are_byte_identical(tmp_path):
    from click.testing import CliRunner

    from simtrain.cli import main

    outs = []
    for i in range(2):
        out = tmp_path / str(i)
        r = CliRunner().invoke(
            main, ["run", "scenarios/1f1b_8gpu.yaml", "--out", str(out), "--no-plots"]
        )
        assert r.exit_code == 0, r.output
        outs.append(((out / "summary.json").read_bytes(), (out / "trace.json").read_bytes()))
    assert outs[0] == outs[1]


def test_full_recompute_costs_about_one_forward():
    from simtrain.apps.simulate import simulate_scenario

    sc = load_scenario("scenarios/seed_1p5b_amp_ckpt.yaml")
    ck_res = simulate_scenario(sc)
    ck = ck_res.metrics
    no = simulate_scenario(load_scenario("scenarios/seed_1p5b_amp_ckpt.yaml",
                                         ["training.recompute=none"])).metrics  # fmt: skip
    fwd = sum(s.duration_ns for s in ck_res.timeline.spans if s.kind == "F") / 1e9
    # Checkpointing adds the recompute forward of the blocks (not of the LM head).
    assert no.step_time_s < ck.step_time_s <= no.step_time_s + fwd
    assert ck.step_time_s - no.step_time_s > 0.7 * fwd


def test_naive_data_parallel_slower_and_heavier_than_ddp():
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.costs.memory import estimate_memory

    naive = load_scenario("scenarios/dp_naive_4gpu.yaml")
    ddp = load_scenario("scenarios/dp_naive_4gpu.yaml", ["parallelism.dp_mode=ddp"])
    assert simulate_scenario(naive).metrics.step_time_s > simulate_scenario(ddp).metrics.step_time_s
    assert estimate_memory(naive).peak_memory_bytes > estimate_memory(ddp).peak_memory_bytes


def test_ddp_overlap_exposes_about_the_last_bucket():
    from simtrain.apps.simulate import simulate_scenario

    sc = load_scenario("scenarios/ddp_8gpu.yaml")
    res = simulate_scenario(sc)
    bd = dict(res.metrics.time_breakdown_s)
    grad_bytes = res.memory.stages[0].trainable * 2
    buckets = bucket_group_ns(sc, resolve(sc), "all_reduce", grad_bytes)
    assert bd["communication_total"] == pytest.approx(sum(buckets) / 1e9)
    # Long backward: everything but (about) the last bucket hides under compute.
    assert bd["communication_exposed"] <= 1.5 * max(buckets) / 1e9
    assert bd["communication_exposed"] < 0.1 * bd["communication_total"]


def test_zero3_with_a_stage_of_no_decoder_layers():
    """DeepSpeed's embedding-as-layer split can leave a stage with only the LM head (GPT-2's 12
    layers + 2 embedding items over pp = 8: the last stage holds no block); ZeRO-3's per-layer
    gathers on it used to divide by zero in lowering (found by fuzzing)."""
    from simtrain.apps.simulate import simulate_scenario

    data = {
        "name": "emb",
        "model": {"preset": "gpt2"},
        "hardware": "a100_sxm4_80gb",
        "cluster": {"nodes": 2, "gpus_per_node": 8},
        "training": {"seq_len": 128, "global_batch": 16, "micro_batch": 1},
        "parallelism": {"dp": 2, "pp": 8, "schedule": "1f1b", "zero_stage": 3,
                        "layer_split": "embedding_as_layer"},
    }  # fmt: skip
    sc = _with_overrides(data, [])
    last = resolve(sc).chunks[7]
    assert last.lo == last.hi and last.head  # no decoder layer on the last stage
    for detail in (True, False):
        res = simulate_scenario(sc, detail=detail)
        assert res.metrics.step_time_s > 0
        for sm, mt in zip(res.memory.stages, res.metrics.stages, strict=True):
            assert mt.peak_memory_bytes == sm.peak_memory_bytes


@pytest.mark.parametrize("cap", [0, 10**8, 10**12])
def test_zero3_live_parameter_cap(cap):
    """parallelism.zero3_max_live_params (DeepSpeed's stage3_max_live_parameters): the gathered
    16-bit parameters held at once are min(2 layers' parameters, cap) x 2 B; 0 is FSDP-style
    (no cap). The trace's peak follows the memory model either way."""
    from simtrain.apps.simulate import simulate_scenario

    data = load_yaml(SCENARIOS_DIR / "zero3_64gpu.yaml")
    if cap:
        data.setdefault("parallelism", {})["zero3_max_live_params"] = cap
    base = simulate_scenario(_with_overrides(data, []))
    for sm, mt in zip(base.memory.stages, base.metrics.stages, strict=True):
        assert mt.peak_memory_bytes == sm.peak_memory_bytes
    plain = load_yaml(SCENARIOS_DIR / "zero3_64gpu.yaml")
    ref = simulate_scenario(_with_overrides(plain, []))
    st = base.memory.stages[0]
    per_layer = st.params // base.scenario.model.layers  # pp = 1: every layer on this stage
    shrink = 2 * (2 * per_layer - min(2 * per_layer, cap)) if cap else 0  # bf16: 2 B each
    got = ref.memory.stages[0].category("buffers") - st.category("buffers")
    assert got == shrink
    # Llama-2 13B: two layers hold ~0.65 B parameters; only the 1e8 cap binds
    assert (shrink > 0) == (cap == 10**8)


def test_tied_embedding_gradient_all_reduce_between_the_end_ranks():
    """The first and last ranks all-reduce the tied word embedding's gradient after their
    reductions and before their optimizer steps (Megatron-LM training.py "All-reduce
    word_embeddings' grad across first and last stages"; nanotron sync_tied_weights_gradients;
    DeepSpeed ReduceTiedGrads): both copies start when the later rank is ready (rank 0, whose
    last backward ends the 1F1B step), both optimizer steps wait for them, the middle ranks
    have none, and the step is that long longer than the same model untied (whose head copy
    has the same size). The planner's closed form adds the same."""
    from dataclasses import replace

    from simtrain.apps.plan.estimate import closed_form_step_s
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.costs.memory import estimate_memory
    from simtrain.costs.workload import tied_embedding_sync

    sc = load_scenario(SCENARIOS_DIR / "1f1b_8gpu.yaml")
    assert sc.model.tied_embeddings and sc.parallelism.pp > 1
    first, last, ns = tied_embedding_sync(sc, resolve(sc))
    assert (first, last) == (0, sc.parallelism.pp - 1) and ns > 0
    res = simulate_scenario(sc)
    spans = res.timeline.spans
    tied = [s for s in spans if s.name == "ALLREDUCE tied embedding grads"]
    assert sorted(s.rank for s in tied) == [first, last]
    ready = max(s.end_ns for s in spans if s.rank in (first, last) and s.kind in ("B", "W"))
    assert all(s.start_ns == ready and s.duration_ns == ns for s in tied)
    for s in tied:
        opt = next(o for o in spans if o.rank == s.rank and o.kind == "OPT")
        assert opt.start_ns >= s.end_ns
    untied = replace(sc, model=replace(sc.model, tied_embeddings=False))
    assert tied_embedding_sync(untied, resolve(untied)) is None
    plain = simulate_scenario(untied)
    assert res.metrics.step_time_s * 1e9 - plain.metrics.step_time_s * 1e9 == pytest.approx(
        ns, abs=2)  # fmt: skip
    closed = closed_form_step_s(sc, estimate_memory(sc).stages)
    closed_untied = closed_form_step_s(untied, estimate_memory(untied).stages)
    assert (closed - closed_untied) * 1e9 == pytest.approx(ns, abs=2)


def _tied_sync(overrides: list[str], path: str = "1f1b_8gpu.yaml"):
    from simtrain.costs.workload import tied_embedding_sync

    sc = load_scenario(SCENARIOS_DIR / path, overrides)
    return sc, tied_embedding_sync(sc, resolve(sc))


@pytest.mark.parametrize("overrides", [
    ["parallelism.schedule=zb_v"],  # the V: chunks 0 and 2p-1 both on rank 0
    ["parallelism.schedule=dualpipe_v", "training.global_batch=128"],
    ["parallelism.schedule=pipedream"],  # per-micro-batch updates
    ["training.peft.method=lora"],  # a frozen embedding takes no gradient
    ["training.peft.method=linear_probe"],  # the probe's head is untied
    ["model.tied_embeddings=false"],
    ["parallelism.pp=1", "parallelism.dp=8"],
])  # fmt: skip
def test_no_tied_embedding_sync_where_nothing_is_shared_across_ranks(overrides) -> None:
    assert _tied_sync(overrides)[1] is None


def test_tied_embedding_sync_size_and_link() -> None:
    """V/t x h elements: at tp 2 half the tp-1 shard's bytes; the pair inside a node over
    NVLink, across nodes over the NIC (slower); in the data-parallel reduction's dtype (4 B an
    element under a runtime that reduces in fp32, grad_reduce_dtype fp32: nanotron's); an
    untied model with a multi-token-prediction module (Megatron-Core reduces that module's
    embedding with the first stage's) has it too."""
    from simtrain.costs import group_comm
    from simtrain.costs.collectives import node_links

    base = ["model.preset=gpt3-2.7b", "parallelism.pp=4", "parallelism.dp=1",
            "parallelism.schedule=1f1b", "training.global_batch=16"]  # fmt: skip
    sc, (first, last, one_node) = _tied_sync([*base, "parallelism.tp=2"])
    step = resolve(sc)
    size = sc.model.vocab // 2 * sc.model.hidden * 2  # bf16 gradients
    intra, inter = node_links(sc.hardware)
    want = coll_ring_ns(size, intra)
    assert (first, last) == (0, 3) and abs(one_node - want) <= 1
    assert group_comm.pair_all_reduce_ns(sc, step, size, 0, 3) == one_node
    sc2, (_, _, two_nodes) = _tied_sync([*base, "parallelism.tp=2", "cluster.nodes=2",
                                         "cluster.gpus_per_node=4"])  # fmt: skip
    assert abs(two_nodes - coll_ring_ns(size, inter)) <= 1 and two_nodes > one_node
    _, (_, _, tp1) = _tied_sync([*base, "parallelism.tp=1", "parallelism.dp=2",
                                 "training.global_batch=32"])  # fmt: skip
    assert tp1 > one_node  # twice the bytes
    _, (_, _, fp32) = _tied_sync([*base, "parallelism.tp=2",
                                  "runtime.grad_reduce_dtype=fp32"])  # fmt: skip
    assert abs(fp32 - coll_ring_ns(2 * size, intra)) <= 1
    _, (_, _, accum) = _tied_sync([*base, "parallelism.tp=2",
                                   "training.precision=bf16_fp32_grads"])  # fmt: skip
    assert accum == one_node  # (DeepSpeed BF16_Optimizer's fp32 reduction: not modelled)
    mtp = ["parallelism.pp=4", "model.mtp_layers=1", "model.tied_embeddings=false"]
    assert _tied_sync(mtp, "mixtral_8x7b_ep8.yaml")[1] is not None
    assert _tied_sync(mtp[:1] + mtp[2:], "mixtral_8x7b_ep8.yaml")[1] is None


def coll_ring_ns(size: float, link) -> float:
    """A two-GPU ring all-reduce: each GPU sends half the array twice, 2 latencies."""
    return 1e9 * (size / link.bandwidth_bytes_per_s + 2 * link.latency_s)
