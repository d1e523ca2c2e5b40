"""measured/fitted_constants.yaml and the held-out report of ``validate --by family``."""

from __future__ import annotations

import pytest

from simtrain.apps.validate.conventions import RUNTIMES
from simtrain.apps.validate.fitted import (
    FITTED_PATH,
    constant_reports,
    fit_records,
    load_fitted_constants,
    matmul_fit_mape,
)
from simtrain.apps.validate.measured import Comparison
from simtrain.spec.hardware import load_hardware
from simtrain.spec.scenario import parse_scenario
from simtrain.spec.yamlfile import load_yaml

TINY = {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 4, "ffn_hidden": 256, "vocab": 256,
        "max_positions": 128}  # fmt: skip


def _sc(hardware: str, runtime: str, zero: int = 0):
    return parse_scenario({"name": "x", "model": TINY, "hardware": hardware, "runtime": runtime,
                           "training": {"seq_len": 64, "global_batch": 8, "micro_batch": 1},
                           "parallelism": {"dp": 8, "zero_stage": zero}}, "t.yaml")  # fmt: skip


def test_every_fitted_constant_names_known_families_and_an_existing_file():
    from simtrain.apps.validate.fitted import FITTED_PATH

    root = FITTED_PATH.parents[1]
    for k in load_fitted_constants():
        assert k.fitted_on, k.constant
        for fam in k.fitted_on:
            assert fam in RUNTIMES, (k.constant, fam)  # a known source key
        assert (root / k.file.split(" ")[0]).is_file(), k.file


def test_report_splits_fitted_from_held_out_families_by_scope():
    ks = {k.constant: k for k in load_fitted_constants()}
    host = next(k for c, k in ks.items() if c.startswith("host_us_per_op"))
    zero3 = next(k for c, k in ks.items() if c.startswith("zero3_per_gpu_nic"))
    scen = {
        "a": _sc("a100_sxm4_80gb", "pytorch_eager"),  # host: yes
        "b": _sc("a100_sxm4_80gb", "megatron_lm_2021"),  # host: no
        "c": _sc("a100_sxm4_80gb", "deepspeed", zero=3),  # host and ZeRO-3 DeepSpeed
    }
    comps = [
        Comparison("a", "simtrain_h200", "step_time_s", 1.0, 1.1, 10.0),
        Comparison("b", "megatron_sc21", "tflops_per_gpu", 1.0, 1.0, 0.0),
        Comparison("c", "megatron_sc21_zero3", "tflops_per_gpu", 1.0, 0.8, -20.0),
        Comparison("c", "megatron_sc21_zero3", "fits", True, True, 0.0),
    ]
    r_host, r_zero3 = constant_reports(comps, scen, [host, zero3])
    assert [(f.family, f.fitted) for f in r_host.rows] == [
        ("simtrain_h200", True), ("megatron_sc21_zero3", False)]  # fmt: skip
    assert [(f.family, f.metric, f.fitted, f.n, f.mape_pct) for f in r_zero3.rows] == [
        ("megatron_sc21_zero3", "tflops_per_gpu", True, 1, 20.0)]  # fmt: skip


def _matmul_entries() -> list[dict]:
    return [d for d in load_yaml(FITTED_PATH) if d["constant"].startswith("efficiency.matmul")]


def _matmul_fits() -> list[tuple[str, float, list[str]]]:
    """(profile, shipped value, record patterns) of each fitted efficiency.matmul that names
    its records."""
    return [(d["scope"]["hardware"], load_hardware(d["scope"]["hardware"]).efficiency.matmul,
             list(d["records"])) for d in _matmul_entries() if "records" in d]  # fmt: skip


def test_fitted_matmul_entries_state_the_shipped_values() -> None:
    """Each efficiency.matmul entry of fitted_constants.yaml states the value its profile ships;
    one without ``records`` is the same GPU as a fitted profile and ships that value."""
    fitted = {p: v for p, v, _ in _matmul_fits()}
    assert len(fitted) >= 4
    for d in _matmul_entries():
        profile = d["scope"]["hardware"]
        value = load_hardware(profile).efficiency.matmul
        stated = float(d["constant"].split("=", 1)[1].split()[0])
        assert stated == value, (d["constant"], profile, value)
        if "records" not in d:
            same = d["constant"].split("same GPU as ", 1)[1].rstrip(")")
            assert fitted[same] == value, (profile, same)


@pytest.mark.parametrize("profile,value,patterns", _matmul_fits(),
                         ids=[f[0] for f in _matmul_fits()])  # fmt: skip
def test_fitted_matmul_is_still_a_grid_minimum(profile, value, patterns) -> None:
    """Each [val] efficiency.matmul minimises, on the 0.01 grid, the MAPE of the records it
    names (one throughput metric per record; benchmarks/fit_matmul.py prints the whole grid):
    no 0.01 step either way lowers it. A change of the cost model that moves the optimum fails
    here until the profile is re-fitted (its comment says the new MAPE), instead of the profile
    silently keeping a value fitted on another model."""
    trs = fit_records(profile, patterns)
    assert len(trs) >= 4
    here = matmul_fit_mape(trs, value)[0]
    for other in (round(value - 0.01, 2), round(value + 0.01, 2)):
        assert here <= matmul_fit_mape(trs, other)[0], (profile, other)
