"""Lowering: a scenario's schedule and costs become engine tasks.

Schedule (per-rank compute actions) + durations + memory deltas -> ``engine.Task`` list. Each
compute action becomes a compute-stream task; a forward's output (and a backward's input
gradient) travels to the neighbouring stage as a p2p task on the sender's p2p stream; tensor-
parallel all-reduces follow each F/R/B on the collective stream, on the critical path (Megatron,
Narayanan et al. 2021 §3.2); data-parallel gradient reductions run on their own "dp" stream
(a separate NCCL communicator), overlapping the backward and never delaying the pipeline's
TP traffic; the optimizer step waits for them. Only one GPU per pipeline stage is simulated: its TP
and DP peers do identical work (scale by symmetry).
"""

from __future__ import annotations

from dataclasses import dataclass

from simtrain.schedules import Action, Schedule
from simtrain.sim.engine import Task


@dataclass(frozen=True, slots=True)
class ChunkDurations:
    """Durations of one virtual stage's work for one micro-batch (ns)."""

    forward_ns: int
    input_grad_ns: int
    weight_grad_ns: int
    recompute_ns: int = 0
    tp_forward_ns: int = 0  # exposed TP communication after the forward
    tp_backward_ns: int = 0  # ... after the backward
    tp_recompute_ns: int = 0
    send_forward_ns: int = 0  # p2p of the output activations to the next stage
    send_backward_ns: int = 0  # p2p of the input gradient to the previous stage
    layers: tuple[int, int] = (0, 0)
    # ZeRO-3 (Rajbhandari et al. 2020 §5.3; FSDP): each layer's parameters are all-gathered
    # before its forward and its backward (prefetched one layer ahead on the "gather" stream)
    # and its gradients reduce-scattered after its backward.
    gather_ns_per_layer: int = 0
    reduce_scatter_ns_per_layer: int = 0


@dataclass(frozen=True, slots=True)
class RankWork:
    """Per-rank work outside the micro-batch loop."""

    grad_sync_ns: int = 0  # data-parallel gradient reduction (collective stream)
    grad_sync_name: str = "ALLREDUCE grads"
    # DDP: one all-reduce per gradient bucket, each launched as soon as the last backward has
    # produced it (Li et al. 2020, "PyTorch Distributed", §3.2.3); empty = one sync at the end.
    bucket_ns: tuple[int, ...] = ()
    bucket_name: str = "DP all-reduce"
    post_opt_ns: int = 0
    post_opt_name: str = "AG params"
    optimizer_ns: int = 0
    param_gather_ns: int = 0  # ZeRO-3 parameter gathers exposed per step


@dataclass(frozen=True, slots=True)
class LoweringInput:
    schedule: Schedule
    pp: int
    v: int
    chunks: dict[int, ChunkDurations]  # virtual stage -> durations
    ranks: dict[int, RankWork]
    activation_bytes: dict[int, int]  # virtual stage -> bytes per micro-batch
    working_set_bytes: dict[int, int]  # virtual stage -> recompute working set
    loss_bytes: dict[int, int] | None = None  # virtual stage -> loss working memory during F


def lower(inp: LoweringInput, fuse_tp: bool = False, merge_recompute: bool = False) -> list[Task]:
    """Turn the per-rank action lists into engine tasks (see module docstring).

    ``fuse_tp``: add each TP all-reduce to the compute slice it follows instead of making it a
    task of its own, where nothing else hangs off that slice (no DDP/ZeRO bucket, no ZeRO-3
    gather or reduce-scatter). The next compute and the sends wait for the all-reduce either
    way and no other stream allocates memory meanwhile, so step time and peak memory are the
    same with fewer tasks (the planner's fast path; the trace then shows no TP spans; GPT-3 on
    1,024 GPUs, tp 8 pp 16 1F1B m 192: 21,632 -> 15,504 tasks).
    Only for TP inside a node: a cross-node TP all-reduce shares the NIC.

    ``merge_recompute``: run a backward's recompute and the backward as one compute task where
    the backward hangs off nothing but the recompute (no DDP bucket slices, no ZeRO-3 per-layer
    slices). The backward always starts when its recompute ends (all its other dependencies
    are the recompute's), the merged task allocates the working set at its start and frees
    everything at its end, so step time and memory are the same with fewer tasks under full
    recompute (tp 8 pp 16 interleaved m 192, with fuse_tp: 30,384 -> 24,256 tasks); the trace
    then counts recompute time as backward."""
    tasks: list[Task] = []
    next_id = 0
    # (stage, mb, kind) -> id of the task whose end means "done" (incl. TP comm)
    done: dict[tuple[int, int | None, str], int] = {}
    send_f: dict[tuple[int, int], int] = {}  # (sender stage, mb) -> p2p task id
    send_b: dict[tuple[int, int], int] = {}
    last = inp.pp * inp.v - 1
    pending: list[tuple[Task, tuple]] = []  # tasks whose deps are resolved after all sends exist

    # The last action producing weight gradients on each rank (B, or W after a split backward).
    last_backward: dict[int, Action | None] = {}
    for rank, actions in inp.schedule.items():
        grads = [a for a in actions if a.kind in ("B", "W")]
        last_backward[rank] = grads[-1] if grads else None
    grad_bucket_last: dict[int, int] = {}
    recent_compute: dict[int, list[int]] = {r: [] for r in inp.schedule}

    # Pass 1: create tasks per rank in schedule order, remembering symbolic deps.
    for rank in sorted(inp.schedule):
        prev_done: int | None = None
        actions = inp.schedule[rank]
        for pos, a in enumerate(actions):
            if a.kind == "OPT":
                if pos < len(actions) - 1:
                    # Asynchronous PipeDream: the stage updates its weights after every
                    # backward (Harlap et al. 2018 §3.3), on the compute stream.
                    t = _Draft(next_id, rank, "compute", "OPT", f"optimizer step after mb{pos}",
                             inp.ranks[rank].optimizer_ns)  # fmt: skip
                    pending.append((t, (("id", prev_done),) if prev_done is not None else ()))
                    prev_done = next_id
                    next_id += 1
                continue
            c = inp.chunks[a.stage]
            lo, hi = c.layers
            label = f"mb{a.microbatch} L{lo}-{hi - 1}"
            act = inp.activation_bytes[a.stage]
            ws = inp.working_set_bytes[a.stage]
            sym: list[tuple] = []
            if prev_done is not None:
                sym.append(("id", prev_done))
            if a.kind == "F":
                if a.stage > 0:
                    sym.append(("send_f", a.stage - 1, a.microbatch))
                loss = (inp.loss_bytes or {}).get(a.stage, 0)
                if loss:
                    main = [("F", c.forward_ns, (("activations", act), ("buffers", loss)),
                             (("buffers", loss),))]  # fmt: skip
                else:
                    main = [("F", c.forward_ns, (("activations", act),), ())]
                tp_ns = c.tp_forward_ns
            elif a.kind in ("B", "I"):
                sym.append(("done", a.stage, a.microbatch, "F"))
                if a.stage < last:
                    sym.append(("send_b", a.stage + 1, a.microbatch))
                main = []
                if c.recompute_ns or ws:
                    main.append(("R", c.recompute_ns + 0, (("activations", ws),), ()))
                if a.kind == "B":
                    dur = c.input_grad_ns + c.weight_grad_ns
                    frees = (("activations", act + ws),)
                else:
                    dur = c.input_grad_ns
                    frees = (("activations", ws),) if ws else ()
                main.append((a.kind, dur, (), frees))
                tp_ns = c.tp_backward_ns + (c.tp_recompute_ns if main[0][0] == "R" else 0)
            elif a.kind == "W":
                sym.append(("done", a.stage, a.microbatch, "I"))
                main = [("W", c.weight_grad_ns, (), (("activations", act),))]
                tp_ns = 0
            else:  # communication actions are derived below, not taken from the schedule
                continue
            first_deps = sym
            last_id = None
            work = inp.ranks[rank]
            bucketed = bool(work.bucket_ns) and a == last_backward[rank]
            if bucketed:
                # Split the rank's last backward into one slice per bucket; bucket i's
                # all-reduce follows slice i on the collective stream.
                kind, dur, alloc, free = main[-1]
                k = len(work.bucket_ns)
                slices = [dur // k + (1 if i < dur % k else 0) for i in range(k)]
                main = main[:-1] + [
                    (kind, d, alloc if i == 0 else (), free if i == k - 1 else ())
                    for i, d in enumerate(slices)
                ]
            if (merge_recompute and len(main) == 2 and main[0][0] == "R" and not bucketed
                    and not c.gather_ns_per_layer and not c.reduce_scatter_ns_per_layer):  # fmt: skip
                (_, r_dur, r_alloc, r_free), (kind, dur, alloc, free) = main
                assert not r_free and not alloc  # R only allocates, B / I only free
                main = [(kind, r_dur + dur, r_alloc, free)]
            if c.gather_ns_per_layer:
                main = _per_layer(main, hi - lo)
            elif (fuse_tp and tp_ns and not c.reduce_scatter_ns_per_layer
                  and not bucketed):  # fmt: skip
                kind, dur, alloc, free = main[-1]
                main = main[:-1] + [(kind, dur + tp_ns, alloc, free)]
                tp_ns = 0
            bucket_after: dict[int, int] = {}
            for slice_no, (kind, dur, alloc, free) in enumerate(main):
                deps_extra: tuple = ()
                if c.gather_ns_per_layer and kind in ("F", "R", "B", "I"):
                    layer = _slice_layer(kind, slice_no, main, lo, hi)
                    window = recent_compute[rank][-2:-1]  # prefetch: one layer ahead
                    g = _Draft(next_id, rank, "gather", "AG", f"AG params L{layer} {label}",
                             c.gather_ns_per_layer, (), microbatch=a.microbatch, stage=a.stage)  # fmt: skip
                    pending.append((g, tuple(("id", w) for w in window)))
                    deps_extra = (("id", next_id),)
                    next_id += 1
                t = _Draft(next_id, rank, "compute", kind, f"{kind} {label}", dur, (), alloc, free,
                         a.microbatch, a.stage)  # fmt: skip
                base = tuple(first_deps) if last_id is None else (("id", last_id),)
                pending.append((t, base + deps_extra))
                last_id = next_id
                recent_compute[rank].append(next_id)
                next_id += 1
                if c.reduce_scatter_ns_per_layer and kind in ("B", "W"):
                    rs = _Draft(next_id, rank, "dp", "RS", f"RS grads {label}",
                              c.reduce_scatter_ns_per_layer, (), microbatch=a.microbatch,
                              stage=a.stage)  # fmt: skip
                    pending.append((rs, (("id", last_id),)))
                    grad_bucket_last[rank] = next_id
                    next_id += 1
                if bucketed and kind in ("B", "W", "I"):
                    i = len(bucket_after)
                    if i < len(work.bucket_ns):
                        bt = _Draft(next_id, rank, "dp", "DP",
                                  f"{work.bucket_name} bucket {i}", work.bucket_ns[i])  # fmt: skip
                        pending.append((bt, (("id", last_id),)))
                        bucket_after[i] = next_id
                        grad_bucket_last[rank] = next_id
                        next_id += 1
            if tp_ns:
                t = _Draft(next_id, rank, "collective", "TP", f"TP all-reduce {label}", tp_ns, (),
                         microbatch=a.microbatch, stage=a.stage)  # fmt: skip
                pending.append((t, (("id", last_id),)))
                last_id = next_id
                next_id += 1
            done[(a.stage, a.microbatch, a.kind)] = last_id
            prev_done = last_id
            # Sends to the neighbouring stage.
            if a.kind == "F" and a.stage < last and inp.pp > 1:
                t = _Draft(next_id, rank, "p2p", "SEND_F", f"SEND_F {label}", c.send_forward_ns,
                         (), microbatch=a.microbatch, stage=a.stage)  # fmt: skip
                pending.append((t, (("id", last_id),)))
                send_f[(a.stage, a.microbatch)] = next_id
                next_id += 1
            if a.kind in ("B", "I") and a.stage > 0 and inp.pp > 1:
                t = _Draft(next_id, rank, "p2p", "SEND_B", f"SEND_B {label}", c.send_backward_ns,
                         (), microbatch=a.microbatch, stage=a.stage)  # fmt: skip
                pending.append((t, (("id", last_id),)))
                send_b[(a.stage, a.microbatch)] = next_id
                next_id += 1
        # Data-parallel gradient sync and the optimizer step.
        work = inp.ranks[rank]
        grads_ready = prev_done
        if rank in grad_bucket_last:
            grads_ready = grad_bucket_last[rank]
        elif work.grad_sync_ns:
            t = _Draft(next_id, rank, "dp", "DP", work.grad_sync_name, work.grad_sync_ns)
            pending.append((t, (("id", prev_done),) if prev_done is not None else ()))
            grads_ready = next_id
            next_id += 1
        if inp.schedule[rank] and inp.schedule[rank][-1].kind == "OPT":
            deps = (("id", grads_ready),) if grads_ready is not None else ()
            t = _Draft(next_id, rank, "compute", "OPT", "optimizer step", work.optimizer_ns)
            pending.append((t, deps))
            next_id += 1
            if work.post_opt_ns:  # ZeRO-1/2: all-gather of the updated parameter shards
                t = _Draft(next_id, rank, "dp", "AG", work.post_opt_name, work.post_opt_ns)
                pending.append((t, (("id", next_id - 1),)))
                next_id += 1

    # Pass 2: resolve symbolic dependencies; build each Task once.
    for t, sym in pending:
        deps: list[int] = []
        for d in sym:
            if d[0] == "id":
                deps.append(d[1])
            elif d[0] == "send_f":
                deps.append(send_f[(d[1], d[2])])
            elif d[0] == "send_b":
                deps.append(send_b[(d[1], d[2])])
            elif d[0] == "done":
                deps.append(done[(d[1], d[2], d[3])])
        tasks.append(t.build(tuple(deps)))
    return tasks


class _Draft:
    """A task before its dependencies are known: Task's positional fields with a placeholder
    where ``deps`` goes; :meth:`build` makes the immutable Task once they are resolved."""

    __slots__ = ("a",)

    def __init__(self, id: int, gpu: int, stream: str, kind: str, name: str, duration_ns: int,
                 _deps: tuple = (), alloc: tuple = (), free: tuple = (),
                 microbatch: int | None = None, stage: int | None = None) -> None:  # fmt: skip
        self.a = (id, gpu, stream, kind, name, duration_ns, alloc, free, microbatch, stage)

    def build(self, deps: tuple[int, ...]) -> Task:
        a = self.a
        return Task(*a[:6], deps, *a[6:])


def _per_layer(main: list[tuple], layers: int) -> list[tuple]:
    """Split each compute piece of an action into one slice per layer (allocations on the
    first slice, frees on the last), so that per-layer communication can interleave."""
    out: list[tuple] = []
    for kind, dur, alloc, free in main:
        n = max(layers, 1)
        for i in range(n):
            d = dur // n + (1 if i < dur % n else 0)
            out.append((kind, d, alloc if i == 0 else (), free if i == n - 1 else ()))
    return out


def _slice_layer(kind: str, slice_no: int, main: list[tuple], lo: int, hi: int) -> int:
    """Layer index of a per-layer slice: forward and recompute go up, backward goes down. A
    chunk without decoder layers (an embedding- or head-only stage) labels its one slice ``lo``."""
    n = hi - lo
    if n <= 0:
        return lo
    i = slice_no % n
    return lo + i if kind in ("F", "R") else hi - 1 - i
