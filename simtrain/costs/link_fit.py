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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from simtrain.costs.collectives import bus_factor
from simtrain.costs.compute import device_copy_ns
from simtrain.costs.group_comm import hardware_collective_s
from simtrain.spec.hardware import HardwareProfile

#: bisection steps on log k over K_BOUNDS (ln 1e5 = 11.5 wide): 60 halve it below 1e-16
_STEPS = 60
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
    return device_copy_ns(size_bytes, hw) / 1e9


def with_network_slowdown(hw: HardwareProfile, k: float) -> HardwareProfile:
    """``hw`` with its inter-node link k times slower: NIC rate / k, per-step latency · k."""
    return replace(hw, nic_bandwidth_bytes_per_s=hw.nic_bandwidth_bytes_per_s / k,
                   inter_node_latency_s=hw.inter_node_latency_s * k)  # fmt: skip


def with_node_slowdown(hw: HardwareProfile, k: float) -> HardwareProfile:
    """``hw`` with its intra-node link k times slower: NVLink rate / k (on a mesh each pair's
    too: a test over fewer GPUs than the node runs on pair links), latency · k."""
    return replace(hw, intra_node_bandwidth_bytes_per_s=hw.intra_node_bandwidth_bytes_per_s / k,
                   intra_node_pair_bandwidth_bytes_per_s=(
                       hw.intra_node_pair_bandwidth_bytes_per_s / k),
                   intra_node_latency_s=hw.intra_node_latency_s * k)  # fmt: skip


#: which link a fit scales: "network" (inter-node) or "node" (intra-node)
_SCALERS: dict[str, Callable[[HardwareProfile, float], HardwareProfile]] = {
    "network": with_network_slowdown,
    "node": with_node_slowdown,
}


@dataclass(frozen=True, slots=True)
class Measured:
    """One measured collective: ``op`` of ``size_bytes`` over ``gpus`` GPUs at a bus bandwidth
    (bytes/s), with ``extra_s`` of fixed time inside its timing (a benchmark's copy)."""

    op: str
    gpus: int
    size_bytes: float
    busbw_bytes_per_s: float
    extra_s: float = 0.0

    def __str__(self) -> str:
        return (f"{self.op.replace('_', '-')} {self.busbw_bytes_per_s / 1e9:.4g} GB/s over "
                f"{self.gpus} GPUs")  # fmt: skip


def link_of(hw: HardwareProfile, gpus: int) -> str:
    """The link a collective over ``gpus`` GPUs measures: one node's NVLink domain ("node", up to
    ``gpus_per_node``, whatever the hosts: an NVL72 rack's 18 trays of 4) or the network, over
    whole nodes (a ValueError otherwise)."""
    if gpus <= hw.gpus_per_node:
        return "node"
    if gpus % hw.gpus_per_node:
        raise ValueError(f"{gpus} GPUs are not whole nodes of {hw.name} ({hw.gpus_per_node} "
                         "per node): fit with a measurement on whole nodes")  # fmt: skip
    return "network"


def measured_time_s(m: Measured) -> float:
    """The time the measurement stands for: bus_factor · S / busbw (nccl-tests convention)."""
    return bus_factor(m.op, m.gpus) * m.size_bytes / m.busbw_bytes_per_s


def simulated_time_s(hw: HardwareProfile, algorithm: str, m: Measured) -> float:
    """simtrain's time of the measured collective on ``hw`` (its GPUs on as few nodes as hold
    them), plus the fixed time inside the measurement (``extra_s``)."""
    return hardware_collective_s(hw, algorithm, m.op, m.size_bytes, m.gpus,
                                 min(hw.gpus_per_node, m.gpus)) + m.extra_s  # fmt: skip


def measured_over_simulated(hw: HardwareProfile, algorithm: str,
                            tests: Sequence[Measured]) -> float:  # fmt: skip
    """The geometric mean over ``tests`` of measured time / simtrain's on ``hw``: above 1 the
    measurements ran slower than ``hw``'s links would."""
    return math.exp(sum(math.log(measured_time_s(m) / simulated_time_s(hw, algorithm, m))
                        for m in tests) / len(tests))  # fmt: skip


def link_slowdown(hw: HardwareProfile, link: str, algorithm: str,
                  tests: Sequence[Measured]) -> float:  # fmt: skip
    """k of ``link`` ("network" or "node") from ``tests``: the geometric mean of their time
    ratios measured / simtrain's on ``hw`` with the link k times slower is 1. The ratio falls
    with k (rate / k, latency · k lengthen every collective), so k is bisected on log k within
    :data:`K_BOUNDS`; a ValueError when the tests lie outside them (no scaling of the link
    reproduces them: faster than the links allow, or slower than any link)."""
    scaled = _SCALERS[link]

    def log_ratio(log_k: float) -> float:
        return math.log(measured_over_simulated(scaled(hw, math.exp(log_k)), algorithm, tests))

    lo, hi = math.log(K_BOUNDS[0]), math.log(K_BOUNDS[1])
    if log_ratio(lo) < 0 or log_ratio(hi) > 0:
        raise ValueError(f"{'; '.join(map(str, tests))}: beyond what scaling {hw.name}'s {link} "
                         f"link within k {K_BOUNDS[0]:g}-{K_BOUNDS[1]:g} reproduces")  # fmt: skip
    for _ in range(_STEPS):
        mid = (lo + hi) / 2
        r = log_ratio(mid)
        if abs(r) < 1e-13:
            return math.exp(mid)
        lo, hi = (mid, hi) if r > 0 else (lo, mid)
    return math.exp((lo + hi) / 2)


def by_link(hw: HardwareProfile, tests: Sequence[Measured]) -> dict[str, list[Measured]]:
    """``tests`` by the link each measures (:func:`link_of`): "node" first, then "network", the
    order :func:`fit_links` fits them in; a test over one GPU measures no link."""
    out: dict[str, list[Measured]] = {"node": [], "network": []}
    for m in tests:
        if m.gpus > 1:
            out[link_of(hw, m.gpus)].append(m)
    return out


def fit_links(hw: HardwareProfile, algorithm: str,
              tests: Sequence[Measured]) -> tuple[HardwareProfile, dict[str, float]]:  # fmt: skip
    """``hw`` with its links fitted to ``tests``: the node's (the tests within one NVLink
    domain) first, then the network's on the node-fitted profile (a ring across nodes runs at
    min(NVLink, the node's NICs)); the k of each link fitted. A ValueError as
    :func:`link_of` and :func:`link_slowdown` raise it."""
    ks: dict[str, float] = {}
    for link, mine in by_link(hw, tests).items():
        if mine:
            ks[link] = link_slowdown(hw, link, algorithm, mine)
            hw = _SCALERS[link](hw, ks[link])
    return hw, ks
