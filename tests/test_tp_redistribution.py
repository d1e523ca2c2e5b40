"""Where a column-parallel linear's input changes TP layout (runtime
``tp_input_redistribution``): once per block (torchtitan's ``PrepareModuleInput``, Megatron's
f / g) or at each projection (KempnerForge's plan: q, k, v, gate and up each a
``ColwiseParallel(input_layouts=Shard(1))``).

Checked against the counts read from the plans' code, against PyTorch itself (the two plans run
on a fake process group, ``simtrain.torchref.tp_plans``: the collectives ``CommDebugMode``
counts and the bytes autograd saves), and the pricers against the counts."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from simtrain.costs import comm
from simtrain.costs.activations import layer_saved_tensors
from simtrain.costs.comm import tp_block_collectives
from simtrain.errors import ConfigError
from simtrain.spec.scenario import parse_scenario

ROOT = Path(__file__).resolve().parents[1]
TINY = {"layers": 4, "hidden": 64, "heads": 4, "kv_heads": 4, "ffn_hidden": 128, "vocab": 1024,
        "max_positions": 512, "mlp": "swiglu", "norm": "rmsnorm", "positions": "rotary",
        "bias": False, "tied_embeddings": False}  # fmt: skip


def scenario(redistribution: str = "per_block", sp: bool = True, recompute: str = "none",
             model: dict | None = None, micro_batch: int = 2, **runtime):  # fmt: skip
    data = {
        "name": "redistribution",
        "model": {**TINY, **(model or {})},
        "hardware": "h100_sxm5_80gb",
        "training": {
            "seq_len": 16,
            "global_batch": 2 * micro_batch,
            "micro_batch": micro_batch,
            "precision": "bf16",
            "recompute": recompute,
        },  # fmt: skip
        "parallelism": {"dp": 1, "tp": 4, "pp": 1, "sequence_parallel": sp},
        "runtime": {"name": "torchtitan", "tp_input_redistribution": redistribution, **runtime},
    }
    return parse_scenario(data, "test.yaml")


@pytest.mark.parametrize(
    ("redistribution", "sp", "recompute", "model", "want"),
    [
        # torchtitan: PrepareModuleInput gathers the attention's and the MLP's input once, and
        # reduce-scatters each one's gradient once; the row linears' output gradients gathered
        ("per_block", True, "none", {}, (4, 4)),
        # KempnerForge, eager: q, k, v, gate, up each gather (5) + 2 reduce-scatters; backward
        # 2 output-gradient gathers + 5 input-gradient reduce-scatters
        ("per_linear", True, "none", {}, (7, 7)),
        # ... compiled: the forward's gathers of one input merged (fx_graph_cse), not the
        # backward's reductions of five gradients
        ("per_linear_compiled", True, "none", {}, (4, 7)),
        # a full recompute replays the forward's (torchtitan's profile: no early stop)
        ("per_linear", True, "full", {}, (7, 14)),
        ("per_linear_compiled", True, "full", {}, (4, 11)),
        # selective_op replays the input all-gathers, one per linear when eager
        ("per_linear", True, "selective_op", {}, (7, 12)),
        # without sequence parallelism the input is whole: no forward gather, and each column
        # linear all-reduces its input gradient (its pipeline rows)
        ("per_linear", False, "none", {}, (2, 5)),
        ("per_linear_compiled", False, "none", {}, (2, 5)),
        # a GeLU MLP has one input linear
        ("per_linear", True, "none", {"mlp": "gelu"}, (6, 6)),
        # MLA and experts keep the block's count (not modelled per linear)
        ("per_linear", True, "none", {"kv_lora_rank": 16}, (4, 4)),
    ],
)  # fmt: skip
def test_collectives_a_block_issues(redistribution, sp, recompute, model, want) -> None:
    sc = scenario(redistribution, sp, recompute)
    sc = replace(sc, model=replace(sc.model, **model))
    assert tp_block_collectives(sc) == want


def test_kempnerforges_profile_counts_what_its_block_issues() -> None:
    """Its eager 13B profile (benchmarks/profiling/13b_24gpu_profiling.md at a7f8346: 9,679
    all-gathers and 6,420 bf16 reduce-scatters over 800 layer-micro-batches) counts 12.1 and
    8.0 a layer and micro-batch. Per-linear, sequence-parallel, full recompute stopping early
    (its NO_REENTRANT checkpoint): 5 + 5 + 2 all-gathers and 2 + 1 + 5 reduce-scatters."""
    sc = scenario("per_linear", True, "full", recompute_early_stop=True)
    assert tp_block_collectives(sc) == (7, 13)
    assert round(9679 / 800) + round(6420 / 800) == sum(tp_block_collectives(sc))


@pytest.mark.parametrize("redistribution", ["per_block", "per_linear", "per_linear_compiled"])
@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize("recompute", ["none", "full", "selective_op"])
@pytest.mark.parametrize("mlp", ["swiglu", "gelu"])
@pytest.mark.parametrize("regather", [False, True])
def test_the_pricers_price_the_counts(monkeypatch, redistribution, sp, recompute, mlp,
                                      regather) -> None:  # fmt: skip
    """Each collective priced at one unit, no overlap: the forward's, the backward's and the
    recompute's times are the counts (comm.tp_forward_block, tp_backward_block,
    chunk_time.tp_recompute_block against tp_block_collectives)."""
    from simtrain.costs.chunk_time import tp_recompute_block
    from simtrain.layout.step import resolve

    unit = 10**12
    monkeypatch.setattr(comm, "collective_ns", lambda *a, **k: unit)
    sc = scenario(redistribution, sp, recompute, {"mlp": mlp}, tp_saves_gathered_input=False,
                  tp_regather_backward=regather)  # fmt: skip
    step = resolve(sc)
    forward = comm.tp_forward_block(sc, step)[0]
    backward = comm.tp_backward_block(sc, step)[0] + tp_recompute_block(sc, step, 1)[0]
    assert (forward // unit, backward // unit) == tp_block_collectives(sc)


def test_overlapped_reductions_hide_behind_their_own_linear() -> None:
    """With ``tp_backward_overlap`` each column linear's input-gradient reduce-scatter runs
    beside its own weight-gradient GEMM, its 1/n share of its group's (n = 3 for q, k, v; 2
    for gate and up): exposed = the row linears' gathers + sum over the groups of
    n·max(0, RS − W_group/n), written out here from the group GEMM times."""
    from simtrain.costs.compute import tp_linear_group_ns
    from simtrain.layout.step import resolve

    sc = scenario("per_linear_compiled", tp_backward_overlap=True)
    step = resolve(sc)
    rs = comm.tp_halves_ns(sc, step)[1]
    grads = comm.tp_grad_gather_ns(sc, step) + comm.tp_grad_gather_ns(sc, step, mlp=True)
    group = tp_linear_group_ns(sc)
    want = grads + sum(
        n * math.ceil(max(0.0, rs - group[k] / n)) for n, k in ((3, "attn_in"), (2, "mlp_in"))
    )
    exposed, hidden = comm.tp_backward_block(sc, step)
    assert exposed == want
    assert exposed + hidden == grads + 5 * rs


# ---------------------------------------------------------------------------------------------
# PyTorch's own count (needs torch)


@pytest.mark.parametrize("sp", [True, False])
@pytest.mark.parametrize("plan", ["per_block", "per_linear"])
def test_pytorch_issues_what_the_count_says(plan, sp) -> None:
    """The two DTensor plans on a fake 4-rank group: CommDebugMode's all-gathers,
    reduce-scatters and all-reduces of a forward and a backward are the block's counts."""
    pytest.importorskip("torch")
    from simtrain.torchref.tp_plans import measure_block

    got = measure_block(plan, tp=4, sequence_parallel=sp)
    assert (sum(got.forward.values()), sum(got.backward.values())) == tp_block_collectives(
        scenario(plan, sp)
    )
    if sp:  # the forward gathers one input per column linear, the backward reduce-scatters
        assert got.forward == {"all_gather": 5 if plan == "per_linear" else 2,
                               "reduce_scatter": 2}  # fmt: skip
        assert got.backward["reduce_scatter"] == sum(comm.column_linears(scenario(plan, sp)))


@pytest.mark.parametrize(("plan", "modelled"), [("per_linear", "per_linear_compiled"),
                                               ("per_block", "per_block")])  # fmt: skip
def test_torch_compile_merges_the_forward_gathers_not_the_backward_reductions(
    plan, modelled
) -> None:
    """torch.compile's AOT autograd (the min-cut partitioner, which runs fx_graph_cse on the
    joint graph) on the two plans: KempnerForge's per-linear forward all-gathers merge into
    one per input (2 + 2 forward), its five input-gradient reduce-scatters stay (2 + 5
    backward): per_linear_compiled's count."""
    pytest.importorskip("torch")
    from simtrain.torchref.tp_plans import measure_block_compiled

    got = measure_block_compiled(plan, tp=4)
    assert (sum(got.forward.values()), sum(got.backward.values())) == tp_block_collectives(
        scenario(modelled))  # fmt: skip
    assert got.backward["reduce_scatter"] == sum(comm.column_linears(scenario(modelled)))


def test_pytorch_saves_a_gathered_copy_per_linear() -> None:
    """Eager per-linear redistribution: q, k and v each save their own all-gathered input, and
    gate and up theirs: 3 b·s·h bf16 copies more than torchtitan's plan, measured as distinct
    storages autograd saved (b 2, s 16, h 64: 12,288 bytes)."""
    pytest.importorskip("torch")
    from simtrain.torchref.tp_plans import measure_block

    measured = (measure_block("per_linear", 4, True).saved_bytes
                - measure_block("per_block", 4, True).saved_bytes)  # fmt: skip

    def saved(redistribution: str) -> int:
        sc = scenario(redistribution)
        return sum(t.bytes for t in layer_saved_tensors(
            sc.model, sc.training, tp=4, sequence_parallel=True, gathered_input=2,
            gathered_per_linear=redistribution == "per_linear"))  # fmt: skip

    assert measured == saved("per_linear") - saved("per_block") == 3 * 2 * 16 * 64 * 2


def test_the_memory_estimate_counts_the_copies_only_when_eager() -> None:
    from simtrain.costs.memory import save_flags

    assert save_flags(scenario("per_linear")).gathered_per_linear
    assert not save_flags(scenario("per_linear_compiled")).gathered_per_linear
    sc = scenario("per_linear")
    mla = replace(sc, model=replace(sc.model, kv_lora_rank=16))
    assert not save_flags(mla).gathered_per_linear


# ---------------------------------------------------------------------------------------------
# Bad input, and validate's reading of KempnerForge


def test_a_bad_value_names_the_key_and_the_allowed_values() -> None:
    with pytest.raises(ConfigError) as e:
        scenario("per_layer")
    text = str(e.value)
    assert "runtime.tp_input_redistribution" in text and "per_linear_compiled" in text


@pytest.mark.parametrize("fused", ["fused_qkv", "fused_gate_up"])
def test_per_linear_refuses_fused_linears(fused) -> None:
    """One fused Q/K/V (or gate/up) linear redistributes its input once: per linear needs the
    projections apart (megatron_core's profile fuses both)."""
    with pytest.raises(ConfigError) as e:
        scenario("per_linear", **{fused: True})
    assert "runtime.tp_input_redistribution" in str(e.value) and fused in str(e.value)


def test_per_linear_refuses_the_gemm_overlap() -> None:
    with pytest.raises(ConfigError) as e:
        scenario("per_linear", tp_comm_overlap=True)
    assert "runtime.tp_input_redistribution" in str(e.value) and "per_block" in str(e.value)


def test_kempnerforge_rows_redistribute_per_linear(default_records) -> None:
    """Its compiled rows merge the forward's gathers; its eager pipeline rows do not."""
    from simtrain.apps.validate.translate import translate

    rows = default_records
    compiled = translate(rows["kempner_mfu_70b_32gpu_tp4_fsdp8"])
    assert compiled.scenario.runtime.tp_input_redistribution == "per_linear_compiled"
    assert any("fx_graph_cse" in n for n in compiled.assumptions)
    eager = translate(rows["kempner_cfgval_70b_32gpu_tp4_pp4"]).scenario
    assert eager.runtime.tp_input_redistribution == "per_linear"
    assert not eager.parallelism.sequence_parallel


@pytest.mark.parametrize("plan", ["per_block", "per_linear"])
@pytest.mark.parametrize("micro_batch", [1, 2])
def test_dtensor_copies_around_sequence_shards_are_what_pytorch_writes(plan, micro_batch) -> None:
    """runtime ``tp_shard_copies`` (``costs.compute.tp_shard_copy_bytes``): a read and a write
    of every tensor PyTorch's own block copies with ``aten.cat`` under DTensor's functional
    collectives (``simtrain.torchref.tp_plans.measure_shard_copies``: torchtitan's plan and
    KempnerForge's, tp 4, sequence parallel): per_block 4 copies each way at micro-batch 2 and
    2 at micro-batch 1 (the all-gather's output a view), per_linear 7 / 7 and 2 / 5."""
    from simtrain.costs.compute import tp_shard_copy_bytes
    from simtrain.torchref.tp_plans import measure_shard_copies

    sc = scenario(plan, micro_batch=micro_batch, fused_qkv=False, fused_gate_up=False)
    fwd, bwd = tp_shard_copy_bytes(sc, sc.training)
    got_fwd, got_bwd = measure_shard_copies(plan, 4, micro_batch=micro_batch)
    assert (fwd, bwd) == (2 * got_fwd, 2 * got_bwd)
    whole = micro_batch * 16 * 64 * 2
    copies = {("per_block", 2): (4, 4), ("per_block", 1): (2, 2),
              ("per_linear", 2): (7, 7), ("per_linear", 1): (2, 5)}[(plan, micro_batch)]  # fmt: skip
    assert (got_fwd // whole, got_bwd // whole) == copies


def test_no_shard_copies_where_no_dtensor_sequence_shard() -> None:
    """Nothing without the runtime flag, without sequence parallelism (all-reduces), under
    async TP (tp_comm_overlap: the fused all-gather-matmuls) or at tp 1."""
    from simtrain.costs.compute import tp_shard_copy_bytes

    base = scenario()
    assert tp_shard_copy_bytes(base, base.training) != (0.0, 0.0)
    for sc in (scenario(tp_shard_copies=False), scenario(sp=False),
               scenario(tp_comm_overlap=True)):  # fmt: skip
        assert tp_shard_copy_bytes(sc, sc.training) == (0.0, 0.0)
