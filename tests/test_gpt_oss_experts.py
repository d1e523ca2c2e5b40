"""GPT-OSS's expert layer as Megatron-Core runs it (costs.moe.megatron_expert_extra_bytes_per_token):
the clamped GLU's chunk, two clamps and cat outside the compiled kernel, and fc2's bias added
expert by expert. The bytes are measured with torch on transcriptions of the code
(tests/megatron_snippets.py), independently of the closed form."""

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


def test_the_bytes_are_what_the_transcribed_kernels_move() -> None:
    """Per expert-token pair, the bytes the ATen kernels of Megatron-Core's clamp and bias code
    (tests/megatron_snippets.py) read and write on the CPU in bf16, counted with
    simtrain.torchref.opcount.dispatched_bytes: the clamp 16 B forward and 30 B backward per
    f_e-element pair, the bias 12 and 16 B per h-element (one expert: the per-expert pieces are
    the whole output; the bytes per element do not depend on how the rows are split)."""
    torch = pytest.importorskip("torch")
    from megatron_snippets import megatron_apply_bias, megatron_glu_clamp

    from simtrain.torchref.opcount import dispatched_bytes

    rows, f, h = 64, 32, 48
    clamp = dispatched_bytes(megatron_glu_clamp, [(rows, 2 * f)], torch.bfloat16)
    clamp = (2 * clamp[0], 2 * clamp[1])  # per element of the 2f-wide input -> per pair

    def bias(out, probs):
        b = [torch.randn(h, dtype=torch.bfloat16, requires_grad=True)]
        return megatron_apply_bias(out, b, [rows], probs)

    biased = dispatched_bytes(bias, [(rows, h), (rows, 1)], torch.bfloat16)
    m = PRESETS["gpt-oss-120b"]
    k, fe, he = m.experts_per_token, m.expert_ffn, m.hidden
    got = megatron_expert_extra_bytes_per_token(m, 2)
    assert got == (k * (clamp[0] * fe + biased[0] * he), k * (clamp[1] * fe + biased[1] * he))
    assert (clamp, biased) == ((16.0, 30.0), (12.0, 16.0))


def test_tp_and_the_load_scale_the_pairs() -> None:
    m = PRESETS["gpt-oss-120b"]
    fwd, bwd = megatron_expert_extra_bytes_per_token(m, 2)
    fwd4, bwd4 = megatron_expert_extra_bytes_per_token(m, 2, tp=4, load=1.5)
    assert fwd4 == pytest.approx(fwd * 1.5 / 4) and bwd4 == pytest.approx(bwd * 1.5 / 4)


def test_without_the_clamp_or_the_bias_nothing_is_added() -> None:
    m = PRESETS["gpt-oss-120b"]
    plain = replace(m, glu_clamp=0.0, bias=False)
    assert megatron_expert_extra_bytes_per_token(plain, 2) == (0.0, 0.0)
    clamp_only = megatron_expert_extra_bytes_per_token(replace(m, bias=False), 2)
    bias_only = megatron_expert_extra_bytes_per_token(replace(m, glu_clamp=0.0), 2)
    both = megatron_expert_extra_bytes_per_token(m, 2)
    assert all(c > 0 and b > 0 for c, b in zip(clamp_only, bias_only, strict=True))
    assert both == pytest.approx(tuple(c + b for c, b in zip(clamp_only, bias_only, strict=True)))


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
        ({"glu_clamp": -1}, "must be >= 0"),
        ({"glu_clamp": 1e7}, "must be <= "),
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
