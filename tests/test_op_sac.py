"""training.recompute: selective_op — torchtitan's per-op selective activation checkpointing
(costs.op_sac): the policy's mm counter, the bytes a block keeps (closed form and a real
PyTorch measurement with ``create_selective_checkpoint_contexts``), the recomputed FLOPs and
collectives, and bad input."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import pytest
from reference_pairs import GPT_TINY, LLAMA_TINY

from simtrain.costs import comm, op_sac
from simtrain.costs.activations import layer_activation_bytes, recompute_working_set_bytes
from simtrain.costs.chunk_time import tp_recompute_block
from simtrain.costs.compute import block_flops, chunk_costs
from simtrain.costs.memory import estimate_memory
from simtrain.errors import ConfigError
from simtrain.layout.step import resolve
from simtrain.spec.hardware import load_hardware
from simtrain.spec.model import ModelSpec, preset
from simtrain.spec.scenario import (
    RECOMPUTE,
    ClusterSpec,
    ParallelSpec,
    PeftSpec,
    Scenario,
    TrainingSpec,
    check_layout,
    parse_scenario,
)

LLAMA3_8B = replace(preset("llama3-8b"), flash_attention=True)  # torchtitan: SDPA flash
GPT = replace(GPT_TINY, flash_attention=True)
LLAMA = replace(LLAMA_TINY, flash_attention=True)


def _t(rec: str = "selective_op", **kw) -> TrainingSpec:
    base = {"seq_len": 8192, "global_batch": 8, "micro_batch": 1, "precision": "bf16"}
    return TrainingSpec(**{**base, **kw}, recompute=rec)


def test_counter_saves_every_odd_mm_of_a_block() -> None:
    """torchtitan's counter (per block, restarted by context_fn on every call): the n-th mm is
    recomputed when n is even. Llama's forward order q, k, v, o, w1, w3, w2."""
    names = lambda mms: [mm.name for mm in mms]  # noqa: E731
    assert names(op_sac.block_matmuls(LLAMA3_8B)) == ["q", "k", "v", "o", "gate", "up", "down"]
    assert names(op_sac.saved_matmuls(LLAMA3_8B)) == ["q", "v", "gate", "down"]
    assert names(op_sac.recomputed_matmuls(LLAMA3_8B)) == ["k", "o", "up"]
    gelu = replace(GPT, bias=False)
    assert names(op_sac.saved_matmuls(gelu)) == ["q", "v", "up"]
    assert names(op_sac.recomputed_matmuls(gelu)) == ["k", "o", "down"]
    # A linear with a bias is aten.addmm (not counted, not saved): the PyTorch test measures it.
    assert names(op_sac.saved_matmuls(GPT)) == []
    qkv_bias = replace(LLAMA3_8B, qkv_bias=True)
    assert names(op_sac.saved_matmuls(qkv_bias)) == ["o", "up"]
    fused = replace(LLAMA3_8B, qkv_layout="fused_kv_copy")
    assert names(op_sac.saved_matmuls(fused)) == ["qkv", "gate", "down"]
    assert names(op_sac.recomputed_matmuls(fused)) == ["o", "up"]


def test_llama3_8b_saved_bytes_closed_form() -> None:
    """bf16, t = 1: sb(8h + 2kv + 2f) + 4·bas = 63,616 B per token and layer (h 4096, kv 1024,
    f 14336, a 32); none keeps more, full only the 2sbh input."""
    sb = 8192
    assert layer_activation_bytes(LLAMA3_8B, _t()) == 63_616 * sb
    assert 63_616 == 8 * 4096 + 2 * 1024 + 2 * 14336 + 4 * 32
    none = layer_activation_bytes(LLAMA3_8B, _t("none"))
    full = layer_activation_bytes(LLAMA3_8B, _t("full"))
    assert none > 63_616 * sb > full == 2 * 4096 * sb


def test_tensor_and_sequence_parallel_bytes() -> None:
    """tp 8 with sequence parallelism: input /t; q, v, gate /t (all-gathered sequence); down's
    partial sum full width (before its reduce-scatter); SDPA /t; two reduce-scatter outputs
    2·sbh/t. Without sequence parallelism the input is whole and no reduce-scatter is kept."""
    t, tp, sb, h, kv, f, a = _t(), 8, 8192, 4096, 1024, 14336, 32
    with_sp = 2 * sb * h // tp + 2 * sb * (h + kv + f) // tp + 2 * sb * h
    with_sp += (2 * sb * h + 4 * a * sb) // tp + 2 * 2 * sb * h // tp
    assert layer_activation_bytes(LLAMA3_8B, t, tp, True) == with_sp
    no_sp = with_sp - 2 * 2 * sb * h // tp - 2 * sb * h // tp + 2 * sb * h
    assert layer_activation_bytes(LLAMA3_8B, t, tp, False) == no_sp


def test_memory_ordering_none_selective_op_full() -> None:
    """A reference model's stage activations: none > selective_op > full (also per layer)."""
    hw = load_hardware("h100_sxm5_80gb")
    acts = {}
    for rec in ("none", "selective_op", "full"):
        t = replace(_t(rec), global_batch=1)
        sc = Scenario("t", LLAMA3_8B, hw, ClusterSpec(1, 1), t, ParallelSpec())
        acts[rec] = dict(estimate_memory(sc).stages[0].memory_bytes)["activations"]
    assert acts["none"] > acts["selective_op"] > acts["full"]


def test_recompute_flops_and_time() -> None:
    """Recomputed per block: k, o, up = 2·b·s·h·(kv + h + f) FLOPs (3 of the 7 mms, 36.5 % of
    Llama 3 8B's projection FLOPs), no attention core under flash, and every
    element-wise pass of the forward (the full recompute's element-wise time). Without the
    profile's FlashAttention classes: the core's recompute is priced as GEMM FLOPs (the classes
    have their own tests, tests/test_attention_tables.py)."""
    hw = replace(load_hardware("h100_sxm5_80gb"), attention_kernels=())
    t = _t()
    sc = Scenario("t", LLAMA3_8B, hw, ClusterSpec(1, 1), t, ParallelSpec())
    c = chunk_costs(sc, 4, False, False)
    per_block = 2 * 8192 * 4096 * (1024 + 4096 + 14336)
    assert c.recompute_flops == 4 * per_block
    bf = block_flops(LLAMA3_8B, t)
    # Not half the projection FLOPs: k and up are thin or shared-width, q, gate and down kept.
    assert per_block / bf.projections == (1024 + 4096 + 14336) / (2 * 4096 + 2 * 1024 + 3 * 14336)
    full = chunk_costs(replace(sc, training=_t("full")), 4, False, False)
    # The GEMM shape term (H100: L = 150), 2·M·N·K·(1/M + 1/N + 1/K) per GEMM over M = 8,192
    # tokens: full recompute replays the fused QKV, O, gate/up and down GEMMs (the default
    # runtime fuses them), selective_op k (N = 1,024), o and up (N = 14,336), each K = 4,096.
    edge_l = hw.efficiency.gemm_edge_elements
    assert edge_l == 150

    def edge(n: int, k: int, m: int = 8192) -> float:
        return 2 * m * n * k * (1 / m + 1 / n + 1 / k)

    full_edge = edge(6144, 4096) + edge(4096, 4096) + edge(28672, 4096) + edge(4096, 14336)
    op_edge = edge(1024, 4096) + edge(4096, 4096) + edge(14336, 4096)
    rate = hw.compute_peak("bf16") * hw.efficiency.matmul
    ew_ns = full.recompute_ns - 1e9 * (full.recompute_flops + 4 * edge_l * full_edge) / rate
    mm_ns = 1e9 * (c.recompute_flops + 4 * edge_l * op_edge) / rate
    assert c.recompute_ns == pytest.approx(mm_ns + ew_ns, abs=3)
    # Without flash attention the math path's bmm/softmax are recomputed too.
    math = replace(sc, model=replace(LLAMA3_8B, flash_attention=False))
    core = 4 * 8192 * 8192 * 4096
    assert chunk_costs(math, 1, False, False).recompute_flops == per_block + core


def test_fp8_recompute_runs_the_projections_at_the_fp8_rate() -> None:
    hw = load_hardware("h100_sxm5_80gb")
    sc = Scenario("t", LLAMA3_8B, hw, ClusterSpec(1, 1), _t(precision="fp8_tensorwise"),
                  ParallelSpec())  # fmt: skip
    bf = Scenario("t", LLAMA3_8B, hw, ClusterSpec(1, 1), _t(), ParallelSpec())
    c8, c16 = chunk_costs(sc, 1, False, False), chunk_costs(bf, 1, False, False)
    assert c8.recompute_flops == c16.recompute_flops
    assert c8.recompute_ns < c16.recompute_ns


def test_tp_recompute_replays_the_all_gathers_only() -> None:
    """With sequence parallelism the two all-gathers are replayed (half an all-reduce each),
    the reduce-scatters not (saved); without it both all-reduces (not in _save_list)."""
    hw = load_hardware("h100_sxm5_80gb")
    p = ParallelSpec(tp=8, sequence_parallel=True)
    sc = Scenario("t", LLAMA3_8B, hw, ClusterSpec(1, 8), _t(), p)
    step = resolve(sc)
    ag, rs = comm.tp_halves_ns(sc, step)
    ar = comm.tp_allreduce_ns(sc, step)
    assert abs(2 * ag - ar) <= 1  # (a ring all-reduce: twice an all-gather's bytes and steps)
    assert tp_recompute_block(sc, step, 3) == (3 * 2 * ag, 0)  # the two gathers
    no_sp = replace(sc, parallelism=replace(p, sequence_parallel=False))
    assert tp_recompute_block(no_sp, resolve(no_sp), 3) == (3 * 2 * ar, 0)
    # full: the forward's four collectives (two gathers, two reduce-scatters); selective none
    assert tp_recompute_block(replace(sc, training=_t("full")), step, 3) == (3 * 2 * (ag + rs), 0)
    assert tp_recompute_block(replace(sc, training=_t("selective")), step, 3) == (0, 0)


def test_recompute_working_set_leaves_out_the_kept_storages() -> None:
    """The recomputed forward re-materialises what autograd saves, less the block input, the
    SDPA output + log-sum-exp, v (SDPA saves a view of the kept mm output) and the SiLU input
    (the kept gate output)."""
    t = _t()
    full = recompute_working_set_bytes(LLAMA3_8B, _t("full"), 4, False, False)
    sop = recompute_working_set_bytes(LLAMA3_8B, t, 4, False, False)
    sb = 8192
    assert full - sop == 2 * sb * 4096 + 4 * 32 * sb + 2 * sb * 1024 + 2 * sb * 14336
    assert recompute_working_set_bytes(LLAMA3_8B, _t("selective"), 4, False, False) == 0


def _scenario_data(**training) -> dict:
    return {
        "name": "t", "model": {"preset": "llama3-8b"}, "hardware": "h100_sxm5_80gb",
        "cluster": {"nodes": 1, "gpus_per_node": 1},
        "training": {"seq_len": 1024, "global_batch": 1, "micro_batch": 1, **training},
    }  # fmt: skip


def test_bad_recompute_lists_the_allowed_values() -> None:
    with pytest.raises(ConfigError) as e:
        parse_scenario(_scenario_data(recompute="per_op"), "x.yaml")
    msg = str(e.value)
    assert "training.recompute" in msg and "per_op" in msg
    for v in RECOMPUTE:
        assert v in msg
    assert "selective_op" in RECOMPUTE


@pytest.mark.parametrize(
    ("training", "words"),
    [
        ({"peft": {"method": "lora"}}, ("training.recompute", "lora")),
        ({"precision": "fp8_delayed"}, ("training.recompute", "fp8_delayed", "fp8_rowwise")),
    ],
)
def test_selective_op_rejects_what_it_does_not_model(training: dict, words: tuple) -> None:
    data = _scenario_data(recompute="selective_op", **training)
    with pytest.raises(ConfigError) as e:
        sc = parse_scenario(data, "x.yaml")
        check_layout(sc, "x.yaml")
    for w in words:
        assert w in str(e.value)


def test_lora_selective_op_in_code_is_refused() -> None:
    t = replace(_t(), peft=PeftSpec(method="lora"))
    sc = Scenario("t", LLAMA3_8B, load_hardware("h100_sxm5_80gb"), ClusterSpec(1, 1), t,
                  ParallelSpec())  # fmt: skip
    with pytest.raises(ConfigError):
        check_layout(sc, "x")


# --- PyTorch measurement ---------------------------------------------------------------------


def _torchtitan_policy(torch, save_list):
    """pytorch/torchtitan parallelisms/parallelize_llama.py _get_custom_policy at 9dec370a,
    verbatim but for the save list passed in."""
    from torch.utils.checkpoint import CheckpointPolicy

    def _get_custom_policy(meta):
        def _custom_policy(ctx, func, *args, **kwargs):
            mode = "recompute" if ctx.is_recompute else "forward"
            mm_count_key = f"{mode}_mm_count"
            if func == torch.ops.aten.mm.default:
                meta[mm_count_key] += 1
            to_save = func in save_list and not (
                func == torch.ops.aten.mm.default and meta[mm_count_key] % 2 == 0
            )
            return CheckpointPolicy.MUST_SAVE if to_save else CheckpointPolicy.PREFER_RECOMPUTE

        return _custom_policy

    return _get_custom_policy


@pytest.mark.parametrize(
    ("model", "precision"),
    [
        (LLAMA, "fp32"),
        (LLAMA, "bf16"),
        (LLAMA, "amp_bf16"),
        (GPT, "fp32"),
        (GPT, "bf16"),
        (replace(GPT, name="gpt-nobias", bias=False), "bf16"),
        (replace(LLAMA, name="llama-qkv-bias", qkv_bias=True), "bf16"),
    ],
    ids=lambda x: getattr(x, "name", x),
)
def test_saved_bytes_match_pytorch_selective_checkpointing(model: ModelSpec, precision: str):
    """One reference block (simtrain.torchref) under torch.utils.checkpoint with
    create_selective_checkpoint_contexts and torchtitan's policy: the block keeps the
    checkpoint's input (seen by saved_tensors_hooks) and the policy's cached outputs (the
    caching mode's storage); their storage bytes equal simtrain's count exactly. The CPU's
    SDPA kernel (_scaled_dot_product_flash_attention_for_cpu, the same saved set as CUDA flash)
    joins the list in place of the CUDA flash op."""
    torch = pytest.importorskip("torch")
    from torch.utils._pytree import tree_leaves
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    from simtrain.torchref.reference_model import build_reference_model

    ops = torch.ops.aten
    save_list = {ops.mm.default, ops._scaled_dot_product_efficient_attention.default,
                 ops._scaled_dot_product_flash_attention.default,
                 torch.ops._c10d_functional.reduce_scatter_tensor.default, ops.abs.default,
                 ops.max.default, ops._scaled_dot_product_flash_attention_for_cpu.default}  # fmt: skip
    s, b = 32, 2
    t = TrainingSpec(seq_len=s, global_batch=b, micro_batch=b, precision=precision,
                     recompute="selective_op")  # fmt: skip
    torch.manual_seed(0)
    net = build_reference_model(model, replace(t, recompute="none"))
    blk = net.blocks[0]
    autocast = precision.startswith("amp")
    dtype = torch.float32 if autocast else next(blk.parameters()).dtype
    x = torch.randn(b, s, model.hidden, dtype=dtype, requires_grad=True)
    cos = sin = None
    if model.positions == "rotary":
        cos, sin = net.rope_cos[:s], net.rope_sin[:s]
    modes = []
    policy = _torchtitan_policy(torch, save_list)

    def context_fn():
        fwd, rec = create_selective_checkpoint_contexts(policy(defaultdict(int)))
        modes.append(fwd)
        return fwd, rec

    inputs = []

    def pack(tensor):
        inputs.append(tensor)
        return tensor

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        if autocast and cos is not None:
            cos, sin = cos.to(torch.bfloat16), sin.to(torch.bfloat16)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda z: z):
            y = checkpoint(blk.block, x, cos, sin, None, use_reentrant=False,
                           context_fn=context_fn)  # fmt: skip
    constants = {z.untyped_storage().data_ptr() for z in (cos, sin) if z is not None}
    storages = {}
    for tensor in inputs:
        st = tensor.untyped_storage()
        if st.data_ptr() not in constants:
            storages[st.data_ptr()] = st.nbytes()
    (mode,) = modes
    for per_op in mode.storage.values():
        for wrapped in per_op.values():
            for leaf in tree_leaves(wrapped, is_leaf=lambda z: hasattr(z, "val")):
                val = getattr(leaf, "val", None)
                if isinstance(val, torch.Tensor):
                    storages[val.untyped_storage().data_ptr()] = val.untyped_storage().nbytes()
    measured = sum(storages.values())
    assert measured == layer_activation_bytes(model, t)
    y.float().sum().backward()  # the policy's recompute runs
    assert x.grad is not None


def test_a_head_size_other_than_hidden_over_heads_sizes_q_and_o() -> None:
    """A dense model whose heads x head_size is not h (Llama 3 70B's 64 heads at head_size 256:
    q_dim 16,384 on h 8,192): under the per-op policy q and o are h x q_dim and q_dim x h, the
    recomputed k, o and up mms are 2·T·in·out/t of the model's own linear shapes, and the saved
    SDPA output is q_dim wide (review: q and o were h x h)."""
    from simtrain.costs.compute import op_sac_recompute_flops
    from simtrain.costs.op_sac import saved_tensors
    from simtrain.spec.scenario import load_scenario

    sc = load_scenario("scenarios/llama3_70b_tp_overlap.yaml", [
        "model.head_size=256", "training.recompute=selective_op", "model.layers=8"])  # fmt: skip
    m, t, tp = sc.model, sc.training, sc.parallelism.tp
    assert m.q_dim == 64 * 256 != m.hidden
    shapes = m.linear_weight_shapes()
    tokens = t.micro_batch * t.seq_len_effective
    want = sum(2.0 * tokens * shapes[n][0] * shapes[n][1] / tp for n in ("k", "o", "up"))
    assert op_sac_recompute_flops(m, t, tp) == pytest.approx(want, rel=1e-12)
    sdpa = dict((n, b) for n, b, _ in saved_tensors(m, t, tp))
    out = sdpa["attention output + logsumexp (SDPA, saved)"]
    assert out == (2 * tokens * m.q_dim + 4 * t.micro_batch * m.heads * t.seq_len_effective) // tp
