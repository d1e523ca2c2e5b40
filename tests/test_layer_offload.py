"""Megatron-Core's activation offload (``training.offload.activation_layers``, Megatron's
``--cpu-offloading-num-layers``; Transformer Engine's ``DefaultOffloadSynchronizer``,
cpu_offload.py l.602-654 at d0067d0d): memory against the closed form TE's docstring states
("peak memory usage of saving activations is (num_layers - num_offloaded_layers) * T"), time
against max(compute, copy) per action, the checks Megatron's TransformerConfig makes, the
importer and Megatron-Bridge's recipe table."""

from __future__ import annotations

from dataclasses import replace

import pytest

from simtrain.apps.plan.estimate import closed_form_step_s
from simtrain.apps.simulate import build_lowering_input, simulate_scenario
from simtrain.costs.memory import estimate_memory
from simtrain.errors import ConfigError
from simtrain.spec.scenario import Scenario, parse_scenario

BASE = {
    "name": "layer_offload",
    "model": {"preset": "llama3-8b", "flash_attention": True},
    "hardware": "h100_sxm5_80gb",
    "runtime": "megatron_core",
    "cluster": {"nodes": 1, "gpus_per_node": 1},
    "training": {"seq_len": 4096, "global_batch": 2, "micro_batch": 1, "precision": "bf16",
                 "optimizer": "adamw", "recompute": "none"},
    "parallelism": {"dp": 1, "tp": 1, "pp": 1, "schedule": "1f1b"},
}  # fmt: skip


def scenario(layers: int, **training: object) -> Scenario:
    data = {**BASE, "training": {**BASE["training"], **training}}
    if layers:
        data["training"]["offload"] = {"activation_layers": layers}
    return parse_scenario(data, "offload.yaml")


def test_gpu_holds_the_blocks_not_offloaded() -> None:
    """Activations with N of 32 blocks offloaded = those without, less N blocks' saved tensors
    (T each, the breakdown's per-layer bytes); the host holds N·T, pinned (TE allocates its
    buffers with pin_memory=True)."""
    none = estimate_memory(scenario(0)).stages[0]
    t = none.breakdown.per_layer_bytes
    for n in (1, 16, 31):
        sm = estimate_memory(scenario(n)).stages[0]
        assert sm.category("activations") == none.category("activations") - n * t
        assert sm.host_memory_bytes == sm.pinned_host_memory_bytes == n * t
        assert dict(sm.offloaded_activation_bytes) == {0: n * t}


def test_copies_run_beside_their_action() -> None:
    """Over a 2 GB/s host link the 16 blocks' copy (5.5 s) outlasts every forward and backward:
    each of the 2 micro-batches takes copy + copy instead of F + B, the rest of the step
    unchanged; over the H100's 64 GB/s the copy hides all but its excess over the forward."""
    slow = 2e9
    base, off = scenario(0), scenario(16)
    slow_base = replace(base, hardware=replace(base.hardware, pcie_bandwidth_bytes_per_s=slow))
    slow_off = replace(off, hardware=replace(off.hardware, pcie_bandwidth_bytes_per_s=slow))
    r0, r1 = simulate_scenario(slow_base), simulate_scenario(slow_off)
    c = build_lowering_input(slow_off, r1.memory).chunks[0]
    per_mb = c.forward_ns + c.input_grad_ns + c.weight_grad_ns  # host-free: GPU-bound here
    t = estimate_memory(off).stages[0].breakdown.per_layer_bytes
    assert c.act_copy_bytes == 16 * t
    assert c.act_copy_ns == pytest.approx(1e9 * 16 * t / slow, abs=1)
    extra = round(1e9 * (r1.metrics.step_time_s - r0.metrics.step_time_s))
    assert extra == pytest.approx(2 * (2 * c.act_copy_ns - per_mb), abs=2)
    kinds = [s.kind for s in r1.timeline.spans if s.kind in ("D2H", "H2D")]
    assert kinds == ["D2H", "H2D", "D2H", "H2D"]
    fast = simulate_scenario(off)
    fc = build_lowering_input(off, fast.memory).chunks[0]
    exposed = max(fc.act_copy_ns - fc.forward_ns, 0) + max(
        fc.act_copy_ns - fc.input_grad_ns - fc.weight_grad_ns, 0
    )
    base_s = simulate_scenario(base).metrics.step_time_s
    assert fast.metrics.step_time_s - base_s == pytest.approx(2 * exposed / 1e9, abs=2e-9)
    # the planner's closed form charges the same excess
    plan = (closed_form_step_s(sc, estimate_memory(sc).stages) for sc in (slow_off, slow_base))
    assert next(plan) - next(plan) == pytest.approx(extra / 1e9, rel=0.01)


@pytest.mark.parametrize(
    ("training", "parallel", "words"),
    [
        ({"offload": {"activation_layers": 32}}, {}, "0 .. 31"),
        ({"offload": {"activation_layers": -1}}, {}, "0 .. 31"),
        ({"offload": {"activation_layers": 4}, "recompute": "full"}, {}, "recompute"),
        ({"offload": {"activation_layers": 4, "activations": True}, "recompute": "none"}, {},
         "training.offload.activations"),
        ({"offload": {"activation_layers": 4}}, {"pp": 2, "dp": 1}, "pipeline"),
    ],
)  # fmt: skip
def test_what_megatron_refuses_is_an_error(training: dict, parallel: dict, words: str) -> None:
    """Megatron's TransformerConfig.__post_init__ (l.1884-1899 at d98e8a64) refuses N outside
    0 .. L-1, pipelining and recompute; DeepSpeed's checkpoint offload is another mechanism."""
    data = {**BASE, "training": {**BASE["training"], **training},
            "parallelism": {**BASE["parallelism"], **parallel}}  # fmt: skip
    if parallel.get("pp"):
        data["cluster"] = {"nodes": 1, "gpus_per_node": 2}
        data["training"]["global_batch"] = 4
    with pytest.raises(ConfigError) as e:
        parse_scenario(data, "offload.yaml")
    assert "training.offload.activation_layers" in str(e.value)
    assert words in str(e.value)


def test_megatron_importer_reads_the_flag() -> None:
    from simtrain.apps.importers.megatron import import_megatron_flags

    words = ("--num-layers 32 --hidden-size 4096 --num-attention-heads 32 --seq-length 4096 "
             "--micro-batch-size 1 --global-batch-size 8 --bf16 --vocab-size 32000 "
             "--cpu-offloading-num-layers 12").split()  # fmt: skip
    imp = import_megatron_flags(words, gpus=8)
    assert imp.data["training"]["offload"] == {"activation_layers": 12}
    assert ("training.offload.activation_layers", "--cpu-offloading-num-layers") in imp.origins


def test_megatron_bridge_recipe_offloads() -> None:
    """The 25.11 GB200 / GB300 Llama 3 70B FP8-CS rows (FSDP, pp 1) run their performance
    config's cpu_offloading_num_layers (40 / 20 at 00b7660b); a row on another layout none."""
    from simtrain.apps.validate.native import mbridge_offload_layers
    from simtrain.apps.validate.records import load_records

    recs = {r.id: r for r in load_records("measured/mbridge_2511.yaml")}
    gb200 = recs["mbridge2511_GB200_LLAMA3_70B_FP8CS_64gpu"]
    gb300 = recs["mbridge2511_GB300_LLAMA3_70B_FP8CS_64gpu"]
    assert mbridge_offload_layers(gb200, zero=3, pp=1) == 40
    assert mbridge_offload_layers(gb300, zero=3, pp=1) == 20
    assert mbridge_offload_layers(gb300, zero=1, pp=1) == 0
    assert mbridge_offload_layers(gb300, zero=3, pp=2) == 0


def test_runtime_and_dp_mode_that_have_no_such_offload_are_errors() -> None:
    """The knob is Megatron-Core's (Transformer Engine's CPU offload context in its
    TransformerBlock): another runtime, or torch.nn.DataParallel / the lecture's naive DP, is
    refused naming the key."""
    for data in ({**BASE, "runtime": "pytorch_eager"},
                 {**BASE, "cluster": {"nodes": 1, "gpus_per_node": 2},
                  "parallelism": {**BASE["parallelism"], "dp": 2, "dp_mode": "naive"}}):  # fmt: skip
        data = {**data, "training": {**BASE["training"], "global_batch": 4,
                                     "offload": {"activation_layers": 4}}}  # fmt: skip
        with pytest.raises(ConfigError, match="training.offload.activation_layers"):
            parse_scenario(data, "offload.yaml")
    with pytest.raises(ConfigError, match="recompute"):
        scenario(4, recompute="selective")


def test_moe_dense_first_blocks_and_frozen_embedding() -> None:
    """The first N blocks are what leaves: with DeepSeek-style dense first blocks, those at
    their own (dense) size; under LoRA with a frozen embedding, block 0 without the norm input
    it does not save (``costs.activations.frozen_input_savings``): counted once."""
    from simtrain.costs.activations import frozen_input_savings, layer_activation_bytes

    moe = {"name": "m", "layers": 6, "hidden": 256, "heads": 4, "ffn_hidden": 1024,
           "vocab": 1000, "max_positions": 4096, "mlp": "swiglu", "positions": "rotary",
           "norm": "rmsnorm", "num_experts": 8, "experts_per_token": 2, "moe_ffn_hidden": 128,
           "first_dense_layers": 2}  # fmt: skip
    data = {**BASE, "model": moe}
    base = parse_scenario(data, "moe.yaml")
    off = parse_scenario({**data, "training": {**BASE["training"],
                                               "offload": {"activation_layers": 3}}}, "moe.yaml")  # fmt: skip
    m, t = base.model, base.training
    fused = base.runtime.fused_swiglu  # Megatron-Core's SwiGLU saves its input only
    dense = layer_activation_bytes(m, t, moe=False, fused_swiglu=fused)
    sparse = layer_activation_bytes(m, t, moe=True, fused_swiglu=fused)
    a, b = estimate_memory(base).stages[0], estimate_memory(off).stages[0]
    assert dict(b.offloaded_activation_bytes) == {0: 2 * dense + sparse}
    assert a.category("activations") - b.category("activations") == 2 * dense + sparse
    lora = {"method": "lora", "rank": 8, "target_modules": ["q", "v"]}
    plain = scenario(0, peft=lora)
    one = scenario(1, peft=lora)
    t0 = estimate_memory(plain).stages[0].breakdown.per_layer_bytes
    spared = frozen_input_savings(plain.model, plain.training, 1, False)
    assert spared > 0
    x, y = estimate_memory(plain).stages[0], estimate_memory(one).stages[0]
    assert x.category("activations") - y.category("activations") == t0 - spared
    assert y.host_memory_bytes == t0 - spared


def test_megatron_bridge_table_is_its_recipes() -> None:
    """native.MBRIDGE_CPU_OFFLOAD_LAYERS against Megatron-Bridge 00b7660b's performance configs,
    written out here from scripts/performance/configs/llama/llama3_workload_base_configs.py
    l.35-112 and llama31_workload_base_configs.py l.27-87 (each an FSDP, pp 1 config); a
    translated 25.11 row carries its count."""
    from simtrain.apps.validate.native import MBRIDGE_CPU_OFFLOAD_LAYERS
    from simtrain.apps.validate.records import load_records
    from simtrain.apps.validate.translate import translate

    assert MBRIDGE_CPU_OFFLOAD_LAYERS == {
        ("LLAMA3_70B", "GB300", "BF16"): 30, ("LLAMA3_70B", "GB300", "FP8-CS"): 20,
        ("LLAMA3_70B", "GB200", "BF16"): 20, ("LLAMA3_70B", "GB200", "FP8-CS"): 40,
        ("LLAMA3_70B", "B200", "FP8-CS"): 5, ("LLAMA3.1_405B", "GB300", "BF16"): 40,
        ("LLAMA3.1_405B", "GB300", "FP8-CS"): 10, ("LLAMA3.1_405B", "GB200", "FP8-CS"): 92,
    }  # fmt: skip
    recs = {r.id: r for r in load_records("measured/mbridge_2511.yaml")}
    sc = translate(recs["mbridge2511_GB300_LLAMA3_70B_FP8CS_64gpu"]).scenario
    assert sc.training.offload.activation_layers == 20
    sc = translate(recs["mbridge2511_GB300_LLAMA3_8B_FP8CS_8gpu"]).scenario
    assert sc.training.offload.activation_layers == 0
