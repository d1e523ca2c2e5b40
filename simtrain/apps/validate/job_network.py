"""A record's network as its own job measured it (``hardware.network_measured``).

One cluster is not one network: the Ultra-Scale Playbook sweep's jobs, all on the same AWS EFA
cluster, measured their own all-gather bus bandwidth over the job's GPUs up to 12x apart for the
same node count (32 nodes: 6.4-79 GB/s; 64 nodes: 5.8-46), and 24 of them their node's NVLink at
41 GB/s instead of ~240-263. The EFA profile is fitted to the mean of these tests (its [usp]
table); a job far from the mean ran on other links.

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
       S-byte device copy torch's list-form collectives add: ``link_fit.list_collective_copy_s``) equals the
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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from simtrain.costs.link_fit import (
    MAX_BUSBW_GB_PER_S,
    MAX_SIZE_BYTES,
    link_slowdown,
    list_collective_copy_s,
    with_network_slowdown,
    with_node_slowdown,
)
from simtrain.spec.hardware import HardwareProfile

#: the record's key (in its ``hardware`` section)
KEY = "network_measured"
#: the ring collectives k is taken from: record key -> collective (job-wide test; the node
#: test's keys are these with the prefix ``intra_node_``)
RING_KEYS = {"all_gather_busbw_gb_per_s": "all_gather",
             "reduce_scatter_busbw_gb_per_s": "reduce_scatter"}  # fmt: skip
NODE = "intra_node_"
#: nanotron's test message: "size = 256 * 1024 * 1024  # Number of elements" of fp32
#: (measure_bandwidth, 67c5ebb6 trainer.py l.1086-1089), the size_bytes of the sweep's records
NANOTRON_TEST_BYTES = 256 * 2**20 * 4
#: the GPUs of a test at most (the busbw and message bounds are link_fit's)
MAX_GPUS = 1 << 20
#: every key the section may hold (the all-reduces are kept for reference, not used)
ALLOWED = (*RING_KEYS, "all_reduce_busbw_gb_per_s", "gpus",
           *(NODE + k for k in (*RING_KEYS, "all_reduce_busbw_gb_per_s", "gpus")),
           "size_bytes")  # fmt: skip


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
        integer = key in ("size_bytes", "gpus", NODE + "gpus")
        top = MAX_SIZE_BYTES if key == "size_bytes" else MAX_GPUS if integer else MAX_BUSBW_GB_PER_S
        if (isinstance(v, bool) or not isinstance(v, int if integer else int | float)
                or not (0 < v <= top)):  # fmt: skip
            what = "an integer" if integer else "a number"
            raise ValueError(f"hardware.{KEY}.{key}: must be {what} in (0, {top:g}], not {v!r}")
    if "size_bytes" not in sec:
        raise ValueError(f"hardware.{KEY}.size_bytes: the tests' message size is needed")

    def test(prefix: str, gpus: int | None) -> LinkTest | None:
        ring = {op: float(sec[prefix + key]) * 1e9 for key, op in RING_KEYS.items()
                if prefix + key in sec}  # fmt: skip
        return LinkTest(ring, gpus) if ring else None

    gpus = sec.get("gpus", num_gpus)
    world, node = test("", gpus), test(NODE, sec.get(NODE + "gpus"))
    if not has_ring_test(sec):
        raise ValueError(f"hardware.{KEY}: needs {' or '.join(RING_KEYS)} (or their "
                         f"{NODE} forms): the ring collectives k is taken from")  # fmt: skip
    if world is not None and (not isinstance(gpus, int) or gpus < 1):
        raise ValueError(f"hardware.{KEY}.gpus: a positive integer is needed, not {gpus!r} "
                         "(hardware.num_gpus is its default)")  # fmt: skip
    return JobNetwork(int(sec["size_bytes"]), world, node)


def has_ring_test(section: Mapping[str, Any]) -> bool:
    """Does a ``network_measured`` section hold a ring collective (job-wide or node) that k
    can be taken from (:data:`RING_KEYS`)?"""
    return any(key.removeprefix(NODE) in RING_KEYS for key in section)


def node_slowdown(hw: HardwareProfile, algorithm: str, net: JobNetwork) -> float | None:
    """k of the intra-node link: from the node test, or from the job-wide one when the job is
    one node (None: neither)."""
    test = net.node
    if test is None and net.world is not None and net.world.gpus <= hw.gpus_per_node:
        test = net.world
    if test is None:
        return None
    gpus = test.gpus or min(hw.gpus_per_node, net.world.gpus if net.world else hw.gpus_per_node)
    if gpus <= 1:
        return None
    return link_slowdown(hw, "node", algorithm, test.busbw_bytes_per_s, gpus, net.size_bytes,
                         list_collective_copy_s(hw, net.size_bytes))  # fmt: skip


def network_slowdown(hw: HardwareProfile, algorithm: str, net: JobNetwork) -> float | None:
    """k of the inter-node link (on ``hw`` as given: pass the node-scaled profile); None when
    the job-wide test fits in one node or is absent."""
    if net.world is None or net.world.gpus <= hw.gpus_per_node:
        return None
    return link_slowdown(hw, "network", algorithm, net.world.busbw_bytes_per_s, net.world.gpus,
                         net.size_bytes, list_collective_copy_s(hw, net.size_bytes))  # fmt: skip


def job_hardware(hw: HardwareProfile, algorithm: str,
                 net: JobNetwork) -> tuple[HardwareProfile, list[str]]:  # fmt: skip
    """``hw`` on the job's own links (the node's first, then the network's on it) and the
    assumption lines that say so; a ValueError when a test cannot be reproduced."""
    notes = []
    try:
        k_node = node_slowdown(hw, algorithm, net)
    except ValueError as exc:
        raise ValueError(f"hardware.{KEY}: the intra-node test: {exc}") from None
    if k_node is not None:
        test = net.node or net.world
        notes.append(f"intra-node link: the job's own test ({_figures(test)} GB/s bus bandwidth, "
                     f"{net.size_bytes / 2**30:.3g} GiB over one node; nanotron "
                     f"measure_bandwidth): {hw.name}'s NVLink rate / {k_node:.2f} and latency "
                     f"x {k_node:.2f}, which reproduce it")  # fmt: skip
        hw = with_node_slowdown(hw, k_node)
    try:
        k_net = network_slowdown(hw, algorithm, net)
    except ValueError as exc:
        raise ValueError(f"hardware.{KEY}: the job-wide test: {exc}") from None
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
