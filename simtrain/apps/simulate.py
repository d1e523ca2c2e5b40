"""One training step of a scenario, end to end: resolved step → memory → workload → lowering →
engine → metrics. The orchestration only: every fact comes from ``layout.step``, every cost from
``costs``, every task from ``sim.lowering``."""

from __future__ import annotations

from dataclasses import dataclass, replace

from simtrain.costs.compute import hardware_flops_per_step, model_flops_per_step
from simtrain.costs.data_parallel import is_data_parallel
from simtrain.costs.memory import MemoryReport, estimate_memory
from simtrain.costs.workload import initial_memory, lowering_input, nic_plan, optimizer_memory
from simtrain.layout.step import ResolvedStep, resolve
from simtrain.report.metrics import StepMetrics, step_metrics
from simtrain.sim.engine import Task, gc_paused, simulate
from simtrain.sim.lowering import LoweringInput, lower, share_nics
from simtrain.sim.timeline import Timeline
from simtrain.spec.scenario import Scenario


@dataclass(frozen=True, slots=True)
class SimulationResult:
    scenario: Scenario
    memory: MemoryReport
    timeline: Timeline
    metrics: StepMetrics


def build_lowering_input(sc: Scenario, mem: MemoryReport) -> LoweringInput:
    """Lowering's input for ``sc``, its optimizer steps' memory included."""
    step = resolve(sc)
    inp = lowering_input(sc, step, mem)
    opt = optimizer_memory(step, mem)
    ranks = {r: replace(w, optimizer_alloc=opt[r][0], optimizer_free=opt[r][1])
             for r, w in inp.ranks.items()}  # fmt: skip
    return replace(inp, ranks=ranks)


def lower_scenario(sc: Scenario, mem: MemoryReport, detail: bool = True
                   ) -> tuple[list[Task], dict[str, float]]:  # fmt: skip
    """The engine's tasks and shared links for one step of ``sc``. ``detail=False`` folds
    intra-node TP all-reduces into the compute they follow and each recompute into its backward
    (``sim.lowering.lower``'s ``fuse_tp`` and ``merge_recompute``): the same step time, FLOP
    rates and peak memory with fewer tasks, but no TP or recompute spans (the planner)."""
    step = resolve(sc)
    tasks = lower(
        build_lowering_input(sc, mem),
        fuse_tp=not detail
        and not step.placement.tp_crosses_nodes
        and not sc.runtime.tp_comm_overlap,
        merge_recompute=not detail,
    )
    return share_nics(tasks, nic_plan(sc, step))


def rank_labels(step: ResolvedStep, sc: Scenario | None = None) -> dict[int, str]:
    """Each simulated rank's row label; under torch.nn.DataParallel GPU 0 and a replica."""
    if sc is not None and is_data_parallel(sc):
        n = sc.parallelism.dp
        who = "GPU 1" if n == 2 else f"GPUs 1-{n - 1}"
        return {0: "GPU 0: module, loss, optimizer", 1: f"{who}: replicas"}
    return {r: step.placement.rank_label(r) for r in range(step.pp)}


def simulate_scenario(sc: Scenario, detail: bool = True) -> SimulationResult:
    """Simulate one optimizer step of ``sc`` (``detail``: see :func:`lower_scenario`)."""
    with gc_paused():
        step = resolve(sc)
        mem = estimate_memory(sc)
        tasks, links = lower_scenario(sc, mem, detail)
        timeline = simulate(
            tasks, initial_memory(step, mem), links, rank_labels=rank_labels(step, sc)
        )
        metrics = step_metrics(
            step, timeline, model_flops_per_step(sc), hardware_flops_per_step(sc), sc.hardware
        )
        return SimulationResult(sc, mem, timeline, metrics)
