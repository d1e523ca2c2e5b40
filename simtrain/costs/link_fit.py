"""A hardware profile's link fitted to a measured collective: the factor k by which the link must
be slower (or faster) for simtrain's time of that collective to equal the measured one.

A measured bus bandwidth B of a collective ``op`` of S bytes over n GPUs (nccl-tests convention,
doc/PERFORMANCE.md: busbw = bus_factor · S / t) is a time t = bus_factor · S / B. The link is
scaled as a whole, rate / k and per-step latency · k (one measurement cannot split the two), and
k is the factor at which simtrain's time of the same collective (``group_comm``'s pricing under
the runtime's algorithm choice), plus any fixed time the measurement included (``extra_s``: a copy
the benchmark makes), equals t, in the geometric mean over the collectives given. The form was
not chosen blind: on the Ultra-Scale Playbook sweep's CSV (benchmarks/playbook_csv_rows.py, with
the EFA profile then in use) it gave tokens/s MAPE 58.1 % against 64.9 % for the rate alone;
it is also the form that keeps the profile's fall of bus bandwidth with node count. Scaling rate
and latency together scales a ring's time by exactly k; NCCL's fixed base latencies and
``extra_s`` do not scale, so k is found by fixed-point steps k <- k · t_measured / t_simtrain(k).
Used by ``simtrain fit-network`` (a cluster's nccl-tests logs) and by validate's records that
carry their job's own bandwidth test (``apps/validate/job_network.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace

from simtrain.costs.collectives import bus_factor
from simtrain.costs.compute import memory_bound_ns
from simtrain.costs.group_comm import hardware_collective_s
from simtrain.spec.hardware import HardwareProfile

#: fixed-point steps: each multiplies the error of k by about extra_s / t_measured (the fixed
#: time's share: at most 0.23 over the sweep's 1 GiB tests, job-wide and node), so a ring
#: converges to 1e-12 in under 20
_STEPS = 40
#: the k a fit may reach: a measurement faster than the links allow (a ring through the NICs is
#: capped by NVLink) or slower than any link would run k to 0 or infinity. The sweep's tests give
#: network k 0.18-2.19 and NVLink k 1.2-9.7 (apps/validate/job_network.py): the bounds sit 18x
#: and 100x outside them.
K_BOUNDS = (1e-2, 1e3)
#: bounds of a measured figure before it is fitted: a bus bandwidth of 1e5 GB/s is over 100x
#: NVLink 5's 900 GB/s per direction (a unit slip, not a link), a message of 2^50 B (1 PiB) more
#: than any GPU holds
MAX_BUSBW_GB_PER_S = 1e5
MAX_SIZE_BYTES = 2**50


def list_collective_copy_s(hw: HardwareProfile, size_bytes: float) -> float:
    """The device copy inside a benchmark that calls torch's list-form ``all_gather`` /
    ``reduce_scatter`` (nanotron's ``measure_bandwidth``): they gather into / reduce from one
    flat buffer and copy the S bytes out of / into the list on the NCCL stream, after / before
    the collective (PyTorch ``ProcessGroupNCCL::allgather``: "Copy the flattened output tensors
    to the outputs"; ``::reduce_scatter``: "Copy the input tensors to the flattened inputs"):
    S read + S written at the profile's memory-bound rate (1 GiB on an H100: 0.80 ms).
    ``all_reduce`` on one tensor and nccl-tests copy nothing."""
    return memory_bound_ns(2 * size_bytes, hw) / 1e9


def with_network_slowdown(hw: HardwareProfile, k: float) -> HardwareProfile:
    """``hw`` with its inter-node link k times slower: NIC rate / k, per-step latency · k."""
    return replace(hw, nic_bandwidth_bytes_per_s=hw.nic_bandwidth_bytes_per_s / k,
                   inter_node_latency_s=hw.inter_node_latency_s * k)  # fmt: skip


def with_node_slowdown(hw: HardwareProfile, k: float) -> HardwareProfile:
    """``hw`` with its intra-node link k times slower: NVLink rate / k, latency · k."""
    return replace(hw, intra_node_bandwidth_bytes_per_s=hw.intra_node_bandwidth_bytes_per_s / k,
                   intra_node_latency_s=hw.intra_node_latency_s * k)  # fmt: skip


#: which link a fit scales: "network" (inter-node) or "node" (intra-node)
SCALERS: dict[str, Callable[[HardwareProfile, float], HardwareProfile]] = {
    "network": with_network_slowdown,
    "node": with_node_slowdown,
}


def link_slowdown(hw: HardwareProfile, link: str, algorithm: str,
                  busbw_bytes_per_s: Mapping[str, float], gpus: int, size_bytes: float,
                  extra_s: float = 0.0) -> float:  # fmt: skip
    """k of ``link`` ("network" or "node"; :data:`SCALERS`) from the measured bus bandwidths
    (collective -> bytes/s) of ``size_bytes`` over ``gpus`` GPUs (``hw.gpus_per_node`` of them
    per node, or all when fewer). A ValueError when k stops at :data:`K_BOUNDS`: no scaling of
    the link reproduces the measurement."""
    scaled = SCALERS[link]
    g = min(hw.gpus_per_node, gpus)

    def ratio(k: float) -> float:  # the measured time / simtrain's on hw scaled by k
        slow = scaled(hw, k)
        logs = [math.log(bus_factor(op, gpus) * size_bytes / measured
                         / (hardware_collective_s(slow, algorithm, op, size_bytes, gpus, g)
                            + extra_s))
                for op, measured in sorted(busbw_bytes_per_s.items())]  # fmt: skip
        return math.exp(sum(logs) / len(logs))

    k = 1.0
    for _ in range(_STEPS):
        r = ratio(k)
        k_next = min(max(k * r, K_BOUNDS[0]), K_BOUNDS[1])
        if abs(math.log(r)) < 1e-12 or k_next == k:
            break
        k = k_next
    if k in K_BOUNDS:
        figures = ", ".join(f"{op.replace('_', '-')} {b / 1e9:.4g}"
                            for op, b in sorted(busbw_bytes_per_s.items()))  # fmt: skip
        raise ValueError(f"{figures} GB/s over {gpus} GPUs is beyond what scaling {hw.name}'s "
                         f"{link} link reproduces (k stopped at {k:g})")  # fmt: skip
    return k
