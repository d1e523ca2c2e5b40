"""Parameters per GPU, tensor by tensor, and the model-state bytes they cost.

Model states follow Rajbhandari et al. 2020 (ZeRO, §3): with mixed precision and Adam a
parameter costs 2 (16-bit weight) + 2 (16-bit gradient) + K = 12 (fp32 master, momentum,
variance) bytes; PEFT methods freeze the base weights and add their own trainable tensors
(LoRA, Hu et al. 2021; QLoRA's NF4 base weights, Dettmers et al. 2023; adapters, prefixes,
prompts). Parameter counts are exact integers, tested against the model cards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from math import ceil
from typing import TYPE_CHECKING

from simtrain.spec.model import TP_REPLICATED, TP_ROW_PARALLEL, ModelSpec, tp_split_shape
from simtrain.spec.precision import (
    ADAM8BIT_BLOCK,
    NF4_BITS,
    PAGED_MIN_NUMEL,
    STATES_PER_PARAM,
    Precision,
)
from simtrain.spec.scenario import Scenario, TrainingSpec, trained_mtp_modules

if TYPE_CHECKING:
    from simtrain.layout.partition import StageBlocks


def nf4_bytes(n: int, block: int = 64) -> int:
    """Bytes of an NF4 tensor of ``n`` values with double-quantised constants (QLoRA §3)."""
    blocks = ceil(n / block)
    return ceil(n * NF4_BITS / 8) + blocks + 4 * ceil(blocks / 256)


# ---------------------------------------------------------------------------------------------
# Parameter inventory


@dataclass(frozen=True, slots=True)
class ParamTensor:
    """One parameter tensor per GPU (after TP sharding): ``rows x cols`` (cols = 1 for vectors)."""

    name: str
    rows: int
    cols: int
    trainable: bool
    nf4: bool = False  # stored 4-bit (QLoRA base weights)
    matmul: bool = False  # a matmul weight (autocast makes a 16-bit copy)

    @property
    def numel(self) -> int:
        return self.rows * self.cols


def base_trainable(peft: str, phase: str) -> bool:
    return peft == "none" or (peft == "lp_ft" and phase == "finetune")


def layer_param_tensors(m: ModelSpec, t: TrainingSpec, tp: int = 1, moe: bool | None = None,
                        ep: int = 1, etp: int = 0) -> list[ParamTensor]:  # fmt: skip
    """Parameter tensors of one transformer block on one TP rank.

    Megatron TP (Shoeybi et al. 2019 §3): Q, K, V, gate, up are column-parallel (weights and
    biases split by t), O and down are row-parallel (weights split, biases replicated), norms
    replicated. PEFT adds LoRA A/B (Hu et al. 2021 §4.1), adapters (Houlsby et al. 2019 §2.1),
    prefixes (Li & Liang 2021 §4.2). An MoE block (``moe``: default, every block of a model
    with experts) has :func:`moe_param_tensors` in place of the MLP (its routed experts split
    over ``etp``, 0: tp).
    """
    return list(_layer_param_tensors(m, t, tp, moe, ep, etp))


@lru_cache(maxsize=4096)
def _layer_param_tensors(m: ModelSpec, t: TrainingSpec, tp: int, moe: bool | None, ep: int,
                         etp: int) -> tuple[ParamTensor, ...]:  # fmt: skip
    """:func:`layer_param_tensors`, cached (the planner builds the same block for every layout
    that shares its model, TP and EP; the specs are frozen)."""
    peft = t.peft
    full = base_trainable(peft.method, peft.phase)
    qlora = peft.method == "qlora"
    bias_trainable = full or peft.method == "bitfit"
    out: list[ParamTensor] = []
    shapes = m.linear_weight_shapes()
    is_moe = m.is_moe and moe is not False
    if is_moe:
        shapes = {k: v for k, v in shapes.items() if k in m.attention_shapes()}
        out += moe_param_tensors(m, tp, ep, full, etp)
    if m.is_mla:  # q_a_layernorm, kv_a_layernorm
        out += [ParamTensor(f"{n}_layernorm.weight", w, 1, full) for n, w in
                (("q_a", m.q_lora_rank), ("kv_a", m.kv_lora_rank)) if w]  # fmt: skip
    if m.qk_norm:  # (a full-width norm, OLMo 2's, over the rank's q / k shard)
        split = tp if m.qk_norm_width == "full" else 1
        out += [ParamTensor(f"{n}_norm.weight", w // split, 1, full)
                for n, w in zip("qk", m.qk_norm_widths, strict=True)]  # fmt: skip
    if m.attention_sinks:
        out.append(ParamTensor("sinks", m.heads // tp, 1, full))
    for name, (fan_in, fan_out) in shapes.items():
        rows, cols = tp_split_shape(name, fan_in, fan_out, tp)
        is_col = name not in TP_ROW_PARALLEL and name not in TP_REPLICATED
        out.append(ParamTensor(f"{name}.weight", rows, cols, full, nf4=qlora, matmul=True))
        if m.linear_has_bias(name):
            out.append(ParamTensor(f"{name}.bias", fan_out // tp if is_col else fan_out, 1,
                                   bias_trainable))  # fmt: skip
        if peft.method in ("lora", "qlora") and name in peft.target_modules:
            r = peft.rank
            # LoRA A is split like the base input, B like the base output.
            a_rows = fan_in if is_col else fan_in // tp
            b_cols = fan_out // tp if is_col else fan_out
            out.append(ParamTensor(f"{name}.lora_A", a_rows, r, True, matmul=True))
            out.append(ParamTensor(f"{name}.lora_B", r, b_cols, True, matmul=True))
    norm_cols = 2 if m.norm == "layernorm" else 1
    for norm in m.block_norm_names:
        out.append(ParamTensor(f"{norm}.weight", m.hidden, 1, full))
        if norm_cols == 2:
            out.append(ParamTensor(f"{norm}.bias", m.hidden, 1, bias_trainable))
    if peft.method == "adapter":
        a = peft.adapter_size
        for where in ("attn", "mlp"):
            out += [
                ParamTensor(f"adapter_{where}.down", m.hidden, a, True, matmul=True),
                ParamTensor(f"adapter_{where}.down_bias", a, 1, True),
                ParamTensor(f"adapter_{where}.up", a, m.hidden, True, matmul=True),
                ParamTensor(f"adapter_{where}.up_bias", m.hidden, 1, True),
            ]
    if peft.method == "prefix":
        out.append(ParamTensor("prefix_kv", 2 * peft.prefix_length, m.kv_dim // tp, True))
    return tuple(out)


#: Name prefix of the routed experts' tensors: their gradients are reduced over the
#: expert-data-parallel group, not the data-parallel one (costs.memory, costs.workload).
EXPERT_PREFIX = "expert"


def moe_param_tensors(m: ModelSpec, tp: int, ep: int, trainable: bool,
                      etp: int = 0) -> list[ParamTensor]:  # fmt: skip
    """An MoE block's FFN on one rank: the router (h x E, replicated over TP: Megatron-Core
    ``TopKRouter``; + E bias on GPT-OSS, + E ``e_score_correction_bias`` on DeepSeek-V3), the
    E/ep local experts, each split over the expert-TP size ``etp`` like the dense MLP over TP
    (0: etp = tp, Megatron's default ``expert_tensor_parallel_size``; 1: whole experts, MoE
    parallel folding), one tensor per expert and matrix as ``TEGroupedMLP``'s ``weight{i}``,
    and the shared experts (TP-split) with Qwen2-MoE's gate."""
    h = m.hidden
    etp = etp or tp
    out = [ParamTensor("router.weight", h, m.num_experts, trainable, matmul=True)]
    if m.router_bias:
        out.append(ParamTensor("router.bias", m.num_experts, 1, trainable))
    if m.router_score_bias:
        out.append(ParamTensor("router.e_score_correction_bias", m.num_experts, 1, trainable))

    def mlp(prefix: str, f: int, tp: int) -> list[ParamTensor]:
        mats = [("gate", h, f // tp), ("up", h, f // tp)] if m.mlp == "swiglu" else []
        mats = mats or [("up", h, f // tp)]
        ts = [ParamTensor(f"{prefix}.{n}.weight", r, c, trainable, matmul=True) for n, r, c in mats]
        ts.append(ParamTensor(f"{prefix}.down.weight", f // tp, h, trainable, matmul=True))
        if m.bias:  # GPT-OSS: gate_up_proj_bias (2f, split) and down_proj_bias (h, replicated)
            ts += [ParamTensor(f"{prefix}.{n}.bias", c, 1, trainable) for n, _, c in mats]
            ts.append(ParamTensor(f"{prefix}.down.bias", h, 1, trainable))
        return ts

    for i in range(m.num_experts // ep):
        out += mlp(f"{EXPERT_PREFIX}{i}", m.expert_ffn, etp)
    for i in range(m.shared_experts):
        out += mlp(f"shared_expert{i}", m.shared_ffn, tp)
    if m.shared_expert_gate:
        out.append(ParamTensor("shared_expert_gate.weight", h, 1, trainable, matmul=True))
    return out


def embedding_param_tensors(m: ModelSpec, t: TrainingSpec, tp: int = 1) -> list[ParamTensor]:
    """Token embedding (vocab-parallel, V/t rows per rank; ``tp`` 1 where the runtime keeps it
    whole on every TP rank, :func:`embedding_tp`), learned positions (replicated),
    prompt-tuning soft tokens."""
    full = base_trainable(t.peft.method, t.peft.phase)
    out = [ParamTensor("wte", m.vocab // tp, m.hidden, full)]
    if m.positions == "learned":
        out.append(ParamTensor("wpe", m.max_positions, m.hidden, full))
    if m.embedding_norm:  # replicated over TP (Megatron-DeepSpeed VocabParallelEmbedding.norm)
        out.append(ParamTensor("embed_norm.weight", m.hidden, 1, full))
        if m.norm == "layernorm":
            out.append(ParamTensor("embed_norm.bias", m.hidden, 1, full))
    if t.peft.method == "prompt":
        out.append(ParamTensor("prompt", t.peft.prompt_length, m.hidden, True))
    return out


def head_param_tensors(
    m: ModelSpec, t: TrainingSpec, tp: int = 1, pp: int = 1
) -> list[ParamTensor]:
    """Final norm plus the LM head (and its bias, ``head_bias``). Tied embeddings share the token embedding on one GPU; with
    pipeline parallelism the last stage keeps its own copy (Megatron: word embeddings on the
    first and last stage, gradients all-reduced between them). Linear probing trains a fresh
    untied head (Kumar et al. 2022, "LP-FT", §2)."""
    full = base_trainable(t.peft.method, t.peft.phase)
    probe = t.peft.method == "linear_probe" or (
        t.peft.method == "lp_ft" and t.peft.phase == "probe"
    )
    out = [ParamTensor("norm_f.weight", m.hidden, 1, full)]
    if m.norm == "layernorm":
        out.append(ParamTensor("norm_f.bias", m.hidden, 1, full or t.peft.method == "bitfit"))
    if not m.tied_embeddings or probe:
        out.append(ParamTensor("lm_head", m.hidden, m.vocab // tp, full or probe, matmul=True))
    elif pp > 1:
        out.append(ParamTensor("lm_head(tied copy)", m.hidden, m.vocab // tp, full, matmul=True))
    if m.head_bias:  # (split like the head's output, V/t on each TP rank)
        out.append(ParamTensor("lm_head.bias", m.vocab // tp, 1,
                               full or probe or t.peft.method == "bitfit"))  # fmt: skip
    return out


def mtp_param_tensors(m: ModelSpec, t: TrainingSpec, tp: int = 1,
                      embedding: bool = False) -> list[ParamTensor]:  # fmt: skip
    """What each multi-token-prediction module the step trains (``trained_mtp_modules``) holds
    beside its transformer block (a block of the head's chunk): enorm, hnorm and its final norm,
    and eh_proj, a column-parallel 2h -> h linear (Megatron-Core ``MultiTokenPredictionLayer``
    at d98e8a64; HF checkpoint ``model.layers.61``: ``ModelSpec.mtp_params``); the output head
    is the main model's. ``embedding``: the rank holds no token embedding of its own, and the
    modules embed the shifted tokens: Megatron-Core builds one on the MTP stage
    (``GPTModel``: ``if self.pre_process or self.mtp_process``), its gradients reduced with the
    first stage's; where the rank holds the embedding (DeepSeek-V3 §3.2.3 puts it, the output
    head and the MTP module on one rank) they share it."""
    n = trained_mtp_modules(m, t)
    if not n:
        return []
    norms = [ParamTensor(f"mtp.{x}.weight", m.hidden, 1, True)
             for x in ("enorm", "hnorm", "final_norm")]  # fmt: skip
    if m.norm == "layernorm":
        norms += [ParamTensor(f"mtp.{x}.bias", m.hidden, 1, True)
                  for x in ("enorm", "hnorm", "final_norm")]  # fmt: skip
    out = (
        norms + [ParamTensor("mtp.eh_proj", 2 * m.hidden, m.hidden // tp, True, matmul=True)]
    ) * n
    return out + (embedding_param_tensors(m, t, tp) if embedding else [])


def embedding_tp(sc: Scenario) -> int:
    """The TP degree that splits ``sc``'s token embedding: ``parallelism.tp`` (vocab-parallel),
    or 1 where the runtime keeps it whole on every TP rank (runtime ``tp_replicated_embedding``)."""
    return 1 if sc.runtime.tp_replicated_embedding else sc.parallelism.tp


def end_param_tensors(m: ModelSpec, t: TrainingSpec, tp: int, pp: int, embedding: bool,
                      head: bool, own_embedding: bool | None = None,
                      emb_tp: int | None = None) -> list[ParamTensor]:  # fmt: skip
    """The tensors of a chunk (or a rank) outside its blocks: the embedding's where it holds
    the embedding (split over ``emb_tp``, :func:`embedding_tp`; default ``tp``), the head's and
    the MTP modules' where it holds the head (the MTP modules with a token embedding of their
    own where ``own_embedding`` is false: by default where the chunk holds no embedding)."""
    out: list[ParamTensor] = []
    if embedding:
        emb = embedding_param_tensors(m, t, tp if emb_tp is None else emb_tp)
        if head and m.tied_embeddings and not any(x.matmul for x in
                                                  head_param_tensors(m, t, tp, pp)):  # fmt: skip
            # the tied head's matmul runs on the token embedding's table: a matmul weight
            # (autocast casts it: a 16-bit copy, costs.params.model_state_bytes' weight_copies;
            # measured with simtrain.torchref: a tied 8,192 x 128 table's 2 MB copy was missing
            # from an autocast step's peak, -5.0 %)
            emb = [replace(x, matmul=True) if x.name == "wte" else x for x in emb]
        out += emb
    if head:
        mine = embedding if own_embedding is None else own_embedding
        out += head_param_tensors(m, t, tp, pp)
        out += mtp_param_tensors(m, t, tp, embedding=not mine)
    return out


def chunk_tensor_groups(m: ModelSpec, t: TrainingSpec, tp: int, ep: int, pp: int, lo: int,
                        hi: int, embedding: bool, head: bool, etp: int = 0,
                        emb_tp: int | None = None) -> list[tuple[int, list[ParamTensor]]]:  # fmt: skip
    """A chunk's parameter tensors on one GPU, as (copies, tensors) groups: its dense blocks
    (of blocks [lo, hi): ``ModelSpec.dense_layers_in``), its MoE blocks (E/ep local experts
    each), and once :func:`end_param_tensors` (the embedding over ``emb_tp``)."""
    moe = (hi - lo) - m.dense_layers_in(lo, hi)
    groups = [(hi - lo - moe, layer_param_tensors(m, t, tp, moe=False, ep=ep))]
    if moe:
        groups.append((moe, layer_param_tensors(m, t, tp, moe=True, ep=ep, etp=etp)))
    return [*groups, (1, end_param_tensors(m, t, tp, pp, embedding, head, emb_tp=emb_tp))]


def scenario_chunk_groups(sc: Scenario, c: StageBlocks) -> list[tuple[int, list[ParamTensor]]]:
    """:func:`chunk_tensor_groups` of ``sc``'s chunk ``c``, its embedding split as the runtime
    splits it (:func:`embedding_tp`)."""
    m, t, p = sc.model, sc.training, sc.parallelism
    return chunk_tensor_groups(m, t, p.tp, p.ep, p.pp, c.lo, c.hi, c.embedding, c.head, p.etp,
                               emb_tp=embedding_tp(sc))  # fmt: skip


def dense_layers_of(m: ModelSpec, chunks: Sequence[StageBlocks]) -> int:
    """The dense blocks ``chunks`` hold: a model with experts' first dense ones
    (``ModelSpec.dense_layers_in``), every block of a dense model."""
    if not m.is_moe:
        return sum(c.layers for c in chunks)
    return sum(m.dense_layers_in(c.lo, c.hi) for c in chunks)


def rank_tensor_groups(sc: Scenario, chunks: Sequence[StageBlocks]
                       ) -> list[tuple[int, list[ParamTensor]]]:  # fmt: skip
    """A pipeline rank's parameter tensors on one GPU (its ``chunks``), as (copies, tensors)
    groups and as ``costs.memory`` counts the rank's model states: its MoE blocks, its dense
    blocks (``ModelSpec.dense_layers_in``), and once the embedding's (over
    :func:`embedding_tp`), head's and MTP modules' tensors (unlike :func:`chunk_tensor_groups`
    summed over chunks, one embedding where a chunk of the rank holds it and the head another)."""
    m, t, p = sc.model, sc.training, sc.parallelism
    layers = sum(c.layers for c in chunks)
    dense = dense_layers_of(m, chunks)
    groups = [(dense, layer_param_tensors(m, t, p.tp, moe=False, ep=p.ep))]
    if layers > dense:
        groups.append((layers - dense, layer_param_tensors(m, t, p.tp, moe=True, ep=p.ep,
                                                           etp=p.etp)))  # fmt: skip
    ends = end_param_tensors(m, t, p.tp, p.pp, any(c.embedding for c in chunks),
                             any(c.head for c in chunks), emb_tp=embedding_tp(sc))  # fmt: skip
    return [*groups, (1, ends)]


def full_model_param_tensors(m: ModelSpec, t: TrainingSpec) -> list[ParamTensor]:
    """All parameters of the model on one GPU (no parallelism)."""
    dense = m.layers - m.moe_layers
    blocks = layer_param_tensors(m, t, moe=False) * dense
    if m.is_moe:
        blocks += layer_param_tensors(m, t) * m.moe_layers
    return embedding_param_tensors(m, t) + blocks + head_param_tensors(m, t)


def trainable_params(m: ModelSpec, t: TrainingSpec) -> int:
    return sum(p.numel for p in full_model_param_tensors(m, t) if p.trainable)


def total_params(m: ModelSpec, t: TrainingSpec) -> int:
    """Parameters including PEFT additions (base N + adapters)."""
    return sum(p.numel for p in full_model_param_tensors(m, t))


# ---------------------------------------------------------------------------------------------
# Model-state bytes


@dataclass(frozen=True, slots=True)
class ModelStateBytes:
    parameters: int
    master_weights: int
    gradients: int
    optimizer_states: int
    weight_copies: int  # autocast 16-bit copies of matmul weights (held until backward)
    params: int
    trainable: int


def model_state_bytes(tensors: list[ParamTensor], t: TrainingSpec,
                      grad_bytes: int | None = None) -> ModelStateBytes:  # fmt: skip
    """Bytes of parameters, fp32 master copies, gradients and optimizer states. ``grad_bytes``:
    the gradients' bytes per trainable element when a runtime keeps them in a buffer of its own
    dtype (:attr:`RuntimeProfile.grads_in_reduce_buffer`); by default the precision's.

    Frozen parameters get no gradient, master copy or optimizer state. QLoRA base weights are
    NF4 (:func:`nf4_bytes`); its LoRA weights stay 16-bit with no master copy (Dettmers et al.
    2023 §3: "BFloat16 computation data type", paged fp32 optimizer states).
    """
    prec = t.precision_spec
    qlora = t.peft.method == "qlora"
    params = grads = master = states = copies = 0
    n = n_train = 0
    for p in tensors:
        n += p.numel
        if p.nf4:
            params += nf4_bytes(p.numel, t.peft.quant_block_size)
        else:
            params += p.numel * prec.param
            if p.matmul:
                copies += p.numel * prec.weight_copy
        if not p.trainable:
            continue
        n_train += p.numel
        grads += p.numel * (prec.grad + prec.grad_accum if grad_bytes is None else grad_bytes)
        if not qlora:
            master += p.numel * prec.master
        state_bytes = 4 if qlora else prec.state
        states += optimizer_state_elements(p, t.optimizer) * state_bytes
        if t.optimizer == "adam8bit":
            states += 2 * p.numel + 2 * 4 * ceil(p.numel / ADAM8BIT_BLOCK)
    return ModelStateBytes(params, master, grads, states, copies, n, n_train)


def paged_state_bytes(tensors: list[ParamTensor], t: TrainingSpec) -> int:
    """Optimizer-state bytes a paged optimizer keeps in unified memory: the states of every
    trainable tensor of at least ``PAGED_MIN_NUMEL`` elements (smaller tensors' states are
    plain device tensors), as :func:`model_state_bytes` counts them, but without 8-bit Adam's
    per-block absmax (not paged): Adam/AdamW 2 states x 4 B (QLoRA: fp32 states) or x the
    precision's state bytes, 8-bit Adam 2 x 1 B (bitsandbytes@95f9af3
    bitsandbytes/optim/optimizer.py ``Optimizer2State.init_state``: ``state1``/``state2`` from
    ``get_state_buffer``, ``absmax1``/``absmax2`` from ``torch.zeros``). 0 when
    ``peft.paged_optimizer`` is off."""
    if not t.peft.paged_optimizer:
        return 0
    state_bytes = 4 if t.peft.method == "qlora" else t.precision_spec.state
    out = 0
    for p in tensors:
        if not p.trainable or p.numel < PAGED_MIN_NUMEL:
            continue
        if t.optimizer == "adam8bit":
            out += 2 * p.numel
        else:
            out += optimizer_state_elements(p, t.optimizer) * state_bytes
    return out


def scale_states(ms: ModelStateBytes, k: int) -> ModelStateBytes:
    return ModelStateBytes(*(getattr(ms, f) * k for f in ModelStateBytes.__slots__))


def add_states(a: ModelStateBytes, b: ModelStateBytes) -> ModelStateBytes:
    return ModelStateBytes(*(getattr(a, f) + getattr(b, f) for f in ModelStateBytes.__slots__))


def adam_temporaries(t: TrainingSpec, fused: bool) -> bool:
    """Whether the step allocates PyTorch's single-tensor Adam temporaries (two state-sized
    tensors of the parameter it updates: :func:`optimizer_working_bytes`): Adam or AdamW not
    run by a fused multi-tensor kernel (runtime ``fused_optimizer``)."""
    return t.optimizer in ("adam", "adamw") and not fused


def optimizer_working_bytes(tensors: list[ParamTensor], t: TrainingSpec, shards: int, *,
                            trainable: int, fused: bool = False, fp32_grad_buffer: bool = False,
                            expert_trainable: int = 0, expert_shards: int = 1) -> int:  # fmt: skip
    """Temporaries of PyTorch's single-tensor Adam/AdamW step (``foreach=False``):
    ``denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)`` holds two state-sized
    tensors of the parameter being updated, so the step needs 2 x the largest trainable tensor
    (torch/optim/adam.py ``_single_tensor_adam``; measured with simtrain.torchref.measure). SGD updates
    in place. With fp32 master weights, plus the fp32 master gradients of all ``trainable``
    parameters (below). With ZeRO the optimizer sees 1/``shards`` of each tensor.

    ``fused``: a multi-tensor fused Adam that updates in place (Transformer Engine's or apex's
    ``FusedAdam``, Megatron-Core's optimizer: NVIDIA/Megatron-LM d98e8a64
    megatron/core/optimizer/__init__.py l.14-20) has no such temporaries.
    ``fp32_grad_buffer``: the gradients already are fp32 (Megatron-Core's ``main_grad`` buffer
    with grad_reduce_in_fp32): the master gradient is a view of it, ``shard_model_grad.float()``
    of an fp32 tensor (megatron/core/optimizer/distrib_optimizer.py l.2782-2792), no copy.
    ``expert_trainable`` of the ``trainable`` parameters are routed experts' (tensors named
    :data:`EXPERT_PREFIX`...), which ZeRO shards over ``expert_shards`` ranks (the
    expert-data-parallel group: :func:`zero_shard`).
    DeepSpeed's flat ZeRO-1/2 step is ``costs.memory.flat_step_allocations``."""
    if t.offload.optimizer:
        return 0
    prec = t.precision_spec
    master_grads = 0
    if keeps_master_gradients(prec, fp32_grad_buffer):
        # Mixed precision with fp32 master weights: before the update every 16-bit gradient is
        # cast to an fp32 master gradient, all of them at once (Megatron
        # Float16OptimizerWithFloat16Params._copy_model_grads_to_main_grads; apex amp O2),
        # 4 B per trainable parameter (of the shard with ZeRO). Measured on an H200: GPT-2 XL
        # bf16 + full recompute peaks at the step, 30.22 GiB (benchmarks/measure_cuda.py).
        master_grads = prec.master * zero_shard(trainable, expert_trainable, shards, expert_shards)
    if not adam_temporaries(t, fused):
        return master_grads
    largest = max((ceil(p.numel / (expert_shards if p.name.startswith(EXPERT_PREFIX) else shards))
                   for p in tensors if p.trainable), default=0)  # fmt: skip
    state = 4 if t.peft.method == "qlora" else prec.state
    return master_grads + 2 * state * largest


def zero_shard(total: int, experts: int, dp: int, expert_dp: int) -> int:
    """One data-parallel rank's share of ``total`` elements (or bytes) under ZeRO sharding
    (Rajbhandari et al. 2020 §5): ceil((total - experts) / dp) + ceil(experts / expert_dp), the
    ``experts`` of them routed experts', which are sharded over the expert-data-parallel group
    of tp·dp·cp / (etp·ep) ranks (``ParallelSpec.expert_dp``; Megatron-Core's distributed optimizer: ``expert_data_parallel_group``)."""
    return ceil((total - experts) / max(dp, 1)) + ceil(experts / max(expert_dp, 1))


def keeps_master_gradients(prec: Precision, fp32_grad_buffer: bool = False) -> bool:
    """Does the step cast every 16-bit gradient to an fp32 master gradient first? Only with a
    whole fp32 master copy (not a 16-bit remainder or none, whose fused step reads the gradient
    buffer: Apex DistributedFusedAdam, TE FusedAdam), no fp32 accumulation buffer and a 16-bit
    gradient buffer (an fp32 one is its own master gradient)."""
    return prec.full_master and not prec.grad_accum and not fp32_grad_buffer


#: Tensors Megatron-Core marks ``is_embedding_or_output_parameter`` (the word embeddings and
#: the output layer: megatron/core/models/common/language_module/language_module.py
#: l.222-236 at d98e8a64; learned position embeddings are not marked, a matrix Muon updates)
#: and the PEFT prompt and prefix tables, embeddings too: Muon leaves them to its scalar
#: optimizer (costs.muon).
NOT_MUON = ("wte", "lm_head", "lm_head(tied copy)", "prompt", "prefix_kv")


def muon_managed(p: ParamTensor) -> bool:
    """Whether Muon (not its scalar Adam) updates ``p``: a matrix, not an embedding or the
    output layer (NVIDIA/Megatron-LM d98e8a64 megatron/core/optimizer/emerging_optimizers.py
    l.140-147 ``_is_nonlinear_or_embedding``: ``is_embedding_or_output_parameter`` or
    ``len(param.shape) != 2``)."""
    return p.rows > 1 and p.cols > 1 and p.name not in NOT_MUON


def optimizer_state_elements(p: ParamTensor, optimizer: str) -> int:
    """State elements of one tensor. SGD 0; momentum 1·n; Adam/AdamW 2·n (Kingma & Ba 2015);
    Adafactor (Shazeer & Stern 2018 §3, no first moment as in its default beta1=None): factored
    second moment rows + cols for matrices, n for vectors; Muon (costs.muon) its momentum, 1·n,
    for a matrix it orthogonalises (:func:`muon_managed`) and its scalar Adam's 2·n for every
    other tensor; 8-bit Adam counted in bytes apart."""
    if optimizer == "muon":
        return (1 if muon_managed(p) else 2) * p.numel
    if optimizer in STATES_PER_PARAM:
        return STATES_PER_PARAM[optimizer] * p.numel
    if optimizer == "adafactor":
        return p.rows + p.cols if p.cols > 1 and p.rows > 1 else p.numel
    return 0  # adam8bit: bytes added by the caller
