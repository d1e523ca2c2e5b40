"""Scenario files: YAML -> validated, frozen objects.

This is the one module that knows the scenario YAML. Every error names the file, the key path,
the value and what is allowed (``ConfigError``); the CLI prints it on one line and exits 2.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from simtrain.errors import (
    MAX_ECHO,
    ConfigError,
    ScheduleError,
    one_line,
    unknown_key,
    unknown_value,
)
from simtrain.schedules.generators import check_group
from simtrain.schedules.registry import SCHEDULES, all_warmup_order, runs_groups
from simtrain.schedules.registry import traits as schedule_traits
from simtrain.spec.hardware import HardwareProfile, load_hardware
from simtrain.spec.limits import (
    MAX_ACTIVATION_BYTES,
    MAX_DDP_BUCKETS,
    MAX_GPUS,
    MAX_MICROBATCH_LAYERS,
    as_float,
    check_known_range,
)
from simtrain.spec.model import ModelSpec, from_hf_config, preset, validate_model
from simtrain.spec.moe_layout import check_moe_layout
from simtrain.spec.precision import (
    FP8_PARAM_PRECISIONS,
    MASTER_WEIGHTS,
    OPTIMIZER_STATE_DTYPES,
    PRECISIONS,
    STORAGE_DEFAULTS,
    Precision,
    with_optimizer_storage,
)
from simtrain.spec.runtime import (
    RuntimeProfile,
    default_runtime,
    load_runtime,
    parse_scenario_runtime,
)
from simtrain.spec.stage_split import parse_split_list, split_problem, uneven_keys
from simtrain.spec.yamlfile import MAX_DEPTH, exists, load_yaml, parse_yaml
from simtrain.units import MIB

OPTIMIZERS = ("sgd", "sgd_momentum", "adam", "adamw", "adam8bit", "adafactor", "muon")
# selective: Megatron's attention-core recompute (Korthikanti et al. 2022 §4.3); selective_op:
# torchtitan's per-op selective checkpointing (activation_checkpoint.mode = "selective",
# selective_ac_option = "op": every other matmul, SDPA and reduce-scatter outputs kept, the rest
# recomputed; costs.op_sac); full: every block checkpointed whole.
RECOMPUTE = ("none", "selective", "full", "selective_op")
# Megatron-Core's selective recompute by module (--recompute-modules; transformer_config.py
# recompute_modules at d98e8a64, default ["core_attn"]): the attention core; the MoE experts'
# activation, the MLA up-projections with RoPE and the separate norms (an MoE block's pre-MLP
# norm, MLA's input norm: the others are fused into TE's LayerNormLinear) with their outputs
# discarded after the forward and recomputed before the backward (CheckpointWithoutOutput).
# Not simulated: mlp, moe, shared_experts (whole submodules) and the hybrid models' ones.
RECOMPUTE_MODULES = ("core_attn", "moe_act", "layernorm", "mla_up_proj")
# Cross-entropy over the logits: "standard" (PyTorch's, over an fp32 copy of the logits: the
# fp32 log-softmax is saved for backward) or "fused" (flash-attn's / Liger's kernel: row-wise
# fp32 in registers, only the 16-bit logits saved and one 16-bit logit gradient written) or
# "loss_parallel" (PyTorch's loss_parallel over vocabulary-sharded logits: the standard loss's
# saved fp32 log-softmax, a larger backward working set: costs.activations.loss_transient_bytes).
#: standard: PyTorch's, over the vocabulary shard V/t (the scenario default, whatever the
#: runtime: a Megatron run says vocab_parallel or te, as the importer and validate do); fused:
#: flash-attn's; loss_parallel: PyTorch's loss_parallel over the shard; gathered: the logits
#: all-gathered to the whole vocabulary on every TP rank, then a standard cross-entropy over V
#: (torchtitan without loss parallel: the output layer's Replicate() output); vocab_parallel:
#: Megatron's (core/tensor_parallel/cross_entropy.py, and its native fusion
#: fusions/fused_cross_entropy.py): an fp32 copy of the shard, worked on in place, saved as the
#: softmax and turned into the gradient in place; te: Transformer Engine's parallel_cross_entropy
#: (Megatron-Core ``--cross-entropy-fusion-impl te``, Megatron-Bridge's performance runs): a
#: Triton kernel writing the gradient into the 16-bit logits in place
#: (costs.activations.loss_saved_bytes); sharded: nanotron's ``sharded_cross_entropy``
#: (parallel/tensor_parallel/functional.py _ShardedCrossEntropy at 2411b022), Megatron's
#: algorithm on the fp32 logits nanotron's ``cast_to_fp32`` block made, the max subtracted out
#: of place: the fp32 input beside its saved shifted copy.
CROSS_ENTROPY = ("standard", "fused", "loss_parallel", "gathered", "vocab_parallel", "te",
                 "sharded")  # fmt: skip


#: The losses that run Megatron's vocab-parallel kernel (its saved fp32 softmax, its passes):
#: Megatron's own and nanotron's port of it (``sharded``, its max subtracted out of place).
MEGATRON_KERNEL_LOSSES = ("vocab_parallel", "sharded")
#: The losses that are PyTorch's cross-entropy over logits the caller hands it (fp32 or not:
#: ``TrainingSpec.loss_upcast``).
PYTORCH_LOSSES = ("standard", "gathered", "loss_parallel")


def loss_vocab_shards(cross_entropy: str, tp: int) -> int:
    """The TP ranks a loss's logits are split over: 1 when they are gathered to the whole
    vocabulary (``cross_entropy: gathered``), else tp (each rank's shard V/t)."""
    return 1 if cross_entropy == "gathered" else tp


PEFT_METHODS = (
    "none", "lora", "qlora", "adapter", "prefix", "prompt", "linear_probe", "lp_ft", "bitfit",
)  # fmt: skip
DP_MODES = ("ddp", "naive", "data_parallel")
LAYER_SPLITS = ("uniform", "compute_balanced", "embedding_as_layer")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
ZERO_STAGES = (0, 1, 2, 3)
PEFT_PHASES = ("probe", "finetune")
LP_FT_STEP_KEYS = ("probe_steps", "finetune_steps")
# Optimizers bitsandbytes has a paged version of (bitsandbytes/optim/adam.py, adamw.py:
# PagedAdam, PagedAdamW, PagedAdam8bit, PagedAdamW8bit; is_paged=True).
PAGED_OPTIMIZERS = ("adam", "adamw", "adam8bit")

#: The allowed values of each key of a section, by field name: the parsers below check them and
#: ``apps.schema`` publishes them (one table, so the JSON Schema cannot drift from the parser).
TRAINING_CHOICES: dict[str, tuple[Any, ...]] = {
    "precision": tuple(PRECISIONS), "optimizer": OPTIMIZERS, "recompute": RECOMPUTE,
    "recompute_modules": RECOMPUTE_MODULES, "cross_entropy": CROSS_ENTROPY, "optimizer_state_dtype": OPTIMIZER_STATE_DTYPES,
    "master_weights": MASTER_WEIGHTS,
}  # fmt: skip
PEFT_CHOICES: dict[str, tuple[Any, ...]] = {
    "method": PEFT_METHODS, "target_modules": LORA_TARGETS, "phase": PEFT_PHASES,
}  # fmt: skip
PARALLEL_CHOICES: dict[str, tuple[Any, ...]] = {
    "schedule": tuple(SCHEDULES), "dp_mode": DP_MODES, "zero_stage": ZERO_STAGES,
    "layer_split": LAYER_SPLITS,
}  # fmt: skip


def group_gpus_per_node(n: int, stride: int, gpus_per_node: int) -> int:
    """Members of a group of ``n`` GPUs ``stride`` ids apart that share a node of
    ``gpus_per_node`` GPUs (GPU ids fill nodes in order; the ``g`` of ``costs.collectives``: a
    cross-node ring runs one ring per NIC, g of them per node)."""
    if stride > gpus_per_node:
        return 1
    return max(1, min(n, gpus_per_node // stride))


@lru_cache(maxsize=4096)
def group_span(
    n: int, stride: int, pp_stride: int, pp: int, gpus_per_node: int
) -> tuple[bool, int]:
    """(whether any group crosses a node, the fewest members any group has on one node) over
    every group of ``n`` GPUs ``stride`` ids apart in the grid (Megatron order, ``layout.placement``): a group starts at GPU r·pp_stride + j for each pipeline rank r and each offset
    j < pp_stride whose coordinate along the group's dimension is 0, ``(j // stride) % n ==
    0``, and holds j + k·stride, k < n. A node's share of a group depends only on where the group
    starts within its node (start mod gpus_per_node), so the distinct starts are at most
    gpus_per_node; per start, each node the group touches holds
    ceil((end - a) / stride) - ceil((begin - a) / stride) members of it. GPU ids fill nodes in
    order (ClusterSpec); the last node's missing GPUs (a partial node) do not change a count."""
    gpn = gpus_per_node
    if n <= 1:
        return False, 1
    starts = {(r * pp_stride + j) % gpn for r in range(min(pp, gpn))
              for j in range(min(pp_stride, n * stride * gpn))
              if (j // stride) % n == 0}  # fmt: skip
    crosses, fewest = False, n
    for a in starts:
        last = a + (n - 1) * stride
        if last >= gpn:
            crosses = True
        for node in range(last // gpn + 1):
            lo, hi = node * gpn, (node + 1) * gpn
            count = min(n, max(0, -(-(hi - a) // stride))) - min(n, max(0, -(-(lo - a) // stride)))
            if count:
                fewest = min(fewest, count)
    return crosses, fewest


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    nodes: int = 1
    gpus_per_node: int = 8
    # GPUs of the last node when it is not full (0: full). Only the default cluster of a
    # scenario without ``cluster:`` has one (parse_scenario): 10 GPUs on 8-GPU servers are a
    # node of 8 and a node of 2. Not a YAML key.
    last_node_gpus: int = 0

    @property
    def gpus(self) -> int:
        if self.last_node_gpus:
            return (self.nodes - 1) * self.gpus_per_node + self.last_node_gpus
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True, slots=True)
class PeftSpec:
    """Parameter-efficient fine-tuning. Sizes follow each method's paper:
    LoRA rank r on target modules (Hu et al. 2021), QLoRA NF4 base with block size 64 and
    double-quantised constants (Dettmers et al. 2023), bottleneck adapters of width
    ``adapter_size`` (Houlsby et al. 2019), prefix tuning with ``prefix_length`` key/value vectors
    per layer (Li & Liang 2021), prompt tuning with ``prompt_length`` soft tokens (Lester et al.
    2021). ``phase`` of LP-FT (Kumar et al. 2022, §4 "LP-FT": linear probing, then full
    fine-tuning from the probed head): ``probe`` (head only) or ``finetune`` (all), one phase
    simulated; or ``probe_steps`` and ``finetune_steps`` (both > 0): both phases simulated and
    their total cost reported (``two_phase``; the other commands see the finetune phase).
    ``paged_optimizer``: bitsandbytes' paged optimizer (``paged_adamw_32bit``/``_8bit``,
    Dettmers et al. 2023 §3 "Paged Optimizers"): the optimizer states of tensors of at least
    ``spec.precision.PAGED_MIN_NUMEL`` elements live in CUDA unified memory, evicted to host
    RAM under memory pressure and prefetched back before the update (costs.memory,
    costs.workload)."""

    method: str = "none"
    rank: int = 8
    alpha: float = 16.0
    target_modules: tuple[str, ...] = ("q", "v")
    adapter_size: int = 64
    prefix_length: int = 32
    prompt_length: int = 32
    phase: str = "finetune"
    quant_block_size: int = 64
    probe_steps: int = 0  # 0: not given (one phase, ``phase``)
    finetune_steps: int = 0
    paged_optimizer: bool = False

    @property
    def two_phase(self) -> bool:
        """LP-FT with both phases' step counts: simulate both (apps.simulate.simulate_lp_ft)."""
        return self.method == "lp_ft" and self.probe_steps > 0

    def phase_only(self, phase: str) -> PeftSpec:
        """One phase of a two-phase LP-FT: ``phase`` set, the step counts cleared (the same
        spec as a scenario that gives ``phase: <phase>``)."""
        return replace(self, phase=phase, probe_steps=0, finetune_steps=0)


@dataclass(frozen=True, slots=True)
class OffloadSpec:
    """CPU offload as DeepSpeed runs it (``costs.offload``; lowered by ``passes.offload_pass``).

    ``optimizer``: ZeRO-Offload (Ren et al. 2021 §4; DeepSpeed ``offload_optimizer``): fp32
    master weights and optimizer states in pinned host memory, gradients copied down over PCIe
    per bucket during the last backward, DeepSpeedCPUAdam on the host, the updated 16-bit
    parameters copied back up. ``parameters``: ZeRO-Infinity (Rajbhandari et al. 2021 §5;
    DeepSpeed ``offload_param``, ZeRO-3 only): each GPU's parameter partition lives in host
    memory and is copied up layer by layer before its gather, one layer ahead.
    ``activations``: DeepSpeed ``cpu_checkpointing`` (needs ``recompute: full``): each chunk's
    checkpoints are copied to the host after its forward and back before its backward.
    ``activation_layers``: Megatron-Core's ``cpu_offloading_num_layers`` (Transformer Engine's
    ``get_cpu_offload_context``, activations only): the saved tensors of the first N blocks go
    to pinned host memory during the forward and come back during the backward, so that the
    GPU holds (L - N) blocks' (TE ``DefaultOffloadSynchronizer``; ``costs.memory``,
    ``passes.activation_offload_pass``). Megatron allows it without pipelining and without
    recompute (transformer_config.py l.1884-1899 at d98e8a64)."""

    optimizer: bool = False
    parameters: bool = False
    activations: bool = False
    activation_layers: int = 0


@dataclass(frozen=True, slots=True)
class TrainingSpec:
    seq_len: int = 1024
    global_batch: int = 8
    micro_batch: int = 1
    precision: str = "bf16"
    optimizer: str = "adamw"
    recompute: str = "none"
    # with recompute selective, Megatron-Core's --recompute-modules (RECOMPUTE_MODULES; empty:
    # its default, the attention core)
    recompute_modules: tuple[str, ...] = ()
    cross_entropy: str = "standard"  # CROSS_ENTROPY
    # PyTorch's cross-entropy (standard, gathered, loss_parallel) on fp32 logits: the caller's
    # ``logits.float()`` (Hugging Face's ForCausalLMLoss, torchtitan's loss); false: in the
    # logits' dtype, no fp32 copy (KempnerForge scripts/train.py l.295)
    loss_upcast: bool = True
    # The optimizer's storage (spec.precision.with_optimizer_storage): its states' dtype and
    # whether it keeps the precision's fp32 master copy, a 16-bit remainder of it, or none.
    optimizer_state_dtype: str = "fp32"
    master_weights: str = "precision"
    peft: PeftSpec = PeftSpec()
    offload: OffloadSpec = OffloadSpec()
    # Megatron-Core --fp8-param-gather (TE quantized primary weights): the linears' weights are
    # stored only as their FP8 copies, no 16-bit weight beside them (costs.memory
    # fp8_weight_storage). Transformer Engine FP8 recipes, without ZeRO-3.
    fp8_params: bool = False
    # Packed sequences (SFT's sample packing: Megatron-Bridge's offline-packed datasets, the
    # Hugging Face ``DataCollatorWithFlattening``): each ``seq_len`` row holds samples of this
    # many tokens and a variable-length flash kernel keeps attention within each sample
    # (``cu_seqlens``: Transformer Engine's THD format, flash-attn's ``flash_attn_varlen_func``),
    # so a query sees the keys of its own sample only (``kv_len``); 0: one sequence a row.
    packed_sample_len: int = 0
    # Not a YAML key. On one context-parallel rank's view of the step (:func:`cp_rank_training`)
    # ``seq_len`` is the rank's 1/cp of each sequence and its queries attend to the keys of all
    # ``cp_shards`` shards (``kv_len``): ring attention moves the other ranks' K/V to them.
    cp_shards: int = 1

    @property
    def precision_spec(self) -> Precision:
        """Bytes per element of every tensor kind: the precision's, with the optimizer's storage
        (``optimizer_state_dtype``, ``master_weights``)."""
        return with_optimizer_storage(PRECISIONS[self.precision], self.optimizer_state_dtype,
                                      self.master_weights)  # fmt: skip

    def changed_storage(self) -> list[tuple[str, str]]:
        """The optimizer-storage keys set to other than their defaults, as (key, value)."""
        return [(k, getattr(self, k)) for k, d in STORAGE_DEFAULTS.items() if getattr(self, k) != d]

    @property
    def selective_modules(self) -> tuple[str, ...]:
        """What selective recompute recomputes: ``recompute_modules``, by default the attention
        core (Korthikanti et al. 2022 §4.3; Megatron-Core's default); () without it."""
        if self.recompute != "selective":
            return ()
        return self.recompute_modules or ("core_attn",)

    @property
    def seq_len_effective(self) -> int:
        """Positions the blocks process: the data tokens plus prompt tuning's soft tokens
        (Lester et al. 2021), which the logits and the loss also span (HF PEFT prepends them)."""
        return self.seq_len + (self.peft.prompt_length if self.peft.method == "prompt" else 0)

    @property
    def prefix_len(self) -> int:
        """Prefix tuning's per-layer prefix keys every query also sees (Li & Liang 2021); 0
        for any other method."""
        return self.peft.prefix_length if self.peft.method == "prefix" else 0

    @property
    def kv_len(self) -> int:
        """Keys each query attends to: the whole sequence's (all CP shards') plus the prefix;
        with packed sequences its own sample's (``packed_sample_len``)."""
        if self.packed_sample_len:
            return self.packed_sample_len
        return self.seq_len_effective * self.cp_shards + self.prefix_len

    @property
    def causal_len(self) -> int:
        """Length of the causal span a query's mask runs over: the whole sequence (all CP
        shards'), or with packed sequences its sample (``packed_sample_len``)."""
        return self.packed_sample_len or self.seq_len_effective * self.cp_shards


#: PyTorch DDP's default gradient bucket, bucket_cap_mb = 25 MiB, in simtrain's MB (10^6 B).
TORCH_DDP_BUCKET_MB = 25 * MIB / 1e6


@dataclass(frozen=True, slots=True)
class ParallelSpec:
    dp: int = 1
    tp: int = 1
    pp: int = 1
    schedule: str = "1f1b"
    virtual_stages: int = 1
    # The interleaved schedules' contiguous micro-batches per model chunk, N (Megatron-Core
    # --microbatch-group-size-per-virtual-pipeline-stage; torch ScheduleInterleaved1F1B's
    # microbatches_per_round; Llama 3's "N", Dubey et al. 2024 §3.3.2): 0 = pp, Megatron's
    # default. A rank warms up with 2(pp − r − 1) + (v − 1)·N forwards: a larger N holds more
    # activations and lets the micro-batches be any count with m % N = 0 or >= pp
    # (schedules.generators.check_group).
    microbatch_group_size: int = 0
    zero_stage: int = 0
    dp_mode: str = "ddp"
    sequence_parallel: bool = False
    # DDP gradient bucket size in MB (10^6 bytes): PyTorch DDP's default bucket_cap_mb=25 is in
    # MiB (torch/nn/parallel/distributed.py: _MB_TO_BYTES = 1024 * 1024): 25 MiB = 26.2144 MB
    bucket_mb: float = TORCH_DDP_BUCKET_MB
    # ZeRO-3: at most this many gathered parameters live at once (DeepSpeed's
    # stage3_max_live_parameters, default 1e9); 0 = no cap, FSDP-style: the current and the
    # prefetched layer's full parameters.
    zero3_max_live_params: int = 0
    # How layers are split over pipeline stages (memory, costs, timing: layout.partition.split_layers):
    # "uniform" (Megatron, L/pp each), "compute_balanced" (nanotron: by per-block compute cost,
    # the LM head counting V·h), "embedding_as_layer" (DeepSpeed's type:transformer|embedding),
    # or decoder layers per chunk (chunk order j·pp + r). Megatron-Core's uneven split
    # (spec.stage_split): first / last stage layers (0 = unset), embedding / loss as a layer.
    layer_split: str | tuple[int, ...] = "uniform"
    first_stage_layers: int = 0
    last_stage_layers: int = 0
    account_for_embedding: bool = False
    account_for_loss: bool = False
    # Context parallelism (Megatron-Core --context-parallel-size, torchtitan
    # context_parallel_degree): each micro-batch's sequence split over cp GPUs, attention by
    # ring exchange of K/V (costs.cp). Gradients are reduced, and ZeRO shards, over dp x cp.
    cp: int = 1
    # Expert parallelism (MoE models): the experts split over ep data-parallel ranks
    # (costs.moe, spec.scenario.check_moe_layout).
    ep: int = 1
    # Expert tensor parallelism (Megatron-Core --expert-tensor-parallel-size): 0 = tp (its
    # default), or 1: whole experts on each rank and the EP group folded over tp x dp x cp
    # ("MoE parallel folding", Liu et al. 2025, arXiv 2504.14960; ``etp``)
    expert_tp: int = 0
    # Hybrid sharding: ZeRO shards over groups of dp·cp / zero_replicas consecutive
    # data-parallel ranks and keeps zero_replicas copies, one per group (1: one group, all of
    # dp x cp). FSDP's HYBRID_SHARD (torch/distributed/fsdp/api.py ShardingStrategy: "shard
    # within a node, replicate across nodes"), torchtitan's data_parallel_replicate_degree
    # (HSDP), Megatron-Core's --num-distributed-optimizer-instances: the gradients
    # reduce-scattered within the group, then all-reduced across the replicas (``zero_shards``;
    # costs.comm.dp_ns).
    zero_replicas: int = 1

    @property
    def gpus(self) -> int:
        return self.dp * self.tp * self.pp * self.cp

    @property
    def dp_cp(self) -> int:
        """The gradient-reduction and optimizer-sharding group: dp x cp GPUs (Megatron-Core
        ``get_data_parallel_group(with_context_parallel=True)``: DDP's buckets and the
        distributed optimizer reduce and shard over it)."""
        return self.dp * self.cp

    @property
    def zero_shards(self) -> int:
        """The ZeRO sharding group: dp x cp / ``zero_replicas`` GPUs (all of dp x cp without
        hybrid sharding), over which optimizer states (ZeRO-1), gradients (2) and parameters (3)
        are divided; its members are tp GPU ids apart (placement tp-cp-dp-pp), the replicas of
        one shard tp·zero_shards apart."""
        return self.dp_cp // self.zero_replicas

    @property
    def etp(self) -> int:
        """The expert-tensor-parallel size: ``expert_tp``, or tp when 0 (Megatron-Core's
        default: expert_tensor_parallel_size = tensor_model_parallel_size)."""
        return self.expert_tp or self.tp

    @property
    def expert_dp(self) -> int:
        """The expert-data-parallel group: the tp·dp·cp / (etp·ep) ranks that hold the same
        routed experts (Megatron-Core d98e8a64 ``parallel_state.py`` l.887-896: the expert grid
        ``RankGenerator(tp=etp, ep=ep, dp=expert-dp, pp=pp, cp=1, order="tp-ep-dp-pp")``,
        expert-dp = world / (etp·ep·pp); dp·cp / ep at etp = tp). Its members are etp·ep GPU
        ids apart and an EP group's etp apart (``costs.comm``); expert gradients are reduced
        over it and ZeRO shards expert states over it (``spec.moe_layout``: ep divides
        tp·dp·cp / etp). dp·cp without expert parallelism."""
        return self.tp * self.dp_cp // (self.etp * self.ep)


def microbatches(t: TrainingSpec, p: ParallelSpec) -> int:
    """m = global_batch / (micro_batch · dp) per pipeline and step (Narayanan et al. 2021 §3.1)."""
    return t.global_batch // (t.micro_batch * p.dp)


def trained_mtp_modules(m: ModelSpec, t: TrainingSpec) -> int:
    """Multi-token-prediction modules the step trains (DeepSeek-V3 §2.2: D = 1 in its
    pre-training; Megatron-Core ``--mtp-num-layers``): the model's ``mtp_layers`` in full
    training; none under PEFT (Hugging Face transformers' DeepSeek-V3 builds no MTP module:
    the checkpoint's layer 61 is not loaded). Set ``model.mtp_layers: 0`` to train without."""
    return m.mtp_layers if t.peft.method == "none" else 0


def cp_rank_training(t: TrainingSpec, cp: int) -> TrainingSpec:
    """What one context-parallel rank computes per micro-batch: s/cp of each sequence's tokens
    (Megatron-Core ``get_batch_on_this_cp_rank``: tokens, labels, positions, 2 of 2·cp chunks),
    each attending to the keys of the whole sequence (``kv_len``). cp = 1: ``t`` itself."""
    if cp == 1:
        return t
    return replace(t, seq_len=t.seq_len // cp, cp_shards=cp)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    model: ModelSpec
    hardware: HardwareProfile
    cluster: ClusterSpec
    training: TrainingSpec
    parallelism: ParallelSpec
    source: str = ""
    # The framework that runs the step (``runtime:``; spec.runtime); None: the default profile.
    runtime_profile: RuntimeProfile | None = None

    @property
    def runtime(self) -> RuntimeProfile:
        """The runtime profile that runs the step (:data:`spec.runtime.DEFAULT_RUNTIME` when the
        scenario names none)."""
        return self.runtime_profile if self.runtime_profile is not None else default_runtime()

    @property
    def num_microbatches(self) -> int:
        return microbatches(self.training, self.parallelism)

    @property
    def tokens_per_step(self) -> int:
        return self.training.global_batch * self.training.seq_len

    @property
    def cp_all_to_all(self) -> bool:
        """Context parallelism runs as the all-to-all (cp > 1, runtime ``cp_attention: a2a``;
        costs.cp), not as a ring."""
        return self.parallelism.cp > 1 and self.runtime.cp_attention == "a2a"


# ---------------------------------------------------------------------------------------------
# Generic checks


def _type_name(t: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        t, t.__name__
    )


def _check(value: Any, typ: type, file: str, key: str, allowed: tuple = ()) -> Any:
    """Type-check one scalar. ints are accepted where floats are expected; floats must be
    finite (NaN, infinity and an int too large for a float are refused). A wrong type names
    the value (``null`` for YAML's null) and, for a key with ``allowed`` values, lists them."""
    if typ is float and isinstance(value, int | float) and not isinstance(value, bool):
        return as_float(value, file, key)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if (typ in (int, float) and isinstance(value, bool)) or not isinstance(value, typ):
        what = f"must be {_type_name(typ)}" + (" (got null)" if value is None else "")
        listed = " | ".join(str(a) for a in allowed) if allowed else None
        raise ConfigError(file, key, what, value, listed)
    return value


def _mapping(data: Any, file: str, key: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(file, key, "must be a mapping", data)
    return data


def _no_unknown(data: dict[str, Any], allowed: tuple[str, ...], file: str, prefix: str) -> None:
    for k in data:
        if k not in allowed:
            raise unknown_key(file, k, prefix, allowed)


# Fields that are not YAML keys (set by the parser) and numeric fields that may be <= 0.
INTERNAL_FIELDS = ("last_node_gpus", "cp_shards")
NON_POSITIVE_OK = ("zero_stage", "alpha", "zero3_max_live_params", "first_stage_layers",
                   "last_stage_layers", "activation_layers", "expert_tp",
                   "microbatch_group_size", "packed_sample_len")  # fmt: skip


def _build(
    cls: type, data: dict[str, Any], file: str, prefix: str, choices: dict[str, tuple]
) -> Any:
    """Build a flat frozen dataclass from a mapping, type-checking every field."""
    names = tuple(f.name for f in fields(cls) if f.name not in INTERNAL_FIELDS)
    _no_unknown(data, names, file, prefix)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data or f.name in INTERNAL_FIELDS:
            continue
        key = f"{prefix}{f.name}"
        typ = {"int": int, "float": float, "bool": bool, "str": str,
               "str | tuple[int, ...]": str}.get(str(f.type))  # a list: parse_parallelism  # fmt: skip
        value = data[f.name]
        if typ is None:  # tuple[str, ...]
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(file, key, "must be a list of strings", value)
            value = tuple(value)
        else:
            value = _check(value, typ, file, key, choices.get(f.name, ()))
        if f.name in choices:
            allowed = choices[f.name]
            bad = [v for v in (value if isinstance(value, tuple) else (value,)) if v not in allowed]
            if bad:
                raise unknown_value(file, key, bad[0] if len(bad) == 1 else value, allowed,
                                    nearest_to=bad[0])  # fmt: skip
        check_known_range(value, file, key)
        if typ in (int, float) and value <= 0 and f.name not in NON_POSITIVE_OK:
            raise ConfigError(file, key, "must be positive", value)
        kwargs[f.name] = value
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# Sections

MODEL_SHAPE_KEYS = tuple(f.name for f in fields(ModelSpec) if f.name != "name")


def parse_model(data: Any, file: str, base_dir: Path | None) -> ModelSpec:
    """``model:`` is a preset, an ``hf_config`` path, or inline shape keys; shape keys given
    next to a preset or hf_config override it (e.g. ``flash_attention: true``)."""
    data = _mapping(data, file, "model")
    _no_unknown(data, ("preset", "hf_config", "name") + MODEL_SHAPE_KEYS, file, "model.")
    if "preset" in data and "hf_config" in data:
        raise ConfigError(file, "model", "give either preset or hf_config, not both")
    for k in ("preset", "hf_config"):
        if k in data and not isinstance(data[k], str):
            raise ConfigError(file, f"model.{k}", "must be a string", data[k])
    base: dict[str, Any] = {}
    if "preset" in data:
        spec = preset(str(data["preset"]), file)
        base = {f.name: getattr(spec, f.name) for f in fields(ModelSpec)}
    elif "hf_config" in data:
        p = Path(str(data["hf_config"]))
        if base_dir is not None and not p.is_absolute() and exists(base_dir / p):
            p = base_dir / p  # next to the scenario first, as hardware paths; then the cwd
        spec = from_hf_config(p, file)
        base = {f.name: getattr(spec, f.name) for f in fields(ModelSpec)}
    else:
        missing = [k for k in ("layers", "hidden", "heads", "vocab") if k not in data]
        if missing:
            raise ConfigError(
                file, f"model.{missing[0]}", "missing: give model.preset, model.hf_config "
                "or the shape keys layers, hidden, heads, vocab (plus optional ones)",
                None, ", ".join(MODEL_SHAPE_KEYS),
            )  # fmt: skip
        base = {"name": "custom", "max_positions": 2048}
    overrides = {k: v for k, v in data.items() if k not in ("preset", "hf_config")}
    types = {f.name: f.type for f in fields(ModelSpec)}
    for k, v in overrides.items():
        typ = {"int": int, "float": float, "bool": bool, "str": str}[str(types[k])]
        base[k] = _check(v, typ, file, f"model.{k}")
    if base.get("positions", "rotary") != "rotary" and "rotary_fraction" not in overrides:
        base.pop("rotary_fraction", None)  # a preset's partial rotary, positions overridden
    if not base.get("parallel_residual") and "shared_norm" not in overrides:
        base.pop("shared_norm", None)  # a preset's shared norm, the block made sequential
    base.setdefault("kv_heads", base["heads"])
    base.setdefault("ffn_hidden", 4 * base["hidden"])
    return validate_model(ModelSpec(**base), file)


def parse_training(data: Any, file: str) -> TrainingSpec:
    data = dict(_mapping(data, file, "training"))
    peft_raw = _mapping(data.pop("peft", None), file, "training.peft")
    offload_raw = _mapping(data.pop("offload", None), file, "training.offload")
    peft = _build(PeftSpec, peft_raw, file, "training.peft.", PEFT_CHOICES)
    check_lp_ft_keys(peft, peft_raw, file)
    offload = _build(OffloadSpec, offload_raw, file, "training.offload.", {})
    if "recompute_modules" in data and data["recompute_modules"] is None:
        del data["recompute_modules"]  # null: the default (what --set ...=null gives)
    if data.get("recompute_modules") in ([], ""):
        # Megatron's empty list recomputes nothing; simtrain's absent key is its default
        raise ConfigError(file, "training.recompute_modules", "an empty list: selective "
                          "recompute of no module is no recompute (training.recompute: none); "
                          "leave the key out for the default, core_attn", "[]",
                          " | ".join(RECOMPUTE_MODULES))  # fmt: skip
    base = _build(TrainingSpec, {k: v for k, v in data.items()}, file, "training.",
                  TRAINING_CHOICES)  # fmt: skip
    return TrainingSpec(**{**{f.name: getattr(base, f.name) for f in fields(base)},
                           "peft": peft, "offload": offload})  # fmt: skip


def check_lp_ft_keys(peft: PeftSpec, raw: dict[str, Any], file: str) -> None:
    """LP-FT's two ways: ``phase`` (one phase) or ``probe_steps`` + ``finetune_steps`` (both
    phases, each > 0: ``_build`` refuses <= 0); never both, never one count alone, and the
    counts only with ``method: lp_ft``."""
    given = [k for k in LP_FT_STEP_KEYS if k in raw]
    if not given:
        return
    if peft.method != "lp_ft":
        raise ConfigError(
            file, f"training.peft.{given[0]}", "counts the steps of an LP-FT phase: needs "
            f"training.peft.method lp_ft, not {peft.method}", raw[given[0]],
        )  # fmt: skip
    if "phase" in raw:
        raise ConfigError(
            file, "training.peft.phase", f"conflicts with training.peft.{given[0]}: give phase "
            "to simulate one LP-FT phase, or probe_steps and finetune_steps to simulate both",
            raw["phase"],
        )  # fmt: skip
    if len(given) == 1:
        other = LP_FT_STEP_KEYS[1 - LP_FT_STEP_KEYS.index(given[0])]
        raise ConfigError(file, f"training.peft.{other}", f"missing: training.peft.{given[0]} "
                          "needs it (the steps of both LP-FT phases, each > 0)")  # fmt: skip


def check_packed_samples(s: Scenario, file: str) -> None:
    """``training.packed_sample_len`` needs samples no longer than a row, a variable-length flash
    kernel (an eager attention computes the whole masked s x s) and none of the options whose
    attention spans it does not model: context parallelism, a sliding window, prefix and
    prompt tuning."""
    t, m, p = s.training, s.model, s.parallelism
    key, n = "training.packed_sample_len", t.packed_sample_len
    if n < 0:
        raise ConfigError(file, key, "tokens a packed sample holds: 0 (one sequence a row) or "
                          "a positive length", n, f"0 .. {t.seq_len}")  # fmt: skip
    if n > t.seq_len:
        raise ConfigError(file, key, f"a packed sample must fit its row: at most "
                          f"training.seq_len = {t.seq_len}", n, f"0 .. {t.seq_len}")  # fmt: skip
    if not m.flash_attention:
        raise ConfigError(file, key, "keeps attention within each sample through a "
                          "variable-length flash kernel (cu_seqlens), but model.flash_attention "
                          "is false: an eager attention computes the whole masked seq_len x "
                          "seq_len; set model.flash_attention: true", n)  # fmt: skip
    for bad, why in ((p.cp > 1, f"parallelism.cp = {p.cp} (packed context parallelism is not "
                                "modelled)"),
                     (bool(m.sliding_window), f"model.sliding_window = {m.sliding_window}"),
                     (t.peft.method in ("prefix", "prompt"),
                      f"training.peft.method = {t.peft.method}")):  # fmt: skip
        if bad:
            raise ConfigError(file, key, f"is not simulated with {why}", n)


def check_paged_optimizer(s: Scenario, file: str) -> None:
    """``peft.paged_optimizer`` needs a PEFT method, an optimizer with states that
    bitsandbytes pages (:data:`PAGED_OPTIMIZERS`), the states on the GPU (no offload) and whole
    state tensors on one GPU (no ZeRO sharding: bitsandbytes' optimizer is a plain
    ``torch.optim.Optimizer`` over the local parameters)."""
    t, p = s.training, s.parallelism
    key = "training.peft.paged_optimizer"
    if t.peft.method == "none":
        raise ConfigError(file, key, "pages a PEFT run's optimizer states (QLoRA §3): needs "
                          "training.peft.method other than none", True)  # fmt: skip
    if t.optimizer not in PAGED_OPTIMIZERS:
        raise ConfigError(
            file, "training.optimizer", f"{t.optimizer} has no paged version (bitsandbytes pages "
            f"Adam's states; {key} is true)", t.optimizer, " | ".join(PAGED_OPTIMIZERS),
        )  # fmt: skip
    if t.offload.optimizer:
        raise ConfigError(file, key, "conflicts with training.offload.optimizer: the states "
                          "live in host memory already", True)  # fmt: skip
    if p.zero_stage and p.dp_cp > 1:
        raise ConfigError(file, key, "pages whole state tensors of one GPU's optimizer: use "
                          f"parallelism.zero_stage 0, not {p.zero_stage}", True)  # fmt: skip
    if p.dp_mode == "data_parallel" and p.dp > 1:
        raise ConfigError(file, key, "is not simulated with parallelism.dp_mode data_parallel "
                          "(GPU 0 alone holds the states; its reduction moment and the pages "
                          "are not combined): use dp_mode ddp", True)  # fmt: skip


def parse_parallelism(data: Any, file: str) -> ParallelSpec:
    data = _mapping(data, file, "parallelism")
    split = data.get("layer_split")
    if split is None or isinstance(split, str):
        return _build(ParallelSpec, data, file, "parallelism.", PARALLEL_CHOICES)
    rest = {k: v for k, v in data.items() if k != "layer_split"}
    base = _build(ParallelSpec, rest, file, "parallelism.", PARALLEL_CHOICES)
    return replace(base, layer_split=parse_split_list(split, file, LAYER_SPLITS))


def _fixed_storage(s: Scenario, key: str) -> str:
    """Why the scenario's optimizer keeps ``key`` (an optimizer-storage key) at its default:
    the setting that fixes it, and how; "" when nothing does."""
    t, p = s.training, s.parallelism
    if t.offload.optimizer:
        return (
            "training.offload.optimizer (DeepSpeed's CPU Adam keeps fp32 master weights and states)"
        )
    if s.runtime.flat_optimizer_buffers:
        return (f"runtime {s.runtime.name} (DeepSpeed keeps fp32 master weights and states at "
                "every ZeRO stage; bf16 ones together: precision bf16_pure)")  # fmt: skip
    # the parameters live sharded in fp32: ZeRO-3, and FSDP2's ZeRO-2 (reshard_after_forward
    # False: its gathers still cast from the fp32 shard; runtime zero3_gather_copy_out)
    sharded = p.zero_stage >= 3 or (p.zero_stage == 2 and s.runtime.zero3_gather_copy_out)
    if key == "master_weights" and sharded:
        return (f"parallelism.zero_stage {p.zero_stage} (FSDP / ZeRO-3 gathers 16-bit weights "
                "from the fp32 shard; 16-bit parameters there are training.precision bf16_pure)")  # fmt: skip
    return ""


def check_muon(s: Scenario, file: str) -> None:
    """Muon (costs.muon) orthogonalises whole matrices on the GPU: simtrain models Megatron-Core's
    runs of it, each matrix on one data-parallel rank (ZeRO 0 or 1: the layer-wise distributed
    optimizer, one instance), its states in fp32. Not modelled, so refused: its iterations on
    the host (DeepSpeed's CPU offload runs its CPU Adam); on sharded gradients or parameters
    (ZeRO-2/3: every matrix gathered first; Megatron-Core refuses FSDP with Muon, arguments.py
    l.1738-1739 at d98e8a64; torchtitan b5bcd76c torchtitan/distributed/flex_shard/dist_muon.py
    redistributes each FSDP shard to the matrix's owner); hybrid sharding
    (``LayerWiseDistributedOptimizer`` asserts one instance); bf16 states or master remainders
    (Megatron-Core's precision-aware optimizer runs Adam only: OptimizerConfig.__post_init__,
    optimizer_config.py l.433-436)."""
    t, p = s.training, s.parallelism
    if t.offload.optimizer:
        raise ConfigError(file, "training.offload.optimizer", "runs DeepSpeed's CPU Adam on the "
                          "host: training.optimizer muon has no host step simtrain models", True,
                          "false")  # fmt: skip
    if p.zero_stage >= 2:
        raise ConfigError(file, "parallelism.zero_stage", "shards the gradients Muon "
                          "orthogonalises as whole matrices (training.optimizer muon: modelled "
                          "as Megatron-Core's layer-wise distributed optimizer; torchtitan's "
                          "DistMuon, which moves each FSDP-sharded matrix to one owner, is not)",
                          p.zero_stage, "0 | 1")  # fmt: skip
    if p.zero_replicas > 1:
        raise ConfigError(file, "parallelism.zero_replicas", "hybrid sharding is not run with "
                          "training.optimizer muon: Megatron-Core's layer-wise distributed "
                          "optimizer asserts one instance", p.zero_replicas, "1")  # fmt: skip
    changed = t.changed_storage()
    if changed:
        key, value = changed[0]
        raise ConfigError(file, f"training.{key}", "needs Megatron-Core's precision-aware "
                          "optimizer, which stores the states or the master weights otherwise "
                          "and runs Adam only (training.optimizer muon)", value,
                          STORAGE_DEFAULTS[key])  # fmt: skip


def check_optimizer_storage(s: Scenario, file: str) -> None:
    """``optimizer_state_dtype: bf16`` stores an optimizer's fp32 states (Adam's moments, SGD's
    momentum, Adafactor's factors) in 16 bits: not plain SGD's (none), 8-bit Adam's (its own
    blocks) or QLoRA's paged fp32 states; ``master_weights: remainder`` keeps the low half of an
    fp32 master copy beside bf16 weights, so the precision must have both. Neither applies
    where the optimizer is one whose storage is fixed: DeepSpeed's (fp32 master and states at
    every ZeRO stage) and its CPU Adam, and a master other than the precision's not where the
    parameters live sharded in fp32 (ZeRO-3; FSDP2's ZeRO-2), gathered to 16 bits from the
    shard (16-bit parameters there are ``precision: bf16_pure``)."""
    t = s.training
    for key, value in t.changed_storage():
        why = _fixed_storage(s, key)
        if why:
            raise ConfigError(file, f"training.{key}", f"{value} does not apply with {why}",
                              value, STORAGE_DEFAULTS[key])  # fmt: skip
    if t.optimizer_state_dtype == "bf16":
        if t.optimizer in ("sgd", "adam8bit"):
            raise ConfigError(
                file, "training.optimizer_state_dtype", f"bf16 stores fp32 optimizer states in 16 "
                f"bits: training.optimizer {t.optimizer} has "
                f"{'none' if t.optimizer == 'sgd' else '8-bit ones'}", t.optimizer_state_dtype,
                "fp32",
            )  # fmt: skip
        if t.peft.method == "qlora" or t.peft.paged_optimizer:
            raise ConfigError(
                file, "training.optimizer_state_dtype", "bitsandbytes' paged optimizer keeps "
                "fp32 states (QLoRA, Dettmers et al. 2023 §3; training.peft.paged_optimizer)",
                t.optimizer_state_dtype, "fp32",
            )  # fmt: skip
    prec = PRECISIONS[t.precision]
    if t.master_weights != "precision" and (not prec.master or t.peft.method == "qlora"):
        raise ConfigError(
            file, "training.master_weights", f"{t.master_weights} changes a master copy that "
            f"training.precision {t.precision} does not keep"
            + (" (QLoRA keeps none)" if t.peft.method == "qlora" else ""), t.master_weights,
            "precision",
        )  # fmt: skip
    if t.master_weights == "remainder" and prec.compute_dtype != "bf16":
        # (an fp32 value's high 16 bits are a bf16 value, not an fp16 one: Megatron-Core and TE's
        # FusedAdam keep remainders for bf16 parameters only, Apex's for a bf16 model)
        raise ConfigError(
            file, "training.master_weights", "remainder keeps the low 16 bits of an fp32 master "
            f"weight beside its bf16 weight: training.precision {t.precision} has no bf16 weights",
            t.master_weights, "precision | none",
        )  # fmt: skip


def check_recompute_modules(s: Scenario, file: str) -> None:
    """``training.recompute_modules`` needs ``recompute: selective`` (Megatron reads
    --recompute-modules only with --recompute-granularity selective); moe_act needs experts and
    mla_up_proj multi-latent attention (transformer_config.py l.1960-1970 at d98e8a64)."""
    t, m = s.training, s.model
    mods = t.recompute_modules
    if mods and s.runtime.name != "megatron_core":
        raise ConfigError(
            file, "training.recompute_modules", "Megatron-Core's --recompute-modules: needs "
            f"runtime megatron_core (its TE layer spec, whose norms are fused into the "
            f"linears but MLA's and the MoE blocks'), not {s.runtime.name}", ", ".join(mods),
            "runtime megatron_core, or leave training.recompute_modules out",
        )  # fmt: skip
    if mods and t.recompute != "selective":
        raise ConfigError(
            file, "training.recompute_modules", "needs training.recompute: selective (Megatron's "
            f"--recompute-modules with --recompute-granularity selective), not {t.recompute}",
            ", ".join(mods), "training.recompute: selective",
        )  # fmt: skip
    for mod, ok, what in (("moe_act", m.is_moe, "experts (model.num_experts)"),
                          ("mla_up_proj", m.is_mla, "multi-latent attention (model.kv_lora_rank)")):  # fmt: skip
        if mod in mods and not ok:
            raise ConfigError(
                file, "training.recompute_modules", f"{mod} needs a model with {what}; this one "
                f"has none", ", ".join(mods), " | ".join(RECOMPUTE_MODULES),
            )  # fmt: skip
    delayed = PRECISIONS[t.precision].fp8_recipe == "te_delayed"
    if delayed and ({"moe_act", "layernorm"} & set(mods)):
        raise ConfigError(
            file, "training.recompute_modules", "Megatron-Core refuses moe_act and layernorm "
            f"recompute under delayed-scaling FP8 (transformer_config.py l.2000-2011 at "
            f"d98e8a64; training.precision {t.precision}): use core_attn or mla_up_proj, or a "
            "current-scaling or MX recipe", ", ".join(mods),
        )  # fmt: skip


def check_combined_1f1b(s: Scenario, file: str) -> None:
    """Megatron-Core's EP all-to-all overlap (``--overlap-moe-expert-parallel-comm``) and what
    it asserts (NVIDIA/Megatron-LM d98e8a64 core/transformer/transformer_config.py l.3002-3032):
    expert parallelism, virtual stages when pp > 1, no full recompute."""
    m, t, p = s.model, s.training, s.parallelism
    if p.ep == 1 or not m.is_moe:
        raise ConfigError(
            file, "parallelism.schedule", "combined_1f1b overlaps the expert all-to-alls: it "
            "needs an MoE model and parallelism.ep > 1", p.schedule,
        )  # fmt: skip
    if p.pp > 1 and p.virtual_stages == 1:
        raise ConfigError(
            file, "parallelism.virtual_stages", "combined_1f1b with pp > 1 needs virtual "
            "stages > 1 (Megatron-Core interleaves the combined schedule)", p.virtual_stages,
        )  # fmt: skip
    if t.recompute == "full":
        raise ConfigError(
            file, "training.recompute", "full recompute cannot run with combined_1f1b "
            "(Megatron-Core: 'disable full recomputation when enabling "
            "overlap_moe_expert_parallel_comm'); allowed: none | selective", t.recompute,
        )  # fmt: skip


def check_layout(s: Scenario, file: str) -> None:
    """Layouts that do not divide are errors, each naming the key and the numbers."""
    m, t, p = s.model, s.training, s.parallelism
    if p.pp > m.layers:
        raise ConfigError(
            file, "parallelism.pp", f"must not exceed model.layers = {m.layers} (a pipeline stage "
            "would hold no layer)", p.pp,
        )  # fmt: skip
    # ZB-V, DualPipeV: a fixed V of chunks per rank (one stage: plain gradient accumulation)
    traits = schedule_traits(p.schedule) if p.schedule in SCHEDULES and p.pp > 1 else None
    fixed = traits.chunks_per_rank if traits else 0
    if traits and not traits.takes_chunks(p.virtual_stages):
        raise ConfigError(
            file, "parallelism.virtual_stages", f"{p.schedule} always runs {fixed} chunks per "
            f"rank (a V): leave virtual_stages out or set it to {fixed}", p.virtual_stages,
        )  # fmt: skip
    # DualPipe: two pipelines of pp stages in opposite directions, each stage held twice
    dual = bool(fixed) and traits is not None and traits.bidirectional
    if dual and p.pp % 2:
        raise ConfigError(
            file, "parallelism.pp", f"{p.schedule} needs an even pp (DualPipe.step asserts "
            "num_ranks % 2 == 0)", p.pp,
        )  # fmt: skip
    uneven = uneven_keys(p)
    explicit = isinstance(p.layer_split, tuple)
    uneven_list = explicit and dual and len(set(p.layer_split)) > 1
    if fixed and ((not explicit and p.layer_split != "uniform") or uneven or uneven_list):
        key = f"parallelism.{uneven[0]}" if uneven else "parallelism.layer_split"
        over = "pp stages, each held twice" if dual else f"V of {fixed} x pp chunks"
        how = ("uniform (or an explicit list of equal entries)" if dual else
               "uniform or an explicit list")  # fmt: skip
        raise ConfigError(
            file, key, f"{p.schedule} splits the layers over its {over}: use layer_split: "
            f"{how}, without first/last-stage or account-for keys",
            getattr(p, uneven[0]) if uneven else p.layer_split,
        )  # fmt: skip
    v = 1 if dual else fixed or p.virtual_stages
    why = split_problem(m.layers, replace(p, virtual_stages=v))  # spec.stage_split
    if why:
        key, text, value = why
        raise ConfigError(file, key, text + (f" ({p.schedule}: {fixed} chunks per rank)"
                                             if fixed else ""), value)  # fmt: skip
    per_stage = schedule_traits(p.schedule).min_microbatches_per_stage if fixed else 0
    if p.pp > 1 and per_stage and s.num_microbatches < per_stage * p.pp * fixed:
        raise ConfigError(
            file, "training.global_batch", f"{p.schedule} needs at least "
            f"{per_stage * p.pp * fixed} micro-batches (one per stage, 2 x pp; "
            f"{'DualPipe.step' if dual else 'PyTorch ScheduleDualPipeV'}): global_batch / "
            f"(micro_batch x dp) = {s.num_microbatches}", t.global_batch,
        )  # fmt: skip
    if p.pp > 1 and dual and s.num_microbatches % 2:
        raise ConfigError(
            file, "training.global_batch", f"{p.schedule} sends half the micro-batches each "
            f"way: global_batch / (micro_batch x dp) = {s.num_microbatches} must be even",
            t.global_batch,
        )  # fmt: skip
    if m.heads % p.tp or m.kv_heads % p.tp:
        raise ConfigError(
            file, "parallelism.tp", f"must divide model.heads = {m.heads} and model.kv_heads = "
            f"{m.kv_heads}", p.tp,
        )  # fmt: skip
    if m.qk_norm and m.qk_norm_width == "full" and p.tp > 1:
        # A row statistic over all of q (k) that TP splits by heads: OLMo-core redistributes q
        # and k by all-to-all around the norm (Attention.apply_tp); not modelled.
        raise ConfigError(
            file, "model.qk_norm_width", "full (OLMo 2's norm over all of q and of k) with "
            f"parallelism.tp = {p.tp} needs communication simtrain does not model (the norm's "
            "statistics span every TP rank's heads): tp 1, or qk_norm_width: head", "full",
            "head with parallelism.tp > 1",
        )  # fmt: skip
    if p.cp > 1:
        check_context_parallel(s, file)
    if m.sliding_window and m.flash_attention and t.peft.method == "prefix":
        raise ConfigError(
            file, "training.peft.method", "prefix tuning's keys with sliding-window attention "
            "are not modelled (which of them a window keeps): another method, or "
            "model.sliding_window: 0", t.peft.method,
        )  # fmt: skip
    if p.schedule == "combined_1f1b":
        check_combined_1f1b(s, file)
    if t.global_batch % (t.micro_batch * p.dp):
        raise ConfigError(
            file, "training.global_batch", f"must be a multiple of micro_batch x dp = "
            f"{t.micro_batch} x {p.dp} = {t.micro_batch * p.dp}", t.global_batch,
        )  # fmt: skip
    if p.gpus != s.cluster.gpus:
        raise ConfigError(
            file, "cluster", f"nodes x gpus_per_node = {s.cluster.gpus} GPUs but "
            f"{_degrees(p)} = {p.gpus}", None,
        )  # fmt: skip
    if s.cluster.gpus_per_node > s.hardware.gpus_per_node:
        raise ConfigError(
            file, "cluster.gpus_per_node", f"hardware {s.hardware.name} has at most "
            f"{s.hardware.gpus_per_node} GPUs per node", s.cluster.gpus_per_node,
        )  # fmt: skip
    if t.offload.parameters and p.zero_stage != 3:
        raise ConfigError(
            file, "training.offload.parameters", "parameter offload needs parallelism.zero_stage "
            f"= 3 (DeepSpeed offload_param is a ZeRO-3 option), not {p.zero_stage}", True,
        )  # fmt: skip
    if t.offload.optimizer and p.pp > 1 and schedule_traits(p.schedule).steps_every_microbatch:
        raise ConfigError(
            file, "training.offload.optimizer", "optimizer offload steps once per mini-batch "
            f"after the gradients reach the host; parallelism.schedule = {p.schedule} steps after "
            "every micro-batch (DeepSpeed has no such pipeline): use a flushing schedule", True,
        )  # fmt: skip
    if t.offload.activation_layers:
        check_layer_offload(s, file)
    if t.packed_sample_len:
        check_packed_samples(s, file)
    if t.fp8_params:
        if t.precision not in FP8_PARAM_PRECISIONS:
            raise ConfigError(file, "training.fp8_params", "FP8 primary weights are Transformer "
                              f"Engine's FP8 recipes' (training.precision = {t.precision})",
                              True, " | ".join(FP8_PARAM_PRECISIONS))  # fmt: skip
        if s.runtime.name != "megatron_core":
            raise ConfigError(file, "training.fp8_params", "FP8 primary weights are "
                              "Megatron-Core's (--fp8-param-gather): needs runtime megatron_core, "
                              f"not {s.runtime.name}", True)  # fmt: skip
        if p.zero_stage >= 3:
            raise ConfigError(file, "training.fp8_params", "FP8 primary weights under ZeRO-3 / "
                              "FSDP are not modelled: parallelism.zero_stage <= 2, or false",
                              True)  # fmt: skip
    if t.offload.activations and t.recompute != "full":
        raise ConfigError(
            file, "training.offload.activations", "activation offload moves the checkpoints of "
            "full recompute to the host (DeepSpeed cpu_checkpointing): needs training.recompute "
            f"= full, not {t.recompute}", True,
        )  # fmt: skip
    if t.offload.activations and schedule_traits(p.schedule).split_backward:
        raise ConfigError(
            file, "training.offload.activations", "activation offload restores a chunk's "
            "checkpoints for its whole backward; a split backward (parallelism.schedule = "
            f"{p.schedule}) keeps them until its deferred weight gradients: use gpipe, 1f1b "
            "or interleaved", True,
        )  # fmt: skip
    if p.virtual_stages > 1 and p.pp == 1:
        raise ConfigError(
            file, "parallelism.virtual_stages", "virtual stages need pipeline parallelism (pp > 1)",
            p.virtual_stages,
        )  # fmt: skip
    if isinstance(p.layer_split, str) and p.layer_split != "uniform" and p.virtual_stages > 1:
        raise ConfigError(
            file, "parallelism.layer_split", f"{p.layer_split} splits one chunk per stage: use "
            "uniform with virtual stages > 1", p.layer_split,
        )  # fmt: skip
    looped_virtual = p.schedule in SCHEDULES and schedule_traits(p.schedule).virtual and not fixed
    if p.virtual_stages > 1 and not looped_virtual and not fixed:  # (fixed: ZB-V, DualPipeV)
        raise ConfigError(
            file, "parallelism.virtual_stages", "only the interleaved and combined_1f1b "
            "schedules have virtual stages > 1", p.virtual_stages,
        )  # fmt: skip
    check_microbatch_groups(s, file)
    if p.sequence_parallel and p.tp == 1:
        raise ConfigError(
            file, "parallelism.sequence_parallel", "needs tp > 1", p.sequence_parallel
        )
    check_moe_layout(s, file)
    check_deepep(s, file)
    check_replicated_embedding(s, file)
    check_data_parallel(s, file)
    check_zero_replicas(s, file)
    if p.zero_stage and p.dp_mode == "naive":
        raise ConfigError(file, "parallelism.zero_stage", "ZeRO needs dp_mode: ddp", p.zero_stage)
    if t.seq_len > m.max_positions and m.positions == "learned":
        raise ConfigError(
            file, "training.seq_len", f"exceeds model.max_positions = {m.max_positions} "
            "(learned positions)", t.seq_len,
        )  # fmt: skip
    if t.seq_len_effective > m.max_positions and m.positions == "learned":
        raise ConfigError(
            file, "training.peft.prompt_length", f"training.seq_len {t.seq_len} + "
            f"{t.peft.prompt_length} virtual tokens = {t.seq_len_effective} positions exceed "
            f"model.max_positions = {m.max_positions} (learned positions; prompt tuning's "
            "virtual tokens take positions too)", t.peft.prompt_length,
        )  # fmt: skip
    gemm = PRECISIONS[t.precision].gemm_dtype
    if gemm and not s.hardware.peak(gemm):
        ok = [n for n, x in PRECISIONS.items() if not x.gemm_dtype or s.hardware.peak(x.gemm_dtype)]
        raise ConfigError(
            file, "training.precision", f"runs its GEMMs in {gemm}, and hardware "
            f"{s.hardware.name} has no {gemm} rate (peak_tflops.{gemm})", t.precision,
            " | ".join(ok),
        )  # fmt: skip
    if t.peft.method in ("qlora",) and (t.precision == "fp32" or gemm):
        raise ConfigError(
            file, "training.precision", "QLoRA computes in 16 bits: use fp16, bf16 or bf16_pure",
            t.precision,
        )  # fmt: skip
    if t.peft.paged_optimizer:
        check_paged_optimizer(s, file)
    check_optimizer_storage(s, file)
    if t.optimizer == "muon":
        check_muon(s, file)
    check_recompute_modules(s, file)
    if not t.loss_upcast and t.precision_spec.weight_copy:  # autocast (its 16-bit copies)
        raise ConfigError(
            file, "training.loss_upcast", f"false does not apply under training.precision "
            f"{t.precision}: autocast runs cross-entropy on an fp32 copy of the logits", False,
            "true",
        )  # fmt: skip
    if not t.loss_upcast and t.cross_entropy not in PYTORCH_LOSSES:
        raise ConfigError(
            file, "training.loss_upcast", f"false applies to PyTorch's cross-entropy "
            f"({', '.join(PYTORCH_LOSSES)}); training.cross_entropy {t.cross_entropy} is its "
            "own kernel", False, "true",
        )  # fmt: skip
    if t.recompute == "selective_op" and t.peft.method != "none":
        raise ConfigError(
            file, "training.recompute", f"selective_op (torchtitan's per-op checkpointing) is "
            f"modelled for full training: training.peft.method {t.peft.method} adds matmuls the "
            "policy's counter would see; use none, selective or full", t.recompute,
        )  # fmt: skip
    if t.recompute == "selective_op" and PRECISIONS[t.precision].fp8_recipe.startswith("te_"):
        raise ConfigError(
            file, "training.recompute", f"selective_op counts aten.mm calls (torchao float8 "
            f"included); training.precision {t.precision} runs Transformer Engine modules: use "
            "fp8_tensorwise or fp8_rowwise", t.recompute,
        )  # fmt: skip
    check_size(s, file)


def check_layer_offload(s: Scenario, file: str) -> None:
    """Megatron-Core's activation offload (``training.offload.activation_layers``): what its
    TransformerConfig.__post_init__ accepts (l.1884-1899 at d98e8a64): 0 <= N < the model's
    layers, no pipeline parallelism, no activation recompute; and not beside DeepSpeed's
    checkpoint offload (``training.offload.activations``), another mechanism; and only under
    the megatron_core runtime with DDP (the knob is Megatron-Core's and Transformer Engine's)."""
    t, p, key = s.training, s.parallelism, "training.offload.activation_layers"
    n, layers = t.offload.activation_layers, s.model.layers
    if t.offload.activations:
        raise ConfigError(file, key, "conflicts with training.offload.activations (DeepSpeed's "
                          "checkpoint offload): one of the two", n)  # fmt: skip
    if s.runtime.name != "megatron_core":
        raise ConfigError(file, key, "is Megatron-Core's layer offload (Transformer Engine's CPU "
                          "offload context, transformer_block.py l.304-325): needs runtime "
                          f"megatron_core, not {s.runtime.name}", n)  # fmt: skip
    if p.dp_mode != "ddp":
        raise ConfigError(file, key, "is Megatron-Core's, which runs DDP: parallelism.dp_mode "
                          f"= {p.dp_mode} has no such offload", n)  # fmt: skip
    if n < 0 or n >= layers:
        raise ConfigError(file, key, f"Megatron-Core offloads fewer layers than the model's "
                          f"{layers}: 0 .. {layers - 1}", n)  # fmt: skip
    if p.pp > 1:
        raise ConfigError(file, key, "Megatron-Core has no CPU offloading with pipeline "
                          f"parallelism (parallelism.pp = {p.pp}): use pp 1", n)  # fmt: skip
    if t.recompute != "none":
        raise ConfigError(file, key, "Megatron-Core's CPU offloading does not work with "
                          f"activation recompute (training.recompute = {t.recompute}): use "
                          "none", n)  # fmt: skip


def check_data_parallel(s: Scenario, file: str) -> None:
    """``dp_mode: data_parallel`` is ``torch.nn.DataParallel``: one Python process drives the
    GPUs of one node from GPU 0 (torch/nn/parallel/data_parallel.py, ``DataParallel.forward``:
    scatter, replicate, parallel_apply, gather). Every key that does not apply to it is named
    in one line: pipeline, tensor, context and expert parallelism, ZeRO, more than one node."""
    p, c = s.parallelism, s.cluster
    if p.dp_mode != "data_parallel":
        return
    bad = [(f"parallelism.{k}", getattr(p, k), ok) for k, ok in
           (("pp", 1), ("tp", 1), ("cp", 1), ("ep", 1), ("zero_stage", 0))
           if getattr(p, k) != ok]  # fmt: skip
    if c.nodes != 1:
        bad.append(("cluster.nodes", c.nodes, 1))
    if bad:
        keys = ", ".join(f"{k} = {v}" for k, v, _ in bad)
        raise ConfigError(
            file, "parallelism.dp_mode", f"data_parallel (torch.nn.DataParallel: one process "
            f"replicating the model over one node's GPUs) does not apply with {keys}",
            p.dp_mode, ", ".join(f"{k}: {ok}" for k, _, ok in bad) + " (or dp_mode: ddp)",
        )  # fmt: skip


def check_zero_replicas(s: Scenario, file: str) -> None:
    """``zero_replicas`` > 1 (hybrid sharding) splits the data-parallel ranks into that many
    groups, each sharding ZeRO over its dp·cp / zero_replicas consecutive GPUs of the dp x cp
    group (Megatron-Core ``parallel_state.py`` l.922-929 and 984-992 at d98e8a64: slices of
    the dp-cp ranks): it needs ZeRO (stage 1-3) under dp_mode ddp, groups of equal size
    (``zero_replicas`` divides dp x cp) of at least 2 GPUs (one GPU a group is plain data
    parallelism: zero_stage 0). Not modelled with it: models with experts (their states shard
    over the expert-data-parallel group) and the states offloaded to the host."""
    p, t, key = s.parallelism, s.training, "parallelism.zero_replicas"
    r = p.zero_replicas
    if r == 1:
        return
    if not p.zero_stage or p.dp_mode != "ddp":
        raise ConfigError(file, key, f"replicates ZeRO's shards (hybrid sharding): needs "
                          f"parallelism.zero_stage 1, 2 or 3 with dp_mode ddp (got zero_stage "
                          f"{p.zero_stage}, dp_mode {p.dp_mode})", r, "1")  # fmt: skip
    # the replica counts that leave equal groups of at least 2 GPUs
    ok = " | ".join(str(d) for d in range(1, p.dp_cp // 2 + 1) if p.dp_cp % d == 0)
    if p.dp_cp % r:
        raise ConfigError(file, key, f"must divide dp x cp = {p.dp_cp} (groups of equal size, "
                          "at least 2 GPUs each)", r, ok)  # fmt: skip
    if p.zero_shards < 2:
        raise ConfigError(file, key, f"leaves {p.zero_shards} GPU per ZeRO group (dp x cp = "
                          f"{p.dp_cp}): nothing is sharded; use parallelism.zero_stage 0, or "
                          f"at most {p.dp_cp // 2} replicas", r, ok)  # fmt: skip
    if s.model.is_moe:
        raise ConfigError(file, key, "hybrid sharding of a model with experts is not modelled "
                          "(their states shard over the expert-data-parallel group)", r, "1")  # fmt: skip
    if t.offload.optimizer or t.offload.parameters:
        raise ConfigError(file, key, "hybrid sharding with training.offload.optimizer or "
                          "parameters (the states in host memory) is not modelled", r, "1")  # fmt: skip


def check_microbatch_groups(s: Scenario, file: str | None) -> None:
    """The interleaved schedules run the micro-batches in groups of N per model chunk
    (``parallelism.microbatch_group_size``, 0: pp): only with virtual stages > 1, and N and m
    as Megatron-Core takes them (``schedules.generators.check_group``: N <= m, m % N = 0 or
    >= pp, N >= pp unless one group holds all m < pp)."""
    p, t = s.parallelism, s.training
    n = p.microbatch_group_size  # (an integer >= 0: spec.limits.INT_RANGES)
    grouped = runs_groups(p.schedule, p.pp, p.virtual_stages)
    if n and not grouped:
        allowed = " or ".join(k for k, v in SCHEDULES.items() if v.grouped)
        raise ConfigError(
            file, "parallelism.microbatch_group_size", "groups micro-batches per model chunk: "
            f"it needs parallelism.schedule {allowed} with parallelism.virtual_stages > 1 and "
            f"pp > 1 (got schedule {p.schedule}, virtual_stages {p.virtual_stages}, pp {p.pp})",
            n,
        )  # fmt: skip
    if not grouped:
        return
    try:
        check_group(p.schedule, p.pp, s.num_microbatches, n)
    except ScheduleError as e:
        key = "parallelism.microbatch_group_size" if n else "training.global_batch"
        raise ConfigError(
            file, key, f"{e} (micro-batches = global_batch / (micro_batch x dp) = "
            f"{s.num_microbatches}; parallelism.microbatch_group_size = {n or 'pp'})",
            n if n else t.global_batch,
        ) from None  # fmt: skip


def _degrees(p: ParallelSpec) -> str:
    """``tp x pp x dp = 8 x 2 x 4`` (and ``x cp`` when there is context parallelism)."""
    if p.cp == 1:
        return f"tp x pp x dp = {p.tp} x {p.pp} x {p.dp}"
    return f"tp x pp x dp x cp = {p.tp} x {p.pp} x {p.dp} x {p.cp}"


def check_context_parallel(s: Scenario, file: str) -> None:
    """cp > 1 (Transformer Engine's context-parallel attention, ``context_parallel.py``):
    the sequence splits into 2·cp chunks, two per rank, for causal load balancing
    (``seq_len % (cp_size * 2) == 0``, ``dot_product_attention/utils.py``); only the flash /
    fused attention backends support it (UnfusedDotProductAttention is disabled), and a
    prompt or prefix of PEFT tokens outside the split sequence is not modelled."""
    m, t, p = s.model, s.training, s.parallelism
    if t.seq_len % (2 * p.cp):
        raise ConfigError(
            file, "parallelism.cp", f"splits each sequence into 2 x cp chunks (causal load "
            f"balancing): 2 x cp = {2 * p.cp} must divide training.seq_len = {t.seq_len}", p.cp,
        )  # fmt: skip
    if not m.flash_attention:
        raise ConfigError(
            file, "parallelism.cp", "context parallelism needs flash or fused attention "
            "(Transformer Engine has no unfused context-parallel attention): set "
            "model.flash_attention: true, or cp: 1", p.cp,
        )  # fmt: skip
    a2a = s.cp_all_to_all  # (cp > 1 here)
    if m.sliding_window and not a2a:
        raise ConfigError(
            file, "parallelism.cp", f"context parallelism with sliding-window attention runs "
            f"only as the all-to-all (Transformer Engine refuses a window with its K/V ring, "
            f"PyTorch's context_parallel has none): runtime.cp_attention: a2a, cp: 1, or "
            f"model.sliding_window: 0 (runtime.cp_attention is {s.runtime.cp_attention})",
            p.cp, "1 with model.sliding_window unless runtime.cp_attention: a2a",
        )  # fmt: skip
    if a2a:
        # TE AttnFuncWithCPAndQKVOA2A: "requires num_heads % cp_size == 0 for Q, K, V" (of the
        # TP rank's heads); DeepSpeed-Ulysses scatters the heads the same way (costs.cp)
        for key, heads in (("model.heads", m.heads), ("model.kv_heads", m.kv_heads)):
            if (heads // p.tp) % p.cp:
                raise ConfigError(
                    file, "parallelism.cp", f"the all-to-all (runtime.cp_attention: a2a) splits "
                    f"each TP rank's heads over the CP group: {key} / tp = {heads} / {p.tp} = "
                    f"{heads // p.tp} is not a multiple of cp = {p.cp}", p.cp,
                    f"a divisor of {heads // p.tp} ({key} / parallelism.tp), or "
                    "runtime.cp_attention: te_p2p",
                )  # fmt: skip
    if t.peft.method in ("prefix", "prompt"):
        raise ConfigError(
            file, "parallelism.cp", f"context parallelism does not split "
            f"training.peft.method = {t.peft.method}'s virtual tokens: use cp: 1 or another "
            "method", p.cp, "1 with prefix or prompt",
        )  # fmt: skip
    if p.dp_mode == "naive":
        raise ConfigError(
            file, "parallelism.dp_mode", "context parallelism reduces gradients over dp x cp "
            "with DDP: use dp_mode: ddp, or cp: 1", p.dp_mode, "ddp",
        )  # fmt: skip


def check_replicated_embedding(s: Scenario, file: str) -> None:
    """An embedding kept whole on every TP rank (runtime ``tp_replicated_embedding``) cannot be
    tied to a vocab-parallel output layer: the one weight would be whole at one end and split
    at the other (KempnerForge leaves the head unparallelized when tied, tensor_parallel.py
    l.116-120 at 01b461a7: not modelled)."""
    if s.runtime.tp_replicated_embedding and s.model.tied_embeddings and s.parallelism.tp > 1:
        raise ConfigError(file, "runtime.tp_replicated_embedding", "cannot be true with "
                          "model.tied_embeddings: true at parallelism.tp > 1 (the output layer "
                          "shares the embedding's weight and is vocab-parallel)", True,
                          "false, or model.tied_embeddings: false")  # fmt: skip


def check_deepep(s: Scenario, file: str) -> None:
    """DeepEP (runtime ``moe_dispatcher: deepep``) with expert parallelism: the EP group (ep
    GPUs tp apart, ``ParallelSpec.expert_dp``) fills whole nodes, or fits in one (DeepEP's internode
    kernels pair each GPU with the same in-node index on every other node), and its kernels'
    SMs (``moe_dispatch_sms``) leave some to the compute (hardware ``sm_count``)."""
    rt, p = s.runtime, s.parallelism
    if rt.moe_dispatcher != "deepep" or p.ep == 1:
        return
    stride, gpn = p.etp, s.cluster.gpus_per_node  # the expert grid's EP stride
    per_node = group_gpus_per_node(p.ep, stride, gpn)
    # whole nodes: that many on every node any EP group touches (group_span: none straddles a
    # node boundary with fewer, as a pipeline stage that is not whole nodes would make it)
    if p.ep % per_node or group_span(p.ep, stride, p.dp * p.tp * p.cp, p.pp, gpn)[1] != per_node:
        raise ConfigError(file, "runtime.moe_dispatcher", f"deepep needs the expert-parallel "
                          f"group in whole nodes: parallelism.ep = {p.ep} puts {per_node} ranks "
                          f"on a node ({gpn} GPUs, expert-tp = {stride} apart)", "deepep",
                          "alltoall")  # fmt: skip
    sms = s.hardware.sm_count
    if sms and rt.moe_dispatch_sms >= sms:
        raise ConfigError(file, "runtime.moe_dispatch_sms", f"must leave SMs to the compute: "
                          f"below hardware {s.hardware.name}'s sm_count = {sms}",
                          rt.moe_dispatch_sms, f"1 .. {sms - 1}")  # fmt: skip


#: A value of a runtime option that only applies where the layout has its communication.
_ON = {"tp_comm_overlap": True, "tp_backward_overlap": True, "tp_regather_backward": True,
       "overlap_param_gather": True, "moe_dispatcher": "deepep",
       "moe_fp8_dispatch": True, "grad_sync_last_microbatch": True,
       "tp_replicated_embedding": True}  # fmt: skip


def inapplicable_runtime_options(tp: int, zero_stage: int, ep: int,
                                 precision: str) -> dict[str, str]:  # fmt: skip
    """The runtime options (with the value :data:`_ON` names) that a layout of ``tp``,
    ``zero_stage`` and ``ep`` in ``precision`` has nothing for, each with why: TP comm overlap at tp 1, the ZeRO-1/2
    param-gather overlap without ZeRO-1/2, DeepEP without expert parallelism, FP8 dispatch
    without expert parallelism or an FP8 precision."""
    fp8 = bool(PRECISIONS[precision].gemm_dtype)
    out = {}
    if tp == 1:
        for key in ("tp_comm_overlap", "tp_backward_overlap", "tp_regather_backward"):
            out[key] = "times tensor-parallel collectives, but parallelism.tp = 1 has none"
        out["tp_replicated_embedding"] = ("keeps the embedding whole on every tensor-parallel "
                                          "rank, but parallelism.tp = 1 has one")  # fmt: skip
    if zero_stage not in (1, 2):
        out["overlap_param_gather"] = ("overlaps the all-gather of ZeRO-1/2's updated "
                                       f"parameters, but parallelism.zero_stage = {zero_stage} "
                                       "has none (use 1 or 2)")  # fmt: skip
    if zero_stage != 3:
        out["grad_sync_last_microbatch"] = ("holds ZeRO-3's unsharded gradients until the last "
                                            "micro-batch, but parallelism.zero_stage = "
                                            f"{zero_stage} (use 3)")  # fmt: skip
    if ep == 1:
        out["moe_dispatcher"] = ("dispatches tokens over expert parallelism, but "
                                 "parallelism.ep = 1 has none")  # fmt: skip
    if ep == 1 or not fp8:
        out["moe_fp8_dispatch"] = ("sends FP8 activations to the experts: needs parallelism.ep "
                                   f"> 1 and an FP8 training.precision (got ep {ep}, "
                                   f"{precision})")  # fmt: skip
    return out


def unused_runtime_options(s: Scenario, *, zero_stage: int | None = None,
                           pp: int | None = None, tp: int | None = None,
                           sequence_parallel: bool | None = None) -> dict[str, str]:  # fmt: skip
    """The runtime options whose every value means the same for ``s`` (its layout, with
    ``zero_stage``, ``pp``, ``tp`` and ``sequence_parallel`` where given, and its model and
    hardware), each with why: the option times or keeps something ``s`` does not have. A
    scenario that sets one to other than its profile's or the neutral value is refused
    (:func:`unused_settings`, :func:`check_runtime_options`; a fuzz campaign found each of them
    accepted without a word). Beside :func:`inapplicable_runtime_options`, whose options are
    on/off switches of the layout's communication."""
    p, m, rt = s.parallelism, s.model, s.runtime
    zero = p.zero_stage if zero_stage is None else zero_stage
    pp = p.pp if pp is None else pp
    tp = p.tp if tp is None else tp
    sp = p.sequence_parallel if sequence_parallel is None else sequence_parallel
    out = {}
    if p.cp == 1:
        out["cp_attention"] = ("chooses how context parallelism exchanges the attention's "
                               "K/V, but parallelism.cp = 1 has no exchange")  # fmt: skip
    if pp == 1:
        for key in ("pipeline_keeps_stage_outputs", "pipeline_keeps_last_outputs"):
            out[key] = "keeps pipeline stages' outputs, but parallelism.pp = 1 has no pipeline"
    if pp == 1 or not all_warmup_order(True, p.schedule, p.virtual_stages):
        out["interleaved_all_warmup_at_pp"] = (
            "orders the interleaved schedule's warm-up, but the layout runs no interleaved "
            f"schedule (parallelism.schedule {p.schedule}, pp {pp}, virtual_stages "
            f"{p.virtual_stages})")  # fmt: skip
    if zero < 3:  # (read by ZeRO-3's per-layer gathers only: costs.workload)
        out["zero3_per_gpu_nic"] = ("times ZeRO-3's per-layer gathers and reductions, but "
                                    f"parallelism.zero_stage = {zero} (use 3)")  # fmt: skip
    if zero < 2:  # (FSDP2's copy-out also under its ZeRO-2 mode: costs.memory)
        out["zero3_gather_copy_out"] = ("copies sharded parameters' gathers out, but "
                                        f"parallelism.zero_stage = {zero} gathers none (use 2 "
                                        "or 3)")  # fmt: skip
    out.update(model_unused_runtime_options(m))
    if rt.moe_dispatcher != "deepep" or p.ep == 1:
        out["moe_dispatch_sms"] = ("sets DeepEP's SMs, but the layout dispatches no tokens "
                                   f"through DeepEP (runtime.moe_dispatcher {rt.moe_dispatcher}, "
                                   f"parallelism.ep {p.ep})")  # fmt: skip
    if tp == 1 or not sp:
        out["tp_gather_buffers"] = ("keeps sequence-parallel all-gather buffers, but the layout "
                                    f"has none (parallelism.tp {tp}, sequence_parallel "
                                    f"{str(sp).lower()})")  # fmt: skip
    if m.flash_attention and rt.attention_kernel == "fa3" and s.hardware.gpu_arch != "hopper":
        # (FlashAttention-3 is built for SM90 only: Dao-AILab/flash-attention README,
        # "FlashAttention-3 ... Requirements: H100 / H800 GPU"; the hopper/ directory). Other
        # kernels a profile has no class of are priced as GEMM FLOPs, as `simtrain run` says.
        out["attention_kernel"] = ("fa3 is FlashAttention-3, built for Hopper (SM90) GPUs "
                                   f"only, and hardware {s.hardware.name} is not one")  # fmt: skip
    return out


def model_unused_runtime_options(m: ModelSpec) -> dict[str, str]:
    """The runtime options of :func:`unused_runtime_options` that ``m`` alone rules out, whatever
    the layout (a plan's check): experts' options on a dense model, the window's without one,
    the FlashAttention kernel without flash attention."""
    out = {}
    no_flash = f"model {m.name} does not use flash attention (model.flash_attention false)"
    if not m.is_moe:
        none = f"model {m.name} has no experts (model.num_experts 0)"
        out["moe_implementation"] = f"prices an MoE layer's host work, but {none}"
        out["moe_dispatch_sms"] = f"sets DeepEP's SMs, but {none}"
        out["moe_dispatcher"] = f"dispatches tokens to experts, but {none}"
        out["moe_fp8_dispatch"] = f"sends FP8 activations to experts, but {none}"
    if not m.sliding_window or not m.flash_attention:  # (costs.compute: flash kernels only)
        why = (f"model {m.name} has no window (model.sliding_window 0)" if not m.sliding_window
               else no_flash)  # fmt: skip
        out["sliding_window_kernel"] = f"prices a sliding window's flash attention, but {why}"
    if not m.flash_attention:
        out["attention_kernel"] = f"chooses the FlashAttention kernel, but {no_flash}"
    return out


def unused_settings(options: dict[str, str], runtime: dict[str, Any],
                    rt: RuntimeProfile) -> dict[str, str]:  # fmt: skip
    """Of ``options`` (key -> why it cannot apply: :func:`unused_runtime_options`,
    :func:`model_unused_runtime_options`), those the ``runtime:`` mapping (a scenario's or a
    plan's, read as ``rt``) sets to other than its profile's value and the neutral one (off,
    none kept), which may always be written out."""
    profile = load_runtime(rt.name)
    defaults = RuntimeProfile.__dataclass_fields__
    return {k: why for k, why in options.items()
            if k in runtime and getattr(rt, k) not in (getattr(profile, k), defaults[k].default)}  # fmt: skip


def refuse_unused_settings(options: dict[str, str], runtime: dict[str, Any], rt: RuntimeProfile,
                           file: str | None) -> None:  # fmt: skip
    """The ConfigError naming the first of :func:`unused_settings`, where there is one."""
    if bad := unused_settings(options, runtime, rt):
        key = next(iter(bad))
        raise ConfigError(file, f"runtime.{key}", bad[key], runtime[key])


def _yaml_value(value: Any) -> str:
    """A runtime value as ``--set`` writes it: a name as it is, anything else as JSON (which
    is YAML: false, [1, 2])."""
    if isinstance(value, str):
        return value
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def runtime_off_overrides(s: Scenario, tp: int, zero_stage: int, ep: int, *,
                          pp: int | None = None,
                          sequence_parallel: bool | None = None) -> tuple[str, ...]:  # fmt: skip
    """``--set`` lines turning off the runtime options that ``s`` has on and a new layout of
    ``tp``, ``zero_stage``, ``ep`` (and ``pp``, ``sequence_parallel``, where given) has nothing for
    (:func:`inapplicable_runtime_options`, :func:`unused_runtime_options`), where the scenario
    turned them on over its profile (:func:`check_runtime_options` refuses those): what a
    change of layout (``simtrain compare``'s, the fit advisor's) must also set."""
    why = inapplicable_runtime_options(tp, zero_stage, ep, s.training.precision)
    profile = load_runtime(s.runtime.name)
    out = [f"runtime.{k}={_yaml_value(getattr(profile, k))}"
           for k in why if getattr(s.runtime, k) == _ON[k] != getattr(profile, k)]  # fmt: skip
    unused = unused_runtime_options(
        s, zero_stage=zero_stage, pp=pp, tp=tp, sequence_parallel=sequence_parallel
    )
    out += [f"runtime.{k}={_yaml_value(getattr(profile, k))}" for k in unused
            if k not in why and getattr(s.runtime, k) != getattr(profile, k)]  # fmt: skip
    return tuple(out)


def check_runtime_options(s: Scenario, runtime: Any, file: str) -> None:
    """A scenario file's ``runtime:`` that turns on an option its layout has nothing for
    (:func:`inapplicable_runtime_options`) is an error naming both keys. (A plan's layouts
    leave such options out of their scenarios: apps.plan.layouts.)"""
    if not isinstance(runtime, dict):
        return
    p = s.parallelism
    why = inapplicable_runtime_options(p.tp, p.zero_stage, p.ep, s.training.precision)
    for key, text in why.items():
        if runtime.get(key) == _ON[key]:
            raise ConfigError(file, f"runtime.{key}", text, runtime[key])
    refuse_unused_settings(unused_runtime_options(s), runtime, s.runtime, file)
    if runtime.get("cuda_graph_scope"):
        _check_graph_scope_fits(s, file)


def _check_graph_scope_fits(s: Scenario, file: str) -> None:
    """Megatron-Core's checks of per-layer CUDA graph scopes against the model and the
    recompute (megatron/core/transformer/transformer_config.py l.2825-2858 at d98e8a64): MoE
    scopes need an MoE model, the mlp scope a dense block, activation offload no graphs, and
    full recompute the whole-iteration graph."""
    m, scope = s.model, s.runtime.cuda_graph_scope
    key = "runtime.cuda_graph_scope"
    moe = [x for x in scope if x.startswith("moe")]
    if moe and not m.is_moe:
        raise ConfigError(file, key, f"{', '.join(moe)} capture an MoE block's parts and "
                          f"model {m.name} has none (model.num_experts)", list(scope),
                          "attn | mlp")  # fmt: skip
    if "mlp" in scope and m.is_moe and not m.dense_layers_in(0, m.layers):
        raise ConfigError(file, key, f"mlp captures a dense block's MLP and every block of "
                          f"model {m.name} is MoE (use moe or moe_router)", list(scope))  # fmt: skip
    if s.training.offload.activation_layers:
        # (transformer_config.py l.1722-1723 at megatron-core 0.16.1)
        raise ConfigError(file, key, "per-layer CUDA graphs with training.offload."
                          "activation_layers: Megatron has no CUDA graphs with CPU offloading",
                          list(scope))  # fmt: skip
    if s.training.recompute == "full":
        raise ConfigError(file, key, "per-layer CUDA graphs with training.recompute full: "
                          "Megatron captures full recompute only in a whole-iteration graph "
                          "(runtime.dispatch: cuda_graphs)", list(scope))  # fmt: skip


#: The widest gradient a precision keeps, bytes per parameter (fp32: 4).
WIDEST_GRAD_BYTES = max(p.grad for p in PRECISIONS.values())


def ddp_buckets_bound(m: ModelSpec, bucket_mb: float) -> int:
    """At most how many gradient buckets of ``bucket_mb`` MB a step reduces: every parameter's
    gradient at the widest (:data:`WIDEST_GRAD_BYTES`, g), ceil(P·g / bucket bytes)."""
    return -(-m.total_params() * WIDEST_GRAD_BYTES // max(1, int(bucket_mb * 1e6)))


def smallest_bucket_mb(m: ModelSpec) -> float:
    """The smallest ``bucket_mb``, to 1e-4 MB, that :func:`ddp_buckets_bound` keeps within
    :data:`MAX_DDP_BUCKETS`: ceil(P·g / MAX) bytes, rounded up to a whole 100 bytes and one
    step of 100 more (``int(mb * 1e6)`` of a printed 4-decimal value may land a byte short)."""
    return (-(-m.total_params() * WIDEST_GRAD_BYTES // (MAX_DDP_BUCKETS * 100)) + 1) / 1e4


def check_size(s: Scenario, file: str) -> None:
    """Limits across fields (spec.limits): GPUs, micro-batches x layers, activation bytes,
    gradient buckets."""
    m, t, p = s.model, s.training, s.parallelism
    if p.gpus > MAX_GPUS:
        raise ConfigError(
            file, "parallelism", f"{_degrees(p)} = {p.gpus:,} GPUs: at most {MAX_GPUS:,}",
        )  # fmt: skip
    work = s.num_microbatches * m.layers
    if work > MAX_MICROBATCH_LAYERS:
        raise ConfigError(
            file, "training.global_batch", f"gives {s.num_microbatches:,} micro-batches per step "
            f"(global_batch / (micro_batch x dp)) x model.layers = {m.layers} = {work:,}: at most "
            f"{MAX_MICROBATCH_LAYERS:,} (the simulator runs each micro-batch through each layer "
            "and pipeline stage); raise micro_batch or dp", t.global_batch,
        )  # fmt: skip
    sb = t.seq_len_effective * t.micro_batch
    pe = t.peft
    per_layer = sb * (m.hidden + m.ffn_hidden + m.heads * t.kv_len + pe.rank + pe.adapter_size)
    activations = 64 * s.num_microbatches * (m.layers * per_layer + sb * m.vocab)
    if activations > MAX_ACTIVATION_BYTES:
        raise ConfigError(
            file, "training", f"micro-batches x micro_batch x sequence x model width bound one "
            f"GPU's activations by {activations:.3g} bytes: at most 2^62 = "
            f"{MAX_ACTIVATION_BYTES:.3g} (the simulator counts them in 64-bit integers)",
        )  # fmt: skip
    if p.dp > 1 and p.dp_mode == "ddp":
        buckets = ddp_buckets_bound(m, p.bucket_mb)
        if buckets > MAX_DDP_BUCKETS:
            raise ConfigError(
                file, "parallelism.bucket_mb", f"cuts {m.total_params():,} parameters' gradients "
                f"into up to {buckets:,} buckets: at most {MAX_DDP_BUCKETS:,}; give buckets of "
                f"at least {smallest_bucket_mb(m):.4f} MB (the default is the framework's)",
                p.bucket_mb,
            )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Overrides and loading

#: The model keys that override a preset's or a config.json's architecture (every ModelSpec
#: field but the name and the run's choices: dropout, flash attention, positions' table, the
#: routing's rates).
PRESET_SHAPE_KEYS = frozenset(f.name for f in fields(ModelSpec)) - {
    "name", "dropout", "attention_dropout", "flash_attention", "max_positions",
    "capacity_factor", "moe_load_imbalance"}  # fmt: skip

TOP_KEYS = ("name", "description", "model", "hardware", "runtime", "cluster", "training",
            "parallelism")  # fmt: skip


def apply_override(data: dict[str, Any], assignment: str, file: str = "--set") -> None:
    """``training.micro_batch=2`` sets data["training"]["micro_batch"] = 2 (value parsed as YAML);
    ``runtime.KEY=V`` on a scenario whose runtime is a name overrides that runtime's KEY."""
    if "=" not in assignment:
        raise ConfigError("--set", assignment, "expected KEY.PATH=VALUE", assignment)
    path, raw = assignment.split("=", 1)
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise ConfigError("--set", assignment, "empty key path")
    if len(keys) != len(path.strip().split(".")):
        # (training..micro_batch, .training.micro_batch and training.micro_batch. were read as
        # training.micro_batch: a fuzz campaign)
        raise ConfigError("--set", path.strip(), "an empty key in the path (two dots, or a dot "
                          "at an end)", allowed="KEY.KEY=VALUE")  # fmt: skip
    if len(keys) > MAX_DEPTH:
        raise ConfigError("--set", path, f"key path deeper than {MAX_DEPTH} levels")
    dotted = ".".join(keys)
    try:
        value = parse_yaml(raw, "--set", dotted) if raw.strip() else ""
    except ConfigError as exc:  # name the key whose value it is, not a line of the value
        if exc.key.startswith(dotted + "."):  # a key given twice inside the value
            raise
        raise ConfigError("--set", dotted, exc.message, raw) from None
    node = data
    for i, k in enumerate(keys[:-1]):
        child = node.get(k)
        if child is None:
            child = {}
            node[k] = child
        if i == 0 and k == "runtime" and isinstance(child, str):
            child = {"name": child}  # runtime: NAME is runtime: {name: NAME} with overrides
            node[k] = child
        if not isinstance(child, dict):
            raise ConfigError("--set", ".".join(keys[: i + 1]), "is not a mapping", child)
        node = child
    old = node.get(keys[-1])
    if value is None or value == {}:
        # (--set training=null, or training={}, silently dropped the file's whole training
        # block for the defaults, and runtime=null a runtime named by the file: a fuzz
        # campaign and its review)
        if isinstance(old, dict) and old:
            inner = ", ".join(sorted(str(k) for k in old)[:4]) + (", ..." if len(old) > 4
                                                                 else "")  # fmt: skip
            raise ConfigError("--set", dotted, f"{raw.strip() or 'null'} would drop the whole "
                              f"{dotted} mapping the file sets ({inner}) for the defaults; set "
                              f"the keys inside it ({dotted}.KEY=VALUE)", raw.strip())  # fmt: skip
        if dotted == "runtime" and isinstance(old, str) and old:
            raise ConfigError("--set", dotted, f"{raw.strip() or 'null'} would drop the runtime "
                              f"the file names ({old}) for the default; name one "
                              "(runtime=NAME)", raw.strip())  # fmt: skip
    if dotted in ("model.preset", "model.hf_config") and value is not None:
        # (the file's shape keys override a preset: --set model.preset=llama3-70b on a model
        # spelled out key by key changed nothing: a fuzz campaign)
        shape = sorted(k for k in node if k in PRESET_SHAPE_KEYS)
        if shape:
            raise ConfigError("--set", dotted, f"the model keys already given "
                              f"({', '.join(shape[:4])}{', ...' if len(shape) > 4 else ''}, by "
                              "the file or an earlier --set) would override it; give "
                              f"the whole model (model={{{keys[-1]}: ...}}) or set those keys",
                              raw.strip())  # fmt: skip
    node[keys[-1]] = value


def check_overrides_once(overrides: Sequence[str], flag: str = "--set") -> None:
    """The user's ``--set`` assignments set each key once: ``--set training.micro_batch=2 --set
    training.micro_batch=4`` would keep the second silently (as ``--variants`` refuses within a
    variant), and so would ``--set training.peft.rank=4 --set training.peft={method: lora}``
    (the second replaces the first's whole mapping). A key set after the mapping around it
    (``--set runtime=megatron_core --set runtime.p2p=...``) refines it and is kept.

    For the command line's own list only: callers that build on it (``compare --ladder``,
    ``fit``) append overrides that replace earlier ones on purpose."""
    seen: dict[str, str] = {}  # key path -> its assignment
    inside: dict[str, str] = {}  # each mapping around a key set -> the first such assignment
    for a in overrides:
        key = _override_path(a)
        b = one_line(a, MAX_ECHO // 2)
        if key in seen:
            f = one_line(seen[key], MAX_ECHO // 2)
            raise ConfigError(None, flag, f"sets {one_line(key, MAX_ECHO)} twice, {f!r} and "
                              f"{b!r} (the second would silently win); give it once")  # fmt: skip
        if key in inside:
            f = one_line(inside[key], MAX_ECHO // 2)
            raise ConfigError(None, flag, f"{b!r} after {f!r} replaces the whole of "
                              f"{one_line(key, MAX_ECHO)}, so {f!r} would be silently lost; "
                              "set the mapping first, then the keys inside it")  # fmt: skip
        seen[key] = a
        parts = key.split(".")
        for i in range(1, min(len(parts), MAX_DEPTH + 1)):  # deeper: apply_override refuses it
            inside.setdefault(".".join(parts[:i]), a)


MAX_NAME = 128


def check_name(value: Any, file: str, key: str = "name") -> str:
    """A name (scenario, plan): a non-empty string of at most :data:`MAX_NAME` printable
    characters, not a path (it names the output folder ``plots/<name>/``)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(file, key, "must be a non-empty string", value)
    if len(value) > MAX_NAME:
        raise ConfigError(file, key, f"must be at most {MAX_NAME} characters", value)
    if not value.isprintable() or any(c in value for c in "/\\") or value in (".", ".."):
        raise ConfigError(file, key, "must be printable characters without / or \\ (it names "
                          "the output folder plots/<name>/)", value)  # fmt: skip
    return value


def check_description(value: Any, file: str) -> str:
    if value is not None and not isinstance(value, str):
        raise ConfigError(file, "description", "must be a string", value)
    return value or ""


def default_cluster(hardware: HardwareProfile, gpus: int) -> ClusterSpec:
    """The cluster of a scenario without ``cluster:``: exactly the GPUs the layout needs, on
    nodes of the profile's ``gpus_per_node``, the last one partial (10 GPUs on 8-GPU servers:
    8 + 2; 4 GPUs: one node of 4)."""
    gpn = max(1, min(hardware.gpus_per_node, gpus))
    nodes = -(-gpus // gpn)
    return ClusterSpec(nodes=nodes, gpus_per_node=gpn, last_node_gpus=gpus % gpn)


def parse_scenario(data: Any, file: str, base_dir: Path | None = None) -> Scenario:
    """Validate a scenario mapping into a :class:`Scenario`."""
    scenario = _parse_fields(data, file, base_dir)
    check_layout(scenario, file)
    return scenario


def _parse_fields(data: Any, file: str, base_dir: Path | None) -> Scenario:
    """Every key checked on its own (types, ranges, allowed values); not yet the layout."""
    data = _mapping(data, file, "<root>")
    _no_unknown(data, TOP_KEYS, file, "")
    for k in ("model", "hardware"):
        if k not in data:
            raise ConfigError(file, k, "missing required key")
    name = data.get("name")
    name = check_name(name, file) if name is not None else (Path(file).stem or "scenario")
    check_description(data.get("description"), file)
    model = parse_model(data["model"], file, base_dir)
    if not isinstance(data["hardware"], str):
        raise ConfigError(file, "hardware", "must be a profile name or a path", data["hardware"])
    hardware = load_hardware(data["hardware"], file, "hardware", base_dir)
    cluster_raw = _mapping(data.get("cluster"), file, "cluster")
    cluster = _build(ClusterSpec, cluster_raw, file, "cluster.", {})
    training = parse_training(data.get("training"), file)
    parallelism = parse_parallelism(data.get("parallelism"), file)
    if "cluster" not in data:
        if parallelism.gpus > MAX_GPUS:
            raise ConfigError(file, "parallelism", f"{_degrees(parallelism)} = "
                              f"{parallelism.gpus:,} GPUs: at most {MAX_GPUS:,}")  # fmt: skip
        cluster = default_cluster(hardware, parallelism.gpus)
    runtime = parse_scenario_runtime(data.get("runtime"), file)
    elements = runtime.reduce_bucket_elements if runtime is not None else 0
    if elements and parallelism.zero_stage and "bucket_mb" not in (data.get("parallelism") or {}):
        # the framework's own default bucket (DeepSpeed's reduce_bucket_size), in MB of the
        # gradients' dtype (costs.comm.ddp_buckets counts bytes)
        mb = elements * PRECISIONS[training.precision].grad / 1e6
        parallelism = replace(parallelism, bucket_mb=mb)
        if (parallelism.dp > 1 and parallelism.dp_mode == "ddp"
                and ddp_buckets_bound(model, mb) > MAX_DDP_BUCKETS):  # fmt: skip
            # (named parallelism.bucket_mb, a key the user never wrote: a fuzz campaign)
            raise ConfigError(file, "runtime.reduce_bucket_elements", f"buckets of {elements:,} "
                              f"elements cut {model.total_params():,} parameters' gradients "
                              f"into up to {ddp_buckets_bound(model, mb):,} buckets: at most "
                              f"{MAX_DDP_BUCKETS:,}", elements)  # fmt: skip
    return Scenario(
        name=name, model=model, hardware=hardware, cluster=cluster,
        training=training, parallelism=parallelism, source=file, runtime_profile=runtime,
    )  # fmt: skip


def _override_path(assignment: str) -> str:
    return ".".join(k for k in assignment.split("=", 1)[0].strip().split(".") if k)


def _blame_overrides(
    exc: ConfigError, file: str, overrides: tuple[str, ...] | list[str], across: bool
) -> ConfigError:
    """An error about a key an override set names ``--set`` (the value came from it, not from
    the file); one ``across`` keys (the layout checks) names the file and the overrides applied
    to it; any other is the file's own."""
    paths = [_override_path(o) for o in overrides]
    key = str(exc.key)
    if any(key == q or key.startswith(q + ".") or q.startswith(key + ".") for q in paths):
        return exc.blaming("--set")
    if across and exc.file == file:
        shown = ", ".join(one_line(o, MAX_ECHO) for o in overrides[:4])
        more = f" and {len(overrides) - 4} more" if len(overrides) > 4 else ""
        return exc.blaming(f"{file} with --set {shown}{more}")
    return exc


def load_scenario(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> Scenario:
    """Read a scenario YAML file, apply ``--set`` overrides, validate. An error in a value an
    override set names ``--set``."""
    p = Path(path)
    data = load_yaml(p)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(p), "<root>", "a scenario must be a mapping", type(data).__name__)
    for o in overrides:
        apply_override(data, o)
    if not overrides:
        scenario = parse_scenario(data, str(p), p.parent)
        check_runtime_options(scenario, data.get("runtime"), str(p))
        return scenario
    try:
        scenario = _parse_fields(data, str(p), p.parent)
    except ConfigError as exc:
        raise _blame_overrides(exc, str(p), overrides, across=False) from None
    try:
        check_layout(scenario, str(p))
        check_runtime_options(scenario, data.get("runtime"), str(p))
    except ConfigError as exc:
        raise _blame_overrides(exc, str(p), overrides, across=True) from None
    return scenario
