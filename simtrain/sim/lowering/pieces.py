"""Pass 1 of lowering: one schedule action becomes its compute pieces.

A piece is ``(kind, duration_ns, alloc, free)``. F allocates its chunk's activations (and, on
the last chunk, the loss working memory until it ends); B or I allocates the chunk's backward
working set (with a recompute, its R piece before it does); B frees everything, I frees the
working set and W the activations. Then, in order: ``merge_recompute`` folds R into its
backward, the rank's last backward is split into one slice per gradient bucket, ZeRO-3 splits
every piece per layer (so per-layer gathers and reduce-scatters can interleave), and
``fuse_tp`` folds the TP all-reduce into the last piece; last, where the 16-bit gradients are
freed after every backward, an "ACC" piece after B or W holds them while it adds them into
the fp32 accumulation buffer.
"""

from __future__ import annotations

from simtrain.schedules import Action
from simtrain.sim.lowering.ir import ChunkDurations, LoweringInput

Piece = tuple[str, int, tuple, tuple]


def base_pieces(a: Action, c: ChunkDurations, inp: LoweringInput) -> tuple[list[Piece], int]:
    """(pieces, TP all-reduce ns after them) of a compute action, before any fusion."""
    act = inp.activation_bytes[a.stage]
    ws = inp.working_set_bytes[a.stage]
    if a.kind == "F":
        loss = (inp.loss_bytes or {}).get(a.stage, 0)
        if loss:
            return [("F", c.forward_ns, (("activations", act), ("buffers", loss)),
                     (("buffers", loss),))], c.tp_forward_ns  # fmt: skip
        return [("F", c.forward_ns, (("activations", act),), ())], c.tp_forward_ns
    if a.kind == "W":
        return [("W", c.weight_grad_ns, (), (("activations", act),))], 0
    pieces: list[Piece] = []
    # the working set: a recompute's re-materialised block (allocated by its R piece), or
    # without one the backward's temporaries (allocated as the backward starts: no R piece,
    # which would gather ZeRO-3 parameters for nothing); with transient gradients, those a
    # block's backward holds (LoweringInput.backward_extra_bytes) beside them until B ends
    extra = inp.backward_extra_bytes.get(a.stage, 0) if a.kind == "B" else 0
    held = tuple((k, v) for k, v in (("activations", ws), ("gradients", extra)) if v)
    own = held if not c.recompute_ns else ()
    if c.recompute_ns:
        pieces.append(("R", c.recompute_ns, held, ()))
    if a.kind == "B":
        freed = (("activations", act + ws),) + ((("gradients", extra),) if extra else ())
        pieces.append(("B", c.input_grad_ns + c.weight_grad_ns, own, freed))
    else:  # I
        pieces.append(("I", c.input_grad_ns, own, (("activations", ws),) if ws else ()))
    tp = c.tp_backward_ns if a.kind == "B" else c.tp_input_grad_ns
    tp += c.tp_recompute_ns if pieces[0][0] == "R" else 0
    return pieces, tp


def split_for_buckets(pieces: list[Piece], k: int) -> list[Piece]:
    """Split the last piece into ``k`` slices: bucket i's reduction follows slice i
    (allocations on the first slice, frees on the last)."""
    kind, dur, alloc, free = pieces[-1]
    slices = [dur // k + (1 if i < dur % k else 0) for i in range(k)]
    return pieces[:-1] + [
        (kind, d, alloc if i == 0 else (), free if i == k - 1 else ()) for i, d in enumerate(slices)
    ]


def merge_recompute(pieces: list[Piece]) -> list[Piece]:
    """R and its backward as one piece: the backward starts when its recompute ends anyway."""
    (_, r_dur, r_alloc, r_free), (kind, dur, alloc, free) = pieces
    assert not r_free and not alloc  # R only allocates, B / I only free
    return [(kind, r_dur + dur, r_alloc, free)]


def per_layer(pieces: list[Piece], layers: int) -> list[Piece]:
    """Split each piece into one slice per layer (allocations on the first slice, frees on the
    last), so that per-layer communication can interleave."""
    out: list[Piece] = []
    for kind, dur, alloc, free in pieces:
        n = max(layers, 1)
        for i in range(n):
            d = dur // n + (1 if i < dur % n else 0)
            out.append((kind, d, alloc if i == 0 else (), free if i == n - 1 else ()))
    return out


def slice_layer(kind: str, slice_no: int, lo: int, hi: int) -> int:
    """Layer index of a per-layer slice: forward and recompute go up, backward goes down. A
    chunk without decoder layers (an embedding- or head-only stage) labels its one slice ``lo``."""
    n = hi - lo
    if n <= 0:
        return lo
    i = slice_no % n
    return lo + i if kind in ("F", "R") else hi - 1 - i


def action_pieces(a: Action, c: ChunkDurations, inp: LoweringInput, *, bucketed: int,
                  fuse_tp: bool, merge: bool) -> tuple[list[Piece], int]:  # fmt: skip
    """Pass 1 for one action: (pieces, TP ns still to lower as its own task). ``bucketed``:
    the number of gradient buckets when this is the rank's last backward, else 0."""
    pieces, tp_ns = base_pieces(a, c, inp)
    if bucketed:
        pieces = split_for_buckets(pieces, bucketed)
    zero3 = c.gather_ns_per_layer or c.reduce_scatter_ns_per_layer or c.param_h2d_ns_per_layer
    if merge and len(pieces) == 2 and pieces[0][0] == "R" and not bucketed and not zero3:
        pieces = merge_recompute(pieces)
    if (
        c.gather_ns_per_layer
        or c.param_h2d_ns_per_layer
        or (
            c.reduce_scatter_ns_per_layer and a.kind in ("B", "W")  # ZeRO-2: each layer's RS
        )
    ):
        pieces = per_layer(pieces, c.layers[1] - c.layers[0])
    elif fuse_tp and tp_ns and not c.reduce_scatter_ns_per_layer and not bucketed:
        kind, dur, alloc, free = pieces[-1]
        pieces = pieces[:-1] + [(kind, dur + tp_ns, alloc, free)]
        tp_ns = 0
    if c.accum_bytes and a.kind in ("B", "W"):  # the weight gradients are complete
        grads = (("gradients", c.accum_bytes),)
        pieces = [*pieces, ("ACC", c.accum_ns, grads, grads)]
    return pieces, tp_ns
