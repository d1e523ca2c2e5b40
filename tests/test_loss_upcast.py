"""training.loss_upcast: PyTorch's cross-entropy on an fp32 copy of the logits (the caller's
``logits.float()``: Hugging Face, torchtitan) or, false, in the logits' own dtype (KempnerForge
scripts/train.py l.295). Closed forms per logit: saved log-softmax 4 B or 2 B (bf16), the
backward's two gradients 2 x 4 B or 2 x 2 B, the forward's passes 4 x 4 B or 4 x 2 B."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from simtrain.costs.activations import loss_saved_bytes, loss_transient_bytes
from simtrain.costs.compute import head_elementwise_bytes
from simtrain.errors import ConfigError
from simtrain.spec.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = str(ROOT / "scenarios" / "zero3_64gpu.yaml")  # Llama-2 13B, bf16, vocab 32,000


def test_the_loss_in_the_logits_dtype_holds_half_the_bytes_of_the_fp32_copy() -> None:
    sc = load_scenario(SCENARIO)
    m, t = sc.model, sc.training
    assert t.loss_upcast and t.precision_spec.act_mm == 2 and t.cross_entropy == "standard"
    logits = t.micro_batch * t.seq_len * m.vocab  # b·s·V, tp 1
    native = replace(t, loss_upcast=False)
    assert loss_saved_bytes(m, t) == 4 * logits and loss_saved_bytes(m, native) == 2 * logits
    assert loss_transient_bytes(m, t) == 8 * logits
    assert loss_transient_bytes(m, native) == 4 * logits
    assert head_elementwise_bytes(m, t)[0] == 16 * logits
    assert head_elementwise_bytes(m, native)[0] == 8 * logits
    # gathered: the whole vocabulary on each of tp 4 ranks, in either dtype
    g = replace(native, cross_entropy="gathered")
    assert loss_transient_bytes(m, g, 4) == 4 * logits


def test_the_scenario_peak_drops_by_those_bytes() -> None:
    """At the peak (the loss's backward) the saved log-softmax and the backward's transient
    are both there: (4 − 2) + (8 − 4) = 6 B a logit less, b·s·V = 131,072,000 logits. Under
    the scenario's full recompute the native run's peak moves to a re-materialised block's
    backward (its MLP temporaries: costs.activations.mlp_backward_working_bytes), so it drops
    by less; without recompute the loss's backward stays the peak of both."""
    from simtrain.costs.memory import estimate_memory

    def drop(*over: str) -> int:
        up = load_scenario(SCENARIO, list(over))
        down = load_scenario(SCENARIO, ["training.loss_upcast=false", *over])
        return (estimate_memory(up).stages[0].peak_memory_bytes
                - estimate_memory(down).stages[0].peak_memory_bytes)  # fmt: skip

    t, m = load_scenario(SCENARIO).training, load_scenario(SCENARIO).model
    logits = t.micro_batch * t.seq_len * m.vocab
    assert drop("training.recompute=none") == 6 * logits
    # (a pin: 4.89 B a logit, the native run's peak a block backward's, not its loss's)
    assert drop() == 641_056_768 < 6 * logits


@pytest.mark.parametrize("kernel", ["te", "vocab_parallel", "fused", "sharded"])
def test_its_own_kernel_refuses_the_switch(kernel: str) -> None:
    with pytest.raises(ConfigError, match="training.loss_upcast") as exc:
        load_scenario(SCENARIO, [f"training.cross_entropy={kernel}", "training.loss_upcast=false"])
    assert "standard" in str(exc.value) and kernel in str(exc.value)


def test_autocast_upcasts_whatever_the_switch_says() -> None:
    """torch.autocast runs cross-entropy on fp32 logits: loss_upcast false under amp_* is an
    error naming both keys."""
    with pytest.raises(ConfigError, match="training.loss_upcast") as exc:
        load_scenario(SCENARIO, ["training.precision=amp_bf16", "training.loss_upcast=false"])
    assert "amp_bf16" in str(exc.value)


def test_the_reference_model_follows_the_switch() -> None:
    """simtrain.torchref's loss takes the fp32 copy only with loss_upcast (what `simtrain
    measure` runs is what the model prices)."""
    torch = pytest.importorskip("torch")
    from simtrain.spec.model import ModelSpec
    from simtrain.spec.scenario import TrainingSpec
    from simtrain.torchref.reference_model import ReferenceGPT

    spec = ModelSpec(name="t", layers=1, hidden=16, heads=2, kv_heads=2, ffn_hidden=32, vocab=50,
                     max_positions=8)  # fmt: skip
    seen = []
    real = torch.nn.functional.cross_entropy

    def spy(logits, *a, **k):
        seen.append(logits.dtype)
        return real(logits, *a, **k)

    for upcast in (True, False):
        t = TrainingSpec(seq_len=8, global_batch=1, micro_batch=1, precision="bf16_pure",
                         loss_upcast=upcast)  # fmt: skip
        model = ReferenceGPT(spec, t).to(torch.bfloat16)
        idx = torch.zeros(1, 8, dtype=torch.long)
        torch.nn.functional.cross_entropy = spy
        try:
            model(idx, idx)
        finally:
            torch.nn.functional.cross_entropy = real
    assert seen == [torch.float32, torch.bfloat16]
