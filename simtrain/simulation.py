"""One training step of a scenario, end to end: memory, costs, schedule, lowering, engine, metrics.

Placement (Megatron order, Narayanan et al. 2021 §3): global GPU id = pp_rank·(dp·tp) +
dp_rank·tp + tp_rank, so a TP group is consecutive GPUs (inside a node when tp <= GPUs per node),
a DP group strides by tp, and pipeline neighbours are dp·tp GPUs apart.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from simtrain import collectives as coll
from simtrain.config import Scenario
from simtrain.costs import chunk_costs, optimizer_step_ns
from simtrain.engine import simulate
from simtrain.lowering import ChunkDurations, LoweringInput, RankWork, chunk_layers, lower
from simtrain.memory import (
    PRECISIONS,
    MemoryReport,
    estimate_memory,
    gradients_transient,
    pipeline_schedule,
)
from simtrain.metrics import StepMetrics, step_metrics
from simtrain.timeline import Timeline


@dataclass(frozen=True, slots=True)
class SimulationResult:
    scenario: Scenario
    memory: MemoryReport
    timeline: Timeline
    metrics: StepMetrics


def _stage_gpu(sc: Scenario, rank: int) -> int:
    p = sc.parallelism
    return rank * p.dp * p.tp


def _same_node(sc: Scenario, a: int, b: int) -> bool:
    gpn = sc.cluster.gpus_per_node
    return a // gpn == b // gpn


def tp_allreduce_ns(sc: Scenario, size_bytes: float) -> int:
    """One Megatron TP all-reduce of a b·s·h activation over the TP group (ring)."""
    p, hw = sc.parallelism, sc.hardware
    if p.tp == 1:
        return 0
    link = coll.group_link(hw, sc.cluster.gpus_per_node, p.tp)
    return round(1e9 * coll.ring_time_s("all_reduce", size_bytes, p.tp, link.bandwidth_bytes_per_s,
                                        link.latency_s))  # fmt: skip


def grad_sync(sc: Scenario, grad_bytes: int) -> tuple[int, str]:
    """Data-parallel gradient reduction after the last backward (ring all-reduce; ZeRO-1/2:
    reduce-scatter of gradients + all-gather of updated parameters, the same 2Ψ volume;
    ZeRO-3 adds a forward and a backward parameter all-gather: 3Ψ — Rajbhandari et al. 2020 §7)."""
    p, hw = sc.parallelism, sc.hardware
    if p.dp == 1 or grad_bytes == 0:
        return 0, ""
    link = coll.group_link(hw, sc.cluster.gpus_per_node, p.dp * p.tp)
    bw, lat = link.bandwidth_bytes_per_s, link.latency_s
    if p.zero_stage == 0:
        t = coll.ring_time_s("all_reduce", grad_bytes, p.dp, bw, lat)
        return round(1e9 * t), "DP all-reduce grads"
    t = coll.ring_time_s("reduce_scatter", grad_bytes, p.dp, bw, lat)
    t += coll.ring_time_s("all_gather", grad_bytes, p.dp, bw, lat)
    if p.zero_stage == 3:
        t += 2 * coll.ring_time_s("all_gather", grad_bytes, p.dp, bw, lat)
    return round(1e9 * t), f"ZeRO-{p.zero_stage} reduce-scatter + all-gather"


def ddp_bucket_ns(sc: Scenario, grad_bytes: int) -> tuple[int, ...]:
    """DDP: gradients all-reduced in buckets of ``bucket_mb`` MB (PyTorch default 25 MB,
    ``bucket_cap_mb``), each a ring all-reduce over the DP group."""
    p, hw = sc.parallelism, sc.hardware
    cap = int(p.bucket_mb * 1e6)
    n = max(1, -(-grad_bytes // cap))
    link = coll.group_link(hw, sc.cluster.gpus_per_node, p.dp * p.tp)
    sizes = [cap] * (n - 1) + [grad_bytes - cap * (n - 1)]
    return tuple(
        round(
            1e9
            * coll.ring_time_s("all_reduce", b, p.dp, link.bandwidth_bytes_per_s, link.latency_s)
        )  # fmt: skip
        for b in sizes
    )


def naive_dp_ns(sc: Scenario, grad_bytes: int, param_bytes: int) -> tuple[int, str]:
    """The lecture's data parallelism: GPU 0 receives every other GPU's gradients through its
    own link ((n−1)·S), averages them, steps, and sends the parameters back to each ((n−1)·P)."""
    p, hw = sc.parallelism, sc.hardware
    link = coll.group_link(hw, sc.cluster.gpus_per_node, p.dp * p.tp)
    n = p.dp
    t = (n - 1) * (grad_bytes + param_bytes) / link.bandwidth_bytes_per_s
    t += 2 * (n - 1) * link.latency_s
    return round(1e9 * t), "gather grads on GPU 0 + broadcast params"


def build_lowering_input(sc: Scenario, mem: MemoryReport) -> LoweringInput:
    p, t, m = sc.parallelism, sc.training, sc.model
    pp, v = p.pp, p.virtual_stages
    prec = PRECISIONS[t.precision]
    layers = chunk_layers(m.layers, pp, v)
    act_bytes_tok = prec.act_mm * t.micro_batch * t.seq_len * m.hidden
    tp_msg = act_bytes_tok  # each TP all-reduce moves one b·s·h activation
    chunks: dict[int, ChunkDurations] = {}
    activation: dict[int, int] = {}
    working: dict[int, int] = {}
    for sm in mem.stages:
        activation.update(dict(sm.chunk_activation_bytes))
        working.update(dict(sm.recompute_working_set_bytes))
    for stage, (lo, hi) in layers.items():
        rank = stage % pp
        c = chunk_costs(sc, hi - lo, lo == 0, hi == m.layers)
        n = hi - lo
        ar = tp_allreduce_ns(sc, tp_msg)
        # p2p: Megatron's scatter/gather sends b·s·h/t per TP rank (Narayanan et al. §4.1).
        nxt = (stage + 1) % pp
        a_gpu, b_gpu = _stage_gpu(sc, rank), _stage_gpu(sc, nxt)
        span = sc.cluster.gpus_per_node if _same_node(sc, a_gpu, b_gpu) else sc.cluster.gpus + 1
        link = coll.group_link(sc.hardware, sc.cluster.gpus_per_node, span)
        send = round(1e9 * coll.p2p_time_s(act_bytes_tok / p.tp, link))
        chunks[stage] = ChunkDurations(
            forward_ns=c.forward_ns,
            input_grad_ns=c.input_grad_ns,
            weight_grad_ns=c.weight_grad_ns,
            recompute_ns=c.recompute_ns,
            tp_forward_ns=2 * n * ar,
            tp_backward_ns=2 * n * ar if c.input_grad_ns else 0,
            tp_recompute_ns=2 * n * ar if t.recompute == "full" else 0,
            send_forward_ns=send,
            send_backward_ns=send,
            layers=(lo, hi),
        )
    ranks: dict[int, RankWork] = {}
    for sm in mem.stages:
        grad_bytes = sm.trainable * prec.grad
        sync_ns, sync_name = grad_sync(sc, grad_bytes)
        trainable_here = sm.trainable // (p.dp if p.zero_stage >= 1 else 1)
        buckets: tuple[int, ...] = ()
        if p.dp > 1 and p.dp_mode == "ddp" and p.zero_stage == 0 and grad_bytes:
            buckets = ddp_bucket_ns(sc, grad_bytes)
            sync_ns = 0
        elif p.dp > 1 and p.dp_mode == "naive":
            sync_ns, sync_name = naive_dp_ns(sc, grad_bytes, sm.params * prec.param)
        ranks[sm.stage] = RankWork(
            grad_sync_ns=sync_ns,
            grad_sync_name=sync_name or "DP all-reduce grads",
            optimizer_ns=optimizer_step_ns(trainable_here, t, sc.hardware),
            bucket_ns=buckets,
        )
    return LoweringInput(pipeline_schedule(sc), pp, v, chunks, ranks, activation, working)


def initial_memory(mem: MemoryReport, transient_grads: bool = False) -> dict[int, dict[str, int]]:
    """Static memory per rank: every category but activations, which the tasks allocate (and
    gradients, when they only exist from backward to the optimizer step)."""
    skip = ("activations", "gradients") if transient_grads else ("activations",)
    return {sm.stage: {k: v for k, v in sm.memory_bytes if k not in skip} for sm in mem.stages}


def gpu_labels(sc: Scenario) -> dict[int, str]:
    p = sc.parallelism
    peers = p.tp * p.dp
    labels = {}
    for r in range(p.pp):
        g = _stage_gpu(sc, r)
        who = f"GPU {g}" if peers == 1 else f"GPUs {g}-{g + peers - 1} (tp {p.tp} x dp {p.dp})"
        labels[r] = f"stage {r}: {who}"
    return labels


def simulate_scenario(sc: Scenario) -> SimulationResult:
    """Simulate one optimizer step of ``sc``."""
    mem = estimate_memory(sc)
    inp = build_lowering_input(sc, mem)
    tasks = lower(inp)
    transient = gradients_transient(sc)
    if transient:  # gradients are allocated once backward has freed the activations
        tasks = [
            replace(t, alloc=(("gradients", mem.stages[t.gpu].category("gradients")),))
            if t.kind == "OPT" else t
            for t in tasks
        ]  # fmt: skip
    timeline = simulate(tasks, initial_memory(mem, transient), gpu_labels=gpu_labels(sc))
    metrics = step_metrics(sc, timeline)
    return SimulationResult(sc, mem, timeline, metrics)
