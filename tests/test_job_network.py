"""simtrain/apps/validate/job_network.py: a record simulated on the network its own job measured
(``hardware.network_measured``), checked against the ring's closed form and the sweep's CSV."""

from __future__ import annotations

import math

import pytest

from simtrain.apps.validate.job_network import (
    JobNetwork,
    LinkTest,
    job_hardware,
    measurements,
    read_job_network,
)
from simtrain.apps.validate.records import SkipReason
from simtrain.apps.validate.translate import translate
from simtrain.costs.collectives import nccl_bus_bandwidth
from simtrain.costs.group_comm import hardware_collective_s
from simtrain.costs.link_fit import (
    K_BOUNDS,
    by_link,
    link_slowdown,
    list_collective_copy_s,
    with_network_slowdown,
)
from simtrain.spec.hardware import load_hardware

GIB = 2**30


def _slowdown(hw, algorithm: str, net: JobNetwork, link: str) -> float | None:
    """k of ``link`` from the job's tests of it on ``hw`` as given (None: no test of it)."""
    mine = by_link(hw, measurements(hw, net))[link]
    return link_slowdown(hw, link, algorithm, mine) if mine else None


def node_slowdown(hw, algorithm: str, net: JobNetwork) -> float | None:
    return _slowdown(hw, algorithm, net, "node")


def network_slowdown(hw, algorithm: str, net: JobNetwork) -> float | None:
    return _slowdown(hw, algorithm, net, "network")


def _world(busbw: dict, n: int) -> JobNetwork:
    """A job-wide test only (no node test)."""
    return JobNetwork(GIB, LinkTest(busbw, n), None)


@pytest.fixture(scope="module")
def efa():
    return load_hardware("h100_sxm5_80gb_efa")


def _closed_form_busbw(hw, n: int) -> float:
    """The EFA profile's own statement of its ring ([fit] in hardware/h100_sxm5_80gb_efa.yaml):
    busbw = 1 / (1/B_ring + n·α/S), B_ring = 8 GPUs x NIC x efficiency.collective."""
    b_ring = 8 * hw.nic_bandwidth_bytes_per_s * hw.efficiency.collective
    return 1 / (1 / b_ring + n * hw.inter_node_latency_s / GIB)


@pytest.mark.parametrize("n", [16, 128, 512])
@pytest.mark.parametrize("k", [1.5, 3.0, 7.0])
def test_slowdown_against_the_rings_closed_form(efa, n: int, k: float) -> None:
    """A test that took k x the closed-form ring time: its collective took that minus the
    1 GiB copy (S read + S written at the memory-bound rate), so the network is
    (k·t − copy) / t slower; the scaled profile reproduces the measured time for both ring
    collectives."""
    copy = 2 * GIB / (efa.hbm_bandwidth_bytes_per_s * efa.efficiency.memory_bound)
    assert list_collective_copy_s(efa, GIB) == pytest.approx(copy, rel=1e-6)
    assert 0.7e-3 < copy < 0.9e-3  # 1 GiB on an H100: 0.80 ms
    t_ring = (n - 1) / n * GIB / _closed_form_busbw(efa, n)
    measured = (n - 1) / n * GIB / (k * t_ring)  # bus bandwidth
    want = (k * t_ring - copy) / t_ring
    net = _world({"all_gather": measured, "reduce_scatter": measured}, n)
    assert network_slowdown(efa, "ring", net) == pytest.approx(want, rel=1e-9)
    # NCCL's model of the same ring adds its own fixed base latencies: k within 0.5 %
    got = network_slowdown(efa, "nccl", net)
    assert got == pytest.approx(want, rel=5e-3) and got != pytest.approx(want, rel=1e-9)
    slow = with_network_slowdown(efa, got)
    for op in ("all_gather", "reduce_scatter"):
        t = hardware_collective_s(slow, "nccl", op, GIB, n, 8) + copy
        assert nccl_bus_bandwidth(op, GIB, n, t) == pytest.approx(measured, rel=1e-9)
    # only the inter-node link moves: NVLink, compute and memory are the profile's
    assert slow.intra_node_bandwidth_bytes_per_s == efa.intra_node_bandwidth_bytes_per_s
    assert slow.memory_bytes == efa.memory_bytes and slow.peak_flops_per_s == efa.peak_flops_per_s


def test_a_test_no_scaling_reproduces_is_an_error(efa) -> None:
    """A ring through the NICs cannot beat NVLink (B_ring = min(B_intra, 8·NIC)): a measured
    bus bandwidth above that cap would run k to 0, one of 1 kB/s to infinity; k stops at 1/100
    or 1,000 (the sweep's k: 0.18-9.7) and the fit is refused, naming the figure."""
    assert K_BOUNDS == (1e-2, 1e3)
    for busbw, algorithm in ((2e12, "ring"), (1e3, "nccl")):
        with pytest.raises(ValueError, match="beyond what scaling h100_sxm5_80gb_efa's network"):
            network_slowdown(efa, algorithm, _world({"all_gather": busbw}, 16))
    # just inside: a network 900x slower than the profile's mean is fitted, not refused
    n, copy = 16, list_collective_copy_s(efa, GIB)
    t = (n - 1) / n * GIB / _closed_form_busbw(efa, n)
    slow = _world({"all_gather": (n - 1) / n * GIB / (900 * t + copy)}, n)
    assert network_slowdown(efa, "ring", slow) == pytest.approx(900, rel=1e-6)


def test_geometric_mean_of_the_ring_collectives(efa) -> None:
    """Two tests k_a and k_b times the ring's time (copy included): the time ratios' geometric
    mean is 1 at the k found."""
    n, copy = 64, list_collective_copy_s(efa, GIB)
    t_ring = (n - 1) / n * GIB / _closed_form_busbw(efa, n)
    t_a, t_b = 2 * t_ring + copy, 8 * t_ring + copy
    net = _world({"all_gather": (n - 1) / n * GIB / t_a,
                  "reduce_scatter": (n - 1) / n * GIB / t_b}, n)  # fmt: skip
    k = network_slowdown(efa, "ring", net)
    t_k = k * t_ring + copy
    assert math.log(t_a / t_k) + math.log(t_b / t_k) == pytest.approx(0, abs=1e-9)
    assert 3.5 < k < 4.5  # near sqrt(2 x 8)


def test_a_test_inside_one_node_keeps_the_profile(efa) -> None:
    net = _world({"all_gather": 50e9}, 8)
    assert network_slowdown(efa, "nccl", net) is None
    # a one-node job's test measured its NVLink: that link is solved from it
    k = node_slowdown(efa, "nccl", net)
    assert k is not None and k > 1
    links = job_hardware(efa, "nccl", net)
    hw, notes = links.hardware, links.notes
    assert links.collective_issue_us_per_rank == 0  # no test across nodes
    assert hw.nic_bandwidth_bytes_per_s == efa.nic_bandwidth_bytes_per_s
    assert hw.intra_node_bandwidth_bytes_per_s == pytest.approx(
        efa.intra_node_bandwidth_bytes_per_s / k
    )
    assert len(notes) == 1 and notes[0].startswith("intra-node link")


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ("fast", "a mapping"),
        ({"all_gather_busbw_gb_per_s": -3, "size_bytes": GIB}, "must be a number in (0, 100000]"),
        ({"all_gather_busbw_gb_per_s": True, "size_bytes": GIB}, "must be a number"),
        ({"all_gather_busbw_gb_per_s": "13", "size_bytes": GIB}, "must be a number"),
        ({"all_gather_busbw_gb_per_s": float("nan"), "size_bytes": GIB}, "must be a number"),
        ({"all_gather_busbw_gb_per_s": 1e300, "size_bytes": GIB}, "must be a number"),
        ({"all_gather_busbw_gb_per_s": 10**400, "size_bytes": GIB}, "must be a number"),
        ({"all_gather_busbw_gb_per_s": 13.0, "size_bytes": 10**400}, "size_bytes: must be an"),
        ({"allgather": 13.0, "size_bytes": GIB}, "unknown key; allowed: all_gather_busbw"),
        ({"all_reduce_busbw_gb_per_s": 13.0, "size_bytes": GIB}, "needs all_gather_busbw"),
        ({"all_gather_busbw_gb_per_s": 13.0}, "size_bytes: the tests' message size"),
        ({"intra_node_gpus": 7.5, "size_bytes": GIB}, "intra_node_gpus: must be an integer"),
        ({"all_gather_busbw_gb_per_s": 13.0, "size_bytes": 2.5e9}, "size_bytes: must be an"),
    ],
)
def test_bad_sections_name_the_key(section, says: str) -> None:
    with pytest.raises(ValueError, match="hardware.network_measured") as exc:
        read_job_network({"network_measured": section}, 64)
    assert says in str(exc.value)


def test_a_bad_section_is_a_skip_naming_it(published_records: dict) -> None:
    from dataclasses import replace

    rec = published_records["usp_1B_n16_dp8_tp8_pp2_mbs1_ga32_z1"]
    bad = replace(rec, hardware={**rec.hardware, "network_measured": {"allgather": 1}})
    got = translate(bad)
    assert isinstance(got, SkipReason) and "network_measured.allgather" in got.reason


def test_a_test_no_scaling_reproduces_is_a_skip(published_records: dict) -> None:
    """A test faster than the links allow (k would stop at its bound) is the record's error,
    a skip naming it, never a note that claims to reproduce it."""
    from dataclasses import replace

    rec = published_records["usp_1B_n16_dp8_tp8_pp2_mbs1_ga32_z1"]
    sec = {**rec.hardware["network_measured"], "all_gather_busbw_gb_per_s": 9e4,
           "reduce_scatter_busbw_gb_per_s": 9e4}  # fmt: skip
    got = translate(replace(rec, hardware={**rec.hardware, "network_measured": sec}))
    assert isinstance(got, SkipReason) and "beyond what scaling" in got.reason


def test_the_tests_gpus_count(efa, published_records: dict) -> None:
    """``gpus`` names the test's GPUs when they are not the record's: 6.4 GB/s over 16 GPUs is a
    far slower test than over 512. Both ran slower than the profile's links, so each is read as
    the host's cost of issuing a collective, per rank (job_network.issue_cost_us_per_rank):
    10/11 of the test's time / its GPUs, (n - 1) / n x S / busbw / n."""
    from dataclasses import replace

    rec = published_records["usp_8B_n64_dp16_tp32_pp1_mbs1_ga16_z1"]
    issue = {}
    for gpus in (None, 16):
        sec = dict(rec.hardware["network_measured"])
        if gpus:
            sec["gpus"] = gpus
        tr = translate(replace(rec, hardware={**rec.hardware, "network_measured": sec}))
        assert tr.scenario.hardware.nic_bandwidth_bytes_per_s == efa.nic_bandwidth_bytes_per_s
        issue[gpus] = tr.scenario.runtime.collective_issue_us_per_rank
    sec = rec.hardware["network_measured"]
    times = [(n - 1) / n * GIB / (sec[k] * 1e9) / n
             for k in ("all_gather_busbw_gb_per_s", "reduce_scatter_busbw_gb_per_s")
             for n in (512,)]  # fmt: skip
    # the timed region: 10 calls and a barrier, 11 issues (nanotron measure_bandwidth)
    assert issue[None] == pytest.approx(1e6 * 10 / 11 * math.sqrt(times[0] * times[1]), rel=1e-12)
    assert issue[16] == pytest.approx(issue[None] * (15 / 16) / (511 / 512) * 512 / 16, rel=1e-12)


def test_gpus_default_to_the_records(published_records: dict) -> None:
    net = read_job_network({"network_measured": {"reduce_scatter_busbw_gb_per_s": 6.1,
                                                 "size_bytes": GIB}}, 512)  # fmt: skip
    assert net == JobNetwork(GIB, LinkTest({"reduce_scatter": 6.1e9}, 512), None)
    assert read_job_network({}, 512) is None


def test_the_sweeps_records_run_on_their_jobs_networks(published_records: dict) -> None:
    """Two chart records of the sweep on 64 nodes: one whose job measured a network 4x faster
    than the cluster's mean the profile is fitted to (all-gather 44.4 GB/s against 11.04: its
    link k 0.27) and one 2x slower (6.4 GB/s), read as the host's cost of issuing each
    collective: 10/11 of 1 GiB x 511/512 / 6.4 GB/s over 512 GPUs, ~0.30 ms a rank (the timed
    region holds 10 calls and a barrier), the links kept at
    the profile's; both measured their node's NVLink below the profile's ring (k 1.2-1.4); the
    notes say so and the simulated scenario follows."""
    fast = translate(published_records["usp_8B_n64_dp16_tp32_pp1_mbs1_ga16_z0"])
    slow = translate(published_records["usp_8B_n64_dp16_tp32_pp1_mbs1_ga16_z1"])
    for tr in (fast, slow):
        assert sum(a.startswith("intra-node link: the job's own test") for a in tr.assumptions) == 1
    assert sum(a.startswith("network: the job's own") for a in fast.assumptions) == 1
    assert not any(a.startswith("network: the job's own") for a in slow.assumptions)
    assert sum(a.startswith("collective issue: the job's own") for a in slow.assumptions) == 1
    assert not any(a.startswith("collective issue") for a in fast.assumptions)
    base = load_hardware("h100_sxm5_80gb_efa")
    k_fast = base.nic_bandwidth_bytes_per_s / fast.scenario.hardware.nic_bandwidth_bytes_per_s
    assert 0.2 < k_fast < 0.35
    assert fast.scenario.runtime.collective_issue_us_per_rank == 0
    assert slow.scenario.hardware.nic_bandwidth_bytes_per_s == base.nic_bandwidth_bytes_per_s
    assert slow.scenario.hardware.inter_node_latency_s == base.inter_node_latency_s
    assert 270 < slow.scenario.runtime.collective_issue_us_per_rank < 330
    for tr in (fast, slow):
        k_node = (base.intra_node_bandwidth_bytes_per_s
                  / tr.scenario.hardware.intra_node_bandwidth_bytes_per_s)  # fmt: skip
        assert 1.15 < k_node < 1.45
    # a one-node job: its job-wide test is its node's; only NVLink is solved
    one_node = translate(published_records["usp_1B_n1_dp8_tp1_pp1_mbs1_ga32_z1"])
    hw = one_node.scenario.hardware
    assert hw.nic_bandwidth_bytes_per_s == base.nic_bandwidth_bytes_per_s
    assert hw.intra_node_bandwidth_bytes_per_s < base.intra_node_bandwidth_bytes_per_s
    assert not any("own bandwidth test" in a for a in one_node.assumptions)
    assert one_node.scenario.runtime.collective_issue_us_per_rank == 0


@pytest.mark.parametrize("nodes", [2, 4, 8, 16, 32, 64])
def test_a_job_at_the_clusters_mean_runs_on_the_profile(efa, nodes: int) -> None:
    """The EFA profile is fitted to the mean of the sweep's jobs' own tests (its [usp] table,
    1 GiB with the copy): a job that measured that mean gets k within the fit's residual."""
    ag = {2: 184.61, 4: 118.97, 8: 69.00, 16: 54.97, 32: 27.97, 64: 11.04}
    rs = {2: 181.55, 4: 115.76, 8: 68.55, 16: 54.52, 32: 27.94, 64: 11.07}
    net = _world({"all_gather": ag[nodes] * 1e9, "reduce_scatter": rs[nodes] * 1e9}, 8 * nodes)
    assert 0.8 < network_slowdown(efa, "nccl", net) < 1.25


def test_a_degraded_node_is_simulated_as_measured(published_records: dict) -> None:
    """The sweep has jobs whose node test measured NVLink at a sixth of the rest (all-gather
    ~41 GB/s against ~240-263: CSV job 14098699); such a record's NVLink is that much slower."""
    from dataclasses import replace

    rec = published_records["usp_1B_n16_dp8_tp8_pp2_mbs1_ga32_z1"]
    sec = dict(rec.hardware["network_measured"])
    ok = translate(rec).scenario.hardware
    sec.update(intra_node_all_gather_busbw_gb_per_s=41.67,
               intra_node_reduce_scatter_busbw_gb_per_s=41.17)  # fmt: skip
    bad = translate(replace(rec, hardware={**rec.hardware, "network_measured": sec}))
    ratio = (
        ok.intra_node_bandwidth_bytes_per_s / bad.scenario.hardware.intra_node_bandwidth_bytes_per_s
    )
    assert 6 < ratio < 12


def test_the_sweeps_records_carry_nanotrons_test_message(published_records: dict) -> None:
    """nanotron's measure_bandwidth times 256 Mi fp32 elements: 1,073,741,824 B, the size of
    every record's test (and the one benchmarks/playbook_csv_rows.py gives each CSV row)."""
    from simtrain.apps.validate.job_network import NANOTRON_TEST_BYTES

    assert NANOTRON_TEST_BYTES == 1_073_741_824
    sizes = {r.hardware["network_measured"]["size_bytes"] for r in published_records.values()
             if "network_measured" in r.hardware}  # fmt: skip
    assert sizes == {1_073_741_824}


def test_a_test_near_the_nvlink_cap_is_reproduced(efa) -> None:
    """Near the NVLink cap (B_ring = min(B_intra, 8·NIC)) the time barely moves with the NIC:
    fixed-point steps stopped short there (+0.85 % at 16 GPUs / 300 GB/s with the copy);
    the bisection reproduces the test."""
    from simtrain.costs.link_fit import Measured, link_slowdown

    copy = list_collective_copy_s(efa, GIB)
    for gpus, busbw, extra in ((16, 300e9, copy), (32, 400e9, 0.0)):
        m = Measured("all_gather", gpus, GIB, busbw, extra)
        k = link_slowdown(efa, "network", "nccl", [m])
        t = hardware_collective_s(with_network_slowdown(efa, k), "nccl", "all_gather", GIB,
                                  gpus, 8) + extra  # fmt: skip
        assert nccl_bus_bandwidth("all_gather", GIB, gpus, t) == pytest.approx(busbw, rel=1e-9)


def test_the_network_is_fitted_on_the_node_fitted_profile(published_records: dict) -> None:
    """A ring across nodes runs at min(NVLink, the node's NICs): a job whose node measured NVLink
    at 42 GB/s (a sixth of the rest) has its network fitted on that NVLink, not the profile's."""
    rec = published_records["usp_8B_n4_dp4_tp1_pp8_mbs2_ga32_z1"]
    net = read_job_network(rec.hardware, rec.hardware["num_gpus"])
    base = load_hardware("h100_sxm5_80gb_efa")
    links = job_hardware(base, "nccl", net)
    hw, notes = links.hardware, links.notes
    k_node = base.intra_node_bandwidth_bytes_per_s / hw.intra_node_bandwidth_bytes_per_s
    k_net = base.nic_bandwidth_bytes_per_s / hw.nic_bandwidth_bytes_per_s
    assert k_node > 9
    from simtrain.costs.link_fit import with_node_slowdown

    assert k_net == pytest.approx(network_slowdown(with_node_slowdown(base, k_node), "nccl", net))
    assert abs(k_net - network_slowdown(base, "nccl", net)) > 1  # 0.28 vs 3.3 on the profile
    assert len(notes) == 2
