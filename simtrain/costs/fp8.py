"""FP8 training: which GEMMs run in FP8, the copies and scaling state a recipe keeps, and the casts
it adds.

Sources (code read at the commits named):

- Transformer Engine (NVIDIA/TransformerEngine d0067d0da6cb01811b8072a7d304f0e00344ce2b):
  ``transformer_engine/pytorch/module/linear.py`` ``_Linear.forward`` quantizes the input and the
  weight, runs the GEMM in FP8 and keeps for backward only the column-wise FP8 copy of its input
  (``inputmat.update_usage(rowwise_usage=False, columnwise_usage=True)``); the weight's FP8
  workspace (row-wise for fprop, column-wise for dgrad) is cached across micro-batches
  (``cache_name = "weight"`` when ``is_first_microbatch`` is given, as Megatron-LM does) and
  updated on the first one. ``layernorm_mlp.py`` saves ``ln_out`` (FP8), ``fc1_out`` (16-bit)
  and ``act_out`` (FP8). ``tensor/float8_tensor.py`` (``Float8Quantizer``): a row-wise copy is
  ``_data`` (1 B per value) and, where ``is_non_tn_fp8_gemm_supported()`` is False (every GPU
  but compute capability 10.x / >= 13: Hopper, Ada, ...), a column-wise copy is a second,
  transposed ``_transpose`` (1 B per value); on Blackwell (10.x) the one ``_data`` serves both.
  ``module/base.py``: a module with ``num_gemms`` GEMMs has ``num_gemms * 3`` forward quantizers
  (input, weight, output) and ``num_gemms * 2`` backward ones (grad output, grad input);
  ``quantization.py`` ``DelayedScalingRecipeState`` allocates per quantizer one fp32 ``scale`` and
  ``amax_history_len`` fp32 history rows (``DelayedScaling.amax_history_len`` = 1024 by default,
  ``common/recipe/__init__.py``); ``Float8CurrentScalingRecipeState`` keeps none (each cast first
  computes the tensor's amax). ``MXFP8BlockScaling``: E4M3 values with one E8M0 (1 B) scale per
  32 consecutive values, row-wise and column-wise copies each with their own scales.
- Megatron-LM with TE: the attention core (``DotProductAttention``), norms, embeddings and the
  output layer (a plain ``ColumnParallelLinear``) stay in bf16.
- torchao (pytorch/ao 36027d82d1ad9949597ea16002ff4940374b1b94) ``torchao/float8/float8_linear.py``:
  ``matmul_with_hp_or_float8_args`` saves the high-precision input and weight
  (``ctx.save_for_backward(input_hp, weight_hp_t)``) and casts them again in backward; every
  ``Float8Linear`` casts input and weight in forward, grad output twice (for dgrad and wgrad),
  input and weight again in backward; dynamic scaling (tensorwise, rowwise) reads a tensor for
  its amax before the cast. torchtitan's float8 converter skips the ``output`` layer.
  ``config.py`` l.215-217: the output GEMM uses fast accumulation, the input- and
  weight-gradient GEMMs do not (``Float8GemmConfig()``, ``use_fast_accum=False``); l.334-351,
  the rowwise recipe scales input, weight and grad output axis-wise. ``float8_ops.py``
  ``addmm_float8_unwrapped`` l.47-85: an axis-wise GEMM without fast accumulation ("The rowwise
  CUTLASS-based kernel is so slow without fast-accum") runs cuBLAS's tensorwise kernel at unit
  scales and then multiplies its output by the outer product of the two inverse-scale vectors
  (``output *= post_inverse_scale``), so every input- and weight-gradient output is read and
  written once more: :func:`rowwise_rescale_bytes`.

Cast traffic is an estimate counted from these rules (read the 16-bit tensor, write each FP8
copy), not a published figure; the simulator charges it as element-wise work.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from simtrain.spec.model import ModelSpec, tp_split_shape
from simtrain.spec.precision import Precision
from simtrain.spec.scenario import Scenario

#: Bytes of a 16-bit operand read by a cast.
_SRC = 2
#: Bytes of an fp32 scale, scale_inv or amax entry.
_FP32 = 4
#: TE forward / backward quantizers per GEMM (module/base.py: num_gemms * 3, num_gemms * 2).
FWD_QUANTIZERS_PER_GEMM = 3
BWD_QUANTIZERS_PER_GEMM = 2


def te_gemm_groups(m: ModelSpec) -> tuple[tuple[str, ...], ...]:
    """The GEMMs of one TE ``TransformerLayer`` (Megatron-Core's TE spec), as groups of
    simtrain's linear names: ``LayerNormLinear`` QKV, ``Linear`` proj, ``LayerNormMLP`` fc1
    (gate and up fused for SwiGLU) and fc2. Multi-head latent attention is five TE GEMMs
    (Megatron-LM d98e8a64 ``megatron/core/models/gpt/gpt_layer_specs.py`` l.246-305,
    ``transformer/multi_latent_attention.py`` l.115-125): q down (or q), q up, kv down, kv up
    and proj."""
    fc1 = ("gate", "up") if m.mlp == "swiglu" else ("up",)
    if m.is_mla:
        return (*((n,) for n in m.attention_shapes()), fc1, ("down",))
    return (("q", "k", "v"), ("o",), fc1, ("down",))


@dataclass(frozen=True, slots=True)
class Gemm:
    """One TE GEMM group of a block on one TP rank: its input and output width per token, its
    weight elements, and the token copies it runs on per token (a routed expert's: k x the
    busiest EP rank's load)."""

    width_in: int
    width_out: int
    weights: int
    tokens: float = 1.0
    gemms: int = 1  # GEMMs (one per local expert), each with its own quantizers


def _group(shapes: dict[str, tuple[int, int]], g: tuple[str, ...], tp: int,
           tokens: float = 1.0, copies: int = 1) -> Gemm:  # fmt: skip
    """The fused GEMM of linears ``g`` (one input, outputs side by side) on one TP rank, over
    ``copies`` experts (spec.model.tp_split_shape)."""
    fi, fo = shapes[g[0]][0], sum(shapes[n][1] for n in g)
    w_in, w_out = tp_split_shape(g[0], fi, fo, tp)
    return Gemm(w_in, w_out, copies * w_in * w_out, tokens, copies)


def block_gemms(m: ModelSpec, tp: int = 1, moe: bool = False, ep: int = 1,
                load: float = 1.0, etp: int = 0) -> list[Gemm]:  # fmt: skip
    """The TE GEMM groups of one block (:func:`te_gemm_groups`) on one TP rank. An MoE block
    (``moe``) has, in place of fc1 and fc2, the routed experts' (TE ``GroupedLinear``: the
    rank's E/ep local experts' weights split over the expert-TP size ``etp``, 0: tp; k·load
    token copies per token of the TP group's, etp/tp of them on this rank: with etp = tp the
    dispatcher all-gathers them, with whole experts each rank keeps its own sequence shard's)
    and the shared experts' (one fused MLP of S·f_s)."""
    shapes = m.linear_weight_shapes()
    groups = te_gemm_groups(m)
    out = [_group(shapes, g, tp) for g in groups[:-2]]
    if not moe:
        return out + [_group(shapes, g, tp) for g in groups[-2:]]
    fc1, fc2 = groups[-2], groups[-1]
    expert = m.mlp_shapes(m.expert_ffn)
    local = m.num_experts // ep
    etp = etp or tp
    # (the dispatcher gathers over the expert-TP group only when etp > 1: comm.moe_tp_pairs)
    k = m.experts_per_token * load * etp / tp
    out += [_group(expert, fc1, etp, k, local), _group(expert, fc2, etp, k, local)]
    if m.shared_experts:
        shared = m.mlp_shapes(m.shared_experts * m.shared_ffn)
        out += [_group(shared, fc1, tp), _group(shared, fc2, tp)]
    return out


def routed_expert_gemm_weights(m: ModelSpec, tp: int, ep: int, etp: int = 0) -> int:
    """Weight elements on one rank of one MoE block's routed experts (:func:`block_gemms`'
    GroupedLinear fc1 and fc2 groups: the E/ep local experts split over the expert-TP size)."""
    first = len(te_gemm_groups(m)) - 2
    gemms = block_gemms(m, tp, True, ep, etp=etp)
    return gemms[first].weights + gemms[first + 1].weights


def is_te(prec: Precision) -> bool:
    return prec.fp8_recipe.startswith("te_")


#: Transformer Engine's recipes with one fp32 scale per tensor (delayed and current scaling).
TE_PER_TENSOR = ("te_delayed", "te_current")


def torchao_tp_float8(precision: str, tp_saves_gathered_input: bool) -> bool:
    """torchao's tensorwise float8 under DTensor TP (runtime ``tp_saves_gathered_input``)
    casts the norm's output before the all-gather: the gathered, saved input is float8
    (torchtitan 9dec370a ``parallelize_llama.py`` l.147-160 ``PrepareFloat8ModuleInput``,
    ``Float8ColwiseParallel``; 820504e ``enable_float8_tensorwise_tp`` only for tensorwise)."""
    return tp_saves_gathered_input and precision == "fp8_tensorwise"


def tp_gathers_fp8(sc: Scenario, mlp: bool = False, grad: bool = False) -> bool:
    """Does a TP all-gather under sequence parallelism carry FP8 (the attention's, or with
    ``mlp`` the MLP's; with ``grad`` a row-parallel linear's output-gradient gather)?
    torchao's tensorwise TP its inputs (:func:`torchao_tp_float8`); Transformer Engine's
    per-tensor recipes both: a LayerNormLinear writes its norm's output in FP8 and gathers
    that, in the forward and again for the weight gradient (TransformerEngine 0004dbd0
    ``module/layernorm_linear.py``: ``ln_out_dtype = torch.uint8 if (fp8 and not
    return_layernorm_output)``, then ``gather_along_first_dim(ln_out, tp_group)``, and in the
    backward the same of the saved ``ln_out``), and a row-parallel Linear casts its output
    gradient before gathering it (``grad_output_preprocess``). How TE gathers MXFP8's and
    NVFP4's block-scaled copies is not read here (the activation dtype). Not an MoE block's
    MLP, whose tokens the dispatcher moves, nor an MLA block's attention, whose
    down-projections are not these column-parallel linears (its backward keeps two bf16
    all-reduces' worth: ``costs.comm.tp_backward_block``)."""
    t, m, rt = sc.training, sc.model, sc.runtime
    if not grad and torchao_tp_float8(t.precision, rt.tp_saves_gathered_input):
        return True
    return (t.precision_spec.fp8_recipe in TE_PER_TENSOR
            and sc.parallelism.sequence_parallel and not (m.is_moe if mlp else m.is_mla))  # fmt: skip


def fp8_copy_bytes(n: int, prec: Precision, weight: bool = False) -> int:
    """One quantized copy (row- or column-wise) of ``n`` values: 1 B each (FP4: 1/2 B), plus
    one scale byte per block for block-scaled recipes (MX: E8M0 per 32; NVFP4: E4M3 per 16, a
    ``weight`` per 16 x 16 block, plus its fp32 per-tensor scale); scale padding to TE's
    128 x 4 tiles ignored (exact when both dims are multiples of 128)."""
    values = ceil(n / prec.values_per_byte)
    if not prec.mx_block:
        return values
    if prec.fp8_recipe == "te_nvfp4":
        block = prec.mx_block * (prec.mx_block if weight else 1)
        return values + ceil(n / block) + _FP32
    return values + ceil(n / prec.mx_block)


def copy_formula(what: str, prec: Precision, per_tensor_scale: bool = True) -> str:
    """The formula of :func:`fp8_copy_bytes` of ``what`` values (a formula itself), as the
    saved-tensor tables print it: ``1·what`` (FP4: ``what/2``), ``+ what/block`` for a block-
    scaled recipe, ``+ 4`` for the fp32 ``scale_inv`` of a per-tensor recipe (and NVFP4's
    per-tensor scale) where ``per_tensor_scale``."""
    v = f"{what}/{prec.values_per_byte}" if prec.values_per_byte > 1 else f"1·{what}"
    if not prec.mx_block:
        return f"{v} + 4" if per_tensor_scale else v
    return f"{v} + {what}/{prec.mx_block}" + (" + 4" if prec.values_per_byte > 1 else "")


def weight_copies(prec: Precision, gpu_arch: str) -> int:
    """FP8 copies TE keeps of each weight (and writes per activation cast): row-wise and
    column-wise, which on a GPU without non-TN FP8 GEMMs is a second, transposed copy; on
    Blackwell one per-tensor copy serves both (float8_tensor.py, see module docstring). MXFP8 keeps
    both directions on every GPU (different scale blocks). torchao keeps none."""
    if prec.fp8_recipe in ("te_mxfp8", "te_nvfp4"):
        return 2
    if prec.fp8_recipe in TE_PER_TENSOR:
        return 1 if gpu_arch == "blackwell" else 2
    return 0


def weight_cache_bytes(m: ModelSpec, prec: Precision, gpu_arch: str, tp: int = 1,
                       moe: bool = False, ep: int = 1, etp: int = 0) -> int:  # fmt: skip
    """FP8 weight workspaces of one block on one TP rank: each GEMM group's weight in
    :func:`weight_copies` copies plus its fp32 ``scale_inv`` (per-tensor recipes; a routed
    experts' group one per local expert, TE ``GroupedLinear`` keeps a quantizer per GEMM)."""
    if not is_te(prec):
        return 0
    copies = weight_copies(prec, gpu_arch)
    inv = 0 if prec.mx_block else _FP32
    return sum(copies * fp8_copy_bytes(g.weights, prec, weight=True) + inv * g.gemms
               for g in block_gemms(m, tp, moe, ep, etp=etp))  # fmt: skip


def scaling_state_bytes(m: ModelSpec, prec: Precision, moe: bool = False, ep: int = 1) -> int:
    """DelayedScaling state of one block: per GEMM 3 forward + 2 backward quantizers, each an fp32
    scale and ``amax_history`` fp32 rows (quantization.py ``DelayedScalingRecipeState``); a
    routed experts' group has one GEMM per local expert (TE ``GroupedLinear``)."""
    if not prec.amax_history:
        return 0
    per_gemm = (FWD_QUANTIZERS_PER_GEMM + BWD_QUANTIZERS_PER_GEMM) * (prec.amax_history + 1)
    return sum(g.gemms for g in block_gemms(m, 1, moe, ep)) * per_gemm * _FP32


def linear_io_per_token(m: ModelSpec, tp: int = 1) -> list[tuple[int, int, int]]:
    """(input width, output width, weight elements) per token of each linear module of a block on
    one TP rank: column-parallel inputs are the full hidden size, outputs split by ``tp``;
    row-parallel the reverse (Megatron TP); MLA's down-projections whole on every rank."""
    shapes = m.linear_weight_shapes()
    out = []
    for name in shapes:
        g = _group(shapes, (name,), tp)
        out.append((g.width_in, g.width_out, g.weights))
    return out


#: Bytes per output element of torchao's rowwise rescale (:func:`rowwise_rescale_bytes`): under
#: torch.compile Inductor fuses the outer product of the scale vectors into the multiply, one read
#: and one write of the 16-bit output; eager, ``a_inverse_scale * b_inverse_scale`` (an (M, 1)
#: by a (1, N) fp32 vector: PyTorch broadcasting makes the product an M x N fp32 tensor) is first
#: materialised (written, then read by the multiply): 2 + 2 + 4 + 4. Counted from the code
#: (pytorch/ao 36027d82 float8_ops.py l.47-85), not measured.
RESCALE_BYTES = {"fused": 2 * _SRC, "eager": 2 * _SRC + 2 * _FP32}


def rowwise_rescale_bytes(m: ModelSpec, prec: Precision, tokens: int, tp: int = 1,
                          eager: bool = False) -> tuple[float, float]:  # fmt: skip
    """(input-gradient, weight-gradient) bytes one block's torchao rowwise GEMMs spend rescaling
    their outputs for one micro-batch of ``tokens`` (module docstring, ``float8_ops.py``
    l.47-85): per linear module the input gradient's ``tokens`` x input width and the weight
    gradient's weight elements, each :data:`RESCALE_BYTES` per element (``eager``: element-wise
    ops not fused, runtime ``eager_elementwise``). 0 for every other recipe: tensorwise scales
    are scalars cuBLAS applies itself, and Transformer Engine's GEMMs take their scales."""
    if not (prec.axiswise_scales and prec.fp8_recipe == "torchao"):
        return 0.0, 0.0
    per = RESCALE_BYTES["eager" if eager else "fused"]
    io = linear_io_per_token(m, tp)
    return (per * tokens * sum(width_in for width_in, _, _ in io),
            per * sum(w for _, _, w in io))  # fmt: skip


def cast_bytes(m: ModelSpec, prec: Precision, gpu_arch: str, tokens: int, tp: int = 1,
               microbatches: int = 1, moe: bool = False, ep: int = 1,
               load: float = 1.0, etp: int = 0) -> tuple[float, float]:  # fmt: skip
    """(forward, backward) bytes of the FP8 casts of one block for one micro-batch of ``tokens``.

    TE: each GEMM group's input in forward and its output gradient in backward are read once
    (2 B; twice with current scaling, whose amax pass reads it first) and written in :func:`weight_copies` FP8 copies; each weight is cast once per step (on
    the first micro-batch), charged here as 1/``microbatches`` of it to every forward. An MoE
    block (``moe``) casts its routed experts' k·load token copies and local weights
    (:func:`block_gemms`).
    torchao: per linear module, input and weight cast in forward, grad output twice and input and
    weight again in backward, each cast 5 B per value (amax read 2, cast read 2, write 1)."""
    if not prec.gemm_dtype:
        return 0.0, 0.0
    if is_te(prec):
        c = weight_copies(prec, gpu_arch)
        # current scaling (and NVFP4's per-tensor scale) reads each tensor once more for its
        # amax before the cast
        src = _SRC * (2 if prec.fp8_recipe in ("te_current", "te_nvfp4") else 1)
        fwd = bwd = 0.0
        for g in block_gemms(m, tp, moe, ep, load, etp):
            n_in, n_out = tokens * g.tokens * g.width_in, tokens * g.tokens * g.width_out
            fwd += n_in * src + c * fp8_copy_bytes(n_in, prec)
            bwd += n_out * src + c * fp8_copy_bytes(n_out, prec)
            fwd += (g.weights * src + c * fp8_copy_bytes(g.weights, prec, True)) / microbatches
        return fwd, bwd
    per = 2 * _SRC + 1  # amax read, cast read, FP8 write
    fwd = bwd = 0.0
    for width_in, width_out, w in linear_io_per_token(m, tp):
        fwd += per * (tokens * width_in + w)
        bwd += per * (2 * tokens * width_out + tokens * width_in + w)
    return fwd, bwd
