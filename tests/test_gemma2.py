"""Gemma 2 (``model_type`` gemma2): sandwich norms (``model.post_norms``), soft-capped scores
and logits (``model.attention_softcap``, ``model.logit_softcap``) and a sliding window on every
other layer. Independent values: transformers' own parameter counts, and what the PyTorch
reference keeps for backward, measured on the CPU."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hf_configs import HF, write_config
from reference_pairs import LLAMA_TINY

from simtrain.costs.compute import attention_core_elementwise_bytes, head_elementwise_bytes
from simtrain.errors import ConfigError
from simtrain.spec.model import PRESETS, from_hf_config, validate_model
from simtrain.spec.scenario import TrainingSpec


@pytest.mark.parametrize(("name", "total"), [
    # sum(p.numel()) of transformers 4.46.3's Gemma2ForCausalLM on the meta device, built
    # from google/gemma-2-2b / 9b / 27b's shapes (the tied head once)
    ("gemma-2-2b", 2_614_341_888), ("gemma-2-9b", 9_241_705_984),
    ("gemma-2-27b", 27_227_128_320),
])  # fmt: skip
def test_transformers_counts_and_presets(name: str, total: int) -> None:
    m = from_hf_config(HF / f"{name}.json")
    assert m.total_params() == total
    assert replace(m, name=name) == PRESETS[name]
    assert (m.post_norms, m.logit_softcap, m.attention_softcap) == (True, True, True)
    assert (m.sliding_window, m.full_attention_every, m.tied_embeddings) == (4096, 2, True)


def test_four_norms_a_layer() -> None:
    m = PRESETS["gemma-2-9b"]
    assert m.norms_per_block == 4
    assert m.total_params() - replace(m, post_norms=False).total_params() == m.layers * 2 * m.hidden


def test_nulls_turn_capping_and_windows_off(tmp_path: Path) -> None:
    m = from_hf_config(write_config(tmp_path, "gemma-2-2b.json", {"final_logit_softcapping": None,
                                         "attn_logit_softcapping": None,
                                         "sliding_window": None}))  # fmt: skip
    assert (m.logit_softcap, m.attention_softcap, m.sliding_window) == (False, False, 0)


@pytest.mark.parametrize(("change", "key"), [
    ({"final_logit_softcapping": 0}, "final_logit_softcapping"),
    ({"attn_logit_softcapping": "50"}, "attn_logit_softcapping"),
    ({"sliding_window": 0}, "sliding_window"),
])  # fmt: skip
def test_bad_values(tmp_path: Path, change: dict, key: str) -> None:
    with pytest.raises(ConfigError) as ei:
        from_hf_config(write_config(tmp_path, "gemma-2-2b.json", change))
    assert ei.value.key == key


def test_elementwise_closed_forms() -> None:
    """Capping the logits: x/c, tanh and x·c, a read and a write of each of b·s·V/t values in
    the activation dtype; the scores likewise without flash attention (+ 6 per score), none
    with it (flash-attn's softcap is in the kernel)."""
    t = TrainingSpec(seq_len=1024, global_batch=1, micro_batch=1, precision="bf16")
    m = replace(PRESETS["gemma-2-2b"], flash_attention=False)
    plain = replace(m, logit_softcap=False, attention_softcap=False)
    tp = 2
    f, b = head_elementwise_bytes(m, t, tp)
    f0, b0 = head_elementwise_bytes(plain, t, tp)
    assert f - f0 == 6 * 2 * 1024 * m.vocab / tp and b - b0 == pytest.approx(1.1 * (f - f0))
    a, a0 = (
        attention_core_elementwise_bytes(m, t, tp),
        attention_core_elementwise_bytes(plain, t, tp),
    )
    assert a - a0 == 6 * 2 * m.heads * 1024 * 1024 / tp
    assert attention_core_elementwise_bytes(replace(m, flash_attention=True), t, tp) == 0


def test_post_norms_not_in_parallel_blocks() -> None:
    with pytest.raises(ConfigError) as ei:
        validate_model(replace(PRESETS["gemma-2-2b"], parallel_residual=True), "s.yaml")
    assert ei.value.key == "model.post_norms"


LLAMA = LLAMA_TINY


@pytest.mark.parametrize("precision", ["fp32", "amp_bf16", "bf16"])
@pytest.mark.parametrize(("change", "flash"), [
    ({"post_norms": True}, True), ({"post_norms": True}, False),
    ({"logit_softcap": True}, True), ({"attention_softcap": True}, False),
])  # fmt: skip
def test_measured(precision: str, change: dict, flash: bool) -> None:
    """PyTorch keeps, beyond the plain block: per sandwich norm its input (the branch output,
    an fp32 copy under autocast) and fp32 statistics; the capped logits' tanh output (the
    logits' dtype) and without flash attention the capped scores' tanh output; the model's
    saved bytes move by exactly as much, and its parameters match byte for byte."""
    pytest.importorskip("torch")
    from reference_pairs import measure_and_estimate

    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision=precision)
    got = []
    for m in (replace(LLAMA, flash_attention=flash),
              replace(LLAMA, flash_attention=flash, **change)):  # fmt: skip
        r, mb = measure_and_estimate(m, t)
        assert r.parameter_bytes == mb["parameters"]
        got.append((r.activation_bytes, mb["activations"]))
    measured, model = got[1][0] - got[0][0], got[1][1] - got[0][1]
    assert measured == model > 0


def test_measure_refuses_a_capping_flash_kernel() -> None:
    pytest.importorskip("torch")
    from simtrain.torchref.measure import measure_step

    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision="fp32")
    with pytest.raises(ConfigError) as ei:
        measure_step(replace(LLAMA, flash_attention=True, attention_softcap=True), t, steps=1)
    assert ei.value.key == "model.attention_softcap"


@pytest.mark.parametrize(("name", "total", "non_embedding_m"), [
    # sum(p.numel()) of transformers 4.57.6's Gemma3ForCausalLM (meta device) from google's
    # gemma-3 text configs; the Gemma 3 report's Table 1 non-embedding parameters (millions)
    ("gemma-3-1b", 999_885_952, 698), ("gemma-3-4b", 3_880_263_168, 3_209),
    ("gemma-3-12b", 11_766_034_176, 10_759), ("gemma-3-27b", 27_009_346_304, 25_600),
])  # fmt: skip
def test_gemma3(name: str, total: int, non_embedding_m: int) -> None:
    """Gemma 3's text model: sandwich norms, q/k RMSNorms, no soft-capping, a window on five
    layers of six (sliding_window_pattern 6)."""
    m = from_hf_config(HF / f"{name}.json")
    assert m.total_params() == total
    assert round((m.total_params() - m.vocab * m.hidden) / 1e6) == non_embedding_m
    assert replace(m, name=name) == PRESETS[name]
    assert (m.post_norms, m.qk_norm, m.logit_softcap, m.attention_softcap) == (True, True, False,
                                                                               False)  # fmt: skip
    assert m.full_attention_every == 6 and m.sliding_layers_in(0, 12) == 10


def test_gemma3_layer_types_and_refusals(tmp_path: Path) -> None:
    types = ["sliding_attention" if (i + 1) % 3 else "full_attention" for i in range(26)]
    p = write_config(tmp_path, "gemma-3-1b.json", {"layer_types": types})
    assert from_hf_config(p).full_attention_every == 3
    for change, key in (({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
                        ({"model_type": "gemma3"}, "model_type")):  # fmt: skip
        with pytest.raises(ConfigError) as ei:
            from_hf_config(write_config(tmp_path, "gemma-3-1b.json", change))
        assert ei.value.key == key


def test_gathered_logits_are_capped_whole() -> None:
    """Under cross_entropy: gathered every TP rank holds all V logits, and caps them all."""
    from simtrain.costs.activations import loss_saved_bytes

    m = PRESETS["gemma-2-9b"]
    t = TrainingSpec(seq_len=8192, global_batch=1, micro_batch=1, precision="bf16")
    g = replace(t, cross_entropy="gathered")
    plain = replace(m, logit_softcap=False)
    assert loss_saved_bytes(m, g, 4) - loss_saved_bytes(plain, g, 4) == 2 * 8192 * m.vocab
    assert loss_saved_bytes(m, t, 4) - loss_saved_bytes(plain, t, 4) == 2 * 8192 * m.vocab // 4
    f, _ = head_elementwise_bytes(m, g, 4)
    f0, _ = head_elementwise_bytes(plain, g, 4)
    assert f - f0 == 6 * 2 * 8192 * m.vocab


def test_attention_bias_where_transformers_builds_it(tmp_path: Path) -> None:
    """Mistral, Mixtral and Phi-3 build no attention biases whatever attention_bias says;
    Gemma's attention_bias (q, k, v and o_proj, no MLP biases to go with them) is an error
    that says the MLP has none; a null tie_word_embeddings unties the head (transformers reads
    the stored None as false)."""
    mistral = Path(__file__).parent / "data" / "mistral_config.json"
    a = from_hf_config(write_config(tmp_path, mistral, {"attention_bias": True}))
    assert (a.bias, a.qkv_bias) == (False, False)
    with pytest.raises(ConfigError) as ei:
        from_hf_config(write_config(tmp_path, "gemma-2-2b.json",
                                    {"attention_bias": True, "mlp_bias": True}))  # fmt: skip
    assert ei.value.key == "attention_bias" and "MLP has no biases" in ei.value.message
    p = write_config(tmp_path, "gemma-2-2b.json", {"tie_word_embeddings": None})
    assert from_hf_config(p).tied_embeddings is False


def test_gemma2_reads_layer_types(tmp_path: Path) -> None:
    """transformers 4.57's Gemma2Attention windows the layers its config's ``layer_types``
    names (a review of 2026-12-05: simtrain windowed every even layer whatever it said)."""
    n = json.loads((HF / "gemma-2-2b.json").read_text())["num_hidden_layers"]
    m = from_hf_config(write_config(tmp_path, "gemma-2-2b.json",
                                    {"layer_types": ["full_attention"] * n}))  # fmt: skip
    assert m.sliding_layers_in(0, n) == 0
    alternate = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    p = write_config(tmp_path, "gemma-2-2b.json", {"layer_types": alternate})
    assert from_hf_config(p).sliding_layers_in(0, n) == n // 2 == 13
