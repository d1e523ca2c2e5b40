"""Partial rotary embeddings (``model.rotary_fraction``): RoPE on a fraction of each head's
dimensions (GPT-NeoX / Pythia ``rotary_pct`` 0.25, Nemotron-4 ``partial_rotary_factor`` 0.5,
Megatron ``--rotary-percent``). No parameter or saved tensor changes; the rotation's
element-wise pass covers that fraction of q and k. Closed forms written here."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from simtrain.costs.activations import layer_activation_bytes
from simtrain.costs.compute import (
    FUSED_OP_ACCESSES,
    block_elementwise_bytes,
    eager_elementwise_bytes_per_token,
    eager_op_bytes,
)
from simtrain.errors import ConfigError
from simtrain.spec.model import PRESETS, from_hf_config, validate_model
from simtrain.spec.scenario import TrainingSpec

HF = Path(__file__).parent / "data" / "hf"


def test_rotary_bytes_scale_with_the_fraction() -> None:
    """Forward: a fused rotary reads and writes (2 accesses of e bytes) f x (q_dim + kv)/t values
    per token; eager (torchtitan's fp32 complex product) eager_op_bytes('rotary') per value.
    Everything else is the same at f = 1 and f = 0.25."""
    m = PRESETS["llama3-8b"]
    t = TrainingSpec(seq_len=2048, global_batch=2, micro_batch=2, precision="bf16")
    tokens, e, tp = 2 * 2048, 2, 4
    width = (m.q_dim + m.kv_dim) / tp
    quarter = replace(m, rotary_fraction=0.25)
    full_f, full_b = block_elementwise_bytes(m, t, tp)
    part_f, _ = block_elementwise_bytes(quarter, t, tp)
    assert full_f - part_f == pytest.approx(0.75 * FUSED_OP_ACCESSES["rotary"] * e * tokens * width)
    eager_full = eager_elementwise_bytes_per_token(m, e, tp)[0]
    eager_part = eager_elementwise_bytes_per_token(quarter, e, tp)[0]
    # eager in bf16: the casts to and from fp32 (2e + 8) and the fp32 complex product (8), 20 B
    # a value, where the fused pass reads and writes it (2e = 4 B): 16 B more
    per_value = (2 * e + 8) + 8 - 2 * e
    assert per_value == eager_op_bytes("rotary", e)[0] - FUSED_OP_ACCESSES["rotary"] * e == 16
    assert eager_full - eager_part == pytest.approx(0.75 * width * per_value)
    # parameters and saved tensors do not change
    assert quarter.total_params() == m.total_params()
    assert layer_activation_bytes(quarter, t, tp) == layer_activation_bytes(m, t, tp)


@pytest.mark.parametrize(("file", "fraction"), [
    ("pythia-160m.json", 0.25), ("pythia-1.4b.json", 0.25), ("minitron-4b.json", 0.5),
    ("phi-3-mini-4k.json", 1.0),
])  # fmt: skip
def test_configs_read_their_fraction(file: str, fraction: float) -> None:
    assert from_hf_config(HF / file).rotary_fraction == fraction


@pytest.mark.parametrize(("base", "field", "default"), [
    ("pythia-160m.json", "rotary_pct", 0.25),  # transformers GPTNeoXConfig
    ("minitron-4b.json", "partial_rotary_factor", 0.5),  # NemotronConfig
    ("phi-3-mini-4k.json", "partial_rotary_factor", 1.0),  # Phi3Config
])  # fmt: skip
def test_config_defaults_and_bad_values(tmp_path: Path, base: str, field: str,
                                        default: float) -> None:  # fmt: skip
    cfg = json.loads((HF / base).read_text())
    p = tmp_path / "config.json"
    cfg.pop(field, None)
    p.write_text(json.dumps(cfg))
    assert from_hf_config(p).rotary_fraction == default
    p.write_text(json.dumps({**cfg, field: 0.375}))  # a value no default has: read, not assumed
    assert from_hf_config(p).rotary_fraction == 0.375
    for bad in (0, 1.5, "half", True):
        p.write_text(json.dumps({**cfg, field: bad}))
        with pytest.raises(ConfigError) as ei:
            from_hf_config(p)
        assert ei.value.key == field and "(0, 1]" in ei.value.message


def test_presets() -> None:
    assert PRESETS["pythia-160m"].rotary_fraction == 0.25
    assert PRESETS["nemotron-4-340b"].rotary_fraction == 0.5
    assert PRESETS["llama3-8b"].rotary_fraction == 1.0


def test_a_preset_with_other_positions_drops_its_fraction(tmp_path: Path) -> None:
    """A Pythia preset run with learned positions (or a Nemotron one with ALiBi) is a model
    without rotary: the preset's fraction does not carry over; given with them, it is an
    error naming model.rotary_fraction."""
    from simtrain.spec.scenario import parse_scenario

    def sc(model: dict):
        return parse_scenario({"name": "r", "model": model, "hardware": "a100_sxm4_80gb",
                               "training": {"seq_len": 512, "global_batch": 1, "micro_batch": 1},
                               "parallelism": {}}, "r.yaml")  # fmt: skip

    assert sc({"preset": "pythia-160m", "positions": "learned"}).model.rotary_fraction == 1.0
    assert sc({"preset": "nemotron-4-15b", "layers": 2}).model.rotary_fraction == 0.5
    with pytest.raises(ConfigError) as ei:
        sc({"preset": "pythia-160m", "positions": "learned", "rotary_fraction": 0.25})
    assert ei.value.key == "model.rotary_fraction"


def test_validation_names_the_key() -> None:
    m = PRESETS["llama3-8b"]
    for bad in (0.0, -0.5):
        with pytest.raises(ConfigError) as ei:
            validate_model(replace(m, rotary_fraction=bad), "s.yaml")
        assert ei.value.key == "model.rotary_fraction"
    with pytest.raises(ConfigError) as ei:
        validate_model(replace(PRESETS["gpt2"], rotary_fraction=0.5), "s.yaml")
    assert ei.value.key == "model.rotary_fraction" and "rotary only" in ei.value.message
    # multi-latent attention rotates its qk_rope_head_dim dimensions whole
    with pytest.raises(ConfigError) as ei:
        validate_model(replace(PRESETS["deepseek-v3"], rotary_fraction=0.5), "s.yaml")
    assert ei.value.key == "model.rotary_fraction" and "multi-latent" in ei.value.message


def test_megatron_rotary_percent(tmp_path: Path) -> None:
    """--rotary-percent (Megatron arguments.py, default 1.0) becomes model.rotary_fraction with
    rope positions; out of (0, 1] it is an error naming the flag."""
    from simtrain.apps.importers import import_config

    base = ("--num-layers 2 --hidden-size 256 --num-attention-heads 4 --seq-length 512 "
            "--max-position-embeddings 512 --micro-batch-size 1 --global-batch-size 8 "
            "--position-embedding-type rope --bf16 --tensor-model-parallel-size 1")  # fmt: skip
    f = tmp_path / "a.sh"
    f.write_text(f"pretrain_gpt.py {base} --rotary-percent 0.5\n")
    imp = import_config("megatron", str(f), gpus=8)
    assert imp.data["model"]["rotary_fraction"] == 0.5
    f.write_text(f"pretrain_gpt.py {base} --rotary-percent 2\n")
    with pytest.raises(ConfigError) as ei:
        import_config("megatron", str(f), gpus=8)
    assert ei.value.key == "--rotary-percent"


@pytest.mark.parametrize("tp", [1, 4])
def test_rotary_values_closed_forms(tp: int) -> None:
    """Values per token RoPE rotates on one TP rank: the fraction of q and k (Llama 3 8B: 4,096
    + 1,024 over tp); multi-latent attention only each query head's qk_rope_head_dim
    dimensions and the shared k_pe, whole on every rank (DeepSeek-V3: 128 x 64 / tp + 64), not
    its q_dim + kv_dim (49,152 at tp 1); nothing without rotary positions."""
    assert PRESETS["llama3-8b"].rotary_values(tp) == (4096 + 1024) / tp
    assert replace(PRESETS["llama3-8b"], rotary_fraction=0.5).rotary_values(tp) == 2560 / tp
    dsv3 = PRESETS["deepseek-v3"]
    assert dsv3.rotary_values(tp) == 128 * 64 / tp + 64
    assert PRESETS["gpt2"].rotary_values(tp) == 0.0


@pytest.mark.parametrize("precision", ["fp32", "amp_bf16"])
def test_the_reference_rotates_the_fraction_and_saves_the_same(precision: str) -> None:
    """The PyTorch reference rotates int(head_dim x fraction) dimensions of each head and passes
    the rest through (transformers GPT-NeoX's rotary_ndims); as the model says, PyTorch saves
    exactly the same bytes as with whole-head rotary, and so does the model."""
    torch = pytest.importorskip("torch")
    from reference_pairs import LLAMA_TINY, measure_and_estimate

    from simtrain.torchref.reference_model import Attention, build_reference_model

    t = TrainingSpec(seq_len=64, global_batch=2, micro_batch=2, precision=precision)
    quarter = replace(LLAMA_TINY, rotary_fraction=0.25)
    model = build_reference_model(quarter, t)
    assert model.rope_cos.shape[-1] == int(LLAMA_TINY.head_dim * 0.25) == 4
    # the pass-through dimensions of q leave the attention's rotation untouched
    attn = next(m for m in model.modules() if isinstance(m, Attention))
    seen = {}
    attn.core = lambda q, k, v, mask: seen.setdefault("q", q) * 0 + v.repeat_interleave(2, 1)
    x = torch.randn(1, 8, LLAMA_TINY.hidden, dtype=next(model.parameters()).dtype)
    cos, sin = model.rope_cos[:8], model.rope_sin[:8]
    attn(x, cos, sin, None)
    plain = attn.q(x).view(1, 8, LLAMA_TINY.heads, -1).transpose(1, 2)
    assert torch.equal(seen["q"][..., 4:], plain[..., 4:])
    assert not torch.allclose(seen["q"][..., :4], plain[..., :4])
    (r1, m1), (rq, mq) = measure_and_estimate(LLAMA_TINY, t), measure_and_estimate(quarter, t)
    assert rq.activation_bytes == r1.activation_bytes and mq["activations"] == m1["activations"]
