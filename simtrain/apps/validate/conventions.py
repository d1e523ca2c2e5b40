"""Source conventions: how each source's runs are built (architecture, defaults it leaves
unsaid) and how it counts what it reports (FLOPs, memory), so that a prediction is compared like
with like (``shared/measured/formulas.md`` §1, §6)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from simtrain.apps.importers.nanotron import LOSS_NOTE as NANOTRON_LOSS_NOTE
from simtrain.apps.validate.records import Record
from simtrain.costs.compute import eq3_flops, eq7_flops, eq8_flops, mosaicml_flops, nanotron_flops
from simtrain.spec.scenario import Scenario
from simtrain.units import GIB


@dataclass(frozen=True, slots=True)
class SourceConvention:
    """How a source's runs are built and how it counts what it reports."""

    flops: str  # one of FLOP_CONVENTIONS
    architecture: Mapping[str, Any]  # ModelSpec keys the source's code implies
    recompute_default: str = "none"  # when the record does not say
    recompute_note: str = ""
    vocab_default: int | None = None
    memory_includes_context: bool = False  # the measured peak includes the CUDA context
    memory_note: str = ""
    ddp_default: str = "torch"  # torch: 25 MiB buckets overlapped with the backward | local
    precision_map: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # (to, why)
    memory_gb_unit: float = 1e9  # bytes in the source's "GB" (nanotron divides by 1024**3)
    memory_stage: int | None = None  # the pipeline stage whose peak the source reports (None: max)
    layer_split: str = "uniform"  # how the source's code splits layers over pipeline stages
    cross_entropy: str = "standard"  # the loss kernel (config.CROSS_ENTROPY)
    cross_entropy_note: str = ""
    loss_upcast: bool = True  # the loss on an fp32 copy of the logits (TrainingSpec.loss_upcast)
    # (precision, why) when the record names no number format (absent or "mixed precision")
    precision_unstated: tuple[str, str] | None = None
    # parallelism keys the source's runs imply where the record is silent, and why
    parallel_defaults: Mapping[str, Any] = field(default_factory=dict)
    parallel_note: str = ""
    # ... for a fine-tuning record (``training.finetune``), when the source's fine-tuning recipe
    # differs (None: parallel_defaults), and why
    finetune_parallel_defaults: Mapping[str, Any] | None = None
    finetune_parallel_note: str = ""
    # ... for a record that fine-tunes every weight (SFT), where the source's SFT runs differ
    # from its LoRA runs (None: finetune_parallel_defaults), and why; and the interleaved
    # schedule its SFT pipelines ran (layers per virtual stage, why), as pp_interleaved
    sft_parallel_defaults: Mapping[str, Any] | None = None
    sft_parallel_note: str = ""
    sft_pp_interleaved: tuple[int, str] | None = None
    # Why a fine-tuning record in an FP8 precision keeps FP8 primary weights
    # (--fp8-param-gather: training.fp8_params) where the record is silent ("": it does not)
    finetune_fp8_params: str = ""
    ddp_note: str = ""  # why ddp_default, when it is "local" (default: Megatron's --DDP-impl)
    # simtrain recompute modes the source's own mode of that name does not match: mode -> why
    recompute_unexpressible: Mapping[str, str] = field(default_factory=dict)
    # The peak an FP8 run's MFU is divided by: "bf16" (torchtitan, NeMo: model FLOPs over the
    # dense bf16 peak) or "fp8" (llm-foundry: its FP8 rows divide by the FP8 peak).
    fp8_mfu_peak: str = "bf16"
    # The CUDA context as the source measured it on its own software stack (MiB; None: the
    # hardware profile's cuda_context_mib), for sources whose memory includes it, and why.
    cuda_context_mib: float | None = None
    cuda_context_note: str = ""
    # The micro-batch of a pipeline-parallel record that names none: "one" (1 sequence) or
    # "local_over_pp" (the local batch split into pp micro-batches, the source's default count).
    pp_micro_batch: str = "one"
    pp_micro_batch_note: str = ""
    # The framework compiles the loss with the model when it compiles (torchtitan after
    # 9dec370a; :func:`_torchtitan_commit`).
    compiled_loss: bool = True
    # Runtime keys the source's framework sets unlike the runtime profile it runs under
    # (runtime_of), and why: Meta's production framework for Llama 3 under torchtitan's profile
    # fuses its element-wise ops (no torchtitan eager default).
    runtime_overrides: tuple[tuple[str, Any], ...] = ()
    runtime_overrides_note: str = ""
    # The architecture of a model the source names (``model.name``; regex matched from its start,
    # ignoring case) when its rows differ in architecture: (pattern, ModelSpec keys over
    # ``architecture``, why); the first match wins (:func:`convention_for`).
    named_architectures: tuple[tuple[str, Mapping[str, Any], str], ...] = ()
    architecture_note: str = ""  # the named architecture's why, set by convention_for
    # LoRA as the source's fine-tuning recipe sets it where a LoRA record names no rank or
    # target: (rank, alpha, target modules, why); None: such a record is not expressible.
    lora_default: tuple[int, float, tuple[str, ...], str] | None = None
    # A pipeline-parallel record silent on interleaving ran the interleaved schedule with this
    # many layers per virtual stage, and why (None: the schedule the record or its flags say).
    pp_interleaved: tuple[int, str] | None = None
    # Megatron flags the source's launcher adds to every run where they apply (overlaps:
    # apps.importers.megatron.OVERLAP_FLAGS; --grad-reduce-in-bf16), and why
    # (native.megatron_flags applies each only where the layout has something for it to do).
    launch_flags: tuple[str, ...] = ()
    launch_note: str = ""
    # ... for a LoRA record, when the source's LoRA launcher differs (None: launch_flags), and why
    lora_launch_flags: tuple[str, ...] | None = None
    lora_launch_note: str = ""
    # The optimizer's storage where the source's optimizer is not a plain fp32 one
    # (training.optimizer_state_dtype, training.master_weights, why), but for LoRA records
    # (whose recipes may use another optimizer); per model name (regex from its start, ignoring
    # case; the first match wins), as ``named_architectures``.
    optimizer_storage: tuple[str, str, str] | None = None
    named_optimizer_storage: tuple[tuple[str, tuple[str, str, str]], ...] = ()
    # The optimizer the source's recipe trains a model with where the record does not say it
    # (training.optimizer, why), per model name as ``named_optimizer_storage``.
    named_optimizer: tuple[tuple[str, tuple[str, str]], ...] = ()
    optimizer: tuple[str, str] | None = None
    # Megatron-Core's FLOP count weighs a gated MLP 3/2 only when its activation is SiLU
    # (Megatron-Bridge flop_utils.py gated_linear_multiplier): the model names (regex from its
    # start, ignoring case) whose framework builds their gated MLP with another activation,
    # counted at 1 (``flops_glu``, megatron_core_flops' ``glu``).
    plain_glu_names: tuple[str, ...] = ()
    flops_glu: float = 1.5  # the gated MLP's weight in the count (1.0: a plain_glu_names model)
    # The count's attention scores over each packed sample (training.packed_sample_len), not the
    # row: NeMo 24.07's fine-tuning table (megatron_core_flops ``per_sample``)
    flops_per_sample: bool = False
    # A fine-tuning record's (``training.finetune``) samples where the source's fine-tuning runs
    # pack short samples into each row and the record gives no ``training.packed_sample_len``:
    # (tokens a sample, why); None: one sequence a row.
    finetune_packed_sample_len: tuple[int, str] | None = None


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
# Megatron-Core GPT (Megatron-LM 937571cfd4, megatron/training/arguments.py): Megatron's GPT
# defaults (learned_absolute positions, GeLU, biases, LayerNorm, hidden and attention dropout 0.1)
# with --transformer-impl transformer_engine (the default), whose DotProductAttention runs fused
# (flash) attention, and an untied output layer: the README's model sizes (177, 314 and 462 B at
# vocab 131,072) are 12·l·h² plus two V·h tables, not one (tied: 175.5, 311.4, 459.0 B).
MCORE_GPT = {**MEGATRON_GPT, "flash_attention": True, "tied_embeddings": False}
# Llama 3 as torchtitan (torchtitan/models/llama/model.py), Megatron-Core and Meta build it:
# SwiGLU, RMSNorm, rotary, no biases, untied output layer, no dropout, flash attention (SDPA).
LLAMA3 = {"mlp": "swiglu", "positions": "rotary", "bias": False, "norm": "rmsnorm",
          "tied_embeddings": False, "dropout": 0.0, "flash_attention": True}  # fmt: skip
# Llama 2 / 3 / 3.1 as NeMo 2.0 and Megatron-Bridge configure Megatron-Core for them: NeMo
# (NVIDIA/NeMo 8cfedd72) nemo/collections/llm/gpt/model/llama.py LlamaConfig l.67-75 and
# Llama3Config l.140-155; Megatron-Bridge (NVIDIA-NeMo/Megatron-Bridge 00b7660b)
# src/megatron/bridge/models/llama/llama_provider.py LlamaModelProvider l.42-50 and
# Llama3ModelProvider l.115-130: normalization "RMSNorm", activation_func F.silu with
# gated_linear_unit True (SwiGLU), position_embedding_type "rope", add_bias_linear False,
# share_embeddings_and_output_weights False, hidden and attention dropout 0.0 (LLAMA3's keys; the
# performance rows run Transformer Engine's fused attention).
_NEMO_LLAMA = (
    (r"llama ?[23]",
     LLAMA3,
     "model LLAMA*: the framework's Llama config (NeMo llm/gpt/model/llama.py LlamaConfig, "
     "Megatron-Bridge models/llama/llama_provider.py LlamaModelProvider): SwiGLU, RMSNorm, rope, "
     "no biases, untied output layer, no dropout"),
)  # fmt: skip
# HF BERT-large in the Transformers docs (eager attention, dropout 0.1, biases, learned positions).
HF_BERT = {"mlp": "gelu", "positions": "learned", "bias": True, "norm": "layernorm",
           "tied_embeddings": True, "dropout": 0.1, "flash_attention": False}  # fmt: skip

_EQ3_RECOMPUTE = ("full (the source's TFLOP/s follow Narayanan Eq. 3, which counts the "
                  "recompute forward)")  # fmt: skip

# The loss of every Megatron-LM and Megatron-DeepSpeed run (and NeMo's on Megatron-Core): the
# vocab-parallel cross-entropy (Megatron-LM mpu/cross_entropy.py since 2019, the same in place
# fp32 kernel at d98e8a64 core/tensor_parallel/cross_entropy.py; Megatron-DeepSpeed keeps
# mpu/cross_entropy.py), not PyTorch's (spec.scenario.CROSS_ENTROPY).
_MEGATRON_LOSS = "vocab_parallel"
# Megatron-Core r0.8 and NeMo 24.07 (2024) ran Transformer Engine 1.x, before its cached dummy
# weight gradients (get_dummy_wgrad: TE ba5dc5dde, 2025-04, release 2.3; runtime te_dummy_wgrad).
_TE1_NOTE = ("Transformer Engine 1.x (2024), before its cached dummy weight gradients "
             "(module/base.py get_dummy_wgrad, TE 2.3)")  # fmt: skip

# Megatron-LM's own runs: Eq. 3 TFLOP/s, full recompute, vocabulary padded to 51,200, "local" DDP.
# Their architecture is Megatron's GPT defaults, which the Megatron importer gives to flags that
# do not change it (validate's Megatron records go through it: apps/validate/native.py).
_MEGATRON_LM = SourceConvention("megatron_eq3", {}, "full", _EQ3_RECOMPUTE, 51200,
                                ddp_default="local", cross_entropy=_MEGATRON_LOSS)  # fmt: skip

# DeepSpeed's pipeline engine reduces the gradients once, after the last micro-batch's backward
# (deepspeed/runtime/pipe/schedule.py TrainSchedule.steps: ReduceTiedGrads, ReduceGrads,
# OptimizerStep at step total_steps - 1): not overlapped with the backward, as Megatron's "local".
_DS_PIPE_DDP = ("DDP implementation: DeepSpeed's pipeline engine reduces the gradients after the "
                "last backward (pipe/schedule.py TrainSchedule: ReduceGrads at the last step), as "
                "one buffer")  # fmt: skip

# BLOOM's Megatron-DeepSpeed runs (tr11): Megatron's GPT with ALiBi positions (every tr11 script,
# bigscience 0b536e8 to 9e64edec: --position-embedding-type alibi; Megatron-DeepSpeed ae6277f5
# megatron/model/transformer.py l.283-322 adds the bias inside the scores' baddbmm) and
# Megatron's dropout defaults, hidden and attention 0.1: no tr11 script sets
# --hidden-dropout / --attention-dropout (bigscience 8aff319 and a16f0ea tr11-200B-ml.slurm, the
# 02-24/25 runs; 9e64edec tr11-176B-ml.slurm), Megatron-DeepSpeed ae6277f5 megatron/arguments.py
# l.452-455 defaults them to 0.1, and tr11-176B-ml/README.md (9e64edec l.308-313) says so: "The
# default Megatron-LM dropout settings are inherited". With full recompute this is the embedding
# dropout's mask kept per micro-batch in flight and the attention dropout in the recompute.
# Every tr11 script from bigscience 0b536e8 (02-06) on passes --embed-layernorm (217dc6c for the
# 02-17 runs, 8aff319 / a16f0ea, tr11-176B-ml.slurm): a LayerNorm in VocabParallelEmbedding
# (Megatron-DeepSpeed ae6277f5 mpu/layers.py l.191-192, 239-240), outside the checkpointed
# layers, so the first stage keeps its input for every micro-batch in flight.
_TR11_ARCH = {**MEGATRON_GPT, "positions": "alibi", "embedding_norm": True}

# BLOOM training chronicles (bigscience-workshop/bigscience 9e64edec,
# train/tr11-176B-ml/chronicles-prequel.md), Megatron-DeepSpeed on Jean Zay, Feb 2022. The
# convention changed twice within the chronicle; :func:`convention_for` picks it by the section
# date in the record id (bloom_prequel_MM-DD_...):
# - before 02-21 the TFLOP/s came from the approximate estimator (FLOPS "megatron_ds_2021");
#   Megatron-DeepSpeed ae6277f5 (2022-02-21, "Replace approximate formula with exact one") moved
#   it to Eq. 3 ("from here on all the TFLOPs reports will be about 3% higher");
# - from 02-28 the runs use the BF16 optimizer ("accumulate gradients in fp32 ... 4bytes x params
#   and it's not sharded": bf16_fp32_grads) and --pp-partition-method 'type:transformer|embedding'
#   (Megatron-DeepSpeed 00f5f889, 2022-02-28; before it gpt_model.py hard-coded 'type:transformer',
#   which splits the decoder layers only: simtrain's uniform split).
_BLOOM_CHRONICLES = SourceConvention(
    "megatron_eq3",
    _TR11_ARCH,  # as "bloom" below
    "full",
    _EQ3_RECOMPUTE,
    250880,
    cross_entropy=_MEGATRON_LOSS,
    memory_includes_context=True,
    memory_note="BLOOM chronicles 'Mem' = nvidia-smi memory of the first/last stage's GPUs "
    "(chronicles-prequel.md: 'max memory used by the first (last) nodes with the word embedding "
    "matrix'): device level, so compared with the CUDA context included and against the largest "
    "stage; the author's 'GB' rounds nvidia-smi's MiB and is read as 1e9 B (7 % lower than if it "
    "were GiB); NCCL's connection buffers of the runtime's communicators are counted "
    "(costs.nccl_memory), the caching allocator's unused reserve is not modelled",
    ddp_default="local",
    ddp_note=_DS_PIPE_DDP,
    # chronicles-prequel.md (9e64edec, section '200B'): "40GB A100 takes 1573MiB for cuda kernels
    # ... `python -c "import torch; import time; torch.ones(1).cuda(); time.sleep(30)"` + check
    # `nvidia-smi` output" (the team's stack then: pt-1.10.1 / cuda 11.3, jz/envs/README.md)
    cuda_context_mib=1573,
    cuda_context_note="CUDA context: 1573 MiB, the chronicle's own nvidia-smi reading of "
    "'import torch; torch.ones(1).cuda()' on an A100 (chronicles-prequel.md, '200B'), not the "
    "hardware profile's 1024 MiB estimate",
)
_BF16_OPTIMIZER = (
    "bf16_fp32_grads",
    "BLOOM chronicles from 02-28: the BF16 optimizer accumulates gradients in fp32, '4bytes x "
    "params and it's not sharded' (chronicles-prequel.md): bf16_fp32_grads",
)


# NeMo 24.07's LoRA fine-tuning (the performance summary's LoRA rows): NVIDIA/NeMo 070a0bb1
# examples/nlp/language_modeling/tuning/conf/megatron_gpt_finetuning_config.yaml l.103-110,
# peft.lora_tuning: target_modules ['attention_qkv'] (the fused Q/K/V linear), adapter_dim 32,
# alpha = adapter_dim, adapter_dropout 0.0.
_NEMO_LORA = (32, 32.0, ("q", "k", "v"),
              "NeMo's fine-tuning config (megatron_gpt_finetuning_config.yaml lora_tuning, "
              "070a0bb1): rank 32, alpha 32, on the fused Q/K/V linear")  # fmt: skip


# The Megatron flags of what NeMo's and Megatron-Bridge's launchers turn on for their performance
# runs (each applied only where the layout has something for it: native.launch_flags).
_NEMO_LAUNCH_FLAGS = ("--overlap-grad-reduce", "--overlap-param-gather", "--tp-comm-overlap",
                      "--grad-reduce-in-bf16")  # fmt: skip


# NeMo's and Megatron-Bridge's fine-tuning rows run packed SQuAD: NeMo 24.07's performance
# summary titles its table "SQuAD v1.1 packed to 4096" (its launcher's H100 fine-tuning examples,
# NeMo-Framework-Launcher 6a76374e examples/peft/llama/h100/*.sh, all set
# data.train_ds.packed_sequence=true); Megatron-Bridge's SFT and PEFT recipes
# (NVIDIA-NeMo/Megatron-Bridge 067f987d src/megatron/bridge/recipes/common.py l.163-201 and
# l.262-300) build default_squad_config(seq_length, enable_offline_packing=True)
# (recipes/utils/dataset_utils.py l.117-134: pad_to_max_length, PackedSequenceSpecs
# packed_sequence_size = seq_length), whose rows keep each sample's bounds (cu_seqlens) and run
# THD attention within each sample; the LoRA rows' FLOPs per token are flop_utils' packed-SQuAD
# branch (l.983-1007), 278 of 278.1-279.1 GFLOP, not a 4,096-token causal row's 294. A sample
# is the prompt "Context: {context} Question: {question} Answer:" and its answer
# (data/sources/hf_adapters.py l.64-67). Its length is an estimate, not fitted: SQuAD v1.1's
# train split is 79,346,108 bytes over 87,599 examples on its Hugging Face card
# (rajpurkar/squad dataset_info: 906 B an example, id, title and answer offsets included), about
# 870 characters of prompt and answer, ~200 tokens at ~4.4 characters a token of English prose.
# Attention is the only cost it sets (the linears see the whole 4,096-token row): the
# Megatron-Bridge rows' tokens/s move less than a point from 100 to 400 tokens.
_SQUAD_PACKED = (
    200,
    "fine-tuning on packed SQuAD (NeMo 24.07: 'SQuAD v1.1 packed to 4096'; Megatron-Bridge "
    "recipes/common.py default_squad_config(enable_offline_packing=True)): samples of ~200 "
    "tokens (SQuAD v1.1's 906 B an example), attention within each",
)


def _nemo_family(flops: str, parallel_note: str, launch_note: str, finetune_note: str = "",
                 lora_launch_note: str = "") -> SourceConvention:  # fmt: skip
    """NeMo and Megatron-Bridge: Megatron-Core with flash attention, no dropout, the Llama rows
    built as Llama by name (:data:`_NEMO_LLAMA`), the distributed optimizer (ZeRO-1), sequence
    parallelism whenever tp > 1 (pretraining; ``finetune_note``: why not when fine-tuning),
    the launchers' overlaps of the DP and TP communication and bf16 gradient reduction
    (:data:`_NEMO_LAUNCH_FLAGS`; none for LoRA when ``lora_launch_note`` says why) and NeMo's
    LoRA recipe; the FLOP convention (``flops``) and the sources of the implied settings
    (``parallel_note``, ``launch_note``) differ."""
    return SourceConvention(flops, {"flash_attention": True, "dropout": 0.0},
                            cross_entropy=_MEGATRON_LOSS, named_architectures=_NEMO_LLAMA,
                            parallel_defaults={"zero_stage": 1, "sequence_parallel": True},
                            parallel_note=parallel_note,
                            finetune_parallel_defaults={"zero_stage": 1} if finetune_note else None,
                            finetune_parallel_note=finetune_note, lora_default=_NEMO_LORA,
                            launch_flags=_NEMO_LAUNCH_FLAGS, launch_note=launch_note,
                            lora_launch_flags=() if lora_launch_note else None,
                            lora_launch_note=lora_launch_note,
                            finetune_packed_sample_len=_SQUAD_PACKED)  # fmt: skip


# NeMo 24.07 (NeMo 1.x under NeMo-Framework-Launcher 24.07, 8325688d) trains with Apex's
# DistributedFusedAdam (launcher conf/training/*/*.yaml optim.name distributed_fused_adam; the
# SFT config too, conf/peft/llama/sft.yaml): NeMo's setup_optimization
# (nemo/collections/nlp/models/language_modeling/megatron_base_model.py at r2.0.0rc1 l.775-807)
# keeps no fp32 master copy when the optimizer's dtype is the bf16 model's (store_params=False)
# and only each master weight's low 16 bits otherwise (store_param_remainders=True); Apex
# (apex/contrib/optimizers/distributed_fused_adam.py at f9f19d5c l.449-476) allocates exp_avg
# and exp_avg_sq in that dtype (spec.precision.with_optimizer_storage).
_NEMO_DFA = ("fp32", "remainder", "NeMo 24.07 trains with Apex DistributedFusedAdam (launcher "
             "optim.name distributed_fused_adam, dtype fp32 by default): fp32 states and each "
             "fp32 master weight's low 16 bits beside the bf16 weight (megatron_base_model.py "
             "r2.0.0rc1 l.775-807 store_param_remainders=True)")  # fmt: skip
_NEMO_DFA_BF16 = ("bf16", "none", "NeMo-Framework-Launcher 24.07 conf/training/nemotron/"
                  "nemotron_340b.yaml l.158-165: distributed_fused_adam with dtype bf16: bf16 "
                  "Adam states and no master copy (store_params=False: megatron_base_model.py "
                  "r2.0.0rc1 l.775-807; apex distributed_fused_adam.py f9f19d5c l.449-476)")  # fmt: skip


# Megatron-Bridge's DeepSeek-V3 recipe (00b7660b src/megatron/bridge/recipes/deepseek/
# deepseek_v3.py l.272-276): Megatron-Core's precision-aware optimizer with fp32 main parameters
# and bf16 moments.
_MBRIDGE_DSV3_OPT = ("bf16", "precision", "Megatron-Bridge's DeepSeek-V3 recipe: the "
                     "precision-aware optimizer, exp_avg / exp_avg_sq in bf16, fp32 main "
                     "parameters (recipes/deepseek/deepseek_v3.py l.272-276 at 00b7660b)")  # fmt: skip


# Megatron-Bridge's Kimi K2 recipes train with Muon: recipes/kimi/h100/kimi_k2.py (067f987d)
# l.200 ``_apply_kimi_k2_optimizer(cfg, "muon")`` -> recipes/utils/optimizer_utils.py
# ``distributed_muon_with_cosine_annealing``: optimizer "dist_muon" (the layer-wise distributed
# optimizer), 5 Newton-Schulz steps, tp_mode blockwise, Adam for the embeddings, the output
# layer and the vectors; the perf recipes (perf_recipes/kimi/*/kimi_k2.py) build on it. The
# performance page: "Muon optimizer was used for pre-training Kimi-K2".
_MBRIDGE_KIMI_MUON = ("muon", "optimizer not reported: Muon, Megatron-Bridge's Kimi K2 recipe "
                      "(recipes/kimi/h100/kimi_k2.py l.200 at 067f987d: dist_muon, 5 "
                      "Newton-Schulz steps, blockwise TP; Adam for the embeddings, the output "
                      "layer and the vectors)")  # fmt: skip


SOURCES: dict[str, SourceConvention] = {
    "megatron_sc21": _MEGATRON_LM,
    "megatron_sc21_zero3": SourceConvention(
        "megatron_eq3",
        MEGATRON_GPT,
        "full",
        _EQ3_RECOMPUTE,
        51200,
        cross_entropy=_MEGATRON_LOSS,
        # the ZeRO-3 config is not reported: DeepSpeed's defaults (stage3_max_live_parameters 1e9,
        # reduce_bucket_size, overlap_comm), from the DeepSpeed importer (apps/validate/native.py)
    ),  # fmt: skip
    "megatron_readme": _MEGATRON_LM,
    "megatron_v1_blog": _MEGATRON_LM,
    "korthikanti2022": SourceConvention(
        "korthikanti", {}, "full", "", 51200, ddp_default="local", cross_entropy=_MEGATRON_LOSS
    ),
    "bloom": SourceConvention(
        "megatron_eq3",
        _TR11_ARCH,
        "full",
        _EQ3_RECOMPUTE,
        250880,
        cross_entropy=_MEGATRON_LOSS,
        # Megatron-DeepSpeed --partition-method type:transformer|embedding (the records' notes:
        # embedding + 5 layers on the first and last stage, 6 elsewhere)
        layer_split="embedding_as_layer",
    ),  # fmt: skip
    "mosaicml": SourceConvention(
        "mosaicml",
        MPT,
        # scripts/train/benchmarking/README.md: the amp_fp8 rows' MFU is over the FP8 peak
        # (measured/published_runs.yaml notes of mpt_h100_80gb_amp_fp8_*).
        fp8_mfu_peak="fp8",
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
    # nanotron's Llama architecture is the importer's (apps/importers/nanotron.py _model), which
    # validate's nanotron records go through (apps/validate/native.py).
    "nanotron": SourceConvention(
        "nanotron",
        {},
        memory_note="nanotron 'GPU memory' = helpers.log_throughput's 'Mem Res (GB)', "
        "torch.cuda.max_memory_reserved() / 1024**3 on world rank 0 (GiB, first pipeline "
        "stage; the sweep's CSV, measured/README.md), compared with stage 0's peak without the "
        "CUDA context; its 'Mem Alloc (GB)' (max_memory_allocated after log_memory's reset that "
        "follows the forward / backward) with stage 0's allocated bytes at the optimizer step",
        memory_gb_unit=GIB,
        memory_stage=0,
        layer_split="compute_balanced",
        cross_entropy="sharded",
        cross_entropy_note=NANOTRON_LOSS_NOTE,
        runtime_overrides=(("nccl_record_streams", True),),
        runtime_overrides_note="the sweep's environment, PyTorch 2.1 (run_multinode.sh at "
        "67c5ebb6: its conda env '2-1-cu121', no TORCH_NCCL_AVOID_RECORD_STREAMS), calls "
        "recordStream on the NCCL collectives' inputs (runtimes/nanotron.yaml [rstr])",
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
    "bloom_chronicles": _BLOOM_CHRONICLES,
    # MT-NLG 530B (Smith et al. 2022 §2.4): Megatron-DeepSpeed, 126 TFLOP/s per GPU at 60.1 s per
    # step on 2240 A100s, which is Eq. 3 with full recompute and the GPT-2 vocabulary padded to
    # 51,200 (tests/test_validate.py).
    "mtnlg": SourceConvention(
        "megatron_eq3",
        {},  # Megatron's GPT defaults, from the Megatron importer (apps/validate/native.py)
        "full",
        _EQ3_RECOMPUTE,
        51200,
        cross_entropy=_MEGATRON_LOSS,
        ddp_default="local",
        ddp_note=_DS_PIPE_DDP,
        precision_unstated=(
            "fp16",
            "16-bit format not stated ('mixed precision'): fp16; fp16 and bf16 have the same "
            "A100 peak (312 TFLOP/s) and the same bytes, so the prediction is the same with either",
        ),
    ),  # fmt: skip
    # Megatron-Core r0.8.0 scaling runs (Megatron-LM README at 937571cfd4, 'Training Speed and
    # Scalability'): TFLOP/s and MFU from training.py num_floating_point_operations (model FLOPs).
    "megatron_core": SourceConvention(
        "megatron_core",
        MCORE_GPT,
        "none",
        "none (Megatron-LM's default: no --recompute-granularity)",
        131072,  # the README: "All models use a vocabulary size of 131,072"
        cross_entropy=_MEGATRON_LOSS,
        runtime_overrides=(("te_dummy_wgrad", False),),
        runtime_overrides_note=_TE1_NOTE,
        # The README's runs overlap "pipeline-parallel communication (enabled by default)", which
        # Megatron runs only under the interleaved schedule (megatron/training/arguments.py
        # l.254-277 at 937571cfd4: without --num-layers-per-virtual-pipeline-stage it sets
        # overlap_p2p_comm False). The 462B row's 112 layers on pp 16 (7 per stage) split
        # evenly only as 1 layer per virtual stage; the same is taken for every pp > 1 row.
        pp_interleaved=(
            1,
            "the README overlaps pipeline communication, which Megatron runs only "
            "interleaved (arguments.py l.254-277): 1 layer per virtual stage, the "
            "only even split of the 462B row's 7 layers per stage",
        ),
        precision_unstated=(
            "bf16",
            "precision not stated: bf16 (the README's TFLOP/s / MFU = 989 TFLOP/s, the H100's "
            "dense BF16 peak; FP8's is 1979)",
        ),
        parallel_defaults={"sequence_parallel": True, "zero_stage": 1},
        parallel_note="the README's runs use --tp-comm-overlap, which requires "
        "--sequence-parallel, and --overlap-param-gather, which requires "
        "--use-distributed-optimizer (megatron/training/arguments.py at 937571cfd4, lines 199 "
        "and 279): sequence parallel, optimizer states sharded (ZeRO-1)",
    ),  # fmt: skip
    # NeMo 24.07 performance summary: "Model TFLOP/sec/GPU" is Megatron-Core's
    # num_floating_point_operations (the pretraining rows' TFLOP/s ÷ tokens/s equal the formula's
    # FLOPs per token within 0.1 %: tests/test_validate_families.py). Megatron-Bridge (NeMo 25.11)
    # counts half the s² attention (causal): src/megatron/bridge/training/utils/flop_utils.py at
    # 00b7660b, "Only half of the attention matrix is non-zero". Models differ per row (GPT-3,
    # Llama 2/3, Nemotron): the Llama rows get the frameworks' Llama config by model name
    # (_NEMO_LLAMA); the GPT-3 and Nemotron rows are skipped (shape not on the page).
    "nemo": replace(
        _nemo_family(
            "megatron_core",
            # NeMo's recipes train with Megatron-Core's distributed optimizer (ZeRO-1):
            # nemo/collections/llm/recipes/optim/adam.py distributed_fused_adam_with_cosine_annealing
            # use_distributed_optimizer=True (NVIDIA/NeMo 8cfedd72); only LoRA turns it off.
            # The 24.07 performance runs are NeMo-Framework-Launcher's (6a76374e, 2024-07-31):
            # launcher_scripts/conf/training/llama/llama2_70b.yaml sequence_parallel: true (l.126),
            # ub_tp_comm_overlap: true (l.136), distributed_fused_adam overlap_grad_sync and
            # overlap_param_sync: true (l.151-159; llama2_13b.yaml at tp 1 the same, l.150-158),
            # launched by examples/training/llama/h100/llama2_{13b,70b}_fp8.sh with
            # +training.model.optim.grad_sync_dtype=bf16; fine-tuning: conf/peft/llama/sft.yaml
            # sequence_parallel: False (l.106), the same optimizer overlaps and bf16 (l.250-260).
            "NeMo's recipes use Megatron-Core's distributed optimizer "
            "(recipes/optim/adam.py use_distributed_optimizer=True); NeMo-Framework-Launcher's "
            "pretraining configs turn on sequence parallelism with tp > 1 "
            "(conf/training/llama/llama2_70b.yaml)",
            "NeMo-Framework-Launcher 6a76374e: conf/training/llama/llama2_*.yaml (ub_tp_comm_overlap, "
            "distributed_fused_adam overlap_grad_sync / overlap_param_sync) and "
            "examples/training/llama/h100/llama2_*_fp8.sh (optim.grad_sync_dtype=bf16)",
            finetune_note="NeMo-Framework-Launcher's fine-tuning config (conf/peft/llama/sft.yaml: "
            "distributed_fused_adam, sequence_parallel False; the H100 examples at these rows' "
            "layouts, 7b_1node.sh at tp 1 and 70b_1node_lora.sh at tp 2, leave it off; "
            "70b_2node.sh at tp 4 turns it on)",
            lora_launch_note="NeMo-Framework-Launcher's LoRA example "
            "(examples/peft/llama/h100/70b_1node_lora.sh: optim fused_adam, the overlaps and "
            "grad_sync_dtype removed; ub_tp_comm_overlap needs sequence parallelism, which it "
            "leaves off): no launcher flags",
        ),
        optimizer_storage=_NEMO_DFA,
        named_optimizer_storage=((r"nemotron-340b", _NEMO_DFA_BF16),),
        # The fine-tuning table's runs are NeMo-Framework-Launcher's H100 examples at their
        # layouts (6a76374e examples/peft/llama/h100/*.sh): every one sets
        # ++peft.model.fp8_params=true and data.train_ds.packed_sequence=true; the SFT ones
        # interleave one layer per virtual stage (13b_1node.sh pp 4 vp 10, 70b_2node.sh pp 4
        # vp 20, with overlap_p2p_comm) and 70b_2node.sh at tp 4 turns sequence parallelism on
        # (with ub_tp_comm_overlap); the LoRA ones do neither (70b_1node_lora.sh: tp 2, pp 4).
        flops_per_sample=True,
        sft_parallel_defaults={"zero_stage": 1, "sequence_parallel": True},
        sft_parallel_note="NeMo-Framework-Launcher's H100 SFT examples (6a76374e "
        "examples/peft/llama/h100/70b_2node.sh at tp 4: sequence_parallel=true, "
        "ub_tp_comm_overlap=true; distributed_fused_adam, conf/peft/llama/sft.yaml)",
        sft_pp_interleaved=(
            1,
            "NeMo-Framework-Launcher's H100 SFT examples interleave one "
            "layer per virtual stage: 13b_1node.sh pp 4 vp 10, 70b_2node.sh pp 4 "
            "vp 20 (6a76374e)",
        ),
        finetune_fp8_params="NeMo-Framework-Launcher's H100 fine-tuning examples keep the "
        "weights in FP8 (++peft.model.fp8_params=true in every examples/peft/llama/h100/*.sh, "
        "6a76374e)",
        runtime_overrides=(("te_dummy_wgrad", False),),
        runtime_overrides_note=_TE1_NOTE,
    ),
    # Megatron-Bridge's Llama 3 pretraining recipe (00b7660b
    # src/megatron/bridge/recipes/llama/llama3.py _llama3_common, l.553-561):
    # DistributedDataParallelConfig(use_distributed_optimizer=True, overlap_grad_reduce=True,
    # overlap_param_gather=True, ...), which the performance configs
    # (scripts/performance/configs/llama/) keep; the 405B recipe adds
    # CommOverlapConfig(tp_comm_overlap=True) (llama3.py l.415-418), which the performance
    # configs keep but for NVFP4 (llama31_llm_pretrain.py l.85-86, 120-121, 150-151); the
    # performance configs reduce gradients in bf16 (llama3_llm_pretrain.py l.73-74,
    # llama31_llm_pretrain.py l.59-60: mixed_precision / ddp grad_reduce_in_fp32 = False). The
    # performance scripts set sequence parallelism whenever tp > 1
    # (scripts/performance/utils/utils.py l.59-62 WorkloadBaseConfig.sequence_parallel,
    # applied by utils/overrides.py l.156 and l.211). Caveat: the page's GB200 405B row (256
    # GPUs, tp 4 pp 16 vp 4) is not the GB200 FP8-CS base config at 00b7660b
    # (llama31_workload_base_configs.py: 128 GPUs, tp 2, Megatron FSDP, 92 layers offloaded),
    # so it came from an earlier config; its settings here are the recipe's, not confirmed.
    "megatron_bridge": replace(
        _nemo_family(
            "megatron_core_causal",
            "Megatron-Bridge's Llama 3 pretraining recipe uses Megatron-Core's "
            "distributed optimizer (recipes/llama/llama3.py use_distributed_optimizer=True); its "
            "performance scripts turn on sequence parallelism whenever tp > 1 "
            "(scripts/performance/utils/utils.py WorkloadBaseConfig.sequence_parallel)",
            "Megatron-Bridge's Llama 3 recipes (recipes/llama/llama3.py: DDP overlap_grad_reduce "
            "and overlap_param_gather; the 70B and 405B recipes' tp_comm_overlap) and performance "
            "configs (grad_reduce_in_fp32 = False) at 00b7660b",
        ),
        named_optimizer_storage=((r"deepseek-?v3", _MBRIDGE_DSV3_OPT),),
        named_optimizer=((r"kimi[-_ ]?k2", _MBRIDGE_KIMI_MUON),),
        # Megatron-Bridge's performance runs: utils/overrides.py _set_common_perf_overrides
        # (00b7660b l.55) cross_entropy_fusion_impl = "te" over GPTModelProvider's
        # cross_entropy_loss_fusion = True (models/gpt_provider.py l.180)
        cross_entropy="te",
        cross_entropy_note="loss: Transformer Engine's parallel_cross_entropy, the gradient "
        "written into the 16-bit logits (Megatron-Bridge scripts/performance/utils/overrides.py "
        "l.55 cross_entropy_fusion_impl 'te' at 00b7660b; TE through v2.17: a release on "
        "TE 2.18 keeps an fp32 gradient, vocab_parallel's memory)",
        # GPTOSSProvider: gated_linear_unit with activation_func quick_gelu
        # (src/megatron/bridge/models/gpt_oss/gpt_oss_provider.py l.50 and l.79 at 00b7660b)
        plain_glu_names=(r"gpt[-_ ]?oss",),
    ),
    # SimuMax's B200 runs (measured/simumax_b200.yaml): Megatron-LM 23e00ed0 launched with the
    # arguments each record carries (read by the Megatron importer as they are); the memory is
    # torch.cuda.max_memory_allocated (no CUDA context), the step time the fastest steady one.
    # (no architecture defaults: the arguments say it all)
    "simumax_b200": SourceConvention("megatron_core_causal", {}),
    # Llama 3 (Llama Team 2024, Table 4): the paper states TFLOPs/GPU and BF16 MFU but not its
    # FLOP formula; simtrain's model FLOPs stand in (the one row is skipped: context parallel).
    # Its framework as §3.3.2 describes it, where torchtitan's profile differs: "we proactively
    # deallocate tensors that will not be used for future computation, including the input and
    # output tensors of each pipeline stage" (torchtitan's pipelining keeps each chunk's output
    # to its backward, the last stage's logits to the step's end and a receive buffer per
    # micro-batch: runtimes/torchtitan.yaml [ppo] [ppl] [ppb]); its TP is the cited Korthikanti et al. 2023 sequence parallelism, which
    # saves each linear's input shard and all-gathers it again in the backward (§4.2.2), not
    # DTensor's gathered input ([tpg]). "To balance the pipeline, we reduce one Transformer
    # layer each from the first and the last stages ... This means that the first model chunk
    # on the first stage has only the embedding": one layer per model chunk of its interleaved
    # schedule (the layers + 2 slots over pp ranks: v = 128 / 16 = 8 for the 405B's 126).
    "llama3": SourceConvention(
        "simtrain",
        LLAMA3,
        runtime_overrides=(
            ("eager_elementwise", False),
            ("pipeline_keeps_stage_outputs", False),
            ("pipeline_keeps_last_outputs", False),
            ("pipeline_recv_buffers_per_microbatch", False),
            ("tp_saves_gathered_input", False),
            ("tp_regather_backward", True),
            ("tp_shard_copies", False),
        ),
        runtime_overrides_note="Meta's production framework (Dubey et al. 2024 §3.3.2): its "
        "element-wise ops fused, not torchtitan's eager default; each pipeline stage's input and "
        "output tensors freed once used; Korthikanti's sequence-parallel TP (the input shard "
        "saved and all-gathered again in the backward; its collectives on the sequence's own "
        "dimension, not DTensor's dim-0 ones that copy around a Shard(1))",
        parallel_defaults={"sequence_parallel": True},
        parallel_note="TP as torchtitan, its open kin, runs it (4a950ea "
        "models/llama3/infra/parallelize.py apply_tp l.181-233: the norms SequenceParallel, every TP "
        "run), the paper's Megatron-style TP (Dubey et al. 2024 §3.3.2)",
        pp_interleaved=(
            1,
            "Dubey et al. 2024 §3.3.2: the first and last stages one layer fewer leave the "
            "first model chunk of the first stage only the embedding: one layer per chunk of "
            "its interleaved schedule",
        ),
    ),  # fmt: skip
    # torchtitan benchmarks (pytorch/torchtitan benchmarks/llama3_h100_202412_torchtitan.md, run
    # at torchtitan 9dec370a): "Memory(GiB)" is the logged "memory:" =
    # DeviceMemoryMonitor.max_reserved_gib, the caching allocator's reserved_bytes.all.peak / 1024**3
    # (train.py, torchtitan/metrics.py), "the maximum across all GPUs"; FLOPs per token
    # utils.get_num_flop_per_token: 6 x non-embedding parameters + 12·l·heads·head_dim·s.
    # Llama 3's architecture and torchtitan's per-op selective recompute are the torchtitan
    # importer's (its llama3 flavors, selective_ac_option "op"), which validate's torchtitan
    # records go through (apps/validate/native.py torchtitan_config).
    "torchtitan": SourceConvention(
        "torchtitan",
        {},
        memory_note="torchtitan 'Memory(GiB)' = torch.cuda reserved_bytes.all.peak / 1024**3 (the "
        "caching allocator's reserve, metrics.py DeviceMemoryMonitor), max over GPUs: compared "
        "with the largest stage's allocated peak without the CUDA context; the allocator's "
        "unused reserve is not modelled",
        memory_gb_unit=GIB,
    ),  # fmt: skip
    # torchao low-bit optimizer README: eager PyTorch on a consumer GPU (no simtrain profile).
    "torchao": SourceConvention("simtrain", {}),
    # KempnerForge (measured/kempnerforge.yaml): FSDP2 (fully_shard per transformer block,
    # reshard after forward, bf16 parameters, fp32 reduction: distributed/parallel.py), Llama 3
    # blocks, its memory figure torch.cuda.max_memory_allocated (metrics/memory.py).
    "kempnerforge": SourceConvention(
        "simtrain",
        LLAMA3,
        runtime_overrides=(
            ("memory_reported", "allocated"),
            ("grad_sync_last_microbatch", True),
            ("tp_input_redistribution", "per_linear"),
            ("recompute_early_stop", True),
            ("tp_replicated_embedding", True),
        ),
        runtime_overrides_note="KempnerForge logs torch.cuda.max_memory_allocated "
        "(kempnerforge/metrics/memory.py l.30-36), not torchtitan's reserved peak; its loop "
        "turns FSDP2's gradient sync off but in the last micro-batch (scripts/train.py l.293, "
        "training/grad.py l.30-40 at 01b461a7): the gradients accumulate whole in fp32; its TP "
        "plan makes q, k, v, gate and up each a ColwiseParallel of its own, no "
        "PrepareModuleInput (distributed/tensor_parallel.py l.59-78): each gathers its input "
        "and reduces its input gradient itself; its activation checkpointing is PyTorch's "
        "NO_REENTRANT checkpoint_wrapper (distributed/parallel.py l.89), whose recompute stops "
        "early; its token embedding stays whole on every TP rank (tensor_parallel.py "
        "l.99-132)",
        cross_entropy="gathered",
        cross_entropy_note="KempnerForge's output layer gathers its logits to the whole "
        "vocabulary on every TP rank (distributed/tensor_parallel.py l.157-164 at 01b461a7) and "
        "its loss is plain cross-entropy on the bf16 logits (scripts/train.py l.295; no "
        "loss_parallel, no chunks, no fp32 copy)",
        loss_upcast=False,
        memory_gb_unit=GIB,
        memory_stage=0,  # rank 0's figure (metrics/memory.py: torch.cuda.max_memory_allocated(0))
        parallel_defaults={"sequence_parallel": True},
        parallel_note="KempnerForge's tensor parallelism is sequence-parallel "
        "(distributed/tensor_parallel.py l.6-13; its logs: 'Applied tensor parallelism: ... "
        "sequence_parallel=True')",
    ),  # fmt: skip
    # IBM's fms-fsdp (measured/fms_fsdp.yaml): PyTorch FSDP over the foundation-model-stack LLaMA,
    # eager (no compile: README "It is recommended to NOT use compile at this stage"), SDPA's
    # flash attention, Llama 2's architecture (fms/models/llama.py LLaMAConfig: SwiGLU,
    # RMSNorm, rotary, no biases, untied head).
    "fms_fsdp": SourceConvention(
        "simtrain",
        LLAMA3,
        runtime_overrides=(("eager_elementwise", True), ("recompute_early_stop", True)),
        runtime_overrides_note="fms's norm is a Python chain (fms/modules/layernorm.py "
        "LayerNormParameterized: pow, mean, rsqrt and products) and its rotary a complex product "
        "(the PyTorch blog 'Maximizing training throughput': 'The typical RoPE implementation "
        "uses complex numbers'), eager as torchtitan's uncompiled model; its activation "
        "checkpointing is PyTorch's NO_REENTRANT checkpoint_wrapper (fms_fsdp/policies/"
        "ac_handler.py), whose recompute stops early",
    ),  # fmt: skip
}
GENERIC = SourceConvention("simtrain", {})


#: FLOP conventions with no rule for frozen weights (Megatron-Core's num_floating_point_operations,
#: which NeMo and Megatron-Bridge report; NeMo's FLOPs callback refuses PEFT jobs:
#: flops_callback.py on_train_start, NVIDIA/NeMo 8cfedd72): a PEFT row's TFLOP/s and MFU under
#: them count FLOPs no source states, and are not compared.
NO_PEFT_FLOP_RULE = ("megatron_core", "megatron_core_causal")
FLOP_CONVENTIONS = ("megatron_eq3", "korthikanti", "mosaicml", "nanotron", "simtrain",
                    "megatron_core", "megatron_core_causal", "torchtitan",
                    "megatron_ds_2021")  # fmt: skip

# The training runtime (framework) each source's runs ran on, as the runtime profiles name them
# (measured/README.md names the framework of each source): megatron_lm_2021 is Megatron-LM before
# Megatron-Core (2019-2022) as of SC'21, megatron_lm_2022 the same with 2022's asynchronous TP
# backward (Korthikanti et al. 2022), megatron_core Megatron-Core and the frameworks built on it (NeMo,
# Megatron-Bridge), deepspeed DeepSpeed and Megatron-DeepSpeed, pytorch_eager plain PyTorch
# training loops (HF Trainer, PEFT, simtrain's own benchmarks) and the stand-in for sources whose
# framework has no profile (JAX/Pathways, Lingvo, metaseq) and for users' runs, nanotron_bench
# nanotron's bench branch that ran the Ultra-Scale Playbook's sweep (its host polls the
# pipeline's metadata messages every 0.1 s).
RUNTIME_PROFILES = ("megatron_lm_2021", "megatron_lm_2022", "megatron_core", "deepspeed",
                    "nanotron_bench", "torchtitan", "llm_foundry", "pytorch_eager")  # fmt: skip
RUNTIMES: dict[str, str] = {
    "megatron_sc21": "megatron_lm_2021",  # Megatron-LM, Narayanan et al. 2021 (PTD-P)
    "megatron_readme": "megatron_lm_2021",  # Megatron-LM README, Jan 2021
    "megatron_v1_blog": "megatron_lm_2021",  # Megatron-LM v1.0 (May 2020)
    "korthikanti2022": "megatron_lm_2022",  # Megatron-LM 2022 (selective recompute, SP)
    "megatron_sc21_zero3": "deepspeed",  # DeepSpeed ZeRO-3 rows of SC'21 Table 2
    "zero": "deepspeed",  # ZeRO paper (DeepSpeed with Megatron model parallelism)
    "bloom": "deepspeed",  # Megatron-DeepSpeed
    "bloom_chronicles": "deepspeed",  # Megatron-DeepSpeed
    "mtnlg": "deepspeed",  # Megatron-DeepSpeed
    "megatron_core": "megatron_core",  # Megatron-Core r0.8.0
    "nemo": "megatron_core",  # NeMo 24.07 (Megatron-Core underneath)
    "megatron_bridge": "megatron_core",  # Megatron-Bridge (NeMo 25.11, Megatron-Core underneath)
    # NeMo AutoModel (measured/nemo_automodel.yaml): PyTorch's FSDP2 / DTensor parallelism over
    # Transformer Engine's linear, norm and attention kernels (its benchmark configs' backend:
    # attn te, linear te, rms_norm te), the kernels Megatron-Core runs; no convention of its own
    "automodel": "megatron_core",
    "simumax_b200": "megatron_core",  # Megatron-LM 23e00ed0 (SimuMax's B200 runs)
    # Ultra-Scale Playbook sweep: nanotron's bench branch, whose files its script reads
    # (runtimes/nanotron_bench.yaml); a record of a pipeline run after the sweep's "pp fix"
    # names main's (runtime: nanotron; measured/README.md, the sweep's CSV)
    "nanotron": "nanotron_bench",
    "mosaicml": "llm_foundry",  # llm-foundry on Composer (PyTorch FSDP)
    "torchtitan": "torchtitan",
    "llama3": "torchtitan",  # Meta's own 4D-parallel PyTorch framework; torchtitan is its open kin
    "hf_transformers": "pytorch_eager",  # HF Trainer
    "fms_fsdp": "pytorch_eager",  # IBM fms-fsdp: a plain PyTorch FSDP loop (main_training.py)
    "kempnerforge": "torchtitan",  # KempnerForge: FSDP2 fully_shard per block, torchtitan's kin
    "lora": "pytorch_eager",  # HF PEFT
    "qlora": "pytorch_eager",  # HF PEFT + bitsandbytes
    "torchao": "pytorch_eager",  # eager PyTorch loop with torchao / DeepSpeed offload
    "simtrain_h200": "pytorch_eager",  # benchmarks/measure_cuda.py (eager PyTorch)
    # the same harness's held-out cases (measure_cuda.HELDOUT_CASES): not fitted on
    "simtrain_h200_heldout": "pytorch_eager",
    "opt": "pytorch_eager",  # metaseq (FairScale FSDP + Megatron TP): no profile of its own
    "llama": "pytorch_eager",  # LLaMA 1: Meta's xformers-based code, not public: no profile
    "palm": "pytorch_eager",  # JAX / Pathways on TPU: no GPU runtime profile
    "gpipe": "pytorch_eager",  # Lingvo (TensorFlow): no profile
}


def runtime_of(source_key: str) -> str:
    """The training runtime profile of a source (one of :data:`RUNTIME_PROFILES`): the framework
    its runs ran on (:data:`RUNTIMES`); ``pytorch_eager`` for a source not listed (a record of
    one runs under the framework its own text names: :func:`runtime_for`)."""
    return RUNTIMES.get(source_key, "pytorch_eager")


def runtime_for(rec: Record) -> tuple[str, str]:
    """(runtime, why) of one record: the profile the record names (its ``runtime`` key: a run of
    its source on another code version), else its source's (:func:`runtime_of`, why ""), or
    for a source without an entry the framework its own text names (:func:`inferred_runtime`),
    else ``pytorch_eager`` (why "")."""
    if rec.runtime:
        why = (
            ""
            if rec.runtime == RUNTIMES.get(rec.source_key)
            else (f"runtime {rec.runtime}: the record's (the code version it ran; notes)")
        )
        return rec.runtime, why
    if rec.source_key in RUNTIMES:
        return RUNTIMES[rec.source_key], ""
    found = inferred_runtime(rec.source, rec.notes, (rec.training, rec.parallelism,
                                                     rec.hardware, rec.model))  # fmt: skip
    if found is None:
        return "pytorch_eager", ""
    return found[0], (f"runtime {found[0]}: the record names {found[1]!r} (a source without a "
                      "convention of its own)")  # fmt: skip


# The framework a record of a source simtrain has no entry for names in its own words (its
# ``source`` and ``notes``, a ``framework`` key of any section), first match wins: the
# DeepSpeed-based before the Megatron-based (Megatron-DeepSpeed is DeepSpeed's engine), the
# open frameworks by name, then Megatron by the year the source gives (before 2022:
# Megatron-LM as of SC'21; 2022: with its asynchronous TP backward; later, or no year:
# Megatron-Core, on which NeMo and Megatron-Bridge run).
_FRAMEWORK_WORDS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"deepspeed", re.I), "deepspeed"),
    (re.compile(r"torchtitan", re.I), "torchtitan"),
    (re.compile(r"nanotron", re.I), "nanotron"),
    (re.compile(r"llm[- ]foundry|mosaicml|\bcomposer\b", re.I), "llm_foundry"),
    (re.compile(r"\bnemo\b|megatron[- ]core|megatron[- ]bridge|\bmcore\b", re.I), "megatron_core"),
    (re.compile(r"megatron", re.I), "megatron"),
    (re.compile(r"hugging ?face|\bhf trainer\b|\btransformers\b|\bpeft\b|accelerate", re.I),
     "pytorch_eager"),
)  # fmt: skip
_YEAR = re.compile(r"\b(20[12]\d)\b")


def inferred_runtime(source: str, notes: str, sections: Sequence[Mapping[str, Any]]
                     ) -> tuple[str, str] | None:  # fmt: skip
    """(runtime, the words that named it) for a record of a source without a :data:`RUNTIMES`
    entry, from its own text (:data:`_FRAMEWORK_WORDS`); None when it names no framework
    simtrain has a profile for (then ``pytorch_eager``, as for users' runs)."""
    named = " ".join(str(x.get("framework", "")) for x in sections)
    text = f"{named} {source} {notes}"
    for pattern, runtime in _FRAMEWORK_WORDS:
        # a framework key names the framework; the source and notes may name others beside
        m = pattern.search(named) if named.strip() else pattern.search(text)
        if m is None:
            continue
        if runtime == "megatron":
            years = [int(y) for y in _YEAR.findall(source)]
            year = max(years) if years else None
            runtime = ("megatron_lm_2021" if year is not None and year < 2022 else
                       "megatron_lm_2022" if year == 2022 else "megatron_core")  # fmt: skip
        return runtime, m.group(0)
    return None


def convention(key: str) -> SourceConvention:
    return SOURCES.get(key, GENERIC)


_CHRONICLE_DATE = re.compile(r"^bloom_prequel_(\d\d-\d\d)_")


def _named(pairs: tuple[tuple[str, Any], ...], name: str) -> Any:
    """The value of the first (pattern, value) whose regex matches ``name`` from its start,
    ignoring case (a convention's ``named_*`` lists); None if none does."""
    return next((v for pattern, v in pairs if re.match(pattern, name, re.IGNORECASE)), None)


#: The loss kernel of a framework whose own loss is not PyTorch's standard one, for a record of
#: a source without a convention of its own (whose runtime :func:`runtime_for` infers from its
#: words): Megatron's vocab-parallel cross-entropy (:data:`_MEGATRON_LOSS`); nanotron's and
#: llm-foundry's as their own sources' conventions run them. (The ``deepspeed`` runtime stands
#: for plain DeepSpeed as for Megatron-DeepSpeed, whose losses differ: none.)
FRAMEWORK_LOSSES: dict[str, tuple[str, str]] = {
    **{rt: (_MEGATRON_LOSS, "loss: Megatron's vocab-parallel cross-entropy (the framework the "
            "record names)") for rt in ("megatron_lm_2021", "megatron_lm_2022", "megatron_core")},
    **{rt: (SOURCES[source].cross_entropy, SOURCES[source].cross_entropy_note)
       for rt, source in (("nanotron", "nanotron"), ("nanotron_bench", "nanotron"),
                          ("llm_foundry", "mosaicml"))},
}  # fmt: skip


def convention_for(rec: Record) -> SourceConvention:
    """The source's convention for this record: the BLOOM chronicles' changed within the
    chronicle, by the section date in the record id (see ``_BLOOM_CHRONICLES``); for a source
    without one, the loss of the framework the record names (:data:`FRAMEWORK_LOSSES`)."""
    conv = convention(rec.source_key)
    if rec.source_key not in SOURCES:
        loss = FRAMEWORK_LOSSES.get(runtime_for(rec)[0])
        if loss is not None:
            conv = replace(conv, cross_entropy=loss[0], cross_entropy_note=loss[1])
    name = str(rec.model.get("name") or "")
    for pattern, arch, why in conv.named_architectures:
        if re.match(pattern, name, re.IGNORECASE):
            conv = replace(conv, architecture={**conv.architecture, **arch},
                           architecture_note=why)  # fmt: skip
            break
    if (storage := _named(conv.named_optimizer_storage, name)) is not None:
        conv = replace(conv, optimizer_storage=storage)
    if (optimizer := _named(conv.named_optimizer, name)) is not None:
        conv = replace(conv, optimizer=optimizer)
    if any(re.match(p, name, re.IGNORECASE) for p in conv.plain_glu_names):
        conv = replace(conv, flops_glu=1.0)
    if rec.source_key == "torchtitan":
        conv = _torchtitan_commit(rec, conv)
    if rec.source_key == "bloom_chronicles":
        m = _CHRONICLE_DATE.match(rec.id)
        date = m.group(1) if m else "99-99"  # MM-DD of 2022
        if date < "02-21":  # before Megatron-DeepSpeed ae6277f5
            conv = replace(conv, flops="megatron_ds_2021")
        if date >= "02-28":  # Megatron-DeepSpeed 00f5f889 and the BF16 optimizer
            conv = replace(conv, layer_split="embedding_as_layer",
                           precision_map={"bf16": _BF16_OPTIMIZER})  # fmt: skip
    return conv


#: The torchtitan benchmark file of December 2024 (run at torchtitan 9dec370a), in a record's
#: ``source``; the others (2025-06: 820504e, e7c0cae) ran later commits.
TORCHTITAN_2412 = "llama3_h100_202412_torchtitan"


def _torchtitan_commit(rec: Record, conv: SourceConvention) -> SourceConvention:
    """What the torchtitan commit a record ran does where the record is silent.

    9dec370a (the 2024-12 benchmarks): a pipeline splits the local batch into
    ``experimental.pipeline_parallel_microbatches`` micro-batches, by default the pipeline degree
    (parallelisms/pipelining_utils.py build_pipeline_schedule: ``n_microbatches =
    job_config.experimental.pipeline_parallel_degree``; pipeline_llama.py l.67-69), and the loss
    is eager (train.py l.136-138: compiling it "causes CUDA errors, turning off for now";
    ``native.torchtitan_config`` writes ``compile.components = ["model"]``). Later commits
    (820504e, e7c0cae: the 2025-06 benchmarks) compile the loss with the model under
    ``training.compile`` (components/loss.py build_cross_entropy_loss), which the importer reads
    as the fused cross-entropy."""
    if TORCHTITAN_2412 in rec.source:
        return replace(conv, pp_micro_batch="local_over_pp", compiled_loss=False,
                       pp_micro_batch_note=(
            "micro-batch not reported: local batch / pp (torchtitan 9dec370a splits the local "
            "batch into pipeline_parallel_microbatches, default the pipeline degree: "
            "pipelining_utils.py build_pipeline_schedule)"))  # fmt: skip
    return conv


def record_convention(rec: Record) -> SourceConvention:
    """The source's convention, with the record's own ``measured.flops_convention`` and
    ``measured.memory_includes_context`` taking precedence (for users' runs)."""
    conv = convention_for(rec)
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
    if f == "megatron_core":
        return megatron_core_flops(sc, glu=conv.flops_glu, per_sample=conv.flops_per_sample)
    if f == "megatron_core_causal":
        return megatron_core_flops(sc, causal=True, glu=conv.flops_glu)
    if f == "torchtitan":
        return torchtitan_flops(sc)
    if f == "megatron_ds_2021":
        return megatron_ds_2021_flops(sc)
    from simtrain.costs.compute import hardware_flops_per_step, model_flops_per_step

    return model_flops_per_step(sc) if kind == "model" else hardware_flops_per_step(sc)


def megatron_core_flops(
    sc: Scenario, causal: bool = False, glu: float = 1.5, per_sample: bool = False
) -> float:
    """Megatron-Core's FLOPs per step (Megatron-LM 937571cfd4, megatron/training/training.py
    ``num_floating_point_operations``; NeMo 24.07 reports the same): model FLOPs, no recompute,
    ``12·B·s·l·h²·((1 + g/a + s/h)·(a·d/h) + (f/h)·k·(3/2 with SwiGLU) + V/(2·l·h))`` with g KV
    groups, d the head size and k = 1 (dense): for a GPT with a 4h MLP, Korthikanti Eq. 7.
    ``causal``: s/(2h) for the attention scores, Megatron-Bridge's count (flop_utils.py at
    00b7660b). A mixture of experts, multi-latent attention and MTP modules as
    :func:`_moe_mla_mtp_flops` (that flop_utils.py's transformer_flops). ``glu``: a SwiGLU
    MLP's weight, 3/2 (1 where the framework's gated activation is not SiLU). ``per_sample``:
    the scores over each packed sample's l tokens (``training.packed_sample_len``), l/h, as
    NeMo 24.07's fine-tuning table counts them (its three SFT rows' TFLOP/s ÷ tokens/s are the
    formula at l = 200 within 0.3 %, at the row's 4,096 7.8-15.7 % above it)."""
    m, t = sc.model, sc.training
    if m.is_moe or m.is_mla or m.mtp_layers:
        return _moe_mla_mtp_flops(sc, causal, glu)
    B, s, L, h, a = t.global_batch, t.seq_len, m.layers, m.hidden, m.heads
    q_ratio = a * m.head_dim / h
    glu = glu if m.mlp == "swiglu" else 1.0
    keys = (t.packed_sample_len or s) if per_sample else s
    scores = keys / (2 * h) if causal else keys / h
    return (12 * B * s * L * h * h
            * ((1 + m.kv_heads / a + scores) * q_ratio + (m.ffn_hidden / h) * glu
               + m.vocab / (2 * L * h)))  # fmt: skip


def _moe_mla_mtp_flops(sc: Scenario, causal: bool, glu: float = 1.5) -> float:
    """Megatron-Bridge's ``transformer_flops`` (NVIDIA-NeMo/Megatron-Bridge 00b7660b
    src/megatron/bridge/training/utils/flop_utils.py l.136-320) for a mixture of experts,
    multi-latent attention or MTP modules, per step of B·s tokens:

    - MLP: 12·l'·h·(f·g·n_dense/l' + (f_e·k + f_sh)·g·n_moe/l'), l' = l + MTP modules (each
      counted as the last layer's kind), g 3/2 with SwiGLU, f_sh all shared experts' width;
    - attention, MHA/GQA: 12·l'·h²·(1 + G/a + s/(2h) or s/h)·(a·d/h); MLA: 6·l'·(q_lora·(h +
      a·(d_nope + d_rope) + 1) (or h·a·(d_nope + d_rope) without it) + kv_lora·(h + a·(d_nope
      + d_v) + 1) + h·d_rope + a·d_v·h + s·a·(d_nope + d_rope)/2 + s·a·d_v/2);
    - MTP: 6·n_mtp·(3h + 2h²); logits 6·h·V·(n_mtp + 1)."""
    m, t = sc.model, sc.training
    B, s, h, a = t.global_batch, t.seq_len, m.hidden, m.heads
    mtp = m.mtp_layers
    n_moe = m.moe_layers + (mtp if m.is_moe else 0)  # the last layer is an MoE one
    n_layers = m.layers + mtp
    n_dense = n_layers - n_moe
    glu = glu if m.mlp == "swiglu" else 1.0
    shared = m.shared_experts * m.shared_ffn if m.is_moe else 0
    mlp = 12 * n_layers * h * (m.ffn_hidden * glu * n_dense / n_layers
                               + (m.expert_ffn * m.experts_per_token + shared) * glu
                               * n_moe / n_layers) if m.is_moe else (
        12 * n_layers * h * m.ffn_hidden * glu)  # fmt: skip
    if m.is_mla:
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        q = m.q_lora_rank * (h + a * qk + 1) if m.q_lora_rank else h * a * qk
        attn = 6 * n_layers * (q + m.kv_lora_rank * (h + a * (m.qk_nope_head_dim + m.v_head_dim)
                                                     + 1)
                               + h * m.qk_rope_head_dim + a * m.v_head_dim * h
                               + s * a * qk / 2 + s * a * m.v_head_dim / 2)  # fmt: skip
    else:
        scores = s / (2 * h) if causal else s / h
        attn = 12 * n_layers * h * h * (1 + m.kv_heads / a + scores) * (a * m.head_dim / h)
    mtp_terms = 6 * mtp * (3 * h + 2 * h * h)
    logits = 6 * h * m.vocab * (mtp + 1)
    return float(B * s * (mlp + attn + mtp_terms + logits))


def torchtitan_flops(sc: Scenario) -> float:
    """torchtitan's FLOPs per step (torchtitan 9dec370a, torchtitan/utils.py
    ``get_num_flop_per_token`` over ``get_num_params(model, exclude_embedding=True)``):
    ``(6·N + 12·l·a·d·s)`` per token, N = all parameters but the token embedding (the untied
    output layer counts), full s² attention, no recompute."""
    m, t = sc.model, sc.training
    n = m.total_params() - m.vocab * m.hidden
    per_token = 6 * n + 12 * m.layers * m.heads * m.head_dim * t.seq_len
    return float(per_token * t.global_batch * t.seq_len)


def megatron_ds_2021_flops(sc: Scenario) -> float:
    """Megatron-DeepSpeed's TFLOP/s estimator before ae6277f5 (2022-02-21; megatron/training.py
    ``training_log``): ``parameters_in_billions_no_embedding · (4 with activation checkpointing,
    else 3) · 2 · s · B`` per step, the parameters without the embedding tables
    (utils.non_embedding_params)."""
    m, t = sc.model, sc.training
    n = m.total_params() - m.embedding_params()
    k = 4 if t.recompute != "none" else 3
    return float(n * k * 2 * t.seq_len * t.global_batch)
