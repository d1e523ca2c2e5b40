"""Two Megatron-Core memory mechanisms, read from the code and checked against measurements:

- the fused SwiGLU (runtime ``fused_swiglu``): Megatron-Core's ``SwiGLUFunction`` saves only
  its input, so a SwiGLU MLP keeps 3·f values a token where eager PyTorch keeps 4·f. Its port
  (``simtrain.torchref.layers.SwiGLUFunction``) is measured here on the CPU;
- Transformer Engine's cached dummy weight gradients (runtime ``te_dummy_wgrad``): one tensor
  per distinct linear shape, kept (``get_dummy_wgrad``; TE's linears and, since 2025-08,
  Megatron's output layer and eh_proj), checked in closed form.

Both against SimuMax's 43 measured Megatron-Core steps on a DGX B200 (``measured/
simumax_b200.yaml``, ``torch.cuda.max_memory_allocated``): peak memory MAPE 3.0 % (max 7.1 %)
before, 0.4 % (max 1.2 %) with both; tests/test_simumax_b200.py holds every row within 2 %."""

from __future__ import annotations

from dataclasses import replace

import pytest

from simtrain.apps.importers.megatron import import_megatron_flags
from simtrain.costs.activations import layer_saved_tensors
from simtrain.costs.memory import stage_memory, te_dummy_wgrad_bytes
from simtrain.layout.step import resolve
from simtrain.spec.model import PRESETS
from simtrain.spec.scenario import TrainingSpec, parse_scenario

LLAMA405 = PRESETS["llama3-405b"]


def _mlp_bytes(saved) -> int:
    """The MLP's part of a block's saved tensors: its input (the norm's output) onward."""
    names = [x.name for x in saved]
    first = next(i for i, n in enumerate(names) if n.startswith("mlp input"))
    return sum(x.bytes for x in saved[first:] if "norm" not in x.name)


@pytest.mark.parametrize("tp", [1, 8])
def test_fused_swiglu_saves_one_f_wide_tensor_fewer(tp: int) -> None:
    """sb·f·e bytes less a block: silu's output is not saved (bf16: 2·sbf/t)."""
    t = TrainingSpec(seq_len=4096, global_batch=1, micro_batch=1, precision="bf16")
    eager = layer_saved_tensors(LLAMA405, t, tp=tp, sequence_parallel=tp > 1)
    fused = layer_saved_tensors(LLAMA405, t, tp=tp, sequence_parallel=tp > 1, fused_swiglu=True)
    sbf = 4096 * LLAMA405.ffn_hidden // tp
    assert sum(x.bytes for x in eager) - sum(x.bytes for x in fused) == 2 * sbf
    # fc1's output (gate and up, 2f) and the down-projection's input (f), 16-bit
    assert _mlp_bytes(fused) - _mlp_bytes(eager) == -2 * sbf


def test_te_dummy_wgrad_bytes_in_closed_form() -> None:
    """Llama 3 405B on 8-way TP: one dummy per distinct TE linear, the four of a block
    (linear_qkv (h + 2·kv_dim)/t x h, linear_proj h x h/t, linear_fc1 2f/t x h, linear_fc2
    h x f/t) whatever the block count, in bf16; none for the embedding, head or router."""
    h, f, kv = LLAMA405.hidden, LLAMA405.ffn_hidden, LLAMA405.kv_dim
    for tp, pp in ((1, 2), (8, 7)):
        sc = _scenario(tp=tp, pp=pp)
        step = resolve(sc)
        from simtrain.costs.memory import _model_states  # the stage's parameter tensors

        tensors = _model_states(sc, step, 0)[1]
        want = 2 * (h * (h + 2 * kv) // tp + h * h // tp + 2 * f * h // tp + f * h // tp)
        assert te_dummy_wgrad_bytes(sc, step, tensors) == want
        off = replace(sc, runtime_profile=replace(sc.runtime, te_dummy_wgrad=False))
        assert te_dummy_wgrad_bytes(off, step, tensors) == 0
        on_b = dict(stage_memory(sc, 0).memory_bytes)["buffers"]
        off_b = dict(stage_memory(off, 0).memory_bytes)["buffers"]
        assert on_b - off_b == want
        # the last stage: the output layer's too (Megatron's linear, TE's dummy since 2025-08)
        last = _model_states(sc, step, pp - 1)[1]
        head = 2 * h * LLAMA405.vocab // tp
        assert te_dummy_wgrad_bytes(sc, step, last) == want + head


def test_te_dummy_wgrad_of_a_tied_head_without_pipelining() -> None:
    """A tied output layer on the embedding's rank multiplies by the V/t x h table: one dummy
    of that shape, as an untied head's (GPT-3 1.3B, tied, against its untied twin)."""
    from simtrain.costs.memory import _model_states

    tied = _scenario(model="gpt3-1.3b", tp=2, pp=1, seq=2048)
    untied = replace(tied, model=replace(tied.model, tied_embeddings=False))
    got = []
    for sc in (tied, untied):
        step = resolve(sc)
        got.append(te_dummy_wgrad_bytes(sc, step, _model_states(sc, step, 0)[1]))
    m = tied.model
    assert got[0] == got[1] > 2 * m.hidden * m.vocab // 2


def test_te_dummy_wgrad_experts_are_two_shapes() -> None:
    """A routed expert's GroupedLinear weights share two shapes (fc1 2·f_e x h, fc2 h x f_e),
    and the shared expert has the same two (TE keys its cache by shape and dtype): the 256
    experts of DeepSeek-V3 add as much as one. By hand, on the rank of the embedding: MLA's
    five linears, the dense blocks' fc1 and fc2, one expert's fc1 and fc2, the output layer and
    eh_proj, in bf16."""
    m = PRESETS["deepseek-v3"]
    sc8 = _scenario(model="deepseek-v3", tp=1, pp=1, ep=8)
    sc64 = _scenario(model="deepseek-v3", tp=1, pp=1, ep=64)
    from simtrain.costs.memory import _model_states

    b = {}
    for name, sc in (("ep8", sc8), ("ep64", sc64)):
        step = resolve(sc)
        b[name] = te_dummy_wgrad_bytes(sc, step, _model_states(sc, step, 0)[1])
    assert b["ep8"] == b["ep64"]  # 32 vs 4 local experts: the same two shapes
    h, qa, kva = m.hidden, m.q_lora_rank, m.kv_lora_rank
    mla = sum(fi * fo for fi, fo in m.attention_shapes().values())
    dense = 3 * h * m.ffn_hidden  # fc1 (gate and up) and fc2 of the first dense blocks
    expert = 3 * h * m.expert_ffn
    head = h * m.vocab + 2 * h * h  # the output layer and the MTP module's eh_proj
    assert qa and kva and b["ep8"] == 2 * (mla + dense + expert + head)


def test_megatron_bridge_fsdp_rows_have_no_dummy_wgrads() -> None:
    """Megatron-Bridge turns gradient-accumulation fusion off under Megatron FSDP
    (training/config.py l.1316-1318 at 00b7660b): its FSDP rows keep no dummy wgrads, its
    distributed-optimizer rows do."""
    from simtrain.apps.validate.records import load_records
    from simtrain.apps.validate.translate import translate

    rows = {r.id: r for r in load_records("measured/mbridge_2511.yaml")}
    fsdp = translate(rows["mbridge2511_GB200_LLAMA3_70B_FP8CS_64gpu"]).scenario
    assert fsdp.parallelism.zero_stage == 3 and not fsdp.runtime.te_dummy_wgrad
    zero1 = translate(rows["mbridge2511_GB200_LLAMA3_8B_FP8MX_8gpu"]).scenario
    assert zero1.parallelism.zero_stage == 1 and zero1.runtime.te_dummy_wgrad


def _scenario(model: str = "llama3-405b", tp: int = 1, pp: int = 1, ep: int = 1, seq: int = 4096):
    gpus = tp * pp * max(ep, 1) * 2
    return parse_scenario({
        "model": {"preset": model},
        "training": {"seq_len": seq, "global_batch": 256, "micro_batch": 1, "precision": "bf16"},
        "parallelism": {"tp": tp, "pp": pp, "dp": gpus // (tp * pp), "ep": ep,
                        "zero_stage": 1, "sequence_parallel": tp > 1},
        "hardware": "b200_180gb",
        "cluster": {"nodes": max(gpus // 8, 1), "gpus_per_node": min(gpus, 8)},
        "runtime": "megatron_core",
    }, "test")  # fmt: skip


FLAGS = ("--num-layers 4 --hidden-size 1024 --num-attention-heads 16 --seq-length 2048 "
         "--max-position-embeddings 2048 --micro-batch-size 1 --global-batch-size 8 --swiglu "
         "--bf16 --vocab-size 32000 --tensor-model-parallel-size 1").split()  # fmt: skip


@pytest.mark.parametrize("extra, fused, dummy", [
    ([], True, True),
    (["--no-bias-swiglu-fusion"], False, True),
    (["--no-gradient-accumulation-fusion"], True, False),
    (["--transformer-impl", "local"], True, True),  # Megatron's linears: TE's dummy too
])  # fmt: skip
def test_megatron_importer_reads_the_fusion_flags(extra, fused, dummy) -> None:
    doc = import_megatron_flags(FLAGS + extra, gpus=8, file="run.sh").data
    sc = parse_scenario(doc, "run.sh")
    assert (sc.runtime.fused_swiglu, sc.runtime.te_dummy_wgrad) == (fused, dummy)


torch = pytest.importorskip("torch")


def _saved_bytes(fn, x: torch.Tensor, params: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves in ``fn(x)``, parameters left out."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in skip:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x).sum().backward()
    return sum(seen.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_swiglu_port_matches_pytorch(dtype: torch.dtype) -> None:
    """Megatron's SwiGLUFunction, ported: the same gradients as eager silu(a)·b (to rounding),
    and the saved bytes of a SwiGLU MLP as PyTorch measures them, eager and fused, equal to
    simtrain's count of the block's MLP tensors."""
    from torch.nn import functional as F

    from simtrain.torchref.layers import SwiGLUFunction

    torch.manual_seed(0)
    b, s, h, f = 2, 64, 32, 96
    w1 = torch.randn(2 * f, h, dtype=dtype, requires_grad=True)
    w2 = torch.randn(h, f, dtype=dtype, requires_grad=True)
    x = torch.randn(b, s, h, dtype=dtype, requires_grad=True)

    def eager(x):
        gate, up = torch.chunk(F.linear(x, w1), 2, -1)
        return F.linear(F.silu(gate) * up, w2)

    def fused(x):
        return F.linear(SwiGLUFunction.apply(F.linear(x, w1)), w2)

    grads = []
    for fn in (eager, fused):
        x.grad = w1.grad = w2.grad = None
        fn(x).float().square().sum().backward()
        grads.append((x.grad.float().clone(), w1.grad.float().clone()))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for g_e, g_f in zip(*grads, strict=True):
        assert torch.allclose(g_e, g_f, rtol=tol, atol=tol * g_e.abs().max().item())

    e = torch.finfo(dtype).bits // 8
    m = replace(PRESETS["llama3-8b"], hidden=h, ffn_hidden=f)
    t = TrainingSpec(seq_len=s, global_batch=b, micro_batch=b,
                     precision="fp32" if dtype == torch.float32 else "bf16")  # fmt: skip
    for fn, flag in ((eager, False), (fused, True)):
        measured = _saved_bytes(fn, x, [w1, w2])
        predicted = _mlp_bytes(layer_saved_tensors(m, t, fused_swiglu=flag))
        assert measured == predicted, (fn.__name__, measured, predicted)
        assert measured == e * b * s * (h + (3 if flag else 4) * f)


def test_explain_names_the_dummy_wgrads() -> None:
    """`simtrain memory --explain` names the dummies' share of buffers, the closed form's."""
    from simtrain.costs.memory import estimate_memory
    from simtrain.report.explain import explain_memory
    from simtrain.units import GIB

    sc = _scenario(tp=8, pp=7)
    text = "\n".join(explain_memory(sc, estimate_memory(sc)))
    h, f, kv = LLAMA405.hidden, LLAMA405.ffn_hidden, LLAMA405.kv_dim
    want = 2 * (h * (h + 2 * kv) + h * h + 3 * f * h) // 8
    assert (
        f"dummy weight gradients (one per distinct linear shape, kept; runtime te_dummy_wgrad) = {want / 1e9:,.2f} GB ({want / GIB:,.2f} GiB)"
        in text
    )
