"""Whole-run time: tokens / throughput, plus checkpoint saves, failures and restarts.

A training run of ``T_s = tokens / tokens_per_s`` seconds of useful work is cut into intervals
of ``τ`` seconds, each followed by a checkpoint write of ``δ`` seconds. Failures arrive as a
Poisson process with system mean time between failures ``M`` (= per-GPU MTBF / GPUs: a
synchronous job stops when any one GPU fails); after a failure the job restarts (``R``
seconds: relaunch plus loading the last checkpoint) and redoes the work since it.

- Optimum interval, first order: ``τ = sqrt(2·δ·M)`` (J. W. Young, "A first order approximation
  to the optimum checkpoint interval", Communications of the ACM 17(9), 1974).
- Higher order (J. T. Daly, "A higher order estimate of the optimum checkpoint interval for
  restart dumps", Future Generation Computer Systems 22(3), 2006, higher-order optimum):
  ``τ = sqrt(2δM)·(1 + sqrt(δ/(2M))/3 + (δ/(2M))/9) − δ`` for ``δ < 2M``, else ``τ = M``.
- Expected wall-clock time for exponential failures (Daly 2006, the complete model):
  ``T_w = M · e^{R/M} · (e^{(τ+δ)/M} − 1) · T_s / τ``.
  With failures switched off (no MTBF) and the interval left to the optimum, τ → ∞ and
  ``T_w = T_s`` exactly; with an explicit interval ``T_w = T_s · (τ + δ) / τ``.
- Goodput = ``T_s / T_w`` (the fraction of wall-clock time that trains the model).

Default per-GPU MTBF: the Llama 3 405B pre-training run (Llama Team, "The Llama 3 Herd of
Models", arXiv 2407.21783, §3.3.4 "Reliability and Operational Challenges"): 466 job
interruptions in a 54-day snapshot on 16,384 H100 GPUs, of which 47 planned (maintenance) and
419 unexpected. Unexpected ones are the failures that lose work: system MTBF = 54·24/419 =
3.09 h, per GPU 3.09 h × 16,384 = 50,677 GPU-hours (5.8 years). Counting all 466 gives
45,566 GPU-hours (``LLAMA3_MTBF_ALL_INTERRUPTIONS_GPU_HOURS``).

Default checkpoint bandwidth: the same paper's storage (§3.3.1, Tectonic): 2 TB/s sustained for
the 16,384-GPU job, i.e. 2e12 / 16,384 = 122 MB/s per GPU; every GPU writes its shard of the
model states in parallel. Checkpoint bytes = parameters + master weights + optimizer states of
the whole model (one copy; ``memory.model_state_bytes``). Restart cost default: an engineering
estimate, 10 minutes to relaunch and re-initialise the job ([est], no published figure found),
plus reading the checkpoint back at the write bandwidth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simtrain.errors import ConfigError

LLAMA3_GPUS = 16_384
LLAMA3_SNAPSHOT_DAYS = 54
LLAMA3_INTERRUPTIONS = 466
LLAMA3_UNEXPECTED_INTERRUPTIONS = 419

#: Per-GPU MTBF in GPU-hours from Llama 3 §3.3.4 (unexpected interruptions): 50,677 h.
LLAMA3_MTBF_GPU_HOURS = LLAMA3_SNAPSHOT_DAYS * 24 * LLAMA3_GPUS / LLAMA3_UNEXPECTED_INTERRUPTIONS
#: The same counting every interruption, planned ones included: 45,566 h.
LLAMA3_MTBF_ALL_INTERRUPTIONS_GPU_HOURS = (
    LLAMA3_SNAPSHOT_DAYS * 24 * LLAMA3_GPUS / LLAMA3_INTERRUPTIONS
)
#: Tectonic sustained 2 TB/s shared by 16,384 GPUs (Llama 3 §3.3.1): bytes/s per GPU.
LLAMA3_CHECKPOINT_BYTES_PER_S_PER_GPU = 2e12 / LLAMA3_GPUS
#: [est] relaunch, NCCL and data-loader re-initialisation after a failure, seconds.
DEFAULT_RELAUNCH_S = 600.0

INTERVAL_RULES = ("young", "daly")


@dataclass(frozen=True, slots=True)
class FailureModel:
    """How failures and checkpoints stretch a run. ``mtbf_gpu_hours = None`` switches failures
    off. ``checkpoint_interval_s = None`` picks the optimum by ``interval_rule``;
    ``checkpoint_s`` / ``restart_s`` = None derive them from the checkpoint size and
    ``checkpoint_bytes_per_s_per_gpu``."""

    mtbf_gpu_hours: float | None = LLAMA3_MTBF_GPU_HOURS
    checkpoint_interval_s: float | None = None
    interval_rule: str = "young"
    checkpoint_s: float | None = None
    restart_s: float | None = None
    relaunch_s: float = DEFAULT_RELAUNCH_S
    checkpoint_bytes_per_s_per_gpu: float = LLAMA3_CHECKPOINT_BYTES_PER_S_PER_GPU


#: Failures and checkpoints off: time-to-train = tokens / throughput.
NO_FAILURES = FailureModel(mtbf_gpu_hours=None)


@dataclass(frozen=True, slots=True)
class RunEstimate:
    """One whole run. Times in seconds; ``days`` and ``cost`` of the expected wall-clock."""

    compute_s: float  # T_s = tokens / tokens_per_s
    expected_s: float  # T_w
    goodput: float  # T_s / T_w
    system_mtbf_s: float | None
    checkpoint_s: float
    checkpoint_interval_s: float | None  # None: no checkpoints needed (failures off)
    restart_s: float
    expected_failures: float
    days: float
    cost: float


def young_interval_s(checkpoint_s: float, mtbf_s: float) -> float:
    """Young 1974: τ = sqrt(2·δ·M)."""
    return math.sqrt(2.0 * checkpoint_s * mtbf_s)


def daly_interval_s(checkpoint_s: float, mtbf_s: float) -> float:
    """Daly 2006 (higher-order optimum): τ = sqrt(2δM)·(1 + sqrt(δ/(2M))/3 + δ/(18M)) − δ for δ < 2M, else M."""
    d, m = checkpoint_s, mtbf_s
    if d >= 2.0 * m:
        return m
    x = d / (2.0 * m)
    return math.sqrt(2.0 * d * m) * (1.0 + math.sqrt(x) / 3.0 + x / 9.0) - d


def optimal_interval_s(checkpoint_s: float, mtbf_s: float, rule: str = "young") -> float:
    if rule == "young":
        return young_interval_s(checkpoint_s, mtbf_s)
    if rule == "daly":
        return daly_interval_s(checkpoint_s, mtbf_s)
    raise ValueError(f"unknown interval rule {rule!r}; allowed: {', '.join(INTERVAL_RULES)}")


#: A run expected to last longer than the age of the universe (13.8e9 years, Planck 2018) never
#: finishes: :func:`run_estimate` refuses it as it does an infinite one (the planner rejects the
#: layout), rather than offer ~1e290 days as a plan.
NEVER_S = 13.8e9 * 365.25 * 86400.0


def _exp(x: float) -> float:
    """e^x, infinite (not an OverflowError) past ~709."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def expected_wall_s(
    compute_s: float, interval_s: float, checkpoint_s: float, restart_s: float, mtbf_s: float
) -> float:
    """Daly 2006 (complete model): T_w = M·e^{R/M}·(e^{(τ+δ)/M} − 1)·T_s/τ (exponential failures).

    Infinite when restarts or intervals are hundreds of times the system MTBF (e^{R/M} past
    float range): the run never finishes, an answer rather than an OverflowError."""
    m = mtbf_s
    try:
        grow = math.expm1((interval_s + checkpoint_s) / m)
    except OverflowError:
        grow = math.inf
    return m * _exp(restart_s / m) * grow * (compute_s / interval_s)


def checkpoint_time_s(checkpoint_bytes: float, gpus: int, fm: FailureModel) -> float:
    """δ: the model states written by all GPUs in parallel, or the given ``checkpoint_s``."""
    if fm.checkpoint_s is not None:
        return fm.checkpoint_s
    return checkpoint_bytes / (gpus * fm.checkpoint_bytes_per_s_per_gpu)


def run_estimate(
    tokens: float,
    tokens_per_s: float,
    gpus: int,
    price_per_gpu_hour: float,
    checkpoint_bytes: float,
    fm: FailureModel = FailureModel(),
) -> RunEstimate:
    """Expected whole-run time, goodput, days and cost (module docstring for the model)."""
    compute_s = tokens / tokens_per_s
    delta = checkpoint_time_s(checkpoint_bytes, gpus, fm)
    restart = fm.restart_s if fm.restart_s is not None else fm.relaunch_s + delta
    if fm.mtbf_gpu_hours is None:
        tau = fm.checkpoint_interval_s
        if tau is None:
            wall = compute_s  # no failures, no checkpoints needed: exactly tokens / throughput
        else:
            wall = compute_s * (tau + delta) / tau
        return RunEstimate(
            compute_s, wall, compute_s / wall, None, delta, tau, restart, 0.0,
            wall / 86400.0, wall / 3600.0 * gpus * price_per_gpu_hour,
        )  # fmt: skip
    mtbf_s = fm.mtbf_gpu_hours * 3600.0 / gpus
    tau = fm.checkpoint_interval_s
    if tau is None and delta <= 0:
        # Free checkpoints: τ → 0 and Daly's T_w tends to T_s·e^{R/M} (only restarts cost).
        tau = 0.0
        wall = compute_s * _exp(restart / mtbf_s)
    else:
        if tau is None:
            tau = optimal_interval_s(delta, mtbf_s, fm.interval_rule)
        wall = expected_wall_s(compute_s, tau, delta, restart, mtbf_s)
    if not wall <= NEVER_S:  # (an infinite or NaN wall too)
        raise ConfigError(
            None, "failures", f"the run never finishes on {gpus:,} GPU{'s' if gpus != 1 else ''}: restarts ({restart:.3g} s) "
            f"and checkpoint intervals ({tau:.3g} s + {delta:.3g} s) are many times the "
            f"system MTBF ({mtbf_s:.3g} s = mtbf_gpu_hours x 3600 / GPUs), and the expected time "
            f"(Daly's e^(R/M) growth: {wall / 86400:.3g} days) is past the age of the universe; "
            "raise failures.mtbf_gpu_hours or lower restart_s / checkpoint_interval",
        )  # fmt: skip
    return RunEstimate(
        compute_s, wall, compute_s / wall, mtbf_s, delta, tau, restart, wall / mtbf_s,
        wall / 86400.0, _cost(wall, gpus, price_per_gpu_hour),
    )  # fmt: skip


def _cost(wall_s: float, gpus: int, price_per_gpu_hour: float) -> float:
    """GPU-hours x price; free GPUs cost 0 even for a run that never finishes (not inf x 0)."""
    return wall_s / 3600.0 * gpus * price_per_gpu_hour if price_per_gpu_hour else 0.0
