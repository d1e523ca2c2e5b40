"""q / k norms (``model.qk_norm``, per head or over all of q and k: ``qk_norm_width``) and
OLMo 2's block without pre-norms (``model.pre_norms: false`` with ``post_norms``). Before, a
q/k norm counted its parameters only (Qwen3, Gemma 3): its saved inputs, statistics and pass
were missing. Independent values: transformers' own parameter counts and the PyTorch
reference's saved bytes, measured on the CPU."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hf_configs import HF
from reference_pairs import LLAMA_TINY

from simtrain.costs.compute import FUSED_OP_ACCESSES, block_elementwise_bytes
from simtrain.errors import ConfigError
from simtrain.spec.model import PRESETS, from_hf_config, validate_model
from simtrain.spec.scenario import TrainingSpec


@pytest.mark.parametrize(("name", "total"), [
    # sum(p.numel()) of transformers 4.57.6's Olmo2ForCausalLM (meta device) from
    # allenai/OLMo-2's shapes
    ("olmo-2-1b", 1_484_916_736), ("olmo-2-7b", 7_298_617_344),
    ("olmo-2-13b", 13_716_198_400), ("olmo-2-32b", 32_234_279_936),
])  # fmt: skip
def test_transformers_counts_and_presets(name: str, total: int) -> None:
    m = from_hf_config(HF / f"{name}.json")
    assert m.total_params() == total
    assert replace(m, name=name) == PRESETS[name]
    assert (m.pre_norms, m.post_norms, m.qk_norm, m.qk_norm_width) == (False, True, True, "full")
    assert m.norms_per_block == 2


def test_qk_norm_parameters() -> None:
    """Per head: head_dim each for q and k; over the whole projections: q_dim + kv_dim."""
    m = replace(PRESETS["olmo-2-32b"], qk_norm_width="head")
    full = PRESETS["olmo-2-32b"]
    per_layer = full.attention_params() - m.attention_params()
    assert per_layer == (full.q_dim + full.kv_dim) - 2 * full.head_dim


def test_qk_norm_pass() -> None:
    """A read and a write of q and k on the rank: FUSED_OP_ACCESSES['rmsnorm'] x (q + kv)/t."""
    m = PRESETS["qwen3-30b-a3b"]
    t = TrainingSpec(seq_len=2048, global_batch=1, micro_batch=1, precision="bf16")
    f, _ = block_elementwise_bytes(m, t, 4)
    f0, _ = block_elementwise_bytes(replace(m, qk_norm=False), t, 4)
    assert f - f0 == pytest.approx(2 * 2048 * FUSED_OP_ACCESSES["rmsnorm"]
                                   * (m.q_dim + m.kv_dim) / 4)  # fmt: skip


def test_checks() -> None:
    with pytest.raises(ConfigError) as ei:
        validate_model(replace(PRESETS["llama3-8b"], pre_norms=False), "s.yaml")
    assert ei.value.key == "model.post_norms" and "pre_norms: false" in str(ei.value)
    # the OLMo 2 preset with an override: the error names the overridden key
    olmo = PRESETS["olmo-2-1b"]
    for change, k in (({"post_norms": False}, "post_norms"),
                      ({"parallel_residual": True}, "parallel_residual")):  # fmt: skip
        with pytest.raises(ConfigError) as ei:
            validate_model(replace(olmo, **change), "s.yaml")
        assert ei.value.key == f"model.{k}" and "pre_norms: false" in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        validate_model(replace(PRESETS["llama3-8b"], qk_norm_width="diagonal"), "s.yaml")
    assert ei.value.key == "model.qk_norm_width"


LLAMA = LLAMA_TINY


@pytest.mark.parametrize("precision", ["fp32", "amp_bf16", "bf16"])
@pytest.mark.parametrize(("base", "change"), [
    ({}, {"qk_norm": True}),  # Qwen3 / Gemma 3: per head
    ({}, {"qk_norm": True, "qk_norm_width": "full"}),  # OLMo 2
    ({"post_norms": True}, {"pre_norms": False}),  # OLMo 2's block against the sandwich
])  # fmt: skip
def test_measured(precision: str, base: dict, change: dict) -> None:
    """PyTorch keeps per q / k norm its input (an fp32 copy under autocast) and an fp32 rstd per
    row it normalises (a token's head, or a token); without pre-norms it keeps neither norm's
    input and statistics, the linears taking the residual stream. The model's saved bytes
    move by exactly as much as PyTorch's, and its parameters match byte for byte."""
    pytest.importorskip("torch")
    from reference_pairs import measure_and_estimate

    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision=precision)
    a = replace(LLAMA, flash_attention=True, **base)
    (r0, m0), (r1, m1) = measure_and_estimate(a, t), measure_and_estimate(replace(a, **change), t)
    assert r0.parameter_bytes == m0["parameters"] and r1.parameter_bytes == m1["parameters"]
    measured = r1.activation_bytes - r0.activation_bytes
    assert measured == m1["activations"] - m0["activations"] != 0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_measured_without_pre_norms_under_lora(precision: str) -> None:
    """Frozen embeddings (LoRA on q, v): block 0 saves no first norm's input when its input
    needs no gradient, and without pre-norms there is no such norm to drop (a review of
    2026-12-05: the model took 4·sbh + 4·sb off, 66,560 B in fp32, that PyTorch never kept)."""
    pytest.importorskip("torch")
    from reference_pairs import measure_and_estimate

    from simtrain.spec.scenario import PeftSpec

    peft = PeftSpec(method="lora", rank=8, target_modules=("q", "v"))
    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision=precision, peft=peft)
    a = replace(LLAMA, flash_attention=True, post_norms=True)
    (r0, m0), (r1, m1) = (
        measure_and_estimate(a, t),
        measure_and_estimate(replace(a, pre_norms=False), t),
    )
    measured = r1.activation_bytes - r0.activation_bytes
    assert measured == m1["activations"] - m0["activations"] != 0


@pytest.mark.parametrize("precision", ["fp32", "amp_bf16", "bf16"])
@pytest.mark.parametrize("width", ["head", "full"])
@pytest.mark.parametrize(("method", "targets"), [
    ("lora", ("q", "v")), ("lora", ("o",)), ("qlora", ("k", "v")), ("adapter", ()),
    ("prefix", ()),
])  # fmt: skip
def test_frozen_first_block_q_k_norms(precision: str, width: str, method: str, targets) -> None:
    """Frozen embeddings: block 0's q (k) norm saves nothing unless LoRA adapts q (k), since its
    input, the frozen projection of a frozen input, needs no gradient (a review of 2026-12-05:
    the model kept them, 34,816 B too many in fp32 with per-head norms and LoRA on q and v). PyTorch's saved bytes
    and the model's move by exactly as much when the q / k norms are added."""
    pytest.importorskip("torch")
    from reference_pairs import measure_and_estimate

    from simtrain.spec.scenario import PeftSpec

    peft = PeftSpec(method=method, rank=8, target_modules=targets, prefix_length=8)
    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision=precision, peft=peft)
    a = replace(LLAMA, flash_attention=True)
    b = replace(a, qk_norm=True, qk_norm_width=width)
    (r0, m0), (r1, m1) = measure_and_estimate(a, t), measure_and_estimate(b, t)
    measured = r1.activation_bytes - r0.activation_bytes
    assert measured == m1["activations"] - m0["activations"] != 0


@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("width", ["head", "full"])
@pytest.mark.parametrize("precision", ["amp_bf16", "bf16", "fp32"])
def test_selective_recompute_keeps_the_q_k_norms_dtype(precision: str, width: str,
                                                       flash: bool) -> None:  # fmt: skip
    """Selective recompute checkpoints the attention core, which keeps its inputs as given:
    under autocast the q / k norms hand it fp32 q and k (their fp32 weight times the 16-bit
    normalised input), 2·sb(q + kv) B a block more than the 16-bit casts the kernel saves
    without recompute (a review of 2026-12-05: 98,304 B short on this two-block model). Measured."""
    pytest.importorskip("torch")
    from reference_pairs import measure_and_estimate

    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision=precision,
                     recompute="selective")  # fmt: skip
    a = replace(LLAMA, flash_attention=flash)
    b = replace(a, qk_norm=True, qk_norm_width=width)
    (r0, m0), (r1, m1) = measure_and_estimate(a, t), measure_and_estimate(b, t)
    measured = r1.activation_bytes - r0.activation_bytes
    assert measured == m1["activations"] - m0["activations"] != 0


def test_full_width_qk_norm_needs_tp_1_and_mla_has_none() -> None:
    """OLMo 2's norm over all of q spans every TP rank's heads (OLMo-core all-to-alls q and k
    around it): not modelled, so tp > 1 is an error naming the key; per head it splits."""
    from simtrain.spec.scenario import parse_scenario

    data = {"name": "o", "model": {"preset": "olmo-2-7b", "flash_attention": True},
            "hardware": "h100_sxm5_80gb", "cluster": {"nodes": 1, "gpus_per_node": 2},
            "training": {"seq_len": 4096, "global_batch": 2, "micro_batch": 1},
            "parallelism": {"tp": 2}}  # fmt: skip
    with pytest.raises(ConfigError) as ei:
        parse_scenario(data, "o.yaml")
    assert ei.value.key == "model.qk_norm_width" and "tp 1" in str(ei.value)
    data["model"]["qk_norm_width"] = "head"
    parse_scenario(data, "o.yaml")
    with pytest.raises(ConfigError) as ei:  # MLA's latent norms are not q / k norms
        validate_model(replace(PRESETS["deepseek-v3"], qk_norm=True), "s.yaml")
    assert ei.value.key == "model.qk_norm"
