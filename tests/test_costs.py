"""FLOP counts against the published closed forms (formulas.md §1)."""

from __future__ import annotations

import pytest

from simtrain.costs.compute import (
    eq3_flops,
    eq7_flops,
    hardware_flops_per_step,
    model_flops_per_step,
    mosaicml_flops,
)
from simtrain.spec.scenario import load_scenario

GPT3 = "scenarios/gpt3_175b_1024gpu.yaml"  # TP 8 x PP 16 x DP 8, full recompute


def _args(sc):
    t, m = sc.training, sc.model
    return t.global_batch, t.seq_len, m.layers, m.hidden, m.vocab


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["parallelism.tp=1", "parallelism.pp=1", "parallelism.dp=512", "cluster.nodes=64"],
        ["training.micro_batch=2"],
    ],
    ids=["tp8-pp16", "dp-only", "micro-batch-2"],
)
def test_model_flops_equal_korthikanti_eq7(overrides):
    # Korthikanti et al. 2022 App. A Eq. 7: 72·B·L·s·h²·(1 + s/(6h) + V/(12·h·L)), no recompute.
    sc = load_scenario(GPT3, overrides)
    assert model_flops_per_step(sc) == pytest.approx(eq7_flops(*_args(sc)), rel=1e-12)


def test_hardware_flops_with_full_recompute_equal_narayanan_eq3():
    # Narayanan et al. 2021 Eq. 3: 96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h)), the recompute forward
    # included; summed over TP shards, pipeline chunks, micro-batches and DP replicas.
    sc = load_scenario(GPT3)
    assert hardware_flops_per_step(sc) == pytest.approx(eq3_flops(*_args(sc)), rel=1e-12)


def test_eq3_matches_the_published_worked_value():
    # formulas.md §1.2 (computed from Narayanan Table 1, 1.7B row): F = 1.547e16 per iteration.
    assert eq3_flops(512, 2048, 24, 2304, 51200) == pytest.approx(1.547e16, rel=1e-3)


def test_without_recompute_hardware_equals_model_flops():
    sc = load_scenario(GPT3, ["training.recompute=none"])
    assert hardware_flops_per_step(sc) == pytest.approx(model_flops_per_step(sc), rel=1e-12)


def test_optimizer_bytes_per_param_from_zeros_model_states() -> None:
    """The optimizer step reads every model-state byte once and writes it once, except the
    gradient (only read) and a 16-bit working copy of the weights beside fp32 masters (only
    written). Model states per parameter as the ZeRO paper counts them (Rajbhandari et al. 2020
    §3.1): mixed-precision Adam 2 + 2 + 12 = 16 B (its "16Ψ"); fp32 Adam 4 + 4 + 8 = 16 B; fp32
    SGD 4 + 4 = 8 B; SGD with momentum 4 + 4 + 4 = 12 B; bf16 weights with an fp32 gradient
    buffer and fp32 Adam states 2 + 4 + 12 = 18 B. So bytes moved = 2·states − gradient −
    16-bit copy: 2·16 − 2 − 2 = 28, 2·16 − 4 = 28, 2·8 − 4 = 12, 2·12 − 4 = 20, 2·18 − 4 − 2 = 30.
    The 28 B of fp32 AdamW are also what PyTorch's fused kernel touches: param, grad, exp_avg and
    exp_avg_sq read, param, exp_avg and exp_avg_sq written, 7 fp32 tensors."""
    from simtrain.costs.compute import optimizer_bytes_per_param
    from simtrain.spec.scenario import TrainingSpec

    expected = {
        ("bf16", "adamw"): 28,
        ("fp32", "adamw"): 28,
        ("fp32", "sgd"): 12,
        ("fp32", "sgd_momentum"): 20,
        ("bf16_fp32_grads", "adamw"): 30,
    }
    for (precision, optimizer), want in expected.items():
        t = TrainingSpec(seq_len=8, global_batch=1, micro_batch=1, precision=precision,
                         optimizer=optimizer)  # fmt: skip
        assert optimizer_bytes_per_param(t) == want, (precision, optimizer)


def test_elementwise_backward_factor_within_the_h200_measurements() -> None:
    """The backward/forward factor of element-wise work lies inside the range measured on an
    NVIDIA H200 with PyTorch's kernels (benchmarks/elementwise_split.py; four layer shapes,
    measured/simtrain_h200_elementwise_split.jsonl), per dtype."""
    import json
    from pathlib import Path

    from simtrain.costs.compute import elementwise_backward_factor

    path = Path(__file__).resolve().parent.parent / "measured/simtrain_h200_elementwise_split.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for dtype, nbytes in (("bf16", 2), ("fp32", 4)):
        ratios = [r["backward_over_forward"] for r in rows if r["dtype"] == dtype]
        assert len(ratios) == 4
        assert min(ratios) <= elementwise_backward_factor(nbytes) <= max(ratios), (dtype, ratios)


@pytest.mark.parametrize(
    ("record_id", "mfu", "hfu"),
    [
        ("mpt_a100_80gb_amp_bf16_7b_s2048_n8_mbs6_ga2_gbs96_acFalse", 0.6423, 0.6423),
        ("mpt_a100_80gb_amp_bf16_30b_s1024_n8_mbs6_ga21_gbs1008_acTrue", 0.5582, 0.7443),
    ],
)
def test_mosaicml_flops_reproduce_llm_foundrys_table(
    published_records: dict, record_id: str, mfu: float, hfu: float
) -> None:
    """llm-foundry's benchmark table computes MFU and HFU from its tokens/s with these FLOPs
    (scripts/train/benchmarking/README.md): the published ratios come back to 4 digits."""
    from simtrain.apps.validate import translate

    rec = published_records[record_id]
    sc = translate(rec).scenario
    rate = rec.measured["tokens_per_s"] / (sc.parallelism.gpus * sc.hardware.compute_peak("bf16"))
    for hardware, want in ((False, mfu), (True, hfu)):
        per_token = mosaicml_flops(sc, hardware) / sc.tokens_per_step
        assert per_token * rate == pytest.approx(want, abs=2e-4)


def test_lora_flops_are_one_tp_ranks() -> None:
    """LoRA's A is split like its base linear's input and B like its output (costs.params), so
    one TP rank's adapter FLOPs are 2·b·s·r·(its A rows + its B columns): Llama-2-7B QLoRA on
    every linear, tp 4: q, k, v, gate, up column-parallel (h + f/4 ...), o and down row-parallel
    (review: every rank was charged the whole adapters, 10.23 against 5.38 GFLOP)."""
    from dataclasses import replace

    from simtrain.costs.compute import block_flops
    from simtrain.spec.model import tp_split_shape
    from simtrain.spec.scenario import load_scenario

    sc = load_scenario("scenarios/colab_t4_qlora_7b.yaml")
    m, t = sc.model, sc.training
    base = replace(t, peft=replace(t.peft, method="none"))
    shapes = m.linear_weight_shapes()
    for tp in (1, 4):
        lora = block_flops(m, t, tp).forward - block_flops(m, base, tp).forward
        want = sum(2 * t.micro_batch * t.seq_len * t.peft.rank * sum(tp_split_shape(n, *shapes[n], tp))
                   for n in t.peft.target_modules)  # fmt: skip
        assert lora == pytest.approx(want, rel=1e-12)
        if tp == 1:
            whole = want
    assert want < whole / 1.8


def test_positions_element_wise_bytes() -> None:
    """Rotary reads and writes q and k once (2 accesses of q_dim + kv per token, /tp); ALiBi's
    bias is added inside the scores' GEMM or the flash kernel (Megatron-DeepSpeed ae6277f5
    transformer.py: baddbmm(alibi, q, kᵀ)) and NoPE has nothing: the same bytes as each other,
    and no parameters beyond the token embedding."""
    from dataclasses import replace

    from simtrain.costs.compute import block_elementwise_bytes
    from simtrain.spec.model import PRESETS
    from simtrain.spec.scenario import TrainingSpec

    m = PRESETS["llama3-8b"]
    t = TrainingSpec(seq_len=4096, global_batch=8, micro_batch=2, precision="bf16")
    by = {p: block_elementwise_bytes(replace(m, positions=p), t, tp=2)[0]
          for p in ("rotary", "alibi", "none")}  # fmt: skip
    assert by["alibi"] == by["none"]
    assert by["rotary"] - by["alibi"] == pytest.approx(2 * 2 * 4096 * 2 * (4096 + 1024) / 2)
    assert replace(m, positions="alibi").total_params() == m.total_params()
