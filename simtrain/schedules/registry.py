"""The schedule registry: every pipeline schedule's generator and its traits, in one place.

Everything that asks "what does schedule X do" reads :data:`SCHEDULES`: the scenario validator
(allowed names), the resolved step, the memory model (micro-batches in flight), lowering (split
backward) and validate's step-time extrapolation (cost affine in m). Bubble fractions assume
uniform stages and free communication; ``p`` = pp, ``m`` = micro-batches, ``v`` = virtual
stages per rank.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from simtrain.schedules.actions import Action, Schedule
from simtrain.schedules.generators import (
    combined_1f1b,
    dualpipe,
    dualpipe_fb_pairs,
    dualpipe_v,
    dualpipe_v_fb_pairs,
    gpipe,
    interleaved,
    naive,
    one_f_one_b,
    pipedream,
    pipedream_2bw,
    zb_h1,
    zb_v,
)


@dataclass(frozen=True, slots=True)
class ScheduleTraits:
    """What a schedule is, beyond its action lists.

    ``bubble(p, m, v)``: idle fraction of the step for uniform stages (closed form; equal to
    the executed order's with unit costs, ``tests/test_schedules.py``);
    ``in_flight(p, m, stage, v)``: micro-batches a stage holds at its activation peak (the
    memory model walks the real schedule; this is the documented closed form);
    ``split_backward``: backward runs as I (input grad) and W (weight grad);
    ``affine_in_m``: step time is affine in m once m reaches ``affine_from(p)`` (validate
    simulates two short steps and extrapolates); ``asynchronous``: no flush at the step's end
    (the step reports the steady state: the busiest stage's time, :mod:`simtrain.report.metrics`).
    """

    name: str
    generator: Callable[[int, int, int], Schedule]
    bubble: Callable[[int, int, int], float]
    in_flight: Callable[[int, int, int, int], float]
    split_backward: bool = False
    affine_in_m: bool = False
    asynchronous: bool = False
    virtual: bool = False  # takes v > 1 model chunks per rank
    grouped: bool = False  # runs its micro-batches in groups of N per chunk (generator's ``group``)
    placement: str = "loop"  # chunks on ranks: "loop" (stage % pp) or "v" (actions.PLACEMENTS)
    chunks_per_rank: int = 0  # a fixed number of chunks per rank (ZB-V: 2); 0 = virtual_stages
    mixed_backward: bool = False  # both full backwards (B) and split ones (I, W): DualPipeV
    min_microbatches_per_stage: int = 0  # m >= this x stages (DualPipeV: 1, m >= 2p)
    # PipeDream: every micro-batch is a mini-batch with its own optimizer step, so DDP's
    # bucket hooks cannot overlap one reduction with the last backward (one all-reduce)
    steps_every_microbatch: bool = False
    # A forward and the next action, a backward of another micro-batch (or the reverse), run
    # as one unit whose layers interleave, so each one's expert all-to-alls hide behind the
    # other's compute (Megatron-Core combined 1F1B; DeepSeek-V3 §3.2.1 DualPipe's F&B chunks)
    overlapped_fb: bool = False
    # (p, m) -> rank -> the forwards that open an overlapped F&B pair, when the schedule names
    # its pairs (DualPipe); None: adjacent F/B of different micro-batches pair greedily
    fb_pairs: Callable[[int, int], dict[int, frozenset[Action]]] | None = None

    @property
    def bidirectional(self) -> bool:
        """Two pipelines in opposite directions (DualPipe, placement "dual"): half the
        micro-batches run down stages 0..p-1, half up stages p..2p-1, each stage's layers held
        on two ranks."""
        return self.placement == "dual"

    def takes_chunks(self, v: int) -> bool:
        """Whether ``v`` chunks per rank may be asked of this schedule: any, unless it runs a
        fixed number (ZB-V, DualPipeV: 2), where 1 (left out) or that number."""
        return not self.chunks_per_rank or v in (1, self.chunks_per_rank)

    def chunks(self, v: int) -> int:
        """Model chunks per rank this schedule runs: its fixed number (ZB-V, DualPipeV: 2) or
        the ``v`` asked for."""
        return self.chunks_per_rank or v

    @property
    def one_stage_order(self) -> bool:
        """Whether the order differs from plain gradient accumulation on a single stage: a
        looped schedule with overlapped F&B pairs (combined 1F1B: F0, F1 B0, F2 B1, ...).
        Every other schedule runs as 1F1B when pp = 1."""
        return self.overlapped_fb and self.placement == "loop"

    def affine_from(self, pp: int) -> int:
        """Smallest m from which the step time is affine in m (interleaved needs m % p == 0)."""
        return pp if self.virtual and pp > 1 else 1


def _flush_bubble(p: int, m: int, v: int) -> float:
    """GPipe and 1F1B: (p−1)/(m+p−1) (Huang et al. 2019 §2.3; Narayanan et al. 2021 §2.2.1)."""
    return (p - 1) / (m + p - 1)


def _interleaved_bubble(p: int, m: int, v: int) -> float:
    """Interleaved 1F1B: (p−1)/(v·m+p−1) (Narayanan et al. 2021 §2.2.2)."""
    return (p - 1) / (v * m + p - 1)


def _zb_h1_bubble(p: int, m: int, v: int) -> float:
    """ZB-H1 with T_F = T_I = T_W: (p−1)/(3m+p−1), m ≥ p (Qi et al. 2024 §2.1)."""
    return (p - 1) / (3 * m + p - 1)


def _zb_v_bubble(p: int, m: int, v: int) -> float:
    """ZB-V, chunks of T_F = T_I = T_W = T/2 (a full stage's F = T, B = 2T): each rank works
    3mT and the executed order (PyTorch's) ends (p−1)T/2 later, so the bubble is
    (p−1)/(6m+p−1) for m ≥ 2p−1 — half of ZB-H1's (p−1)/(3m+p−1) (Qi et al. 2024 §6: "zero
    bubble" in steady state; the residue is the fill of the first chunk). Below 2p−1 the
    executed order is longer (m = p: 4m−1 half-units); the form is stated for m ≥ 2p−1."""
    return (p - 1) / (6 * m + p - 1)


def _zb_v_in_flight(p: int, m: int, stage: int, v: int) -> float:
    """ZB-V holds 2p chunk activations on every rank, p micro-batches of its layers, once
    m ≥ 2p−1: the peak of 1F1B's first stage, on every stage (Qi et al. 2024 §6)."""
    return float(min(m, p))


def _dualpipe_v_bubble(p: int, m: int, v: int) -> float:
    """DualPipeV's executed order (PyTorch's, each overlapped F&B run as F then B) with chunk
    costs F = I = W = T/2, B = T ends (p−1)T/2 after each rank's 3mT of work, like ZB-V:
    (p−1)/(6m+p−1) for m ≥ 2p."""
    return (p - 1) / (6 * m + p - 1)


def _dualpipe_v_in_flight(p: int, m: int, stage: int, v: int) -> float:
    """DualPipeV holds 2p+1 chunk activations on every rank: the DualPipe README's "PP+1"
    (PP = 2p stages), p + 1/2 micro-batches of the rank's layers."""
    return p + 0.5


def _dualpipe_bubble(p: int, m: int, v: int) -> float:
    """DualPipe's order with each overlapped F&B run as F then B and every output sent when
    its computation ends (:func:`~simtrain.schedules.comm.add_p2p`), stage costs F = W = I = T,
    B = 2T: each rank works 3mT (m/2 micro-batches in each direction) and idles
    (p/2−1)(2B−3W) = (p/2−1)T, so (p−2)/(6m+p−2) for even p, even m ≥ 2p. DualPipe's own
    sends, both outputs of an F&B after the pair (``dualpipe_p2p``), add F per half-rank:
    the README's (p/2−1)(F&B+B−3W) = (p−2)T (tests/test_dualpipe.py)."""
    return (p - 2) / (6 * m + p - 2)


def _dualpipe_in_flight(p: int, m: int, stage: int, v: int) -> float:
    """DualPipe holds p+1 chunk activations on every rank, each a whole model stage's (the
    README's "Activation Per Device PP+1"): (p+1)/2 micro-batches of the rank's layers, its
    two copies together (the memory walk's unit, as DualPipeV's p + 1/2)."""
    return (p + 1) / 2


def _combined_in_flight(p: int, m: int, stage: int, v: int) -> float:
    """Combined 1F1B with one chunk per rank: 1F1B's min(m, p − s). Its one extra warm-up
    forward is held whole, but every steady-state forward then runs merged with a backward
    that releases a layer as the forward stores one (Megatron-Core
    model_chunk_schedule_plan.py ``run``; the memory walk's
    ``costs.activations.merged_pairs_backward_first``, exact but for that one layer), where
    1F1B's steady forward adds a micro-batch before its backward; with v > 1 the interleaved
    order's, like ``interleaved``'s entry, not a closed form."""
    return float(min(m, p - stage))


def _naive_bubble(p: int, m: int, v: int) -> float:
    """Naive model parallelism: one GPU busy at a time, (p−1)/p (Huang et al. 2019 Fig. 2b)."""
    return (p - 1) / p


def _steady_state_bubble(p: int, m: int, v: int) -> float:
    """Asynchronous PipeDream and PipeDream-2BW in steady state: no flush, so with uniform
    stages every stage is busy all the time and the bubble is 0 (Harlap et al. 2018 §3.2;
    Narayanan et al. 2021 ICML §3.1). The window simtrain plays still has 1F1B's fill and
    drain, (p−1)/(m+p−1) of it; the step reports them apart (``fill_drain_s``)."""
    return 0.0


def _all_in_flight(p: int, m: int, stage: int, v: int) -> float:
    """GPipe holds every micro-batch until the backward starts (Huang et al. 2019 §2.3)."""
    return float(m)


def _one_in_flight(p: int, m: int, stage: int, v: int) -> float:
    return 1.0


def _one_f_one_b_in_flight(p: int, m: int, stage: int, v: int) -> float:
    """1F1B and PipeDream: min(m, p − s) (Narayanan et al. 2021 §2.2.1)."""
    return float(min(m, p - stage))


def _zb_h1_in_flight(p: int, m: int, stage: int, v: int) -> float:
    """ZB-H1 defers weight gradients, so every stage keeps up to min(m, p) until its W (Qi et
    al. 2024, arXiv 2401.10241 §2.1)."""
    return float(min(m, p))


#: What DualPipe and DualPipeV share (DualPipe.step / torch ScheduleDualPipeV): a V of two
#: chunks per rank, full and split backwards mixed, at least one micro-batch per stage, and
#: overlapped F&B pairs.
_DUALPIPE = {"virtual": True, "chunks_per_rank": 2, "mixed_backward": True,
             "min_microbatches_per_stage": 1, "overlapped_fb": True}  # fmt: skip


SCHEDULES: dict[str, ScheduleTraits] = {
    s.name: s
    for s in (
        ScheduleTraits("naive", naive, _naive_bubble, _one_in_flight),
        ScheduleTraits("gpipe", gpipe, _flush_bubble, _all_in_flight, affine_in_m=True),
        ScheduleTraits(
            "1f1b", one_f_one_b, _flush_bubble, _one_f_one_b_in_flight, affine_in_m=True
        ),  # fmt: skip
        ScheduleTraits(
            "interleaved",
            interleaved,
            _interleaved_bubble,
            _one_f_one_b_in_flight,
            affine_in_m=True,
            virtual=True,
            grouped=True,
        ),  # fmt: skip
        ScheduleTraits(
            "combined_1f1b",
            combined_1f1b,
            _interleaved_bubble,
            _combined_in_flight,
            affine_in_m=True,
            virtual=True,
            grouped=True,
            overlapped_fb=True,
        ),  # fmt: skip
        ScheduleTraits(
            "pipedream",
            pipedream,
            _steady_state_bubble,
            _one_f_one_b_in_flight,
            asynchronous=True,
            steps_every_microbatch=True,
        ),  # fmt: skip
        ScheduleTraits(
            "pipedream_2bw",
            pipedream_2bw,
            _steady_state_bubble,
            _one_f_one_b_in_flight,
            asynchronous=True,
        ),  # fmt: skip
        ScheduleTraits("zb_h1", zb_h1, _zb_h1_bubble, _zb_h1_in_flight, split_backward=True),
        ScheduleTraits(
            "zb_v",
            zb_v,
            _zb_v_bubble,
            _zb_v_in_flight,
            split_backward=True,
            virtual=True,
            placement="v",
            chunks_per_rank=2,
        ),  # fmt: skip
        ScheduleTraits(
            "dualpipe_v",
            dualpipe_v,
            _dualpipe_v_bubble,
            _dualpipe_v_in_flight,
            placement="v",
            fb_pairs=dualpipe_v_fb_pairs,
            **_DUALPIPE,
        ),
        ScheduleTraits(
            "dualpipe",
            dualpipe,
            _dualpipe_bubble,
            _dualpipe_in_flight,
            placement="dual",
            fb_pairs=dualpipe_fb_pairs,
            **_DUALPIPE,
        ),
    )
}


def traits(name: str) -> ScheduleTraits:
    """The registry entry of ``name``; raises ScheduleError naming the allowed schedules."""
    from simtrain.errors import ScheduleError, echo

    if name not in SCHEDULES:
        raise ScheduleError(
            f"unknown pipeline schedule {echo(name)}; allowed: {', '.join(sorted(SCHEDULES))}"
        )
    return SCHEDULES[name]


def multi_chunk_schedules() -> list[str]:
    """The schedules that run more than one model chunk per rank (``ScheduleTraits.virtual``:
    any v, interleaved, or their fixed number, ZB-V and DualPipeV), in the registry's order."""
    return [n for n, t in SCHEDULES.items() if t.virtual]


def all_warmup_order(all_warmup_at_pp: bool, schedule: str, v: int) -> bool:
    """Whether the runtime runs the interleaved order's all-warm-up variant (every forward
    first) where the micro-batches equal the stages (``interleaved_all_warmup_at_pp``,
    Megatron-LM 2021-2024: ``schedules.interleaved_all_warmup``): its flag, the interleaved
    schedule, more than one chunk per rank."""
    return all_warmup_at_pp and schedule == "interleaved" and v > 1


def runs_groups(name: str, pp: int, v: int) -> bool:
    """Whether schedule ``name`` at pp ranks and v chunks per rank runs its micro-batches in
    groups per chunk (:attr:`ScheduleTraits.grouped`, interleaved: v > 1 and pp > 1), so that
    ``parallelism.microbatch_group_size`` applies; an unknown name runs none."""
    return name in SCHEDULES and SCHEDULES[name].grouped and v > 1 and pp > 1


def build_schedule(name: str, pp: int, m: int, v: int = 1, group: int = 0) -> Schedule:
    """Schedule ``name`` for pp ranks, m micro-batches, v chunks per rank (a schedule with a
    fixed number of chunks per rank, ZB-V's 2, takes its own), ``group`` micro-batches per
    chunk where it runs them in groups (:attr:`ScheduleTraits.grouped`; 0: its default, pp)."""
    tr = traits(name)
    if group and not tr.grouped:
        from simtrain.errors import ScheduleError

        raise ScheduleError(f"{name} runs no micro-batch groups: only "
                            f"{', '.join(n for n, t in SCHEDULES.items() if t.grouped)} do")  # fmt: skip
    if tr.grouped:
        return tr.generator(pp, m, tr.chunks(v), group)  # type: ignore[call-arg]
    return tr.generator(pp, m, tr.chunks(v))


def microbatches_in_flight(schedule: str, pp: int, m: int, stage: int, v: int = 1) -> float:
    """Closed form of the micro-batches a stage holds at its peak; pp = 1 holds one, except in
    an order of its own there (:attr:`ScheduleTraits.one_stage_order`)."""
    if pp == 1 and not traits(schedule).one_stage_order:
        return 1.0
    return traits(schedule).in_flight(pp, m, stage, v)
