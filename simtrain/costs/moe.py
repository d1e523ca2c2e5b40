"""Mixture-of-experts layers: FLOPs, saved activations, element-wise bytes and the expert-parallel
all-to-all messages of one MoE block, following Megatron-Core's MoE layer.

Sources (NVIDIA/Megatron-LM at d98e8a64ddf34856e74b24714e3bedb2f5a39553):

* ``megatron/core/transformer/moe/router.py`` / ``moe_utils.py``: the router is a replicated
  h x E linear; ``topk_softmax_with_capacity`` takes the softmax of the logits in fp32 and
  keeps the top k; ``get_capacity`` gives each expert ``ceil(tokens / E · capacity_factor)``
  token slots (per top-k choice), the rest are dropped (``moe_expert_capacity_factor``; None =
  dropless).
* ``token_dispatcher.py`` ``MoEAlltoAllTokenDispatcher``: permute the local tokens (each
  repeated for its k experts), all-to-all over the EP group (dispatch), the experts, all-to-all
  back (combine), un-permute; with tensor parallelism the expert inputs are all-gathered over
  the expert-TP group after the dispatch and reduce-scattered before the combine (k·load times
  the dense MLP's sequence-parallel all-gather / reduce-scatter: ``costs.comm.moe_tp_pairs``;
  none with whole experts, expert-TP 1). Its backward runs the two all-to-alls again in
  reverse: 4 per MoE layer per micro-batch.
* ``experts.py`` ``TEGroupedMLP``: fc1 (h -> 2f for SwiGLU) as a grouped GEMM over the local
  experts, the activation multiplied by the routing probabilities (``weighted_bias_swiglu``),
  fc2 (f -> h). Saved for backward: fc1's input (the permuted tokens), fc1's output, the
  probabilities, fc2's input.

Every expert sees, on average, k·T/E of a micro-batch's T tokens; an expert-parallel rank
(E/ep experts) as many expert-token pairs as its own k·T. ``moe_load_imbalance`` (the busiest
expert's tokens over the mean) scales the busiest rank's expert work and the tokens it
receives: exact with one expert per rank, an upper bound with more (the rank's load is the sum
of its experts'). With ``capacity_factor`` c the busiest expert is capped at c x the mean.
Without expert parallelism (ep = 1) one rank runs every expert on every routed token, so its
load is the mean whatever the imbalance.
"""

from __future__ import annotations

import math

from simtrain.costs.fp8 import copy_formula, fp8_copy_bytes
from simtrain.spec.model import ModelSpec
from simtrain.spec.precision import Precision


def moe_load(m: ModelSpec, ep: int) -> float:
    """Expert-token pairs the busiest EP rank processes, over the mean: 1 without expert
    parallelism; else ``moe_load_imbalance``, capped at ``capacity_factor`` when one is set
    (Megatron drops the tokens beyond an expert's capacity)."""
    if not m.is_moe or ep <= 1:
        return 1.0
    imb = m.moe_load_imbalance
    return min(imb, m.capacity_factor) if m.capacity_factor else imb


def mlp_mats(m: ModelSpec) -> int:
    """Weight matrices of one MLP / expert: SwiGLU 3 (gate, up, down), GeLU 2."""
    return 3 if m.mlp == "swiglu" else 2


def moe_ffn_width(m: ModelSpec, load: float = 1.0) -> float:
    """The FFN width one token's MoE layer computes: k routed experts of ``expert_ffn`` (times
    the busiest rank's ``load``) plus the shared experts, so that an MoE block costs what a
    dense block of that width costs, plus the router."""
    return m.experts_per_token * m.expert_ffn * load + m.shared_experts * m.shared_ffn


def moe_mlp_flops(m: ModelSpec, tokens: int, tp: int = 1, load: float = 1.0) -> float:
    """Forward FLOPs of one MoE layer's FFN for ``tokens`` tokens on one TP rank:
    ``2·T·h·(n_mats·(k·f_e·load + S·f_s) + E)/tp``; the routed experts and shared experts are
    split over TP like the dense MLP (expert TP = TP, Megatron's default), the router is
    replicated and runs on the rank's T/tp sequence-parallel tokens (Megatron requires sequence
    parallelism with TP and EP). Megatron's gate of Qwen2-MoE's shared expert (h x 1) adds
    2·T·h."""
    h = m.hidden
    mlp = mlp_mats(m) * h * moe_ffn_width(m, load)
    router = h * m.num_experts + (h if m.shared_expert_gate else 0)
    return 2 * tokens * (mlp + router) / tp


def routed_expert_flops(m: ModelSpec, tokens: int, tp: int = 1, load: float = 1.0) -> float:
    """The routed experts' part of :func:`moe_mlp_flops`: ``2·T·h·n_mats·k·f_e·load/tp``, the
    GEMMs one grouped-GEMM kernel runs over the rank's local experts (Megatron-Core
    ``TEGroupedMLP``); the shared experts and the router are ordinary GEMMs."""
    return 2 * tokens * mlp_mats(m) * m.hidden * m.experts_per_token * m.expert_ffn * load / tp


def moe_elementwise_bytes_per_token(m: ModelSpec, e: int, tp: int = 1, load: float = 1.0) -> float:
    """Memory-bound bytes per token of one MoE layer beyond the dense MLP's (estimate, from the
    ops): the activation over k·f_e·load + S·f_s (SwiGLU 1.5x, read + write), the permutation
    and un-permutation of k·h values per token (read + write each), and the fp32 softmax and
    top-k over E logits (read + write, 4 B)."""
    act = 2 * moe_ffn_width(m, load) * (1.5 if m.mlp == "swiglu" else 1.0) / tp
    permute = 2 * 2 * m.experts_per_token * m.hidden * load / tp
    router = 2 * 4 * m.num_experts / tp
    return e * (act + permute) + router


def megatron_expert_extra_bytes_per_token(m: ModelSpec, e: int, tp: int = 1,
                                          load: float = 1.0) -> tuple[float, float]:  # fmt: skip
    """(forward, backward) memory-bound bytes per token that Megatron-Core's expert layer moves
    beyond :func:`moe_elementwise_bytes_per_token`'s fused activation, for the model's two
    GPT-OSS features (runtime ``moe_implementation: megatron_core``; e: activation bytes), over
    the k·load/tp expert-token pairs a token brings to the rank (the activation's count). The
    bytes per element are those the ATen kernels of a transcription read and write on the
    CPU (``simtrain.torchref.opcount.dispatched_bytes``, tests/test_gpt_oss_experts.py):

    - a clamped GLU (``ModelSpec.glu_clamp``): ``weighted_bias_quick_geglu_impl`` runs
      ``chunk``, two ``clamp`` and a ``torch.cat`` before its compiled kernel
      (megatron/core/fusions/fused_bias_geglu.py l.410-440 at core_v0.15.0, the same at
      d98e8a64; Megatron-Bridge gpt_oss_provider.py l.79-84 at 00b7660b sets
      ``activation_func_clamp_value`` 7.0). Per f_e-element pair (gate, linear): forward the
      two clamps read and write one each, the cat reads and writes two, 8e; backward the
      gate's clamp a ``le`` mask and a ``where`` (3e + 2 B of bool), the linear half's ``ge``,
      ``le``, ``logical_and_`` and ``where`` (4e + 6 B), the chunk's cat of the two gradients
      (4e): 11e + 8 B;
    - fc2's bias (``linear_has_bias("down")``), added expert by expert with the routing
      probabilities (megatron/core/transformer/moe/experts.py ``_apply_bias`` l.823-840 at
      core_v0.15.0: ``torch.cat([t + b * p ...])``, fc2 built with skip_bias_add; at d98e8a64
      l.345-370, beside a packed path for CUDA graphs that adds a per-token fp32 bias, not
      priced apart). Per h-element of the expert output: forward b·p written, the add (two
      reads, a write), the cat (a read, a write), 6e; backward the gradient's products with b
      and with p (a read, a write each), their sums over the columns (the probabilities'
      gradient) and over the rows (the bias's: a read each) and the split's cat of the
      gradients (a read, a write), 8e.

    fc1's bias costs nothing here: Transformer Engine adds it in the grouped GEMM."""
    pairs = m.experts_per_token * load / tp
    fwd = bwd = 0.0
    if m.glu_clamp:
        fwd += 8 * e * pairs * m.expert_ffn
        bwd += (11 * e + 8) * pairs * m.expert_ffn
    if m.linear_has_bias("down"):
        fwd += 6 * e * pairs * m.hidden
        bwd += 8 * e * pairs * m.hidden
    return fwd, bwd


def moe_saved_tensors(m: ModelSpec, sb: int, e: int, tp: int = 1, load: float = 1.0,
                      saves_weights_input: bool = True, quant: Precision | None = None,
                      etp: int = 0) -> list[tuple[str, int, str]]:  # fmt: skip
    """(name, bytes, formula) of what one MoE layer's FFN saves for backward per micro-batch of
    ``sb`` tokens on one TP rank, beyond the MLP input the dense MLP saves too (Megatron-Core
    ``TEGroupedMLP`` and ``topk_softmax_with_capacity``; module docstring). The router works on
    the rank's sequence-parallel share sb/t; the dispatcher all-gathers the expert inputs over
    the (expert-)TP group, so fc1's input and the probabilities are the whole k·sb·load
    expert-token pairs, fc1's output and fc2's input their f_e/t columns. With whole experts
    (expert-TP size ``etp`` 1, 0: tp) nothing is gathered: each rank keeps its own sequence
    shard's k·sb/t·load pairs (fc1's input and the probabilities etp/t of the above) and their
    f_e columns (fc1's output and fc2's input as many bytes as above).

    Under Transformer Engine FP8 (``quant``: the recipe's precision) the experts' GEMM inputs
    are saved as TE's Linear saves them: one column-wise quantized copy
    (:func:`costs.fp8.fp8_copy_bytes`). ``_GroupedLinear.forward`` quantizes each expert's
    split (``_split_quantize``) and, for the weight gradient, keeps only the column-wise usage
    of each (``inputmat.update_usage(rowwise_usage=False, columnwise_usage=True)`` before
    ``ctx.save_for_backward(*inputmats, ...)``; NVIDIA/TransformerEngine
    transformer_engine/pytorch/module/grouped_linear.py l.896-936 at d0067d0d), for fc1's
    input and fc2's (the activation's output, which the activation itself does not keep); the
    activation keeps its 16-bit input. Not counted: a per-tensor recipe's 4-B ``scale_inv``
    per local expert. The shared experts' fc2 (TE ``Linear``) likewise."""
    k, h, f = m.experts_per_token, m.hidden, m.expert_ffn
    kt = k * sb * load
    # the TP group's expert-token pairs this rank's experts see: the dispatcher gathers them
    # over the expert-TP group only when its tp_size (= etp) > 1 (costs.comm.moe_tp_pairs)
    share = (etp or tp) / tp
    n_fc1 = 2 if m.mlp == "swiglu" else 1

    def gemm_input(name: str, n: float, what: str) -> tuple[str, int, str]:
        if quant is None:
            return name, int(e * n), f"{e}·{what}"
        return (f"{name}, FP8", fp8_copy_bytes(int(n), quant),
                copy_formula(what, quant, per_tensor_scale=False))  # fmt: skip

    out = [
        ("router softmax output (fp32)", 4 * sb * m.num_experts // tp, "4·sbE/t"),
        ("routing indices (int64)", 8 * k * sb // tp, "8·k·sb/t"),
        (
            "routing probabilities (fp32)",
            int(4 * kt * share),
            "4·k·sb·load" if share == 1 else "4·k·sb·load/t",
        ),
    ]
    if saves_weights_input:
        out.append(gemm_input("expert fc1 input (permuted tokens)", kt * h * share,
                              "k·sb·h·load" if share == 1 else "k·sb·h·load/t"))  # fmt: skip
    # ReLU keeps its output, which is fc2's input: one tensor (costs.activations._mlp); under
    # TE FP8 fc2 keeps its own quantized copy beside it
    relu = m.mlp == "relu"
    fc2_saved = saves_weights_input and (not relu or quant is not None)
    act = "activation output = fc2 input" if relu else "activation input"
    out.append((f"expert fc1 output ({act})", int(n_fc1 * e * kt * f / tp),
                f"{n_fc1 * e}·k·sb·f_e·load/t"))  # fmt: skip
    if fc2_saved:
        out.append(gemm_input("expert fc2 input", kt * f / tp, "k·sb·f_e·load/t"))
    if m.shared_experts:
        fs = m.shared_experts * m.shared_ffn
        out.append(("shared experts fc1 output", n_fc1 * e * sb * fs // tp,
                    f"{n_fc1 * e}·sb·S·f_s/t"))  # fmt: skip
        if fc2_saved:
            out.append(gemm_input("shared experts fc2 input", sb * fs / tp, "sb·S·f_s/t"))
    return out


def a2a_bytes(m: ModelSpec, tokens: int, e: int, tp: int = 1, load: float = 1.0) -> float:
    """Send buffer of one dispatch (or combine) all-to-all on the busiest EP rank: its
    sequence-parallel share of the micro-batch's tokens, each once per routed expert, h values
    of ``e`` bytes: ``T/tp · k · h · e · load`` (nccl-tests all-to-all convention: the whole
    per-rank buffer, of which (ep−1)/ep leaves the rank: ``collectives.bus_factor``)."""
    return tokens / tp * m.experts_per_token * m.hidden * e * load


#: DeepSeek-V3 §3.3.2 / DeepEP: FP8 dispatch sends 1 B per value plus one fp32 scale per
#: 1 x 128 tile of the activation.
FP8_DISPATCH_BYTES = 1 + 4 / 128


def distinct_bins(items: int, bins: int, k: int) -> float:
    """Expected distinct bins that ``k`` of ``items`` drawn without replacement fall in, the
    items split evenly over ``bins``: ``bins·(1 − C(items − items/bins, k) / C(items, k))``
    (hypergeometric: the chance a bin gets none of the k)."""
    if bins <= 1:
        return float(bins)
    per = items // bins
    return bins * (1.0 - math.comb(items - per, k) / math.comb(items, k))


def tokens_destinations(m: ModelSpec, ep: int, nodes: int) -> tuple[float, float]:
    """(nodes, GPUs) of the EP group a token's k routed experts are on, expected: the E experts
    contiguous over the ep GPUs and ``nodes`` nodes (Megatron-Core's local experts), routing
    uniform. Group-limited routing (``router_groups`` G, ``router_group_topk`` t) whose groups
    each lie on one node (G a multiple of the nodes) and span whole GPUs (ep a multiple of G):
    the token's t groups on :func:`distinct_bins` (G, nodes, t) nodes, taking each chosen
    group as receiving at least one of the k experts, and its k experts on the t·ep/G GPUs of
    those groups; otherwise the unlimited draw of k of E experts."""
    e, k = m.num_experts, m.experts_per_token
    g, t = m.router_groups, m.router_group_topk
    if g and g % nodes == 0 and ep % g == 0:
        x, b = t * e // g, t * ep // g  # the chosen groups' experts and GPUs
        return distinct_bins(g, nodes, t), distinct_bins(x, b, k)
    return distinct_bins(e, nodes, k), distinct_bins(e, ep, k)


def deepep_a2a_bytes(m: ModelSpec, tokens: int, value_bytes: float, ep: int, nodes: int,
                     tp: int = 1, load: float = 1.0) -> tuple[float, float]:  # fmt: skip
    """(InfiniBand, NVLink) bytes one GPU sends in one DeepEP dispatch (or combine) of its
    T/tp tokens (deepseek-ai/DeepEP README "normal kernels"; DeepSeek-V3 §3.2.2): a token goes
    once to each destination node, by RDMA to the GPU of its own in-node index, which forwards
    it once to each destination GPU of that node over NVLink. With D_n destination nodes and
    D_g destination GPUs (:func:`tokens_destinations`), g = ep/nodes GPUs per node:
    IB ``T/tp·D_n·(nodes−1)/nodes·h·e``, NVLink ``T/tp·D_g·(g−1)/g·h·e``, both times the
    busiest rank's ``load``."""
    d_node, d_gpu = tokens_destinations(m, ep, nodes)
    g = ep // nodes
    per = tokens / tp * m.hidden * value_bytes * load
    return per * d_node * (nodes - 1) / nodes, per * d_gpu * (g - 1) / g
