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
'ReduceScatter (GB/s)'). It measures the same three over the GPUs of one node (``local_pg``: the intra-node link;
l.1093, 1110, 1177-1223), logged as 'AR / AG / RS Intra-node (GB/s)'. A record that carries them
is simulated on its hardware profile with each link k times slower (intra-node: NVLink rate / k
and latency · k; inter-node: NIC rate / k and per-step latency · k), where

    k: the factor at which simtrain's time of the same test on the scaled profile (the
       collective of S over the job's GPUs under the runtime's algorithm choice, plus the
       S-byte device copy torch's list-form collectives add: :func:`list_collective_copy_s`) equals the
       measured time, factor · S / bus bandwidth,

over the ring collectives the record gives (the geometric mean of their time ratios is 1;
all-gather and reduce-scatter: NCCL runs them only as rings, NVIDIA/nccl #545, so they measure
the ring the profile's NIC rate and latency were fitted on; the all-reduce, whose tree /
NVLS-tree choice is not a ring, is kept in the record for reference and not used). Scaling the
rate and the latency together scales every multi-node ring's time by exactly k; the copy and
NCCL's fixed base latencies do not scale, so k is found by fixed-point steps. A single test
cannot split rate from latency. Only the network changes: no throughput or memory of the run is
read. The node's link is solved first, then the network's on the node-scaled profile (a ring
across nodes runs at min(NVLink, 8 NICs)); a job inside one node has no network to solve (its
job-wide test measured NVLink: the node's figures are used, or the job-wide ones when absent).
The node test is node 0's only (rank 0 logs it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from simtrain.costs.collectives import bus_factor
from simtrain.costs.compute import memory_bound_ns
from simtrain.costs.group_comm import hardware_collective_s
from simtrain.spec.hardware import HardwareProfile

#: the record's key (in its ``hardware`` section)
KEY = "network_measured"
#: the ring collectives k is taken from: record key -> collective (job-wide test; the node
#: test's keys are these with the prefix ``intra_node_``)
RING_KEYS = {"all_gather_busbw_gb_per_s": "all_gather",
             "reduce_scatter_busbw_gb_per_s": "reduce_scatter"}  # fmt: skip
NODE = "intra_node_"
#: every key the section may hold (the all-reduces are kept for reference, not used)
ALLOWED = (*RING_KEYS, "all_reduce_busbw_gb_per_s", "gpus",
           *(NODE + k for k in (*RING_KEYS, "all_reduce_busbw_gb_per_s", "gpus")),
           "size_bytes")  # fmt: skip
#: refinement steps of :func:`_solve` (the ring needs a few; the copy slows convergence)
_REFINE_STEPS = 40
#: the k it returns: a test faster than the links allow (a ring through the NICs is capped by
#: NVLink) or slower than any link would run k to 0 or infinity; the sweep's are 0.71-9.0
#: (network) and 1.2-9.7 (NVLink) over its CSV's completed runs
K_BOUNDS = (1e-2, 1e3)


@dataclass(frozen=True, slots=True)
class LinkTest:
    """The bus bandwidths (bytes/s) one test measured over ``gpus`` GPUs (None: one node's)."""

    busbw_bytes_per_s: Mapping[str, float]  # collective -> measured bus bandwidth
    gpus: int | None


@dataclass(frozen=True, slots=True)
class JobNetwork:
    """A job's bandwidth tests of ``size_bytes``: over all its GPUs and over one node's."""

    size_bytes: int
    world: LinkTest | None
    node: LinkTest | None


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
    for key in ("size_bytes", "gpus", NODE + "gpus"):
        v = sec.get(key)
        if key in sec and not isinstance(v, int):
            raise ValueError(f"hardware.{KEY}.{key}: a positive integer is needed, not {v!r}")
    if "size_bytes" not in sec:
        raise ValueError(f"hardware.{KEY}.size_bytes: the tests' message size is needed")

    def test(prefix: str, gpus: int | None) -> LinkTest | None:
        ring = {op: float(sec[prefix + key]) * 1e9 for key, op in RING_KEYS.items()
                if prefix + key in sec}  # fmt: skip
        return LinkTest(ring, gpus) if ring else None

    gpus = sec.get("gpus", num_gpus)
    world, node = test("", gpus), test(NODE, sec.get(NODE + "gpus"))
    if world is None and node is None:
        raise ValueError(f"hardware.{KEY}: needs {' or '.join(RING_KEYS)} (or their "
                         f"{NODE} forms): the ring collectives k is taken from")  # fmt: skip
    if world is not None and (not isinstance(gpus, int) or gpus < 1):
        raise ValueError(f"hardware.{KEY}.gpus: a positive integer is needed, not {gpus!r} "
                         "(hardware.num_gpus is its default)")  # fmt: skip
    return JobNetwork(int(sec["size_bytes"]), world, node)


def list_collective_copy_s(hw: HardwareProfile, size_bytes: int) -> float:
    """The device copy inside the test's timing: torch's list-form ``all_gather`` /
    ``reduce_scatter`` (which ``measure_bandwidth`` calls) gather into / reduce from one flat
    buffer and copy the S bytes out of / into the list on the NCCL stream, after / before the
    collective (PyTorch ``ProcessGroupNCCL::allgather``: "Copy the flattened output tensors to
    the outputs"; ``::reduce_scatter``: "Copy the input tensors to the flattened inputs"):
    S read + S written at the profile's memory-bound rate (1 GiB on an H100: 0.80 ms)."""
    return memory_bound_ns(2 * size_bytes, hw) / 1e9


def with_network_slowdown(hw: HardwareProfile, k: float) -> HardwareProfile:
    """``hw`` with its inter-node link k times slower: NIC rate / k, per-step latency · k."""
    return replace(hw, nic_bandwidth_bytes_per_s=hw.nic_bandwidth_bytes_per_s / k,
                   inter_node_latency_s=hw.inter_node_latency_s * k)  # fmt: skip


def with_node_slowdown(hw: HardwareProfile, k: float) -> HardwareProfile:
    """``hw`` with its intra-node link k times slower: NVLink rate / k, latency · k."""
    return replace(hw, intra_node_bandwidth_bytes_per_s=hw.intra_node_bandwidth_bytes_per_s / k,
                   intra_node_latency_s=hw.intra_node_latency_s * k)  # fmt: skip


def _solve(hw: HardwareProfile, scaled: Callable[[HardwareProfile, float], HardwareProfile],
           algorithm: str, test: LinkTest, gpus: int, size: int) -> float:  # fmt: skip
    """k at which simtrain's time of ``test`` (collective + copy) on ``scaled(hw, k)`` equals
    the measured, in the geometric mean over its collectives: fixed-point steps k <- k · ratio,
    within :data:`K_BOUNDS`."""
    g = min(hw.gpus_per_node, gpus)
    copy_s = list_collective_copy_s(hw, size)

    def ratio(k: float) -> float:  # the measured test's time / simtrain's on hw scaled by k
        slow = scaled(hw, k)
        logs = [math.log(bus_factor(op, gpus) * size / measured
                         / (hardware_collective_s(slow, algorithm, op, size, gpus, g) + copy_s))
                for op, measured in sorted(test.busbw_bytes_per_s.items())]  # fmt: skip
        return math.exp(sum(logs) / len(logs))

    k = 1.0
    for _ in range(_REFINE_STEPS):
        r = ratio(k)
        k_next = min(max(k * r, K_BOUNDS[0]), K_BOUNDS[1])
        if abs(math.log(r)) < 1e-12 or k_next == k:
            break
        k = k_next
    return k


def node_slowdown(hw: HardwareProfile, algorithm: str, net: JobNetwork) -> float | None:
    """k of the intra-node link: from the node test, or from the job-wide one when the job is
    one node (None: neither)."""
    test = net.node
    if test is None and net.world is not None and net.world.gpus <= hw.gpus_per_node:
        test = net.world
    if test is None:
        return None
    gpus = test.gpus or min(hw.gpus_per_node, net.world.gpus if net.world else hw.gpus_per_node)
    return (
        _solve(hw, with_node_slowdown, algorithm, test, gpus, net.size_bytes) if gpus > 1 else None
    )


def network_slowdown(hw: HardwareProfile, algorithm: str, net: JobNetwork) -> float | None:
    """k of the inter-node link (on ``hw`` as given: pass the node-scaled profile); None when
    the job-wide test fits in one node or is absent."""
    if net.world is None or net.world.gpus <= hw.gpus_per_node:
        return None
    return _solve(hw, with_network_slowdown, algorithm, net.world, net.world.gpus, net.size_bytes)


def job_hardware(hw: HardwareProfile, algorithm: str,
                 net: JobNetwork) -> tuple[HardwareProfile, list[str]]:  # fmt: skip
    """``hw`` on the job's own links (the node's first, then the network's on it) and the
    assumption lines that say so."""
    notes = []
    k_node = node_slowdown(hw, algorithm, net)
    if k_node is not None:
        test = net.node or net.world
        notes.append(f"intra-node link: the job's own test ({_figures(test)} GB/s bus bandwidth, "
                     f"{net.size_bytes / 2**30:.3g} GiB over one node; nanotron "
                     f"measure_bandwidth): {hw.name}'s NVLink rate / {k_node:.2f} and latency "
                     f"x {k_node:.2f}, which reproduce it")  # fmt: skip
        hw = with_node_slowdown(hw, k_node)
    k_net = network_slowdown(hw, algorithm, net)
    if k_net is not None:
        notes.append(f"network: the job's own bandwidth test ({_figures(net.world)} GB/s bus "
                     f"bandwidth, {net.size_bytes / 2**30:.3g} GiB over {net.world.gpus} GPUs; "
                     f"nanotron measure_bandwidth): {hw.name}'s inter-node NIC rate / "
                     f"{k_net:.2f} and per-step latency x {k_net:.2f}, which reproduce it")  # fmt: skip
        hw = with_network_slowdown(hw, k_net)
    return hw, notes


def _figures(test: LinkTest) -> str:
    return ", ".join(f"{op.replace('_', '-')} {b / 1e9:.1f}"
                     for op, b in sorted(test.busbw_bytes_per_s.items()))  # fmt: skip
