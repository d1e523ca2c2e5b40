"""GPT-OSS's expert layer as Megatron-Core runs it (costs.moe.megatron_expert_extra_bytes_per_token):
the clamped GLU's chunk, two clamps and cat outside the compiled kernel, and fc2's bias added
expert by expert. The bytes are counted op by op here, independently of the closed form."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from simtrain.costs.compute import chunk_block_flops
from simtrain.costs.moe import megatron_expert_extra_bytes_per_token
from simtrain.errors import ConfigError
from simtrain.spec.model import PRESETS, from_hf_config
from simtrain.spec.scenario import parse_scenario

MOE_DATA = Path(__file__).resolve().parent / "data" / "moe"


def _op_bytes(f: int, h: int, e: int) -> tuple[int, int]:
    """(forward, backward) bytes of one expert-token pair, op by op (e bytes an element):
    Megatron-Core's fused_bias_geglu.py weighted_bias_quick_geglu_impl and experts.py
    _apply_bias at core_v0.15.0."""
    clamp_gate = 2 * f * e  # read the gate half, write the clamped copy
    clamp_up = 2 * f * e  # read the linear half, write the clamped copy
    cat = 2 * (2 * f) * e  # read both clamped halves, write the 2f-wide tensor
    clamp_bwd = 2 * (3 * f * e)  # each: read the gradient and the saved input, write one
    chunk_bwd = 2 * (2 * f) * e  # cat the halves' gradients: read 2f, write 2f
    bias_mul = h * e  # b * p written (b: h, p: one value a row)
    bias_add = 3 * h * e  # t + b*p: read both, write one
    bias_cat = 2 * h * e  # the experts' rows concatenated: read and write
    split_bwd = 2 * h * e  # the split's backward: its gradients concatenated
    prod_bwd = 6 * h * e  # grad x p, grad x b and their sums (bias and probability gradients)
    return (clamp_gate + clamp_up + cat + bias_mul + bias_add + bias_cat,
            clamp_bwd + chunk_bwd + split_bwd + prod_bwd)  # fmt: skip


def test_the_bytes_are_the_ops_bytes() -> None:
    m = PRESETS["gpt-oss-120b"]
    k, f, h = m.experts_per_token, m.expert_ffn, m.hidden
    fwd, bwd = megatron_expert_extra_bytes_per_token(m, 2)
    per_pair = _op_bytes(f, h, 2)
    assert (fwd, bwd) == (k * per_pair[0], k * per_pair[1])
    # tp and the busiest rank's load scale the pairs a rank sees
    fwd4, bwd4 = megatron_expert_extra_bytes_per_token(m, 2, tp=4, load=1.5)
    assert fwd4 == pytest.approx(fwd * 1.5 / 4) and bwd4 == pytest.approx(bwd * 1.5 / 4)


def test_without_the_clamp_or_the_bias_nothing_is_added() -> None:
    m = PRESETS["gpt-oss-120b"]
    plain = replace(m, glu_clamp=0.0, bias=False)
    assert megatron_expert_extra_bytes_per_token(plain, 2) == (0.0, 0.0)
    f, h, k = m.expert_ffn, m.hidden, m.experts_per_token
    only_clamp = megatron_expert_extra_bytes_per_token(replace(m, bias=False), 2)
    assert only_clamp == (k * 8 * f * 2, k * 10 * f * 2)
    only_bias = megatron_expert_extra_bytes_per_token(replace(m, glu_clamp=0.0), 2)
    assert only_bias == (k * 6 * h * 2, k * 8 * h * 2)


def _scenario(runtime: str, **model) -> object:
    return parse_scenario({
        "name": "oss", "hardware": "b200_180gb", "runtime": runtime,
        "model": {"preset": "gpt-oss-20b", **model},
        "training": {"seq_len": 4096, "global_batch": 16, "micro_batch": 2, "precision": "bf16"},
        "parallelism": {"dp": 8, "ep": 8},
    }, "test")  # fmt: skip


def test_megatron_core_adds_them_to_each_moe_block() -> None:
    """Under moe_implementation megatron_core (runtime megatron_core) each MoE block's memory-
    bound traffic grows by tokens x the bytes; another runtime's experts are not Megatron-Core's
    code and add nothing."""
    sc = _scenario("megatron_core")
    assert sc.runtime.moe_implementation == "megatron_core"
    plain = _scenario("megatron_core", glu_clamp=0.0, bias=False)
    got, base = chunk_block_flops(sc, 1), chunk_block_flops(plain, 1)
    tokens = 2 * 4096
    fwd, bwd = megatron_expert_extra_bytes_per_token(sc.model, 2, 1, 1.0)
    assert got.elementwise_bytes_fwd - base.elementwise_bytes_fwd == pytest.approx(tokens * fwd)
    assert got.elementwise_bytes_bwd - base.elementwise_bytes_bwd == pytest.approx(tokens * bwd)
    other = _scenario("torchtitan")
    assert other.runtime.moe_implementation != "megatron_core"
    assert chunk_block_flops(other, 1) == chunk_block_flops(
        _scenario("torchtitan", glu_clamp=0.0), 1
    )


def test_the_clamp_comes_from_the_preset_and_the_hf_config() -> None:
    assert PRESETS["gpt-oss-120b"].glu_clamp == PRESETS["gpt-oss-20b"].glu_clamp == 7.0
    assert from_hf_config(MOE_DATA / "gpt_oss_20b_config.json").glu_clamp == 7.0  # swiglu_limit
    assert PRESETS["qwen3-30b-a3b"].glu_clamp == 0.0


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ({"glu_clamp": -1}, "must be in [0"),
        ({"glu_clamp": 1e7}, "must be in [0"),
        ({"glu_clamp": 7.0, "mlp": "gelu"}, "needs model.mlp swiglu"),
    ],
)
def test_a_bad_clamp_names_the_key(model: dict, words: str) -> None:
    with pytest.raises(ConfigError) as ei:
        _scenario("megatron_core", **model)
    assert ei.value.key == "model.glu_clamp" and words in str(ei.value)


def test_a_dense_model_with_a_clamp_is_refused() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_scenario({
            "name": "d", "hardware": "b200_180gb",
            "model": {"layers": 2, "hidden": 256, "heads": 4, "vocab": 1000, "mlp": "swiglu",
                      "glu_clamp": 7.0},
            "training": {"seq_len": 128, "global_batch": 8, "micro_batch": 1},
        }, "test")  # fmt: skip
    assert ei.value.key == "model.glu_clamp" and "num_experts" in str(ei.value)
