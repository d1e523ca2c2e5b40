"""torchtitan's memory mechanisms (issue 13): FSDP2 under a pipeline schedule keeps the stage's
unsharded fp32 gradients until the last micro-batch, torchtitan does not reshard after forward
under PP, a compiled loss is the fused cross-entropy, and the 2024-12 benchmarks split the local
batch into pp micro-batches.

Independent values: Llama 3 8B's parameters per decoder block and in the embedding (HF
meta-llama/Meta-Llama-3-8B config.json: hidden 4096, 8 KV heads of 128, intermediate 14,336,
vocab 128,256), counted here by hand."""

from __future__ import annotations

from pathlib import Path

from simtrain.apps.importers import import_config
from simtrain.apps.importers.common import load_imported
from simtrain.apps.validate.records import load_records
from simtrain.apps.validate.translate import SkipReason, translate
from simtrain.costs.memory import stage_memory

ROOT = Path(__file__).resolve().parents[1]
TORCHTITAN = ROOT / "tests" / "fixtures" / "importers" / "torchtitan_llama3_8b.toml"

# Llama 3 8B by hand: q and o 4096 x 4096, k and v 4096 x 1024, three FFN matrices
# 4096 x 14336, two RMSNorm weights; the embedding 128,256 x 4096.
BLOCK_PARAMS = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
EMBEDDING_PARAMS = 128256 * 4096


def _titan(tmp_path: Path, replace: dict[str, str], gpus: int, sets: list[str] | None = None):
    text = TORCHTITAN.read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    f = tmp_path / "job.toml"
    f.write_text(text)
    return load_imported(import_config("torchtitan", f, gpus=gpus),
                         ["hardware=h100_sxm5_80gb", *(sets or [])])  # fmt: skip


def test_pipeline_over_fsdp2_holds_unsharded_fp32_gradients(tmp_path: Path) -> None:
    """pp 2 over FSDP2 on 8 data-parallel GPUs: torchtitan's "default" policy does not reshard
    after forward (ZeRO-2), and stage 0's gradients are its whole parameters' in fp32 (4 bytes
    each: reduce_dtype float32), not an eighth of them in bf16."""
    sc = _titan(tmp_path, {"pipeline_parallel_degree = 1": "pipeline_parallel_degree = 2"}, 16)
    assert (sc.parallelism.pp, sc.parallelism.dp, sc.parallelism.zero_stage) == (2, 8, 2)
    sm = stage_memory(sc, 0)
    ((lo, hi),) = sm.layers
    stage_params = (hi - lo) * BLOCK_PARAMS + EMBEDDING_PARAMS
    assert sm.category("gradients") == 4 * stage_params
    # the bf16 parameters stay unsharded (no reshard after forward), the fp32 ones are sharded
    assert sm.category("parameters") == 2 * stage_params
    # a runtime that reduces each micro-batch's gradients keeps the ZeRO-2 shard
    off_sc = _titan(
        tmp_path,
        {"pipeline_parallel_degree = 1": "pipeline_parallel_degree = 2"},
        16,
        ["runtime.pipeline_grads_unsharded=false"],
    )
    off = stage_memory(off_sc, 0)
    assert off.category("gradients") == -(-2 * stage_params // 8)


def test_no_pipeline_no_unsharded_gradients(tmp_path: Path) -> None:
    """Without a pipeline FSDP2 reduce-scatters each block's gradients in the backward: the
    shard (ZeRO-3) stands."""
    sc = _titan(tmp_path, {}, 8)
    assert (sc.parallelism.pp, sc.parallelism.zero_stage) == (1, 3)
    sm = stage_memory(sc, 0)
    assert sm.category("gradients") < sm.params  # a shard, under a byte per parameter


def test_compiled_loss_is_the_fused_cross_entropy(tmp_path: Path) -> None:
    """compile.enable with "loss" in compile.components (4a950ea's default ["model", "loss"]):
    components/loss.py compiles the loss; ["model"] leaves it eager."""
    on = {"enable = false": "enable = true"}
    assert _titan(tmp_path, on, 8).training.cross_entropy == "fused"
    model_only = {**on, 'components = ["model", "loss"]': 'components = ["model"]'}
    assert _titan(tmp_path, model_only, 8).training.cross_entropy == "standard"
    assert _titan(tmp_path, {}, 8).training.cross_entropy == "standard"  # compile off


def _record(rid: str):
    recs = {r.id: r for r in load_records(ROOT / "measured" / "more_runs_2026-12.yaml")}
    tr = translate(recs[rid])
    assert not isinstance(tr, str) and hasattr(tr, "scenario"), tr
    return tr


def test_2412_pipeline_records_read_as_torchtitan_9dec370_ran_them() -> None:
    """Table 5 (405B, local batch 32, pp 8, Interleaved 1F1B): 9dec370a's default
    n_microbatches = pp gives micro-batches of 32 / 8 = 4; no reshard after forward under PP
    (ZeRO-2); the loss eager (not compiled at 9dec370a), loss parallel under tp 8."""
    tr = _record("torchtitan_2412_t5_405b_512gpu_Interleaved1F1B")
    sc = tr.scenario
    assert (sc.training.micro_batch, sc.training.global_batch, sc.parallelism.dp) == (4, 256, 8)
    assert sc.parallelism.zero_stage == 2
    assert sc.training.cross_entropy == "loss_parallel"  # eager, over the tp 8 vocabulary shard
    assert any("local batch / pp" in a for a in tr.assumptions)
    # Table 6 (local batch 8, pp 8): one sequence per micro-batch
    assert (
        _record("torchtitan_2412_t6_405b_512gpu_fsdp8_cp1_seq32768").scenario.training.micro_batch
        == 1
    )


def test_2506_compiled_records_use_the_fused_loss() -> None:
    """The trainy H200 run (e7c0cae, --training.compile): compiled loss; pp 1: ZeRO-3."""
    sc = _record("torchtitan_2506_trainy_h200_llama31_8b_32gpu").scenario
    assert sc.training.cross_entropy == "fused"
    assert sc.parallelism.zero_stage == 3


def test_loss_parallel_backward_holds_three_fp32_logit_tensors(tmp_path: Path) -> None:
    """tp 2, eager loss: torchtitan's loss_parallel. Its backward
    (_nll_loss_and_log_softmax_backward: zeros_like(x), exp(x), their sum, the product) holds
    three fp32 b·s·V/t tensors beside the saved log-softmax; ATen's holds two. b·s = 8192,
    V/t = 128,256 / 2. Without loss parallel the output layer returns Replicate() logits: every
    TP rank's loss is over the whole vocabulary (saved fp32 log-softmax 4·b·s·V, two fp32
    b·s·V tensors in its backward; review: it was over V/t, while the logits the pipeline's
    last stage keeps were whole)."""
    from simtrain.costs.activations import loss_saved_bytes, loss_transient_bytes

    sc = _titan(tmp_path, {"tensor_parallel_degree = 1": "tensor_parallel_degree = 2"}, 8)
    assert sc.training.cross_entropy == "loss_parallel"
    assert loss_transient_bytes(sc.model, sc.training, 2) == 3 * 4 * 8192 * 64128
    off = {"tensor_parallel_degree = 1": "tensor_parallel_degree = 2\ndisable_loss_parallel = true"}
    sc_off = _titan(tmp_path, off, 8)
    assert sc_off.training.cross_entropy == "gathered"
    assert loss_transient_bytes(sc_off.model, sc_off.training, 2) == 2 * 4 * 8192 * 128256
    assert loss_saved_bytes(sc_off.model, sc_off.training, 2) == 4 * 8192 * 128256
    assert loss_saved_bytes(sc.model, sc.training, 2) == 4 * 8192 * 64128


def test_fsdp2_root_group_stays_whole(tmp_path: Path) -> None:
    """8B on 8 GPUs (ZeRO-3, pp 1): FSDP2's root group (embedding, final norm, output: 2 x
    525,336,576 + 4096 parameters) is whole in bf16 from the forward to the end of backward,
    beside the current and the prefetched block, and the output's and final norm's bf16
    gradients are whole through the backward; the generic ZeRO-3 rule holds two average blocks.
    In the allocated figure (the reserved one adds FSDP2's all-gather pool: test_fsdp2_pool)."""
    alloc = ["runtime.memory_reported=allocated"]
    sc = _titan(tmp_path, {}, 8, alloc)
    generic = _titan(tmp_path, {}, 8, [*alloc, "runtime.fsdp_root_unsharded=false"])
    total = 32 * BLOCK_PARAMS + 2 * EMBEDDING_PARAMS + 4096
    root = 2 * EMBEDDING_PARAMS + 4096
    want = 2 * (2 * BLOCK_PARAMS + root) + 2 * (EMBEDDING_PARAMS + 4096)
    got = stage_memory(sc, 0).category("buffers") - stage_memory(generic, 0).category("buffers")
    assert got == want - 2 * 2 * (total // 32)


def test_pipelining_keeps_a_receive_buffer_per_micro_batch(tmp_path: Path) -> None:
    """pp 4, 8 micro-batches of one 8192-token sequence (b·s·h bf16 = 2 x 8192 x 4096 bytes):
    stage 1 holds 8 activation and 8 gradient receive buffers; the 3 micro-batches in flight at
    its peak have theirs counted as the first block's input, so 5 + 8 buffers are added where
    the generic rule holds one of each."""
    edit = {"pipeline_parallel_degree = 1": "pipeline_parallel_degree = 4",
            "local_batch_size = 1": "local_batch_size = 8"}  # fmt: skip
    sc = _titan(tmp_path, edit, 32)
    generic = _titan(tmp_path, edit, 32, ["runtime.pipeline_recv_buffers_per_microbatch=false"])
    one = 2 * 8192 * 4096
    new, old = stage_memory(sc, 1), stage_memory(generic, 1)
    assert new.microbatches_in_flight == 3
    assert new.category("buffers") - old.category("buffers") == (5 + 8 - 2) * one


def test_dtensor_tp_saves_the_all_gathered_linear_inputs() -> None:
    """Llama 3 8B, b 1, s 4096, tp 4 with sequence parallelism: DTensor's ColwiseParallel
    linears save the all-gathered attention and MLP inputs whole, 2 B x 4096 x 4096 =
    33,554,432 B each, where Megatron keeps the 4096/4-token shard (8,388,608 B); torchao
    float8 tensorwise TP all-gathers (and saves) the float8 tensor: 1 B per value."""
    from simtrain.costs.activations import layer_saved_tensors, tp_gathered_input_bytes
    from simtrain.spec.model import PRESETS
    from simtrain.spec.scenario import parse_training

    m = PRESETS["llama3-8b"]
    t = parse_training({"seq_len": 4096, "global_batch": 1, "micro_batch": 1,
                        "precision": "bf16", "optimizer": "adamw"}, "t.yaml")  # fmt: skip
    assert tp_gathered_input_bytes("bf16", True) == 2
    assert tp_gathered_input_bytes("fp8_tensorwise", True) == 1
    assert tp_gathered_input_bytes("fp8_rowwise", True) == 2  # plain TP: bf16 all-gather
    assert tp_gathered_input_bytes("bf16", False) == 0

    def inputs(gathered: int, tp: int = 4, sp: bool = True) -> list[int]:
        saved = layer_saved_tensors(m, t, tp=tp, sequence_parallel=sp, gathered_input=gathered)
        return [x.bytes for x in saved if x.name.startswith(("attention input", "mlp input"))]

    assert inputs(0) == [8_388_608, 8_388_608]
    assert inputs(2) == [33_554_432, 33_554_432]
    assert inputs(1) == [16_777_216, 16_777_216]
    # without sequence parallelism (or TP) every rank already holds the whole input
    assert inputs(2, sp=False) == inputs(0, sp=False) == [33_554_432, 33_554_432]
    assert inputs(2, tp=1) == [33_554_432, 33_554_432]


def test_torchtitan_full_recompute_working_set_holds_the_gathered_inputs() -> None:
    """The 405B fsdp8 cp1 record (tp 8, s 32768, b 1, float8 tensorwise, full recompute):
    re-materialising a block adds the two float8 gathered inputs (2 x 32768 x 16384 x 1 B)
    in place of their bf16 shards (2 x 2 x 32768 x 16384 / 8)."""
    from dataclasses import replace

    recs = load_records(ROOT / "measured" / "more_runs_2026-12.yaml")
    (rec,) = [r for r in recs if r.id == "torchtitan_2412_t6_405b_512gpu_fsdp8_cp1_seq32768"]
    tr = translate(rec)
    assert not isinstance(tr, SkipReason)
    sc = tr.scenario
    assert sc.runtime.tp_saves_gathered_input
    off = replace(sc, runtime_profile=replace(sc.runtime, tp_saves_gathered_input=False))
    a, b = stage_memory(sc, 1), stage_memory(off, 1)
    assert a.breakdown is not None and b.breakdown is not None
    delta = 2 * 32768 * 16384 * 1 - 2 * 2 * 32768 * 16384 // 8
    got = a.breakdown.recompute_working_set_bytes - b.breakdown.recompute_working_set_bytes
    assert got == delta == 805_306_368


def test_torchtitan_head_saves_its_all_gathered_bf16_input() -> None:
    """The output layer is ColwiseParallel(input_layouts=Shard(1)) and not float8: with tp 4,
    s 4096, b 1 it saves 2 B x 4096 x 4096 = 33,554,432 B, not the 8,388,608 B shard, whatever
    the gathered-input width of the blocks (1 B under float8 tensorwise)."""
    from simtrain.costs.activations import head_saved_bytes
    from simtrain.spec.model import PRESETS
    from simtrain.spec.scenario import parse_training

    m = PRESETS["llama3-8b"]
    t = parse_training({"seq_len": 4096, "global_batch": 1, "micro_batch": 1,
                        "precision": "fp8_tensorwise", "optimizer": "adamw"}, "t.yaml")  # fmt: skip
    base = head_saved_bytes(m, t, 4, True)
    assert head_saved_bytes(m, t, 4, True, 1) - base == 33_554_432 - 8_388_608
    assert head_saved_bytes(m, t, 4, True, 2) == head_saved_bytes(m, t, 4, True, 1)
    assert head_saved_bytes(m, t, 1, False, 1) == head_saved_bytes(m, t, 1, False)


def test_pipelining_keeps_each_chunks_output_until_its_backward(tmp_path: Path) -> None:
    """pp 2, b 1, s 8192, h 4096: torch.distributed.pipelining's fwd_cache holds stage 0's
    output, a bf16 b·s·h = 67,108,864 B tensor, per micro-batch in flight; the last stage sends
    nothing on and keeps none."""
    pp2 = {"pipeline_parallel_degree = 1": "pipeline_parallel_degree = 2"}
    on = _titan(tmp_path, pp2, 16)
    assert on.runtime.pipeline_keeps_stage_outputs
    off = _titan(tmp_path, pp2, 16, ["runtime.pipeline_keeps_stage_outputs=false"])
    a, b = stage_memory(on, 0), stage_memory(off, 0)
    assert a.activation_bytes_per_microbatch - b.activation_bytes_per_microbatch == 67_108_864
    assert a.microbatches_in_flight == b.microbatches_in_flight
    last_on, last_off = stage_memory(on, 1), stage_memory(off, 1)
    assert last_on.activation_bytes_per_microbatch == last_off.activation_bytes_per_microbatch


def test_repeated_kv_is_saved_at_every_heads_width() -> None:
    """Llama 3 8B (32 heads, 8 KV heads of 128), b 1, s 4096, bf16, tp 1: flash attention saves
    q, k, v = 2 B x 4096 x (4096 + 2 x 1024) = 50,331,648 B; with K and V repeated to the 32
    heads first (torchtitan repeat_kv) 2 B x 4096 x 3 x 4096 = 100,663,296 B."""
    from dataclasses import replace

    from simtrain.costs.activations import layer_saved_tensors
    from simtrain.spec.model import PRESETS
    from simtrain.spec.scenario import parse_training

    m = replace(PRESETS["llama3-8b"], flash_attention=True)
    t = parse_training({"seq_len": 4096, "global_batch": 1, "micro_batch": 1,
                        "precision": "bf16", "optimizer": "adamw"}, "t.yaml")  # fmt: skip

    def qkv(repeat: bool) -> int:
        saved = layer_saved_tensors(m, t, repeat_kv=repeat)
        (x,) = [x.bytes for x in saved if x.name == "q, k, v (flash attention)"]
        return x

    assert qkv(False) == 50_331_648
    assert qkv(True) == 100_663_296


def test_last_stage_keeps_every_micro_batchs_logits(tmp_path: Path) -> None:
    """pp 2 over 16 GPUs, local batch 1, s 8192: the last stage keeps each micro-batch's bf16
    logits, 2 B x 8192 x 128,256 = 2,101,346,304 B, until the step merges them; stage 0 keeps
    none."""
    pp2 = {"pipeline_parallel_degree = 1": "pipeline_parallel_degree = 2"}
    on = _titan(tmp_path, pp2, 16)
    assert on.runtime.pipeline_keeps_last_outputs
    off = _titan(tmp_path, pp2, 16, ["runtime.pipeline_keeps_last_outputs=false"])
    m = on.num_microbatches
    last_on, last_off = stage_memory(on, 1), stage_memory(off, 1)
    assert last_on.category("buffers") - last_off.category("buffers") == m * 2_101_346_304
    assert stage_memory(on, 0).category("buffers") == stage_memory(off, 0).category("buffers")


def test_repeated_kv_and_the_gathered_input_count_in_the_activations() -> None:
    """What the runtime makes a block save (``attention_repeat_kv``: K and V expanded to every
    query head before SDPA; ``tp_saves_gathered_input``: DTensor TP's linears keep the
    all-gathered b·s·h input) is in the activations the memory reports, not only in the list
    of saved tensors (review: the per-layer figure left both out without recompute).
    Llama-3-8B (32 layers, h 4096, kv 1024), s 4096, no recompute: K and V at every head add
    layers x 2 B x b·s x 2(h - kv); at tp 2 with sequence parallelism the saved inputs (and the
    LM head's) are whole."""
    from simtrain.costs.activations import (
        head_saved_bytes,
        layer_saved_tensors,
        tp_gathered_input_bytes,
    )
    from simtrain.spec.scenario import load_scenario

    base = ["runtime=torchtitan", "parallelism.cp=1", "training.recompute=none",
            "training.seq_len=4096"]  # fmt: skip

    def acts(*sets: str) -> tuple[int, object]:
        sc = load_scenario(ROOT / "scenarios/llama3_8b_cp.yaml", base + list(sets))
        return stage_memory(sc, 0).category("activations"), sc

    plain, sc = acts("parallelism.dp=8", "runtime.attention_repeat_kv=false")
    rkv, _ = acts("parallelism.dp=8", "runtime.attention_repeat_kv=true")
    m, t = sc.model, sc.training
    assert rkv - plain == m.layers * 2 * t.micro_batch * 4096 * 2 * (m.hidden - m.kv_dim)
    # tp 2, sequence parallelism: the block's saved tensors, as listed, make its activations
    sets = ("parallelism.dp=4", "parallelism.tp=2", "parallelism.sequence_parallel=true")
    whole, sc = acts(*sets)
    sharded, _ = acts(*sets, "runtime.tp_saves_gathered_input=false")
    gathered = tp_gathered_input_bytes(t.precision, True)
    per_layer = sum(x.bytes for x in layer_saved_tensors(
        sc.model, sc.training, tp=2, sequence_parallel=True, gathered_input=gathered))  # fmt: skip
    per_layer_sharded = sum(x.bytes for x in layer_saved_tensors(
        sc.model, sc.training, tp=2, sequence_parallel=True))  # fmt: skip
    head = head_saved_bytes(m, t, 2, True, gathered) - head_saved_bytes(m, t, 2, True)
    assert head == 2 * t.micro_batch * 4096 * m.hidden // 2  # the LM head's input, whole
    assert whole - sharded == m.layers * (per_layer - per_layer_sharded) + head
    assert per_layer > per_layer_sharded


def test_receive_buffers_discount_only_the_chunks_that_have_them() -> None:
    """torch.distributed.pipelining's receive buffers (runtime
    pipeline_recv_buffers_per_microbatch): every chunk but the first stage's holds m activation
    buffers, every chunk but the last stage's m gradient buffers; the in-flight micro-batches
    whose buffer is a block input already counted are discounted, chunk by chunk (review: the
    first stage's in-flight micro-batches, which have no buffer, were discounted too).
    interleaved_8gpu with m 32, v 2: rank 0 holds chunks 0 and 8; at its peak 16 of chunk 0's
    micro-batches and 7 of chunk 8's are in flight: 32 - 7 activation buffers (chunk 8) and
    2 x 32 gradient buffers."""
    from simtrain.costs.memory import (
        _stage_activations,
        p2p_buffer_bytes,
        pipeline_recv_buffer_bytes,
    )
    from simtrain.layout.step import resolve
    from simtrain.spec.scenario import load_scenario

    sc = load_scenario(ROOT / "scenarios/interleaved_8gpu.yaml",
                       ["runtime=torchtitan", "training.global_batch=256"])  # fmt: skip
    step = resolve(sc)
    assert (step.microbatches, step.rank_chunk_ids(0)) == (32, [0, 8])
    held = dict(_stage_activations(sc, step, 0).walk.held_at_saved_peak)
    # by hand (schedules.generators.interleaved, rank 0 of p 8, v 2, m 32): a warm-up of
    # 2(p - 1) + (v - 1)p = 22 forwards, 14 of chunk 0 and 8 of chunk 8; then F (chunk 0's 15th),
    # B (chunk 8's first), F (chunk 0's 16th): 23 held, the most it ever holds
    # (schedules.peak_in_flight), the larger chunk-0 share where chunk 0's bytes are the larger
    from simtrain.schedules import interleaved, peak_in_flight

    assert sum(held.values()) == peak_in_flight(interleaved(8, 32, 2))[0] == 23
    assert held == {0: 16, 8: 7}
    one = p2p_buffer_bytes(sc, step)
    assert pipeline_recv_buffer_bytes(sc, step, 0, held) == (32 - 7 + 2 * 32) * one
