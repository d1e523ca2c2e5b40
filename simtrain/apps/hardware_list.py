"""``simtrain hardware``: the shipped GPU profiles side by side, or one profile with its sources.

For choosing what to rent or buy before simulating on it: memory, the dense tensor peaks, memory
bandwidth, the links inside and between nodes, and where each profile's large-GEMM efficiency
(``efficiency.matmul``, the number that sets most of a step's time) comes from: fitted on
measured training runs (``measured/fitted_constants.yaml``), measured by a GEMM benchmark, or an
estimate (the first source tag of its line in the profile).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from simtrain.spec.hardware import (
    HardwareProfile,
    available_profiles,
    load_hardware,
)
from simtrain.units import GIB

if TYPE_CHECKING:  # the validate package is imported only where fitted constants are read
    from simtrain.apps.validate.fitted import FittedConstant


#: What the first source tag of a profile's ``matmul`` line says of the value (the shipped
#: profiles' conventions; a tag not listed here is shown as it is).
MATMUL_TAGS = {
    "val": "fitted on training runs",
    "est": "estimate",
    "gemm": "GEMM table",
    "mm": "GEMM benchmark",
    "meas": "measured by simtrain calibrate",
    "own": "same die's fitted value",
}


@dataclass(frozen=True, slots=True)
class HardwareRow:
    """One profile's headline numbers, in the units their names say (dense peaks; 0: no rate
    for that dtype on this GPU, which then runs it at its fp32 rate)."""

    name: str
    display_name: str
    memory_gib: float
    fp16_tflops: float
    bf16_tflops: float
    fp8_tflops: float
    memory_bandwidth_gb_per_s: float
    intra_node: str
    intra_node_gb_per_s: float  # per GPU and direction
    intra_node_pair_gb_per_s: float  # between two GPUs of a switchless mesh; 0: a switch
    gpus_per_node: int
    nic_gbit_per_s: float  # per GPU and direction
    matmul_efficiency: float
    matmul_source: str


def matmul_source(hw: HardwareProfile, fitted: tuple[FittedConstant, ...]) -> str:
    """Where ``efficiency.matmul`` of ``hw`` comes from: the families it was fitted on (a
    fitted constant naming this very file: a calibrated copy saved under a shipped name is not
    that profile), else what its line's first source tag says."""
    for c in fitted:
        if (c.constant.startswith("efficiency.matmul") and dict(c.scope).get("hardware") == hw.name
                and c.path.resolve() == Path(hw.source_file).resolve()):  # fmt: skip
            on = f"fitted on {', '.join(c.fitted_on)}"
            return f"{c.same_gpu}'s, {on}" if c.same_gpu else on
    tag = hw.matmul_tag
    return MATMUL_TAGS.get(tag, f"see [{tag}] in the profile") if tag else "not stated"


def hardware_row(hw: HardwareProfile, fitted: tuple[FittedConstant, ...]) -> HardwareRow:
    """The headline numbers of ``hw``."""
    return HardwareRow(
        name=hw.name, display_name=hw.display_name, memory_gib=round(hw.memory_bytes / GIB, 2),
        fp16_tflops=hw.peak("fp16") / 1e12, bf16_tflops=hw.peak("bf16") / 1e12,
        fp8_tflops=hw.peak("fp8") / 1e12,
        memory_bandwidth_gb_per_s=hw.hbm_bandwidth_bytes_per_s / 1e9,
        intra_node=hw.intra_node_kind,
        intra_node_gb_per_s=hw.intra_node_bandwidth_bytes_per_s / 1e9,
        intra_node_pair_gb_per_s=hw.intra_node_pair_bandwidth_bytes_per_s / 1e9,
        gpus_per_node=hw.gpus_per_node, nic_gbit_per_s=hw.nic_bandwidth_bytes_per_s * 8 / 1e9,
        matmul_efficiency=hw.efficiency.matmul, matmul_source=matmul_source(hw, fitted),
    )  # fmt: skip


def hardware_rows() -> list[HardwareRow]:
    """Every shipped profile (``hardware/*.yaml``), by name."""
    from simtrain.apps.validate.fitted import load_fitted_constants

    fitted = load_fitted_constants()
    return [hardware_row(load_hardware(n), fitted) for n in available_profiles()]


def _num(x: float) -> str:
    return "-" if x == 0 else f"{x:,.4g}"


def hardware_table(rows: list[HardwareRow]) -> str:
    """The terminal view: a row per profile."""
    head = (f"{'profile':<22}{'memory':>8}{'fp16':>8}{'bf16':>8}{'fp8':>8}{'mem bw':>8}  "
            f"{'intra-node':<17}{'/node':>6}{'NIC':>7}  matmul")  # fmt: skip
    units = (f"{'':<22}{'GiB':>8}{'TFLOP/s':>8}{'TFLOP/s':>8}{'TFLOP/s':>8}{'GB/s':>8}  "
             f"{'GB/s per dir.':<17}{'GPUs':>6}{'Gb/s':>7}  efficiency (source)")  # fmt: skip
    lines = [head, units, "-" * len(units)]
    for r in rows:
        link = f"{r.intra_node} {r.intra_node_gb_per_s:,.4g}"
        if r.intra_node_pair_gb_per_s:
            link += f"/{r.intra_node_pair_gb_per_s:,.4g}"
        lines.append(
            f"{r.name:<22}{r.memory_gib:>8.2f}{_num(r.fp16_tflops):>8}{_num(r.bf16_tflops):>8}"
            f"{_num(r.fp8_tflops):>8}{r.memory_bandwidth_gb_per_s:>8,.0f}  {link:<17}"
            f"{r.gpus_per_node:>6}{r.nic_gbit_per_s:>7,.4g}  {r.matmul_efficiency:.3g} "
            f"({r.matmul_source})"
        )
    lines += [
        "",
        "dense peaks (no 2:4 sparsity); '-': no rate for that dtype (a step in it runs at the "
        "fp32 rate); memory: what CUDA can allocate (GiB = 2^30 bytes)",
        "intra-node B/b: a mesh without a switch, B a GPU's links, b one pair's (a group of g "
        "GPUs of a node reaches min(B, (g-1)·b))",
        "`simtrain hardware NAME` prints a profile with the source of every number; "
        "`--set hardware=NAME` simulates a scenario on it",
    ]
    return "\n".join(lines) + "\n"


def hardware_command(name: str | None, as_json: bool) -> str:
    """``simtrain hardware [NAME] [--json]``: the table (or its JSON), or one profile's file."""
    if name is None:
        rows = hardware_rows()
        if as_json:
            return json.dumps([asdict(r) for r in rows], indent=2, sort_keys=True) + "\n"
        return hardware_table(rows)
    from simtrain.apps.validate.fitted import load_fitted_constants

    hw = load_hardware(name)  # a clear error for an unknown name or a bad file
    path = Path(hw.source_file)  # the file the loader read
    shown = f"hardware/{name}.yaml" if name in available_profiles() else str(path)
    if as_json:
        row = asdict(hardware_row(hw, load_fitted_constants()))
        return json.dumps({**row, "file": shown}, indent=2, sort_keys=True) + "\n"
    return f"# {shown}\n" + path.read_text(encoding="utf-8")
