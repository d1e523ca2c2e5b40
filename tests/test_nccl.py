"""NCCL's algorithm/protocol choice (collectives.nccl_time_s): closed forms of NCCL's tuning
constants, properties of the choice, and the model's bus bandwidth against published nccl-tests
figures (measured/nccl_tests.yaml, 8 to 1984 GPUs)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from simtrain.costs import collectives as c
from simtrain.costs.collectives import GroupLink, NcclChoice, nccl_candidates, nccl_time_s
from simtrain.costs.link_fit import list_collective_copy_s
from simtrain.spec.hardware import available_profiles, load_hardware

GB = 1e9
MIB = 2**20
DATA = Path(__file__).resolve().parents[1] / "measured" / "nccl_tests.yaml"
RECORDS: list[dict[str, Any]] = yaml.safe_load(DATA.read_text())
TOLERANCE = 0.15  # |model/published − 1|, the same bound as test_collectives' one-node points

# aws-ofi-nccl (github.com/aws/aws-ofi-nccl src/platform-aws.cpp, commit 2daf7d303aa1) sets
# NCCL_PROTO=simple when the EFA endpoint cannot guarantee in-order 128-byte delivery ("the
# LL/LL128 protocols can lead to data corruption without data delivery ordering"). Whether the
# playbook's cluster ran LL128 is not published; the EFA points are compared with Simple only,
# and the table printed by test_published_bus_bandwidth also shows the model with every protocol.
EFA_PROTOCOLS = ("simple",)

#: Points the model misses by more than TOLERANCE, with the reason. The test asserts that each
#: one still misses (so the list stays true) and that every other point is within TOLERANCE.
_EFA_AR = (
    "EFA all-reduce, NCCL's NVLS tree with the profile's non-pipelined tree levels "
    "(hardware/h100_sxm5_80gb_efa.yaml [tree]: each of the floor(log2 N) levels pays the "
    "network term; no parameter fitted) vs the playbook's mean line, whose band is wide "
    "(64 nodes: 12-177 GB/s): +0..+13 % from 4 to 32 nodes, +73 % at 64 (the pipelined tree "
    "+93..+695 %, the ring alone -30..-71 %)"
)
_EFA_AR_2N = (
    "2-node EFA all-reduce: the NVLS tree sends S (not 2S) across 2 nodes and has one level; "
    "the mean (362 GB/s, band 302-436) is 44 % below"
)
_EFA_ONE_NODE_AG = (
    "1-node all-gather/reduce-scatter at 1 GiB, with the 1 GiB copy of torch's list-form call "
    "(timed_copy): the playbook measures 250 GB/s, nccl-tests #212 370 GB/s for the same "
    "NVSwitch node without a copy; the profile's efficiency.collective 0.93 gives 418 (ring), "
    "306 with the copy"
)
_EFA_FIT = (
    "EFA ring all-gather/reduce-scatter: the residual of the profile's least-squares fit "
    "(hardware/h100_sxm5_80gb_efa.yaml [fit]: -14..+22 %), not of the NCCL choice (ring/Simple)"
)
_H100_NVLS = (
    "8x H100 NVLS: 2(g-1)/(g+1)·0.85 = 1.32 x the ring's 418 GB/s (efficiency.collective "
    "0.93, set to hit these NVLS figures with a ring); the measured NVLS/ring ratio is "
    "480/370 = 1.30, so the NVLS formula holds and the profile's ring is 13 % fast "
    "(0.82 = 370/450 would give 488 GB/s, +1.7 %)"
)
KNOWN_MISSES: dict[str, str] = {
    "usp_all_reduce_2n": "+44.1 %: " + _EFA_AR_2N,
    "usp_all_reduce_64n": "+72.6 %: " + _EFA_AR,
    "usp_all_gather_1n": "+22.3 %: " + _EFA_ONE_NODE_AG,
    "usp_reduce_scatter_1n": "+22.3 %: " + _EFA_ONE_NODE_AG,
    "usp_all_gather_8n": "+17.2 %: " + _EFA_FIT,
    "usp_all_gather_64n": "+21.6 %: " + _EFA_FIT,
    "usp_reduce_scatter_8n": "+18.0 %: " + _EFA_FIT,
    "usp_reduce_scatter_64n": "+21.3 %: " + _EFA_FIT,
    "nccl_tests_212_h100_all_reduce_nvls": "+15.2 %: " + _H100_NVLS,
    "nccl_tests_290_h100_all_reduce_nvls": "+16.2 %: " + _H100_NVLS,
}


def links(profile: str) -> tuple[GroupLink, GroupLink, int]:
    hw = load_hardware(profile)
    intra, inter = c.node_links(hw)
    return intra, inter, hw.gpus_per_node


def model(rec: dict[str, Any], protocols: tuple[str, ...] | None = None) -> NcclChoice:
    """The simulator's collective for a published point: NCCL's choice among the algorithms
    the run allowed ([default]: those the profile lets NCCL pick), with the profile's tree."""
    intra, inter, _ = links(rec["profile"])
    hw = load_hardware(rec["profile"])
    algos = hw.nccl_algorithms or None
    if rec["algorithms"] != ["default"]:
        algos = tuple(rec["algorithms"])
    if protocols is None and rec["profile"].endswith("_efa"):
        protocols = EFA_PROTOCOLS
    choice = nccl_time_s(rec["op"], rec["size_bytes"], rec["gpus"], intra=intra, inter=inter,
                         gpus_per_node=rec["gpus_per_node"], nvls=rec["nvls"], algorithms=algos,
                         protocols=protocols, arch=rec["arch"],
                         tree_pipelined=hw.nccl_tree_pipelined)  # fmt: skip
    if rec.get("timed_copy"):  # torch's list-form collective: the S-byte copy in the timing
        copy_s = list_collective_copy_s(hw, rec["size_bytes"])
        choice = choice._replace(time_s=choice.time_s + copy_s)
    return choice


def busbw_gbps(rec: dict[str, Any], choice: NcclChoice) -> float:
    return c.nccl_bus_bandwidth(rec["op"], rec["size_bytes"], rec["gpus"], choice.time_s) / GB


# ----------------------------------------------------------------- the data file


def test_data_file_records_are_complete() -> None:
    ids = [r["id"] for r in RECORDS]
    assert len(ids) == len(set(ids))
    profiles = set(available_profiles())
    for r in RECORDS:
        assert r["op"] in ("all_reduce", "all_gather", "reduce_scatter"), r["id"]
        assert r["profile"] in profiles, r["id"]
        assert r["arch"] in c.NCCL_ARCHS, r["id"]
        assert r["source"] and r["hardware"] and r["nccl"], r["id"]
        assert r["busbw_gb_per_s"] > 0 and r["size_bytes"] > 0, r["id"]
        assert r["gpus"] % r["gpus_per_node"] == 0, r["id"]
        assert load_hardware(r["profile"]).gpus_per_node == r["gpus_per_node"], r["id"]
        if "range_gb_per_s" in r:
            lo, hi = r["range_gb_per_s"]
            assert lo <= r["busbw_gb_per_s"] <= hi, r["id"]
    for op in ("all_reduce", "all_gather", "reduce_scatter"):
        counts = {r["gpus"] for r in RECORDS if r["op"] == op}
        assert min(counts) == 8 and max(counts) >= 512, op


def test_playbook_points_are_the_ones_test_collectives_uses() -> None:
    """measured/nccl_tests.yaml and test_collectives' USP tables carry the same figures."""
    from test_collectives import USP_ALL_GATHER, USP_ALL_REDUCE, USP_REDUCE_SCATTER

    tables = {"all_reduce": USP_ALL_REDUCE, "all_gather": USP_ALL_GATHER,
              "reduce_scatter": USP_REDUCE_SCATTER}  # fmt: skip
    usp = [r for r in RECORDS if r["id"].startswith("usp_")]
    assert len(usp) == 21
    for r in usp:
        assert r["busbw_gb_per_s"] == pytest.approx(tables[r["op"]][r["gpus"] // 8], abs=0.006)


# ----------------------------------------------------------------- published bus bandwidths


def test_published_bus_bandwidth(capsys: pytest.CaptureFixture[str]) -> None:
    """Model busbw vs every published point, within TOLERANCE except the KNOWN_MISSES."""
    rows, errors = [], {}
    for r in RECORDS:
        choice = model(r)
        sim = busbw_gbps(r, choice)
        err = sim / r["busbw_gb_per_s"] - 1
        errors[r["id"]] = err
        every = model(r, protocols=tuple(c.PROTOCOLS))
        extra = ""
        if every != choice:
            extra = f"  [all protocols: {busbw_gbps(r, every):6.1f} {every[1]}/{every[2]}]"
        band = ""
        if "range_gb_per_s" in r:
            lo, hi = r["range_gb_per_s"]
            band = " in band" if lo <= sim <= hi else " OUT of band"
        rows.append(f"{r['id']:<38} {r['gpus']:>5} GPUs {r['size_bytes'] / MIB:>6.0f} MiB  "
                    f"published {r['busbw_gb_per_s']:6.1f}  model {sim:6.1f} "
                    f"{choice.algorithm}/{choice.protocol:<6} {err:+7.1%}{band}{extra}")  # fmt: skip
    with capsys.disabled():
        print("\nbusbw GB/s, nccl_time_s vs measured/nccl_tests.yaml:")
        print("\n".join(rows))
    misses = {k for k, e in errors.items() if abs(e) > TOLERANCE}
    assert misses == set(KNOWN_MISSES), sorted(misses ^ set(KNOWN_MISSES))
    for rid, why in KNOWN_MISSES.items():  # each miss is the size it says (to 0.15 points)
        assert 100 * errors[rid] == pytest.approx(float(why.split(" %")[0]), abs=0.15), rid


# ----------------------------------------------------------------- closed forms

B_INTRA, A_INTRA = 400e9, 3e-6
B_NIC, A_NIC = 40e9, 10e-6
INTRA = GroupLink(B_INTRA, A_INTRA, False)
INTER = GroupLink(B_NIC, A_NIC, True)


def one(op: str, size: float, n: int, **kw: Any) -> NcclChoice:
    return nccl_time_s(op, size, n, intra=INTRA, inter=INTER, gpus_per_node=8, **kw)


@pytest.mark.parametrize("op", ["all_reduce", "all_gather", "reduce_scatter", "broadcast"])
@pytest.mark.parametrize("n", [2, 8, 32])
def test_ring_simple_is_simtrains_ring_plus_nccls_base_latency(op: str, n: int) -> None:
    """Ring/Simple = collective_time_s's ring + baseLatencies[Ring][Simple] (8.4 us), except
    the multi-node all-reduce, whose latency NCCL multiplies by 1.4 (the ring "plateau")."""
    size = 1e8
    got = one(op, size, n, algorithms=("ring",), protocols=("simple",))
    ring = c.collective_time_s(op, size, n, intra=INTRA, inter=INTER, gpus_per_node=8)
    if op == "all_reduce" and n > 8:
        lat = c.steps(op, n) * A_NIC
        assert got.time_s == pytest.approx(ring + 0.4 * lat + 1.4 * 8.4e-6, rel=1e-12)
    else:
        assert got.time_s == pytest.approx(ring + 8.4e-6, rel=1e-12)
    assert (got.algorithm, got.protocol) == ("ring", "simple")


def test_ring_protocols_scale_bandwidth_and_latency_by_nccls_constants() -> None:
    """One node of 8: LL halves the bus bandwidth (capped at llMaxBws Hopper-N1 = 141 GB/s) and
    pays 0.6/3.4 of the Simple hop; LL128 0.92 of the bandwidth and 1.9/3.4 of the hop."""
    n, size = 8, 1e6
    factor, k = 2 * (n - 1) / n, 2 * (n - 1)
    ll = one("all_reduce", size, n, algorithms=("ring",), protocols=("ll",))
    ll128 = one("all_reduce", size, n, algorithms=("ring",), protocols=("ll128",))
    exp_ll = 6.6e-6 + k * A_INTRA * 0.6 / 3.4 + factor * size / min(0.5 * B_INTRA, 141e9)
    exp_ll128 = 14.0e-6 + k * A_INTRA * 1.9 / 3.4 + factor * size / (0.92 * B_INTRA)
    assert ll.time_s == pytest.approx(exp_ll, rel=1e-12)
    assert ll128.time_s == pytest.approx(exp_ll128, rel=1e-12)


def test_tree_all_reduce_closed_form() -> None:
    """4 nodes of 8, Simple, 1 GiB (past NCCL's correction table): base 8.4 us + 2·(7 chain
    hops of 4.0/3.4·α_intra + ⌊log2 4⌋ = 2 tree hops of α_net) + max(2S/B_intra, 2S/(8·B_nic))
    / 0.92."""
    size, n = 2**30, 32
    got = one("all_reduce", size, n, algorithms=("tree",), protocols=("simple",))
    lat = 8.4e-6 + 2 * (7 * A_INTRA * 4.0 / 3.4 + 2 * A_NIC)
    bw = max(2 * size / B_INTRA, 2 * size / (8 * B_NIC)) / 0.92
    assert got.time_s == pytest.approx(lat + bw, rel=1e-12)


def test_two_node_tree_beats_the_network_bound_as_nccl_reports() -> None:
    """On 2 nodes each node sends S, not 2S, through its NICs (NVIDIA/nccl #812, nccl-tests #22,
    #196): busbw exceeds the node's NIC bandwidth, up to twice it; not on 3+ nodes."""
    size = 2**31
    nic = 8 * B_NIC / GB
    two = one("all_reduce", size, 16, algorithms=("tree",), protocols=("simple",))
    four = one("all_reduce", size, 32, algorithms=("tree",), protocols=("simple",))
    bus2 = c.nccl_bus_bandwidth("all_reduce", size, 16, two.time_s) / GB
    bus4 = c.nccl_bus_bandwidth("all_reduce", size, 32, four.time_s) / GB
    assert nic < bus2 < 2 * nic
    assert bus4 < nic


def test_nvls_all_reduce_closed_form() -> None:
    """NVLS on one node: one hop of 25/3.4·α_intra, S·(1 + 1/g) at nvlsEfficiency (0.85 Hopper)
    of the NVLink bandwidth: busbw → 2(g−1)/(g+1)·0.85·B (1.32·B at g = 8). nccl-tests #212
    measures 480 vs 370 with the ring: 1.30."""
    size, g = 8 * 2**30, 8
    got = one("all_reduce", size, g, nvls=True, algorithms=("nvls",))
    exp = A_INTRA * 25 / 3.4 + size * (1 + 1 / g) / (0.85 * B_INTRA)
    assert got.time_s == pytest.approx(exp, rel=1e-12)
    ring = one("all_reduce", size, g, algorithms=("ring",), protocols=("simple",))
    assert ring.time_s / got.time_s == pytest.approx(2 * (g - 1) / (g + 1) * 0.85, rel=1e-3)


def test_pat_only_with_one_gpu_per_node() -> None:
    """PAT (NCCL >= 2.23) runs all-gather/reduce-scatter with one GPU per node: 8 us + 2.8 us
    per rank + ⌊log2 N⌋·α_net/3.5 + S/(0.75·B_nic)."""
    n, size = 64, 1e5
    got = nccl_time_s("all_gather", size, n, intra=INTRA, inter=INTER, gpus_per_node=1,
                      algorithms=("pat",))  # fmt: skip
    exp = (8.0 + 2.8 * n) * 1e-6 + 6 * A_NIC / 3.5 + size / (0.75 * B_NIC)
    assert got.time_s == pytest.approx(exp, rel=1e-12)
    with pytest.raises(ValueError, match="no NCCL algorithm left"):
        one("all_gather", size, n, algorithms=("pat",))


def test_tree_correction_is_nccls_table_at_powers_of_two() -> None:
    for p in c.PROTOCOLS:
        table = c.TREE_CORRECTION[p]
        assert len(table) == 24
        for k in range(c.TREE_CORRECTION_SIZES):
            assert c.tree_correction(64 * 2**k, p) == pytest.approx(table[k], abs=1e-12)
        assert c.tree_correction(64 * 2**23, p) == 1.0
        assert c.tree_correction(32, p) == 1.0


def test_tree_correction_keeps_time_increasing() -> None:
    """S/f(log2 S) increases iff f rises by less than f·ln 2 per doubling: check every segment
    of the interpolated table (tree_correction's docstring)."""
    for p in c.PROTOCOLS:
        pts = [*c.TREE_CORRECTION[p][: c.TREE_CORRECTION_SIZES], 1.0]
        for lo, hi in zip(pts, pts[1:], strict=False):
            assert hi - lo < min(lo, hi) * math.log(2), p


def test_nvls_needs_the_flag_and_a_hopper() -> None:
    size = 2**30
    assert one("all_reduce", size, 8, nvls=True).algorithm == "nvls"
    assert one("all_reduce", size, 8).algorithm != "nvls"
    assert one("all_reduce", size, 8, nvls=True, arch="ampere").algorithm != "nvls"
    algos = {x.algorithm for x in nccl_candidates("all_reduce", size, 32, intra=INTRA,
                                                  inter=INTER, gpus_per_node=8, nvls=True)}  # fmt: skip
    assert algos == {"ring", "tree", "nvls_tree"}


def test_candidates_per_op() -> None:
    def algos(op: str, n: int, g: int = 8, nvls: bool = True) -> set[str]:
        return {x.algorithm for x in nccl_candidates(op, 1e6, n, intra=INTRA, inter=INTER,
                                                     gpus_per_node=g, nvls=nvls)}  # fmt: skip

    assert algos("all_reduce", 8) == {"ring", "tree", "nvls"}
    assert algos("all_gather", 8) == {"ring", "nvls"}
    assert algos("reduce_scatter", 16) == {"ring"}
    assert algos("reduce_scatter", 16, g=1) == {"ring", "pat"}
    assert algos("broadcast", 16) == algos("reduce", 16) == {"ring"}
    assert algos("all_to_all", 16) == {"pairwise"}


def test_trivial_and_bad_input() -> None:
    assert one("all_reduce", 1e6, 1) == NcclChoice(0.0, "none", "none")
    assert one("all_reduce", 0, 8) == NcclChoice(0.0, "none", "none")
    for kw, word in (({"algorithms": ("rings",)}, "algorithm"), ({"protocols": ("ll64",)},
                     "protocol"), ({"arch": "pascal"}, "arch"), ({"cpu": "arm"}, "cpu")):  # fmt: skip
        with pytest.raises(ValueError, match=f"unknown.*{word}.*allowed"):
            one("all_reduce", 1e6, 8, **kw)
    with pytest.raises(ValueError, match="unknown collective"):
        one("allreduce", 1e6, 8)
    with pytest.raises(ValueError, match="inter-node link"):
        nccl_time_s("all_reduce", 1e6, 16, intra=INTRA, gpus_per_node=8)


# ----------------------------------------------------------------- properties

OPS = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce", "all_to_all", "gather")
cases = st.fixed_dictionaries(
    {
        "op": st.sampled_from(OPS),
        "n": st.integers(2, 4096),
        "g": st.sampled_from([1, 2, 4, 8]),
        "b_intra": st.floats(1e9, 2e12),
        "a_intra": st.floats(0.0, 1e-4),
        "b_nic": st.floats(1e8, 1e11),
        "a_nic": st.floats(0.0, 1e-3),
        "nvls": st.booleans(),
        "arch": st.sampled_from(c.NCCL_ARCHS),
        "cpu": st.sampled_from(c.NCCL_CPUS),
        "intra_hw": st.sampled_from(c.NCCL_INTRA_HW),
    }
)


def _kw(k: dict[str, Any]) -> dict[str, Any]:
    return {
        "intra": GroupLink(k["b_intra"], k["a_intra"], False),
        "inter": GroupLink(k["b_nic"], k["a_nic"], True),
        "gpus_per_node": k["g"],
        "nvls": k["nvls"],
        "arch": k["arch"],
        "cpu": k["cpu"],
        "intra_hw": k["intra_hw"],
    }


@settings(max_examples=300, deadline=None)
@given(k=cases, size=st.floats(1.0, 1e11))
def test_choice_is_the_fastest_candidate(k: dict[str, Any], size: float) -> None:
    cands = nccl_candidates(k["op"], size, k["n"], **_kw(k))
    best = nccl_time_s(k["op"], size, k["n"], **_kw(k))
    assert best in cands
    assert all(best.time_s <= x.time_s for x in cands)


@settings(max_examples=300, deadline=None)
@given(k=cases, size=st.floats(1.0, 1e11), grow=st.floats(1.0, 1e3))
def test_time_increases_with_size(k: dict[str, Any], size: float, grow: float) -> None:
    small = nccl_time_s(k["op"], size, k["n"], **_kw(k)).time_s
    big = nccl_time_s(k["op"], size * grow, k["n"], **_kw(k)).time_s
    assert big >= small * (1 - 1e-12)


@settings(max_examples=300, deadline=None)
@given(k=cases, size=st.floats(1.0, 1e11))
def test_never_faster_than_the_bandwidth_bound(k: dict[str, Any], size: float) -> None:
    """t >= S·factor/B_max, B_max = max(B_intra, g·B_nic) the fastest a GPU's data can leave
    (factor: nccl-tests busbw factor). All-reduce may reach twice that (bus bandwidth up to
    2·B_max): NVLink SHARP reduces in the switch and a 2-node tree sends S, not 2S, per node,
    which is why NCCL reports busbw above the wire rate (nccl-tests #153, #196, #212); each GPU
    still has to send its (n−1)/n·S."""
    n, g = k["n"], min(k["g"], k["n"])
    t = nccl_time_s(k["op"], size, n, **_kw(k)).time_s
    b_max = max(k["b_intra"], g * k["b_nic"]) if n > g else k["b_intra"]
    bound = c.bus_factor(k["op"], n) * size / b_max
    if k["op"] == "all_reduce":
        bound /= 2
    assert t >= bound * (1 - 1e-12)


@settings(max_examples=200, deadline=None)
@given(k=cases, size=st.floats(1.0, 1e11))
def test_restricting_the_algorithms_never_helps(k: dict[str, Any], size: float) -> None:
    best = nccl_time_s(k["op"], size, k["n"], **_kw(k))
    ring = nccl_time_s(k["op"], size, k["n"], algorithms=("ring", "pairwise"), **_kw(k))
    assert best.time_s <= ring.time_s


# ----------------------------------------------------------------- what the switch changes


def test_efa_25mb_bucket_at_dp128_leaves_the_ring() -> None:
    """The motivating case (issue 13): a 25 MB DDP bucket over dp 128 on the playbook's EFA
    cluster. simtrain's ring pays 254 steps of 149 us (37.8 ms of 38.0 ms); NCCL's choice is a
    log-depth algorithm, an order of magnitude faster (benchmarks/nccl_choice.py prints more)."""
    intra, inter, gpn = links("h100_sxm5_80gb_efa")
    size, n = 25e6, 128
    ring = c.collective_time_s("all_reduce", size, n, intra=intra, inter=inter, gpus_per_node=gpn)
    assert c.steps("all_reduce", n) * inter.latency_s / ring > 0.95
    for nvls in (False, True):
        best = nccl_time_s("all_reduce", size, n, intra=intra, inter=inter, gpus_per_node=gpn,
                           nvls=nvls, protocols=EFA_PROTOCOLS)  # fmt: skip
        assert best.algorithm in ("tree", "nvls_tree")
        assert best.time_s < ring / 10


@pytest.mark.parametrize(
    ("nodes", "levels", "factor"), [(2, 1, 1), (4, 2, 2), (8, 3, 2), (64, 6, 2)]
)
def test_unpipelined_tree_pays_the_network_term_once_per_level(
    nodes: int, levels: int, factor: int
) -> None:
    """collectives.tree_network_s: a pipelined tree moves 2·S through a node's g NICs (S on 2
    nodes); with tree_pipelined false each of its ⌊log2 N⌋ levels pays that again."""
    size, g = 256 * MIB, 8
    one_pass = factor * size / (g * B_NIC)
    assert c.tree_network_s(size, g, nodes, INTER) == pytest.approx(one_pass, rel=1e-12)
    assert c.tree_network_s(size, g, nodes, INTER, pipelined=False) == pytest.approx(
        levels * one_pass, rel=1e-12
    )
    assert c.tree_network_s(size, g, 1, INTER, pipelined=False) == 0.0
    # in the choice: a bandwidth-bound tree all-reduce slows by the level count's share
    kw = {"algorithms": ("tree",), "protocols": ("simple",)}
    fast = one("all_reduce", size, g * nodes, **kw)
    slow = one("all_reduce", size, g * nodes, tree_pipelined=False, **kw)
    assert slow.time_s >= fast.time_s
    assert (slow.time_s - fast.time_s) == pytest.approx(
        (levels - 1) * one_pass / (c.TREE_ALL_REDUCE_FRACTION * c.tree_correction(size, "simple")),
        rel=1e-9,
    )


def test_efa_bucket_all_reduce_is_the_unpipelined_tree() -> None:
    """On the playbook's EFA profile a 25 MB DDP bucket over dp 128 (16 nodes) runs as NCCL's
    tree (since the 2026-12-05 refit; the NVLS tree before) with unpipelined levels: slower
    than the pipelined tree, far faster than the ring (254 steps of 149 us). The levels' own
    closed form is the test above."""
    hw = load_hardware("h100_sxm5_80gb_efa")
    intra, inter = c.node_links(hw)
    kw = {"intra": intra, "inter": inter, "gpus_per_node": 8, "nvls": True,
          "protocols": ("simple",), "algorithms": hw.nccl_algorithms}  # fmt: skip
    got = nccl_time_s("all_reduce", 25e6, 128, tree_pipelined=hw.nccl_tree_pipelined, **kw)
    piped = nccl_time_s("all_reduce", 25e6, 128, **kw)
    ring = nccl_time_s("all_reduce", 25e6, 128, **{**kw, "algorithms": ("ring",)})
    assert got.algorithm in ("tree", "nvls_tree")
    assert piped.time_s < got.time_s < ring.time_s / 5  # 2.1 vs 1.5 and 53 ms


def test_the_playbook_all_reduce_in_tree_network_terms() -> None:
    """hardware/h100_sxm5_80gb_efa.yaml [tree]: the Playbook's mean all-reduce time at 1 GiB is
    1.91 / 2.23 / 3.64 / 4.31 / 5.65 / 11.15 x one pipelined tree level's network term at 2-64 nodes
    (busbw 361.75 ... 32.94 GB/s, nccl-tests' all-reduce factor 2(n-1)/n), growing with the
    levels floor(log2 N) = 1..6: the reason tree_pipelined is false."""
    from test_collectives import USP_ALL_REDUCE

    hw = load_hardware("h100_sxm5_80gb_efa")
    _, inter = c.node_links(hw)
    size = 2**30
    got = []
    for nodes in (2, 4, 8, 16, 32, 64):
        n = 8 * nodes
        t = 2 * (n - 1) / n * size / (USP_ALL_REDUCE[nodes] * GB)
        got.append(t / c.tree_network_s(size, 8, nodes, inter, pipelined=True))
    assert got == pytest.approx([1.91, 2.23, 3.64, 4.31, 5.65, 11.15], abs=0.005)
