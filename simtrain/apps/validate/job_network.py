"""A record's network as its own job measured it (``hardware.network_measured``).

One cluster is not one network: the Ultra-Scale Playbook sweep's jobs, all on the same AWS EFA
cluster, measured their own all-gather bus bandwidth over the job's GPUs at up to 7x apart for the
same node count (64 nodes: 6 or 44 GB/s; 4 nodes: 40 or 98), and the same layout ran 2-5x slower
on the slow network (CSV jobs 13502087 / 14113395: 6,078 / 1,212 tokens/s per GPU, world
all-gather 76 / 13 GB/s). A profile fitted to the cluster's mean cannot stand for both.

nanotron's benchmark branch measures that network before it builds the model: an all-reduce, a
reduce-scatter and an all-gather of 256 Mi fp32 elements (S = 1 GiB, nccl-tests convention) over
every GPU of the job, 10 timed calls after 5 warm-ups, bus bandwidth = factor · S · 10 / t
(huggingface/nanotron 67c5ebb6 ``src/nanotron/trainer.py`` ``measure_bandwidth`` l.1074-1175,
called from ``DistributedTrainer.pre_init`` l.260), and logs the three with the step's throughput
(``helpers.create_table_log`` l.609-611: 'AllReduce (GB/s)', 'AllGather (GB/s)',
'ReduceScatter (GB/s)'). A record that carries them is simulated on its hardware profile with the
inter-node link k times slower: NIC rate / k and per-step latency · k, where

    k = simtrain's bus bandwidth of the same collective (S, the job's GPUs, the runtime's
        algorithm choice) on the profile / the measured bus bandwidth,

the geometric mean over the ring collectives the record gives (all-gather and reduce-scatter:
NCCL runs them only as rings, NVIDIA/nccl #545, so they measure the ring the profile's NIC rate
and latency were fitted on; the all-reduce, whose tree / NVLS-tree choice is not a ring, is kept
in the record for reference and not used). Scaling the rate and the latency together scales
every multi-node ring's time by exactly k, so the job's own test is reproduced (under NCCL's
model, whose fixed base latencies do not scale, k is refined until it is); a single test
cannot split rate from latency. Only the network changes: no throughput or memory of the run is
read, and a job inside one node keeps the profile (its test measured NVLink).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from simtrain.costs.collectives import nccl_bus_bandwidth
from simtrain.costs.group_comm import hardware_collective_s
from simtrain.spec.hardware import HardwareProfile

#: the record's key (in its ``hardware`` section)
KEY = "network_measured"
#: the ring collectives k is taken from: record key -> collective
RING_KEYS = {"all_gather_busbw_gb_per_s": "all_gather",
             "reduce_scatter_busbw_gb_per_s": "reduce_scatter"}  # fmt: skip
#: every key the section may hold (the all-reduce is kept for reference, not used)
ALLOWED = (*RING_KEYS, "all_reduce_busbw_gb_per_s", "size_bytes", "gpus")


@dataclass(frozen=True, slots=True)
class JobNetwork:
    """The bus bandwidths (bytes/s) a job measured for ``size_bytes`` over ``gpus`` GPUs."""

    busbw_bytes_per_s: Mapping[str, float]  # collective -> measured bus bandwidth
    size_bytes: int
    gpus: int


def read_job_network(hw: Mapping[str, Any], num_gpus: int | None) -> JobNetwork | None:
    """The record's ``hardware.network_measured`` (None when absent). A value that is not a
    positive number, an unknown key, or a section without a ring collective is a ValueError
    naming the key and what is allowed."""
    sec = hw.get(KEY)
    if sec is None:
        return None
    if not isinstance(sec, Mapping):
        raise ValueError(f"hardware.{KEY}: a mapping of {', '.join(ALLOWED)}, not {sec!r}")
    for key, v in sec.items():
        if key not in ALLOWED:
            raise ValueError(f"hardware.{KEY}.{key}: unknown key; allowed: {', '.join(ALLOWED)}")
        if isinstance(v, bool) or not isinstance(v, int | float) or not (0 < v < math.inf):
            raise ValueError(f"hardware.{KEY}.{key}: must be a positive number, not {v!r}")
    ring = {op: float(sec[key]) * 1e9 for key, op in RING_KEYS.items() if key in sec}
    if not ring:
        raise ValueError(f"hardware.{KEY}: needs {' or '.join(RING_KEYS)} (the ring "
                         "collectives k is taken from)")  # fmt: skip
    size, gpus = sec.get("size_bytes"), sec.get("gpus", num_gpus)
    for key, v in (("size_bytes", size), ("gpus", gpus)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"hardware.{KEY}.{key}: a positive integer is needed, not {v!r}"
                             + (" (hardware.num_gpus is its default)" if key == "gpus" else ""))  # fmt: skip
    return JobNetwork(ring, int(size), int(gpus))


def network_slowdown(hw: HardwareProfile, algorithm: str, net: JobNetwork) -> float | None:
    """k (above): how many times slower than ``hw``'s inter-node link the job's own test found
    its network; None when the test's GPUs fit in one node (no inter-node link in it). Under
    the ring k is one ratio; NCCL's model adds fixed base latencies that do not scale, so k is
    refined until the scaled profile gives the measured bus bandwidth (geometric mean over the
    collectives; a few steps, each the ratio on the profile scaled by the last)."""
    g = min(hw.gpus_per_node, net.gpus)
    if net.gpus <= g:
        return None

    def ratio(k: float) -> float:  # simtrain's bus bandwidth on hw scaled by k / the measured
        slow = with_network_slowdown(hw, k)
        logs = [math.log(nccl_bus_bandwidth(
                    op, net.size_bytes, net.gpus,
                    hardware_collective_s(slow, algorithm, op, net.size_bytes, net.gpus, g))
                / measured) for op, measured in sorted(net.busbw_bytes_per_s.items())]  # fmt: skip
        return math.exp(sum(logs) / len(logs))

    k = 1.0
    for _ in range(_REFINE_STEPS):
        r = ratio(k)
        k_next = min(max(k * r, K_BOUNDS[0]), K_BOUNDS[1])
        if abs(math.log(r)) < 1e-12 or k_next == k:
            break
        k = k_next
    return k


#: refinement steps of :func:`network_slowdown` (the ring needs one; NCCL's model 3-4)
_REFINE_STEPS = 20
#: the k it returns: a test faster than the links allow (a ring through the NICs is capped by
#: NVLink) or slower than any network would run k to 0 or infinity; the sweep's are
#: 0.96-9.1 (its CSV's 1,696 completed multi-node runs)
K_BOUNDS = (1e-2, 1e3)


def with_network_slowdown(hw: HardwareProfile, k: float) -> HardwareProfile:
    """``hw`` with its inter-node link k times slower: NIC rate / k, per-step latency · k."""
    return replace(hw, nic_bandwidth_bytes_per_s=hw.nic_bandwidth_bytes_per_s / k,
                   inter_node_latency_s=hw.inter_node_latency_s * k)  # fmt: skip


def job_network_note(hw: HardwareProfile, net: JobNetwork, k: float) -> str:
    """The assumption line of a record simulated on its job's own network."""
    measured = ", ".join(f"{op.replace('_', '-')} {b / 1e9:.1f}"
                         for op, b in sorted(net.busbw_bytes_per_s.items()))  # fmt: skip
    return (
        f"network: the job's own bandwidth test ({measured} GB/s bus bandwidth, "
        f"{net.size_bytes / 2**30:.3g} GiB over {net.gpus} GPUs; nanotron measure_bandwidth): "
        f"{hw.name}'s inter-node NIC rate / {k:.2f} and per-step latency x {k:.2f}, which "
        "reproduce it"
    )
