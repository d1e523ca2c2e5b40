"""Context parallelism: Transformer Engine's ring attention (``cp_comm_type="p2p"``), PyTorch's
``context_parallel`` and the all-to-all of DeepSpeed-Ulysses and ``cp_comm_type="a2a"``.

Megatron-Core runs each micro-batch's sequence over ``cp`` GPUs (``--context-parallel-size``).
The data loader gives each CP rank 2 of 2·cp sequence chunks, chunks r and 2·cp−1−r, so that
every rank gets the same share of the causal attention (Megatron-Core ``core/utils.py``
``get_batch_on_this_cp_rank``). Every op but attention sees only the rank's s/cp tokens
(``spec.scenario.cp_rank_training``). Attention is
``AttnFuncWithCPAndKVP2P`` (NVIDIA/TransformerEngine
``transformer_engine/pytorch/attention/dot_product_attention/context_parallel.py``, commit
d0067d0d): the rank's K and V are concatenated into one buffer and passed around the CP ring
(send to rank+1, receive from rank−1) while the attention of the chunk already held runs:

- forward: cp attention steps; steps 0 .. cp−2 each send the K/V buffer just used and receive
  the next (``flash_attn_p2p_communicate`` of ``p2p_comm_buffers[i]``): cp−1 messages of
  K = 2·b·(s/cp)·kv_dim·e/tp bytes per TP rank (K and V of the rank's s/cp tokens, the
  rank's kv heads), each overlapped with one step's attention;
- backward: cp steps; step 0 sends the K/V (``send_tensor[0]``), steps 1 .. cp−2 the K/V and
  the partial dK/dV together (a ``(2, *kv.shape)`` buffer: 2K bytes), step cp−1 the dK/dV
  alone (``send_tensor[1]``), each waited for before the step's dK/dV correction: 2(cp−1)·K
  bytes in all.

With causal load balancing every step does the same attention work: 1/cp of the rank's core
(diagonal step: chunks (r, r) and (2cp−1−r, 2cp−1−r) half, (2cp−1−r, r) full; the others
either both query chunks against the first K/V chunk or the second query chunk against both).
A step's message is exposed only by what it takes beyond that step's attention:
forward (cp−1)·max(0, t(K) − a_f), backward 2·max(0, t(K) − a_b) + (cp−2)·max(0, t(2K) − a_b),
with a_f and a_b the per-step forward and backward attention times, t the p2p time of the
ring's slowest hop (the NIC when the CP group spans nodes, ``layout.placement``). Recompute of
the attention (full or selective) replays the forward ring.

Memory: the forward keeps every received K/V buffer until the step ends (``p2p_comm_buffers``,
cp of them with the concatenated own one), the backward two ``(2, *kv.shape)`` buffers: a
working set of max(cp, 4)·K bytes per GPU, one layer at a time.

cp_comm_type "all_gather" (``AttnFuncWithCPAndKVAllGather``: all-gather the K/V, 2 steps) and
the hierarchical "a2a+p2p" are not modelled: the ring is Megatron-Core's default
(``--cp-comm-type p2p``).

All-to-all (runtime ``cp_attention: a2a``; DeepSpeed-Ulysses, Jacobs et al. 2023, arXiv
2309.14509 §3): Transformer Engine's ``AttnFuncWithCPAndQKVOA2A`` (``--cp-comm-type a2a``;
same file, l.4170-4600 at d0067d0d) and DeepSpeed's ``DistributedAttention``
(``deepspeed/sequence/layer.py``, the runtime's sequence parallelism) trade the sequence split
for a head split around the attention core:

- forward: Q, K and V each go through one all-to-all (``flash_attn_a2a_communicate(
  [q, k, v], before_attn=True)``: ``all_to_all_single`` of each, [b, s/cp, h, d] ->
  [b, s, h/cp, d]), one attention call runs over the whole sequence with the rank's heads/cp
  heads, and its output goes back (``a2a_input_names=["out"]``): four all-to-alls over the CP
  group of Q, K, V and O bytes per GPU (Q, K, V as above, O = b·(s/cp)·heads·v_head_dim·e/tp),
  (cp−1)/cp of each leaving the GPU; the attention waits for them and the next op for the
  output's: nothing overlaps them (DeepSpeed's optional ``sp_stream`` overlap is off unless
  given one);
- backward: the same four in reverse (dO in; dQ, dK, dV out);
- each tensor is rearranged before and after its exchange (``x.movedim(head_dim, 0)
  .contiguous()`` / ``reorder_seq_chunks_for_a2a_*``'s ``index_select``; DeepSpeed's
  ``reshape(...).contiguous()`` and ``transpose(0, 2).contiguous()``): two copies, a read and
  a write each, 4 bytes moved per byte exchanged, on the compute stream;
- the attention work is the rank's 1/cp of the heads over all s queries: the core's FLOPs of
  the ring, as one call of s queries (its short-sequence edge is of s, a sliding window's
  keys of s);
- saved: the kernel keeps its post-exchange q, k, v and output (``save_for_backward(q_part,
  k_part, v_part, out_part, ...)``), as many bytes as the ring's local ones, but its output and
  the out-projection's input (the exchanged-back ``out_``) are different storages: O more per
  layer (the kernel's copy goes with a selective recompute of the core, as the ring's does);
- TE requires heads and K/V heads on a TP rank divisible by cp (``num_heads % cp_size == 0``
  for Q, K, V: spec.scenario checks it) and supports a sliding window (the ring does not:
  ``attn_forward_func_with_cp``, "Context parallelism does not support sliding window
  attention with cp_comm_type='p2p'").

Working memory, one layer at a time: while Q, K, V are exchanged the caller's tensors (Q + K,
K covering K and V) stay alive beside their rearranged copies and the exchange's outputs, at
most 2·(Q + K) more; the backward's dQ, dK, dV the same: 2·(Q + K).

PyTorch's ``context_parallel`` (runtime ``cp_attention: torch_allgather``; torchtitan):
torchtitan 9dec370a ``torchtitan/utils.py`` l.171-193 ``create_context_parallel_ctx`` calls
``set_rotate_method(cp_rotate_method)``, ``--experimental.context_parallel_rotate_method``
default "allgather" (``torchtitan/config_manager.py`` l.364-377). PyTorch's
``torch/distributed/tensor/experimental/_attention.py`` (torch 2.6, Dec 2024, as torchtitan's
benchmark ran it: ``_ContextParallelOptions.rotate_method = _RotateMethod.ALL_GATHER``,
``convert_to_f32 = True``, ``enable_load_balance = True``) runs the same 2·cp load-balanced
chunks and cp attention steps of equal work (``_is_causal_behavior``; the ``i <= rank`` /
``i > rank`` halves), but moves K/V differently:

- forward (``_templated_ring_attention``): at step 0 the rank's K and V are concatenated
  (``torch.cat([key.flatten(), value.flatten()])``) and all-gathered once
  (``_AllGatherRotater.exchange_buffers``: ``ft_c.all_gather_tensor``), waited for at step 1
  (``next_buffer``): an all-gather of (cp−1)·K bytes into each rank overlapped only with step
  0's attention, 1/cp of the core;
- backward (``_templated_ring_attention_backward``): the K/V all-gathered again
  (``kv_rotater``), and the partial dK/dV, accumulated in fp32 (``accum_dtype =
  torch.float32``: ``grad_key = torch.zeros_like(key, dtype=accum_dtype)``), concatenated and
  sent to the next rank after every step (``dkv_rotater``, ``_RotateMethod.ALL_TO_ALL``:
  ``ft_c.permute_tensor``), waited for after the next step's attention and once more after the
  last step: cp messages of D = K·4/e bytes (fp32 dK/dV).

Exposed: forward max(0, t_ag − a_f); backward max(0, t_ag − a_b) + (cp−1)·max(0, t(D) − a_b)
+ t(D), with t_ag the ring all-gather of cp·K bytes over the CP group's slowest link.
K's width is what SDPA is given: torchtitan's llama3 repeats K and V to every query head first
(9dec370a ``torchtitan/models/llama/model.py`` l.116-126 ``repeat_kv``, l.201-202; runtime
``attention_repeat_kv``), so K = 2·b·(s/cp)·heads·head_dim·e/tp.
Memory, one layer at a time: the all-gathered K/V (cp·K) and the rank's concatenated copy (K);
in backward beside them the fp32 dQ (Q·4/e, Q = the rank's query bytes) and, after step i's
attention, four fp32 dK/dV buffers at once: the one received at step i−1 (``next_buffer``),
the ``_partial_update`` result (a ``torch.cat`` of its chunks), the concatenation sent at step
i (``torch.cat([grad_key.flatten(), grad_value.flatten()])``) and its receive buffer
(``permute_tensor``'s output), 4·D, with the step's 16-bit dQ, dK, dV (Q + K).
"""

from __future__ import annotations

from dataclasses import dataclass

from simtrain.costs import collectives as coll
from simtrain.costs.group_comm import collective_ns
from simtrain.layout.step import resolve
from simtrain.spec.scenario import Scenario

#: Fewest tokens of a sequence per GPU for which the planner and ``simtrain memory``'s fit
#: advice propose context parallelism: Megatron-Core's long-context recipes run CP from
#: 16k-token sequences at 8k tokens per GPU; below that a ring step's attention is too short
#: to hide its transfer.
MIN_CP_TOKENS = 8192


@dataclass(frozen=True, slots=True)
class RingLayer:
    """One layer's context-parallel exchange on one GPU for one micro-batch (ns, fractional):
    the ring's, PyTorch's all-gather or the all-to-all (the transfer and what is exposed)."""

    message_bytes: int  # K: one K/V chunk per TP rank
    forward_transfer_ns: float  # cp−1 messages of K
    backward_transfer_ns: float  # K, (cp−2) x 2K, K
    forward_exposed_ns: float
    backward_exposed_ns: float
    # element-wise work of the attention call beyond its attention kernels, on the compute
    # stream (PyTorch's context_parallel: :func:`torch_elementwise_bytes`; 0 for TE's ring)
    forward_elementwise_bytes: float = 0.0
    backward_elementwise_bytes: float = 0.0


def ring_message_bytes(sc: Scenario) -> int:
    """K = 2·b·(s/cp)·kv_dim·e/tp: the K and V of the rank's s/cp tokens on one TP rank
    (kv_dim = kv_heads·head_dim; e = activation bytes around the matmuls); with runtime
    ``attention_repeat_kv`` every query head's (heads·head_dim). With multi-head latent
    attention K and V differ: K heads·(qk_nope + qk_rope), V heads·v_head_dim (TE's
    ``AttnFuncWithCPAndKVP2P`` sends ``torch.cat((k.view(-1), v.view(-1)))``)."""
    return _rank_bytes(sc, sum(_kv_widths(sc)))


def _rank_bytes(sc: Scenario, width: int) -> int:
    """b·(s/cp)·width·e/tp: a tensor ``width`` values a token wide (over all TP ranks) of the
    rank's s/cp tokens, on one TP rank, in the activation dtype around the matmuls (e)."""
    t, p = sc.training, sc.parallelism
    e = t.precision_spec.act_mm
    return e * t.micro_batch * (t.seq_len // p.cp) * width // p.tp


def _kv_widths(sc: Scenario) -> tuple[int, int]:
    """Values per token of K and of V as the attention call is given them (all TP ranks):
    kv_heads·head_dim, every query head's with runtime ``attention_repeat_kv``, MLA's
    heads·(qk_nope + qk_rope) and heads·v_head_dim."""
    m = sc.model
    k = m.q_dim if sc.runtime.attention_repeat_kv else m.kv_dim
    return k, (m.kv_heads * m.v_head_dim if m.is_mla else k)


def query_bytes(sc: Scenario) -> int:
    """Q = b·(s/cp)·heads·head_dim·e/tp: the rank's queries on one TP rank (and its attention
    output, and their 16-bit gradients)."""
    return _rank_bytes(sc, sc.model.q_dim)


def fp32_dkv_bytes(sc: Scenario) -> int:
    """D = K·4/e: the rank's dK and dV in fp32, as PyTorch's ring backward accumulates and
    passes them (``convert_to_f32``; module docstring)."""
    e = sc.training.precision_spec.act_mm
    return ring_message_bytes(sc) * 4 // e


def attention_output_bytes(sc: Scenario) -> int:
    """O = b·(s/cp)·heads·v_head_dim·e/tp: the rank's attention output on one TP rank (the
    all-to-all's fourth tensor; ``ModelSpec.v_dim``)."""
    return _rank_bytes(sc, sc.model.v_dim)


def ring_link(sc: Scenario, members: int = 2) -> coll.GroupLink:
    """The ring's slowest hop: the intra-node link, or the NIC when the CP group (``tp``
    apart) spans nodes (tp·cp > GPUs per node). Inside a node a hop is one pair's transfer
    (``members`` 2: on a full mesh, one pair link); NCCL's all-gather spreads its rings over
    the links among all the group's ``members`` (``collectives.node_links``)."""
    intra, inter = coll.node_links(sc.hardware, members)
    return inter if resolve(sc).placement.cp_crosses_nodes else intra


def ring_layer(sc: Scenario, attention_forward_ns: float,
               attention_backward_ns: float | None = None) -> RingLayer:  # fmt: skip
    """The ring of one layer, given the GPU's attention-core forward time for the layer and its
    backward's (None: twice the forward, the GEMM class's dQ, dK, dV; the FlashAttention class
    gives its own, ``costs.compute.flash_core``)."""
    cp = sc.parallelism.cp
    if cp == 1:
        return RingLayer(0, 0.0, 0.0, 0.0, 0.0)
    backward = 2 * attention_forward_ns if attention_backward_ns is None else attention_backward_ns
    if sc.runtime.cp_attention == "torch_allgather":
        return _torch_allgather_layer(sc, attention_forward_ns, backward)
    if sc.cp_all_to_all:
        return a2a_layer(sc)
    k = ring_message_bytes(sc)
    link = ring_link(sc)
    t1 = 1e9 * coll.p2p_time_s(k, link)
    t2 = 1e9 * coll.p2p_time_s(2 * k, link)
    a_f = attention_forward_ns / cp
    a_b = backward / cp
    return RingLayer(
        message_bytes=k,
        forward_transfer_ns=(cp - 1) * t1,
        backward_transfer_ns=2 * t1 + (cp - 2) * t2,
        forward_exposed_ns=(cp - 1) * max(0.0, t1 - a_f),
        backward_exposed_ns=2 * max(0.0, t1 - a_b) + (cp - 2) * max(0.0, t2 - a_b),
    )


def _torch_allgather_layer(sc: Scenario, attention_forward_ns: float,
                           attention_backward_ns: float) -> RingLayer:  # fmt: skip
    """PyTorch ``context_parallel``'s exchange for one layer (module docstring): a K/V
    all-gather in forward and in backward, and cp fp32 dK/dV ring messages in backward."""
    cp = sc.parallelism.cp
    k = ring_message_bytes(sc)
    group = ring_link(sc, cp)
    t_ag = 1e9 * coll.ring_time_s("all_gather", cp * k, cp, group.bandwidth_bytes_per_s,
                                  group.latency_s)  # fmt: skip
    t_d = 1e9 * coll.p2p_time_s(fp32_dkv_bytes(sc), ring_link(sc))
    a_f = attention_forward_ns / cp
    a_b = attention_backward_ns / cp
    ew_f, ew_b = torch_elementwise_bytes(sc)
    return RingLayer(
        message_bytes=k,
        forward_transfer_ns=t_ag,
        backward_transfer_ns=t_ag + cp * t_d,
        forward_exposed_ns=max(0.0, t_ag - a_f),
        backward_exposed_ns=max(0.0, t_ag - a_b) + (cp - 1) * max(0.0, t_d - a_b) + t_d,
        forward_elementwise_bytes=ew_f,
        backward_elementwise_bytes=ew_b,
    )


def a2a_layer(sc: Scenario) -> RingLayer:
    """One layer's all-to-alls (module docstring), each direction Q, K, V and O (their
    gradients) over the CP group of cp GPUs ``tp`` apart, (cp−1)/cp of each leaving the GPU
    (nccl-tests all-to-all convention: ``costs.group_comm.collective_ns``), all exposed; their
    rearranging copies as 4x their bytes of element-wise work."""
    p = sc.parallelism
    step = resolve(sc)
    k_w, v_w = _kv_widths(sc)
    sizes = (query_bytes(sc), _rank_bytes(sc, k_w), _rank_bytes(sc, v_w),
             attention_output_bytes(sc))  # fmt: skip
    ns = float(sum(collective_ns(sc, step, "all_to_all", x, p.cp, step.groups.cp_stride)
                   for x in sizes))  # fmt: skip
    copies = 4.0 * sum(sizes)
    return RingLayer(
        message_bytes=ring_message_bytes(sc),
        forward_transfer_ns=ns,
        backward_transfer_ns=ns,
        forward_exposed_ns=ns,
        backward_exposed_ns=ns,
        forward_elementwise_bytes=copies,
        backward_elementwise_bytes=copies,
    )


def exchange_labels(sc: Scenario) -> tuple[str, str]:
    """The names of a forward's and of a backward's exchange in the timeline (the "cp" stream)."""
    if sc.cp_all_to_all:
        return "CP all-to-all Q, K, V, O", "CP all-to-all dO, dQ, dK, dV"
    return "CP ring K/V", "CP ring K/V + dK/dV"


def buffer_formula(sc: Scenario) -> str:
    """:func:`cp_ring_buffer_bytes`' formula, as ``simtrain memory --explain`` prints it."""
    if sc.runtime.cp_attention == "torch_allgather":
        return (f"CP K/V all-gather and fp32 dQ, dK/dV buffers (costs.cp, "
                f"K = {ring_message_bytes(sc):,} B)")  # fmt: skip
    if sc.cp_all_to_all:
        return "CP all-to-all copies of Q, K, V 2 x (Q + K)"
    return f"CP ring K/V buffers max(cp, 4) x {ring_message_bytes(sc):,} B"


def torch_elementwise_bytes(sc: Scenario) -> tuple[float, float]:
    """(forward, backward) bytes one layer's PyTorch context-parallel attention reads and writes
    besides its SDPA kernels, for one micro-batch, on the busiest rank (rank cp−1: every step
    uses the whole local query, ``i <= rank``). Q, K, D as in the module docstring.

    Forward (``_templated_ring_attention``, ``_SDPAMerger``): each step but the last
    concatenates the local K/V (``torch.cat``: 2K); each step's output is upcast to fp32 (read
    Q, write 2Q); steps 1 .. cp−1 merge it into the running fp32 output
    (``out - F.sigmoid(block_lse - lse) * (out - block_out)``: a subtraction, a product and a
    subtraction of 2Q tensors, 16Q); the result is cast back (3Q): 2K(cp−1) + 3Q·cp + 16Q(cp−1)
    + 3Q.
    Backward (``_templated_ring_attention_backward``): fp32 zeros for dQ and dK/dV (2Q + D);
    each step but the last concatenates the K/V (2K); step 0 adds its dK/dV (read D + K, write
    D); steps 1 .. cp−1 add into the first half (``_partial_update``: D + K/2) and re-concatenate
    the halves (2D); every step concatenates dK/dV to send (2D) and adds dQ (read 2Q + Q, write
    2Q); the results are cast back (3Q, D + K). The log-sum-exp terms (one fp32 per query row
    and head, 1/head_dim of Q) are left out."""
    cp = sc.parallelism.cp
    if cp == 1:
        return 0.0, 0.0
    k, q, d = ring_message_bytes(sc), query_bytes(sc), fp32_dkv_bytes(sc)
    forward = 2 * k * (cp - 1) + 3 * q * cp + 16 * q * (cp - 1) + 3 * q
    backward = (2 * q + d + 2 * k * (cp - 1) + (2 * d + k) + (cp - 1) * (3 * d + k / 2)
                + cp * (2 * d + 5 * q) + 3 * q + d + k)  # fmt: skip
    return float(forward), float(backward)


def cp_ring_buffer_bytes(sc: Scenario) -> int:
    """Working memory of the exchange, one layer at a time (module docstring); 0 without CP.
    Transformer Engine's ring: max(cp, 4)·K. PyTorch's all-gather: the larger of the forward's
    (cp + 1)·K and the backward's (cp + 1)·K + Q·4/e + 4·D + Q + K. All-to-all: 2·(Q + K)."""
    cp = sc.parallelism.cp
    if cp == 1:
        return 0
    k = ring_message_bytes(sc)
    if sc.cp_all_to_all:
        return 2 * (query_bytes(sc) + k)
    if sc.runtime.cp_attention != "torch_allgather":
        return max(cp, 4) * k
    e = sc.training.precision_spec.act_mm
    q = query_bytes(sc)
    forward = (cp + 1) * k
    backward = forward + q * 4 // e + 4 * fp32_dkv_bytes(sc) + q + k
    return max(forward, backward)
