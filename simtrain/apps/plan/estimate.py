"""The closed-form step time the planner ranks layouts by before simulating the best in full
(:func:`closed_form_step_s`): the library's own per-chunk costs, uniform-stage pipeline closed
forms and the exposed data-parallel communication, without an event simulation."""

from __future__ import annotations

from typing import NamedTuple

from simtrain.apps.simulate import dp_ns, tp_allreduce_ns
from simtrain.costs.collectives import group_link, p2p_time_s
from simtrain.costs.compute import chunk_costs, optimizer_step_ns
from simtrain.costs.memory import PRECISIONS, StageMemory, pipeline_schedule, scenario_chunks
from simtrain.spec.scenario import Scenario


class _Rank(NamedTuple):
    forward_ns: float  # F + its TP all-reduces
    input_ns: float  # recompute + input-gradient + their TP all-reduces
    weight_ns: float  # weight-gradient matmuls

    @property
    def total(self) -> float:
        return self.forward_ns + self.input_ns + self.weight_ns


def _bucketed_exposed_ns(sc: Scenario, op: str, grad_bytes: int, last_backward_ns: float) -> float:
    """Exposed time of DDP / ZeRO-1/2 gradient buckets launched as the last backward produces
    them (``simulation.ddp_bucket_ns`` / ``zero_bucket_ns``: buckets of ``bucket_mb``). Bucket
    i follows slice i of k; the collective stream runs them back to back, so the sync ends at
    max(T_B + d_last, T_B/k + Σd)."""
    cap = int(sc.parallelism.bucket_mb * 1e6)
    k = max(1, -(-grad_bytes // cap))
    last = grad_bytes - cap * (k - 1)
    full = dp_ns(sc, op, cap) if k > 1 else 0
    d_last = dp_ns(sc, op, last)
    total = (k - 1) * full + d_last
    return max(d_last, last_backward_ns / k + total - last_backward_ns)


def closed_form_step_s(sc: Scenario, stages: tuple[StageMemory, ...]) -> float:
    """Fast step-time estimate from the library's own costs, no event simulation.

    - Per micro-batch and rank: ``costs.chunk_costs`` of each of its chunks (forward,
      recompute, input and weight gradients) plus Megatron's TP all-reduces
      (``simulation.tp_allreduce_ns``: 2 per layer after F and after B, 2 more after a full
      recompute), as ``simulation.build_lowering_input`` lowers them.
    - Pipeline (uniform-stage closed forms; Narayanan et al. 2021 Eq. 1 and §2.2.2; formulas.md
      §3): ``m·T_max + (p−1)·T_avg/v`` for GPipe, 1F1B and interleaved (bubble (p−1)/(v·m+p−1)
      of the total); ZB-H1 ``m·T_max + (p−1)·(T_F + T_I − T_W)`` (Qi et al. 2024, "Zero Bubble
      Pipeline Parallelism", §3: the 1F1B bubble less the deferred weight gradients); plus the
      p2p hops of filling and draining the pipeline (``collectives.p2p_time_s``).
    - Data parallelism on stage 0 (whose last backward ends the step): DDP / ZeRO-1/2 buckets
      overlapped with the last backward (:func:`_bucketed_exposed_ns`), ZeRO-1/2's parameter
      all-gather after the step, ZeRO-3's per-layer gathers and reduce-scatters beyond the
      compute they hide behind (``simulation.dp_ns``); the optimizer step
      (``costs.optimizer_step_ns``).
    """
    ranks, first_chunk, n_chunks = _rank_costs(sc)
    step_ns = _pipeline_ns(sc, ranks, n_chunks)
    t, p = sc.training, sc.parallelism
    s0 = stages[0]
    trainable_here = s0.trainable // (p.dp if p.zero_stage >= 1 else 1)
    opt_ns = optimizer_step_ns(trainable_here, t, sc.hardware)
    dp_exposed = _dp_exposed_ns(sc, s0, ranks[0], first_chunk)
    return (step_ns + dp_exposed + opt_ns) / 1e9


def _rank_costs(sc: Scenario) -> tuple[list[_Rank], _Rank, int]:
    """Per micro-batch: the costs of each pipeline rank (the sum over the chunks it holds:
    virtual stage k on rank k mod p), those of stage 0's first chunk, and the chunk count."""
    m, t, p = sc.model, sc.training, sc.parallelism
    prec = PRECISIONS[t.precision]
    pp = p.pp
    blocks = scenario_chunks(sc)  # virtual stage -> what it holds (parallelism.layer_split)
    n_chunks = len(blocks)
    ar = tp_allreduce_ns(sc, prec.act_mm * t.micro_batch * t.seq_len * m.hidden)
    cache: dict[tuple[int, bool, bool], _Rank] = {}

    def chunk(k: int) -> tuple[int, bool, bool]:
        b = blocks[k]
        key = (b.layers, b.embedding, b.head)
        if key not in cache:
            n = b.layers
            c = chunk_costs(sc, n, b.embedding, b.head)
            tp_b = 2 * n * ar if c.input_grad_ns else 0
            tp_r = 2 * n * ar if (c.recompute_ns and t.recompute == "full") else 0
            cache[key] = _Rank(c.forward_ns + 2 * n * ar,
                               c.recompute_ns + c.input_grad_ns + tp_b + tp_r,
                               c.weight_grad_ns)  # fmt: skip
        return key

    rank_cache: dict[tuple, _Rank] = {}

    def rank(r: int) -> _Rank:
        keys = tuple(chunk(k) for k in range(r, n_chunks, pp))
        if keys not in rank_cache:
            parts = [cache[k] for k in keys]
            rank_cache[keys] = _Rank(*(sum(x[i] for x in parts) for i in range(3)))
        return rank_cache[keys]

    ranks = [rank(r) for r in range(pp)]
    return ranks, cache[chunk(0)], n_chunks


def _pipeline_ns(sc: Scenario, ranks: list[_Rank], n_chunks: int) -> float:
    """The pipelined micro-batches: ``m·T_max`` plus the schedule's bubble and the p2p hops of
    filling and draining the pipeline (:func:`closed_form_step_s`)."""
    p = sc.parallelism
    pp = p.pp
    t_max = max(r.total for r in ranks)
    if pp == 1:
        bubble_ns = 0.0
    else:
        t_avg = sum(r.total for r in ranks) / pp
        if p.schedule == "zb_h1":
            avg = [sum(r[i] for r in ranks) / pp for i in range(3)]
            bubble_ns = (pp - 1) * max(avg[0] + avg[1] - avg[2], 0.0)
        elif p.schedule == "naive":
            bubble_ns = (pp - 1) * sc.num_microbatches * t_avg
        else:
            bubble_ns = (pp - 1) * t_avg / p.virtual_stages
        bubble_ns += 2 * (n_chunks - 1) * _p2p_send_ns(sc)
    mb = sc.num_microbatches
    return mb * t_max + bubble_ns


def _p2p_send_ns(sc: Scenario) -> float:
    """One activation send between neighbouring pipeline stages: over the node's link while
    the next stage is in the same node (dp·tp below a node), else over the network."""
    m, t, p = sc.model, sc.training, sc.parallelism
    prec = PRECISIONS[t.precision]
    gpn = sc.cluster.gpus_per_node
    span = 2 * p.dp * p.tp if p.dp * p.tp < gpn else sc.cluster.gpus + 1
    link = group_link(sc.hardware, gpn, span)
    return 1e9 * p2p_time_s(prec.act_mm * t.micro_batch * t.seq_len * m.hidden / p.tp, link)


def _dp_exposed_ns(sc: Scenario, s0: StageMemory, r0: _Rank, first_chunk: _Rank) -> float:
    """Stage 0's data-parallel communication not hidden behind its compute (0 without DP):
    ZeRO-3's per-layer gathers and reduce-scatters beyond rank 0's compute, else the gradient
    sync (bucketed behind the last backward when the schedule ends on one) and ZeRO-1/2's
    parameter all-gather."""
    t, p = sc.training, sc.parallelism
    prec = PRECISIONS[t.precision]
    grad_bytes = s0.trainable * prec.grad
    if not (p.dp > 1 and grad_bytes):
        return 0.0
    if p.zero_stage == 3:
        layers_here = sum(e - s for s, e in s0.layers)
        per_layer = s0.params * prec.param // max(layers_here, 1)
        gathers = 3 if t.recompute == "full" else 2
        comm = layers_here * (gathers * dp_ns(sc, "all_gather", per_layer)
                              + dp_ns(sc, "reduce_scatter", grad_bytes // max(layers_here, 1)))  # fmt: skip
        return sc.num_microbatches * max(0.0, comm - r0.total)
    # stage 0's first chunk: its backward ends the step
    last_backward = first_chunk.input_ns + first_chunk.weight_ns
    op = "all_reduce" if p.zero_stage == 0 else "reduce_scatter"
    bucketable = pipeline_schedule(sc)[0][-2].kind in ("B", "W")
    if bucketable and p.schedule != "pipedream":
        dp_exposed = _bucketed_exposed_ns(sc, op, grad_bytes, last_backward)
    else:
        dp_exposed = dp_ns(sc, "all_reduce", grad_bytes)
    if p.zero_stage in (1, 2):
        dp_exposed += dp_ns(sc, "all_gather", s0.params * prec.param)
    return dp_exposed
