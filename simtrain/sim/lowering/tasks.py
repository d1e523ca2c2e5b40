"""Pass 2 of lowering: pieces become engine tasks, with the communication each one implies.

Per rank, in schedule order: every piece is a compute-stream task (ZeRO-3: preceded by its
layer's parameter all-gather on the "gather" stream, prefetched one slice ahead, and followed
after B/W by a gradient reduce-scatter on the "dp" stream; the rank's last backward: followed
by each gradient bucket's reduction on the "dp" stream); then the TP all-reduce on the
"collective" stream, on the critical path (Megatron, Narayanan et al. 2021 §3.2); then the p2p
send of the output activation (F) or input gradient (B/I) on the "p2p" stream. After the last
action: the un-bucketed gradient reduction, the optimizer step (which waits for the gradients)
and ZeRO-1/2's all-gather of the updated shards. Dependencies on other ranks (a forward waits
for the previous stage's send, a backward for the next stage's) are symbolic until
:meth:`_Builder.tasks` resolves them, once every send exists.
"""

from __future__ import annotations

from simtrain.schedules import Action
from simtrain.sim.engine import Task
from simtrain.sim.lowering.ir import LoweringInput
from simtrain.sim.lowering.pieces import Piece, action_pieces, slice_layer

Sym = tuple  # ("id", n) | ("send_f"|"send_b", stage, mb) | ("done", stage, mb, kind)


class _Draft:
    """A task before its dependencies are known: Task's positional fields with a placeholder
    where ``deps`` goes; :meth:`build` makes the immutable Task once they are resolved."""

    __slots__ = ("a",)

    def __init__(self, id: int, gpu: int, stream: str, kind: str, name: str, duration_ns: int,
                 alloc: tuple = (), free: tuple = (), microbatch: int | None = None,
                 stage: int | None = None) -> None:  # fmt: skip
        self.a = (id, gpu, stream, kind, name, duration_ns, alloc, free, microbatch, stage)

    def build(self, deps: tuple[int, ...]) -> Task:
        a = self.a
        return Task(*a[:6], deps, *a[6:])


class _Builder:
    def __init__(self, inp: LoweringInput, fuse_tp: bool, merge_recompute: bool) -> None:
        self.inp, self.fuse_tp, self.merge = inp, fuse_tp, merge_recompute
        self.next_id = 0
        self.pending: list[tuple[_Draft, tuple[Sym, ...]]] = []
        self.done: dict[tuple[int, int | None, str], int] = {}  # (stage, mb, kind) -> last task
        self.sends: dict[tuple[str, int, int], int] = {}  # (kind, sender stage, mb) -> task
        self.grad_bucket_last: dict[int, int] = {}
        self.recent_compute: dict[int, list[int]] = {r: [] for r in inp.schedule}
        self.last = inp.pp * inp.v - 1

    def add(self, rank: int, stream: str, kind: str, name: str, duration_ns: int,
            deps: tuple[Sym, ...], alloc: tuple = (), free: tuple = (),
            a: Action | None = None) -> int:  # fmt: skip
        mb, stage = (a.microbatch, a.stage) if a is not None else (None, None)
        i = self.next_id
        self.pending.append((_Draft(i, rank, stream, kind, name, duration_ns, alloc, free, mb,
                                    stage), deps))  # fmt: skip
        self.next_id += 1
        return i

    def lower_rank(self, rank: int) -> None:
        actions = self.inp.schedule[rank]
        grads = [a for a in actions if a.kind in ("B", "W")]
        last_backward = grads[-1] if grads else None
        prev: int | None = None
        work = self.inp.ranks[rank]
        for pos, a in enumerate(actions):
            if a.kind == "OPT":
                if pos < len(actions) - 1:
                    # Asynchronous PipeDream: the stage updates its weights after every
                    # backward (Harlap et al. 2018 §3.3), on the compute stream.
                    prev = self.add(rank, "compute", "OPT", f"optimizer step after mb{pos}",
                                    work.optimizer_ns, _after(prev), work.optimizer_alloc,
                                    work.optimizer_free)  # fmt: skip
                continue
            if a.kind not in ("F", "B", "I", "W"):
                continue  # communication actions are derived here, not taken from the schedule
            bucketed = len(work.bucket_ns) if work.bucket_ns and a == last_backward else 0
            prev = self.lower_action(rank, a, prev, bucketed)
        self.lower_rank_tail(rank, prev)

    def _deps(self, a: Action, prev: int | None) -> tuple[Sym, ...]:
        sym: list[Sym] = list(_after(prev))
        if a.kind == "F" and a.stage > 0:
            sym.append(("send_f", a.stage - 1, a.microbatch))
        elif a.kind in ("B", "I"):
            sym.append(("done", a.stage, a.microbatch, "F"))
            if a.stage < self.last:
                sym.append(("send_b", a.stage + 1, a.microbatch))
        elif a.kind == "W":
            sym.append(("done", a.stage, a.microbatch, "I"))
        return tuple(sym)

    def lower_action(self, rank: int, a: Action, prev: int | None, bucketed: int) -> int:
        c = self.inp.chunks[a.stage]
        lo, hi = c.layers
        label = f"mb{a.microbatch} L{lo}-{hi - 1}"
        pieces, tp_ns = action_pieces(a, c, self.inp, bucketed=bucketed, fuse_tp=self.fuse_tp,
                                      merge=self.merge)  # fmt: skip
        last_id = self.lower_pieces(rank, a, pieces, self._deps(a, prev), label, bucketed)
        if tp_ns:
            last_id = self.add(rank, "collective", "TP", f"TP all-reduce {label}", tp_ns,
                               (("id", last_id),), a=a)  # fmt: skip
        self.done[(a.stage, a.microbatch, a.kind)] = last_id
        if a.kind == "F" and a.stage < self.last and self.inp.pp > 1:
            self.sends[("send_f", a.stage, a.microbatch)] = self.add(
                rank, "p2p", "SEND_F", f"SEND_F {label}", c.send_forward_ns, (("id", last_id),),
                a=a)  # fmt: skip
        if a.kind in ("B", "I") and a.stage > 0 and self.inp.pp > 1:
            self.sends[("send_b", a.stage, a.microbatch)] = self.add(
                rank, "p2p", "SEND_B", f"SEND_B {label}", c.send_backward_ns, (("id", last_id),),
                a=a)  # fmt: skip
        return last_id

    def lower_pieces(self, rank: int, a: Action, pieces: list[Piece], first: tuple[Sym, ...],
                     label: str, bucketed: int) -> int:  # fmt: skip
        c = self.inp.chunks[a.stage]
        work = self.inp.ranks[rank]
        last_id: int | None = None
        buckets = 0
        for slice_no, (kind, dur, alloc, free) in enumerate(pieces):
            extra: tuple[Sym, ...] = ()
            if c.gather_ns_per_layer and kind in ("F", "R", "B", "I"):
                layer = slice_layer(kind, slice_no, *c.layers)
                window = self.recent_compute[rank][-2:-1]  # prefetch: one layer ahead
                g = self.add(rank, "gather", "AG", f"AG params L{layer} {label}",
                             c.gather_ns_per_layer, tuple(("id", w) for w in window), a=a)  # fmt: skip
                extra = (("id", g),)
            base = first if last_id is None else (("id", last_id),)
            last_id = self.add(rank, "compute", kind, f"{kind} {label}", dur, base + extra,
                               alloc, free, a=a)  # fmt: skip
            self.recent_compute[rank].append(last_id)
            if c.reduce_scatter_ns_per_layer and kind in ("B", "W"):
                self.grad_bucket_last[rank] = self.add(
                    rank, "dp", "RS", f"RS grads {label}", c.reduce_scatter_ns_per_layer,
                    (("id", last_id),), a=a)  # fmt: skip
            if bucketed and kind in ("B", "W", "I") and buckets < len(work.bucket_ns):
                self.grad_bucket_last[rank] = self.add(
                    rank, "dp", "DP", f"{work.bucket_name} bucket {buckets}",
                    work.bucket_ns[buckets], (("id", last_id),))  # fmt: skip
                buckets += 1
        assert last_id is not None
        return last_id

    def lower_rank_tail(self, rank: int, prev: int | None) -> None:
        """Data-parallel gradient sync, the optimizer step, ZeRO-1/2's parameter all-gather."""
        work = self.inp.ranks[rank]
        grads_ready = prev
        if rank in self.grad_bucket_last:
            grads_ready = self.grad_bucket_last[rank]
        elif work.grad_sync_ns:
            grads_ready = self.add(rank, "dp", "DP", work.grad_sync_name, work.grad_sync_ns,
                                   _after(prev))  # fmt: skip
        actions = self.inp.schedule[rank]
        if actions and actions[-1].kind == "OPT":
            opt = self.add(rank, "compute", "OPT", "optimizer step", work.optimizer_ns,
                           _after(grads_ready), work.optimizer_alloc, work.optimizer_free)  # fmt: skip
            if work.post_opt_ns:  # ZeRO-1/2: all-gather of the updated parameter shards
                self.add(rank, "dp", "AG", work.post_opt_name, work.post_opt_ns, (("id", opt),))

    def tasks(self) -> list[Task]:
        """Resolve symbolic dependencies; build each Task once."""
        out = []
        for draft, sym in self.pending:
            deps = []
            for d in sym:
                if d[0] == "id":
                    deps.append(d[1])
                elif d[0] == "done":
                    deps.append(self.done[(d[1], d[2], d[3])])
                else:
                    deps.append(self.sends[d])
            out.append(draft.build(tuple(deps)))
        return out


def _after(task_id: int | None) -> tuple[Sym, ...]:
    return (("id", task_id),) if task_id is not None else ()


def build_tasks(inp: LoweringInput, fuse_tp: bool, merge_recompute: bool) -> list[Task]:
    b = _Builder(inp, fuse_tp, merge_recompute)
    for rank in sorted(inp.schedule):
        b.lower_rank(rank)
    return b.tasks()
