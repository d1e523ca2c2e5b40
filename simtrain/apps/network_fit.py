"""``simtrain fit-network``: a hardware profile whose links are fitted to a cluster's own
nccl-tests logs.

A shipped profile's network is one cluster's (a DGX SuperPOD's InfiniBand, the Ultra-Scale
Playbook's EFA); yours may run 1.5x or 7x slower (the Playbook's own jobs spread 12x on one
cluster: apps/validate/job_network.py). Run nccl-tests on it (``all_gather_perf``,
``reduce_scatter_perf``; ``all_reduce_perf`` too, though NCCL's tree / NVLS choice makes it a
weaker witness of the links) inside one node and across the nodes you will train on, and give
the logs: each log's largest message sets how much slower (or faster) than the base profile
its link is, ``costs.link_fit.link_slowdown`` (rate / k, latency · k; simtrain's own time of
the same collective equals the measured one). Logs inside one node fit NVLink; logs across
nodes fit the network, on the node-fitted profile. The profile is written as the base's YAML
with those four numbers replaced and a header naming the logs.

The log format is nccl-tests' (``doc/PERFORMANCE.md``): ``#  Rank  N Group ... on HOST device``
lines (ranks and hosts), a header line with ``size`` (``bytes`` in early versions) and
``busbw`` columns, and one row per
message size; the out-of-place ``busbw`` (GB/s = 1e9 B/s) of the largest size is used. The
collective comes from the log's ``# Collective test starting: NAME_perf`` line or the file's name.
A log slower than the base profile is read as a slower link, never as a host's cost of issuing
collectives (validate's reading of a job's own test, ``apps.validate.job_network``): nccl-tests
runs one C loop per GPU, and a cluster's planner fits its links here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from simtrain.costs.link_fit import (
    MAX_BUSBW_GB_PER_S,
    MAX_SIZE_BYTES,
    Measured,
    fit_links,
    link_of,
)
from simtrain.errors import ConfigError
from simtrain.spec.hardware import HardwareProfile, load_hardware, parse_hardware
from simtrain.spec.yamlfile import parse_yaml, read_text_file

#: the source tag of the numbers a fit writes (defined in the written profile's header, as the
#: house's citation check wants: spec.hardware.defined_tags)
SOURCE_TAG = "fitnet"
#: nccl-tests binaries -> simtrain's collectives
NCCL_TESTS_OPS = {"all_gather": "all_gather", "allgather": "all_gather", "reduce_scatter": "reduce_scatter",
       "reducescatter": "reduce_scatter", "all_reduce": "all_reduce", "allreduce": "all_reduce"}  # fmt: skip
_RANK = re.compile(r"^#\s*Rank\s+([0-9]{1,9})\s.*?\bon\s+(\S+)")
#: a message size in bytes: ASCII digits, at most 19 (str.isdigit also takes "²", which int() refuses)
_SIZE = re.compile(r"[0-9]{1,19}")
#: the size column's name in a table's header: ``size`` since nccl-tests 2.x's "size count
#: type redop root", ``bytes`` in its earlier "bytes N type" header
_SIZE_COLUMNS = {"size", "bytes"}
#: a run's first line (nccl-tests prints it once per run)
_RUN = re.compile(r"^#\s*nThread\b")
#: the smallest largest message a log may fit: at 1 MiB 91-99 % of a DGX H100 ring all-gather's
#: simulated time on 1-8 nodes is per-step latency (the log says next to nothing of the rate a
#: large model's collectives run at), at 64 MiB 13-64 %, at 1 GiB 1-10 % (h100_sxm5_80gb;
#: tests/test_network_fit.py). The bounds above it are link_fit's.
MIN_SIZE_BYTES = 64 * 2**20
_STARTING = re.compile(r"Collective test starting:\s*(\w+?)_perf")


@dataclass(frozen=True, slots=True)
class NcclTestsLog:
    """What one nccl-tests log measured: the largest message's out-of-place bus bandwidth."""

    path: str
    op: str  # simtrain's collective name
    ranks: int
    hosts: int
    size_bytes: int
    busbw_bytes_per_s: float


def _echo_int(digits: str) -> str:
    """A size column as the message shows it (a very long one cut)."""
    return digits if len(digits) <= 20 else digits[:17] + "..."


def _op_of(text: str, path: str) -> str:
    m = _STARTING.search(text)
    name = m.group(1) if m else Path(path).name.lower()
    for key, op in NCCL_TESTS_OPS.items():
        if key in name.replace("-", "_").lower():
            return op
    raise ConfigError(path, "collective", "no nccl-tests collective named in the log ('# Collective "
                      "test starting: ...') or the file name; give a log of",
                      name, ", ".join(sorted(set(NCCL_TESTS_OPS.values()))))  # fmt: skip


def parse_nccl_tests(text: str, path: str) -> NcclTestsLog:
    """One nccl-tests log (format above); a ConfigError naming the file when it is not one."""
    ranks: dict[int, str] = {}
    header: list[str] | None = None
    rows: list[list[str]] = []
    runs = tables = 0
    for line in text.splitlines():
        runs += bool(_RUN.match(line))
        if m := _RANK.match(line):
            ranks[int(m.group(1))] = m.group(2)
        elif line.startswith("#") and "busbw" in line.split() and _SIZE_COLUMNS & {*line.split()}:
            tables += 1
            header = header or line.lstrip("#").split()
        elif header and line.strip() and not line.startswith("#"):
            words = line.split()
            if _SIZE.fullmatch(words[0]) and len(words) >= header.index("busbw") + 1:
                rows.append(words)
    if header is None or not rows:
        raise ConfigError(path, "rows", "not an nccl-tests log: no table with size and busbw "
                          "columns", text[:60], "the output of all_gather_perf, ... (nccl-tests "
                          "doc/PERFORMANCE.md)")  # fmt: skip
    if runs > 1 or tables > 1:
        raise ConfigError(path, "rows", f"{max(runs, tables)} runs or tables in one log: give one "
                          "nccl-tests run of one data type per file")  # fmt: skip
    if not ranks:
        raise ConfigError(path, "ranks", "no '#  Rank N Group ... on HOST device ...' lines: the "
                          "GPU count is unknown", text[:60], "a full nccl-tests log")  # fmt: skip
    col = header.index("busbw")
    best = max(rows, key=lambda w: int(w[0]))
    if not (MIN_SIZE_BYTES <= int(best[0]) <= MAX_SIZE_BYTES):
        raise ConfigError(path, "size", f"the largest message must be {MIN_SIZE_BYTES} to "
                          f"{MAX_SIZE_BYTES} bytes: a smaller one is latency-bound (run nccl-tests "
                          "up to 1 GiB: -e 1G)", _echo_int(best[0]))  # fmt: skip
    try:
        busbw = float(best[col])
    except ValueError:
        raise ConfigError(path, "busbw", "not a number in the largest message's row", best[col],
                          "a bus bandwidth in GB/s") from None  # fmt: skip
    if not (0 < busbw <= MAX_BUSBW_GB_PER_S):
        raise ConfigError(path, "busbw", f"must be a number of GB/s in (0, {MAX_BUSBW_GB_PER_S:g}]",
                          busbw)  # fmt: skip
    return NcclTestsLog(path, _op_of(text, path), len(ranks), len(set(ranks.values())),
                        int(best[0]), busbw * 1e9)  # fmt: skip


@dataclass(frozen=True, slots=True)
class LinkFit:
    """One link's fit: its k and the logs that set it."""

    link: str  # "node" or "network"
    k: float
    logs: tuple[NcclTestsLog, ...]


def check_hosts(hw: HardwareProfile, g: NcclTestsLog, link: str) -> None:
    """A log's GPUs sit on its hosts as the link it fits needs: NVLink ("node") within one node's
    hosts (one host, but an NVL72 rack's 18), the network on whole hosts of
    ``hw.host_gpus``. Otherwise its traffic did not cross what it would fit (2 hosts x 3 GPUs
    crossed the network, yet 6 <= 8 GPUs read as one DGX's NVLink; a fuzz campaign)."""
    hpn = hw.gpus_per_node // hw.host_gpus  # hosts in one node
    if link == "node" and g.hosts > hpn:
        raise ConfigError(g.path, "hosts", f"{g.ranks} GPUs on {g.hosts} hosts (the log's Rank "
                          f"lines): their traffic crossed the network, yet {g.ranks} <= "
                          f"{hw.gpus_per_node} GPUs would fit {hw.name}'s NVLink (its node is "
                          f"{'one host' if hpn == 1 else f'{hpn} hosts'}); give a log inside "
                          f"one node, or across whole nodes of {hw.gpus_per_node} GPUs",
                          g.hosts)  # fmt: skip
    if link == "network" and g.hosts * hw.host_gpus != g.ranks:
        raise ConfigError(g.path, "hosts", f"{g.ranks} GPUs on {g.hosts} host(s) (the log's "
                          f"Rank lines), not whole hosts of {hw.host_gpus} GPUs as on "
                          f"{hw.name}: its network traffic per host is not the profile's; give "
                          f"a log on {g.ranks // hw.host_gpus} full hosts", g.hosts)  # fmt: skip


def fit_logs(hw: HardwareProfile, logs: list[NcclTestsLog],
             algorithm: str = "nccl") -> tuple[HardwareProfile, list[LinkFit]]:  # fmt: skip
    """``hw`` fitted to the logs (``link_fit.fit_links``: the node's link to those within one
    NVLink domain, then the network to those over whole nodes; a log of one GPU measures no
    link and is left out), and each link's fit. ConfigErrors name the log."""
    used: dict[str, list[NcclTestsLog]] = {}
    for g in logs:
        if g.ranks < 2:
            continue
        try:
            link = link_of(hw, g.ranks)
        except ValueError as exc:
            raise ConfigError(g.path, "ranks", str(exc), g.ranks) from None
        check_hosts(hw, g, link)
        used.setdefault(link, []).append(g)
    tests = [Measured(g.op, g.ranks, g.size_bytes, g.busbw_bytes_per_s)
             for mine in used.values() for g in mine]  # fmt: skip
    try:
        fitted, ks = fit_links(hw, algorithm, tests)
    except ValueError as exc:
        first = next(iter(used.values()))[0]
        raise ConfigError(first.path, "busbw", str(exc)) from None
    return fitted, [LinkFit(link, k, tuple(used[link])) for link, k in ks.items()]


def profile_text(base_path: Path, fitted: HardwareProfile, fits: list[LinkFit],
                 name: str) -> str:  # fmt: skip
    """The base profile's YAML with its name, and the fitted links' rates and latencies
    replaced, each line naming the fit; a header lists the logs."""
    text = base_path.read_text(encoding="utf-8")
    k = {f.link: f.k for f in fits}
    tag = f"[{SOURCE_TAG}]"

    def quoted(text: str) -> str:  # a YAML (JSON) string, escaped for re.sub's replacement
        return json.dumps(text).replace("\\", "\\\\")

    subs = [(r"^name:.*$", f"name: {quoted(name)}"),
            (r"^display_name:.*$",
             f"display_name: {quoted(fitted.display_name + ' (links fitted to nccl-tests)')}")]  # fmt: skip
    if "node" in k:
        subs += [(r"^(  bandwidth_gb_per_s:)\s*\S+.*$",
                  rf"\1 {fitted.intra_node_bandwidth_bytes_per_s / 1e9:.6g}  # {tag}: the base / {k['node']:.4g}"),
                 (r"^(  latency_us:)\s*\S+.*$",
                  rf"\1 {fitted.intra_node_latency_s * 1e6:.6g}  # {tag}: the base x {k['node']:.4g}")]  # fmt: skip
    if "network" in k:
        subs += [(r"^(nic_bandwidth_gbit_per_s:)\s*\S+.*$",
                  rf"\1 {fitted.nic_bandwidth_bytes_per_s * 8 / 1e9:.6g}  # {tag}: the base / {k['network']:.4g}"),
                 (r"^(inter_node_latency_us:)\s*\S+.*$",
                  rf"\1 {fitted.inter_node_latency_s * 1e6:.6g}  # {tag}: the base x {k['network']:.4g}")]  # fmt: skip
    if "node" in k and fitted.intra_node_pair_bandwidth_bytes_per_s:  # a mesh: its pair links
        text = re.sub(r"^(  pair_bandwidth_gb_per_s:)\s*\S+.*$",
                      rf"\1 {fitted.intra_node_pair_bandwidth_bytes_per_s / 1e9:.6g}  # {tag}: "
                      rf"the base / {k['node']:.4g}", text, count=1, flags=re.MULTILINE)  # fmt: skip
    for pattern, repl in subs:
        text, n = re.subn(pattern, repl, text, count=1, flags=re.MULTILINE)
        if n != 1:
            key = re.sub(r"[^a-z_]", "", pattern.split(":")[0])
            raise ConfigError(str(base_path), key, "not found as one line of the base profile's "
                              "text (a profile written by hand with each key on its own line "
                              "is needed)")  # fmt: skip
    head = [f"# {name}: {base_path.name} with its links fitted to nccl-tests logs.",
            f"#  {tag} simtrain fit-network (costs/link_fit.py): the link k times slower, rate / k",
            "#           and latency x k, where simtrain's time of each log's largest message",
            "#           equals the measured one:"]  # fmt: skip
    for f in fits:
        for g in f.logs:
            head.append(f"#   {f.link:<7} k {f.k:.4g}: {g.path}: {g.op} {g.size_bytes} B over {g.ranks} "
                        f"GPUs on {g.hosts} host(s), busbw {g.busbw_bytes_per_s / 1e9:.4g} GB/s")  # fmt: skip
    return "\n".join(head) + "\n" + text


def fit_network_command(base: str, paths: list[str], out: str, name: str | None) -> str:
    """Fit ``base`` to the logs at ``paths``, write the profile to ``out`` and return the
    table the CLI prints."""
    if not out.endswith((".yaml", ".yml")):
        raise ConfigError(None, "--out", "a hardware profile is a .yaml file", out)
    if name is not None and (not name.strip() or not name.isprintable()):
        # (a newline went into the profile's header comment, and the error blamed --out)
        raise ConfigError(None, "--name", "a profile name is one printable line", name)
    hw = load_hardware(base)
    base_path = Path(hw.source_file)  # the file the loader read
    logs = []
    for p in paths:
        logs.append(parse_nccl_tests(read_text_file(p, what="nccl-tests log"), p))
    fitted, fits = fit_logs(hw, logs)
    if not fits:
        raise ConfigError(paths[0], "ranks", "no log with 2 or more GPUs: nothing to fit (give "
                          "a log inside one node, for NVLink, or across nodes, for the network)")  # fmt: skip
    name = name or Path(out).stem
    text = profile_text(base_path, fitted, fits, name)
    parse_hardware(parse_yaml(text, out), out)  # the profile loads before it is written
    Path(out).write_text(text, encoding="utf-8")
    lines = [f"{'link':<8}{'k':>7}  {'collective':<15}{'GPUs':>6}{'hosts':>6}{'MiB':>8}"
             f"{'busbw GB/s':>12}  log"]  # fmt: skip
    for f in fits:
        for g in f.logs:
            lines.append(f"{f.link:<8}{f.k:>7.3f}  {g.op:<15}{g.ranks:>6}{g.hosts:>6}"
                         f"{g.size_bytes / 2**20:>8.0f}{g.busbw_bytes_per_s / 1e9:>12.4g}  {g.path}")  # fmt: skip
    lines.append(
        f"wrote {out} ({name}: {hw.name} with "
        + ", ".join(f"its {f.link} link {f.k:.3g}x slower" for f in fits)
        + ")"
    )
    return "\n".join(lines) + "\n"
