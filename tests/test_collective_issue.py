"""The host's cost of issuing a collective, per rank of its group (runtime
``collective_issue_us_per_rank``, ``costs.host.collective_issue_ns``), and validate's reading of
it from a job's own bandwidth test (``apps.validate.job_network.issue_cost_us_per_rank``).

Checked against counts written out here from the frameworks' code, closed forms of the host
stream (a host-bound step is the sum of its host times), and the sweep's own tests (a cost per
rank: bus bandwidth x GPUs constant)."""

from __future__ import annotations

import math
import statistics

import pytest

from simtrain.apps.simulate import build_lowering_input, simulate_scenario
from simtrain.apps.validate.job_network import (
    JobNetwork,
    LinkTest,
    issue_cost_us_per_rank,
    job_hardware,
    measurements,
    read_job_network,
)
from simtrain.costs import comm
from simtrain.costs.comm import tp_block_collectives, tp_edge_collectives
from simtrain.costs.host import action_host_ns, collective_issue_ns
from simtrain.costs.link_fit import measured_over_simulated, measured_time_s, simulated_time_s
from simtrain.costs.memory import estimate_memory
from simtrain.errors import ConfigError
from simtrain.spec.hardware import load_hardware
from simtrain.spec.scenario import parse_scenario

GIB = 2**30
TINY = {"layers": 4, "hidden": 256, "heads": 8, "kv_heads": 8, "ffn_hidden": 1024,
        "vocab": 1024, "max_positions": 512}  # fmt: skip


def scenario(runtime: dict, micro_batch: int = 1, model: dict = TINY, **par):
    data = {
        "name": "issue",
        "model": model,
        "hardware": "h100_sxm5_80gb",
        "training": {
            "seq_len": 128,
            "global_batch": 4 * micro_batch * par.get("dp", 1),
            "micro_batch": micro_batch,
            "precision": "bf16",
        },  # fmt: skip
        "parallelism": {"dp": 1, "tp": 1, "pp": 1, **par},
        "runtime": runtime,
    }
    return parse_scenario(data, "test.yaml")


def step_ns(sc) -> int:
    return simulate_scenario(sc).timeline.makespan_ns


# ---------------------------------------------------------------------------------------------
# Which collectives a block issues


@pytest.mark.parametrize(
    ("runtime", "par", "recompute", "want"),
    [
        # nanotron, tp_mode REDUCE_SCATTER (tensor_parallel/functional.py at 2411b022): forward
        # the qkv and gate_up inputs all-gathered, the o_proj and down outputs reduce-scattered;
        # backward each column linear's input re-gathered and its input gradient
        # reduce-scattered, each row linear's output gradient all-gathered: 4 + 6
        ({"name": "nanotron"}, {"sequence_parallel": True}, "none", (4, 6)),
        # without the re-gather (tp_recompute_allgather false: the gathered input kept)
        ({"name": "nanotron", "tp_regather_backward": False}, {"sequence_parallel": True},
         "none", (4, 4)),
        # Megatron without sequence parallelism: f and g, twice each (Narayanan et al. §3.2)
        ({"name": "megatron_lm_2021"}, {}, "none", (2, 2)),
        # a full recompute replays the forward's collectives in the backward
        ({"name": "megatron_lm_2021"}, {}, "full", (2, 4)),
        ({"name": "nanotron"}, {"sequence_parallel": True}, "full", (4, 10)),
    ],
)  # fmt: skip
def test_tp_collectives_a_block_issues(runtime, par, recompute, want) -> None:
    sc = scenario(runtime, tp=4, **par)
    from dataclasses import replace

    sc = replace(sc, training=replace(sc.training, recompute=recompute))
    assert tp_block_collectives(sc) == want


@pytest.mark.parametrize(
    ("sp", "model", "recompute", "want"),
    [
        # selective_op replays the two all-reduces without SP, the two input all-gathers with it
        # (costs.chunk_time.tp_recompute_block)
        (False, {}, "selective_op", (2, 4)),
        # (megatron_lm_2021 does not re-gather: 4 backward, + 2)
        (True, {}, "selective_op", (4, 6)),
        # a parallel-residual block reduces once forward (comm.forward_allreduces), twice back
        (False, {"parallel_residual": True}, "none", (1, 2)),
        # an MLA block's backward: two all-reduces, each an all-gather and a reduce-scatter
        # under SP (comm.tp_backward_block)
        (False, {"kv_lora_rank": 16}, "none", (2, 2)),
        (True, {"kv_lora_rank": 16}, "none", (4, 4)),
    ],
)  # fmt: skip
def test_tp_collectives_of_other_blocks(sp, model, recompute, want) -> None:
    from dataclasses import replace

    sc = scenario({"name": "megatron_lm_2021"}, tp=4, sequence_parallel=sp)
    sc = replace(sc, model=replace(sc.model, **model),
                 training=replace(sc.training, recompute=recompute))  # fmt: skip
    assert tp_block_collectives(sc) == want


def test_tp_collectives_of_the_edges() -> None:
    """nanotron with sequence parallelism (tensor_parallel/nn.py TensorParallelEmbedding and the
    column-parallel lm_head, functional.py _ShardedCrossEntropy at 2411b022): the embedding's
    reduce-scatter and its gradient's all-gather; the head's input all-gather and the loss's 3
    all-reduces, back its input gradient's reduce-scatter and its input's re-gather."""
    sc = scenario({"name": "nanotron"}, tp=4, sequence_parallel=True)
    assert tp_edge_collectives(sc, embedding=True, head=False) == (1, 1)
    assert tp_edge_collectives(sc, embedding=False, head=True) == (4, 2)
    assert tp_edge_collectives(sc, embedding=True, head=True) == (5, 3)
    assert tp_edge_collectives(sc, embedding=False, head=False) == (0, 0)
    # Megatron without SP: the embedding's all-reduce, the loss's 3, the head's input-gradient one
    mg = scenario({"name": "megatron_lm_2021"}, tp=4)
    assert tp_edge_collectives(mg, embedding=True, head=True) == (4, 1)
    assert tp_edge_collectives(scenario({"name": "nanotron"}), True, True) == (0, 0)


def test_a_single_stage_pays_its_blocks_and_edges_issue() -> None:
    """One stage (pp 1) holds the embedding, the blocks and the head: its host times grow by
    (layers x (4, 6) + (5, 3)) x tp x the cost per rank."""
    par = {"tp": 8, "sequence_parallel": True}
    base = scenario({"name": "nanotron"}, **par)
    slow = scenario({"name": "nanotron", "collective_issue_us_per_rank": 200}, **par)
    c0 = build_lowering_input(base, estimate_memory(base)).chunks[0]
    c1 = build_lowering_input(slow, estimate_memory(slow)).chunks[0]
    layers = base.model.layers
    assert c1.host_forward_ns - c0.host_forward_ns == (layers * 4 + 5) * 8 * 200_000
    assert c1.host_backward_ns - c0.host_backward_ns == (layers * 6 + 3) * 8 * 200_000


@pytest.mark.parametrize("runtime", ["nanotron", "megatron_lm_2021"])
@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize("recompute", ["none", "full", "selective_op"])
@pytest.mark.parametrize("model", [{}, {"parallel_residual": True}, {"kv_lora_rank": 16}])
@pytest.mark.parametrize("cross_entropy", ["standard", "fused", "gathered"])
@pytest.mark.parametrize("regather", [False, True])
@pytest.mark.parametrize("peft", [{}, {"method": "lora"}, {"method": "lp_ft", "phase": "probe"}])
def test_the_counts_are_what_the_pricers_price(monkeypatch, runtime, sp, recompute, model,
                                               cross_entropy, regather, peft) -> None:  # fmt: skip
    """The counts and the pricing are two enumerations of the same collectives (comm's
    tp_forward_block, tp_backward_block, tp_edges_ns and chunk_time.tp_recompute_block): with
    every collective priced at one unit and no overlap, each pricer's time is its count
    (a frozen embedding or head, under LoRA or LP-FT's probe, included)."""
    from dataclasses import replace

    from simtrain.costs.chunk_time import tp_recompute_block
    from simtrain.layout.step import resolve

    unit = 10**12
    monkeypatch.setattr(comm, "collective_ns", lambda *a, **k: unit)
    rt = {"name": runtime, "tp_regather_backward": regather, "tp_backward_overlap": False,
          "tp_comm_overlap": False}  # fmt: skip
    sc = scenario(rt, tp=4, sequence_parallel=sp)
    training = replace(sc.training, recompute=recompute, cross_entropy=cross_entropy,
                       peft=replace(sc.training.peft, **peft))  # fmt: skip
    sc = replace(sc, model=replace(sc.model, **model), training=training)
    step = resolve(sc)
    forward = comm.tp_forward_block(sc, step)[0]
    backward = comm.tp_backward_block(sc, step)[0] + tp_recompute_block(sc, step, 1)[0]
    assert (forward // unit, backward // unit) == tp_block_collectives(sc)
    for embedding, head in ((True, False), (False, True), (True, True)):
        edges = comm.tp_edges_ns(sc, step, embedding, head)
        assert tuple(x // unit for x in edges) == tp_edge_collectives(sc, embedding, head)


def test_a_stage_without_blocks_pays_its_edges_issue() -> None:
    """A pipeline stage holding only the output layer (layer_split [4, 0]) still issues the
    head's and the loss's collectives: 4 forward, 2 backward (nanotron, sequence parallelism)."""
    sc = scenario({"name": "nanotron", "collective_issue_us_per_rank": 100}, tp=4, pp=2,
                  sequence_parallel=True, layer_split=[4, 0], schedule="1f1b")  # fmt: skip
    inp = build_lowering_input(sc, estimate_memory(sc))
    last = inp.chunks[1]
    assert (last.host_forward_ns, last.host_backward_ns) == (4 * 4 * 100_000, 2 * 4 * 100_000)


def test_no_tp_no_tp_collectives() -> None:
    assert tp_block_collectives(scenario({"name": "nanotron"})) == (0, 0)


def test_issue_cost_is_count_x_group_x_cost_per_rank() -> None:
    sc = scenario({"name": "nanotron", "collective_issue_us_per_rank": 320}, tp=8)
    assert collective_issue_ns(sc, 8, 10) == 10 * 8 * 320_000
    assert collective_issue_ns(sc, 1, 10) == 0  # a group of one issues nothing to wait for
    graphs = scenario({"name": "nanotron", "collective_issue_us_per_rank": 320,
                       "dispatch": "cuda_graphs"}, tp=8)  # fmt: skip
    assert collective_issue_ns(graphs, 8, 10) == 0  # a replayed graph issues from no host
    assert collective_issue_ns(scenario({"name": "nanotron"}, tp=8), 8, 10) == 0


def test_a_blocks_host_time_adds_its_collectives_issue() -> None:
    """action_host_ns: the ops' host time plus layers x (4, 6) x tp x the cost per rank."""
    base = scenario({"name": "nanotron"}, tp=8, sequence_parallel=True)
    slow = scenario({"name": "nanotron", "collective_issue_us_per_rank": 250}, tp=8,
                    sequence_parallel=True)  # fmt: skip
    for layers in (1, 3):
        f0, b0 = action_host_ns(base, layers)
        f1, b1 = action_host_ns(slow, layers)
        assert (f1 - f0, b1 - b0) == (layers * 4 * 8 * 250_000, layers * 6 * 8 * 250_000)


def test_an_issue_cost_alone_still_models_the_host() -> None:
    """A runtime with no per-op host time but an issue cost has a host stream: the cost is paid."""
    sc = scenario({"name": "megatron_lm_2021", "collective_issue_us_per_rank": 100}, tp=4)
    assert sc.runtime.host_us_per_op == 0
    f, b = action_host_ns(sc, 2)
    assert (f, b) == (2 * 2 * 4 * 100_000, 2 * 2 * 4 * 100_000)


# ---------------------------------------------------------------------------------------------
# In the step: host-side, so hidden under a slower GPU and the pace where the host is slower


def test_a_host_bound_step_is_the_sum_of_its_host_times() -> None:
    """10 ms a rank: every action's issue outlasts its kernels, so the step is the host's sum
    (runtime test_host_bound_step_is_the_sum_of_host_times_plus_the_optimizer's closed form)."""
    sc = scenario({"name": "nanotron", "collective_issue_us_per_rank": 10_000}, tp=8,
                  sequence_parallel=True)  # fmt: skip
    inp = build_lowering_input(sc, estimate_memory(sc))
    c = inp.chunks[0]
    assert (
        c.forward_ns < c.host_forward_ns and c.input_grad_ns + c.weight_grad_ns < c.host_backward_ns
    )
    # ns per micro-batch: the blocks' 4 + 6 collectives and the edges' 5 + 3 (one stage)
    issue = (sc.model.layers * 10 + 8) * 8 * 10_000_000
    base = scenario({"name": "nanotron"}, tp=8, sequence_parallel=True)
    c0 = build_lowering_input(base, estimate_memory(base)).chunks[0]
    assert (
        c.host_forward_ns + c.host_backward_ns - issue == c0.host_forward_ns + c0.host_backward_ns
    )
    m = sc.num_microbatches
    total = m * (c.host_forward_ns + c.host_backward_ns + c.host_accum_ns)
    assert total <= step_ns(sc) <= total + inp.ranks[0].optimizer_ns + 10**6


def test_a_gpu_bound_step_hides_a_small_issue_cost() -> None:
    """0.5 us a rank beside blocks of hidden 2048 and 8 sequences (no other host time): the
    host runs ahead, the step moves by at most the first action's issue."""
    wide = {**TINY, "hidden": 2048, "heads": 16, "kv_heads": 16, "ffn_hidden": 8192}
    par = {"tp": 8, "sequence_parallel": True}
    base = scenario({"name": "nanotron", "host_us_per_op": 0}, 8, wide, **par)
    small = scenario({"name": "nanotron", "host_us_per_op": 0, "collective_issue_us_per_rank": 0.5},
                     8, wide, **par)  # fmt: skip
    inp = build_lowering_input(small, estimate_memory(small))
    c = inp.chunks[0]
    assert c.host_forward_ns < c.forward_ns  # the GPU is the slower side
    assert c.host_backward_ns < c.input_grad_ns + c.weight_grad_ns
    first = (small.model.layers * 4 + 5) * 8 * 500
    assert step_ns(base) <= step_ns(small) <= step_ns(base) + first


@pytest.mark.parametrize(("value", "words"), [(-1, ">="), (1e5, "<="), ("fast", "number")])
def test_a_bad_issue_cost_is_one_line_naming_the_key(value, words) -> None:
    with pytest.raises(ConfigError) as e:
        scenario({"name": "nanotron", "collective_issue_us_per_rank": value})
    msg = str(e.value)
    assert "\n" not in msg and "runtime.collective_issue_us_per_rank" in msg and words in msg


# ---------------------------------------------------------------------------------------------
# Read from a job's own test


@pytest.fixture(scope="module")
def efa():
    return load_hardware("h100_sxm5_80gb_efa")


@pytest.mark.parametrize("gpus", [32, 128, 512])
def test_a_test_slower_than_the_links_is_an_issue_cost_that_reproduces_it(efa, gpus) -> None:
    """A test 3x slower than the profile's links: its timed region (10 calls, then a barrier)
    took 11 issues of n x the cost per rank, so the cost is 10 x its time / (11 n): the
    calls, issued back to back, take max(GPU, n x cost) each, and the barrier n x cost."""
    net = JobNetwork(GIB, LinkTest({}, gpus), None)
    sim = {op: simulated_time_s(efa, "nccl", m)
           for m in measurements(efa, JobNetwork(GIB, LinkTest({"all_gather": 1e9,
                                                                "reduce_scatter": 1e9}, gpus),
                                                 None))
           for op in (m.op,)}  # fmt: skip
    busbw = {op: (gpus - 1) / gpus * GIB / (3 * t) for op, t in sim.items()}
    net = JobNetwork(GIB, LinkTest(busbw, gpus), None)
    tests = measurements(efa, net)
    assert measured_over_simulated(efa, "nccl", tests) == pytest.approx(3, rel=1e-9)
    us = issue_cost_us_per_rank(efa, "nccl", tests)
    # the timed region: 10 calls and a barrier (nanotron measure_bandwidth), 11 issues
    want = 10 * math.sqrt(math.prod(measured_time_s(m) for m in tests)) / (11 * gpus)
    assert us == pytest.approx(1e6 * want, rel=1e-12)
    for m in tests:  # each region within the geometric mean's spread: 10 x max(GPU, n x cost)
        # and the barrier's n x cost
        region = 10 * max(simulated_time_s(efa, "nccl", m), gpus * us * 1e-6) + gpus * us * 1e-6
        assert region == pytest.approx(10 * measured_time_s(m), rel=0.05)
    links = job_hardware(efa, "nccl", net)
    assert links.collective_issue_us_per_rank == us
    assert links.hardware.nic_bandwidth_bytes_per_s == efa.nic_bandwidth_bytes_per_s


def test_a_test_faster_than_the_links_fits_the_link_and_no_issue_cost(efa) -> None:
    net = JobNetwork(GIB, LinkTest({"all_gather": 200e9, "reduce_scatter": 200e9}, 64), None)
    tests = measurements(efa, net)
    assert measured_over_simulated(efa, "nccl", tests) < 1
    assert issue_cost_us_per_rank(efa, "nccl", tests) == 0
    links = job_hardware(efa, "nccl", net)
    assert links.collective_issue_us_per_rank == 0
    assert links.hardware.nic_bandwidth_bytes_per_s > efa.nic_bandwidth_bytes_per_s


def _scaled_test(efa, gpus: int, ratio: float) -> JobNetwork:
    """A job-wide test of all-gather and reduce-scatter taking ``ratio`` x the profile's time."""
    probe = JobNetwork(GIB, LinkTest({"all_gather": 1e9, "reduce_scatter": 1e9}, gpus), None)
    busbw = {m.op: (gpus - 1) / gpus * GIB / (ratio * simulated_time_s(efa, "nccl", m))
             for m in measurements(efa, probe)}  # fmt: skip
    return JobNetwork(GIB, LinkTest(busbw, gpus), None)


def test_the_reading_changes_at_the_profiles_time(efa) -> None:
    """The rule's edge: 0.1 % slower than the profile's links is an issue cost (links kept),
    0.1 % faster is a link k just under 1 (no issue cost); a CUDA-graph runtime, whose host
    issues nothing, fits the link either way."""
    slower = job_hardware(efa, "nccl", _scaled_test(efa, 64, 1.001))
    assert slower.collective_issue_us_per_rank > 0
    assert slower.hardware.nic_bandwidth_bytes_per_s == efa.nic_bandwidth_bytes_per_s
    faster = job_hardware(efa, "nccl", _scaled_test(efa, 64, 0.999))
    assert faster.collective_issue_us_per_rank == 0
    k = efa.nic_bandwidth_bytes_per_s / faster.hardware.nic_bandwidth_bytes_per_s
    assert 0.99 < k < 1
    # the jump: what 0.1 % slower is worth, by size (README: 0.33 ms at 16 GPUs, 0.14 at 512)
    jumps = [job_hardware(efa, "nccl", _scaled_test(efa, n, 1.001)).collective_issue_us_per_rank
             for n in (16, 64, 512)]  # fmt: skip
    assert jumps == sorted(jumps, reverse=True) and 320 < jumps[0] < 340 and 135 < jumps[-1] < 150
    graphs = job_hardware(efa, "nccl", _scaled_test(efa, 64, 3.0), issue_applies=False)
    assert graphs.collective_issue_us_per_rank == 0
    assert graphs.hardware.nic_bandwidth_bytes_per_s < efa.nic_bandwidth_bytes_per_s / 2


def test_a_test_on_part_of_a_node_is_an_error_naming_the_section(efa) -> None:
    net = JobNetwork(GIB, LinkTest({"all_gather": 50e9}, 12), None)
    with pytest.raises(ValueError, match=r"^hardware\.network_measured: 12 GPUs are not whole"):
        job_hardware(efa, "nccl", net)


def test_the_sweeps_slow_jobs_cost_the_same_per_rank_at_every_size(published_records) -> None:
    """The reading's ground: the sweep's records whose own test ran slower than the profile took
    a time proportional to their GPUs (a cost per rank, not a link's rate, which would give a
    bus bandwidth flat in n): from 4 to 64 nodes the cost per rank stays within 15 % of its
    median (~0.32 ms) while the GPUs grow 16x; the faster jobs' time per rank falls with n."""
    efa = load_hardware("h100_sxm5_80gb_efa")
    slow, fast = {}, {}
    for rec in published_records.values():
        if not rec.id.startswith("usp_") or "network_measured" not in rec.hardware:
            continue
        net = read_job_network(rec.hardware, rec.hardware["num_gpus"])
        tests = [m for m in measurements(efa, net) if m.gpus > 8]
        if not tests:
            continue
        per_rank = math.sqrt(math.prod(measured_time_s(m) for m in tests)) ** (2 / len(tests))
        per_rank /= tests[0].gpus
        nodes = tests[0].gpus // 8
        slow_one = issue_cost_us_per_rank(efa, "nccl", tests) > 0
        (slow if slow_one else fast).setdefault(nodes, []).append(per_rank)
    sizes = sorted(n for n in slow if n >= 4)
    assert sizes == [4, 8, 16, 32, 64]
    medians = {n: statistics.median(slow[n]) for n in sizes}
    middle = statistics.median(medians.values())
    assert 0.28e-3 < middle < 0.36e-3
    assert all(abs(v / middle - 1) < 0.15 for v in medians.values()), medians
    fast_medians = [statistics.median(fast[n]) for n in sorted(fast) if n >= 4]
    assert fast_medians == sorted(fast_medians, reverse=True)  # a link: falls with n
    assert fast_medians[-1] < fast_medians[0] / 2


def test_the_run_table_says_the_issue_cost(tmp_path) -> None:
    """`simtrain run` names a non-zero issue cost on its runtime line, and nothing otherwise."""
    from pathlib import Path

    from click.testing import CliRunner

    from simtrain.cli import main

    scenario_path = str(Path(__file__).parents[1] / "scenarios" / "nanotron_playbook_polling.yaml")
    lines = {}
    for us in (0, 300):
        r = CliRunner().invoke(main, ["run", scenario_path, "--no-plots", "--out",
                                      str(tmp_path / str(us)), "--set",
                                      f"runtime.collective_issue_us_per_rank={us}"])  # fmt: skip
        assert r.exit_code == 0, r.output
        lines[us] = next(x for x in r.output.splitlines() if x.startswith("runtime "))
    assert lines[300].endswith(
        "; the host issues each TP collective at 300 us per rank of its group"
    )
    assert "issues each TP collective" not in lines[0]


def test_translate_reads_the_issue_cost_only_where_the_host_dispatches(published_records,
                                                                       monkeypatch) -> None:  # fmt: skip
    """The wiring of validate's translation (translate.translate -> job_hardware's
    ``issue_applies``): a slow-kind sweep record's runtime dispatches from the host, so its own
    test reads as an issue cost; the same record under a runtime whose host issues nothing
    (``host_dispatches`` false: CUDA graphs) keeps no issue cost and fits its links instead."""
    from simtrain.apps.validate.records import SkipReason
    from simtrain.apps.validate.translate import translate
    from simtrain.spec.runtime import RuntimeProfile

    def issue(rec) -> tuple[float, float]:
        sc = translate(rec).scenario
        return sc.runtime.collective_issue_us_per_rank, sc.hardware.nic_bandwidth_bytes_per_s

    slow = next(r for r in published_records.values()
                if r.source_key == "nanotron" and r.hardware.get("network_measured")
                and not isinstance(translate(r), SkipReason)
                and issue(r)[0] > 0)  # fmt: skip
    cost, nic = issue(slow)
    monkeypatch.setattr(RuntimeProfile, "host_dispatches", property(lambda self: False))
    graphs_cost, graphs_nic = issue(slow)
    assert cost > 0 and graphs_cost == 0
    assert graphs_nic < nic  # the slow test fitted as a slower link


@pytest.mark.parametrize("recompute", ["none", "full"])
@pytest.mark.parametrize("regather", [False, True])
@pytest.mark.parametrize(
    "moe",
    [{"expert_tp": 0, "shared": 0, "mla": False}, {"expert_tp": 1, "shared": 0, "mla": False},
     {"expert_tp": 0, "shared": 1, "mla": False}, {"expert_tp": 1, "shared": 1, "mla": True}],
)  # fmt: skip
def test_an_moe_blocks_counts_are_what_the_pricers_price(monkeypatch, recompute, regather,
                                                        moe) -> None:  # fmt: skip
    """The same two enumerations for an MoE block under sequence parallelism (comm's
    moe_tp_pairs: the dispatcher's pair at expert-TP = tp, none with whole experts, the shared
    experts' dense pair; an MLA block's attention one all-reduce in backward)."""
    from dataclasses import replace

    from simtrain.costs.chunk_time import tp_recompute_block
    from simtrain.layout.step import resolve

    unit = 10**12
    monkeypatch.setattr(comm, "collective_ns", lambda *a, **k: unit)
    rt = {"name": "megatron_core", "tp_regather_backward": regather,
          "tp_backward_overlap": False, "tp_comm_overlap": False}  # fmt: skip
    sc = scenario(rt, tp=2, sequence_parallel=True)
    m = replace(sc.model, num_experts=8, experts_per_token=2, moe_ffn_hidden=64,
                shared_experts=moe["shared"],
                kv_lora_rank=16 if moe["mla"] else 0)  # fmt: skip
    par = replace(sc.parallelism, ep=2 if moe["expert_tp"] else 1, expert_tp=moe["expert_tp"])
    sc = replace(sc, model=m, parallelism=par,
                 training=replace(sc.training, recompute=recompute))  # fmt: skip
    step = resolve(sc)
    forward = comm.tp_forward_block(sc, step, moe=True)[0]
    backward = (comm.tp_backward_block(sc, step, moe=True)[0]
                + tp_recompute_block(sc, step, 1, 1)[0])  # fmt: skip
    assert (forward // unit, backward // unit) == tp_block_collectives(sc, moe=True)
