"""A model measured by the PyTorch reference (simtrain.torchref, one CPU step) beside
simtrain's estimate of the same model on one GPU: the pair the measured-memory tests compare."""

from __future__ import annotations

from typing import Any

from simtrain.spec.model import ModelSpec
from simtrain.spec.scenario import TrainingSpec


def measure_and_estimate(m: ModelSpec, t: TrainingSpec) -> tuple[Any, dict[str, int]]:
    """(measure_step's result, the estimate's memory_bytes by category) of ``m`` under ``t``."""
    from simtrain.costs.memory import estimate_memory
    from simtrain.spec.hardware import load_hardware
    from simtrain.spec.scenario import ClusterSpec, ParallelSpec, Scenario
    from simtrain.torchref.measure import measure_step

    r = measure_step(m, t, steps=1)
    sc = Scenario("t", m, load_hardware("a100_sxm4_80gb"), ClusterSpec(1, 1), t, ParallelSpec())
    return r, dict(estimate_memory(sc).stages[0].memory_bytes)
