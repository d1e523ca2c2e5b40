"""`simtrain hardware`: the shipped profiles side by side, and where each large-GEMM efficiency
comes from."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from simtrain.apps.hardware_list import hardware_rows
from simtrain.apps.validate.fitted import load_fitted_constants
from simtrain.cli import main
from simtrain.spec.hardware import available_profiles

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str):
    return CliRunner().invoke(main, ["hardware", *args])


def test_the_table_has_a_row_per_shipped_profile_and_says_its_units() -> None:
    r = _run()
    assert r.exit_code == 0
    rows = [line.split()[0] for line in r.stdout.splitlines()[3:] if line and line[0].isalnum()]
    names = available_profiles()
    assert [n for n in rows if n in names] == names
    assert "GiB" in r.stdout and "GB/s per dir." in r.stdout and "TFLOP/s" in r.stdout


def test_json_rows_in_the_units_their_names_say() -> None:
    rows = {d["name"]: d for d in json.loads(_run("--json").stdout)}
    assert set(rows) == set(available_profiles())
    h100 = rows["h100_sxm5_80gb"]  # the H100 datasheet: 989.4 dense bf16, 3.35 TB/s, NDR 400 Gb/s
    assert (h100["bf16_tflops"], h100["memory_bandwidth_gb_per_s"]) == (989.4, 3350)
    assert h100["nic_gbit_per_s"] == 400 and h100["intra_node_gb_per_s"] == 450
    assert h100["intra_node_pair_gb_per_s"] == 0  # NVSwitch: every pair at 450
    assert rows["mi300x_192gb"]["intra_node_pair_gb_per_s"] == 64  # one xGMI link a pair
    assert "nvlink 450/150" in _run().stdout  # the HGX H200 4-GPU board's row
    assert rows["a100_sxm4_40gb"]["memory_gib"] == round(40536 / 1024, 2)  # 40536 MiB visible
    assert rows["t4_16gb"]["bf16_tflops"] == 0  # no bf16 on Turing


def test_each_fitted_matmul_is_named_with_its_families() -> None:
    """`simtrain hardware` names the families a profile's efficiency.matmul was fitted on
    (measured/fitted_constants.yaml), the profile it was carried over from, or its line's tag;
    a profile with no fitted entry does not claim to be fitted."""
    rows = {r.name: r.matmul_source for r in hardware_rows()}
    # the A100 80GB's is its measured GEMM table's rate (its memory_bound is the fitted one)
    assert rows["a100_sxm4_80gb"] == rows["a100_sxm4_80gb_opa"] == "GEMM table"
    assert rows["a100_sxm4_40gb"] == "fitted on mosaicml"
    assert rows["v100_sxm2_32gb"] == "fitted on megatron_readme"
    assert rows["h100_pcie_80gb"] == "h100_sxm5_80gb's, fitted on mosaicml"
    assert rows["a100_pcie_40gb"] == "a100_sxm4_40gb's, fitted on mosaicml"
    assert rows["l4_24gb"] == "GEMM benchmark"
    assert rows["b200_180gb"] == "GEMM table"
    assert rows["h200_141gb"] == "measured by simtrain calibrate"
    assert rows["b300_288gb"] == rows["t4_16gb"] == "estimate"
    fitted = {dict(c.scope).get("hardware") for c in load_fitted_constants()
              if c.constant.startswith("efficiency.matmul")}  # fmt: skip
    assert not [n for n, src in rows.items() if n not in fitted and "fitted on" in src]


def test_one_profile_prints_its_file_with_the_sources() -> None:
    r = _run("t4_16gb")
    assert r.exit_code == 0 and r.stdout.startswith("# hardware/t4_16gb.yaml\n")
    assert "# Sources:" in r.stdout and "memory_gib:" in r.stdout
    one = json.loads(_run("l4_24gb", "--json").stdout)
    assert one["file"] == "hardware/l4_24gb.yaml" and one["matmul_efficiency"] == 0.48


def test_an_unknown_profile_is_a_clear_error() -> None:
    r = _run("tpu_v5p")
    assert r.exit_code == 2
    assert "unknown hardware profile" in r.stderr and "allowed: a100_pcie_40gb" in r.stderr


def test_run_says_when_the_gpus_efficiency_is_an_estimate(tmp_path) -> None:
    from simtrain.report.tables import estimate_line as estimate_note
    from simtrain.spec.hardware import load_hardware

    assert "t4_16gb is an estimate" in estimate_note(load_hardware("t4_16gb"))
    for measured in ("a100_sxm4_80gb", "l4_24gb", "b200_180gb", "h200_141gb"):
        assert estimate_note(load_hardware(measured)) == "", measured
    # the same card, calibrated: its own file says so
    text = (ROOT / "hardware/t4_16gb.yaml").read_text()
    mine = tmp_path / "my_t4.yaml"
    mine.write_text(text.replace("matmul: 0.70                    # [est]",
                                 "matmul: 0.41                    # [meas]"))  # fmt: skip
    assert estimate_note(load_hardware(str(mine))) == ""
    r = CliRunner().invoke(main, ["run", str(ROOT / "scenarios/colab_t4_qlora_7b.yaml"),
                                  "--no-plots", "--out", str(tmp_path / "out")])  # fmt: skip
    assert r.exit_code == 0 and "GPU efficiency   efficiency.matmul 0.7 of t4_16gb" in r.stdout
    # ... and summary.json says it for scripts; the calibrated copy is not an estimate
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["matmul_efficiency"] == {"value": 0.7, "source_tag": "est", "estimate": True}
    r = CliRunner().invoke(main, ["run", str(ROOT / "scenarios/colab_t4_qlora_7b.yaml"),
                                  "--set", f"hardware={mine}", "--no-plots",
                                  "--out", str(tmp_path / "mine")])  # fmt: skip
    assert r.exit_code == 0 and "GPU efficiency" not in r.stdout
    doc = json.loads((tmp_path / "mine" / "summary.json").read_text())
    assert doc["matmul_efficiency"] == {"value": 0.41, "source_tag": "meas", "estimate": False}


def test_a_calibrated_copy_under_a_shipped_name_is_not_called_fitted(tmp_path) -> None:
    """The fitted constants name their file: a profile `simtrain calibrate` wrote under the
    H100's name, in another folder, is labelled by its own matmul line."""
    from simtrain.apps.hardware_list import matmul_source
    from simtrain.apps.validate.fitted import load_fitted_constants
    from simtrain.spec.hardware import load_hardware

    text = (ROOT / "hardware/h100_sxm5_80gb.yaml").read_text()
    start = text.index("  matmul: 0.55")
    end = text.index("\n", start)
    mine = tmp_path / "h100_sxm5_80gb.yaml"
    mine.write_text(
        text[:start] + "  matmul: 0.61                    # [meas] my GEMMs" + text[end:]
    )
    hw = load_hardware(str(mine))
    assert hw.name == "h100_sxm5_80gb"
    assert matmul_source(hw, load_fitted_constants()) == "measured by simtrain calibrate"


def test_mistyped_hardware_and_preset_names_get_the_nearest() -> None:
    r = CliRunner().invoke(main, ["memory", str(ROOT / "scenarios/gpipe_8gpu.yaml"),
                                  "--set", "hardware=t4_16g"])  # fmt: skip
    assert r.exit_code == 2 and "did you mean 't4_16gb'?" in r.stderr
    r = CliRunner().invoke(main, ["memory", str(ROOT / "scenarios/gpipe_8gpu.yaml"),
                                  "--set", "model.preset=llama3-8"])  # fmt: skip
    assert r.exit_code == 2 and "did you mean 'llama3-8b'?" in r.stderr


def test_every_shipped_matmul_has_a_known_source() -> None:
    """Each shipped profile's efficiency.matmul is fitted (fitted_constants.yaml) or its line's
    first tag is one `simtrain hardware` explains: a new tag must be added to MATMUL_TAGS."""
    for row in hardware_rows():
        assert not row.matmul_source.startswith("see [") and row.matmul_source != "not stated", (
            row.name, row.matmul_source)  # fmt: skip
