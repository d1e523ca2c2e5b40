"""Step metrics read from the timeline: step time, throughput, MFU, bubble, time breakdown.

- MFU = model FLOPs (no recompute) / (step time · GPUs · dense peak of the compute dtype)
  (Chowdhery et al. 2022, PaLM App. B; Korthikanti et al. 2022 App. A).
- Hardware TFLOP/s per GPU counts the FLOPs actually executed, recompute included (HFU-like).
- Bubble ratio of a stage = idle fraction of its compute stream over the step; the average over
  stages is reported. For uniform stages without communication it equals (p−1)/(m+p−1) for GPipe
  and 1F1B (Huang et al. 2019 §2.3; Narayanan et al. 2021 §2.2.1).
- time_breakdown_s splits the step of an average stage into compute + recompute + optimizer +
  communication_exposed + host_exposed + bubble, which sum to the step time (conservation of
  time). host_exposed: the GPU idle while only its host works (issuing kernels, or waiting in a
  blocking receive: the runtime's host stream); communication_total counts every
  communication span, exposed or not (PCIe copies of CPU offload included: the "d2h" and
  "h2d" streams); optimizer includes an offloaded CPU step ("cpu" stream) where nothing else
  runs under it.
- Asynchronous schedules (PipeDream, PipeDream-2BW) never flush: in steady state the next
  mini-batch's forwards fill this one's drain, so a mini-batch takes as long as its busiest
  stage is occupied (compute, exposed communication, exposed host time): step time = max over
  GPUs of that time (Harlap et al. 2018 §3.1: throughput is set by the slowest stage; the
  marginal cost of one more mini-batch in a long window, checked in tests/test_metrics.py).
  The window the engine plays has a fill and a drain: ``window_s`` = step + ``fill_drain_s``.
  Flushing schedules: ``window_s`` = step time, ``fill_drain_s`` = 0 (their fill and drain
  are their bubble).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from simtrain.layout.step import ResolvedStep
from simtrain.sim.timeline import Timeline
from simtrain.spec.hardware import HardwareProfile

# LOSS: DataParallel's loss on GPU 0; ACC: nanotron's fp32 gradient add after each backward;
# CPY: FSDP2's copy of gathered parameters into the unsharded ones
COMPUTE_KINDS = ("F", "B", "I", "W", "LOSS", "ACC", "CPY")


@dataclass(frozen=True, slots=True)
class StageMetrics:
    stage: int
    busy_s: float  # compute stream busy time (F, B, I, W, R, OPT)
    bubble_ratio: float
    communication_exposed_s: float
    peak_memory_bytes: int


@dataclass(frozen=True, slots=True)
class StepMetrics:
    step_time_s: float
    tokens_per_s: float
    samples_per_s: float
    mfu: float
    tflops_per_gpu: float
    bubble_ratio: float
    stages: tuple[StageMetrics, ...]
    time_breakdown_s: tuple[tuple[str, float], ...]
    model_flops_per_step: float
    hardware_flops_per_step: float
    window_s: float  # the simulated window: the step, plus an asynchronous schedule's fill/drain
    fill_drain_s: float  # window_s - step_time_s (0 for flushing schedules)


def union_length(intervals: list[tuple[int, int]]) -> int:
    """Length of time the (start, end) intervals cover, each instant once."""
    total = 0
    end = -1
    start = -1
    for a, b in sorted(intervals):
        if a > end:
            if end > start:
                total += end - start
            start, end = a, b
        else:
            end = max(end, b)
    if end > start:
        total += end - start
    return total


def _exposed(comm: list[tuple[int, int]], compute: list[tuple[int, int]]) -> int:
    """Length of time covered by communication but not by compute."""
    return union_length(comm + compute) - union_length(compute)


def step_metrics(step: ResolvedStep, tl: Timeline, mf: float, hf: float, hw: HardwareProfile,
                 gpus_per_rank: Mapping[int, int] | None = None) -> StepMetrics:  # fmt: skip
    """Metrics of one step from its timeline: ``mf`` model FLOPs (no recompute) and ``hf``
    hardware FLOPs (recompute included) per step over all GPUs, ``hw`` for the dense peak of
    the compute dtype. The bubble ratio and the per-GPU time breakdown average the simulated
    ranks, each weighted by the GPUs it stands for (``gpus_per_rank``; default: equally, as
    every pipeline stage has its tp x dp x cp GPUs; under torch.nn.DataParallel GPU 0 is 1 GPU
    and the replica row dp − 1)."""
    window_ns = tl.makespan_ns
    gpus = step.gpus
    peak = hw.compute_peak(step.precision.compute_dtype)
    by_gpu: dict[int, list] = {g: [] for g in tl.ranks}
    for s in tl.spans:
        by_gpu.setdefault(s.rank, []).append(s)
    per_gpu = {g: _gpu_times(by_gpu[g]) for g in tl.ranks}
    makespan_ns = window_ns
    if step.traits.asynchronous and step.pp > 1 and per_gpu:
        makespan_ns = max(t.busy + t.exposed + t.host_exposed + t.cpu_exposed
                          for t in per_gpu.values())  # fmt: skip
    step_s = makespan_ns / 1e9
    stages = []
    sums = {"compute": 0, "recompute": 0, "optimizer": 0, "communication_exposed": 0,
            "communication_total": 0, "host_exposed": 0, "bubble": 0}  # fmt: skip
    weight = {g: (gpus_per_rank or {}).get(g, 1) for g in tl.ranks}
    for g in tl.ranks:
        t, w = per_gpu[g], weight[g]
        busy, work, rec, opt = t.busy, t.work, t.recompute, t.optimizer
        exposed, host_exposed, comm_iv = t.exposed, t.host_exposed, t.comm_iv
        idle = makespan_ns - busy
        sums["compute"] += w * work
        sums["recompute"] += w * rec
        sums["optimizer"] += w * opt
        sums["communication_exposed"] += w * exposed
        sums["communication_total"] += w * sum(e - s for s, e in comm_iv)
        sums["host_exposed"] += w * host_exposed
        sums["bubble"] += w * (idle - exposed - host_exposed - t.cpu_exposed)
        mem_peak = tl.peak_memory_bytes(g)
        stages.append(StageMetrics(g, busy / 1e9, idle / makespan_ns if makespan_ns else 0.0,
                                   exposed / 1e9, mem_peak))  # fmt: skip
    n = max(sum(weight.values()), 1)
    breakdown = tuple((k, v / n / 1e9) for k, v in sums.items())
    return StepMetrics(
        step_time_s=step_s,
        tokens_per_s=step.tokens_per_step / step_s if step_s else 0.0,
        samples_per_s=step.global_batch / step_s if step_s else 0.0,
        mfu=mf / (step_s * gpus * peak) if step_s else 0.0,
        tflops_per_gpu=hf / (step_s * gpus) / 1e12 if step_s else 0.0,
        bubble_ratio=(
            sum(s.bubble_ratio for s in stages) / n
            if gpus_per_rank is None
            else sum(weight[s.stage] * s.bubble_ratio for s in stages) / n
        ),
        stages=tuple(stages),
        time_breakdown_s=breakdown,
        model_flops_per_step=mf,
        hardware_flops_per_step=hf,
        window_s=window_ns / 1e9,
        fill_drain_s=(window_ns - makespan_ns) / 1e9,
    )


@dataclass(frozen=True, slots=True)
class _GpuTimes:
    busy: int  # compute stream busy (F, B, I, W, R, OPT), ns
    work: int  # F, B, I, W
    recompute: int
    optimizer: int
    exposed: int  # communication not under compute
    host_exposed: int  # host time not under compute or communication
    comm_iv: list[tuple[int, int]]
    cpu_exposed: int = 0  # offloaded optimizer step not under compute or communication


def _gpu_times(spans: list) -> _GpuTimes:
    """One GPU's times over the window, from its spans."""
    comp = [s for s in spans if s.stream == "compute"]
    comm_iv = [(s.start_ns, s.end_ns) for s in spans if s.stream not in ("compute", "host", "cpu")]
    host_iv = [(s.start_ns, s.end_ns) for s in spans if s.stream == "host"]
    # Optimizer offload: the CPU step on the "cpu" stream counts as optimizer time where
    # neither the GPU nor a transfer runs under it (the bubble keeps the rest).
    cpu_iv = [(s.start_ns, s.end_ns) for s in spans if s.stream == "cpu"]
    comp_iv = [(s.start_ns, s.end_ns) for s in comp]
    cpu_exposed = _exposed(cpu_iv, comp_iv + comm_iv) if cpu_iv else 0
    return _GpuTimes(
        busy=sum(s.duration_ns for s in comp),
        work=sum(s.duration_ns for s in comp if s.kind in COMPUTE_KINDS),
        recompute=sum(s.duration_ns for s in comp if s.kind == "R"),
        optimizer=sum(s.duration_ns for s in comp if s.kind == "OPT") + cpu_exposed,
        exposed=_exposed(comm_iv, comp_iv),
        host_exposed=_exposed(host_iv, comp_iv + comm_iv + cpu_iv) if host_iv else 0,
        comm_iv=comm_iv,
        cpu_exposed=cpu_exposed,
    )


@dataclass(frozen=True, slots=True)
class PhaseCost:
    """The cost of one phase of a multi-phase run (LP-FT's probe and finetune, Kumar et al.
    2022 §4), or of all of them (``phase`` "total"): ``time_s = steps x step_time_s``,
    ``tokens = steps x tokens per step``, ``gpu_hours = time_s x GPUs / 3600``; the peak is the
    largest GPU peak of the phase(s), which fit only if every phase fits. For the total,
    ``step_time_s`` is the mean, ``time_s / steps``."""

    phase: str
    steps: int
    step_time_s: float
    time_s: float
    tokens: int
    gpu_hours: float
    peak_memory_bytes: int
    fits: bool
    trainable_params: int = 0

    def to_json(self) -> dict:
        doc = {k: getattr(self, k) for k in self.__slots__ if k != "phase"}
        return doc if self.phase != "total" else {k: v for k, v in doc.items()
                                                   if k != "trainable_params"}  # fmt: skip


def phase_cost(phase: str, steps: int, metrics: StepMetrics, tokens_per_step: int, gpus: int,
               peak_memory_bytes: int, fits: bool, trainable_params: int) -> PhaseCost:  # fmt: skip
    """:class:`PhaseCost` of ``steps`` steps of one simulated step (``metrics``)."""
    time_s = steps * metrics.step_time_s
    return PhaseCost(phase, steps, metrics.step_time_s, time_s, steps * tokens_per_step,
                     time_s * gpus / 3600, peak_memory_bytes, fits, trainable_params)  # fmt: skip


def total_cost(phases: tuple[PhaseCost, ...]) -> PhaseCost:
    """The phases together: steps, time, tokens and GPU-hours add up; the peak is the largest
    phase peak; it fits only if every phase fits."""
    steps = sum(c.steps for c in phases)
    time_s = sum(c.time_s for c in phases)
    return PhaseCost(
        "total", steps, time_s / steps if steps else 0.0, time_s, sum(c.tokens for c in phases),
        sum(c.gpu_hours for c in phases), max(c.peak_memory_bytes for c in phases),
        all(c.fits for c in phases),
    )  # fmt: skip
