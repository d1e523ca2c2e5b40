"""simtrain calibrate: the profile it writes, the matmul size sweep, and the closed loop
measure -> profile -> predict -- with no assertion on wall time (issue 15, item 4).

What the calibration measures (``simtrain.torchref.calibrate``): the fp32 square-product peak, the
memory bandwidth, and -- at this GPT's sizes, with the cost model's own FLOP and byte counts --
the GEMM mix of its linears, attention and head (``efficiency.matmul``), the element-wise mix of
its norms, adds, GeLU, masked softmax and loss (``efficiency.memory_bound``: 0.17-0.31 on the
2-core development CPU: the unfused CPU kernels are compute-bound and allocate every output) and
the AdamW step (``efficiency.optimizer``).

A test here never compares a time with a fixed bound, so its verdict does not depend on how busy
the machine is:

- the size sweep stops before a call that would exceed ``NEXT_CALL_LIMIT_S``, so where it stops
  depends on the machine's speed and load; the plausibility test asserts on the sizes that were
  measured, and the stop rule itself is tested with a fake timer;
- the closed loop's memory is exact bytes (storage tracker), not time;
- the closed loop's step time is checked as a **ratio measured within one process**: the
  scenario with 2 and with 4 blocks, their steps run alternately and timed in CPU time
  (``time.process_time``, one thread: the time spent waiting for a core under load is not
  counted), predicted ratio / measured ratio within 20 %. On the busy 2-core development machine
  (load 3.5-5, other test suites running) predicted / measured was 0.97-1.09 in CPU time, where
  the same ratio in wall time ranged 0.96-1.57 and the absolute step time 1.01-1.53. CPU time
  still counts the slowdown a busy sibling hyperthread or shared cache puts on a step's own
  instructions: where one model's identical steps differ by more than ``MAX_STEP_SPREAD`` the
  test skips, saying so, rather than compare (a CI run saw 1.40 / 1.29 / 1.09 s for one model).

The absolute closed loop (calibrate, simulate, measure, predicted / measured step time) is
``benchmarks/closed_loop_cpu.py``; it prints its figures and asserts nothing.

Both sides run with one intra-op thread (:data:`THREADS`): on the shared 2-core development
machine a 2-thread step under load from other processes stalls on its descheduled thread.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from simtrain.apps.simulate import simulate_scenario  # noqa: E402
from simtrain.spec.hardware import load_hardware  # noqa: E402
from simtrain.spec.scenario import Scenario, load_scenario  # noqa: E402
from simtrain.torchref import microbench  # noqa: E402
from simtrain.torchref.calibrate import (  # noqa: E402
    Calibration,
    calibrate,
    efficiencies,
    elementwise_counted_bytes,
    gemm_counted_flops,
    profile_text,
    write_profile,
)
from simtrain.torchref.measure import measure_step, torch_threads  # noqa: E402
from simtrain.torchref.trainer import _warm_trainer  # noqa: E402

SCENARIO = Path(__file__).resolve().parent / "data" / "closed_loop_cpu.yaml"


def _fake(**kw) -> Calibration:
    base = dict(
        name="fake_cpu", device="cpu", device_name="Test CPU", torch_version="2.13.0",
        threads=2, when="2026-01-01T00:00:00Z",
        matmul_flops_per_s={"fp32": 5e10, "bf16": 1e9},
        matmul_by_size={"fp32": {512: 3e10, 1024: 5e10}, "bf16": {512: 1e9}},
        memory_bandwidth_bytes_per_s=1.2e10, bandwidth_by_kernel={"copy": 1e10, "add": 1.2e10},
        memory_bytes=16 * 2**30, host_memory_bytes=16 * 2**30, adam_params_per_s=7e7,
    )  # fmt: skip
    base.update(kw)
    return Calibration(**base)  # type: ignore[arg-type]


def test_written_profile_loads_with_measured_peaks(tmp_path: Path) -> None:
    p = write_profile(tmp_path / "fake_cpu.yaml", _fake())
    hw = load_hardware(str(p))
    assert hw.name == "fake_cpu"
    assert hw.peak("fp32") == pytest.approx(5e10)
    assert hw.peak("bf16") == pytest.approx(1e9)
    assert hw.peak("fp16") == 0.0
    assert hw.hbm_bandwidth_bytes_per_s == pytest.approx(1.2e10)
    assert (hw.efficiency.matmul, hw.efficiency.memory_bound) == (1.0, 1.0)  # mixes not run
    assert hw.efficiency.optimizer == pytest.approx(7e7 * 28 / 1.2e10, rel=1e-3)  # 28 B/param
    assert hw.cuda_context_bytes == 0 and hw.gpus_per_node == 1
    assert hw.cpu_adam_params_per_s == pytest.approx(7e7)
    text = p.read_text()
    assert "measured by `simtrain calibrate`" in text and "torch 2.13.0" in text
    assert "2026-01-01T00:00:00Z" in text


@pytest.mark.parametrize(("name", "device"), [("a: [b #c", "Test CPU"), ("x", 'CPU "quoted" # 1')])
def test_a_name_with_yaml_syntax_stays_a_string(tmp_path: Path, name: str, device: str) -> None:
    """The profile's name (calibrate's --out stem) and display name are written as quoted
    strings: 'a: [b #c' wrote a profile its own loader refused (a fuzz campaign)."""
    p = write_profile(tmp_path / "p.yaml", _fake(name=name, device_name=device))
    hw = load_hardware(str(p))
    assert hw.name == name and hw.display_name == f"{device} (calibrated)"


def test_measured_mixes_set_the_efficiencies(tmp_path: Path) -> None:
    """The GEMM and element-wise mixes become efficiency.matmul and memory_bound: their rate
    over the fp32 peak and the bandwidth (capped at 1)."""
    cal = _fake(gemm_flops_per_s=3.5e10, elementwise_bytes_per_s=2.4e9, elementwise_shape=(
        4, 256, 512, 8, 8192, 4))  # fmt: skip
    assert efficiencies(cal)[:2] == pytest.approx((0.7, 0.2))
    hw = load_hardware(str(write_profile(tmp_path / "cpu.yaml", cal)))
    assert (hw.efficiency.matmul, hw.efficiency.memory_bound) == pytest.approx((0.7, 0.2))
    fast_mix = _fake(gemm_flops_per_s=9e10)  # noise made the mix beat the square product:
    assert efficiencies(fast_mix)[0] == 1.0  # the mix becomes the peak, peak x eff = mix
    hw = load_hardware(str(write_profile(tmp_path / "fast.yaml", fast_mix)))
    assert hw.peak("fp32") * hw.efficiency.matmul == pytest.approx(9e10)


def test_mixes_are_counted_by_the_cost_model() -> None:
    """The calibration's FLOPs and bytes are the cost model's own counts for its GPT shape:
    blocks' GEMMs = 3 x forward (72·b·s·h² + 12·b·s²·h per block, Korthikanti Eq. 7 terms),
    head 3 x 2·b·s·h·V; element-wise bytes per block from costs.block_elementwise_bytes."""
    b, s, h, heads, v, _ = shape = (4, 256, 512, 8, 8192, 4)
    block, head = gemm_counted_flops(shape)
    assert block == pytest.approx(72 * b * s * h * h + 12 * b * s * s * h)
    assert head == pytest.approx(3 * 2 * b * s * h * v)
    ew_block, ew_head = elementwise_counted_bytes(shape)
    # forward per token: norms 2·2h, adds 2·3h, GeLU 2·4h; 4 per score; backward 1.25x the
    # forward in fp32 (4 B; measured on an H200, costs.ELEMENTWISE_BACKWARD_FACTOR)
    per_token, per_score = (4 + 6 + 8) * h, 4
    fb = 1 + 1.25
    assert ew_block == pytest.approx(fb * 4 * (b * s * per_token + b * heads * s * s * per_score))
    assert ew_head == pytest.approx(fb * 16 * b * s * v)


def test_every_number_of_the_profile_cites_a_defined_tag() -> None:
    """Same rule as the shipped profiles (tests/test_hardware.py): a numeric line carries a
    [tag] that the header defines."""
    lines = profile_text(_fake()).splitlines()
    defined = {m.group(1) for ln in lines if (m := re.match(r"^#\s+\[([a-z0-9]+)\]", ln))}
    numeric = re.compile(r"^\s*[A-Za-z_]\w*\s*:\s*[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?\s*#")
    checked = 0
    for ln in lines:
        if numeric.match(ln):
            tags = set(re.findall(r"\[([a-z0-9]+)\]", ln.partition("#")[2]))
            assert tags and tags <= defined, ln
            checked += 1
    assert checked >= 15


# --------------------------------------------------------------------------- the size sweep


def test_matmul_sweep_stops_before_a_call_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop rule, on a fake clock: a device at 1e8 FLOP/s takes 2·n³/1e8 s per product, so
    after n = 256 (0.34 s) the next size (8x: 2.7 s) would exceed NEXT_CALL_LIMIT_S = 2 s."""
    rate = 1e8

    def fake_timed(torch_mod, dev, fn, repeats):  # one real call for the size, a fake time
        return 2 * fn().shape[0] ** 3 / rate

    monkeypatch.setattr(microbench, "_timed", fake_timed)
    assert microbench.NEXT_CALL_LIMIT_S == 2.0
    sizes = (64, 128, 256, 512, 1024)
    got = microbench.measure_matmul("fp32", "cpu", sizes, repeats=1)
    assert list(got) == [64, 128, 256]
    assert all(r == pytest.approx(rate) for r in got.values())
    monkeypatch.setattr(microbench, "NEXT_CALL_LIMIT_S", 1e9)  # no limit: every size
    assert list(microbench.measure_matmul("fp32", "cpu", sizes, repeats=1)) == list(sizes)


# --------------------------------------------------------------------------- closed loop


THREADS = 1  # torch intra-op threads, the same for the calibration and the steps (docstring)
SIZES = (256, 512, 1024)  # the sweep may stop before the last under load: asserted as a prefix


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Calibration, Path]:
    """Calibrate fp32 on this CPU and write the profile."""
    cal = calibrate("cpu", "cpu_test", dtypes=("fp32",), sizes=SIZES, repeats=3, threads=THREADS)
    return cal, write_profile(tmp_path_factory.mktemp("calibrated") / "cpu_test.yaml", cal)


def _scenario(profile: Path, layers: int = 4) -> Scenario:
    return load_scenario(SCENARIO, [f"hardware={profile}", f"model.layers={layers}"])


def test_calibration_is_plausible(calibrated) -> None:
    """Rates are positive and of a plausible order of magnitude (units, not speed: bounds 10-100x
    beyond any CPU); the peak is the rate at the largest size the sweep measured, wherever it
    stopped."""
    cal, _ = calibrated
    assert cal.threads == THREADS
    measured = list(cal.matmul_by_size["fp32"])
    assert measured and measured == list(SIZES[: len(measured)])
    assert cal.matmul_flops_per_s["fp32"] == cal.matmul_by_size["fp32"][measured[-1]]
    assert all(1e8 < r < 1e14 for r in cal.matmul_by_size["fp32"].values())
    assert 1e8 < cal.memory_bandwidth_bytes_per_s < 1e13
    assert cal.adam_params_per_s > 1e5
    lo, hi = cal.gemm_spread
    assert 1e8 < lo <= cal.gemm_flops_per_s <= hi
    lo, hi = cal.elementwise_spread
    assert 1e6 < lo <= cal.elementwise_bytes_per_s <= hi
    assert all(0 < e <= 1 for e in efficiencies(cal) if e is not None)
    fit, n = cal.gemm_edge  # the shape sweep ran every one of its 27 GEMMs
    assert n == 27


def test_calibrated_profile_prices_its_own_measured_mix(calibrated) -> None:
    """The profile written from this CPU's calibration carries the sweep's L and, through the
    cost model's own pricing (compute.matmul_ns: counted FLOPs + L x the mix's shape term, at
    peak x efficiency.matmul), gives back the GEMM mix's measured time (to the profile's 6
    printed digits): no wall-time bound, whatever L the noisy sweep picked."""
    from simtrain.costs import compute
    from simtrain.torchref.microbench import gemm_mix_edge

    cal, path = calibrated
    hw = load_hardware(str(path))
    assert hw.efficiency.gemm_edge_elements == cal.gemm_edge[0].edge
    shape = cal.elementwise_shape
    (block, head), (e_block, e_head) = gemm_counted_flops(shape), gemm_mix_edge(shape)
    work, edge = shape[5] * block + head, shape[5] * e_block + e_head
    priced = compute.matmul_ns(work, hw, "fp32", edge=edge)
    assert priced == pytest.approx(1e9 * work / cal.gemm_flops_per_s, rel=1e-4)


def test_closed_loop_memory_within_5pct(calibrated) -> None:
    """Predicted peak (no CUDA context on a CPU) vs the storage-tracked peak of the real step."""
    sc = _scenario(calibrated[1])
    pred = simulate_scenario(sc)
    meas = measure_step(sc.model, sc.training, steps=1, warmup=1, threads=THREADS)
    assert meas.threads == THREADS
    predicted = pred.memory.peak_memory_bytes - sc.hardware.cuda_context_bytes
    assert predicted == pytest.approx(meas.peak_bytes, rel=0.05)


RATIO_LAYERS = (2, 4)  # the closed-loop GPT with 2 and with 4 blocks
RATIO_PAIRS = 3  # timed steps of each, alternated
#: The most the CPU times of one model's identical steps may differ (max / min - 1) for the
#: ratio to be a measurement: on the quiet 2-core development machine they agreed within 0.7 %
#: and 2.8 % (2 and 4 blocks, 2026-12-06); the CI run that failed the check had 28 % and 25 %.
MAX_STEP_SPREAD = 0.10


def interleaved_cpu_times(scenarios: list[Scenario], pairs: int) -> list[list[float]]:
    """CPU seconds (``time.process_time``: this process's, all threads) of ``pairs`` steps of
    each scenario's reference model, the models' steps alternated (A, B, A, B, ...) after two
    warm-up steps each. With one intra-op thread, CPU time does not count the time the process
    waits for a core, which is what load from other processes adds to wall time."""
    with torch_threads(THREADS):
        warm = [_warm_trainer(sc.model, sc.training, torch.device("cpu"), None, 0, 2)
                for sc in scenarios]  # fmt: skip
        times: list[list[float]] = [[] for _ in scenarios]
        for _ in range(pairs):
            for (_, trainer, idx, targets), ts in zip(warm, times, strict=True):
                t0 = time.process_time()
                trainer.step(idx, targets)
                ts.append(time.process_time() - t0)
    return times


def test_closed_loop_step_time_ratio_within_20pct(calibrated) -> None:
    """Issue 15, item 4: the step-time closed loop as a ratio measured within one process.
    Predicted (4 blocks / 2 blocks) over measured (4 blocks / 2 blocks, the shortest CPU time
    of each model's steps, run alternately: load only ever adds time, through cache and core
    sharing) within 20 %: the calibrated profile must get the blocks' share of the step (their
    GEMMs and element-wise work) against the head's and the optimizer's right."""
    scs = [_scenario(calibrated[1], n) for n in RATIO_LAYERS]
    pred = [simulate_scenario(sc).metrics.step_time_s for sc in scs]
    times = interleaved_cpu_times(scs, RATIO_PAIRS)
    meas = [min(ts) for ts in times]
    r_pred, r_meas = pred[1] / pred[0], meas[1] / meas[0]
    steps = [[round(t, 3) for t in ts] for ts in times]
    print(f"predicted {pred[0]:.3f} / {pred[1]:.3f} s = {r_pred:.3f}; measured {meas[0]:.3f} / "
          f"{meas[1]:.3f} s = {r_meas:.3f} (steps {steps}); ratio {r_pred / r_meas:.3f}")  # fmt: skip
    spread = max(max(ts) / min(ts) - 1 for ts in times)
    if spread > MAX_STEP_SPREAD:
        # Identical steps whose CPU times differ this much are not a measurement (a busy
        # sibling hyperthread or cache slows a step's instructions, which CPU time counts: CI
        # saw 1.395 / 1.288 / 1.086 s for one model's identical steps, and its 4 blocks "faster"
        # than its 2): the ratio is not checked on such a machine, and says so.
        pytest.skip(f"repeated identical steps vary by {spread:.0%} in CPU time (> "
                    f"{MAX_STEP_SPREAD:.0%}): the machine is too busy to measure a ratio; "
                    "benchmarks/closed_loop_cpu.py prints it")  # fmt: skip
    assert r_meas > 1  # twice the blocks take longer, whatever the load
    assert r_pred / r_meas == pytest.approx(1, abs=0.20)


def test_shape_sweep_measures_each_shape_on_the_cpu() -> None:
    """measure_gemm_shapes times (M x K) @ (K x N) for each (M, N, K) in order (here tiny, on
    the CPU): one positive FLOP/s per shape keyed as given, the FLOPs counted as 2·M·N·K; the
    benchmark's fit (fit_gemm_edge, tested in test_gemm_tables) takes that table. No bound on
    the rate itself."""
    from simtrain.torchref.microbench import measure_gemm_shapes

    rates = measure_gemm_shapes("fp32", "cpu", ((64, 48, 32), (64, 48, 128)), repeats=2)
    assert list(rates) == [(64, 48, 32), (64, 48, 128)]
    assert all(v > 0 for v in rates.values())


def test_calibrated_shape_term_keeps_the_measured_mix_and_square_product(tmp_path: Path) -> None:
    """With a fitted GEMM shape term L the written profile's fp32 peak is the largest square
    product's rate x (1 + 3L/n) and efficiency.matmul the mix's priced rate over it, so the cost
    model (compute.matmul_ns, the mix's counted FLOPs plus L x its gemm_mix_edge) prices the
    measured mix back at its measured time, and the square product at efficiency 1 at its own."""
    from simtrain.costs import compute
    from simtrain.costs.gemm_shape import EdgeFit
    from simtrain.torchref.microbench import gemm_mix_edge

    shape = (4, 256, 512, 8, 8192, 4)
    fit = EdgeFit(edge=60.0, efficiency=0.9, mape_pct=3.0, constant_mape_pct=12.0)
    cal = _fake(gemm_flops_per_s=2.5e10, elementwise_shape=shape, gemm_edge=(fit, 27))
    hw = load_hardware(str(write_profile(tmp_path / "edge.yaml", cal)))
    assert hw.efficiency.gemm_edge_elements == 60
    assert hw.peak("fp32") == pytest.approx(5e10 * (1 + 3 * 60 / 1024), rel=1e-5)  # 6 digits
    assert hw.peak("bf16") == pytest.approx(1e9 * (1 + 3 * 60 / 512), rel=1e-5)
    (block, head), (e_block, e_head) = gemm_counted_flops(shape), gemm_mix_edge(shape)
    work, edge = 4 * block + head, 4 * e_block + e_head
    assert edge > 0
    mix_ns = compute.matmul_ns(work, hw, "fp32", edge=edge)
    assert mix_ns == pytest.approx(1e9 * work / 2.5e10, rel=1e-4)  # the profile rounds to 6 digits
    square = replace_eff(hw, 1.0)
    n = 1024
    sq_ns = compute.matmul_ns(2.0 * n**3, square, "fp32", edge=compute.gemm_edge(n, n, n))
    assert sq_ns == pytest.approx(1e9 * 2.0 * n**3 / 5e10, rel=1e-4)
    text = (tmp_path / "edge.yaml").read_text()
    assert "gemm_edge_elements: 60" in text and "27 fp32 GEMMs" in text


def replace_eff(hw, matmul: float):
    from dataclasses import replace

    return replace(hw, efficiency=replace(hw.efficiency, matmul=matmul))


def test_shape_sweep_fit_recovers_a_generated_term(monkeypatch: pytest.MonkeyPatch) -> None:
    """calibrate's sweep -> fit: rates generated as P·e∞ / (1 + L/M + L/N + L/K) over the
    device's shape grid give back L and e∞ exactly (the fit is costs.gemm_shape.fit_gemm_edge)."""
    from simtrain.torchref import calibrate as cal_mod

    peak, e_inf, edge = 4e10, 0.8, 70

    def fake_shapes(dtype, device, shapes, repeats=5):
        assert dtype == "fp32" and len(shapes) == 27
        return {(m, n, k): peak * e_inf / (1 + edge / m + edge / n + edge / k)
                for m, n, k in shapes}  # fmt: skip

    monkeypatch.setattr(cal_mod, "measure_gemm_shapes", fake_shapes)
    notes: list[str] = []
    fit, n = cal_mod._gemm_edge_fit("cpu", microbench.CPU_GEMM_EDGE_SIZES, peak, 3, notes)
    assert (fit.edge, n, notes) == (70, 27, [])
    assert fit.efficiency == pytest.approx(e_inf, rel=1e-12)
    assert fit.mape_pct == pytest.approx(0, abs=1e-9) and fit.constant_mape_pct > 10
    assert cal_mod._gemm_edge_fit("cpu", (), peak, 3, notes) is None  # no sweep: L = 0


def test_flash_sweep_runs_each_shape_on_the_cpu() -> None:
    """The sweep on this CPU, through ``sdpa_kernel`` and PyTorch's CPU FlashAttention backend
    (a CPU calibration itself writes no class: the closed-loop CPU model runs unfused attention):
    a positive forward and backward time for every shape, in order. (The backward is the
    forward-and-backward time less the forward's, floored at 1e-3 of the call: on a loaded CPU
    the two timings' noise can reach the floor, so no bound on the backward's share is
    asserted; no test asserts on wall time.)"""
    shapes = ((2, 64), (4, 128))
    by_kernel = microbench.measure_flash_attention("cpu", shapes, head_dim=16, repeats=1,
                                                   dtype="fp32")  # fmt: skip
    assert list(by_kernel) == ["fa2"]  # the CPU runs PyTorch's flash backend only
    times = by_kernel["fa2"]
    assert list(times) == list(shapes)
    assert all(f > 0 and b > 0 for f, b in times.values())  # (not the backward's share)
    # the FLOPs each call is credited with, by hand: half of 4·b·s²·H·d forward, 2.5x backward
    assert microbench.flash_causal_flops(8, 4096) == (4 * 4096**2 * 8 * 128 / 2,
                                                      2.5 * 4 * 4096**2 * 8 * 128 / 2)  # fmt: skip


def test_calibrated_flash_class_prices_its_own_measured_calls(tmp_path: Path) -> None:
    """A flash sweep per SDPA backend timed as e∞ / (1 + R / rows) of the profile's bf16 peak
    (generated: FlashAttention-2 e 0.6 / 0.45, R 20,480 / 8,192; cuDNN 0.7 / 0.5, 4,096 /
    1,024) is fitted back per kernel, written, loaded, and priced by the cost model
    (``compute.flash_core``, the default runtime's fa2) at each call's own time."""
    from simtrain.costs.compute import flash_time_factor
    from simtrain.torchref.profile_writer import flash_fits, large_gemm_rate

    base = _fake(matmul_by_size={"fp32": {1024: 5e10}, "bf16": {1024: 4e10}},
                 matmul_flops_per_s={"fp32": 5e10, "bf16": 4e10})  # fmt: skip
    peak = large_gemm_rate(base, "bf16")
    truth = {"fa2": ((0.6, 20480.0), (0.45, 8192.0)), "cudnn": ((0.7, 4096.0), (0.5, 1024.0))}
    times: dict[str, dict] = {}
    for kernel, classes in truth.items():
        times[kernel] = {}
        for heads, s in microbench.CUDA_FLASH_SHAPES:
            flops = microbench.flash_causal_flops(heads, s)
            times[kernel][(heads, s)] = tuple(
                f / (peak * e) * flash_time_factor(r, heads * s, 0.0, s)
                for f, (e, r) in zip(flops, classes, strict=True)
            )
    cal = dataclasses.replace(base, flash_times=times)
    fits = flash_fits(cal)
    assert {k: [(f.edge, round(f.efficiency, 12)) for f in pair] for k, pair in fits.items()} == {
        "cudnn": [(4096, 0.7), (1024, 0.5)], "fa2": [(20480, 0.6), (8192, 0.45)]}  # fmt: skip
    hw = load_hardware(str(write_profile(tmp_path / "flash.yaml", cal)))
    # the command's printed table names each kernel's class and its own shape count
    from simtrain.torchref.profile_writer import calibration_table

    table = calibration_table(cal)
    n = len(microbench.CUDA_FLASH_SHAPES)
    for kernel, ((ef, rf), _) in truth.items():
        assert f"FlashAttention {kernel} (causal bf16, {n} shapes): forward {ef:.3f}" in table
        assert f"R {rf:g} rows" in table
    for kernel, ((ef, rf), (eb, rb)) in truth.items():
        cls = hw.flash_class(kernel)
        assert (cls.forward_rows_edge, cls.backward_rows_edge) == (rf, rb)
        assert (cls.forward, cls.backward) == (pytest.approx(ef, rel=1e-3),
                                               pytest.approx(eb, rel=1e-3))  # fmt: skip
    assert hw.compute_peak("bf16") == pytest.approx(peak, rel=1e-5)
    # the cost model prices each measured call back at its time (to the profile's 4 digits)

    for heads, s in ((1, 16384), (8, 8192), (64, 4096)):
        _assert_priced_at(tmp_path / "flash.yaml", heads, 128, s, times["fa2"][(heads, s)])
    # no sweep (a CPU): no class in the profile
    assert load_hardware(str(write_profile(tmp_path / "none.yaml", base))).attention_kernels == ()


def test_calibrated_head_dim_edge_prices_its_own_narrow_calls(tmp_path: Path) -> None:
    """A narrow-head sweep (head dim 64) timed as each class at D = 21 forward, 9 backward (the
    wide sweep as the class e∞ / R) is fitted back to D per kernel with e∞ and R held, written
    as ``*_head_dim_edge``, named in the printed table, and priced by the cost model at each
    narrow call's own time; a kernel without a narrow sweep keeps D = 0."""
    from simtrain.costs.compute import flash_time_factor
    from simtrain.costs.gemm_shape import EdgeFit
    from simtrain.torchref.profile_writer import (
        calibration_table,
        flash_fits,
        flash_head_dim_fits,
        large_gemm_rate,
    )

    # a shape term (L = 64), so that the peak both fits divide by is the term's large-GEMM rate,
    # not the measured bf16 rate (which a fit taking the wrong peak would use)
    base = _fake(matmul_by_size={"fp32": {1024: 5e10}, "bf16": {1024: 4e10}},
                 matmul_flops_per_s={"fp32": 5e10, "bf16": 4e10},
                 gemm_edge=(EdgeFit(64.0, 1.0, 0.0, 0.0), 9))  # fmt: skip
    peak = large_gemm_rate(base, "bf16")
    assert peak != base.matmul_flops_per_s["bf16"]
    classes = ((0.6, 20480.0, 21.0), (0.45, 8192.0, 9.0))  # (e∞, R, D) forward, backward

    def sweep(shapes, head_dim):
        return {
            (heads, s): tuple(
                f / (peak * e) * flash_time_factor(r, heads * s, 0.0, s, d, head_dim)
                for f, (e, r, d) in zip(
                    microbench.flash_causal_flops(heads, s, head_dim), classes, strict=True
                )
            )  # fmt: skip
            for heads, s in shapes
        }

    wide = sweep(microbench.CUDA_FLASH_SHAPES, microbench.FLASH_HEAD_DIM)
    narrow = sweep(microbench.CUDA_FLASH_NARROW_SHAPES, microbench.FLASH_NARROW_HEAD_DIM)
    cal = dataclasses.replace(base, flash_times={"fa2": wide, "cudnn": wide},
                              flash_narrow_times={"fa2": narrow})  # fmt: skip
    dims = flash_head_dim_fits(cal, flash_fits(cal))
    assert {k: [f.edge for f in pair] for k, pair in dims.items()} == {"fa2": [21, 9]}
    assert all(f.mape_pct < 1e-9 and f.constant_mape_pct > 1 for f in dims["fa2"])
    assert "head dim 64: D 21 / 9" in calibration_table(cal)
    hw = load_hardware(str(write_profile(tmp_path / "narrow.yaml", cal)))
    fa2, cudnn = hw.flash_class("fa2"), hw.flash_class("cudnn")
    assert (fa2.forward_head_dim_edge, fa2.backward_head_dim_edge) == (21, 9)
    assert (cudnn.forward_head_dim_edge, cudnn.backward_head_dim_edge) == (0, 0)
    from simtrain.torchref.calibrate import head_dim_notes

    assert head_dim_notes(cal) == ("FlashAttention cudnn: no head-dim-64 sweep: D = 0, a "
                                   "narrower head priced as 128",)  # fmt: skip
    for heads, s in microbench.CUDA_FLASH_NARROW_SHAPES:
        _assert_priced_at(tmp_path / "narrow.yaml", heads, 64, s, narrow[(heads, s)])
    # a call the timer did not resolve (0 s) is skipped, not divided by: the fit is unchanged
    blind = {**narrow, (1, 1024): (0.0, 1e-3)}
    assert (
        flash_head_dim_fits(
            dataclasses.replace(cal, flash_narrow_times={"fa2": blind}), flash_fits(cal)
        )
        == dims
    )
    # narrow calls 3x slower than any D explains: D at the grid's end, flagged in the profile
    slow = {k: (3 * f, 3 * b) for k, (f, b) in narrow.items()}
    text = profile_text(dataclasses.replace(cal, flash_narrow_times={"fa2": slow}))
    assert "forward_head_dim_edge: 256" in text and "at the grid's end" in text


def _assert_priced_at(profile: Path, heads: int, head_dim: int, s: int,
                      times: tuple[float, float]) -> None:  # fmt: skip
    """``compute.flash_core`` prices one layer of ``heads`` x ``head_dim`` over one sequence of
    ``s`` on ``profile`` (the default runtime's fa2) at the measured (forward, backward) seconds
    (to the profile's 4 digits)."""
    from simtrain.costs.compute import block_flops, flash_core
    from simtrain.spec.scenario import parse_scenario

    sc = parse_scenario(
        {"name": "f", "hardware": str(profile),
         "model": {"layers": 1, "hidden": head_dim * heads, "heads": heads,
                   "ffn_hidden": 2 * head_dim * heads, "vocab": 256, "max_positions": s,
                   "flash_attention": True},
         "training": {"seq_len": s, "global_batch": 1, "micro_batch": 1, "precision": "bf16"}},
        "f.yaml")  # fmt: skip
    fa = flash_core(sc, sc.training, block_flops(sc.model, sc.training), "bf16", True)
    assert (fa.forward_ns, fa.backward_ns) == (pytest.approx(1e9 * times[0], rel=2e-3),
                                               pytest.approx(1e9 * times[1], rel=2e-3))  # fmt: skip


def test_flash_backward_keeps_a_floor_when_the_pair_times_below_its_forward(monkeypatch) -> None:
    """A pair timed below its own forward (timing noise on a tiny call) gives the backward
    0.1 % of the pair, not a negative or zero time: forward 2 ms, forward and backward 1 ms."""
    times = iter((2e-3, 1e-3))
    monkeypatch.setattr(microbench, "_timed", lambda *a, **k: next(times))
    by_kernel = microbench.measure_flash_attention("cpu", ((2, 64),), head_dim=16, repeats=1,
                                                   dtype="fp32")  # fmt: skip
    assert by_kernel["fa2"][(2, 64)] == (2e-3, 1e-3 * 1e-3)


def test_a_calibrated_profile_is_not_flagged_as_an_estimate(tmp_path: Path) -> None:
    """What `simtrain calibrate` writes gets no estimate line in `simtrain run`, with or without
    the GEMM mix, and `simtrain hardware` calls its matmul measured, also when it is saved under
    the name of a shipped profile whose matmul was fitted (a100_sxm4_80gb)."""
    from simtrain.apps.hardware_list import matmul_source
    from simtrain.apps.validate.fitted import load_fitted_constants
    from simtrain.report.tables import estimate_line

    fitted = load_fitted_constants()
    for name, cal in (("my_gpu", _fake(name="my_gpu")),
                      ("a100_sxm4_80gb", _fake(name="a100_sxm4_80gb", gemm_flops_per_s=3.5e10))):  # fmt: skip
        hw = load_hardware(str(write_profile(tmp_path / f"{name}.yaml", cal)))
        assert hw.name == name and hw.matmul_tag == "meas"
        assert estimate_line(hw) == "", name
        assert matmul_source(hw, fitted) == "measured by simtrain calibrate", name


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cuda:１", "mps"])
def test_calibrate_refuses_an_unknown_device_with_measures_check(device: str) -> None:
    """calibrate checks its device with measure's check_device: a ConfigError naming
    --device and the devices it takes, before torch parses the string (cuda:x was torch's
    RuntimeError from the Python API)."""
    from simtrain.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape("cpu | cuda | cuda:N")) as info:
        calibrate(device)
    assert info.value.key == "--device"


@pytest.mark.parametrize("threads", ["0", "1025"])
def test_calibrate_threads_have_measures_bounds(threads: str, tmp_path: Path) -> None:
    """calibrate --threads takes 1..MAX_TORCH_THREADS, as measure does (it had no upper
    bound): a click usage error naming the option, nothing measured, no profile written."""
    from click.testing import CliRunner

    from simtrain.cli import MAX_TORCH_THREADS, main

    assert MAX_TORCH_THREADS == 1024
    out = tmp_path / "x.yaml"
    r = CliRunner().invoke(main, ["calibrate", "--out", str(out), "--threads", threads])
    assert r.exit_code == 2 and "--threads" in r.output, r.output
    assert not out.exists()


def test_calibrate_checks_out_before_measuring(tmp_path: Path, monkeypatch) -> None:
    """--out was checked only when the profile was written, after minutes of measuring (a
    fuzz campaign): a path that is not .yaml, a folder or a place this process cannot write is
    refused first, and nothing is measured."""
    from click.testing import CliRunner

    from simtrain.cli import main
    from simtrain.torchref import calibrate as cal_mod

    def never(*args, **kwargs):
        raise AssertionError("measured before --out was checked")

    monkeypatch.setattr(cal_mod, "calibrate", never)
    (tmp_path / "folder.yaml").mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [tmp_path / "x.txt", tmp_path / "folder.yaml", tmp_path / ".yaml"]
    if os.geteuid() != 0:  # (root writes anywhere)
        cases.append(locked / "sub" / "x.yaml")
    for out in cases:
        r = CliRunner().invoke(main, ["calibrate", "--out", str(out)])
        assert r.exit_code == 2 and "--out" in r.stderr, (out, r.output)
    monkeypatch.setattr(cal_mod, "calibrate", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("reached the measurement")))  # fmt: skip
    r = CliRunner().invoke(main, ["calibrate", "--out", str(tmp_path / "new" / "mine.yaml")])
    assert isinstance(r.exception, RuntimeError)  # a good path goes on to measure
