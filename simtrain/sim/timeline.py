"""What the engine produced: spans on (GPU, stream) rows and memory samples.

This is the one data structure that the engine writes and that metrics, the Chrome trace and the
plots read. Times are integer nanoseconds; memory is in bytes per category.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

# Memory categories, in the order reports and plots stack them.
MEMORY_CATEGORIES = (
    "parameters",
    "stashed_weights",
    "master_weights",
    "gradients",
    "optimizer_states",
    "activations",
    "cuda_context",
    "buffers",
)

# Streams, in the order the Gantt chart draws them under each GPU.
STREAMS = ("compute", "p2p", "collective", "dp", "gather", "cp", "tp")


class Span(NamedTuple):
    """One executed task (a named tuple: immutable, and cheap to build by the thousand)."""

    task_id: int
    rank: int  # simulated rank (one representative of its TP x DP peers)
    stream: str  # "compute" | "p2p" | "collective"
    kind: str  # F, B, I, W, R (recompute), OPT, SEND_F, RECV_F, SEND_B, RECV_B, ALLREDUCE, ...
    name: str  # label, e.g. "F mb3 L0-5"
    start_ns: int
    end_ns: int
    microbatch: int | None = None
    stage: int | None = None  # (virtual) pipeline stage

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


class MemorySample(NamedTuple):
    """Bytes held by one GPU in one category from ``time_ns`` until its next sample."""

    time_ns: int
    rank: int
    category: str
    bytes: int


@dataclass(slots=True)
class Timeline:
    """Spans and memory samples of one simulated step. ``gpus`` lists the simulated ranks;
    ``rank_labels[g]`` says which physical GPUs rank g stands for (e.g. "stage 0 (tp 8 x dp 8)")."""

    spans: list[Span] = field(default_factory=list)
    memory: list[MemorySample] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    rank_labels: dict[int, str] = field(default_factory=dict)
    events_processed: int = 0  # SimPy events the run took (for benchmarks)

    @property
    def makespan_ns(self) -> int:
        return max((s.end_ns for s in self.spans), default=0)

    def spans_of(self, gpu: int, stream: str | None = None) -> list[Span]:
        return [s for s in self.spans if s.rank == gpu and (stream is None or s.stream == stream)]

    def peak_memory_bytes(self, gpu: int) -> int:
        """Largest total over categories at any sample time of ``gpu``."""
        current: dict[str, int] = {}
        peak = 0
        samples = sorted((m for m in self.memory if m.rank == gpu), key=lambda m: m.time_ns)
        i = 0
        while i < len(samples):
            t = samples[i].time_ns
            while i < len(samples) and samples[i].time_ns == t:
                current[samples[i].category] = samples[i].bytes
                i += 1
            peak = max(peak, sum(current.values()))
        return peak
