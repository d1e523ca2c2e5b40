"""Pipeline schedules as data: per-rank lists of tiny immutable actions (``1F3``), generators,
a validator, a p2p lowering pass and a list-scheduling simulator. Imports no SimPy and no YAML."""

from simtrain.schedules.actions import (
    COMM_KINDS,
    COMPUTE_KINDS,
    KINDS,
    Action,
    Schedule,
    microbatch_stages,
    pipeline_of,
    rank_stages,
    stage_to_rank,
)
from simtrain.schedules.analysis import peak_in_flight
from simtrain.schedules.comm import add_p2p
from simtrain.schedules.generators import (
    dualpipe,
    dualpipe_fb_pairs,
    dualpipe_p2p,
    dualpipe_v,
    dualpipe_v_fb_pairs,
    gpipe,
    interleaved,
    naive,
    one_f_one_b,
    pipedream,
    pipedream_2bw,
    pipedream_weight_versions,
    stashed_weight_versions,
    zb_h1,
    zb_v,
)
from simtrain.schedules.grid import format_grid
from simtrain.schedules.registry import (
    SCHEDULES,
    ScheduleTraits,
    build_schedule,
    microbatches_in_flight,
    traits,
)
from simtrain.schedules.unit_time import format_timeline, simulate_spans, simulate_unit
from simtrain.schedules.validate import has_split_backward, validate_schedule

__all__ = [
    "dualpipe",
    "dualpipe_fb_pairs",
    "dualpipe_v_fb_pairs",
    "dualpipe_p2p",
    "dualpipe_v",
    "COMM_KINDS",
    "COMPUTE_KINDS",
    "KINDS",
    "SCHEDULES",
    "Action",
    "Schedule",
    "ScheduleTraits",
    "add_p2p",
    "build_schedule",
    "format_grid",
    "format_timeline",
    "gpipe",
    "has_split_backward",
    "interleaved",
    "microbatch_stages",
    "microbatches_in_flight",
    "naive",
    "one_f_one_b",
    "peak_in_flight",
    "pipedream",
    "pipedream_2bw",
    "pipedream_weight_versions",
    "pipeline_of",
    "rank_stages",
    "simulate_spans",
    "simulate_unit",
    "stage_to_rank",
    "stashed_weight_versions",
    "traits",
    "validate_schedule",
    "zb_h1",
    "zb_v",
]
