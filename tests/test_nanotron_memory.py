"""nanotron memory conventions: bf16 with an fp32 gradient-accumulation buffer, and nanotron's
compute-balanced pipeline split; each checked against a closed form from its source."""

from __future__ import annotations

from pathlib import Path

import pytest
from reference_pairs import PLAYBOOK_1B

from simtrain.apps.importers.nanotron import LOSS_NOTE as NANOTRON_LOSS_NOTE
from simtrain.apps.validate import measured_values, translate
from simtrain.costs.memory import estimate_memory, zero_gather_copy_bytes
from simtrain.costs.params import (
    EXPERT_PREFIX,
    full_model_param_tensors,
    layer_param_tensors,
    model_state_bytes,
)
from simtrain.errors import ConfigError
from simtrain.layout.partition import compute_balanced_stages
from simtrain.layout.step import resolve
from simtrain.spec.precision import PRECISIONS
from simtrain.spec.precision import PRECISIONS as CONFIG_PRECISIONS
from simtrain.spec.scenario import PeftSpec, parse_scenario
from simtrain.units import GIB

ROOT = Path(__file__).resolve().parents[1]


def _scenario(precision: str = "bf16_fp32_grads", **par) -> object:
    p = {"dp": 1, "tp": 1, "pp": 1, **par}
    return parse_scenario(
        {
            "name": "nt",
            "model": PLAYBOOK_1B,
            "hardware": "h100_sxm5_80gb",
            "cluster": {"nodes": 1, "gpus_per_node": p["dp"] * p["tp"] * p["pp"]},
            "training": {
                "seq_len": 4096,
                "global_batch": 8 * p["dp"],
                "micro_batch": 1,
                "precision": precision,
                "optimizer": "adamw",
            },
            "parallelism": p,
        },  # fmt: skip
        "nt",
    )


def test_bf16_fp32_grads_is_20_bytes_per_param() -> None:
    """Ultra-Scale Playbook, 'Memory usage in Transformers': m_params 2N + m_grad 2N +
    m_params_fp32 4N + m_opt 8N, plus 4N when grads are kept in fp32 (nanotron): 20 B/param."""
    sc = _scenario()
    tensors = full_model_param_tensors(sc.model, sc.training)
    n = sum(x.numel for x in tensors)
    ms = model_state_bytes(tensors, sc.training)
    assert ms.parameters == 2 * n
    assert ms.gradients == (2 + 4) * n
    assert ms.master_weights == 4 * n
    assert ms.optimizer_states == 8 * n
    total = ms.parameters + ms.gradients + ms.master_weights + ms.optimizer_states
    assert total == 20 * n
    # Plain bf16 stays at Rajbhandari et al.'s 16 bytes.
    assert PRECISIONS["bf16"].grad_accum == 0
    assert "bf16_fp32_grads" in CONFIG_PRECISIONS


def test_zero1_keeps_the_fp32_grad_buffer_whole() -> None:
    """nanotron FP32GradientAccumulator keeps fp32 grad buffers for all parameters "even when
    Zero 1 is used"; the fp32 master copy and Adam states are sharded: per GPU
    2N + 2N + 4N + (4 + 8)N/dp."""
    sc = _scenario(dp=8, zero_stage=1)
    st = estimate_memory(sc).stages[0]
    n = st.params
    assert st.category("parameters") == 2 * n
    assert st.category("gradients") == 6 * n
    assert st.category("master_weights") == -(-4 * n // 8)
    assert st.category("optimizer_states") == -(-8 * n // 8)


def test_unknown_precision_names_the_allowed_values() -> None:
    with pytest.raises(ConfigError) as e:
        _scenario(precision="bf16_fp32_grad")
    assert "bf16_fp32_grads" in str(e.value)


def test_compute_balanced_split_1b_pp2() -> None:
    """nanotron models/base.py: layer cost 4h² + 3fh = 67,108,864, LM head V·h = 268,435,456,
    total 16 x 67,108,864 + 268,435,456 = 1,342,177,280, threshold T0 = 671,088,640. The
    cumulative cost first exceeds T0 after 11 layers (738,197,504), so rank 0 holds the embedding
    and layers 0-10, rank 1 layers 11-15 and the head."""
    sc = _scenario(pp=2, layer_split="compute_balanced")
    r0, r1 = compute_balanced_stages(sc.model, 2)
    assert (r0.lo, r0.hi, r0.embedding, r0.head) == (0, 11, True, False)
    assert (r1.lo, r1.hi, r1.embedding, r1.head) == (11, 16, False, True)
    mem = estimate_memory(sc)
    assert mem.stages[0].layers == ((0, 11),)
    # Stage 0 holds 11 layers' parameters: 11 x 67,108,864 + the 268,435,456 tied embedding.
    assert mem.stages[0].params == 11 * 67_108_864 + 268_435_456 + 11 * 2 * 2048
    uniform = estimate_memory(_scenario(pp=2))
    assert uniform.stages[0].layers == ((0, 8),)


def test_compute_balanced_split_llama3_8b_pp8() -> None:
    """The nanotron pipeline-parallel walkthrough (Llama3-8B, PP_SIZE = 8, the same loop over
    get_block_compute_costs) prints "Pipeline Rank 0 contains ['Embedding',
    'LlamaDecoderLayer' x 5]": the block that crosses a threshold stays on the current rank."""
    from simtrain.spec.model import preset

    ranks = compute_balanced_stages(preset("llama3-8b"), 8)
    assert (ranks[0].lo, ranks[0].hi, ranks[0].embedding) == (0, 5, True)
    assert sum(r.hi - r.lo for r in ranks) == 32
    assert [r.head for r in ranks] == [False] * 7 + [True]


def test_layer_split_rejects_unknown_and_interleaving() -> None:
    with pytest.raises(ConfigError) as e:
        _scenario(pp=2, layer_split="balanced")
    assert "compute_balanced" in str(e.value)


def test_nanotron_record_conventions(published_records: dict) -> None:
    """The sweep's 1B dp8 ZeRO-1 row: precision bf16_fp32_grads (scaling_benchmarks.py
    ACCUMULATE_GRAD_IN_FP32 = True), compute-balanced split, fused AdamW (the bench config's
    torch_adam_is_fused), 'GPU memory 24.2 GB' read as helpers.log_throughput's
    max_memory_reserved() / 1024**3 = 24.2 GiB ('Mem Res (GB)' of the sweep's CSV) and its
    'Mem Alloc (GB)' 14.76 as the allocated peak at the optimizer step; nanotron's own loss,
    said once (the convention and the importer it goes through say it in the same words)."""
    rec = published_records["usp_1B_n1_dp8_tp1_pp1_mbs1_ga32_z1"]
    tr = translate(rec)
    sc = tr.scenario
    assert sc.training.cross_entropy == "sharded"
    assert sc.runtime.nccl_record_streams  # the sweep's PyTorch 2.1 (nanotron.yaml [rstr])
    assert [a for a in tr.assumptions if "sharded_cross_entropy" in a] == [NANOTRON_LOSS_NOTE]
    assert sc.training.precision == "bf16_fp32_grads"
    assert sc.parallelism.layer_split == "compute_balanced"
    assert sc.runtime.fused_optimizer and sc.runtime.memory_reported == "reserved"
    got = measured_values(rec, sc)
    assert got["peak_memory_bytes"] == pytest.approx(24.2 * GIB)
    assert got["step_memory_bytes"] == pytest.approx(14.76 * GIB)


def test_zero1_gather_shard_splits_experts_over_their_group() -> None:
    """Routed experts' parameters are ZeRO-sharded over the expert-data-parallel group
    (dp / ep), the rest over dp, as costs.memory._zero_shard does their states: the gather's
    shard copy is ceil((N - E) / dp) + ceil(E / (dp / ep)) (Mixtral 8x7B, dp 16, ep 8)."""
    from simtrain.spec.scenario import load_scenario

    sc = load_scenario(ROOT / "scenarios" / "mixtral_8x7b_ep8.yaml",
                       ["runtime.zero_gather_flat_copies=true"])  # fmt: skip
    st = estimate_memory(sc).stages[0]
    n = st.trainable
    per_layer = sum(x.numel for x in layer_param_tensors(sc.model, sc.training, 1, ep=8)
                    if x.trainable and x.name.startswith(EXPERT_PREFIX))  # fmt: skip
    e = per_layer * sum(hi - lo for lo, hi in st.layers)  # every Mixtral block is MoE
    assert 0 < e < n
    want = 2 * (n + -(-(n - e) // 16) + -(-e // 2))
    assert zero_gather_copy_bytes(sc, resolve(sc), n, e) == want
    # after the step: the larger of its working memory and the copies, not their sum
    off = estimate_memory(load_scenario(ROOT / "scenarios" / "mixtral_8x7b_ep8.yaml")).stages[0]
    assert st.optimizer_working_bytes == max(off.optimizer_working_bytes, want)


def test_zero1_gather_flat_copies_at_the_step() -> None:
    """nanotron's ZeRO-1 step ends with ZeroDistributedOptimizer._all_gather_params ->
    all_gather_coalesced, which flattens the rank's shard and every rank's output slices
    (distributed.py l.201-203 at 67c5ebb6): 2 B x (N + N / dp) at the step's moment, with the
    states (2 B params, 4 B fp32 accumulation, 2 B DDP buckets, 12 B / dp master and Adam
    moments; the fused AdamW has no temporaries; the bf16 gradients were freed): the sweep's
    1B dp8 row logged 14.76 GiB 'Mem Alloc' (measured/published_runs.yaml)."""
    fused = {"name": "nanotron", "fused_optimizer": True}
    sc = _with_runtime(fused, dp=8, zero_stage=1)
    off = _with_runtime({**fused, "zero_gather_flat_copies": False}, dp=8, zero_stage=1)
    a, b = estimate_memory(sc).stages[0], estimate_memory(off).stages[0]
    n = N_1B
    gather = 2 * (n + -(-n // 8))
    assert a.optimizer_working_bytes == gather and b.optimizer_working_bytes == 0
    assert a.step_memory_bytes - b.step_memory_bytes == gather
    # torch's allocated counter: no CUDA context (it is in the peak's categories)
    states = 2 * n + 4 * n + 2 * n + -(-12 * n // 8)
    assert abs(b.step_memory_bytes - states) <= 64  # per-tensor ZeRO rounding only
    assert a.step_memory_bytes / GIB == pytest.approx(14.76, rel=0.01)
    assert a.category("cuda_context") == sc.hardware.cuda_context_bytes > 0
    # ZeRO-1 only (nanotron's only stage); no gather without data parallelism, nor under a
    # runtime that gathers in place
    for z in (2, 3):
        zs = _with_runtime(fused, dp=8, zero_stage=z)
        assert zero_gather_copy_bytes(zs, resolve(zs), N_1B) == 0
    for rt, par in ((fused, {"dp": 8}), (fused, {"zero_stage": 1}),
                    ("megatron_core", {"dp": 8, "zero_stage": 1})):  # fmt: skip
        s = estimate_memory(_with_runtime(rt, **par)).stages[0]
        assert s.optimizer_working_bytes == 0 or rt == "megatron_core"
        assert zero_gather_copy_bytes(_with_runtime(rt, **par), resolve(_with_runtime(rt, **par)),
                                      s.trainable) == 0  # fmt: skip


def test_fused_qkv_keeps_the_whole_qkv_tensor_alive() -> None:
    """nanotron models/llama.py (CausalSelfAttention, training path, MHA): q, k, v are views of
    one permuted (3, b, s, a/t, d) tensor; k, v are copied (cat + permute().contiguous()) for
    flash-attn's in-place rotary, and flash_attn_varlen_func saves q (keeping the whole fused
    tensor) and the k, v copy. By hand for the 1B model, b = 1, s = 4096, h = 2048, bf16:
    fused 2·3·s·h = 50,331,648 B + copy 2·2·s·h = 33,554,432 B = 83,886,080 B per layer, i.e.
    33,554,432 B more than three separate tensors; / t under TP; nothing extra with GQA."""
    from dataclasses import replace

    from simtrain.costs.activations import layer_saved_tensors

    sc = _scenario()
    fused = replace(sc.model, qkv_layout="fused_kv_copy")

    def qkv(model, tp=1):
        saved = layer_saved_tensors(model, sc.training, tp=tp, sequence_parallel=tp > 1)
        return sum(x.bytes for x in saved if x.name.startswith(("q, k, v", "fused qkv")))

    assert qkv(sc.model) == 50_331_648
    assert qkv(fused) == 83_886_080
    assert qkv(fused, tp=8) == 83_886_080 // 8
    gqa = replace(fused, kv_heads=8)
    assert qkv(gqa) == qkv(replace(gqa, qkv_layout="separate"))


def test_nanotron_records_use_the_fused_qkv_layout(published_records: dict) -> None:
    rec = published_records["usp_1B_n1_dp8_tp1_pp1_mbs1_ga32_z1"]
    assert translate(rec).scenario.model.qkv_layout == "fused_kv_copy"


def test_unknown_qkv_layout_is_rejected() -> None:
    with pytest.raises(ConfigError) as e:
        parse_scenario(
            {"name": "nt", "model": {**PLAYBOOK_1B, "qkv_layout": "fused"}, "hardware": "h100_sxm5_80gb",
             "cluster": {"nodes": 1, "gpus_per_node": 1},
             "training": {"seq_len": 4096, "global_batch": 1, "micro_batch": 1}},
            "nt",
        )  # fmt: skip
    assert "fused_kv_copy" in str(e.value)


def test_compute_balanced_split_is_shared_by_memory_costs_and_timing() -> None:
    """One split (the resolved step's chunks, layout.partition) feeds memory, costs and the simulation: every layer is
    placed once, one chunk holds the embedding and one the head, and the FLOPs of a step do not
    depend on how the layers are split (the same total as the uniform split)."""
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.costs.compute import hardware_flops_per_step
    from simtrain.layout.step import resolve

    base = {
        "name": "split",
        "model": {"preset": "llama3-8b"},
        "hardware": "h100_sxm5_80gb",
        "training": {"seq_len": 1024, "global_batch": 8, "micro_batch": 1, "precision": "bf16"},
        "parallelism": {"pp": 4, "tp": 1, "dp": 1, "schedule": "1f1b"},
    }
    uni = parse_scenario(base, "split")
    bal = parse_scenario(
        {**base, "parallelism": {**base["parallelism"], "layer_split": "compute_balanced"}}, "split"
    )
    chunks = resolve(bal).chunks
    assert sum(c.layers for c in chunks) == bal.model.layers
    assert [c.embedding for c in chunks] == [True, False, False, False]
    assert [c.head for c in chunks] == [False, False, False, True]
    assert chunks[3].layers < chunks[0].layers  # the head counts as layers (nanotron)
    assert hardware_flops_per_step(bal) == pytest.approx(hardware_flops_per_step(uni), rel=1e-12)
    res = simulate_scenario(bal)
    fwd = {s.stage: s for s in res.timeline.spans if s.kind == "F" and s.microbatch == 0}
    assert fwd[3].name.endswith(f"L{chunks[3].lo}-{chunks[3].hi - 1}")


def test_pp_larger_than_layers_is_a_layout_error() -> None:
    data = {
        "name": "x",
        "model": {"preset": "gpt2-small"},
        "hardware": "h100_sxm5_80gb",
        "training": {"seq_len": 128, "global_batch": 64, "micro_batch": 1, "precision": "bf16"},
        "parallelism": {"pp": 16, "layer_split": "compute_balanced", "schedule": "1f1b"},
    }
    with pytest.raises(ConfigError, match=r"parallelism\.pp.*must not exceed model\.layers = 12"):
        parse_scenario(data, "x")


def test_embedding_as_layer_split_matches_bloom() -> None:
    """DeepSpeed's type:transformer|embedding partition (BLOOM-176B, 70 layers on pp 12): the
    embedding and the tied head count as layers, so the end stages hold 5 layers and the ten
    middle ones 6 (bigscience tr11-176B-ml README, as the record's notes say)."""
    from simtrain.layout.partition import embedding_as_layer_stages
    from simtrain.spec.model import ModelSpec

    bloom = ModelSpec("bloom", 70, 14336, 112, 112, 57344, 250880, 2048)
    stages = embedding_as_layer_stages(bloom, 12)
    assert [s.hi - s.lo for s in stages] == [5] + [6] * 10 + [5]
    assert [s.embedding for s in stages] == [True] + [False] * 11
    assert [s.head for s in stages] == [False] * 11 + [True]
    assert stages[0].lo == 0 and stages[-1].hi == 70
    assert all(a.hi == b.lo for a, b in zip(stages, stages[1:], strict=False))


def test_compute_balanced_head_only_stage_recomputes_nothing() -> None:
    """The 1B sweep model on 4 stages: stage 3 holds the head and no decoder layer
    (layers 0-5, 6-10, 11-15, head). Under full recompute it re-materialises no block: no
    working set (it used to get one, raising its activations above recompute: none), and no
    optimizer temporaries of layer tensors it does not hold."""
    from dataclasses import replace

    sc = _scenario(pp=4, layer_split="compute_balanced")
    runs = {rec: estimate_memory(replace(sc, training=replace(sc.training, recompute=rec)))
            for rec in ("none", "full")}  # fmt: skip
    last = runs["full"].stages[3]
    assert last.layers == ((0, 0),)  # the head only
    assert last.recompute_working_set_bytes == ((3, 0),)
    assert last.category("activations") == runs["none"].stages[3].category("activations")
    # LoRA: the stage trains nothing (its head is frozen), so AdamW has no temporaries there;
    # it used to get 2 x a LoRA matrix of the layers it does not hold.
    lora = replace(sc.training, peft=PeftSpec(method="lora", target_modules=("q", "v")))
    head_only = estimate_memory(replace(sc, training=lora)).stages[3]
    assert head_only.trainable == 0 and head_only.optimizer_working_bytes == 0


def _with_runtime(runtime: object, seq_len: int = 4096, **par) -> object:
    """The 1B scenario under ``runtime`` (a profile name or a mapping of overrides)."""
    sc = _scenario(**par)
    return parse_scenario(
        {
            "name": "nt",
            "model": PLAYBOOK_1B,
            "hardware": "h100_sxm5_80gb",
            "cluster": {"nodes": 1, "gpus_per_node": sc.parallelism.gpus},
            "training": {
                "seq_len": seq_len,
                "global_batch": 8 * sc.parallelism.dp,
                "micro_batch": 1,
                "precision": "bf16_fp32_grads",
                "optimizer": "adamw",
            },
            "parallelism": {"dp": 1, "tp": 1, "pp": 1, **par},
            "runtime": runtime,
        },  # fmt: skip
        "nt",
    )


# Parameters of the tied 1B model, counted by hand: embedding V x h, per layer q/k/v/o 4h^2,
# SwiGLU 3 h ffn and two RMSNorm weights, the final norm.
H, FFN, V, L = 2048, 8192, 131072, 16
N_1B = V * H + L * (4 * H * H + 3 * H * FFN + 2 * H) + H
#: nanotron without the caching allocator's replay (costs.fragmentation), for tests of one term
NO_REPLAY = {"name": "nanotron", "allocator_replay": False}


def test_ddp_bucket_gradients_are_two_bytes_per_parameter_when_data_parallel() -> None:
    """torch DDP's Reducer allocates every bucket's flat gradient tensor in the parameters'
    dtype (reducer.cpp Reducer::initialize_buckets), which nanotron wraps when dp > 1
    (trainer.py make_ddp): 2 B x N of buffers more, unsharded by ZeRO-1; none at dp = 1."""
    # (the allocator replay off: its fragmentation depends on the buffers' order)
    on = _with_runtime(NO_REPLAY, dp=8, zero_stage=1)
    off = _with_runtime({**NO_REPLAY, "ddp_grad_buckets": False}, dp=8, zero_stage=1)
    a, b = estimate_memory(on).stages[0], estimate_memory(off).stages[0]
    assert a.params == N_1B
    assert a.category("buffers") - b.category("buffers") == 2 * N_1B
    assert a.breakdown.ddp_bucket_bytes == 2 * N_1B
    assert a.peak_memory_bytes - b.peak_memory_bytes == 2 * N_1B
    one = estimate_memory(_with_runtime("nanotron")).stages[0]
    assert one.breakdown.ddp_bucket_bytes == 0
    # a runtime without torch DDP's buckets (Megatron-LM's own DDP) is unchanged
    assert (
        estimate_memory(_with_runtime("megatron_lm_2021", dp=8))
        .stages[0]
        .breakdown.ddp_bucket_bytes
        == 0
    )


def test_tp_gather_buffers_are_full_sequence_hidden_states_not_divided_by_tp() -> None:
    """nanotron's MemoryBuffer keeps the column-parallel linears' all-gathered input
    ('allgather', b x s x h bf16 at any tp) and, with async TP, the row-parallel backward's
    ('allgather2'): 1 x b·s·h by default, 2 with async, none without sequence parallelism."""
    bsh = 1 * 4096 * H * 2  # micro-batch 1, seq 4096, bf16
    for tp in (4, 8):
        base = estimate_memory(_with_runtime({"name": "nanotron", "tp_gather_buffers": 0},
                                             tp=tp, sequence_parallel=True)).stages[0]  # fmt: skip
        one = estimate_memory(_with_runtime("nanotron", tp=tp, sequence_parallel=True)).stages[0]
        two = estimate_memory(_with_runtime({"name": "nanotron", "tp_gather_buffers": 2},
                                            tp=tp, sequence_parallel=True)).stages[0]  # fmt: skip
        assert one.breakdown.tp_gather_bytes == bsh
        assert one.category("buffers") - base.category("buffers") == bsh
        assert two.category("buffers") - base.category("buffers") == 2 * bsh
    no_sp = estimate_memory(_with_runtime("nanotron", tp=4)).stages[0]
    assert no_sp.breakdown.tp_gather_bytes == 0


def test_importer_counts_the_gather_buffers_of_the_config(tmp_path) -> None:
    """Async REDUCE_SCATTER (the Playbook sweep's setting) keeps both buffers; without
    tp_recompute_allgather the gathered input is saved instead (runtime
    tp_saves_gathered_input, no re-gather)."""
    from pathlib import Path

    import yaml

    from simtrain.apps.importers import import_config
    from simtrain.apps.importers.common import load_imported

    fix = Path(__file__).parent / "fixtures" / "importers" / "nanotron_tiny_llama.yaml"
    cfg = yaml.safe_load(fix.read_text())
    assert cfg["parallelism"]["tp_linear_async_communication"] is True
    sc = load_imported(import_config("nanotron", str(fix)))
    assert sc.runtime.tp_gather_buffers == 2
    cfg["parallelism"]["tp_linear_async_communication"] = False
    f = tmp_path / "sync.yaml"
    f.write_text(yaml.safe_dump(cfg))
    assert load_imported(import_config("nanotron", str(f))).runtime.tp_gather_buffers == 1
    cfg["parallelism"]["tp_recompute_allgather"] = False
    f.write_text(yaml.safe_dump(cfg))
    imp = import_config("nanotron", str(f))
    rt = load_imported(imp).runtime
    assert rt.tp_gather_buffers == 0
    # the gathered input is saved for backward, not gathered again (functional.py l.333-334)
    assert rt.tp_saves_gathered_input and not rt.tp_regather_backward
    assert not any("tp_recompute_allgather" in u for u in map(str, imp.unsupported))
    assert any("tp_recompute_allgather" in a for a in map(str, imp.assumptions))


def test_bf16_gradients_are_freed_after_every_micro_batch() -> None:
    """FP32GradientAccumulator adds each bf16 .grad into the fp32 buffer after the backward and
    sets it to None (gradient_accumulator.py l.206-226): at a forward's peak only the fp32
    buffer (4 B/param) is there; the bf16 gradients (2 B/param) only at a backward's end."""
    on = estimate_memory(_with_runtime(NO_REPLAY, dp=8, zero_stage=1)).stages[0]
    off = estimate_memory(
        _with_runtime({**NO_REPLAY, "grads_freed_per_microbatch": False}, dp=8, zero_stage=1)
    ).stages[0]
    assert on.category("gradients") == off.category("gradients") == 6 * N_1B
    assert dict(on.peak_memory_bytes_by_category)["gradients"] == 4 * N_1B
    assert off.peak_memory_bytes - on.peak_memory_bytes == 2 * N_1B
    # short sequences: the activations are smaller than the bf16 gradients, so the end of the
    # backward (one micro-batch in flight: nothing saved after it) is the peak (without ZeRO-1's
    # gather copies, 2 B x 1.125 N at the step, which would be)
    nogather = {"name": "nanotron", "zero_gather_flat_copies": False}
    short = _with_runtime(nogather, seq_len=64, dp=8, zero_stage=1)
    st = estimate_memory(short).stages[0]
    at = dict(st.peak_memory_bytes_by_category)
    assert at["gradients"] == 6 * N_1B and at["activations"] == 0


def test_allocator_replay_adds_its_fragmentation_to_the_reserved_peak() -> None:
    """The reserved figure (nanotron's 'Mem Res') holds what the caching allocator fragments
    (runtime allocator_replay, costs.fragmentation): the replay's cache beyond its allocated
    peak joins buffers and the peak, and nothing else moves; the step's allocated figure and
    an 'allocated' memory figure have none."""
    for par in ({"dp": 8, "zero_stage": 1}, {"tp": 4, "sequence_parallel": True}):
        on = estimate_memory(_with_runtime("nanotron", **par)).stages[0]
        off = estimate_memory(_with_runtime(NO_REPLAY, **par)).stages[0]
        assert on.fragmentation_bytes > 0
        assert on.peak_memory_bytes - off.peak_memory_bytes == on.fragmentation_bytes
        assert on.category("buffers") - off.category("buffers") == on.fragmentation_bytes
        assert on.step_memory_bytes == off.step_memory_bytes
        # at most what the GPU leaves
        assert on.peak_memory_bytes <= max(on.capacity_bytes, off.peak_memory_bytes)
    alloc = {"name": "nanotron", "memory_reported": "allocated"}
    assert estimate_memory(_with_runtime(alloc)).stages[0].fragmentation_bytes == 0
    # ZeRO-3's gathers are not in the replay's order: none
    z3 = estimate_memory(_with_runtime("nanotron", dp=8, zero_stage=3)).stages[0]
    assert z3.fragmentation_bytes == 0


def test_the_replay_allocates_what_the_memory_model_does() -> None:
    """The replay's order (costs.fragmentation) is built from the memory model's own tensors:
    its allocated peak is the model's allocated peak (without the CUDA context, NCCL's
    buffers and the replay's own fragmentation) within 3 % on these three layouts (on 150
    Playbook records -6.2 to +5.4 %, median +0.3 %, benchmarks/replay_sensitivity.py; it lacks
    the backward's working sets, the model lacks the replay's 512 B rounding)."""
    from simtrain.costs import memory as mem
    from simtrain.costs.caching_allocator import replay
    from simtrain.costs.fragmentation import stage_allocation_events

    for par in ({"dp": 8, "zero_stage": 1}, {"tp": 4, "sequence_parallel": True},
                {"pp": 2, "dp": 2}):  # fmt: skip
        sc = _with_runtime("nanotron", **par)
        sm = estimate_memory(sc).stages[0]
        got = replay(stage_allocation_events(mem.stage_allocations_of(sc, sm))).allocated_bytes
        model = (sm.peak_memory_bytes - sm.fragmentation_bytes - sm.pending_collective_bytes
                 - sc.hardware.cuda_context_bytes - sm.breakdown.nccl_bytes)  # fmt: skip
        assert abs(got / model - 1) < 0.03, (par, got, model)
