"""Bytes per element of every kind of tensor, per training precision, and the optimizer-state and
quantisation constants that set bytes per parameter (ZeRO, Rajbhandari et al. 2020 §3;
Micikevicius et al. 2018; HF "model training anatomy"). One table: memory, costs, lowering and
``simtrain measure`` all read it; ``spec.scenario`` takes its keys as the allowed precisions."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Precision:
    """Bytes per element. ``act_mm`` = tensors saved around matmuls, ``act_norm`` = the residual
    stream saved by norms, ``act_softmax`` = attention probabilities; ``weight_copy`` = the
    16-bit copy of each matmul weight that torch.autocast makes and keeps until backward;
    ``grad_accum`` = a separate fp32 gradient-accumulation buffer per trainable parameter, kept
    next to the 16-bit gradients (counted under gradients; ZeRO-1 does not shard it, ZeRO-2
    does)."""

    name: str
    param: int
    grad: int
    master: int
    state: int  # bytes per optimizer-state element
    act_mm: int
    act_norm: int
    act_softmax: int
    weight_copy: int = 0
    compute_dtype: str = "fp32"
    grad_accum: int = 0
    # FP8 training (costs.fp8): the dtype the linear layers' GEMMs (fprop, dgrad, wgrad) run at,
    # "" when they run at ``compute_dtype``; attention core, norms, embeddings and the LM head stay
    # in ``compute_dtype`` (Transformer Engine's default; torchtitan's float8 leaves ``output``).
    gemm_dtype: str = ""
    # te_delayed | te_current | te_mxfp8 (Transformer Engine recipes) | torchao (torchao.float8)
    fp8_recipe: str = ""
    # Block size: one scale byte (MX: E8M0; NVFP4: E4M3) per block of this many values per copy
    # (0: per-tensor scaling)
    mx_block: int = 0
    # Values per byte of a quantized copy: 2 for FP4 (E2M1), else 1
    values_per_byte: int = 1
    # TE DelayedScaling amax_history_len: fp32 amax history rows per quantizer (0: no history)
    amax_history: int = 0
    # Axis-wise (per-row / per-column) scales on both GEMM operands, as torchao's rowwise recipe
    # (costs.fp8.rowwise_rescale_bytes: its backward GEMMs rescale their outputs afterwards)
    axiswise_scales: bool = False

    @property
    def optimizer_grad_read(self) -> int:
        """Bytes of gradient an optimizer step reads per parameter: the fp32 accumulation
        buffer where the precision has one, else its gradient
        (``costs.compute.optimizer_bytes_per_param``)."""
        return self.grad_accum or self.grad

    @property
    def full_master(self) -> bool:
        """A whole fp32 master copy, stepped through fp32 master gradients (mixed precision's;
        not a 16-bit remainder, :func:`with_optimizer_storage`)."""
        return self.master >= 4

    @property
    def master_remainder(self) -> bool:
        """The master copy kept as each fp32 weight's low 16 bits beside the bf16 weight."""
        return 0 < self.master < 4


_BF16 = Precision("bf16", 2, 2, 4, 4, 2, 2, 2, compute_dtype="bf16")


def _fp8(name: str, gemm_dtype: str, recipe: str, **fields: int | bool) -> Precision:
    """An FP8 recipe on bf16 mixed precision: bf16's bytes, its linear GEMMs in ``gemm_dtype``."""
    return replace(_BF16, name=name, gemm_dtype=gemm_dtype, fp8_recipe=recipe, **fields)


PRECISIONS: dict[str, Precision] = {
    # fp32: everything 4 bytes (the lecture's first slide).
    "fp32": Precision("fp32", 4, 4, 0, 4, 4, 4, 4, compute_dtype="fp32"),
    # Mixed precision with fp32 master weights (Micikevicius et al. 2018; Megatron, DeepSpeed):
    # 16-bit weights and gradients, fp32 master copy and optimizer states, 16-bit activations.
    "fp16": Precision("fp16", 2, 2, 4, 4, 2, 2, 2, compute_dtype="fp16"),
    "bf16": _BF16,
    # bf16 with fp32 gradient accumulation (nanotron ``accumulate_grad_in_fp32``): the mixed
    # precision above plus an fp32 gradient buffer, 2 + 2 + 4 + 4 + 8 = 20 bytes/param with Adam.
    # Ultra-Scale Playbook, "Memory usage in Transformers": m_params = 2N, m_grad = 2N,
    # m_params_fp32 = 4N, m_opt = 8N, and "Some libraries store grads in FP32, which would
    # require an additional 4N memory. This is done, for example, in Nanotron". nanotron
    # optim/gradient_accumulator.py (FP32GradientAccumulator.build_grad_buffers) keeps the fp32
    # buffer for every parameter "even when Zero 1 is used"; its fp32 master copy is sharded.
    "bf16_fp32_grads": Precision(
        "bf16_fp32_grads", 2, 2, 4, 4, 2, 2, 2, compute_dtype="bf16", grad_accum=4
    ),  # fmt: skip
    # Pure bf16: weights, gradients and optimizer states all bf16, no master copy.
    "bf16_pure": Precision("bf16_pure", 2, 2, 0, 2, 2, 2, 2, compute_dtype="bf16"),
    # torch.autocast (HF Trainer bf16=True): fp32 weights and gradients; matmuls see 16-bit casts;
    # norms and softmax run in fp32 (PyTorch autocast op lists), so the residual stream and the
    # attention probabilities are saved in fp32. HF "model training anatomy": 18 bytes/param
    # with AdamW = 4 + 2 (copy) + 4 (grad) + 8.
    "amp_bf16": Precision("amp_bf16", 4, 4, 0, 4, 2, 4, 4, weight_copy=2, compute_dtype="bf16"),
    "amp_fp16": Precision("amp_fp16", 4, 4, 0, 4, 2, 4, 4, weight_copy=2, compute_dtype="fp16"),
    # FP8 training on bf16 mixed precision (bf16 weights and gradients, fp32 master and Adam states,
    # as "bf16"); only the linear layers' GEMMs run in FP8 (costs.fp8 has the rules and sources).
    # Transformer Engine DelayedScaling, its default recipe (transformer_engine/common/recipe:
    # HYBRID E4M3 forward / E5M2 backward, amax_history_len 1024): FP8 weight caches, FP8 saved
    # linear inputs, per-tensor scale and amax history.
    "fp8_delayed": _fp8("fp8_delayed", "fp8", "te_delayed", amax_history=1024),
    # Transformer Engine Float8CurrentScaling (Megatron-Bridge "FP8-CS"): per-tensor scales from
    # each tensor's own amax (quantization.py: "Per-tensor current quantization does not require
    # state"), the same FP8 weight caches and saved inputs as delayed scaling.
    "fp8_current": _fp8("fp8_current", "fp8", "te_current"),
    # Transformer Engine MXFP8BlockScaling (Blackwell; E4M3, one E8M0 scale per 32 values).
    "mxfp8": _fp8("mxfp8", "mxfp8", "te_mxfp8", mx_block=32),
    # Transformer Engine NVFP4BlockScaling (Blackwell; TransformerEngine d0067d0
    # common/recipe/__init__.py l.489-555; Megatron-Core --fp4-format e2m1, fp4_recipe nvfp4,
    # transformer_config.py l.671-692 at d98e8a64): E2M1 values, two per byte, one E4M3 scale
    # per 16 consecutive values (weights: per 16 x 16 block) and an fp32 scale per tensor; the
    # row- and column-wise copies are both quantized from the 16-bit tensor.
    "nvfp4": _fp8("nvfp4", "nvfp4", "te_nvfp4", mx_block=16, values_per_byte=2),
    # torchao.float8 (torchtitan ``--model.converters float8``), dynamic scaling per tensor or
    # per row: bf16 inputs and weights are saved and cast again in the backward, no FP8 copy kept
    # (torchao/float8/float8_linear.py ``ctx.save_for_backward(input_hp, weight_hp_t)``).
    "fp8_tensorwise": _fp8("fp8_tensorwise", "fp8", "torchao"),
    "fp8_rowwise": _fp8("fp8_rowwise", "fp8", "torchao", axiswise_scales=True),
}
#: The precisions whose linear weights can be Transformer Engine's quantized primary weights
#: (training.fp8_params, Megatron-Core --fp8-param-gather): TE's FP8 recipes (delayed, current
#: scaling, MXFP8; Megatron's FP4 weights are --fp4-param-gather, not modelled).
FP8_PARAM_PRECISIONS = ("fp8_delayed", "fp8_current", "mxfp8")


# Optimizer state elements per trainable parameter (Adafactor and 8-bit Adam are counted by shape
# in costs.memory; OPTIMIZER_STATES below gives the tensors the step reads and writes).
STATES_PER_PARAM = {"sgd": 0, "sgd_momentum": 1, "adam": 2, "adamw": 2}
# bitsandbytes 8-bit Adam (Dettmers et al. 2022, "8-bit Optimizers via Block-wise Quantization"
# §2): two 1-byte states plus one fp32 absmax per block of 2048 values per state.
ADAM8BIT_BLOCK = 2048
# bitsandbytes' paged optimizers allocate a state tensor in CUDA unified memory
# (cudaMallocManaged) only for parameters of at least 1e5 elements; smaller ones get ordinary
# device tensors (bitsandbytes-foundation/bitsandbytes@95f9af3
# bitsandbytes/optim/optimizer.py, Optimizer8bit.get_state_buffer: ``if not self.is_paged or
# p.numel() < 1e5``). Only ``state1``/``state2`` are paged; 8-bit absmax stay on the GPU.
PAGED_MIN_NUMEL = 100_000
# QLoRA (Dettmers et al. 2023 §3): NF4 weights, 4 bits each; absmax per 64-value block quantised
# to 8 bits, with one fp32 constant per 256 blocks: 8/64 + 32/(64·256) = 0.127 bits/param.
NF4_BITS = 4

# State tensors the optimizer step reads and writes per parameter (8-bit Adam keeps two
# quantised states, Adafactor about one factored one, Muon one momentum per matrix element:
# its scalar Adam's second state on the embeddings, the output layer and the vectors is not
# counted in this traffic estimate).
OPTIMIZER_STATES = {**STATES_PER_PARAM, "adam8bit": 2, "adafactor": 1, "muon": 1}


#: The optimizer's own storage, beside the precision (``training.optimizer_state_dtype``,
#: ``training.master_weights``). Apex's DistributedFusedAdam, which NeMo 1.x trains with
#: (apex/contrib/optimizers/distributed_fused_adam.py at f9f19d5c: ``dtype`` is "datatype for
#: optimizer state", l.310-315; its exp_avg / exp_avg_sq shards are allocated in it, l.449-476),
#: and NeMo's setup_optimization (nemo/collections/nlp/models/language_modeling/
#: megatron_base_model.py at r2.0.0rc1 l.775-807): a bf16 state dtype equal to the bf16 model's
#: keeps no master copy (``store_params=False``: the optimizer updates the 16-bit weights), an
#: fp32 one with a bf16 model keeps only the low 16 bits of each fp32 master weight
#: (``store_param_remainders=True``: 2 B, the high 16 bits are the bf16 weight itself).
OPTIMIZER_STATE_DTYPES = ("fp32", "bf16")
MASTER_WEIGHTS = ("precision", "remainder", "none")
#: The ``training`` keys of the optimizer's storage and their defaults (the precision's own).
STORAGE_DEFAULTS = {"optimizer_state_dtype": "fp32", "master_weights": "precision"}


def with_optimizer_storage(prec: Precision, state_dtype: str = "fp32",
                           master: str = "precision") -> Precision:  # fmt: skip
    """``prec`` with the optimizer's storage: states of 2 B under a bf16 state dtype; the master
    copy the precision's ("precision"), its 16-bit remainder (2 B where the precision keeps a
    master copy) or none."""
    state = 2 if state_dtype == "bf16" else prec.state
    kept = {"precision": prec.master, "remainder": 2 if prec.master else 0, "none": 0}[master]
    if (state, kept) == (prec.state, prec.master):
        return prec
    return replace(prec, state=state, master=kept)
