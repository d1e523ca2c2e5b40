"""Source conventions: how each source's runs are built (architecture, defaults it leaves
unsaid) and how it counts what it reports (FLOPs, memory), so that a prediction is compared like
with like (``shared/measured/formulas.md`` §1, §6)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from simtrain.apps.validate.records import Record
from simtrain.costs.compute import eq3_flops, eq7_flops, eq8_flops, mosaicml_flops, nanotron_flops
from simtrain.spec.scenario import Scenario
from simtrain.units import GIB


@dataclass(frozen=True, slots=True)
class SourceConvention:
    """How a source's runs are built and how it counts what it reports."""

    flops: str  # megatron_eq3 | korthikanti | mosaicml | nanotron | simtrain
    architecture: Mapping[str, Any]  # ModelSpec keys the source's code implies
    recompute_default: str = "none"  # when the record does not say
    recompute_note: str = ""
    vocab_default: int | None = None
    memory_includes_context: bool = False  # the measured peak includes the CUDA context
    memory_note: str = ""
    ddp_default: str = "torch"  # torch: 25 MB buckets overlapped with the backward | local
    precision_map: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # (to, why)
    memory_gb_unit: float = 1e9  # bytes in the source's "GB" (nanotron divides by 1024**3)
    memory_stage: int | None = None  # the pipeline stage whose peak the source reports (None: max)
    layer_split: str = "uniform"  # how the source's code splits layers over pipeline stages
    cross_entropy: str = "standard"  # the loss kernel (config.CROSS_ENTROPY)
    cross_entropy_note: str = ""
    zero3_max_live_params: int = 0  # ParallelSpec.zero3_max_live_params
    zero3_note: str = ""


# Megatron-LM GPT (2019-2022): GeLU 4h MLP, biases, LayerNorm, learned positions, tied
# embeddings, hidden and attention dropout 0.1 (arguments.py defaults), no flash attention
# (fused scale-mask-softmax over the s x s scores).
MEGATRON_GPT = {"mlp": "gelu", "positions": "learned", "bias": True, "norm": "layernorm",
                "tied_embeddings": True, "dropout": 0.1, "flash_attention": False}  # fmt: skip
# MosaicML MPT (llm-foundry benchmark configs): no biases (no_bias), LayerNorm, learned positions
# (llm-foundry's default learned_pos_emb: the records' params_b grows by (65536 - 2048) x 2560 =
# 0.16 B from the 2k to the 64k-token 3B run), tied embeddings, no dropout, flash attention.
MPT = {"mlp": "gelu", "positions": "learned", "bias": False, "norm": "layernorm",
       "tied_embeddings": True, "dropout": 0.0, "flash_attention": True}  # fmt: skip
# nanotron Llama (Ultra-Scale Playbook sweep): SwiGLU, RMSNorm, rotary, no bias, flash-attn.
# qkv_layout: nanotron models/llama.py CausalSelfAttention keeps the fused QKV tensor and a rotated
# K/V copy alive for flash attention's backward (memory.layer_saved_tensors).
NANOTRON_LLAMA = {"mlp": "swiglu", "positions": "rotary", "bias": False, "norm": "rmsnorm",
                  "dropout": 0.0, "flash_attention": True,
                  "qkv_layout": "fused_kv_copy"}  # fmt: skip
# HF BERT-large in the Transformers docs (eager attention, dropout 0.1, biases, learned positions).
HF_BERT = {"mlp": "gelu", "positions": "learned", "bias": True, "norm": "layernorm",
           "tied_embeddings": True, "dropout": 0.1, "flash_attention": False}  # fmt: skip

_EQ3_RECOMPUTE = ("full (the source's TFLOP/s follow Narayanan Eq. 3, which counts the "
                  "recompute forward)")  # fmt: skip

# Megatron-LM's own runs: Eq. 3 TFLOP/s, full recompute, vocabulary padded to 51,200, "local" DDP.
_MEGATRON_LM = SourceConvention(
    "megatron_eq3", MEGATRON_GPT, "full", _EQ3_RECOMPUTE, 51200, ddp_default="local"
)

SOURCES: dict[str, SourceConvention] = {
    "megatron_sc21": _MEGATRON_LM,
    "megatron_sc21_zero3": SourceConvention(
        "megatron_eq3",
        MEGATRON_GPT,
        "full",
        _EQ3_RECOMPUTE,
        51200,
        zero3_max_live_params=10**9,
        zero3_note="DeepSpeed ZeRO-3 config not reported: its default "
        "stage3_max_live_parameters, a billion gathered parameters live at most "
        "(deepspeed/runtime/zero/config.py)",
    ),  # fmt: skip
    "megatron_readme": _MEGATRON_LM,
    "megatron_v1_blog": _MEGATRON_LM,
    "korthikanti2022": SourceConvention(
        "korthikanti", MEGATRON_GPT, "full", "", 51200, ddp_default="local"
    ),
    "bloom": SourceConvention(
        "megatron_eq3",
        {**MEGATRON_GPT, "positions": "rotary", "dropout": 0.0},
        "full",
        _EQ3_RECOMPUTE,
        250880,
        # Megatron-DeepSpeed --partition-method type:transformer|embedding (the records' notes:
        # embedding + 5 layers on the first and last stage, 6 elsewhere)
        layer_split="embedding_as_layer",
    ),  # fmt: skip
    "mosaicml": SourceConvention(
        "mosaicml",
        MPT,
        cross_entropy="fused",
        cross_entropy_note="loss not reported: llm-foundry's default, loss_fn "
        "'fused_crossentropy' (models/mpt/modeling_mpt.py ComposerMPTCausalLM: "
        "flash_attn.losses.cross_entropy): 16-bit logits saved, no fp32 copy",
        precision_map={
            "amp_bf16": (
                "bf16",
                "Composer amp_bf16 with FSDP mixed_precision "
                "DEFAULT: FSDP gathers bf16 parameters over an fp32 sharded "
                "master and LPLayerNorm keeps activations in bf16 "
                "(simtrain bf16, not autocast over fp32 weights)",
            )
        },
    ),  # fmt: skip
    "nanotron": SourceConvention(
        "nanotron",
        NANOTRON_LLAMA,
        memory_note="nanotron 'GPU memory' = helpers.log_throughput's 'Mem Alloc (GB)', "
        "torch.cuda.max_memory_allocated() / 1024**3 on world rank 0 (GiB, first pipeline "
        "stage), compared with stage 0's peak without the CUDA context",
        memory_gb_unit=GIB,
        memory_stage=0,
        layer_split="compute_balanced",
        precision_map={
            "bf16": (
                "bf16_fp32_grads",
                "nanotron bf16 with accumulate_grad_in_fp32 (scripts/scaling_benchmarks.py "
                "ACCUMULATE_GRAD_IN_FP32 = True): fp32 gradient buffer for every parameter "
                "next to bf16 weights and grads, fp32 master and Adam states, 20 B/param "
                "(Ultra-Scale Playbook, 'Memory usage in Transformers' note on Nanotron)",
            )
        },
    ),  # fmt: skip
    "hf_transformers": SourceConvention(
        "simtrain",
        HF_BERT,
        memory_includes_context=True,
        memory_note="NVML device memory: compared with the CUDA context included",
    ),  # fmt: skip
}
GENERIC = SourceConvention("simtrain", {})


FLOP_CONVENTIONS = ("megatron_eq3", "korthikanti", "mosaicml", "nanotron", "simtrain")


def convention(key: str) -> SourceConvention:
    return SOURCES.get(key, GENERIC)


def record_convention(rec: Record) -> SourceConvention:
    """The source's convention, with the record's own ``measured.flops_convention`` and
    ``measured.memory_includes_context`` taking precedence (for users' runs)."""
    conv = convention(rec.source_key)
    fc = rec.measured.get("flops_convention")
    if isinstance(fc, str) and fc in FLOP_CONVENTIONS:
        conv = replace(conv, flops=fc)
    mc = rec.measured.get("memory_includes_context")
    if isinstance(mc, bool):
        conv = replace(conv, memory_includes_context=mc)
    return conv


# ---------------------------------------------------------------------------------------------
# FLOP conventions (formulas.md §1)


def source_flops(sc: Scenario, conv: SourceConvention, kind: str) -> float:
    """FLOPs per step in a source's convention. ``kind``: ``tflops`` (what its TFLOP/s count),
    ``model`` (MFU numerator) or ``hardware`` (HFU numerator)."""
    m, t = sc.model, sc.training
    args = (t.global_batch, t.seq_len, m.layers, m.hidden, m.vocab)
    f = conv.flops
    if f == "megatron_eq3":
        return eq3_flops(*args) if kind in ("tflops", "hardware") else eq7_flops(*args)
    if f == "korthikanti":
        if kind == "model":
            return eq7_flops(*args)
        return {"full": eq3_flops, "selective": eq8_flops}.get(t.recompute, eq7_flops)(*args)
    if f == "mosaicml":
        return mosaicml_flops(sc, hardware=kind == "hardware")
    if f == "nanotron":
        return nanotron_flops(sc)
    from simtrain.costs.compute import hardware_flops_per_step, model_flops_per_step

    return model_flops_per_step(sc) if kind == "model" else hardware_flops_per_step(sc)
