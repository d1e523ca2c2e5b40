"""Phi-1.5 / Phi-2 (``model_type`` phi): a parallel block with one shared LayerNorm, biases on
every linear and on the LM head (``model.head_bias``), partial rotary. Independent values:
transformers' own parameter count of each config, and the PyTorch reference's parameter and
saved bytes (measured on the CPU)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hf_configs import HF, write_config

from simtrain.costs.params import head_param_tensors
from simtrain.errors import ConfigError
from simtrain.spec.model import PRESETS, ModelSpec, from_hf_config
from simtrain.spec.scenario import PeftSpec, TrainingSpec


@pytest.mark.parametrize(("file", "total"), [
    # sum(p.numel() for p in PhiForCausalLM(PhiConfig(**config)).parameters()), transformers
    # 4.46.3 on the meta device (microsoft/phi-2 and phi-1_5 config.json)
    ("phi-2.json", 2_779_683_840),
    ("phi-1_5.json", 1_418_270_720),
])  # fmt: skip
def test_transformers_counts(file: str, total: int) -> None:
    assert from_hf_config(HF / file).total_params() == total


def test_fields() -> None:
    """PhiAttention rotates int(head_dim x partial_rotary_factor) dimensions: 32 of Phi-2's 80
    (0.4); one input_layernorm feeds both branches; resid_pdrop drops both branches' outputs,
    attention_dropout (0.0) nothing."""
    m = from_hf_config(HF / "phi-2.json")
    assert (m.rotary_fraction, m.shared_norm, m.parallel_residual, m.head_bias, m.bias) == (
        0.4, True, True, True, True)  # fmt: skip
    assert (m.dropout, m.attention_dropout, m.tied_embeddings, m.mlp) == (0.1, False, False,
                                                                          "gelu")  # fmt: skip


def test_rotary_dimensions_are_whole(tmp_path: Path) -> None:
    """A factor that does not divide the head is truncated as PhiAttention truncates it."""
    p = write_config(tmp_path, "phi-2.json", {"partial_rotary_factor": 0.33})
    assert from_hf_config(p).rotary_fraction == int(80 * 0.33) / 80


@pytest.mark.parametrize(("change", "key"), [
    ({"qk_layernorm": True}, "qk_layernorm"),
    ({"partial_rotary_factor": 0.01}, "partial_rotary_factor"),
    ({"partial_rotary_factor": 0.0}, "partial_rotary_factor"),
])  # fmt: skip
def test_what_phi_cannot_say(tmp_path: Path, change: dict, key: str) -> None:
    p = write_config(tmp_path, "phi-2.json", change)
    with pytest.raises(ConfigError) as ei:
        from_hf_config(p)
    assert ei.value.key == key


@pytest.mark.parametrize(("name", "file"), [("phi-1.5", "phi-1_5.json"), ("phi-2", "phi-2.json")])
def test_presets_are_their_configs(name: str, file: str) -> None:
    assert replace(from_hf_config(HF / file), name=name) == PRESETS[name]


@pytest.mark.parametrize("tp", [1, 4])
def test_head_bias_parameters(tp: int) -> None:
    """The LM head's bias: V parameters in the count, V/t on each TP rank (split like the
    head's output), trained by full training, bitfit and linear probing, frozen under LoRA."""
    m = PRESETS["phi-2"]
    assert m.total_params() - replace(m, head_bias=False).total_params() == m.vocab
    full = TrainingSpec(seq_len=2048, global_batch=1, micro_batch=1)
    bias = [p for p in head_param_tensors(m, full, tp) if p.name == "lm_head.bias"]
    assert [(p.numel, p.trainable) for p in bias] == [(m.vocab // tp, True)]
    for method, trained in (("bitfit", True), ("linear_probe", True), ("lora", False)):
        t = replace(full, peft=PeftSpec(method=method))
        (p,) = [p for p in head_param_tensors(m, t, tp) if p.name == "lm_head.bias"]
        assert p.trainable is trained, method


@pytest.mark.parametrize("tied", [False, True])
def test_head_bias_measured(tied: bool) -> None:
    """PyTorch's parameter bytes equal the model's with the head's bias, tied or not (the
    reference gives a tied head its own bias vector), and the saved activations do not move:
    the bias's gradient is the logits' gradient summed."""
    pytest.importorskip("torch")
    from reference_pairs import measure_and_estimate

    spec = ModelSpec("phi-tiny", 2, 64, 4, 4, 256, 256, 256, positions="rotary",
                     rotary_fraction=0.5, parallel_residual=True, shared_norm=True,
                     tied_embeddings=tied, flash_attention=True)  # fmt: skip
    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision="fp32")
    got = {}
    for bias in (False, True):
        r, mb = measure_and_estimate(replace(spec, head_bias=bias), t)
        assert r.parameter_bytes == mb["parameters"]
        got[bias] = (r.activation_bytes, mb["activations"])
    assert got[True][0] - got[False][0] == 0
    assert got[True][1] - got[False][1] == 0
    assert replace(spec, head_bias=True).total_params() - spec.total_params() == 256
