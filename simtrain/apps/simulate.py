"""One training step of a scenario, end to end: resolved step → memory → workload → lowering →
engine → metrics. The orchestration only: every fact comes from ``layout.step``, every cost from
``costs``, every task from ``sim.lowering``."""

from __future__ import annotations

from dataclasses import dataclass, replace

from simtrain.costs.comm import nccl_kernel_sms
from simtrain.costs.compute import hardware_flops_per_step, model_flops_per_step
from simtrain.costs.data_parallel import is_data_parallel
from simtrain.costs.memory import MemoryReport, estimate_memory
from simtrain.costs.workload import (
    held_through_backward,
    initial_memory,
    lowering_input,
    nic_plan,
    optimizer_memory,
)
from simtrain.layout.step import ResolvedStep, resolve
from simtrain.report.metrics import PhaseCost, StepMetrics, phase_cost, step_metrics, total_cost
from simtrain.sim.engine import Task, gc_paused, simulate
from simtrain.sim.lowering import LoweringInput, lower, share_nics
from simtrain.sim.lowering.sms import hold_sms, rank_sm_counts
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
    held = held_through_backward(mem)
    ranks = {r: replace(w, optimizer_alloc=opt[r][0], optimizer_free=opt[r][1],
                        step_held=held.get(r, ()))
             for r, w in inp.ranks.items()}  # fmt: skip
    return replace(inp, ranks=ranks)


def lower_scenario(sc: Scenario, mem: MemoryReport, detail: bool = True
                   ) -> tuple[list[Task], dict[str, float]]:  # fmt: skip
    """The engine's tasks and shared links for one step of ``sc``. ``detail=False`` folds
    intra-node TP all-reduces into the compute they follow and each recompute into its backward
    (``sim.lowering.lower``'s ``fuse_tp`` and ``merge_recompute``): the same step time, FLOP
    rates and peak memory with fewer tasks, but no TP or recompute spans (the planner). The
    data-parallel collectives hold their NCCL kernels' SMs (``sim.lowering.sms``)."""
    step = resolve(sc)
    tasks = lower(
        build_lowering_input(sc, mem),
        fuse_tp=not detail
        and not step.placement.tp_crosses_nodes
        and not sc.runtime.tp_comm_overlap,
        merge_recompute=not detail,
        overlap_spans=detail,
    )
    tasks, links = share_nics(tasks, nic_plan(sc, step))
    return hold_sms(tasks, nccl_kernel_sms(sc)), links


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
            tasks,
            initial_memory(step, mem),
            links,
            rank_labels=rank_labels(step, sc),
            rank_sms=rank_sm_counts(tasks, sc.hardware.sm_count),
        )
        rows = None  # torch.nn.DataParallel: GPU 0 stands for 1 GPU, the replica row dp − 1
        if mem.replica is not None:
            rows = {rank: sm.gpus for rank, sm in enumerate(mem.gpus)}
        metrics = step_metrics(step, timeline, model_flops_per_step(sc),
                               hardware_flops_per_step(sc), sc.hardware, rows)  # fmt: skip
        return SimulationResult(sc, mem, timeline, metrics)


@dataclass(frozen=True, slots=True)
class PhasedResult:
    """Both phases of LP-FT (Kumar et al. 2022 §4: train the linear head on frozen features,
    then fine-tune everything from it): each phase's simulated step and cost, and the total."""

    results: tuple[tuple[str, SimulationResult], ...]  # (phase, its step), in training order
    costs: tuple[PhaseCost, ...]
    total: PhaseCost

    @property
    def main(self) -> SimulationResult:
        """The finetune phase's step (the one the plots and trace show)."""
        return self.results[-1][1]

    @property
    def fits(self) -> bool:
        return self.total.fits


def lp_ft_phases(sc: Scenario) -> tuple[tuple[str, int, Scenario], ...]:
    """(phase, steps, the scenario of that phase alone) of a two-phase LP-FT scenario: the
    same scenario with ``peft.phase`` set and the step counts cleared, as if the file said
    ``phase: probe`` or ``phase: finetune``."""
    pe = sc.training.peft
    return tuple(
        (ph, n, replace(sc, training=replace(sc.training, peft=pe.phase_only(ph))))
        for ph, n in (("probe", pe.probe_steps), ("finetune", pe.finetune_steps))
    )


def probe_phase_memory(sc: Scenario) -> MemoryReport | None:
    """The probe phase's memory of a two-phase LP-FT scenario (the finetune phase is the
    scenario's own estimate), None for any other scenario."""
    if not sc.training.peft.two_phase:
        return None
    return estimate_memory(lp_ft_phases(sc)[0][2])


def simulate_lp_ft(sc: Scenario, detail: bool = True) -> PhasedResult:
    """Simulate one step of each LP-FT phase of ``sc`` (``peft.two_phase``) and cost the run:
    each phase's steps x its step time, tokens and GPU-hours, their sums, and the peak memory
    of the phase that needs more (``report.metrics.total_cost``)."""
    results, costs = [], []
    for ph, steps, one in lp_ft_phases(sc):
        res = simulate_scenario(one, detail)
        mem = res.memory
        costs.append(phase_cost(ph, steps, res.metrics, one.tokens_per_step,
                                one.parallelism.gpus, mem.peak_memory_bytes, mem.fits,
                                mem.trainable_params))  # fmt: skip
        results.append((ph, res))
    return PhasedResult(tuple(results), tuple(costs), total_cost(tuple(costs)))
