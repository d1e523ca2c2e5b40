"""Pipeline schedule generators: pure functions of (pp, m, v) returning compute-only schedules.

Each returns ``{rank: [Action, ...]}`` with kinds F/B (or F/I/W) and OPT. Communication is added
by :func:`simtrain.schedules.comm.add_p2p`. Bubble formulas assume uniform per-stage times and free
communication; ``p`` = pp, ``m`` = micro-batches, ``v`` = virtual stages (model chunks) per rank.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from simtrain.errors import ScheduleError
from simtrain.schedules.actions import (
    OPT,
    RECV_B,
    RECV_F,
    SEND_B,
    SEND_F,
    Action,
    B,
    F,
    I,
    Schedule,
    W,
)
from simtrain.schedules.comm import p2p_for


def _check(name: str, pp: int, m: int, v: int, *, virtual: bool = False) -> None:
    for key, value in (("pp", pp), ("microbatches", m), ("v", v)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ScheduleError(f"{name}: {key} must be an integer >= 1 (got {value!r})")
    if v != 1 and not virtual:
        raise ScheduleError(
            f"{name}: virtual stages v={v} not supported; it runs one model chunk per rank"
        )


def _opt(rank: int) -> Action:
    return Action(rank, OPT)


def _one_f_one_b_rank(rank: int, pp: int, m: int) -> list[tuple[str, int]]:
    """(kind, micro-batch) order of 1F1B on one rank, kinds 'F' and 'B'."""
    warmup = min(pp - rank - 1, m)
    ops = [(F, j) for j in range(warmup)]
    for j in range(m - warmup):
        ops += [(F, warmup + j), (B, j)]
    ops += [(B, j) for j in range(m - warmup, m)]
    return ops


def naive(pp: int, m: int, v: int = 1) -> Schedule:
    """Layer-split model parallelism without pipelining: rank order F0 B0 F1 B1 ...

    Micro-batch j+1 enters only after micro-batch j's backward has left rank 0, so one GPU is busy
    at a time: busy fraction 1/p, bubble (p-1)/p (Huang et al. 2019, GPipe §2.3, Fig. 2b, the
    "naive model parallelism" baseline).
    """
    _check("naive", pp, m, v)
    return {
        r: [a for j in range(m) for a in (Action(r, F, j), Action(r, B, j))] + [_opt(r)]
        for r in range(pp)
    }


def gpipe(pp: int, m: int, v: int = 1) -> Schedule:
    """GPipe: every rank runs all m forwards, then all m backwards (in micro-batch order).

    Bubble (p-1)/(m+p-1) of total time, i.e. (p-1)/m of ideal compute time; stage 0 holds all m
    micro-batches' activations (Huang et al. 2019 §2.3; Narayanan et al. 2021 §2.2.1).
    """
    _check("gpipe", pp, m, v)
    return {
        r: [Action(r, F, j) for j in range(m)] + [Action(r, B, j) for j in range(m)] + [_opt(r)]
        for r in range(pp)
    }


def one_f_one_b(pp: int, m: int, v: int = 1) -> Schedule:
    """1F1B / PipeDream-Flush: min(p-r-1, m) warm-up forwards, then alternate F and B, then
    cool-down backwards, then a flush (OPT).

    Same bubble as GPipe, (p-1)/(m+p-1) of total time, but rank r holds at most p-r micro-batches
    in flight (Narayanan et al. 2021 §2.2.1, Fig. 4 top).
    """
    _check("1f1b", pp, m, v)
    return {
        r: [Action(r, k, j) for k, j in _one_f_one_b_rank(r, pp, m)] + [_opt(r)] for r in range(pp)
    }


def interleaved(pp: int, m: int, v: int, group: int = 0) -> Schedule:
    """Megatron interleaved 1F1B: rank r holds chunks r, r+p, ..., r+(v-1)p.

    Forwards run depth-first in groups of N = ``group`` micro-batches per chunk (0: N = p,
    Megatron's default, model_parallel_config.py ``microbatch_group_size_per_vp_stage``;
    :func:`schedule_table`); warm-up is min(2(p-r-1) + (v-1)N, v·m) forwards, then 1F1B, then
    cool-down backwards. With N = p, m % p == 0 is required (the last group would be short);
    any N with m % N == 0 or m % N >= p (:func:`check_group`). With N >= p and chunk times
    t_F/v and t_B/v the bubble is (p-1)/(v·m+p-1) of total time, i.e. (1/v)·(p-1)/m of ideal
    (Narayanan et al. 2021 §2.2.2, Fig. 4 bottom; Megatron-LM
    ``forward_backward_pipelining_with_interleaving``); N = m < p (torch's one round of fewer
    micro-batches than stages) waits on its own dependencies. v == 1 is plain
    :func:`one_f_one_b`.
    """
    _check("interleaved", pp, m, v, virtual=True)
    if v == 1:
        if group:
            raise ScheduleError("interleaved: a microbatch group needs v > 1 model chunks per rank")
        return one_f_one_b(pp, m)
    n = check_group("interleaved", pp, m, group)
    return {r: [*_interleaved_rank(r, pp, m, v, 0, n), _opt(r)] for r in range(pp)}


def check_group(name: str, pp: int, m: int, group: int) -> int:
    """The contiguous micro-batches per chunk, N (``group``; 0: pp, Megatron's default), checked
    as Megatron-Core checks it (schedules.py ``forward_backward_pipelining_with_interleaving``
    at d98e8a64): pp <= N <= m ("should range in [PP, M]"), and the last group, m % N, either
    empty or at least pp ("Otherwise, it introduces dependency bubbles in the pipeline"). One
    exception, for ``interleaved`` only: torch's ScheduleInterleaved1F1B runs m < pp
    micro-batches as one group, N = m (schedules.py, torch 2.13: ``number_of_rounds = max(1,
    n_microbatches // pp_group_size)``). Other groups below pp add bubbles or deadlock this
    order (N = 2 at pp = 4; tests/test_microbatch_groups.py)."""
    if isinstance(group, bool) or not isinstance(group, int) or group < 0:
        raise ScheduleError(f"{name}: microbatch group must be an integer >= 1 (got {group!r})")
    n = group or pp
    torch_round = name == "interleaved" and m < pp  # torch's one round of m < pp micro-batches

    def works() -> str:
        """The first groups that do work, for the error (built only when there is one)."""
        ok = [m] if torch_round else list(itertools.islice(
            (k for k in range(pp, m + 1) if megatron_group_ok(pp, m, k)), 8))  # fmt: skip
        return (f"groups that work for m = {m}: {', '.join(map(str, ok))}" if ok else
                f"no group works for m = {m} micro-batches: use m >= pp = {pp}")  # fmt: skip

    if n > m:
        raise ScheduleError(f"{name}: microbatch group ({n}) must not exceed the micro-batches "
                            f"({m}); {works()}")  # fmt: skip
    if n < pp and not (torch_round and n == m):
        also = ", or m itself when m < pp, as torch runs it" if torch_round else ""
        raise ScheduleError(f"{name}: microbatch group ({n}) must be in [pp = {pp}, m = {m}] "
                            f"(Megatron-Core's range{also}); {works()}")  # fmt: skip
    if not megatron_group_ok(pp, m, n) and not torch_round:
        raise ScheduleError(
            f"{name}: microbatches ({m}) leave a last group of {m % n} (< pp = {pp}) in groups "
            f"of {n} (Megatron-Core's rule: m % group must be 0 or >= pp); {works()}"
        )
    return n


def megatron_group_ok(pp: int, m: int, n: int) -> bool:
    """Megatron-Core's rule for m micro-batches in groups of n (schedules.py at d98e8a64): pp <=
    n <= m, and the last group, m % n, empty or at least pp."""
    return pp <= n <= m and (m % n == 0 or m % n >= pp)


def smallest_group(pp: int, m: int) -> int:
    """The micro-batch group a Megatron-Core user gives micro-batches that pp does not divide:
    the smallest N that :func:`megatron_group_ok` takes, the fewest warm-up forwards in flight;
    0 where pp divides m (the default works) or no N does (m < pp)."""
    if m % pp == 0 or m < pp:
        return 0
    return next(k for k in range(pp, m + 1) if megatron_group_ok(pp, m, k))


def torch_rounds_group(pp: int, m: int) -> int | None:
    """The group torch's ScheduleInterleaved1F1B runs m micro-batches in over pp ranks:
    ``number_of_rounds = max(1, m // pp)`` rounds of ``m // number_of_rounds`` micro-batches
    (torch/distributed/pipelining/schedules.py, torch 2.13), pp when pp divides m; None when the
    rounds do not divide m (torch's ValueError)."""
    rounds = max(1, m // pp)
    return None if m % rounds else m // rounds


def torch_group_override(pp: int, m: int) -> int | None:
    """``parallelism.microbatch_group_size`` for torch's rounds of m micro-batches
    (:func:`torch_rounds_group`): 0 where they are groups of pp (the default), the round's size
    otherwise, None where torch refuses m. The torchtitan importer and validate's translation
    of a torch-pipelining record set it alike."""
    group = torch_rounds_group(pp, m)
    return None if group is None else (0 if group == pp else group)


def schedule_table(m: int, v: int, group: int) -> list[tuple[int, int]]:
    """(micro-batch, chunk) of each virtual micro-batch in order: groups of ``group``
    micro-batches, chunk-major within a group, the last group taking the rest (Megatron-Core
    schedules.py ``get_schedule_table`` at d98e8a64)."""
    table = []
    for lo in range(0, m, group):
        hi = m if lo + group >= m else lo + group
        table += [(mb, chunk) for chunk in range(v) for mb in range(lo, hi)]
    return table


def interleaved_all_warmup(pp: int, m: int, v: int = 1) -> Schedule:
    """:func:`interleaved` as Megatron-LM ran it from 2021 to 2024 (runtime
    ``interleaved_all_warmup_at_pp``): with m = pp micro-batches every rank runs all v·m
    forwards, then all v·m backwards (megatron/schedules.py at dd88906264, l.106-108:
    ``if get_num_microbatches() == pipeline_parallel_size: num_warmup_microbatches =
    num_microbatches; all_warmup_microbatches = True``); any other m (and v = 1): the usual
    order."""
    if v == 1 or m != pp:
        return interleaved(pp, m, v)
    _check("interleaved", pp, m, v, virtual=True)
    return {r: [*_interleaved_rank(r, pp, m, v, m * v), _opt(r)] for r in range(pp)}


def interleaved_warmup(r: int, pp: int, m: int, v: int, extra: int = 0, group: int = 0) -> int:
    """Rank ``r``'s warm-up forwards in the interleaved order (v = 1: 1F1B's p − r − 1; v > 1:
    2(p − r − 1) + (v − 1)·N, Megatron's, N = ``group`` or p), plus ``extra`` (combined 1F1B's
    one), at most m·v; the steady-state (F, B) pairs follow them."""
    base = 2 * (pp - r - 1) + (v - 1) * (group or pp) if v > 1 else pp - r - 1
    return min(base + extra, m * v)


#: Combined 1F1B's warm-up runs one forward more than interleaved's, which its first steady
#: (F, B) pair overlaps (:func:`combined_1f1b`).
COMBINED_1F1B_EXTRA_FORWARDS = 1


def rank_warmup(name: str, r: int, pp: int, m: int, v: int, group: int = 0) -> int:
    """Rank ``r``'s warm-up forwards under schedule ``name`` in the interleaved order
    (:func:`interleaved_warmup`), with combined 1F1B's extra one: the count the generator runs,
    for the memory walk, ``memory --explain`` and the fit advice alike."""
    extra = COMBINED_1F1B_EXTRA_FORWARDS if name == "combined_1f1b" else 0
    return interleaved_warmup(r, pp, m, v, extra, group)


def _interleaved_rank(r: int, pp: int, m: int, v: int, extra: int, group: int = 0
                      ) -> list[Action]:  # fmt: skip
    """Rank ``r``'s interleaved order with ``extra`` more warm-up forwards (v = 1: 1F1B's), in
    groups of ``group`` micro-batches (0: pp; :func:`schedule_table`)."""
    total = m * v
    table = schedule_table(m, v, group or pp)

    def fwd(k: int) -> Action:
        mb, chunk = table[k]
        return Action(chunk * pp + r, F, mb)

    def bwd(k: int) -> Action:
        mb, chunk = table[k]
        return Action((v - 1 - chunk) * pp + r, B, mb)

    warmup = interleaved_warmup(r, pp, m, v, extra, group)
    ops = [fwd(k) for k in range(warmup)]
    for k in range(total - warmup):
        ops += [fwd(warmup + k), bwd(k)]
    ops += [bwd(k) for k in range(total - warmup, total)]
    return ops


def combined_1f1b(pp: int, m: int, v: int = 1, group: int = 0) -> Schedule:
    """Megatron-Core's combined 1F1B (``--overlap-moe-expert-parallel-comm``): the interleaved
    order with one more warm-up forward on every rank, "to ensure the forward and backward
    computations are independent in all 1f1b steps" (NVIDIA/Megatron-LM d98e8a64
    megatron/core/pipeline_parallel/schedules.py l.966-970), so each steady-state forward runs
    merged with another micro-batch's backward (combined_1f1b.py: "EP A2A in forward step is
    hidden by the attention/mlp computation in the backward step, and vice versa"). Without
    pipelining (pp = 1, ``combined_1f1b_schedule_for_no_pipelining``): F0, F1 B0, F2 B1, ...,
    B(m−1). With pp > 1 Megatron requires virtual stages (transformer_config.py l.3007-3011;
    the scenario check enforces it, the order exists for any v), and, when v > 1, groups of
    ``group`` micro-batches as :func:`interleaved` takes them (:func:`check_group`). Unit-time
    bubble: interleaved's, (p−1)/(v·m+p−1): the extra forward moves work earlier, never later
    (tests/test_schedules.py)."""
    _check("combined_1f1b", pp, m, v, virtual=True)
    if v == 1 and group:
        raise ScheduleError("combined_1f1b: a microbatch group needs v > 1 model chunks per rank")
    n = check_group("combined_1f1b", pp, m, group) if v > 1 else 0
    extra = COMBINED_1F1B_EXTRA_FORWARDS
    return {r: [*_interleaved_rank(r, pp, m, v, extra, n), _opt(r)] for r in range(pp)}


def pipedream(pp: int, m: int, v: int = 1) -> Schedule:
    """Asynchronous PipeDream with weight stashing: 1F1B order, no flush, OPT after every B.

    Each micro-batch is a PipeDream minibatch, so every rank updates its weights after each
    backward; stage r stashes p-r weight versions (:func:`pipedream_weight_versions`). One window
    of m micro-batches is shown; in steady state there is no flush bubble (Harlap et al. 2018,
    "PipeDream", §3.2-3.3).
    """
    _check("pipedream", pp, m, v)
    schedule: Schedule = {}
    for r in range(pp):
        ops: list[Action] = []
        for k, j in _one_f_one_b_rank(r, pp, m):
            ops.append(Action(r, k, j))
            if k == B:
                ops.append(_opt(r))
        schedule[r] = ops
    return schedule


def pipedream_2bw(pp: int, m: int, v: int = 1) -> Schedule:
    """PipeDream-2BW: 1F1B order, gradients accumulated over the m micro-batches of a
    mini-batch, one optimizer step per mini-batch, and no flush: the next mini-batch's forwards
    fill this one's drain, so in steady state a stage is busy m(F+B) + OPT per mini-batch.
    Two weight versions per stage (double buffering, update delay 1) instead of PipeDream's
    p - r (Narayanan et al. 2021, "Memory-Efficient Pipeline-Parallel DNN Training", ICML,
    §3.1 and Fig. 4). The window simulated is 1F1B's action list; the step reports its steady
    state (:mod:`simtrain.report.metrics`)."""
    _check("pipedream_2bw", pp, m, v)
    return {
        r: [Action(r, k, j) for k, j in _one_f_one_b_rank(r, pp, m)] + [_opt(r)] for r in range(pp)
    }


def zb_v(pp: int, m: int, v: int = 2) -> Schedule:
    """ZB-V (Qi et al. 2024, "Zero Bubble Pipeline Parallelism", arXiv 2401.10241 §6): two
    chunks per rank in a V (rank r holds stages r and 2p-1-r), backward split into I and W, the
    W's filling the bubbles; zero bubble when T_F = T_I = T_W and m >= 2p-1.

    The per-rank order is PyTorch's, rule for rule (torch 2.13
    ``torch/distributed/pipelining/schedules.py``, ``ScheduleZBVZeroBubble.
    _calculate_single_rank_operations``): warm-up 2(p-r)-1 forwards of chunk 0, r pairs
    (chunk-1 F, chunk-0 F), p-r triples (chunk-1 F, I, W); then (chunk-0 F, I, W, chunk-1 F,
    I, W) while forwards remain; cool-down r (chunk-0 I, chunk-1 I) and p-r (chunk-0 I, W),
    the remaining W's of chunk 1 then chunk 0. Like PyTorch it plans max(2p-1, m) micro-batches
    and drops the actions of those beyond m. ``tests/test_schedules.py`` compares the lists
    with torch's own."""
    if v != 2:
        raise ScheduleError(f"zb_v has exactly 2 chunks per rank (got v={v})")
    if pp < 1 or m < 1:
        raise ScheduleError(f"zb_v needs pp >= 1 and m >= 1 (got pp={pp}, m={m})")
    return {r: [*_zb_v_rank(r, pp, m), _opt(r)] for r in range(pp)}


def _zb_v_rank(rank: int, pp: int, m: int) -> list[Action]:
    """One rank's ZB-V order (see :func:`zb_v`): planned for max(2p-1, m) micro-batches,
    those beyond m dropped."""
    s0, s1 = rank, 2 * pp - 1 - rank
    n = max(2 * pp - 1, m)
    ops: list[Action] = []
    fwd = {s0: 0, s1: 0}  # next forward micro-batch per stage
    bwd = {s0: 0, s1: 0}  # next I micro-batch per stage (its W follows at once or later)

    def f(stage: int) -> None:
        ops.append(Action(stage, F, fwd[stage]))
        fwd[stage] += 1

    def iw(stage: int) -> None:  # I then W of the same micro-batch
        ops.extend((Action(stage, I, bwd[stage]), Action(stage, W, bwd[stage])))
        bwd[stage] += 1

    for _ in range(2 * (pp - rank) - 1):
        f(s0)
    for _ in range(rank):
        f(s1)
        f(s0)
    for _ in range(pp - rank):
        f(s1)
        iw(s1)
    while fwd[s1] < fwd[s0] or fwd[s0] < n:
        if fwd[s0] < n:
            f(s0)
        iw(s0)
        f(s1)
        iw(s1)
    w = dict(bwd)  # W's still owed start here
    for _ in range(rank):
        for stage in (s0, s1):
            ops.append(Action(stage, I, bwd[stage]))
            bwd[stage] += 1
    for _ in range(pp - rank):
        ops += [Action(s0, I, bwd[s0]), Action(s0, W, w[s0])]
        bwd[s0] += 1
        w[s0] += 1
    for stage in (s1, s0):
        ops += [Action(stage, W, j) for j in range(w[stage], bwd[stage])]
    return [a for a in ops if a.microbatch < m]


def dualpipe_v(pp: int, m: int, v: int = 2) -> Schedule:
    """DualPipeV (DeepSeek-AI, github.com/deepseek-ai/DualPipe ``dualpipev.py``; the
    "cut-in-half" of DualPipe, DeepSeek-V3 report §3.2.1): ZB-V's placement (rank r holds
    stages r and 2p-1-r), mostly full backwards (B) paired with a forward of the other chunk
    (DualPipe's overlapped F&B: here run one after the other, as PyTorch's runtime runs an
    ``OVERLAP_F_B`` action's sub-actions), split I/W only where they fill the bubbles.

    The per-rank order is PyTorch's, rule for rule (torch 2.13
    ``torch/distributed/pipelining/schedules.py``, ``ScheduleDualPipeV.
    _calculate_single_rank_operations``, steps 1-8), each ``OVERLAP_F_B`` flattened into its
    F then B. Needs m >= 2p (as PyTorch). README bubble (its Table, PP = 2p stages):
    (p-1)(F&B + B - 3W) per rank, checked in tests/test_schedules.py."""
    if v != 2:
        raise ScheduleError(f"dualpipe_v has exactly 2 chunks per rank (got v={v})")
    if m < 2 * pp:
        raise ScheduleError(
            f"dualpipe_v needs at least as many micro-batches as stages, 2 x pp = {2 * pp} "
            f"(got m={m})"
        )
    return {r: [*_dualpipe_v_rank(r, pp, m), _opt(r)] for r in range(pp)}


def dualpipe_v_fb_pairs(pp: int, m: int) -> dict[int, frozenset[Action]]:
    """Rank -> the forwards that open an overlapped F&B pair of :func:`dualpipe_v` (each is
    followed by its pair's backward): torch's ``OVERLAP_F_B`` actions, i.e. step 4's F0&B1 and
    F1&B0 (but the last rank's first F0, B1, not overlapped to reduce the bubble) and step 5's
    F1&B0 after a lone B1."""
    dualpipe_v(pp, m, 2)  # the checks
    return _pair_openers(pp, lambda r, firsts: _dualpipe_v_rank(r, pp, m, firsts))


def _pair_openers(pp: int, walk: Callable[[int, list[Action]], object]
                  ) -> dict[int, frozenset[Action]]:  # fmt: skip
    """Rank -> the forwards ``walk(rank, firsts)`` collects into ``firsts`` as it generates
    the rank's order (the openers of its overlapped F&B pairs)."""
    out: dict[int, frozenset[Action]] = {}
    for r in range(pp):
        firsts: list[Action] = []
        walk(r, firsts)
        out[r] = frozenset(firsts)
    return out


def _dualpipe_v_rank(rank: int, pp: int, m: int,
                     pairs: list[Action] | None = None) -> list[Action]:  # fmt: skip
    """One rank's DualPipeV order (see :func:`dualpipe_v`); ``pairs`` collects the forwards
    that open an overlapped F&B pair (:func:`dualpipe_v_fb_pairs`)."""
    s0, s1 = rank, 2 * pp - 1 - rank
    ops: list[Action] = []
    fwd = {s0: 0, s1: 0}  # next forward micro-batch per stage
    bwd = {s0: 0, s1: 0}  # next backward (B or I) micro-batch per stage
    weights: list[tuple[int, int]] = []  # (stage, mb) whose W is pending after an I

    def f(stage: int) -> None:
        ops.append(Action(stage, F, fwd[stage]))
        fwd[stage] += 1

    def b(stage: int, kind: str = B) -> None:
        ops.append(Action(stage, kind, bwd[stage]))
        if kind == I:
            weights.append((stage, bwd[stage]))
        bwd[stage] += 1

    def w() -> None:
        if weights:
            stage, j = weights.pop(0)
            ops.append(Action(stage, W, j))

    for _ in range(2 * (pp - rank - 1)):  # step 1: F0
        f(s0)
    for _ in range(rank + 1):  # step 2: F0 F1
        f(s0)
        f(s1)
    for _ in range(pp - rank - 1):  # step 3: I1 W1 F1 (zero bubble)
        b(s1, I)
        w()
        f(s1)

    def pair(stage: int) -> None:  # a forward that opens an overlapped F&B pair
        f(stage)
        if pairs is not None:
            pairs.append(ops[-1])

    for i in range(m - 2 * pp + rank + 1):  # step 4: F0&B1, F1&B0
        if i == 0 and rank == pp - 1:  # not overlapped (DualPipe: "to reduce bubble size")
            f(s0)
        else:
            pair(s0)
        b(s1)
        pair(s1)
        b(s0)
    for _ in range(pp - rank - 1):  # step 5: B1, F1&B0
        b(s1)
        pair(s1)
        b(s0)
    zb = False
    for i in range(rank + 1):  # step 6: B1 B0, the second half zero-bubble (I)
        if i == (rank + 1) // 2 and rank % 2 == 1:
            zb = True
        b(s1, I if zb else B)
        if i == (rank + 1) // 2 and rank % 2 == 0:
            zb = True
        b(s0, I if zb else B)
    for _ in range(pp - rank - 1):  # step 7: W0 B0
        w()
        b(s0, I if zb else B)
    for _ in range(rank + 1):  # step 8: W0
        w()
    return ops


def dualpipe(pp: int, m: int, v: int = 2) -> Schedule:
    """DualPipe (DeepSeek-AI, DeepSeek-V3 report §3.2.1; github.com/deepseek-ai/DualPipe
    3da1bbe ``dualpipe/dualpipe.py``, ``DualPipe.step`` steps 1-8): bidirectional. Each of the
    pp ranks (even) holds two copies of model stages: ``module[0]`` = stage r of the downward
    pipeline and ``module[1]`` = stage pp-1-r of the upward one (examples/example_dualpipe.py
    l.138: ``full_modules[rank], full_modules[pp_size - 1 - rank]``), so parameters are held
    twice. Micro-batches 0..m/2-1 enter at rank 0 and run down virtual stages 0..pp-1 (stage r
    on rank r); m/2..m-1 enter at rank pp-1 and run up virtual stages pp..2pp-1, where virtual
    stage pp+s is a copy of model stage s on rank pp-1-s (placement "dual": the V's ranks, two
    pipelines, :func:`~simtrain.schedules.actions.microbatch_stages`).

    Per rank, with half_rank = min(r, pp-1-r) and the phases swapped on the second half of the
    ranks (``phase ^= is_in_second_half``): 1: 2(pp/2-half_rank-1) F0; 2: half_rank+1 (F0,
    F1); 3: pp/2-half_rank-1 (I1, W, F1); 4: m/2-pp+half_rank+1 (F0&B1, F1&B0); 5:
    pp/2-half_rank-1 (B1, F1&B0); 6: half_rank+1 (B1, B0), zero-bubble (I) from the middle on;
    7: pp/2-half_rank-1 (W, I0); 8: half_rank+1 W. Each overlapped F&B is flattened into F then
    B (as :func:`dualpipe_v`); W's pop the WeightGradStore's FIFO queue of deferred weight
    gradients (``_weight_chunk``: "Assume FIFO"). Needs even pp and even m >= 2pp (``step``'s
    asserts). Unit-time bubble (tests/test_dualpipe.py): with DualPipe's own send points
    (:func:`dualpipe_p2p`) every rank idles the README's (pp/2-1)(F&B+B-3W); run as listed here,
    each output sent when its own computation ends, (pp/2-1)(2B-3W).

    The engine overlaps DualPipe's own F&B pairs (:func:`dualpipe_fb_pairs`; DualPipeV's:
    :func:`dualpipe_v_fb_pairs`). Not modelled: the sum of each stage's
    two copies' gradients (ranks r and pp-1-r), which DualPipe leaves to its caller
    (example_dualpipe.py l.168-174 all-gathers them over the pipeline group)."""
    _check("dualpipe", pp, m, v, virtual=True)
    if v != 2:
        raise ScheduleError(f"dualpipe has exactly 2 chunks per rank (got v={v})")
    if pp % 2:
        raise ScheduleError(
            f"dualpipe: pp must be even (DualPipe.step asserts num_ranks % 2 == 0; got pp={pp})"
        )
    if m % 2 or m < 2 * pp:
        raise ScheduleError(
            f"dualpipe: microbatches must be even and at least 2 x pp = {2 * pp}, half per "
            f"direction (DualPipe.step asserts num_chunks % 2 == 0 and num_chunks >= "
            f"num_ranks * 2; got m={m})"
        )
    return {r: [*_dualpipe_rank(r, pp, m), _opt(r)] for r in range(pp)}


def dualpipe_p2p(pp: int, m: int) -> Schedule:
    """:func:`dualpipe` with its sends and receives where ``DualPipe.step`` posts them, not
    where :func:`~simtrain.schedules.comm.add_p2p` would: an overlapped F&B receives both
    inputs before and sends both outputs after the pair (``_forward_backward_chunk``), step 2
    sends each F0's output after the next F1 (off the middle ranks), step 3 receives the next
    F1's input before the W, and the middle ranks hold their last step-2 F1 output until
    their first step-4 F0. Played in unit time, the pair's forward output leaves when the pair
    ends, as in DualPipe."""
    dualpipe(pp, m)  # the checks
    return {r: [*_dualpipe_rank(r, pp, m, comm=True), _opt(r)] for r in range(pp)}


def dualpipe_fb_pairs(pp: int, m: int) -> dict[int, frozenset[Action]]:
    """Rank -> the forwards that open an overlapped F&B pair of :func:`dualpipe` (each is
    followed by its pair's backward): ``DualPipe.step``'s ``_forward_backward_chunk`` calls,
    i.e. step 4's two pairs (but the middle ranks' first, "not overlapped to further reduce
    bubble size") and step 5's F1&B0 (after a lone B1)."""
    dualpipe(pp, m)  # the checks
    return _pair_openers(pp, lambda r, firsts: _dualpipe_rank(r, pp, m, pairs=firsts))


def _dualpipe_rank(
    rank: int, pp: int, m: int, comm: bool = False, pairs: list[Action] | None = None
) -> list[Action]:
    """One rank's DualPipe order (see :func:`dualpipe`), mirroring ``DualPipe.step`` call for
    call; with ``comm`` also its RECV/SEND actions (:func:`dualpipe_p2p`); ``pairs`` collects
    the forwards that open an overlapped F&B pair (:func:`dualpipe_fb_pairs`)."""
    half_ranks, half_m = pp // 2, m // 2
    half_rank = min(rank, pp - 1 - rank)
    second_half = rank >= half_ranks
    middle = rank in (half_ranks - 1, half_ranks)  # is_middle_rank
    module_stage = (rank, 2 * pp - 1 - rank)  # module[0] down, module[1] up
    first_mb = (0, half_m)  # direction 0: micro-batches 0.., direction 1: m/2..
    ops: list[Action] = []
    # chunk ids per module: current_{f,b}_chunk_id, current_{recv,send}_{f,b}_chunk_id
    count = {key: [0, 0] for key in (F, B, RECV_F, SEND_F, RECV_B, SEND_B)}
    weights: list[tuple[int, int]] = []  # WeightGradStore queue: (stage, mb) after an I

    def next_action(key: str, phase: int, kind: str) -> Action:
        mod = phase ^ second_half
        action = Action(module_stage[mod], kind, first_mb[mod] + count[key][mod])
        count[key][mod] += 1
        return action

    def p2p(kind: str, phase: int) -> None:
        action = next_action(kind, phase, kind)
        compute = Action(action.stage, F if kind in (RECV_F, SEND_F) else B, action.microbatch)
        before, after = p2p_for(compute, pp, 2, "dual")
        if comm and action in (*before, *after):  # first/last stages send or receive nothing
            ops.append(action)

    def f(phase: int, recv: bool = False, send: bool = False) -> None:  # _forward_chunk
        if recv:
            p2p(RECV_F, phase)
        ops.append(next_action(F, phase, F))
        if send:
            p2p(SEND_F, phase)

    def b(phase: int, enable_zb: bool = False, recv: bool = True, send: bool = True) -> None:
        if recv:
            p2p(RECV_B, phase)
        action = next_action(B, phase, I if enable_zb else B)
        ops.append(action)
        if enable_zb:
            weights.append((action.stage, action.microbatch))
        if send:
            p2p(SEND_B, phase)

    def fb(phase0: int, phase1: int, recv0: bool = True) -> None:  # _forward_backward_chunk
        if recv0:
            p2p(RECV_F, phase0)
        p2p(RECV_B, phase1)
        if pairs is not None:
            mod = phase0 ^ second_half
            pairs.append(Action(module_stage[mod], F, first_mb[mod] + count[F][mod]))
        f(phase0)  # overlapped in DualPipe; flattened F then B, both outputs sent after
        b(phase1, recv=False, send=False)
        p2p(SEND_F, phase0)
        p2p(SEND_B, phase1)

    def w() -> None:  # _weight_chunk: "Assume FIFO"
        stage, j = weights.pop(0)
        ops.append(Action(stage, W, j))

    for _ in range(2 * (half_ranks - half_rank - 1)):  # step 1: nF0
        f(0, recv=True, send=True)
    step_2 = half_rank + 1  # step 2: nF0F1
    p2p(RECV_F, 0)
    for i in range(step_2):
        f(0, send=middle)
        p2p(RECV_F, 0)
        f(1, recv=True, send=not middle or i < step_2 - 1)
        if not middle:
            p2p(SEND_F, 0)
    for _ in range(half_ranks - half_rank - 1):  # step 3: nB1W1F1 (zero bubble)
        b(1, enable_zb=True)
        p2p(RECV_F, 1)
        w()
        f(1, send=True)
    for i in range(half_m - pp + half_rank + 1):  # step 4: nF0B1F1B0
        if i == 0 and middle:  # "We don't overlap these two chunks to further reduce bubble"
            f(0)
            p2p(SEND_F, 1)
            b(1, send=False)
            p2p(SEND_F, 0)
            p2p(SEND_B, 1)
        else:
            fb(0, 1, recv0=i > 0)
        fb(1, 0)
    for _ in range(half_ranks - half_rank - 1):  # step 5: nB1F1B0
        b(1)
        fb(1, 0)
    zb = False
    for i in range(step_2):  # step 6: nB1B0, the second half zero-bubble
        if i == step_2 // 2 and half_rank % 2 == 1:
            zb = True
        b(1, zb)
        if i == step_2 // 2 and half_rank % 2 == 0:
            zb = True
        b(0, zb)
    for _ in range(half_ranks - half_rank - 1):  # step 7: nWB0 (zero bubble)
        w()
        b(0, enable_zb=True)
    for _ in range(step_2):  # step 8: nW
        w()
    if weights:  # DualPipe.step asserts WeightGradStore.funcs_queue.empty()
        raise ScheduleError(f"dualpipe: rank {rank} left {len(weights)} weight gradients")
    return ops


def pipedream_weight_versions(pp: int, rank: int) -> int:
    """Weight versions stage ``rank`` stashes under PipeDream: p - rank, one per in-flight
    micro-batch (Harlap et al. 2018 §3.3, weight stashing)."""
    if not 0 <= rank < pp:
        raise ScheduleError(f"rank {rank} out of range 0..{pp - 1} (pp={pp})")
    return pp - rank


def stashed_weight_versions(schedule: str, pp: int, rank: int) -> int:
    """Weight versions stage ``rank`` keeps under ``schedule``, the live one included:
    PipeDream p - rank (:func:`pipedream_weight_versions`), PipeDream-2BW 2 (Narayanan et al.
    2021 ICML §3.1), every flushing schedule 1. One stage (pp = 1) never stashes: its
    backward follows its forward before any update."""
    if pp == 1:
        return 1
    if schedule == "pipedream":
        return pipedream_weight_versions(pp, rank)
    if schedule == "pipedream_2bw":
        return 2
    return 1


def zb_h1(pp: int, m: int, v: int = 1) -> Schedule:
    """Zero Bubble ZB-H1: backward split into I (input grad) and W (weight grad).

    Rank r: min(p-r-1, m) warm-up forwards, then F,I pairs; after its k-th I (k = 0..m-1) it runs
    the oldest pending W only if k >= r, so r W's are deferred to fill the cool-down bubble; the
    rest run at the end. At most p-r micro-batches wait for I, at most p for W (the peak of 1F1B's
    first rank). With T_F = T_I = T_W = T and m >= p the bubble is (p-1)·T per rank, i.e.
    (p-1)/(3m+p-1) of total time, a third of 1F1B's (Qi et al. 2024, "Zero Bubble Pipeline
    Parallelism", ICLR, §2.1 and Fig. 3 top; ordering as PyTorch ``ScheduleInterleavedZeroBubble``
    with one chunk). For m < p the paper's formula does not apply: the makespan is
    (2m+2p-1)·T (pinned by tests), still never worse than 1F1B's 3(m+p-1)·T.
    """
    _check("zb_h1", pp, m, v)
    schedule: Schedule = {}
    for r in range(pp):
        warmup = min(pp - r - 1, m)
        ops = [Action(r, F, j) for j in range(warmup)]
        next_f, next_w = warmup, 0
        for k in range(m):
            if next_f < m:
                ops.append(Action(r, F, next_f))
                next_f += 1
            ops.append(Action(r, I, k))
            if k >= r:
                ops.append(Action(r, W, next_w))
                next_w += 1
        ops += [Action(r, W, j) for j in range(next_w, m)]
        schedule[r] = [*ops, _opt(r)]
    return schedule
