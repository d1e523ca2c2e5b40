"""nanotron's stages after the LM head (``StageBlocks.tail``): the fp32 cast and the loss on
stages of their own, as nanotron's compute-balanced split puts them when the LM head lands
before the last rank (models/base.py ``build_model``, models/llama.py ``cast_to_fp32`` and
``loss`` PipelineBlocks at huggingface/nanotron@2411b022).

Checked against independent values: the logits' bytes from the shapes (e·b·s·V, 4 B after the
cast), the loss's bytes split so that its parts add up to the head's own count
(conservation), the p2p time of a hop from the link's closed form, and each tail stage's
saved bytes from the activations module's per-tensor rules.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from simtrain.apps.simulate import simulate_scenario
from simtrain.costs import collectives as coll
from simtrain.costs.activations import (
    head_saved_bytes,
    layer_input_bytes,
    loss_saved_bytes,
)
from simtrain.costs.chunk_time import chunk_durations
from simtrain.costs.comm import hop_send_ns
from simtrain.costs.compute import (
    chunk_costs,
    head_elementwise_bytes,
    loss_part_bytes,
    softcap_bytes,
)
from simtrain.costs.memory import estimate_memory
from simtrain.errors import ConfigError
from simtrain.layout.partition import LOSS_PARTS
from simtrain.layout.step import resolve
from simtrain.spec.scenario import Scenario, parse_scenario

B, S, V, H = 2, 256, 32000, 256


def _scenario(pp: int, tp: int = 1, vocab: int = V,
              runtime: str | dict[str, object] = "nanotron",
              cross_entropy: str = "sharded") -> Scenario:  # fmt: skip
    """6 blocks of h 256 and a 32,000-token vocabulary under nanotron's split: on 3 stages 5
    layers, then 1 layer with the LM head, then the fp32 cast and the loss; on 4 stages the
    cast and the loss on one stage each. nanotron's own loss (``sharded``) unless named."""
    return parse_scenario({
        "model": {"layers": 6, "hidden": H, "heads": 4, "ffn_hidden": 4 * H, "vocab": vocab,
                  "mlp": "swiglu", "norm": "rmsnorm"},
        "hardware": "h100_sxm5_80gb", "cluster": {"nodes": 1, "gpus_per_node": pp * tp},
        "training": {"seq_len": S, "global_batch": 8 * B, "micro_batch": B,
                     "precision": "bf16", "cross_entropy": cross_entropy},
        "parallelism": {"pp": pp, "tp": tp, "layer_split": "compute_balanced",
                        "sequence_parallel": tp > 1},
        "runtime": runtime,
    }, "tail.yaml")  # fmt: skip


def test_the_split_puts_the_loss_apart() -> None:
    three = resolve(_scenario(3)).chunks
    assert [(c.layers, c.head, c.tail, c.loss_apart) for c in three] == [
        (5, False, (), False), (1, True, (), True), (0, False, LOSS_PARTS, False)]  # fmt: skip
    four = resolve(_scenario(4)).chunks
    assert [c.tail for c in four] == [(), (), ("fp32 cast",), ("loss",)]
    assert [c.loss_parts for c in four] == [(), (), ("fp32 cast",), ("loss",)]
    assert [c.output_kind for c in four] == ["hidden", "logits", "fp32_logits", "hidden"]


@pytest.mark.parametrize("tp", [1, 2])
def test_hop_bytes_are_the_logits(tp: int) -> None:
    """The LM head sends its b·s·V/t logits shard per TP rank in the activation dtype (2 B),
    the cast its fp32 copy (4 B); each gradient comes back the same size; the decoder
    stages' hop stays b·s·h."""
    step = resolve(_scenario(4, tp))
    assert step.logits_bytes == 2 * B * S * V
    assert step.hop_bytes(0, 1) == step.hop_bytes(1, 0) == 2 * B * S * H == step.boundary_bytes
    assert step.hop_bytes(1, 2) == step.hop_bytes(2, 1) == 2 * B * S * V
    assert step.hop_bytes(2, 3) == step.hop_bytes(3, 2) == 4 * B * S * V == step.fp32_logits_bytes
    # the head's loss on its own stage (pp 1): nothing crosses
    assert resolve(_scenario(1)).chunks[0].loss_parts == LOSS_PARTS


def test_p2p_time_of_a_logits_hop() -> None:
    """hop_send_ns of the hop's bytes: the link's closed form on each TP rank's shard, plus the
    runtime's per-message latencies, a logits hop's as one tensor's (nanotron's lm_head ->
    cast_to_fp32 -> loss blocks take one input each: the backward's message count, not the
    decoder blocks' two tensors); a decoder hop the b·s·h activation in the forward's count."""
    sc = _scenario(4, tp=2)
    step = resolve(sc)
    intra, _ = coll.node_links(sc.hardware)
    assert sc.runtime.p2p_messages_forward == 6 and sc.runtime.p2p_messages_backward == 3
    extra = (sc.runtime.p2p_messages_backward - 1) * intra.latency_s
    want = round(1e9 * (coll.p2p_time_s(2 * B * S * V / 2, intra) + extra))
    assert hop_send_ns(sc, step, 1, 2) == want
    hidden_extra = (sc.runtime.p2p_messages_forward - 1) * intra.latency_s  # two tensors
    hidden = round(1e9 * (coll.p2p_time_s(2 * B * S * H / 2, intra) + hidden_extra))
    assert hop_send_ns(sc, step, 0, 1) == hidden  # a decoder block's output: two tensors
    assert [step.hop_kind(k, k + 1) for k in range(3)] == ["hidden", "logits", "fp32_logits"]
    d = chunk_durations(sc, step)
    assert d[1].send_forward_ns == want
    assert d[2].send_forward_ns > want  # the fp32 copy: twice the bytes
    assert d[3].send_forward_ns == 0  # the last stage sends nothing on


@pytest.mark.parametrize("vocab", [V, 50257])
def test_loss_parts_add_up_to_the_heads_count(vocab: int) -> None:
    """The cast's share is a 16-bit read and an fp32 write of each logit shard (6 B) each way;
    the two parts add up to head_elementwise_bytes without the soft-capping. (Under the
    sharded loss the loss's part is defined as the head's count less the cast, so that sum
    holds by construction; its own bytes are counted by hand below.)"""
    sc = _scenario(4, tp=2, vocab=vocab, cross_entropy="standard")
    m, t, tp = sc.model, sc.training, 2
    assert t.loss_upcast
    cast = loss_part_bytes(m, t, tp, ("fp32 cast",))
    loss = loss_part_bytes(m, t, tp, ("loss",))
    assert cast == (6 * B * S * vocab / tp, 6 * B * S * vocab / tp)
    total = head_elementwise_bytes(m, t, tp)
    cap = softcap_bytes(m, t, tp)
    assert cast[0] + loss[0] == pytest.approx(total[0] - cap[0], rel=1e-12)
    assert cast[1] + loss[1] == pytest.approx(total[1] - cap[1], rel=1e-12)
    assert loss_part_bytes(m, t, tp, LOSS_PARTS) == pytest.approx(
        (total[0] - cap[0], total[1] - cap[1]), rel=1e-12)  # fmt: skip


def test_nanotron_loss_passes_counted_from_its_code() -> None:
    """nanotron's loss stage (``sharded``), its passes over the fp32 logit shard counted by
    hand from tensor_parallel/functional.py _ShardedCrossEntropy (2411b022): forward torch.max
    (read 4), ``sharded_logits - logits_max`` (read 4, write 4), torch.exp(out=) (4 + 4), .sum
    (4) and div_ (4 + 4): 32 B a logit; backward mul_ (4 + 4): 8 B (the one-hot subtraction
    touches a logit a row). The cast block before it: 2 + 4 B each way."""
    sc = _scenario(4, tp=2)
    m, t, tp = sc.model, sc.training, 2
    logits = B * S * V / tp
    assert loss_part_bytes(m, t, tp, ("loss",)) == pytest.approx((32 * logits, 8 * logits))
    assert loss_part_bytes(m, t, tp, ("fp32 cast",)) == (6 * logits, 6 * logits)


def test_chunk_times_are_conserved() -> None:
    """The LM head without its loss, the cast's stage and the loss's stage take the time the
    head with its loss takes (to the rounding up of each to whole nanoseconds)."""
    sc = _scenario(4, tp=2)
    whole = chunk_costs(sc, 0, False, True)
    parts = [chunk_costs(sc, 0, False, True, None, ()),
             chunk_costs(sc, 0, False, False, None, ("fp32 cast",)),
             chunk_costs(sc, 0, False, False, None, ("loss",))]  # fmt: skip
    for field in ("forward_ns", "input_grad_ns", "weight_grad_ns"):
        got = sum(getattr(c, field) for c in parts)
        assert abs(got - getattr(whole, field)) <= 3, field
    assert parts[1].forward_flops == parts[2].forward_flops == 0
    assert parts[0].forward_flops == whole.forward_flops


#: The loss-only stage's (saved, working) bytes per micro-batch, counted from each kernel's code:
#: nanotron's _ShardedCrossEntropy saves the fp32 softmax of the shard, a bool mask and an int64
#: target a token, and works beside its fp32 input (the cast's output, received); PyTorch's
#: standard loss saves the fp32 log-softmax and works with two fp32 copies beside it.
LOSS_STAGE_BYTES = {
    "sharded": (4 * B * S * V // 2 + 9 * B * S, 4 * B * S * V // 2),
    "standard": (4 * B * S * V // 2, 8 * B * S * V // 2),
}


@pytest.mark.parametrize("loss_kind", sorted(LOSS_STAGE_BYTES))
@pytest.mark.parametrize("keeps", [False, True])
def test_tail_stages_memory(keeps: bool, loss_kind: str) -> None:
    """Per micro-batch: the head's stage saves the head's tensors less the loss's; the cast's
    stage saves nothing (``x.float()``'s backward needs no tensor) and holds the received
    logits and its fp32 copy while it runs; the loss's stage saves what the loss saves and
    holds its working memory. nanotron drops a sent output once sent (its pipeline state
    keeps a CPU dummy: parallel/pipeline_parallel/functional.py send_to_pipeline_state_buffer);
    a runtime that keeps each stage's output (``pipeline_keeps_stage_outputs``) keeps the
    logits on the head's stage and the fp32 copy on the cast's."""
    runtime = {"name": "nanotron", "pipeline_keeps_stage_outputs": keeps}
    sc = _scenario(4, tp=2, runtime=runtime, cross_entropy=loss_kind)  # type: ignore[arg-type]
    m, t, tp = sc.model, sc.training, 2
    mem = estimate_memory(sc)
    logits = 2 * B * S * V // tp
    head = mem.stages[1]
    assert head.layers == ((4, 6),) and head.breakdown is not None
    assert head.activation_bytes_per_microbatch == (
        2 * head.breakdown.per_layer_bytes + head_saved_bytes(m, t, tp, True)
        - loss_saved_bytes(m, t, tp) + (logits if keeps else 0))  # fmt: skip
    assert dict(head.loss_bytes) == {1: logits}  # the logits until sent, their gradient
    cast, loss = mem.stages[2], mem.stages[3]
    assert cast.activation_bytes_per_microbatch == (2 * logits if keeps else 0)
    assert dict(cast.loss_bytes) == {2: logits + 2 * logits}
    saved, working = LOSS_STAGE_BYTES[loss_kind]
    assert loss.activation_bytes_per_microbatch == saved
    assert dict(loss.loss_bytes) == {3: working}


def test_simulated_step_sends_the_logits() -> None:
    """The simulated step's SEND_F spans of the LM head's stage last the logits hop, and a
    larger vocabulary (more logits to send and a longer loss) makes the step longer."""
    sc = _scenario(4, tp=2)
    res = simulate_scenario(sc)
    step = resolve(sc)
    want = chunk_durations(sc, step)[1].send_forward_ns
    sends = [s for s in res.timeline.spans if s.kind == "SEND_F" and s.rank == 1]
    assert sends and all(s.duration_ns == want for s in sends)
    assert not [s for s in res.timeline.spans if s.kind == "SEND_F" and s.rank == 3]
    assert simulate_scenario(_scenario(4, tp=2, vocab=2 * V)).metrics.step_time_s > (
        res.metrics.step_time_s)  # fmt: skip


def test_a_loss_that_does_not_upcast_still_pays_the_cast() -> None:
    """nanotron's cast block converts the logits whatever the loss reads: under a loss whose
    own count holds no cast (flash-attn's fused kernel on 16-bit logits) the cast's stage
    still reads 2 B and writes 4 B per logit, and the loss part is the head's whole count."""
    sc = _scenario(4, tp=2)
    t = replace(sc.training, cross_entropy="fused")
    m = sc.model
    assert loss_part_bytes(m, t, 2, ("fp32 cast",)) == (6 * B * S * V / 2, 6 * B * S * V / 2)
    assert loss_part_bytes(m, t, 2, ("loss",)) == head_elementwise_bytes(m, t, 2)


def test_a_cast_only_stage_in_fp32_is_an_error() -> None:
    """In fp32 training ``x.float()`` returns its input: a stage holding only the cast would
    have no work (bubble 1.0), so the split is refused naming the key and the stage."""
    sc = _scenario(4)
    fp32 = replace(sc, training=replace(sc.training, precision="fp32"))
    with pytest.raises(ConfigError) as e:
        resolve(fp32)
    assert e.value.key == "parallelism.layer_split"
    assert "stage 2 of parallelism.pp = 4 with only the fp32 cast" in str(e.value)
    resolve(replace(fp32, parallelism=replace(fp32.parallelism, pp=3)))  # cast + loss: work


def test_memory_explain_names_the_loss_stages() -> None:
    """``simtrain memory --explain`` says where the loss went: the head's stage holds the head
    with its loss on a later stage, the tail stages the cast and the loss."""
    from simtrain.report.explain import explain_memory

    sc = _scenario(4, tp=2)
    text = "\n".join(explain_memory(sc, estimate_memory(sc)))
    assert "(2 layers, head (its loss on a later stage), TP 2)" in text
    assert "stage 2: 0 parameters on each GPU (0 layers, the fp32 cast, TP 2)" in text
    assert "stage 3: 0 parameters on each GPU (0 layers, the loss, TP 2)" in text


def test_full_recompute_working_set_on_the_heads_stage() -> None:
    """Under full recompute the head's stage re-materialises its block as any stage does: the
    head's saved tensors, freed by its backward first, are the head's without the loss's
    (which its later stage holds); the working set is then the block's, never clamped to 0."""
    from simtrain.costs.activations import cross_entropy_saved_bytes, recompute_working_set_bytes

    sc = _scenario(3, tp=2)
    full = replace(sc, training=replace(sc.training, recompute="full"))
    m, t = full.model, full.training
    apart = recompute_working_set_bytes(m, t, 1, False, True, 2, True, loss_apart=True)
    together = recompute_working_set_bytes(m, t, 1, False, True, 2, True)
    block = recompute_working_set_bytes(m, t, 1, False, False, 2, True)  # a middle chunk's
    head_own = head_saved_bytes(m, t, 2, True) - loss_saved_bytes(m, t, 2)
    assert apart == block + layer_input_bytes(m, t, 2, True) - head_own > 0
    # the loss's 32.8 MB counted as the head's: below 0 (the walk floors it at 0)
    assert together == apart - cross_entropy_saved_bytes(m, t, 2) < 0
    mem = estimate_memory(full)
    assert dict(mem.stages[1].recompute_working_set_bytes)[1] >= apart


def test_the_loss_collectives_run_where_the_loss_runs() -> None:
    """nanotron's sharded cross-entropy (three all-reduces of b·s fp32 values over TP) runs in
    its loss block: on the loss's stage, not the LM head's; the LM head keeps its input's
    all-gather and its backward's collectives."""
    from simtrain.costs import comm

    sc = _scenario(4, tp=2)
    step = resolve(sc)
    assert comm.tp_edge_collectives(sc, False, True) == (1 + 3, 2)  # head with its loss
    assert comm.tp_edge_collectives(sc, False, True, loss=False) == (1, 2)
    assert comm.tp_edge_collectives(sc, False, False, loss=True) == (3, 0)
    head_only = comm.tp_edges_ns(sc, step, False, True, loss=False)
    both = comm.tp_edges_ns(sc, step, False, True)
    loss_only = comm.tp_edges_ns(sc, step, False, False, loss=True)
    assert loss_only[0] > 0 and loss_only[1] == 0
    assert both == (head_only[0] + loss_only[0], head_only[1])
    d = chunk_durations(sc, step)
    assert d[3].tp_forward_ns == loss_only[0] and d[2].tp_forward_ns == 0
    assert step.chunks[1].layers == 2
    assert d[1].tp_forward_ns == 2 * comm.tp_forward_block(sc, step)[0] + head_only[0]


def test_the_soft_capping_stays_with_the_lm_head() -> None:
    """A model that soft-caps its logits (Gemma-2's c·tanh(logits/c)) caps them in the LM head's
    stage: that stage keeps the tanh's output (e B a logit) and the loss's stage saves the
    cross-entropy's own, in time and in memory alike."""
    from simtrain.costs.activations import softcap_saved_bytes

    plain = _scenario(4, tp=2)
    sc = replace(plain, model=replace(plain.model, logit_softcap=True))
    m, t = sc.model, sc.training
    cap = softcap_saved_bytes(m, t, 2)
    assert cap == 2 * B * S * V // 2 and softcap_saved_bytes(plain.model, t, 2) == 0
    mem, base = estimate_memory(sc), estimate_memory(plain)
    assert (mem.stages[1].activation_bytes_per_microbatch
            - base.stages[1].activation_bytes_per_microbatch) == cap  # fmt: skip
    assert mem.stages[3].activation_bytes_per_microbatch == (
        base.stages[3].activation_bytes_per_microbatch)  # fmt: skip
    head_cap = chunk_costs(sc, 0, False, True, None, ()).forward_ns
    assert head_cap > chunk_costs(plain, 0, False, True, None, ()).forward_ns
    assert chunk_costs(sc, 0, False, False, None, ("loss",)).forward_ns == chunk_costs(
        plain, 0, False, False, None, ("loss",)).forward_ns  # fmt: skip


def test_polled_logits_hops_poll_one_tensors_metadata() -> None:
    """Under the polling code (nanotron_bench: 2 tensors x 2 metadata messages forward, 1
    gradient x 2 backward) a hop that carries the logits or their fp32 copy polls one tensor's
    2 messages each way, a decoder hop 4 forward. pp 4 (blocks | head | cast | loss), 8
    micro-batches, hand counts per rank: sends 8x4, 8x2 + 8x2, 8x2 + 8x2, 8x2; receives
    8x2, 8x4 + 8x2, 8x2 + 8x2, 8x2."""
    from collections import Counter

    from simtrain.apps.simulate import lower_scenario
    from simtrain.costs.memory import estimate_memory

    sc = _scenario(4, tp=2, runtime="nanotron_bench")
    assert (sc.runtime.p2p_polled_messages_forward, sc.runtime.p2p_polled_messages_backward) == (
        4,
        2,
    )
    tasks, _ = lower_scenario(sc, estimate_memory(sc))
    sends = Counter(t.rank for t in tasks if t.kind == "META")
    receives = Counter(
        t.rank for t in tasks if t.kind == "POLL" and t.name.startswith("poll metadata")
    )
    assert [sends[r] for r in range(4)] == [32, 32, 32, 16]
    assert [receives[r] for r in range(4)] == [16, 48, 32, 16]
