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

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from simtrain.costs.link_fit import (
    MAX_BUSBW_GB_PER_S,
    MAX_SIZE_BYTES,
    Measured,
    by_link,
    fit_links,
    list_collective_copy_s,
    measured_over_simulated,
    measured_time_s,
)
from simtrain.spec.hardware import HardwareProfile
from simtrain.spec.limits import MAX_GPUS
from simtrain.spec.scenario import Scenario

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
#: nanotron measure_bandwidth's timed region, for each collective and group (67c5ebb6
#: trainer.py l.1131-1139, likewise l.1148-1219): ``tic``, 10 calls ("iters = 10"),
#: ``torch.cuda.synchronize()``, ``dist.barrier(group=...)``, ``toc``; the bus bandwidth is
#: factor x S x 10 / (toc - tic). The barrier is one collective more for the host to issue.
TEST_CALLS = 10
TEST_BARRIERS = 1
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


def measurements(hw: HardwareProfile, net: JobNetwork) -> list[Measured]:
    """The job's tests as ``link_fit`` measurements, each with the copy in its timing: the node
    test over one node's GPUs (its own count, else the node's or the job's when smaller), the
    job-wide one over the job's GPUs, unless that is one node and the node test is there."""
    copy_s = list_collective_copy_s(hw, net.size_bytes)
    tests = []
    if net.node is not None:
        jobs = net.world.gpus if net.world is not None else hw.gpus_per_node
        gpus = net.node.gpus or min(hw.gpus_per_node, jobs)
        tests.append((gpus, net.node))
    if net.world is not None and not (net.node is not None
                                      and net.world.gpus <= hw.gpus_per_node):  # fmt: skip
        tests.append((net.world.gpus, net.world))
    return [Measured(op, gpus, net.size_bytes, b, copy_s)
            for gpus, test in tests for op, b in sorted(test.busbw_bytes_per_s.items())]  # fmt: skip


@dataclass(frozen=True, slots=True)
class JobLinks:
    """A job's links as its tests give them: the profile with its links fitted, the assumption
    lines that say so, and the host's per-rank cost of issuing a collective (microseconds; 0
    where the tests show none)."""

    hardware: HardwareProfile
    notes: list[str]
    collective_issue_us_per_rank: float = 0.0

    def on(self, sc: Scenario) -> Scenario:
        """``sc`` on these links, with this issue cost in its runtime (where it has one)."""
        sc = replace(sc, hardware=self.hardware)
        if self.collective_issue_us_per_rank:
            rt = replace(sc.runtime, collective_issue_us_per_rank=self.collective_issue_us_per_rank)
            sc = replace(sc, runtime_profile=rt)
        return sc


def job_hardware(hw: HardwareProfile, algorithm: str, net: JobNetwork,
                 issue_applies: bool = True) -> JobLinks:  # fmt: skip
    """``hw`` on the job's own links and the assumption lines that say so; a ValueError naming
    the section when a test cannot be reproduced. ``issue_applies`` false (a runtime that
    replays CUDA graphs, whose host issues no collective): every test fits its link.

    The node's link is fitted first (``link_fit.fit_links``). A job-wide test across nodes that
    ran slower than the node-fitted profile's links would run it is read as the host's cost of
    issuing a collective, per rank (:func:`issue_cost_us_per_rank`), the links kept; one that
    ran faster fits the network's link (k < 1: a job faster than the cluster's mean, which the
    profile is). Why (runtimes/nanotron.yaml [ppfix] / [issue], figures printed by
    benchmarks/playbook_csv_rows.py): over the Ultra-Scale Playbook sweep the jobs slower
    than the profile took a time proportional to their GPUs from 32 to 512 GPUs (bus
    bandwidth x nodes constant), a cost per rank, not a link's rate (a ring's bus bandwidth
    does not fall as 1/n), and their blocks' TP collectives lose a cost of that order per
    rank, which their node's 1 GiB test barely shows (the GPU's time hides the host's). A
    single test cannot tell a slow host from a slow link: this is the rule, and jobs near the
    profile are where it errs (some slow-kind jobs on 2-8 nodes test no slower than the
    node-fitted profile: read as links); the reading jumps there (0.1 % slower: 0.33 ms a rank
    at 16 GPUs to 0.14 at 512; 0.1 % faster: none; tests/test_collective_issue.py). ``simtrain fit-network``
    reads a slow nccl-tests log as a slow link, by design (``apps.network_fit``)."""
    tests = measurements(hw, net)
    try:
        tests_of = by_link(hw, tests)
        node, world = tests_of["node"], tests_of["network"]
        fitted, ks = fit_links(hw, algorithm, node)
        issue_us = (issue_cost_us_per_rank(fitted, algorithm, world)
                    if world and issue_applies else 0.0)  # fmt: skip
        if world and not issue_us:
            fitted, net_k = fit_links(fitted, algorithm, world)
            ks.update(net_k)
    except ValueError as exc:
        raise ValueError(f"hardware.{KEY}: {exc}") from None
    size = f"{net.size_bytes / 2**30:.3g} GiB"
    what = {"node": ("intra-node link: the job's own test", "NVLink rate", "latency"),
            "network": ("network: the job's own bandwidth test", "inter-node NIC rate",
                        "per-step latency")}  # fmt: skip

    def figures(mine: list[Measured]) -> str:
        return ", ".join(f"{m.op.replace('_', '-')} {m.busbw_bytes_per_s / 1e9:.1f}"
                         for m in mine)  # fmt: skip

    notes = []
    for link, k in ks.items():
        mine = node if link == "node" else world
        head, rate, latency = what[link]
        notes.append(f"{head} ({figures(mine)} GB/s bus bandwidth, {size} over {mine[0].gpus} "
                     f"GPUs; nanotron measure_bandwidth): {hw.name}'s {rate} / {k:.2f} and "
                     f"{latency} x {k:.2f}, which reproduce it")  # fmt: skip
    if issue_us:
        notes.append(f"collective issue: the job's own bandwidth test ({figures(world)} GB/s bus "
                     f"bandwidth, {size} over {world[0].gpus} GPUs) ran slower than "
                     f"{fitted.name}'s links: {issue_us:.0f} us per rank to issue each "
                     "collective (runtime collective_issue_us_per_rank), which reproduces it")  # fmt: skip
    return JobLinks(fitted, notes, issue_us)


def issue_cost_us_per_rank(hw: HardwareProfile, algorithm: str,
                           tests: list[Measured]) -> float:  # fmt: skip
    """The host's cost per rank of issuing a collective that makes ``tests`` (over whole nodes)
    take their measured time on ``hw``'s links, in microseconds; 0 when they ran no slower
    than those links (a host that runs ahead of the GPU costs nothing while the GPU is the
    slower side). The benchmark issues its :data:`TEST_CALLS` collectives back to back, so each
    takes the longer of the GPU's time and the host's, n x the cost per rank
    (costs.host.collective_issue_ns), and its timed region ends with a barrier, one collective
    more to issue (:data:`TEST_BARRIERS`): the region, TEST_CALLS x the measured time t, is
    (TEST_CALLS + TEST_BARRIERS) x n x the cost, which is 10 t / (11 n), in the geometric mean
    over the tests (the last call's GPU time after its issue is left out: under 1/11 of one
    call's time when the host is the slower side)."""
    if measured_over_simulated(hw, algorithm, tests) <= 1:
        return 0.0
    issues = TEST_CALLS + TEST_BARRIERS
    per_rank = [TEST_CALLS * measured_time_s(m) / (issues * m.gpus) for m in tests]
    return 1e6 * math.exp(sum(map(math.log, per_rank)) / len(per_rank))
