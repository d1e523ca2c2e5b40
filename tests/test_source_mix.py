"""GPUs side by side whose large-GEMM efficiencies come from different kinds of source get a
note (``report.tables.source_mix_note``): the H100's is fitted on training runs, the H200's is
one GEMM benchmark, and the same bf16 peak then shows as a 23 % step-time gap that is not the
hardware's alone (a user review, 2026-12-07)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from simtrain.cli import main
from simtrain.report.tables import matmul_source_of, source_mix_note
from simtrain.spec.hardware import load_hardware

ROOT = Path(__file__).resolve().parent.parent


def test_kinds_that_differ_are_named_and_alike_ones_are_not() -> None:
    h100, h200, h800 = (
        load_hardware(n) for n in ("h100_sxm5_80gb", "h200_141gb", "h800_sxm5_80gb")
    )
    assert matmul_source_of(h100) == ("h100_sxm5_80gb", h100.efficiency.matmul, "training runs")
    assert matmul_source_of(h200)[2] == "GEMMs"
    note = source_mix_note([matmul_source_of(h100), matmul_source_of(h200)])
    assert "h100_sxm5_80gb 0.55 from training runs" in note
    assert "h200_141gb 0.68 from GEMMs" in note
    assert source_mix_note([matmul_source_of(h100), matmul_source_of(h800)]) == ""  # both fitted
    assert source_mix_note([matmul_source_of(h200)]) == ""


def test_compare_prints_it_beside_the_table(tmp_path: Path) -> None:
    base = [
        "compare",
        str(ROOT / "scenarios" / "ddp_8gpu.yaml"),
        "--set",
        "hardware=h100_sxm5_80gb",
    ]
    out = CliRunner().invoke(main, [
        *base, "--out", str(tmp_path),
        "--variants", "h100:hardware=h100_sxm5_80gb,h200:hardware=h200_141gb"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "efficiency.matmul comes from different kinds of source" in out.output
    same = CliRunner().invoke(main, [
        *base, "--out", str(tmp_path / "b"),
        "--variants", "h100:hardware=h100_sxm5_80gb,h800:hardware=h800_sxm5_80gb"])  # fmt: skip
    assert same.exit_code == 0, same.output
    assert "different kinds of source" not in same.output


def test_every_shipped_profile_names_its_kind_of_source() -> None:
    """Each shipped profile's matmul tag is one MATMUL_SOURCE_KINDS knows, so no note says
    "not stated" for a shipped GPU."""
    from simtrain.spec.hardware import HARDWARE_DIR, MATMUL_SOURCE_KINDS

    tags = {load_hardware(str(f)).matmul_tag for f in sorted(HARDWARE_DIR.glob("*.yaml"))}
    assert tags and tags <= set(MATMUL_SOURCE_KINDS), tags - set(MATMUL_SOURCE_KINDS)
