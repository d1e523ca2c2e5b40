"""``simtrain fit-network`` (apps/network_fit.py): a profile's links fitted to nccl-tests logs,
checked by reading the written profile back and pricing the logged collective on it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from simtrain.apps.network_fit import (
    MIN_SIZE_BYTES,
    fit_logs,
    fit_network_command,
    parse_nccl_tests,
)
from simtrain.cli import main
from simtrain.costs.collectives import collective_time_s, nccl_bus_bandwidth, node_links, steps
from simtrain.costs.group_comm import hardware_collective_s
from simtrain.errors import ConfigError
from simtrain.spec.hardware import HARDWARE_DIR, cited_lines, defined_tags, load_hardware

GIB = 2**30


def nccl_log(op: str, hosts: int, per_host: int, busbw_gbps: float, starting: bool = True,
             size: int = GIB, largest_first: bool = False) -> str:  # fmt: skip
    """An nccl-tests log in its own format (nccl-tests doc/PERFORMANCE.md; the columns of
    all_gather_perf / reduce_scatter_perf / all_reduce_perf since v2.13)."""
    lines = [f"# Collective test starting: {op}_perf"] if starting else []
    lines += ["# nThread 1 nGpus 1 minBytes 1048576 maxBytes 1073741824 step: 2(factor) warmup "
              "iters: 5 iters: 20 agg iters: 1 validation: 1 graph: 0", "#", "# Using devices"]  # fmt: skip
    for r in range(hosts * per_host):
        lines.append(f"#  Rank {r:>2} Group  0 Pid {100 + r:>5} on node-{r // per_host} device "
                     f"{r % per_host:>2} [0x18] NVIDIA H100 80GB HBM3")  # fmt: skip
    redop = "none" if op == "all_gather" else "sum"
    small = (f"     1048576        262144     float    {redop}      -1    120.5    8.70    3.00"
             "      0    118.2    8.87    3.10      0")  # fmt: skip
    big = (f"  {size:>10}     {size // 4:>9}     float    {redop}      -1  11500.3   93.37 "
           f"{busbw_gbps:7.2f}      0  11480.2   93.53   87.69      0")  # fmt: skip
    lines += [
        "#",
        "#                                                              out-of-place"
        "                       in-place",
        "#       size         count      type   redop    root     time   algbw   busbw #wrong"
        "     time   algbw   busbw #wrong",
        "#        (B)    (elements)                               (us)  (GB/s)  (GB/s)"
        "            (us)  (GB/s)  (GB/s)",
        *((big, small) if largest_first else (small, big)),
        "# Out of bounds values : 0 OK",
        "# Avg bus bandwidth    : 60.8",
    ]
    return "\n".join(lines) + "\n"


def _busbw(hw, op: str, n: int) -> float:
    t = hardware_collective_s(hw, "nccl", op, GIB, n, min(hw.gpus_per_node, n))
    return nccl_bus_bandwidth(op, GIB, n, t) / 1e9


def test_a_log_is_read_as_nccl_tests_prints_it() -> None:
    log = parse_nccl_tests(nccl_log("all_gather", 2, 8, 87.53), "ag.txt")
    assert (log.op, log.ranks, log.hosts, log.size_bytes) == ("all_gather", 16, 2, GIB)
    assert log.busbw_bytes_per_s == pytest.approx(87.53e9)  # the largest message, out-of-place
    # the collective from the file's name when the log does not say
    bare = parse_nccl_tests(nccl_log("reduce_scatter", 1, 8, 300, starting=False),
                            "runs/reduce_scatter_perf_8gpu.log")  # fmt: skip
    assert bare.op == "reduce_scatter" and bare.hosts == 1
    # the largest message, wherever its row is
    first = parse_nccl_tests(nccl_log("all_gather", 2, 8, 87.53, largest_first=True), "ag.txt")
    assert first.size_bytes == GIB and first.busbw_bytes_per_s == pytest.approx(87.53e9)


def test_an_early_nccl_tests_header_is_read() -> None:
    """nccl-tests before 2.x printed "bytes N type" where later versions print "size count type
    redop root" (and "error" for "#wrong"): the same table, the same out-of-place busbw."""
    ranks = [f"#   Rank {r:>2} Pid {100 + r:>6} on     node-{r // 8} device {r % 8:>2} [0x18] "
             "Tesla V100-SXM2-32GB" for r in range(16)]  # fmt: skip
    early = "\n".join([
        "# nThread 1 nGpus 1 minBytes 1048576 maxBytes 1073741824 step: 2(factor) warmup iters: 5 "
        "iters: 20 validation: 1",
        "#", "# Using devices", *ranks, "#",
        "#                                                     out-of-place                       "
        "in-place",
        "#       bytes    N    type      time   algbw   busbw  error      time   algbw   busbw  "
        "error",
        "     1048576   262144   float    120.50    8.70   16.31  0e+00    118.20    8.87   16.63  "
        "0e+00",
        f"  {GIB:>10} 268435456   float  11500.30   93.37   87.53  0e+00  11480.20   93.53   87.69  "
        "0e+00",
        "# Out of bounds values : 0 OK", "# Avg bus bandwidth    : 51.9", ""])  # fmt: skip
    log = parse_nccl_tests(early, "all_reduce_perf.log")
    assert (log.op, log.ranks, log.hosts, log.size_bytes) == ("all_reduce", 16, 2, GIB)
    assert log.busbw_bytes_per_s == pytest.approx(87.53e9)
    # the columns are matched as words: "msgbytes" names no size column
    with pytest.raises(ConfigError, match="no table with size and busbw"):
        parse_nccl_tests(early.replace("#       bytes ", "#    msgbytes "), "all_reduce_perf.log")


def test_the_written_profile_reproduces_the_logs(tmp_path: Path) -> None:
    """Two logs, NVLink (one node) and the network (4 nodes): the written profile, read back,
    gives each log's bus bandwidth (to the 6 significant digits it is written with)."""
    node = tmp_path / "all_gather_1n.txt"
    net = tmp_path / "reduce_scatter_4n.txt"
    node.write_text(nccl_log("all_gather", 1, 8, 330.0))
    net.write_text(nccl_log("reduce_scatter", 4, 8, 41.0))
    out = tmp_path / "mine.yaml"
    table = fit_network_command("h100_sxm5_80gb", [str(node), str(net)], str(out), None)
    assert "wrote" in table and "node" in table and "network" in table
    hw, base = load_hardware(str(out)), load_hardware("h100_sxm5_80gb")
    assert hw.name == "mine"
    assert _busbw(hw, "all_gather", 8) == pytest.approx(330.0, rel=1e-4)
    # rate and latency both scaled: a small message (latency-bound) moves by the same k
    k_node = base.intra_node_bandwidth_bytes_per_s / hw.intra_node_bandwidth_bytes_per_s
    assert hw.intra_node_latency_s == pytest.approx(base.intra_node_latency_s * k_node, rel=1e-4)
    assert _busbw(hw, "reduce_scatter", 32) == pytest.approx(41.0, rel=1e-4)
    # the node is slower than the base's NVLink ring (418 GB/s), the network far slower
    assert hw.intra_node_bandwidth_bytes_per_s < base.intra_node_bandwidth_bytes_per_s
    assert hw.nic_bandwidth_bytes_per_s < base.nic_bandwidth_bytes_per_s / 3
    # nothing else moved: the GPU, its memory, the NCCL settings
    assert (hw.peak_flops_per_s, hw.memory_bytes, hw.nvls) == (base.peak_flops_per_s,
                                                               base.memory_bytes, base.nvls)  # fmt: skip
    text = out.read_text()
    assert text.count("[fitnet]") >= 5 and str(net) in text
    # every number of the written profile cites a source its header defines (the house's check
    # of the shipped profiles, tests/test_hardware.py)
    defined = defined_tags(text)
    numbers = [ln for ln in cited_lines(text) if ln.numeric]
    assert not [ln for ln in numbers if not ln.tags or set(ln.tags) - defined]
    assert "fitnet" in defined


def test_the_smallest_message_a_log_may_fit() -> None:
    """MIN_SIZE_BYTES' reason (its comment): per-step latency's share of a DGX H100 ring
    all-gather's time on 1-8 nodes is >= 0.9 at 1 MiB, <= 0.65 at 64 MiB, <= 0.1 at 1 GiB."""
    hw = load_hardware("h100_sxm5_80gb")
    intra, inter = node_links(hw)
    assert MIN_SIZE_BYTES == 64 * 2**20

    def share(size: int, nodes: int) -> float:
        n = 8 * nodes
        t = collective_time_s("all_gather", size, n, intra=intra,
                              inter=inter if nodes > 1 else None, gpus_per_node=8)  # fmt: skip
        return steps("all_gather", n) * (inter if nodes > 1 else intra).latency_s / t

    for nodes in (1, 2, 8):
        assert share(2**20, nodes) >= 0.9
        assert share(MIN_SIZE_BYTES, nodes) <= 0.65
        assert share(GIB, nodes) <= 0.1


def test_each_link_is_fitted_to_all_its_logs() -> None:
    """Two logs of one link: the fitted profile's times of both, against the measured, are off
    by reciprocal factors (their log ratios sum to 0); a 1-GPU log measures no link and is
    neither fitted nor credited."""
    hw = load_hardware("h100_sxm5_80gb")
    a = parse_nccl_tests(nccl_log("all_gather", 2, 8, 60.0), "a.txt")
    b = parse_nccl_tests(nccl_log("reduce_scatter", 4, 8, 240.0), "b.txt")
    lone = parse_nccl_tests(nccl_log("all_gather", 1, 1, 10.0), "one.txt")
    fitted, [fit] = fit_logs(hw, [a, b, lone])
    assert fit.link == "network" and fit.logs == (a, b)
    ratios = [math.log(_busbw(fitted, g.op, g.ranks) * 1e9 / g.busbw_bytes_per_s) for g in (a, b)]
    assert sum(ratios) == pytest.approx(0, abs=1e-9) and ratios[0] > 0.3


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("hello\n", "not an nccl-tests log"),
        (nccl_log("all_gather", 2, 8, 80.0).replace("#  Rank", "# Dev"), "no '#  Rank N"),
        (nccl_log("broadcast", 2, 8, 80.0), "no nccl-tests collective"),
        (nccl_log("all_gather", 3, 4, 80.0), "12 GPUs are not whole nodes of h100_sxm5_80gb"),
        (nccl_log("all_gather", 2, 8, 9e4), "beyond what scaling"),
        (nccl_log("all_gather", 2, 8, 0.0), "must be a number of GB/s in (0, 100000]"),
        (nccl_log("all_gather", 2, 8, 1e308), "must be a number of GB/s"),
        (nccl_log("all_gather", 2, 8, 80.0, size=2**20), "the largest message must be"),
        (nccl_log("all_gather", 2, 8, 80.0, size=10**30), "the largest message must be"),
        (
            nccl_log("all_gather", 1, 8, 300.0) + nccl_log("all_gather", 2, 8, 60.0),
            "2 runs or tables in one log",
        ),
    ],
)
def test_bad_logs_name_the_file(tmp_path: Path, text: str, says: str) -> None:
    bad = tmp_path / "run.txt"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=str(bad)) as exc:
        fit_network_command("h100_sxm5_80gb", [str(bad)], str(tmp_path / "x.yaml"), None)
    assert says in str(exc.value)


def test_one_nvlink_domain_of_many_hosts_is_the_node(tmp_path: Path) -> None:
    """An NVL72 rack's log (72 GPUs on 18 trays of 4) measures its NVLink domain, the profile's
    node: it fits NVLink, not the network."""
    log = tmp_path / "ag_rack.txt"
    log.write_text(nccl_log("all_gather", 18, 4, 600.0))
    out = tmp_path / "rack.yaml"
    fit_network_command("gb200_nvl72", [str(log)], str(out), None)
    hw, base = load_hardware(str(out)), load_hardware("gb200_nvl72")
    assert hw.nic_bandwidth_bytes_per_s == base.nic_bandwidth_bytes_per_s
    assert _busbw(hw, "all_gather", 72) == pytest.approx(600.0, rel=1e-4)


def test_the_cli(tmp_path: Path) -> None:
    log = tmp_path / "all_gather_perf.txt"
    log.write_text(nccl_log("all_gather", 2, 8, 87.53, starting=False))
    out = tmp_path / "cluster.yaml"
    r = CliRunner().invoke(main, ["fit-network", "h100_sxm5_80gb", str(log), "--out", str(out),
                                  "--name", "my_cluster"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "its network link" in r.output and load_hardware(str(out)).name == "my_cluster"
    r = CliRunner().invoke(main, ["fit-network", "h100_sxm5_80gb", str(tmp_path / "none.txt"),
                                  "--out", str(out)])  # fmt: skip
    assert r.exit_code == 2 and "nccl-tests log not found" in r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(main, ["fit-network", "no_such_gpu", str(log), "--out", str(out)])
    assert r.exit_code == 2 and "hardware profile" in r.output
    # a quoted display name stays valid YAML: the written profile loads
    quoted_base = tmp_path / "quoted.yaml"
    quoted_base.write_text(Path(load_hardware("h100_sxm5_80gb").source_file).read_text()
                           .replace("display_name: NVIDIA", 'display_name: "NVIDIA', 1)
                           .replace("(DGX H100)\n", '(DGX H100)"\n', 1))  # fmt: skip
    assert load_hardware(str(quoted_base)).display_name.startswith("NVIDIA")
    r = CliRunner().invoke(main, ["fit-network", str(quoted_base), str(log), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert load_hardware(str(out)).display_name.endswith("(links fitted to nccl-tests)")
    txt = tmp_path / "cluster.txt"
    r = CliRunner().invoke(main, ["fit-network", "h100_sxm5_80gb", str(log), "--out", str(txt)])
    assert r.exit_code == 2 and ".yaml file" in r.output and not txt.exists()


@pytest.mark.parametrize("name", ["a\nb: 3", "a\n#x", "", "   ", "tab\there"])
def test_a_name_of_more_than_one_printable_line_is_refused(tmp_path: Path, name: str) -> None:
    """A newline in --name went into the profile's header comment and the error blamed --out
    (or, 'a\\n#x', was written as is): now one line naming --name (a fuzz campaign)."""
    log = tmp_path / "all_gather_perf.txt"
    log.write_text(nccl_log("all_gather", 2, 8, 87.53, starting=False))
    out = tmp_path / "cluster.yaml"
    r = CliRunner().invoke(main, ["fit-network", "h100_sxm5_80gb", str(log), "--out", str(out),
                                  "--name", name])  # fmt: skip
    assert r.exit_code == 2 and "--name" in r.output and not out.exists()


@pytest.mark.parametrize(("hosts", "per_host", "says"), [
    (2, 3, "crossed the network"),  # 6 <= 8 GPUs, but over 2 hosts: not NVLink
    (2, 4, "crossed the network"),
    (4, 4, "not whole hosts of 8"),  # 16 GPUs = 2 nodes, on 4 half-full hosts
    (1, 16, "not whole hosts of 8"),  # 16 GPUs on one host: not 2 DGX H100s
])  # fmt: skip
def test_a_log_whose_hosts_are_not_the_link_it_would_fit(tmp_path: Path, hosts: int,
                                                         per_host: int, says: str) -> None:  # fmt: skip
    """2 hosts x 3 GPUs was fitted as a DGX H100's NVLink (6 <= 8 GPUs), though its traffic
    crossed the network (a fuzz campaign); a network log must be on whole hosts."""
    log = tmp_path / "ag.txt"
    log.write_text(nccl_log("all_gather", hosts, per_host, 80.0))
    out = tmp_path / "x.yaml"
    with pytest.raises(ConfigError, match=says) as exc:
        fit_network_command("h100_sxm5_80gb", [str(log)], str(out), None)
    assert exc.value.file == str(log) and exc.value.key == "hosts" and not out.exists()


def test_a_partial_rack_over_its_trays_is_nvlink(tmp_path: Path) -> None:
    """On an NVL72 rack (trays of 4 GPUs, gpus_per_host) 2 trays x 4 GPUs is still NVLink, and
    144 GPUs on 36 trays are 2 racks over the network, and 2 trays x 3 GPUs within one rack
    NVLink; 144 GPUs on 72 hosts of 2 are not whole trays."""
    assert load_hardware("gb200_nvl72").host_gpus == 4
    assert load_hardware("h100_sxm5_80gb").host_gpus == 8
    log = tmp_path / "ag8.txt"
    log.write_text(nccl_log("all_gather", 2, 4, 600.0))
    fit_network_command("gb200_nvl72", [str(log)], str(tmp_path / "a.yaml"), None)
    log.write_text(nccl_log("all_gather", 2, 3, 600.0))  # 6 GPUs on 2 trays: NVLink too
    fit_network_command("gb200_nvl72", [str(log)], str(tmp_path / "a3.yaml"), None)
    log.write_text(nccl_log("all_gather", 36, 4, 40.0))
    fit_network_command("gb200_nvl72", [str(log)], str(tmp_path / "b.yaml"), None)
    log.write_text(nccl_log("all_gather", 72, 2, 40.0))  # 144 GPUs on 72 hosts of 2
    with pytest.raises(ConfigError, match="not whole hosts of 4"):
        fit_network_command("gb200_nvl72", [str(log)], str(tmp_path / "c.yaml"), None)


@pytest.mark.parametrize("value", [5, -4, True, 4.0, '"4"'])
def test_gpus_per_host_must_divide_the_node(tmp_path: Path, value: object) -> None:
    text = (HARDWARE_DIR / "gb200_nvl72.yaml").read_text()
    p = tmp_path / "hw.yaml"
    p.write_text(text.replace("gpus_per_host: 4 ", f"gpus_per_host: {value} ", 1))
    with pytest.raises(ConfigError, match="gpus_per_host") as exc:
        load_hardware(str(p))
    assert exc.value.key == "gpus_per_host"
