"""Pipeline actions: tiny immutable values, printed like ``1F3`` (stage 1, forward, micro-batch 3).

Modelled on PyTorch ``torch/distributed/pipelining/schedules.py`` (``_Action``): a schedule is data,
one ordered list of actions per pipeline rank, and lowering passes (``comm.add_p2p``) add
communication to a compute-only schedule.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from simtrain.errors import ScheduleError

#: Forward pass of one stage on one micro-batch.
F = "F"
#: Full backward (input and weight gradients together).
B = "B"
#: Input-gradient half of a split backward (zero-bubble schedules).
I = "I"  # noqa: E741 - the kind's published one-letter code
#: Weight-gradient half of a split backward (zero-bubble schedules).
W = "W"
SEND_F = "SEND_F"
RECV_F = "RECV_F"
SEND_B = "SEND_B"
RECV_B = "RECV_B"
#: Optimizer step of one rank (all of its stages).
OPT = "OPT"

COMPUTE_KINDS: tuple[str, ...] = (F, B, I, W)
COMM_KINDS: tuple[str, ...] = (SEND_F, RECV_F, SEND_B, RECV_B)
KINDS: tuple[str, ...] = (*COMPUTE_KINDS, *COMM_KINDS, OPT)

_ACTION_RE = re.compile(r"^(\d+)(SEND_F|RECV_F|SEND_B|RECV_B|OPT|F|B|I|W)(\d*)$")


class Action(NamedTuple):
    """One step of one rank.

    ``stage`` is the global virtual stage index ``0 .. pp*v-1``; for ``OPT`` it is the rank
    itself (stage ``r`` always lives on rank ``r``). ``microbatch`` is ``None`` only for ``OPT``.
    For ``SEND_*`` the stage is the sender, for ``RECV_*`` the receiver (as in PyTorch).
    """

    stage: int
    kind: str
    microbatch: int | None = None

    def __str__(self) -> str:
        mb = "" if self.microbatch is None else str(self.microbatch)
        return f"{self.stage}{self.kind}{mb}"

    @staticmethod
    def parse(text: str) -> Action:
        """Inverse of ``str``: ``"1F3"`` -> ``Action(1, "F", 3)``, ``"0OPT"`` -> ``Action(0, "OPT")``."""
        match = _ACTION_RE.match(text.strip())
        if match is None:
            raise ScheduleError(
                f"invalid action {text!r}: expected STAGE KIND [MICROBATCH], e.g. '1F3' or '0OPT'; "
                f"kinds: {', '.join(KINDS)}"
            )
        stage, kind, mb = match.groups()
        if (kind == OPT) != (mb == ""):
            raise ScheduleError(f"invalid action {text!r}: only OPT has no micro-batch")
        return Action(int(stage), kind, int(mb) if mb else None)


#: rank -> ordered actions of that rank.
Schedule = dict[int, list[Action]]


#: How virtual stages sit on ranks: "loop" (Megatron interleaved: stage s on rank s % pp),
#: "v" (ZB-V, DualPipeV: two chunks per rank in a V, stage s on rank s for s < pp and on rank
#: 2pp - 1 - s after; torch.distributed.pipelining ``generate_stage_to_rank_mapping(style="v")``)
#: or "dual" (DualPipe: the V's ranks, but two pipelines of pp stages each: stages 0..pp-1 carry
#: the first half of the micro-batches down from rank 0, stages pp..2pp-1 the second half up
#: from rank pp-1; stage pp+s holds a copy of stage s's layers, on rank pp-1-s).
PLACEMENTS = ("loop", "v", "dual")


def stage_to_rank(stage: int, pp: int, v: int = 1, placement: str = "loop") -> int:
    """Rank that holds virtual stage ``stage``: ``stage % pp`` (Megatron interleaved layout,
    Narayanan et al. 2021 §2.2.2: rank r holds chunks r, r+p, r+2p, ...), or in a V (v = 2:
    rank r holds stages r and 2p - 1 - r, so the first and the last stage share rank 0; Qi et
    al. 2024, arXiv 2401.10241 §6)."""
    if not 0 <= stage < pp * v:
        raise ScheduleError(f"stage {stage} out of range 0..{pp * v - 1} (pp={pp}, v={v})")
    if placement in ("v", "dual"):
        return stage if stage < pp else 2 * pp - 1 - stage
    return stage % pp


def rank_stages(rank: int, pp: int, v: int = 1, placement: str = "loop") -> list[int]:
    """Virtual stages held by ``rank``, in model order: ``[rank, rank+pp, ..., rank+(v-1)*pp]``
    (loop) or ``[rank, 2pp-1-rank]`` (V)."""
    if not 0 <= rank < pp:
        raise ScheduleError(f"rank {rank} out of range 0..{pp - 1} (pp={pp})")
    if placement in ("v", "dual"):
        return [rank, 2 * pp - 1 - rank]
    return [rank + k * pp for k in range(v)]


def pipeline_of(stage: int, num_stages: int, placement: str = "loop") -> range:
    """The run of consecutive stages a micro-batch through ``stage`` visits, in order: every
    stage (one pipeline), or under "dual" (DualPipe) the half ``stage`` is in: 0..pp-1 (down)
    or pp..2pp-1 (up)."""
    if placement == "dual":
        half = num_stages // 2
        return range(0, half) if stage < half else range(half, num_stages)
    return range(num_stages)


def microbatch_stages(j: int, m: int, num_stages: int, placement: str = "loop") -> range:
    """Stages micro-batch ``j`` of ``m`` visits: all of them, or under "dual" (DualPipe,
    ``DualPipe.step``: each end rank scatters its inputs into m/2 chunks) 0..pp-1 for
    j < m/2 and pp..2pp-1 for the rest."""
    if placement == "dual":
        return pipeline_of(0 if j < m // 2 else num_stages - 1, num_stages, placement)
    return range(num_stages)
