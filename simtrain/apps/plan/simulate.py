"""The full simulation of a candidate: a worker task that loads the layout's scenario mapping
exactly as ``simtrain run`` loads a file and simulates one step."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

from simtrain.apps.simulate import simulate_scenario
from simtrain.errors import SimtrainError
from simtrain.spec.scenario import parse_scenario


class SimOutcome(NamedTuple):
    step_time_s: float
    tokens_per_s: float
    mfu: float
    tflops_per_gpu: float
    peak_memory_bytes: int
    timeline_peak_bytes: int
    capacity_bytes: int
    fits: bool
    error: str = ""  # a domain error of the simulation (the layout is then rejected)


def simulate_layout(args: tuple[dict[str, Any], str, str]) -> SimOutcome:
    """Worker task: load the scenario mapping as ``simtrain run`` loads a file
    (``parse_scenario``) and simulate one step."""
    data, file, base_dir = args
    try:
        sc = parse_scenario(data, file, Path(base_dir))
        res = simulate_scenario(sc, detail=False)
    except SimtrainError as exc:
        nan = math.nan
        return SimOutcome(nan, nan, nan, nan, 0, 0, 0, False, str(exc).splitlines()[0])
    mt = res.metrics
    tl_peak = max((s.peak_memory_bytes for s in mt.stages), default=0)
    cap = sc.hardware.memory_bytes
    fits = res.memory.fits and tl_peak <= cap
    return SimOutcome(mt.step_time_s, mt.tokens_per_s, mt.mfu, mt.tflops_per_gpu,
                      res.memory.peak_memory_bytes, tl_peak, cap, fits)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Executors


def indexed_simulate(arg: tuple[int, tuple[dict[str, Any], str, str]]) -> tuple[int, SimOutcome]:
    i, item = arg
    return i, simulate_layout(item)
