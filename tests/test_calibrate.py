"""simtrain calibrate: the profile it writes, and the closed loop measure -> profile -> predict.

The closed loop (issue 5, item 3): calibrate this CPU, simulate tests/data/closed_loop_cpu.yaml
with the calibrated profile, and compare with a real PyTorch step of the same model on the same
CPU (``simtrain.torchref.measure.measure_step``: two warm-up steps, median of 7 timed steps). Both run
with one intra-op thread (:data:`THREADS`): on the shared 2-core development machine a 2-thread
step under load from other processes stalls on its descheduled thread (steps of 4-10 s instead
of ~1.2 s, an AdamW step of 2 s instead of 0.1 s), one thread does not.

What the calibration measures (``simtrain.torchref.calibrate``): the fp32 square-product peak, the
memory bandwidth, and -- at this GPT's sizes, with the cost model's own FLOP and byte counts --
the GEMM mix of its linears, attention and head (``efficiency.matmul``: 0.76-1.0 of the 2048^3
product), the element-wise mix of its norms, adds, GeLU, masked softmax and loss
(``efficiency.memory_bound``: 0.22-0.31 on this CPU, where the profile used to say 1.0: the
unfused CPU kernels are compute-bound and allocate every output) and the AdamW step
(``efficiency.optimizer``: 0.3-0.5).

Memory: within 0.1 % (target 5 %: met). Step time (target 20 %): predicted / measured before
these calibrations 0.71-1.02 on a quiet machine (about half within 20 %), 0.44 under load with
2 threads; with them (load average 2-5 on 2 cores, other test suites running) first attempts
0.92, 1.00, 1.12, 0.97, 1.05 and one 1.23 (its retry 0.87). The loop is tried twice: machine
load can change between the calibration and the step, and a step's own samples spread by
+-20 % (the test prints them).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from simtrain.apps.simulate import simulate_scenario  # noqa: E402
from simtrain.spec.hardware import load_hardware  # noqa: E402
from simtrain.spec.scenario import load_scenario  # noqa: E402
from simtrain.torchref.calibrate import (  # noqa: E402
    Calibration,
    calibrate,
    efficiencies,
    elementwise_counted_bytes,
    gemm_counted_flops,
    profile_text,
    write_profile,
)
from simtrain.torchref.measure import measure_step  # noqa: E402

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


# --------------------------------------------------------------------------- closed loop


THREADS = 1  # torch intra-op threads, the same for the calibration and the step (docstring)


def _closed_loop(folder: Path) -> tuple:
    """Calibrate fp32 on this CPU, write the profile, simulate and measure the scenario."""
    cal = calibrate(
        "cpu", "cpu_test", dtypes=("fp32",), sizes=(512, 1024, 2048), repeats=3, threads=THREADS
    )
    prof = write_profile(folder / "cpu_test.yaml", cal)
    sc = load_scenario(SCENARIO, [f"hardware={prof}"])
    pred = simulate_scenario(sc)
    meas = measure_step(sc.model, sc.training, steps=7, warmup=2, threads=THREADS)
    return cal, sc, pred, meas


def _ratio(attempt: tuple) -> float:
    _, _, pred, meas = attempt
    return pred.metrics.step_time_s / meas.step_time_s


ATTEMPTS = 2


@pytest.fixture(scope="module")
def loops(tmp_path_factory: pytest.TempPathFactory) -> list[tuple]:
    """Up to two closed loops, stopping at the first within 20 % (see module docstring)."""
    out = []
    for i in range(ATTEMPTS):
        out.append(_closed_loop(tmp_path_factory.mktemp(f"calibrated{i}")))
        r = _ratio(out[-1])
        cal, _, pred, meas = out[-1]
        steps = ", ".join(f"{t:.3f}" for t in meas.step_times_s)
        print(f"closed loop attempt {i + 1}: predicted {pred.metrics.step_time_s:.3f} s, "
              f"measured {meas.step_time_s:.3f} s (steps {steps}), ratio {r:.3f}; "
              f"efficiency matmul/memory_bound/optimizer "
              f"{', '.join(f'{e:.3f}' for e in efficiencies(cal) if e is not None)}")  # fmt: skip
        if abs(r - 1) <= 0.20:
            break
    return out


def test_calibration_is_plausible(loops) -> None:
    cal = loops[0][0]
    assert cal.threads == THREADS
    assert 1e9 < cal.matmul_flops_per_s["fp32"] < 1e13
    assert cal.matmul_flops_per_s["fp32"] == cal.matmul_by_size["fp32"][2048]
    assert 1e9 < cal.memory_bandwidth_bytes_per_s < 1e12
    assert cal.adam_params_per_s > 1e6
    lo, hi = cal.gemm_spread
    assert 1e9 < lo <= cal.gemm_flops_per_s <= hi
    lo, hi = cal.elementwise_spread
    assert 1e7 < lo <= cal.elementwise_bytes_per_s <= hi
    assert all(0 < e <= 1 for e in efficiencies(cal) if e is not None)
    assert loops[0][3].threads == THREADS and len(loops[0][3].step_times_s) == 7


def test_closed_loop_memory_within_5pct(loops) -> None:
    """Predicted peak (no CUDA context on a CPU) vs the storage-tracked peak of the real step."""
    _, sc, pred, meas = loops[0]
    predicted = pred.memory.peak_memory_bytes - sc.hardware.cuda_context_bytes
    assert predicted == pytest.approx(meas.peak_bytes, rel=0.05)


def test_closed_loop_step_time_within_20pct(loops) -> None:
    """Issue target: the last attempt (the first within 20 %, or the second) within 20 %."""
    ratios = [round(_ratio(a), 3) for a in loops]
    assert abs(ratios[-1] - 1) <= 0.20, f"predicted / measured per attempt {ratios}"


def test_closed_loop_step_time_regression_bound(loops) -> None:
    """Regression bound: the best attempt within [0.6, 1.25] x the measured step time."""
    best = min(loops, key=lambda a: abs(_ratio(a) - 1))
    assert 0.6 <= _ratio(best) <= 1.25, [round(_ratio(a), 3) for a in loops]
