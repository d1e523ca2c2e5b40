"""Invariants of every output (issue 15, deliver 3), written down once in :func:`check_outputs`
and applied to every shipped scenario and to hypothesis-generated valid scenarios.

:func:`check_outputs` is a plain function (no pytest fixture) so that a fuzzer can import it::

    from test_invariants import check_outputs  # with tests/ on sys.path
    check_outputs(scenario)  # raises AssertionError naming the invariant that broke

:func:`scenario_data` is the hypothesis strategy of valid scenario mappings used here.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from simtrain.apps.caches import clear_caches
from simtrain.apps.simulate import SimulationResult, simulate_scenario
from simtrain.costs.activations import layer_input_bytes
from simtrain.costs.memory import MemoryReport, estimate_memory
from simtrain.errors import ConfigError
from simtrain.layout.partition import empty_stages
from simtrain.layout.step import resolve
from simtrain.report.tables import dumps, run_summary
from simtrain.report.trace import chrome_trace, dumps_chrome_trace
from simtrain.schedules.registry import SCHEDULES
from simtrain.sim.timeline import MEMORY_CATEGORIES
from simtrain.spec.hardware import available_profiles, load_hardware
from simtrain.spec.model import MLP_KINDS, POSITION_KINDS
from simtrain.spec.precision import PRECISIONS
from simtrain.spec.scenario import Scenario, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
GOLDEN = Path(__file__).resolve().parent / "golden"


def check_outputs(sc: Scenario, *, rerun: bool = True) -> None:
    """Run ``simtrain memory --json`` and ``simtrain run`` (summary.json, trace.json) on ``sc``
    and assert every output invariant; an ``AssertionError`` names the one that broke.

    1. **No empty stage.** Every pipeline chunk holds a decoder layer, the embedding, the
       head or a part of the loss (nanotron's split: ``StageBlocks.tail``). A layer split that would leave one empty is instead a ``ConfigError`` naming
       ``parallelism.layer_split`` and ``parallelism.pp``, on one line (then nothing else is
       checked: there is no output).
    2. **Bubble in [0, 1)**, per stage and overall (the mean over stages): every stage computes
       something.
    3. **Utilisation in (0, 1]**: MFU (model FLOPs / (step time x GPUs x dense peak of the
       compute dtype)) and hardware FLOP utilisation (``tflops_per_gpu`` / that peak); MFU <=
       HFU (recompute only adds FLOPs); one rank's compute spans never overlap.
    4. **Memory.** Every category >= 0 (``memory_bytes``, ``peak_memory_bytes_by_category``,
       host bytes). ``peak_memory_bytes_by_category`` has every category and sums exactly to
       ``peak_memory_bytes``; no category at the peak exceeds its own maximum
       (``memory_bytes``); the report's peak is the largest stage's; the simulated trace's peak
       per stage equals the memory model's.
    5. **Recompute never raises activations.** Against the same scenario without recompute,
       per stage: the ``activations`` category (saved, plus a re-materialised block during a
       backward) and the peak are never larger; a chunk without decoder layers has no
       recompute working set. One measured exception (tests/test_recompute_memory.py): under
       full recompute and a frozen-embedding PEFT method, a stage whose first chunk holds the
       embedding and a single block keeps that block's checkpointed input, which none frees:
       at most b·s·h more.
    6. **Finite JSON.** summary.json, ``memory --json`` and trace.json hold no NaN or infinity
       (they serialise with ``allow_nan=False``).
    7. **Byte-identical reruns** (``rerun``): with every cache cleared, summary.json,
       ``memory --json`` and trace.json come out byte for byte the same.
    """
    try:
        step = resolve(sc)
    except ConfigError as exc:
        _check_empty_stage_error(sc, exc)
        return
    for k, ch in enumerate(step.chunks):
        assert ch.layers > 0 or ch.embedding or ch.head or ch.tail, f"1. chunk {k} is empty: {ch}"
    res = simulate_scenario(sc)
    mem = estimate_memory(sc)
    texts = _outputs(res, mem)
    _check_bubble(res)
    _check_utilisation(sc, res)
    _check_memory(res, mem)
    _check_recompute(sc, mem)
    for name, text in texts.items():
        _check_finite(json.loads(text), name)
    if rerun:
        clear_caches()
        again = _outputs(simulate_scenario(sc), estimate_memory(sc))
        for name, text in texts.items():
            assert again[name] == text, f"7. a rerun changed {name}"


def _outputs(res: SimulationResult, mem: MemoryReport) -> dict[str, str]:
    """The three documents as the CLI writes them (``dumps``; the trace's own serialiser,
    which refuses NaN)."""
    trace = chrome_trace(res.timeline, capacity_bytes=res.scenario.hardware.memory_bytes,
                         metadata={"scenario": res.scenario.name, "simtrain": "trace"})  # fmt: skip
    return {
        "summary.json": dumps(run_summary(res)),
        "memory.json": dumps(mem.to_json()),
        "trace.json": dumps_chrome_trace(trace),
    }


def _check_empty_stage_error(sc: Scenario, exc: ConfigError) -> None:
    text = str(exc)
    assert exc.key == "parallelism.layer_split", f"1. resolve failed on another key: {text}"
    assert "parallelism.pp" in text and "\n" not in text, f"1. {text}"
    assert sc.parallelism.layer_split != "uniform", f"1. the uniform split failed: {text}"


def _check_bubble(res: SimulationResult) -> None:
    mt = res.metrics
    for s in mt.stages:
        assert 0.0 <= s.bubble_ratio < 1.0, f"2. stage {s.stage} bubble {s.bubble_ratio}"
    assert 0.0 <= mt.bubble_ratio < 1.0, f"2. bubble {mt.bubble_ratio}"


def _check_utilisation(sc: Scenario, res: SimulationResult) -> None:
    mt = res.metrics
    prec = PRECISIONS[sc.training.precision]
    # The fastest rate the step computes at: its FP8 GEMMs' where the precision has them.
    peak = max(sc.hardware.compute_peak(prec.compute_dtype),
               sc.hardware.peak(prec.gemm_dtype) if prec.gemm_dtype else 0.0)  # fmt: skip
    hfu = mt.tflops_per_gpu * 1e12 / peak
    # MFU is against the compute dtype's peak (bf16 for the FP8 recipes, as torchtitan reports).
    mfu_max = peak / sc.hardware.compute_peak(prec.compute_dtype)
    assert 0.0 < mt.mfu <= mfu_max, f"3. MFU {mt.mfu}"
    assert 0.0 < hfu <= 1.0, f"3. hardware FLOP utilisation {hfu}"
    assert mt.mfu / mfu_max <= hfu * (1 + 1e-9), f"3. MFU {mt.mfu} > HFU {hfu}"
    for rank in res.timeline.ranks:
        spans = sorted((s.start_ns, s.end_ns) for s in res.timeline.spans_of(rank, "compute"))
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"3. rank {rank}: compute spans overlap at {start} ns"


def _check_memory(res: SimulationResult, mem: MemoryReport) -> None:
    trace_peak = {s.stage: s.peak_memory_bytes for s in res.metrics.stages}
    for s in mem.stages:
        own = dict(s.memory_bytes)
        at_peak = dict(s.peak_memory_bytes_by_category)
        where = f"4. stage {s.stage}"
        assert tuple(own) == MEMORY_CATEGORIES == tuple(at_peak), where
        assert all(v >= 0 for v in own.values()), f"{where}: {own}"
        assert all(v >= 0 for v in at_peak.values()), f"{where} at the peak: {at_peak}"
        assert s.host_memory_bytes >= 0, where
        assert sum(at_peak.values()) == s.peak_memory_bytes, f"{where}: {at_peak} != peak"
        for c in MEMORY_CATEGORIES:
            assert at_peak[c] <= own[c], f"{where}: {c} at the peak {at_peak[c]} > {own[c]}"
        assert trace_peak[s.stage] == s.peak_memory_bytes, f"{where}: trace peak differs"
    assert mem.peak_memory_bytes == max(s.peak_memory_bytes for s in mem.stages), "4."


def _frozen_input_allowance(sc: Scenario, step: Any, stage: int) -> int:
    """b·s·h (the first block's input) where full recompute keeps a frozen first block's input
    that recompute none frees, else 0 (see :func:`check_outputs`, 5)."""
    t, p = sc.training, sc.parallelism
    frozen = t.peft.method in ("lora", "qlora", "adapter", "prefix") and t.recompute == "full"
    if frozen and any(c.embedding and c.layers == 1 for c in step.rank_chunks(stage)):
        return layer_input_bytes(sc.model, t, p.tp, p.sequence_parallel)
    return 0


def _check_recompute(sc: Scenario, mem: MemoryReport) -> None:
    step = resolve(sc)
    for s in mem.stages:
        for k, ws in s.recompute_working_set_bytes:
            assert step.chunks[k].layers or not ws, f"5. chunk {k} has no layers, working set {ws}"
    if sc.training.recompute == "none":
        return
    base = estimate_memory(replace(sc, training=replace(sc.training, recompute="none")))
    for s, b in zip(mem.stages, base.stages, strict=True):
        where = f"5. stage {s.stage}, recompute {sc.training.recompute}"
        extra = _frozen_input_allowance(sc, step, s.stage)
        act, act0 = s.category("activations"), b.category("activations")
        assert act <= act0 + extra, f"{where}: activations {act} > {act0}"
        assert s.peak_memory_bytes <= b.peak_memory_bytes + extra, f"{where}: peak"


def _check_finite(doc: Any, name: str, path: str = "") -> None:
    if isinstance(doc, dict):
        for k, v in doc.items():
            _check_finite(v, name, f"{path}.{k}")
    elif isinstance(doc, list):
        for v in doc:
            _check_finite(v, name, f"{path}[]")
    elif isinstance(doc, float):
        assert math.isfinite(doc), f"6. {name}{path} = {doc}"


# ---------------------------------------------------------------------------------------------
# Valid scenarios


def _json_constant(name: str) -> float:
    raise AssertionError(f"6. {name} in a golden JSON output")


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_shipped_scenarios_keep_every_invariant(path: Path) -> None:
    check_outputs(load_scenario(path))


def test_golden_documents_are_finite_json() -> None:
    """``validate --json`` and ``plan --json`` (tests/test_golden.py holds them byte-identical to
    these files) and every golden summary.json have no NaN or infinity."""
    files = [GOLDEN / "validate.json", GOLDEN / "plan_llama3_8b.json"]
    files += sorted((GOLDEN / "scenarios").glob("*.json"))
    for f in files:
        _check_finite(json.loads(f.read_text(), parse_constant=_json_constant), f.name)


PEFT = ("none", "none", "lora", "qlora", "adapter", "prefix", "prompt", "linear_probe", "lp_ft",
        "bitfit")  # fmt: skip


@st.composite
def scenario_data(draw: st.DrawFn, schedule: str | None = None) -> dict[str, Any]:
    """A valid scenario mapping: every layout, schedule (or the one named, with pp > 1), layer
    split, precision, optimizer, recompute, PEFT method, ZeRO stage and shipped hardware
    profile, at sizes where each task lasts well over a nanosecond (hidden >= 64, seq_len >=
    64)."""
    heads = draw(st.sampled_from([1, 2, 4, 8]))
    kv_heads = draw(st.sampled_from([k for k in (1, 2, 4, 8) if heads % k == 0]))
    tp = draw(st.sampled_from([t for t in (1, 2, 4) if kv_heads % t == 0]))
    # (combined_1f1b needs an MoE model with ep > 1: tests/test_ep_overlap.py)
    if schedule is None:
        schedule = draw(st.sampled_from(sorted(set(SCHEDULES) - {"combined_1f1b"})))
        pp = draw(st.sampled_from([1, 2, 3, 4]))
    else:
        pp = draw(st.sampled_from([2, 4]))
    if SCHEDULES[schedule].bidirectional and pp == 3:
        pp = 4  # DualPipe: an even pp
    v = draw(st.sampled_from([1, 2])) if schedule == "interleaved" and pp > 1 else 1
    fixed = SCHEDULES[schedule].chunks_per_rank if pp > 1 else 0  # ZB-V, DualPipeV: a V of 2
    split = "uniform" if v > 1 or fixed else draw(st.sampled_from(["uniform", "compute_balanced",
                                                                   "embedding_as_layer"]))  # fmt: skip
    chunks = fixed or v
    layers = (
        pp * chunks * draw(st.integers(1, 3)) if split == "uniform" else draw(st.integers(pp, 8))
    )
    dp = draw(st.sampled_from([1, 2, 4]))
    micro = draw(st.integers(1, 3))
    m = pp * draw(st.integers(1, 2)) if schedule == "interleaved" else draw(st.integers(1, 6))
    if fixed and SCHEDULES[schedule].min_microbatches_per_stage:
        m = max(m, 2 * pp)  # DualPipe(V): at least one micro-batch per stage
    if fixed and SCHEDULES[schedule].bidirectional:
        m += m % 2  # DualPipe: half each way
    precision = draw(st.sampled_from(sorted(PRECISIONS)))
    peft = draw(st.sampled_from(PEFT))
    if peft == "qlora" and precision == "fp32":
        precision = "bf16"
    hardware = draw(st.sampled_from(available_profiles()))
    gemm = PRECISIONS[precision].gemm_dtype
    if gemm and (peft == "qlora" or not load_hardware(hardware).peak(gemm)):
        precision = "bf16"  # FP8 needs the GPU's FP8 rate and is no QLoRA recipe (ConfigError)
    zero = draw(st.sampled_from([0, 1, 2, 3]))
    hidden = heads * draw(st.sampled_from([64, 128]))
    gpus = dp * tp * pp
    top = min(8, load_hardware(hardware).gpus_per_node)  # the HGX 4-GPU board: 4
    gpn = max(g for g in range(1, top + 1) if gpus % g == 0)
    return {
        "name": "hyp",
        "model": {
            "layers": layers, "hidden": hidden, "heads": heads, "kv_heads": kv_heads,
            "ffn_hidden": hidden * draw(st.sampled_from([1, 2, 4])),
            "vocab": draw(st.sampled_from([256, 1000, 32000, 128000])), "max_positions": 1024,
            "mlp": draw(st.sampled_from(MLP_KINDS)),
            "norm": draw(st.sampled_from(["layernorm", "rmsnorm"])),
            "positions": draw(st.sampled_from(POSITION_KINDS)),
            "bias": draw(st.booleans()), "tied_embeddings": draw(st.booleans()),
            "dropout": draw(st.sampled_from([0.0, 0.1])), "flash_attention": draw(st.booleans()),
            "qkv_layout": draw(st.sampled_from(["separate", "fused_kv_copy"])),
        },
        "hardware": hardware,
        "cluster": {"nodes": gpus // gpn, "gpus_per_node": gpn},
        "training": {
            "seq_len": draw(st.sampled_from([64, 128, 512])), "micro_batch": micro,
            "global_batch": m * micro * dp, "precision": precision,
            "optimizer": draw(st.sampled_from(["sgd", "sgd_momentum", "adam", "adamw", "adam8bit",
                                               "adafactor"])),
            "recompute": draw(st.sampled_from(["none", "selective", "full"])),
            "cross_entropy": draw(st.sampled_from(["standard", "fused"])),
            "peft": {"method": peft, "phase": draw(st.sampled_from(["probe", "finetune"]))},
            # (optimizer offload refuses PipeDream's per-micro-batch steps: its own error)
            "offload": {"optimizer": draw(st.booleans()) and not (
                pp > 1 and SCHEDULES[schedule].steps_every_microbatch)},
        },
        "parallelism": {
            "dp": dp, "tp": tp, "pp": pp, "schedule": schedule, "virtual_stages": v,
            "zero_stage": zero, "dp_mode": "naive" if zero == 0 and draw(st.booleans()) else "ddp",
            "sequence_parallel": tp > 1 and draw(st.booleans()), "layer_split": split,
        },
    }  # fmt: skip


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario_data())
def test_generated_scenarios_keep_every_invariant(data: dict[str, Any]) -> None:
    sc = parse_scenario(copy.deepcopy(data), "hyp.yaml")
    try:
        chunks = resolve(sc).chunks
    except ConfigError:
        event("empty stage: an error naming parallelism.layer_split")
    else:
        assert not empty_stages(chunks), chunks
        event("head-only stage" if any(c.head and not c.layers for c in chunks) else "resolved")
    check_outputs(sc)


def test_compute_balanced_empty_stage_is_an_error_naming_the_key() -> None:
    """nanotron's split of 4 layers of a 128k-vocabulary model over 4 stages puts every layer
    and the LM head on stage 0, then the fp32 cast on stage 1, the loss on stage 2 and nothing
    on stage 3 (models/base.py build_model). simtrain models the cast's and the loss's stages
    (StageBlocks.tail); a stage with no block at all would have no work (simulated bubble
    1.0, and nanotron counts it in every rank's warm-up): an error naming the key."""
    data = {
        "model": {"layers": 4, "hidden": 256, "heads": 4, "vocab": 128000},
        "hardware": "a100_sxm4_80gb", "cluster": {"nodes": 1, "gpus_per_node": 4},
        "training": {"seq_len": 128, "global_batch": 4, "micro_batch": 1},
        "parallelism": {"pp": 4, "layer_split": "compute_balanced"},
    }  # fmt: skip
    sc = parse_scenario(data, "s.yaml")
    with pytest.raises(ConfigError) as e:
        resolve(sc)
    assert e.value.key == "parallelism.layer_split"
    assert "stage(s) 3 of parallelism.pp = 4 with no block" in str(e.value)
    assert "(the LM head lands on stage 0, the loss on 2)" in str(e.value)
    check_outputs(sc)  # the error is the output: invariant 1 accepts it
    # on 3 stages the same model is the head's stage, the cast's and the loss's
    three = parse_scenario({**data, "cluster": {"nodes": 1, "gpus_per_node": 3},
                            "parallelism": {"pp": 3, "layer_split": "compute_balanced"}},
                           "s.yaml")  # fmt: skip
    chunks = resolve(three).chunks
    assert [(c.layers, c.embedding, c.head, c.tail, c.loss_apart) for c in chunks] == [
        (4, True, True, (), True), (0, False, False, ("fp32 cast",), False),
        (0, False, False, ("loss",), False)]  # fmt: skip
    check_outputs(three)


# The fastest rates the hardware schema allows (spec/hardware.py), so that tiny models make
# sub-nanosecond tasks.
FAST_HARDWARE = """name: fast
display_name: every rate at its peak
memory_gib: 1000
peak_tflops: {fp32: 100, tf32: 100, fp16: 100, bf16: 100, fp8: 100, int8: 100}
hbm_bandwidth_gb_per_s: 1.0e6
gpus_per_node: 8
intra_node: {kind: nvswitch, bandwidth_gb_per_s: 1.0e6, latency_us: 0.000001}
pcie_bandwidth_gb_per_s: 1.0e6
nic_bandwidth_gbit_per_s: 1.0e7
inter_node_latency_us: 0.000001
oversubscription: 1.0
cuda_context_mib: 1
host_memory_gib: 2048
cpu_adam_params_per_s: 1.0e15
efficiency: {matmul: 1.0, memory_bound: 1.0, optimizer: 1.0, collective: 1.0}
"""


@pytest.mark.parametrize(
    "layers,hidden,seq_len,pp", [(2, 16, 8, 1), (1, 8, 1, 1), (2, 64, 16, 1), (4, 16, 1, 4)]
)
def test_nanosecond_tasks_keep_every_invariant(tmp_path: Path, layers: int, hidden: int,
                                               seq_len: int, pp: int) -> None:  # fmt: skip
    """Tasks of a few nanoseconds on a profile whose every efficiency is 1: durations rounded
    to the nearest nanosecond gave a hardware FLOP utilisation of 1.32 (2 x 16 x seq 8), a step
    of 0 s with MFU 0 (1 x 8 x seq 1), and stages whose work took 0 ns (bubble 1.0, memory
    the trace never held); rounded up, none of it."""
    (tmp_path / "fast.yaml").write_text(FAST_HARDWARE)
    data = {
        "model": {"layers": layers, "hidden": hidden, "heads": 1, "vocab": 100},
        "hardware": str(tmp_path / "fast.yaml"),
        "cluster": {"nodes": 1, "gpus_per_node": pp},
        "training": {"seq_len": seq_len, "global_batch": 4, "micro_batch": 1, "optimizer": "sgd"},
        "parallelism": {"pp": pp},
    }  # fmt: skip
    check_outputs(parse_scenario(data, "fast.yaml"))
