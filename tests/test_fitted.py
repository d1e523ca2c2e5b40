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
from simtrain.errors import ConfigError
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
    for k in load_fitted_constants():
        assert k.fitted_on, k.constant
        for fam in k.fitted_on:
            assert fam in RUNTIMES, (k.constant, fam)  # a known source key
        assert k.path.is_file(), k.file


def test_a_remark_in_the_file_key_is_refused(tmp_path):
    """``file`` is a path; a remark after it (as the A100 entry once carried) names the key."""
    p = tmp_path / "fitted.yaml"
    p.write_text("- constant: efficiency.matmul = 0.61\n"
                 "  file: hardware/a100_sxm4_40gb.yaml (a remark)\n"
                 "  scope: {hardware: a100_sxm4_40gb}\n  fitted_on: [mosaicml]\n")  # fmt: skip
    with pytest.raises(ConfigError) as e:
        load_fitted_constants(p)
    assert e.value.key == "[0].file" and "note:" in str(e.value)
    p.write_text(p.read_text().replace(" (a remark)", "\n  note: a remark"))
    (k,) = load_fitted_constants(p)
    assert k.where == "hardware/a100_sxm4_40gb.yaml (a remark)" and k.path.is_file()


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


def _entries(field: str) -> list[dict]:
    """fitted_constants.yaml's entries of ``efficiency.<field>``."""
    return [d for d in load_yaml(FITTED_PATH)
            if d["constant"].startswith(f"efficiency.{field} ")]  # fmt: skip


def _fits(field: str) -> list[tuple[str, float, list[str]]]:
    """(profile, shipped value, record patterns) of each fitted ``efficiency.<field>`` that
    names its records."""
    return [(d["scope"]["hardware"], getattr(load_hardware(d["scope"]["hardware"]).efficiency,
                                             field), list(d["records"]))
            for d in _entries(field) if "records" in d]  # fmt: skip


@pytest.mark.parametrize("field,least", [("matmul", 3), ("memory_bound", 1)])
def test_fitted_entries_state_the_shipped_values(field: str, least: int) -> None:
    """Each efficiency.matmul / memory_bound entry of fitted_constants.yaml states the value
    its profile ships; one without ``records`` is the same GPU as a fitted profile and ships
    that value."""
    fitted = {p: v for p, v, _ in _fits(field)}
    assert len(fitted) >= least
    for d in _entries(field):
        profile = d["scope"]["hardware"]
        value = getattr(load_hardware(profile).efficiency, field)
        stated = float(d["constant"].split("=", 1)[1].split()[0])
        assert stated == value, (d["constant"], profile, value)
        if "records" not in d:
            same = next(c.same_gpu for c in load_fitted_constants() if c.constant == d["constant"]
                        and dict(c.scope)["hardware"] == profile)  # fmt: skip
            assert same and fitted[same] == value, (profile, same)


def test_a_gemm_table_rate_is_not_also_fitted() -> None:
    """A profile whose efficiency.matmul is the large-GEMM rate of its measured GEMM table
    (tests/test_gemm_tables.py checks the rates) has no fitted matmul entry; its element-wise
    rate is the fitted one (the A100 80GB)."""
    assert "a100_sxm4_80gb" not in {p for p, _, _ in _fits("matmul")}
    assert "a100_sxm4_80gb" in {p for p, _, _ in _fits("memory_bound")}


@pytest.mark.parametrize("profile,value,patterns", _fits("memory_bound"),
                         ids=[f[0] for f in _fits("memory_bound")])  # fmt: skip
def test_fitted_memory_bound_is_still_a_grid_minimum(profile, value, patterns, predictions) -> None:
    """Each [val] efficiency.memory_bound minimises, on the 0.01 grid and with the profile's
    shipped matmul (its GEMM table's rate), the MAPE of the records it names: no 0.01 step
    either way lowers it (benchmarks/fit_matmul.py PROFILE M M --memory-bound LO HI prints the
    grid)."""
    trs = fit_records(profile, patterns)
    assert len(trs) >= 4
    matmul = load_hardware(profile).efficiency.matmul
    here = matmul_fit_mape(trs, matmul, memory_bound=value, predictor=predictions)[0]
    for other in (round(value - 0.01, 2), round(value + 0.01, 2)):
        assert here <= matmul_fit_mape(trs, matmul, memory_bound=other, predictor=predictions)[0], (
            profile,
            other,
        )


@pytest.mark.parametrize("profile,value,patterns", _fits("matmul"),
                         ids=[f[0] for f in _fits("matmul")])  # fmt: skip
def test_fitted_matmul_is_still_a_grid_minimum(profile, value, patterns, predictions) -> None:
    """Each [val] efficiency.matmul minimises, on the 0.01 grid, the MAPE of the records it
    names (one throughput metric per record; benchmarks/fit_matmul.py prints the whole grid):
    no 0.01 step either way lowers it. A change of the cost model that moves the optimum fails
    here until the profile is re-fitted (its comment says the new MAPE), instead of the profile
    silently keeping a value fitted on another model."""
    trs = fit_records(profile, patterns)
    assert len(trs) >= 4
    here = matmul_fit_mape(trs, value, predictor=predictions)[0]
    for other in (round(value - 0.01, 2), round(value + 0.01, 2)):
        assert here <= matmul_fit_mape(trs, other, predictor=predictions)[0], (profile, other)


def test_the_fit_reads_a_layer_timing_twice_and_can_vary_memory_bound() -> None:
    """``matmul_fit_mape`` on a Table 4 layer record (no step time, tokens/s or TFLOP/s) fits its
    forward and its backward, two comparisons, as compare_record gives them; ``memory_bound``
    (benchmarks/fit_matmul.py --memory-bound) overrides the profile's: as shipped it changes
    nothing, a slower element-wise rate makes both times longer."""
    from dataclasses import replace

    from simtrain.apps.validate import compare_record

    trs = fit_records("a100_sxm4_80gb", ["korthikanti22_t4_22B_layer_no_recompute"])
    assert len(trs) == 1
    eff = trs[0].scenario.hardware.efficiency
    errs = {c.metric: c.error_pct for c in compare_record(trs[0])}
    want = (abs(errs["layer_forward_s"]) + abs(errs["layer_backward_s"])) / 2
    assert matmul_fit_mape(trs, eff.matmul)[0] == pytest.approx(want, rel=1e-12)
    hw = trs[0].scenario.hardware
    slow = replace(hw, efficiency=replace(eff, memory_bound=eff.memory_bound / 2))
    slow_errs = {c.metric: c.error_pct
                 for c in compare_record(replace(trs[0], scenario=replace(trs[0].scenario, hardware=slow)))}  # fmt: skip
    assert all(slow_errs[m] > errs[m] for m in ("layer_forward_s", "layer_backward_s"))
    # the memory_bound override: the same record re-simulated with the slower element-wise rate
    want_slow = (abs(slow_errs["layer_forward_s"]) + abs(slow_errs["layer_backward_s"])) / 2
    assert matmul_fit_mape(trs, eff.matmul, memory_bound=eff.memory_bound / 2)[0] == pytest.approx(
        want_slow, rel=1e-12)  # fmt: skip
    assert matmul_fit_mape(trs, eff.matmul, memory_bound=eff.memory_bound / 2)[1] == pytest.approx(
        (slow_errs["layer_forward_s"] + slow_errs["layer_backward_s"]) / 2, rel=1e-12)  # fmt: skip
