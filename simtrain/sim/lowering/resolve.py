"""Last lowering pass: number the ops rank by rank in IR order and resolve every symbolic
dependency into task ids (``ir`` lists the forms)."""

from __future__ import annotations

from simtrain.sim.engine import Task
from simtrain.sim.lowering.ir import Op, StepIR


def resolve(ir: StepIR) -> list[Task]:
    ids: dict[int, int] = {}  # id(Op) -> task id
    order: list[Op] = []
    done: dict[tuple, Op] = {}
    for rank in sorted(ir.ranks):
        r = ir.ranks[rank]
        for g in r.groups:
            if g.action is not None:
                a = g.action
                done[(a.stage, a.microbatch, a.kind)] = g.done
            for op in g.ops:
                ids[id(op)] = len(order)
                order.append(op)
        for op in r.tail:
            ids[id(op)] = len(order)
            order.append(op)

    def target(d: tuple) -> Op:
        if d[0] == "op":
            return d[1]
        if d[0] == "prev":
            return ir.ranks[d[1]].groups[d[2] - 1].done
        if d[0] == "done":
            return done[d[1:]]
        return ir.sends[d]

    return [
        Task(
            i,
            op.rank,
            op.stream,
            op.kind,
            op.name,
            op.duration_ns,
            tuple(ids[id(target(d))] for d in op.deps),
            op.alloc,
            op.free,
            op.microbatch,
            op.stage,
        )  # fmt: skip
        for i, op in enumerate(order)
    ]
