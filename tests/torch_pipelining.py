"""torch's pipeline schedules' own per-rank orders, as simtrain Actions: the independent values
tests/test_schedules.py and tests/test_microbatch_groups.py compare simtrain's generators with
(torch 2.13, ``torch.distributed.pipelining.schedules``; skipped where torch is not installed)."""

from __future__ import annotations

import types
from typing import Any
from unittest import mock

import pytest

from simtrain.schedules.actions import Action

#: torch's computation types -> simtrain's action kinds
KINDS = {"FORWARD": "F", "BACKWARD_INPUT": "I", "BACKWARD_WEIGHT": "W", "FULL_BACKWARD": "B"}


def torch_schedules() -> Any:
    return pytest.importorskip("torch.distributed.pipelining.schedules")


def as_actions(rank_ops: list[Any]) -> list[Action]:
    """One rank's torch order as Actions: idle slots (None) dropped as its runtime skips them,
    an ``OVERLAP_F_B`` flattened into its sub-actions (F then B) as its runtime runs them."""
    out: list[Action] = []
    for a in rank_ops:
        if a is None:
            continue
        subs = a.sub_actions if a.computation_type.name == "OVERLAP_F_B" else (a,)
        out += [Action(x.stage_index, KINDS[x.computation_type.name], x.microbatch_index)
                for x in subs]  # fmt: skip
    return out


def planned_orders(cls: Any, pp: int, **attrs: Any) -> dict[int, list[Action]]:
    """``cls._calculate_single_rank_operations`` run on every rank of a stand-in schedule
    holding only the attributes its planner reads (``attrs``)."""
    fake = types.SimpleNamespace(pp_group_size=pp, **attrs)
    return {r: as_actions(cls._calculate_single_rank_operations(fake, r)) for r in range(pp)}


def interleaved_1f1b(pp: int, m: int, v: int) -> tuple[dict[int, list[Action]], int] | None:
    """torch's ScheduleInterleaved1F1B built by its own ``__init__`` over v stand-in stages of a
    pp-rank group (the base class's set-up and the communication pass skipped: neither reads
    or changes the order): its per-rank order and its rounds' size (``microbatches_per_round``),
    or None where torch refuses m (its ValueError)."""
    sched = torch_schedules()

    def base_init(self: Any, stages: Any, n_microbatches: int, **_: Any) -> None:
        self._n_microbatches = n_microbatches

    stage = types.SimpleNamespace(group_size=pp, group_rank=0)
    cls = sched.ScheduleInterleaved1F1B
    with (mock.patch.object(sched.PipelineScheduleMulti, "__init__", base_init),
          mock.patch.object(cls, "_prepare_schedule_with_comms", lambda self, order: None)):  # fmt: skip
        try:
            built = cls([stage] * v, m)
        except ValueError:
            return None
    order = {r: as_actions(ops) for r, ops in built.pipeline_order.items()}
    return order, built.microbatches_per_round
