"""FP8 training precisions (costs.fp8): exact memory against closed forms written here from the
Transformer Engine and torchao code that ``simtrain/costs/fp8.py`` cites, GEMM times at the FP8
rate, and FP8 on a GPU without an FP8 rate as a one-line error."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any

import pytest

from simtrain.apps.simulate import simulate_scenario
from simtrain.costs.activations import layer_activation_bytes
from simtrain.costs.compute import block_flops, chunk_costs
from simtrain.costs.fp8 import (
    cast_bytes,
    rowwise_rescale_bytes,
    scaling_state_bytes,
    weight_cache_bytes,
)
from simtrain.costs.memory import estimate_memory
from simtrain.errors import ConfigError
from simtrain.spec.precision import PRECISIONS
from simtrain.spec.scenario import Scenario, parse_scenario

# A Llama-shaped block (SwiGLU, RMSNorm, rotary, GQA, flash attention, no bias or dropout) with
# every dimension a multiple of 128 (MXFP8 scale tiles need no padding).
L, H, A, KVH, F, V = 4, 1024, 16, 4, 4096, 32000
D = H // A
KV = KVH * D
S, B = 2048, 2
SB = S * B
HISTORY = 1024  # transformer_engine/common/recipe: DelayedScaling.amax_history_len default
# Weight elements of one block: fused QKV h(h+2kv), proj h², fc1 (gate, up) 2hf, fc2 fh.
W_GROUPS = (H * (H + 2 * KV), H * H, 2 * H * F, F * H)


def scenario(precision: str, hardware: str = "h100_sxm5_80gb", **over: Any) -> Scenario:
    data: dict[str, Any] = {
        "name": "fp8",
        "model": {
            "layers": L,
            "hidden": H,
            "heads": A,
            "kv_heads": KVH,
            "ffn_hidden": F,
            "vocab": V,
            "max_positions": S,
            "mlp": "swiglu",
            "norm": "rmsnorm",
            "positions": "rotary",
            "bias": False,
            "tied_embeddings": False,
            "dropout": 0.0,
            "flash_attention": True,
        },  # fmt: skip
        "hardware": hardware,
        "training": {
            "seq_len": S,
            "global_batch": B,
            "micro_batch": B,
            "precision": precision,
            "optimizer": "adamw",
        },  # fmt: skip
        "parallelism": {"dp": 1, "tp": 1, "pp": 1},
    }
    for k, v in over.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_scenario(copy.deepcopy(data), "fp8.yaml")


def _bf16_layer_bytes() -> int:
    """simtrain's bf16 count of this block (PyTorch modules, costs.activations)."""
    norms = 2 * (2 * SB * H + 4 * SB)
    return (norms + 2 * SB * H + 2 * SB * (H + 2 * KV) + 2 * SB * H + 4 * B * A * S
            + 2 * SB * H + 2 * SB * F + 4 * SB * F + 2 * SB * F)  # fmt: skip


def _te_layer_bytes(fp8_copy: Any) -> int:
    """What TE saves per block (linear.py: the input's column-wise FP8 copy only;
    layernorm_mlp.py: inputmat, ln_out (FP8), fc1_out (16-bit), act_out (FP8), mu/rsigma; the
    fused attention: q, k, v, its output, the softmax statistics)."""
    norm1 = 2 * SB * H + 4 * SB  # LayerNormLinear inputmat (bf16) + rsigma (fp32)
    qkv_in = fp8_copy(SB * H)  # ln_out, FP8 column-wise
    attn = 2 * SB * (H + 2 * KV) + 2 * SB * H + 4 * B * A * S  # q, k, v, out, logsumexp
    proj_in = fp8_copy(SB * H)  # proj Linear's own FP8 copy of the attention output
    norm2 = 2 * SB * H + 4 * SB
    fc1_in = fp8_copy(SB * H)
    fc1_out = 2 * 2 * SB * F  # gate and up, bf16
    fc2_in = fp8_copy(SB * F)  # act_out, FP8
    return norm1 + qkv_in + attn + proj_in + norm2 + fc1_in + fc1_out + fc2_in


def delayed_copy(n: int) -> int:
    return n + 4  # 1 B per value + the tensor's fp32 scale_inv


def mx_copy(n: int) -> int:
    return n + n // 32  # 1 B per value + one E8M0 scale per 32 values


# --------------------------------------------------------------------------- memory


def test_te_delayed_saved_activations_closed_form() -> None:
    sc = scenario("fp8_delayed")
    got = layer_activation_bytes(sc.model, sc.training)
    assert got == _te_layer_bytes(delayed_copy)
    # bf16 under the same count, and what FP8 saves against it.
    assert layer_activation_bytes(sc.model, scenario("bf16").training) == _bf16_layer_bytes()
    assert got < _bf16_layer_bytes()


def test_mxfp8_saved_activations_closed_form() -> None:
    sc = scenario("mxfp8", "b200_180gb")
    assert layer_activation_bytes(sc.model, sc.training) == _te_layer_bytes(mx_copy)


def test_weight_cache_hopper_two_copies_blackwell_one() -> None:
    """float8_tensor.py: ``_transpose`` only where non-TN FP8 GEMMs are unsupported (Hopper);
    one fp32 scale_inv per cached weight."""
    m, prec = scenario("fp8_delayed").model, PRECISIONS["fp8_delayed"]
    assert weight_cache_bytes(m, prec, "hopper") == sum(2 * w + 4 for w in W_GROUPS)
    assert weight_cache_bytes(m, prec, "blackwell") == sum(w + 4 for w in W_GROUPS)
    mx = PRECISIONS["mxfp8"]
    assert weight_cache_bytes(m, mx, "blackwell") == sum(2 * mx_copy(w) for w in W_GROUPS)
    assert weight_cache_bytes(m, PRECISIONS["fp8_tensorwise"], "hopper") == 0
    # TP splits every weight.
    assert weight_cache_bytes(m, prec, "hopper", tp=4) == sum(2 * (w // 4) + 4 for w in W_GROUPS)


def test_delayed_scaling_state_closed_form() -> None:
    """module/base.py: num_gemms*3 forward and num_gemms*2 backward quantizers; quantization.py:
    each an fp32 scale and amax_history_len fp32 history rows; 4 GEMMs per block."""
    m = scenario("fp8_delayed").model
    assert scaling_state_bytes(m, PRECISIONS["fp8_delayed"]) == 4 * (3 + 2) * (HISTORY + 1) * 4
    assert scaling_state_bytes(m, PRECISIONS["mxfp8"]) == 0


@pytest.mark.parametrize(
    ("precision", "hardware", "per_block"),
    [
        ("fp8_delayed", "h100_sxm5_80gb",
         sum(2 * w + 4 for w in W_GROUPS) + 4 * 5 * (HISTORY + 1) * 4),
        ("fp8_delayed", "b200_180gb", sum(w + 4 for w in W_GROUPS) + 4 * 5 * (HISTORY + 1) * 4),
        ("fp8_current", "h100_sxm5_80gb", sum(2 * w + 4 for w in W_GROUPS)),
        ("fp8_current", "gb200_nvl72", sum(w + 4 for w in W_GROUPS)),
        ("mxfp8", "b200_180gb", sum(2 * mx_copy(w) for w in W_GROUPS)),
        ("fp8_tensorwise", "h100_sxm5_80gb", 0),
        ("fp8_rowwise", "h100_sxm5_80gb", 0),
    ],
)  # fmt: skip
def test_stage_memory_against_bf16(precision: str, hardware: str, per_block: int) -> None:
    """Model states as bf16 mixed precision (bf16 weights and gradients, fp32 master and AdamW);
    buffers + L x (FP8 weight caches + scaling state); torchao saves the bf16 inputs
    (float8_linear.py ``save_for_backward(input_hp, weight_hp_t)``): activations as bf16."""
    fp8 = dict(estimate_memory(scenario(precision, hardware)).stages[0].memory_bytes)
    bf16 = dict(estimate_memory(scenario("bf16", hardware)).stages[0].memory_bytes)
    for cat in ("parameters", "master_weights", "gradients", "optimizer_states", "cuda_context"):
        assert fp8[cat] == bf16[cat], cat
    assert fp8["buffers"] - bf16["buffers"] == L * per_block
    if precision.startswith("fp8_") and per_block == 0:
        assert fp8["activations"] == bf16["activations"]
    else:
        assert fp8["activations"] < bf16["activations"]


def test_zero3_keeps_one_block_of_weight_cache() -> None:
    """Under ZeRO-3 TE quantizes each gathered weight per use (no workspace cache)."""
    state = 4 * 5 * (HISTORY + 1) * 4
    kw = {"parallelism": {"dp": 2, "tp": 1, "pp": 1, "zero_stage": 3},
          "training": {"global_batch": 2 * B}}  # fmt: skip
    fp8 = dict(estimate_memory(scenario("fp8_delayed", **kw)).stages[0].memory_bytes)
    bf16 = dict(estimate_memory(scenario("bf16", **kw)).stages[0].memory_bytes)
    one_block = sum(2 * w + 4 for w in W_GROUPS)
    assert fp8["buffers"] - bf16["buffers"] == one_block + L * state


# --------------------------------------------------------------------------- time


def test_linear_gemms_at_fp8_rate_closed_form() -> None:
    """Forward of the 4 blocks on H100: projections 2·sb·(h(h+2kv) + h² + 3hf) per block (and
    their GEMM shape term) at the FP8 peak, the attention core 4·sb·s·h at the bf16 peak (both x efficiency.matmul); element-wise
    bytes plus TE's casts (each GEMM input read in 2 B and written in 2 FP8 copies on Hopper; the
    weights once per step, here 1 micro-batch) at HBM x efficiency.memory_bound. The profile's
    FlashAttention classes are taken out, so that the core is priced as GEMM FLOPs (the classes
    have their own tests: tests/test_attention_tables.py)."""
    sc = scenario("fp8_delayed")
    sc = replace(sc, hardware=replace(sc.hardware, attention_kernels=()))
    hw = sc.hardware
    eff = hw.efficiency.matmul
    proj_flops = 2 * SB * (H * (H + 2 * KV) + H * H + 3 * H * F)
    # + the GEMM shape term, L = 150 on the H100: 2·M·N·K·(1/M + 1/N + 1/K) per GEMM of the
    # fused QKV (N = h + 2kv), O, fused gate/up (N = 2f) and down (K = f), M = s·b tokens
    assert hw.efficiency.gemm_edge_elements == 150
    edge = sum(2 * SB * n * k * (1 / SB + 1 / n + 1 / k)
               for n, k in ((H + 2 * KV, H), (H, H), (2 * F, H), (H, F)))  # fmt: skip
    proj = proj_flops + 150 * edge
    core = 4 * SB * S * H
    ew = block_flops(sc.model, sc.training).elementwise_bytes_fwd
    cast = SB * (H + H + H + F) * (2 + 2) + sum(W_GROUPS) * (2 + 2)
    want = (
        1e9
        * L
        * (
            proj / (hw.peak("fp8") * eff)
            + core / (hw.peak("bf16") * eff)
            + (ew + cast) / (hw.hbm_bandwidth_bytes_per_s * hw.efficiency.memory_bound)
        )
    )
    got = chunk_costs(sc, L, False, False)
    assert got.forward_ns == pytest.approx(want, abs=1)
    # Backward: dgrad at the FP8 rate, the attention core's two input gradients in bf16; the
    # casts of each GEMM's output gradient ((h+2kv) + h + 2f + h values per token).
    cast_b = SB * ((H + 2 * KV) + H + 2 * F + H) * (2 + 2)
    ew_b = block_flops(sc.model, sc.training).elementwise_bytes_bwd
    want_i = 1e9 * L * (proj / (hw.peak("fp8") * eff) + 2 * core / (hw.peak("bf16") * eff)
                        + (ew_b + cast_b) / (hw.hbm_bandwidth_bytes_per_s
                                             * hw.efficiency.memory_bound))  # fmt: skip
    assert got.input_grad_ns == pytest.approx(want_i, abs=1)
    assert got.weight_grad_ns == math.ceil(1e9 * L * proj / (hw.peak("fp8") * eff))
    # FLOP counts are those of bf16: FP8 changes the rate, not the work.
    bf = chunk_costs(scenario("bf16"), L, False, False)
    assert (got.forward_flops, got.backward_flops) == (bf.forward_flops, bf.backward_flops)


def _llama70b(precision: str, hardware: str) -> Scenario:
    return parse_scenario({
        "name": "llama3_70b_64gpu", "model": {"preset": "llama3-70b", "flash_attention": True},
        "hardware": hardware, "cluster": {"nodes": 8, "gpus_per_node": 8},
        "training": {"seq_len": 8192, "global_batch": 128, "micro_batch": 1,
                     "precision": precision, "optimizer": "adamw"},
        "parallelism": {"dp": 2, "tp": 8, "pp": 4, "schedule": "interleaved",
                        "virtual_stages": 5, "sequence_parallel": True, "zero_stage": 1},
    }, "llama70b.yaml")  # fmt: skip


@pytest.mark.parametrize("hardware", ["h100_sxm5_80gb", "b200_180gb"])
def test_fp8_step_faster_than_bf16_but_not_twice(hardware: str) -> None:
    """Llama 3 70B, TP 8 x PP 4 (interleaved, 5 virtual stages) x DP 2, 8k tokens: the FP8 GEMM
    rate is twice bf16's, but attention, element-wise work, casts and communication are not."""
    t_bf16 = simulate_scenario(_llama70b("bf16", hardware), detail=False).metrics.step_time_s
    for prec in ("fp8_delayed", "fp8_tensorwise"):
        t = simulate_scenario(_llama70b(prec, hardware), detail=False).metrics.step_time_s
        assert 1.0 < t_bf16 / t < 2.0, (prec, t_bf16, t)
    t_te = simulate_scenario(_llama70b("fp8_delayed", hardware), detail=False).metrics.step_time_s
    t_ao = simulate_scenario(
        _llama70b("fp8_tensorwise", hardware), detail=False
    ).metrics.step_time_s
    assert t_te < t_ao  # torchao casts more (dynamic amax, backward re-casts, no weight cache)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("hardware", ["a100_sxm4_80gb", "v100_sxm2_32gb"])
@pytest.mark.parametrize(
    "precision", ["fp8_delayed", "fp8_current", "fp8_tensorwise", "fp8_rowwise", "mxfp8"]
)
def test_fp8_on_gpu_without_fp8_is_one_line_error(precision: str, hardware: str) -> None:
    with pytest.raises(ConfigError) as exc:
        scenario(precision, hardware)
    err = exc.value
    assert err.key == "training.precision"
    assert hardware in str(err) and precision in str(err)
    assert "\n" not in str(err)
    assert "fp8_delayed" not in (err.allowed or "") and "bf16" in (err.allowed or "")


def test_mxfp8_needs_a_block_scaled_rate() -> None:
    with pytest.raises(ConfigError, match="mxfp8"):
        scenario("mxfp8", "h100_sxm5_80gb")
    scenario("mxfp8", "b200_180gb")
    scenario("mxfp8", "mi355x_288gb")


def test_qlora_with_fp8_is_an_error() -> None:
    with pytest.raises(ConfigError, match="QLoRA"):
        scenario("fp8_delayed", training={"peft": {"method": "qlora"}})


def test_cast_bytes_closed_forms() -> None:
    """Per block and micro-batch of T tokens (tp 1, 1 micro-batch): TE delayed on Hopper reads
    each GEMM input / output gradient once and writes 2 FP8 copies; current scaling reads it
    twice (amax, then cast); Blackwell writes one copy; torchao casts per linear module (q, k, v,
    o, gate, up, down), 5 B per value (amax read, cast read, write): input and weight forward,
    grad output twice and input and weight again backward."""
    m = scenario("bf16").model
    t_ = SB
    w = sum(W_GROUPS)
    ins, outs = t_ * (3 * H + F), t_ * ((H + 2 * KV) + H + 2 * F + H)
    assert cast_bytes(m, PRECISIONS["fp8_delayed"], "hopper", t_) == (
        4 * ins + 4 * w,
        4 * outs,
    )
    assert cast_bytes(m, PRECISIONS["fp8_current"], "hopper", t_) == (
        6 * ins + 6 * w,
        6 * outs,
    )
    assert cast_bytes(m, PRECISIONS["fp8_delayed"], "blackwell", t_, microbatches=4) == (
        3 * ins + 3 * w / 4,
        3 * outs,
    )
    mods = [(H, H), (H, KV), (H, KV), (H, H), (H, F), (H, F), (F, H)]  # (in, out)
    fwd = sum(5 * (t_ * i + i * o) for i, o in mods)
    bwd = sum(5 * (2 * t_ * o + t_ * i + i * o) for i, o in mods)
    for prec in ("fp8_tensorwise", "fp8_rowwise"):
        assert cast_bytes(m, PRECISIONS[prec], "hopper", t_) == (fwd, bwd)
    assert cast_bytes(m, PRECISIONS["bf16"], "hopper", t_) == (0.0, 0.0)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_rowwise_rescale_bytes_closed_form(tp: int) -> None:
    """torchao rowwise (float8_ops.py addmm_float8_unwrapped l.47-85): the input- and
    weight-gradient GEMMs run without fast accumulation, so cuBLAS's tensorwise kernel at unit
    scales and then ``output *= a_inv * b_inv``: each output element read and written in bf16
    (2 + 2 B) under torch.compile, plus the fp32 outer product written and read (4 + 4 B) in
    eager. Per micro-batch of T tokens on one TP rank: the input gradients are T x each linear's
    input width (q, k, v, gate, up column-parallel: h; o row-parallel: h/t; down: f/t), the
    weight gradients the rank's weights. Tensorwise and every TE recipe: nothing."""
    m = scenario("bf16").model
    t_ = SB
    widths = 5 * H + H // tp + F // tp  # q, k, v, gate, up | o | down
    weights = sum(W_GROUPS) // tp
    rw = PRECISIONS["fp8_rowwise"]
    assert rowwise_rescale_bytes(m, rw, t_, tp) == (4 * t_ * widths, 4 * weights)
    assert rowwise_rescale_bytes(m, rw, t_, tp, eager=True) == (12 * t_ * widths, 12 * weights)
    for other in ("fp8_tensorwise", "fp8_delayed", "fp8_current", "mxfp8", "bf16"):
        assert rowwise_rescale_bytes(m, PRECISIONS[other], t_, tp) == (0.0, 0.0)


def test_rowwise_rescale_in_the_backward_gemms_actions() -> None:
    """A block under fp8_rowwise costs what it costs under fp8_tensorwise (the same GEMMs, casts
    and saved tensors) plus the rescale's bytes at HBM x efficiency.memory_bound: the input
    gradients' in the input-gradient action, the weight gradients' in the weight-gradient
    action; the forward and the recompute are untouched (the forward GEMM takes its scales)."""
    over = {"training": {"recompute": "full"}}
    tw = chunk_costs(scenario("fp8_tensorwise", **over), L, False, False)
    sc = scenario("fp8_rowwise", **over)
    rw = chunk_costs(sc, L, False, False)
    hw = sc.hardware
    bw = hw.hbm_bandwidth_bytes_per_s * hw.efficiency.memory_bound
    widths, weights = 5 * H + H + F, sum(W_GROUPS)
    assert rw.forward_ns == tw.forward_ns and rw.recompute_ns == tw.recompute_ns
    assert rw.input_grad_ns - tw.input_grad_ns == pytest.approx(1e9 * L * 4 * SB * widths / bw,
                                                                abs=1)  # fmt: skip
    assert rw.weight_grad_ns - tw.weight_grad_ns == pytest.approx(1e9 * L * 4 * weights / bw,
                                                                  abs=1)  # fmt: skip
    # eager element-wise (no torch.compile): the outer product is materialised in fp32
    eager = chunk_costs(scenario("fp8_rowwise", **over, runtime={"name": "torchtitan"}),
                        L, False, False)  # fmt: skip
    tw_eager = chunk_costs(scenario("fp8_tensorwise", **over, runtime={"name": "torchtitan"}),
                           L, False, False)  # fmt: skip
    assert eager.weight_grad_ns - tw_eager.weight_grad_ns == pytest.approx(
        1e9 * L * 12 * weights / bw, abs=1
    )
    # and the step (on this small block, h 1024, torchao's casts leave either recipe near bf16)
    steps = {p: simulate_scenario(scenario(p), detail=False).metrics.step_time_s
             for p in ("fp8_tensorwise", "fp8_rowwise")}  # fmt: skip
    assert steps["fp8_tensorwise"] < steps["fp8_rowwise"]


def test_current_scaling_saves_as_delayed_without_history() -> None:
    sc = scenario("fp8_current")
    assert layer_activation_bytes(sc.model, sc.training) == _te_layer_bytes(delayed_copy)
    assert scaling_state_bytes(sc.model, PRECISIONS["fp8_current"]) == 0


@pytest.mark.parametrize(
    ("precision", "hardware", "copies"),
    [("fp8_current", "b200_180gb", 1), ("fp8_current", "h100_sxm5_80gb", 2),
     ("mxfp8", "b200_180gb", 2)],
)  # fmt: skip
def test_fp8_primary_weights_replace_the_16_bit_ones(precision: str, hardware: str,
                                                     copies: int) -> None:  # fmt: skip
    """Megatron-Core --fp8-param-gather (training.fp8_params): the blocks' linear weights
    exist only as TE's quantized copies, which the GEMMs read in place of a workspace. Written
    out for this model's four blocks: the parameters gain the copies (1 B a value, row- and
    column-wise where the GPU needs both, an MX block scale per 32) and lose 2 B a weight,
    the buffers lose the workspaces: the peak falls by 2 B x the weights, exactly."""
    weights = L * sum(W_GROUPS)
    # (a per-tensor recipe's fp32 scale_inv: one a tensor, shared by its data and transpose)
    per = {"fp8_current": lambda n: copies * n + 4,
           "mxfp8": lambda n: copies * (n + n // 32)}[precision]  # fmt: skip
    stored = L * sum(per(w) for w in W_GROUPS)
    mc = {"runtime": "megatron_core"}
    plain = estimate_memory(scenario(precision, hardware, **mc)).stages[0]
    fp8 = estimate_memory(
        scenario(precision, hardware, training={"fp8_params": True}, **mc)
    ).stages[0]
    assert fp8.category("parameters") - plain.category("parameters") == stored - 2 * weights
    assert plain.category("buffers") - fp8.category("buffers") == stored
    assert plain.peak_memory_bytes - fp8.peak_memory_bytes == 2 * weights


@pytest.mark.parametrize(
    ("over", "words"),
    [({"training": {"fp8_params": True}, "runtime": "megatron_core"},
      "fp8_delayed | fp8_current | mxfp8"),
     ({"training": {"fp8_params": True, "precision": "fp8_current"}}, "runtime megatron_core"),
     ({"training": {"fp8_params": True, "precision": "fp8_current", "global_batch": 4},
       "runtime": "megatron_core",
       "parallelism": {"dp": 2, "zero_stage": 3}, "cluster": {"nodes": 1, "gpus_per_node": 2}},
      "zero_stage <= 2")],
)  # fmt: skip
def test_fp8_params_errors(over: dict, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        scenario("bf16", **over)
    assert "training.fp8_params" in str(e.value) and words in str(e.value)


def test_megatron_fp8_param_gather_is_read() -> None:
    """The importer reads --fp8-param-gather with an FP8 recipe; under Megatron FSDP it is
    listed as not simulated. Megatron-Bridge's FP8 rows carry it (mixed_precision.py
    fp8_param_gather = True at 00b7660b) unless they are FSDP runs."""
    from simtrain.apps.importers.megatron import import_megatron_flags
    from simtrain.apps.validate.records import load_records
    from simtrain.apps.validate.translate import translate

    words = ("--num-layers 4 --hidden-size 1024 --num-attention-heads 16 --seq-length 2048 "
             "--micro-batch-size 1 --global-batch-size 8 --bf16 --vocab-size 32000 "
             "--fp8-format hybrid --fp8-recipe tensorwise --fp8-param-gather").split()  # fmt: skip
    imp = import_megatron_flags(words, gpus=8)
    assert imp.data["training"]["fp8_params"] is True
    for flag in ("--use-megatron-fsdp", "--use-custom-fsdp"):  # its two names
        fsdp = import_megatron_flags([*words, flag], gpus=8)
        assert "fp8_params" not in fsdp.data["training"], flag
        assert any("--fp8-param-gather" in u for u in fsdp.unsupported), flag
        assert fsdp.data["parallelism"]["zero_stage"] == 3, flag
    recs = {r.id: r for r in load_records("measured/mbridge_2511.yaml")}
    fsdp_row = translate(recs["mbridge2511_GB300_LLAMA3_70B_FP8CS_64gpu"]).scenario
    plain_row = translate(recs["mbridge2511_GB300_LLAMA3_8B_FP8MX_8gpu"]).scenario
    assert (fsdp_row.training.fp8_params, plain_row.training.fp8_params) == (False, True)


@pytest.mark.parametrize(("precision", "hardware", "fp8_bytes"), [
    ("fp8_current", "h100_sxm5_80gb", 1),  # per-tensor: a uint8 parameter buffer
    ("fp8_delayed", "h100_sxm5_80gb", 1),
    ("mxfp8", "b200_180gb", 2),  # gathered in bf16 through the gradient buffer
])  # fmt: skip
def test_fp8_primary_weights_all_gather_in_their_byte(precision: str, hardware: str,
                                                      fp8_bytes: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The distributed optimizer's all-gather of the updated parameters (ZeRO-1, dp 8): with
    FP8 primary weights Megatron-Core's DDP gathers each per-tensor FP8 weight's uint8 buffer
    (param_and_grad_buffer.py l.921-923 at d98e8a64), MXFP8 ones in bf16 through the shared
    gradient buffer (l.1160-1178). Bytes by hand: the blocks' linear weights at fp8_bytes
    each, every other parameter (embeddings, norms, output layer) at 2 B."""
    from simtrain.costs import comm
    from simtrain.costs.workload import rank_work
    from simtrain.layout.step import resolve

    monkeypatch.setattr(comm, "dp_ns", lambda sc, step, op, size, *a, **k: int(size))
    over = {"runtime": "megatron_core", "parallelism": {"dp": 8, "zero_stage": 1},
            "training": {"global_batch": 8 * B}}  # fmt: skip
    plain = scenario(precision, hardware, **over)
    fp8 = scenario(precision, hardware, **{**over, "training": {"global_batch": 8 * B,
                                                                  "fp8_params": True}})  # fmt: skip
    gathered = {}
    for name, sc in (("plain", plain), ("fp8", fp8)):
        sm = estimate_memory(sc).stages[0]
        gathered[name] = rank_work(sc, resolve(sc), 0, sm.params, sm.trainable).post_opt_ns
    weights = L * sum(W_GROUPS)
    params = estimate_memory(plain).stages[0].params
    assert gathered["plain"] == 2 * params
    assert gathered["fp8"] == 2 * params - (2 - fp8_bytes) * weights
    # under overlap_param_gather the buckets split the same elements as the 16-bit ones'
    # (one bucketing of the param and grad buffers): the first, exposed gather is 1/n of the
    # FP8 bytes with n the 16-bit bucket count
    over_overlap = {**over, "runtime": {"name": "megatron_core", "overlap_param_gather": True}}
    sc = scenario(precision, hardware, **{**over_overlap, "training": {"global_batch": 8 * B,
                                                                         "fp8_params": True}})  # fmt: skip
    sm = estimate_memory(sc).stages[0]
    first, rest = rank_work(sc, resolve(sc), 0, sm.params, sm.trainable).pre_gather_ns
    n = comm.ddp_buckets(sc.parallelism.bucket_mb, 2 * params)[0]
    assert first == int(gathered["fp8"] / n)
    assert first + rest == gathered["fp8"]
