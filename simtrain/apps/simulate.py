"""One training step of a scenario, end to end: memory, costs, schedule, lowering, engine, metrics.

Placement (Megatron order, Narayanan et al. 2021 §3): global GPU id = pp_rank·(dp·tp) +
dp_rank·tp + tp_rank, so a TP group is consecutive GPUs (inside a node when tp <= GPUs per node),
a DP group strides by tp, and pipeline neighbours are dp·tp GPUs apart.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from simtrain.costs import collectives as coll
from simtrain.costs.compute import chunk_costs, optimizer_step_ns
from simtrain.costs.memory import (
    PRECISIONS,
    MemoryReport,
    estimate_memory,
    gradients_transient,
    persistent_gradient_bytes,
    pipeline_schedule,
    scenario_chunks,
)
from simtrain.report.metrics import StepMetrics, step_metrics
from simtrain.sim.engine import gc_paused, simulate
from simtrain.sim.lowering import ChunkDurations, LoweringInput, RankWork, lower
from simtrain.sim.timeline import Timeline
from simtrain.spec.scenario import Scenario


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


def _collective_ns(sc: Scenario, op: str, size_bytes: float, n: int, stride: int) -> int:
    """One NCCL-style ring collective over a group of ``n`` GPUs whose ids are ``stride`` apart
    (TP: stride 1; DP: stride tp), using ``collectives.collective_time_s``: inside a node the
    intra-node link, across nodes one ring per NIC (bandwidth min(B_intra, g·B_nic))."""
    if n <= 1 or size_bytes <= 0:
        return 0
    intra, inter = coll.node_links(sc.hardware)
    g = (
        max(1, min(n, sc.cluster.gpus_per_node // stride))
        if stride <= sc.cluster.gpus_per_node
        else 1
    )
    t = coll.collective_time_s(op, size_bytes, n, algorithm="ring", intra=intra,
                               inter=inter, gpus_per_node=g)  # fmt: skip
    return round(1e9 * t)


def tp_allreduce_ns(sc: Scenario, size_bytes: float) -> int:
    """One Megatron TP all-reduce of a b·s·h activation over the TP group (Narayanan §3.2)."""
    return _collective_ns(sc, "all_reduce", size_bytes, sc.parallelism.tp, 1)


def dp_ns(sc: Scenario, op: str, size_bytes: float) -> int:
    """A collective over the data-parallel group (GPU ids tp apart)."""
    p = sc.parallelism
    return _collective_ns(sc, op, size_bytes, p.dp, p.tp)


def grad_sync(sc: Scenario, grad_bytes: int) -> tuple[int, str]:
    """Un-bucketed gradient all-reduce after the last backward (PipeDream and split-backward
    schedules, where DDP's bucket hooks do not apply)."""
    if sc.parallelism.dp == 1 or grad_bytes == 0:
        return 0, ""
    return dp_ns(sc, "all_reduce", grad_bytes), "DP all-reduce grads"


def dp_bytes_per_step(sc: Scenario, param_bytes: int) -> float:
    """Bytes each GPU sends per step for data parallelism, nccl-tests bus bytes (formulas.md §5.1):
    DDP all-reduce 2(n−1)/n·Ψ; ZeRO-1/2 reduce-scatter + all-gather, also 2(n−1)/n·Ψ; ZeRO-3 adds
    a second parameter all-gather (forward and backward): 3(n−1)/n·Ψ (Rajbhandari et al. 2020 §7).
    With gradient accumulation ZeRO-3 gathers and reduce-scatters once per micro-batch."""
    p = sc.parallelism
    n = p.dp
    if n == 1:
        return 0.0
    f = (n - 1) / n
    if p.zero_stage == 3:
        return 3 * f * param_bytes * sc.num_microbatches
    return 2 * f * param_bytes


MAX_BUCKET_GROUPS = 16


def _buckets(sc: Scenario, grad_bytes: int) -> list[int]:
    """Gradient buckets of ``bucket_mb`` MB; when there are more than 16, the earlier ones are
    merged into 15 equal groups (they all hide under the rest of backward) and the last bucket,
    the one that sets the exposed communication, keeps its size. Each group still pays one
    latency per bucket it stands for (see ``_bucket_group_ns``)."""
    cap = int(sc.parallelism.bucket_mb * 1e6)
    n = max(1, -(-grad_bytes // cap))
    sizes = [cap] * (n - 1) + [grad_bytes - cap * (n - 1)]
    if n <= MAX_BUCKET_GROUPS:
        return sizes
    head = sum(sizes[:-1])
    k = MAX_BUCKET_GROUPS - 1
    return [head // k + (1 if i < head % k else 0) for i in range(k)] + [sizes[-1]]


def _bucket_counts(sc: Scenario, grad_bytes: int) -> list[int]:
    """How many real buckets each entry of :func:`_buckets` stands for."""
    cap = int(sc.parallelism.bucket_mb * 1e6)
    n = max(1, -(-grad_bytes // cap))
    if n <= MAX_BUCKET_GROUPS:
        return [1] * n
    k = MAX_BUCKET_GROUPS - 1
    return [(n - 1) // k + (1 if i < (n - 1) % k else 0) for i in range(k)] + [1]


def _bucket_group_ns(sc: Scenario, op: str, grad_bytes: int) -> tuple[int, ...]:
    """Time of each bucket group: ``count`` collectives of its average bucket size."""
    return tuple(
        c * dp_ns(sc, op, size / c) if c else 0
        for size, c in zip(_buckets(sc, grad_bytes), _bucket_counts(sc, grad_bytes), strict=True)
    )


def ddp_bucket_ns(sc: Scenario, grad_bytes: int) -> tuple[int, ...]:
    """DDP: gradients all-reduced in buckets of ``bucket_mb`` MB (PyTorch default 25 MB,
    ``bucket_cap_mb``; Li et al. 2020 §3.2.3), launched as backward produces them."""
    return _bucket_group_ns(sc, "all_reduce", grad_bytes)


def zero_bucket_ns(sc: Scenario, grad_bytes: int) -> tuple[int, ...]:
    """ZeRO-1/2: gradients reduce-scattered in buckets as backward produces them (DeepSpeed
    ``overlap_comm``); the updated shards are all-gathered after the optimizer step."""
    return _bucket_group_ns(sc, "reduce_scatter", grad_bytes)


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
    layers = scenario_chunks(sc)
    act_bytes_tok = prec.act_mm * t.micro_batch * t.seq_len * m.hidden
    tp_msg = act_bytes_tok  # each TP all-reduce moves one b·s·h activation
    chunks: dict[int, ChunkDurations] = {}
    activation: dict[int, int] = {}
    working: dict[int, int] = {}
    for sm in mem.stages:
        activation.update(dict(sm.chunk_activation_bytes))
        working.update(dict(sm.recompute_working_set_bytes))
    for stage, ch in layers.items():
        lo, hi = ch.lo, ch.hi
        rank = stage % pp
        c = chunk_costs(sc, ch.layers, ch.embedding, ch.head)
        n = ch.layers
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
        trainable_here = sm.trainable // (p.dp if p.zero_stage >= 1 else 1)
        work = RankWork(optimizer_ns=optimizer_step_ns(trainable_here, t, sc.hardware))
        bucketable = pipeline_schedule(sc)[sm.stage][-2].kind in ("B", "W")
        if p.dp > 1 and grad_bytes:
            if p.dp_mode == "naive":
                ns, name = naive_dp_ns(sc, grad_bytes, sm.params * prec.param)
                work = replace(work, grad_sync_ns=ns, grad_sync_name=name)
            elif p.zero_stage == 3:
                pass  # per-layer gathers and reduce-scatters, set on the chunks below
            elif p.zero_stage in (1, 2):
                ag = dp_ns(sc, "all_gather", sm.params * prec.param)
                work = replace(work, bucket_ns=zero_bucket_ns(sc, grad_bytes),
                               bucket_name=f"ZeRO-{p.zero_stage} reduce-scatter",
                               post_opt_ns=ag, post_opt_name="AG updated params")  # fmt: skip
            elif bucketable and p.schedule != "pipedream":
                work = replace(work, bucket_ns=ddp_bucket_ns(sc, grad_bytes))
            else:
                ns, name = grad_sync(sc, grad_bytes)
                work = replace(work, grad_sync_ns=ns, grad_sync_name=name)
        ranks[sm.stage] = work
    if p.zero_stage == 3 and p.dp > 1:
        for stage, ch in chunks.items():
            lo, hi = ch.layers
            sm = mem.stages[stage % pp]
            per_layer = sm.params * prec.param // max(sum(e - s for s, e in sm.layers), 1)
            chunks[stage] = replace(
                ch,
                gather_ns_per_layer=dp_ns(sc, "all_gather", per_layer),
                reduce_scatter_ns_per_layer=dp_ns(
                    sc,
                    "reduce_scatter",
                    sm.trainable * prec.grad // max(hi - lo, 1) // (len(sm.layers)),
                ),
            )
    loss = {k: b for sm in mem.stages for k, b in sm.loss_bytes}
    return LoweringInput(pipeline_schedule(sc), pp, v, chunks, ranks, activation, working, loss)


def initial_memory(sc: Scenario, mem: MemoryReport,
                   transient_grads: bool = False) -> dict[int, dict[str, int]]:  # fmt: skip
    """Static memory per rank: every category but activations, which the tasks allocate (and
    the 16-bit gradients, when they only exist from backward to the optimizer step; an fp32
    accumulation buffer stays)."""
    out = {}
    for sm in mem.stages:
        cats = {k: v for k, v in sm.memory_bytes if k != "activations"}
        if transient_grads:
            cats["gradients"] = persistent_gradient_bytes(sc, sm.trainable)
        # the loss working memory is allocated by the last chunk's forward
        cats["buffers"] -= sum(b for _, b in sm.loss_bytes) + sm.optimizer_working_bytes
        out[sm.stage] = cats
    return out


def _with_optimizer_memory(task, sc: Scenario, mem: MemoryReport, transient_grads: bool):
    """The optimizer step holds its working memory while it runs; with transient gradients the
    16-bit gradients are allocated there too (after backward has freed the activations)."""
    sm = mem.stages[task.gpu]
    alloc = []
    if transient_grads:
        alloc.append(
            ("gradients", sm.category("gradients") - persistent_gradient_bytes(sc, sm.trainable))
        )
    if sm.optimizer_working_bytes:
        alloc.append(("buffers", sm.optimizer_working_bytes))
    free = (("buffers", sm.optimizer_working_bytes),) if sm.optimizer_working_bytes else ()
    return task._replace(alloc=tuple(alloc), free=free)


def gpu_labels(sc: Scenario) -> dict[int, str]:
    p = sc.parallelism
    peers = p.tp * p.dp
    labels = {}
    for r in range(p.pp):
        g = _stage_gpu(sc, r)
        who = f"GPU {g}" if peers == 1 else f"GPUs {g}-{g + peers - 1}"
        labels[r] = f"stage {r}: {who}"
    return labels


def _crosses_nodes(sc: Scenario, task) -> tuple[bool, float]:
    """Does this communication task leave the node, and how much of it is latency (s)?"""
    p, hw = sc.parallelism, sc.hardware
    gpn = sc.cluster.gpus_per_node
    if task.kind in ("SEND_F", "SEND_B"):
        step = 1 if task.kind == "SEND_F" else -1
        a = _stage_gpu(sc, task.gpu)
        b = _stage_gpu(sc, (task.gpu + step) % p.pp)
        return (not _same_node(sc, a, b)), hw.inter_node_latency_s
    if task.kind in ("DP", "AG", "RS") and p.dp * p.tp > gpn:
        n = p.dp
        return True, 2 * (n - 1) * hw.inter_node_latency_s
    if task.kind == "TP" and p.tp > gpn:
        return True, 2 * (p.tp - 1) * hw.inter_node_latency_s
    return False, 0.0


def share_nics(sc: Scenario, tasks: list) -> tuple[list, dict[str, float]]:
    """Put every transfer that leaves the node on its GPU's NIC, a link the engine shares
    between overlapping transfers (pipeline sends, DP and ZeRO collectives, cross-node TP).

    Each such task keeps its latency as a fixed part and turns the rest into bytes at the NIC's
    bandwidth, so a transfer alone takes exactly its alpha-beta time and overlapping ones slow
    each other down (the engine's processor-sharing links)."""
    hw = sc.hardware
    bw = hw.nic_bandwidth_bytes_per_s * hw.efficiency.collective / hw.oversubscription
    links: dict[str, float] = {}
    out = []
    for t in tasks:
        if t.stream == "compute" or t.duration_ns == 0:
            out.append(t)
            continue
        cross, lat_s = _crosses_nodes(sc, t)
        if not cross:
            out.append(t)
            continue
        lat_ns = min(round(lat_s * 1e9), t.duration_ns)
        name = f"nic:{t.gpu}"
        links[name] = bw
        nbytes = round((t.duration_ns - lat_ns) * bw / 1e9)
        out.append(t._replace(duration_ns=lat_ns, link=name, link_bytes=nbytes))
    return out, links


def simulate_scenario(sc: Scenario, detail: bool = True) -> SimulationResult:
    """Simulate one optimizer step of ``sc``. ``detail=False`` folds intra-node TP all-reduces
    into the compute they follow and each recompute into its backward (``lowering.lower``'s
    ``fuse_tp`` and ``merge_recompute``): the same step time, FLOP rates and peak memory with
    fewer tasks, but no TP or recompute spans in the timeline (the planner)."""
    with gc_paused():
        return _simulate_scenario(sc, detail)


def _simulate_scenario(sc: Scenario, detail: bool) -> SimulationResult:
    mem = estimate_memory(sc)
    inp = build_lowering_input(sc, mem)
    tasks = lower(
        inp,
        fuse_tp=not detail and sc.parallelism.tp <= sc.cluster.gpus_per_node,
        merge_recompute=not detail,
    )
    transient = gradients_transient(sc)
    tasks = [_with_optimizer_memory(t, sc, mem, transient) if t.kind == "OPT" else t for t in tasks]
    tasks, links = share_nics(sc, tasks)
    timeline = simulate(tasks, initial_memory(sc, mem, transient), links, gpu_labels=gpu_labels(sc))
    metrics = step_metrics(sc, timeline)
    return SimulationResult(sc, mem, timeline, metrics)
