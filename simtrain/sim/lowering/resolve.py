"""Last lowering pass: number the ops rank by rank in IR order and resolve every symbolic
dependency into task ids (``ir`` lists the forms)."""

from __future__ import annotations

from simtrain.sim.engine import Task
from simtrain.sim.lowering.ir import Op, StepIR


def resolve(ir: StepIR) -> list[Task]:
    order: list[Op] = []
    done: dict[tuple, Op] = {}
    for rank in sorted(ir.ranks):
        r = ir.ranks[rank]
        for g in r.groups:
            if g.action is not None:
                a = g.action
                done[(a.stage, a.microbatch, a.kind)] = g.done
            order += g.ops
        order += r.tail
    for i, op in enumerate(order):
        op.tid = i

    def tid(d: Op | tuple) -> int:
        if d.__class__ is Op:
            return d.tid
        if d[0] == "prev":
            return ir.ranks[d[1]].groups[d[2] - 1].done.tid
        if d[0] == "done":
            return done[d[1:]].tid
        if d[0] == "meta":
            return ir.metas[d[1:]].tid
        return ir.sends[d].tid

    return [
        Task(
            op.tid,
            op.rank,
            op.stream,
            op.kind,
            op.name,
            op.duration_ns,
            tuple([tid(d) for d in op.deps]),
            op.alloc,
            op.free,
            op.microbatch,
            op.stage,
            poll_ns=op.poll_ns,
            polled=tuple([tid(d) for d in op.polled]),
        )  # fmt: skip
        for op in order
    ]
