"""`simtrain memory` against real PyTorch training steps on the CPU (simtrain.torchref.measure).

Model states must match exactly; activations saved for backward and the step's peak live bytes
within 5 % (issue 2, item 8).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from reference_pairs import (  # noqa: E402
    GPT_TINY,
    LLAMA_TINY,
    estimate_stage,
    measure_and_estimate,
)

from simtrain.spec.model import ModelSpec  # noqa: E402
from simtrain.spec.scenario import PeftSpec, TrainingSpec  # noqa: E402
from simtrain.torchref.losses import FUSED_CE_ROWS  # noqa: E402
from simtrain.torchref.measure import measure_step  # noqa: E402

GPT = replace(GPT_TINY, dropout=0.1)
LLAMA = LLAMA_TINY

# Under full recompute the step's peak is inside a re-materialised block's backward, where
# PyTorch also holds the MLP backward's temporaries (costs.activations.MLP_BACKWARD_TEMPORARIES:
# b·s·f·4 bytes with GeLU, 2·b·s·f·4 with SwiGLU) and, on one GPU with one micro-batch, the
# parameter gradients already produced (costs.memory.transient_backward_moment). Before both
# were counted these cases were strict xfails, -16.0 % (GPT) to -24.5 % (Llama) of the peak.

CASES = [
    # (model, precision, flash, recompute, peft, optimizer)
    (GPT, "fp32", False, "none", "none", "adamw"),
    (GPT, "fp32", True, "none", "none", "adam"),
    (GPT, "amp_bf16", True, "none", "none", "adamw"),  # bf16 autocast
    (GPT, "amp_bf16", False, "none", "none", "sgd_momentum"),
    (GPT, "bf16", True, "none", "none", "adamw"),  # 16-bit weights + fp32 master
    (GPT, "bf16_fp32_grads", True, "none", "none", "adamw"),  # + fp32 grad buffer (nanotron)
    (GPT, "fp32", True, "full", "none", "adamw"),  # full checkpointing: the block backward
    (GPT, "fp32", False, "full", "none", "adamw"),  # a non-flash core in a re-materialised block
    (LLAMA, "fp32", False, "full", "none", "adamw"),
    (GPT, "fp32", True, "full", "lora", "adamw"),  # a frozen down-projection frees nothing
    (GPT, "fp32", True, "none", "lora", "adamw"),
    (GPT, "fp32", True, "none", "linear_probe", "adamw"),
    (LLAMA, "fp32", True, "none", "none", "adamw"),
    (LLAMA, "bf16", True, "none", "lora", "adamw"),
    (LLAMA, "fp32", True, "full", "none", "sgd"),
    (
        replace(LLAMA, name="llama-tied", tied_embeddings=True),
        "fp32",
        True,
        "full",
        "none",
        "adamw",
    ),  # the head writes the token embedding's gradient first
    (GPT, "amp_bf16", True, "full", "none", "adamw"),  # one block's autocast weight copies
    (LLAMA, "amp_bf16", True, "none", "none", "adamw"),
    # torchtitan's per-op selective checkpointing (costs.op_sac): saved bytes exact in both;
    # in fp32 the peak is inside a block's backward (-9 % before it was modelled), in bf16 not.
    (LLAMA, "fp32", True, "selective_op", "none", "adamw"),
    (LLAMA, "bf16", True, "selective_op", "none", "adamw"),
    # Megatron's selective recompute (the attention core): with flash attention the kernel's
    # output stays saved as the out-projection's input (it was dropped with the logsumexp:
    # 4·b·s·h/t bytes a layer short, a review of 2026-12-05); without flash as before
    (GPT, "fp32", True, "selective", "none", "adamw"),
    # (the re-run core's probabilities and mask held in its backward: the 657,048 B this case
    # missed, a strict xfail until costs.activations.attention_backward_working_bytes)
    (GPT, "fp32", False, "selective", "none", "adamw"),
    # a non-flash core's backward holds the scores' gradient beside the saved probabilities
    (LLAMA, "fp32", False, "none", "none", "adamw"),
    (GPT, "amp_bf16", False, "selective", "none", "adamw"),
    (LLAMA, "bf16", True, "selective", "none", "adamw"),
    # OPT's ReLU MLP and Nemotron's squared ReLU (the reference model's F.relu, torch.square)
    (replace(GPT, name="opt-tiny", mlp="relu"), "fp32", True, "none", "none", "adamw"),
    (replace(GPT, name="opt-tiny", mlp="relu"), "amp_bf16", False, "none", "lora", "adamw"),
    (replace(GPT, name="relu2-tiny", mlp="relu2"), "fp32", True, "none", "none", "adamw"),
    # OPT's dropout: on the residual branches only (attention_dropout 0.0), math attention
    (
        replace(GPT, name="opt-tiny", mlp="relu", attention_dropout=False),
        "fp32",
        False,
        "none",
        "none",
        "adamw",
    ),
    (
        replace(GPT, name="opt-tiny", mlp="relu", attention_dropout=False),
        "amp_bf16",
        False,
        "selective",
        "none",
        "adamw",
    ),
    # GPT-NeoX's parallel attention and MLP on the block's input (not with LoRA here: the first
    # block's MLP branch then sees no tensor that needs a gradient and autograd keeps nothing
    # for it, 246,784 B of this model; the block-0 PEFT savings the model leaves out)
    (
        replace(GPT, name="neox-tiny", parallel_residual=True),
        "fp32",
        False,
        "none",
        "none",
        "adamw",
    ),
    (
        replace(LLAMA, name="neox-llama", parallel_residual=True),
        "amp_bf16",
        True,
        "none",
        "none",
        "adamw",
    ),
    # no position information (NoPE): no table, no rotary
    (replace(GPT, name="nope-tiny", positions="none"), "amp_bf16", True, "none", "none", "adamw"),
    (replace(GPT, name="relu2-tiny", mlp="relu2"), "bf16", True, "selective_op", "none", "adamw"),
]


def _case_id(c) -> str:
    m, prec, flash, rec, peft, opt = c
    return f"{m.name}-{prec}-{'flash' if flash else 'math'}-{rec}-{peft}-{opt}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_memory_model_matches_pytorch(case):
    model, prec, flash, rec, peft, opt = case
    spec = replace(model, flash_attention=flash, dropout=model.dropout if not flash else 0.0)
    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision=prec, optimizer=opt,
                     recompute=rec, peft=PeftSpec(method=peft))  # fmt: skip
    measured = measure_step(spec, t, steps=1)
    st = estimate_stage(spec, t)
    c = dict(st.memory_bytes)
    # Exact integers.
    assert c["parameters"] == measured.parameter_bytes
    assert c["gradients"] == measured.gradient_bytes
    assert c["optimizer_states"] == measured.optimizer_state_bytes
    assert c["master_weights"] == measured.master_weight_bytes
    assert st.trainable == measured.trainable_params
    # Saved for backward (the category adds the recompute working set, not saved at forward end).
    ws = max((b for _, b in st.recompute_working_set_bytes), default=0)
    saved = c["activations"] - ws
    assert saved == pytest.approx(measured.activation_bytes, rel=0.05)
    # Peak live bytes of the step (the CPU has no CUDA context).
    predicted_peak = st.peak_memory_bytes - c["cuda_context"]
    assert predicted_peak == pytest.approx(measured.peak_bytes, rel=0.05)


# A model whose logits dominate the step (vocabulary 16,384, hidden 64): the loss kernel sets
# the peak.
BIG_VOCAB = ModelSpec("big-vocab", 1, 64, 4, 4, 256, 16384, 256, flash_attention=True)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_cross_entropy_memory_matches_pytorch(precision: str) -> None:
    """training.cross_entropy: fused saves only the logits (+ an fp32 log-sum-exp per row) and
    writes one logit gradient; standard saves the fp32 log-softmax and holds fp32 copies. Both
    are measured (simtrain.torchref.measure's block-wise fused kernel) and predicted within 5 %, and so
    is what fusing saves."""
    peaks = {}
    for ce in ("standard", "fused"):
        t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision=precision,
                         optimizer="adamw", cross_entropy=ce)  # fmt: skip
        measured = measure_step(BIG_VOCAB, t, steps=1)
        # The emulation's two fp32 row blocks are alive at the peak; the kernel keeps them on chip.
        emulation = 2 * FUSED_CE_ROWS * BIG_VOCAB.vocab * 4 if ce == "fused" else 0
        st = estimate_stage(BIG_VOCAB, t)
        c = dict(st.memory_bytes)
        assert c["activations"] == pytest.approx(measured.activation_bytes, rel=0.01), ce
        predicted_peak = st.peak_memory_bytes - c["cuda_context"]
        assert predicted_peak == pytest.approx(measured.peak_bytes - emulation, rel=0.05), ce
        peaks[ce] = (predicted_peak, measured.peak_bytes - emulation)
    saved_pred = peaks["standard"][0] - peaks["fused"][0]
    saved_meas = peaks["standard"][1] - peaks["fused"][1]
    assert saved_pred > 0.2 * peaks["standard"][0]  # fp32: 26 %, bf16: 50 % of the peak
    assert saved_pred == pytest.approx(saved_meas, rel=0.01)


@pytest.mark.parametrize("ce", ["vocab_parallel", "te", "sharded"])
def test_in_place_cross_entropy_memory_matches_pytorch(ce: str) -> None:
    """Megatron's vocab-parallel cross-entropy (the fp32 copy worked on in place and saved as
    the softmax), Transformer Engine's (the gradient written into the bf16 logits) and
    nanotron's (its fp32 cast block, then Megatron's kernel with the max subtracted out of
    place), all ported to ``simtrain.torchref.losses``: saved activations within 1 %, the bf16
    step's peak within 1 %, and what each saves against the standard loss within 1 % of the
    measured saving (standard's loss peak is 12 B a logit: the fp32 log-softmax saved and two
    fp32 working copies; vocab_parallel's 6, the saved fp32 softmax and the bf16 logits;
    sharded's 8, the saved fp32 softmax and its fp32 input; te's 2, the bf16 logits; with te
    the step's peak moves off the loss)."""
    peaks = {}
    for kind in ("standard", ce):
        t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision="bf16",
                         optimizer="adamw", cross_entropy=kind)  # fmt: skip
        measured = measure_step(BIG_VOCAB, t, steps=1)
        st = estimate_stage(BIG_VOCAB, t)
        c = dict(st.memory_bytes)
        assert c["activations"] == pytest.approx(measured.activation_bytes, rel=0.01), kind
        predicted_peak = st.peak_memory_bytes - c["cuda_context"]
        assert predicted_peak == pytest.approx(measured.peak_bytes, rel=0.01), kind
        peaks[kind] = (predicted_peak, measured.peak_bytes)
    saved_pred = peaks["standard"][0] - peaks[ce][0]
    saved_meas = peaks["standard"][1] - peaks[ce][1]
    logits_fp32 = 4 * 2 * 128 * BIG_VOCAB.vocab
    assert saved_pred > {"vocab_parallel": 1.45, "te": 2.0, "sharded": 0.95}[ce] * logits_fp32
    assert saved_pred == pytest.approx(saved_meas, rel=0.01)


def test_nanotron_loss_fp32_peak_is_its_input_beside_the_softmax() -> None:
    """In fp32 nanotron's cast returns the logits themselves, but its loss still subtracts the
    max out of place: the logits stay beside the saved softmax, 4 B a logit more than
    Megatron's in-place kernel holds (whose fp32 peak moves to the output layer's backward,
    below). Saved bytes and the step's peak within 1 % of the port's measurement."""
    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision="fp32",
                     optimizer="adamw", cross_entropy="sharded")  # fmt: skip
    measured = measure_step(BIG_VOCAB, t, steps=1)
    st = estimate_stage(BIG_VOCAB, t)
    c = dict(st.memory_bytes)
    assert c["activations"] == pytest.approx(measured.activation_bytes, rel=0.01)
    assert st.peak_memory_bytes - c["cuda_context"] == pytest.approx(measured.peak_bytes,
                                                                     rel=0.01)  # fmt: skip


@pytest.mark.parametrize("ce", ["vocab_parallel", "te"])
def test_in_place_cross_entropy_fp32_peak_is_the_head_backward(ce: str) -> None:
    """In fp32 neither loss holds anything beside its saved tensor, so the step's peak moves to
    the backward: the head's weight gradient (V·h fp32, transient on one GPU) beside what the
    blocks still hold. The memory walk used to count that gradient only at the optimizer step
    (V·h + b·s·h short, the test's former pin); the block backward's moment
    (costs.memory.transient_backward_moment) holds it."""
    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision="fp32",
                     optimizer="adamw", cross_entropy=ce)  # fmt: skip
    measured = measure_step(BIG_VOCAB, t, steps=1)
    st = estimate_stage(BIG_VOCAB, t)
    c = dict(st.memory_bytes)
    ws = max((b for _, b in st.recompute_working_set_bytes), default=0)
    assert c["activations"] - ws == pytest.approx(measured.activation_bytes, rel=0.01)
    head_grads = 4 * BIG_VOCAB.vocab * BIG_VOCAB.hidden + 4 * 2 * 128 * BIG_VOCAB.hidden
    predicted = st.peak_memory_bytes - c["cuda_context"]
    assert abs(measured.peak_bytes - predicted) < 0.02 * head_grads
    assert predicted == pytest.approx(measured.peak_bytes, rel=0.01)


@pytest.mark.parametrize(("peft", "flash"), [
    (PeftSpec(method="prefix"), True),  # K and V saved at s + p (the prefix's keys)
    (PeftSpec(method="lora", rank=32, target_modules=("q", "k", "v", "o", "gate", "up", "down")),
     True),  # a GeLU MLP has no gate: no x·A for it
])  # fmt: skip
def test_saved_activations_of_more_peft_methods(peft: PeftSpec, flash: bool) -> None:
    """Saved activations against the reference (a review of 2026-12-05: prefix tuning under
    flash attention counted K and V at s, not s + p, -4 %; LoRA on 'gate' of a GeLU MLP
    counted an adapter that does not exist, +2.4 %)."""
    spec = replace(GPT, flash_attention=flash, dropout=0.0)
    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision="fp32",
                     optimizer="adamw", peft=peft)  # fmt: skip
    measured = measure_step(spec, t, steps=1)
    st = estimate_stage(spec, t)
    ws = max((b for _, b in st.recompute_working_set_bytes), default=0)
    saved = dict(st.memory_bytes)["activations"] - ws
    assert saved == pytest.approx(measured.activation_bytes, rel=0.01)


@pytest.mark.parametrize("precision", ["fp32", "amp_bf16"])
def test_relu_mlp_saves_one_tensor_fewer_than_gelu(precision: str) -> None:
    """ReLU's backward reads its output, which is the down-projection's input: one f-wide
    tensor where GeLU saves two (its input and its output). PyTorch's saved bytes differ by
    exactly layers·b·s·f·e between the two models, and so do the model's."""
    spec = replace(GPT, flash_attention=True, dropout=0.0)
    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision=precision)
    e = 4 if precision == "fp32" else 2
    by_kind = {}
    for kind in ("gelu", "relu", "relu2"):
        m = replace(spec, mlp=kind)
        measured = measure_step(m, t, steps=1).activation_bytes
        st = estimate_stage(m, t)
        # saved bytes: the category less the backward's working set (the MLP's temporaries
        # differ by kind: MLP_BACKWARD_TEMPORARIES)
        ws = max((b for _, b in st.recompute_working_set_bytes), default=0)
        by_kind[kind] = (measured, dict(st.memory_bytes)["activations"] - ws)
    one_tensor = spec.layers * 2 * 128 * spec.ffn_hidden * e  # layers · b · s · f · e
    assert by_kind["gelu"][0] - by_kind["relu"][0] == one_tensor
    assert by_kind["gelu"][1] - by_kind["relu"][1] == one_tensor
    # squared ReLU keeps ReLU's output (the square's input) and the down-projection's input
    assert by_kind["relu2"][0] == by_kind["gelu"][0]
    assert by_kind["relu2"][1] == by_kind["gelu"][1]


def test_measure_refuses_alibi() -> None:
    """PyTorch's SDPA takes ALiBi only as a float mask (no flash kernel, an a·s·s bias held):
    not the frameworks' kernels, so measure says so instead of measuring something else."""
    from simtrain.errors import ConfigError

    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision="fp32")
    with pytest.raises(ConfigError) as ei:
        measure_step(replace(GPT, positions="alibi"), t, steps=1)
    assert ei.value.key == "model.positions" and "positions: none" in ei.value.message


@pytest.mark.parametrize("precision", ["fp32", "amp_bf16"])
def test_parallel_residual_saves_the_block_input_once(precision: str) -> None:
    """x + attn(norm1(x)) + mlp(norm2(x)): the second norm's input is the block's input, which
    the first norm keeps already: PyTorch saves layers·b·s·h·e_norm bytes fewer than the
    sequential block (e_norm: the residual stream's bytes, fp32 under autocast), and so does
    the model."""
    spec = replace(GPT, flash_attention=True, dropout=0.0)
    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision=precision)
    got = {}
    for parallel in (False, True):
        m = replace(spec, parallel_residual=parallel)
        measured = measure_step(m, t, steps=1).activation_bytes
        got[parallel] = (measured, dict(estimate_stage(m, t).memory_bytes)["activations"])
    one = spec.layers * 2 * 128 * spec.hidden * 4  # the residual stream is fp32 in both
    assert got[False][0] - got[True][0] == one
    assert got[False][1] - got[True][1] == one


@pytest.mark.parametrize("precision", ["fp32", "amp_bf16", "bf16"])
@pytest.mark.parametrize("base", [GPT, LLAMA], ids=["layernorm", "rmsnorm"])
def test_shared_norm_saves_one_norm_less(precision: str, base: ModelSpec) -> None:
    """GPT-J / Falcon-7B: x + attn(norm(x)) + mlp(norm(x)). Against the two-norm parallel block
    PyTorch keeps the second norm's statistics no more, and in fp32 or 16-bit weights its
    output either (the MLP's linear saves the tensor the attention's already keeps); under
    autocast each linear still saves its own 16-bit cast. Measured difference = the model's =
    layers·(stats·sb + e·sbh, without autocast)."""
    spec = replace(base, flash_attention=True, dropout=0.0, parallel_residual=True)
    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision=precision)
    got = {}
    for shared in (False, True):
        measured, states = measure_and_estimate(replace(spec, shared_norm=shared), t)
        got[shared] = (measured.activation_bytes, states["activations"])
    sb, h = 2 * 128, spec.hidden
    stats = 8 if spec.norm == "layernorm" else 4  # fp32 mean and rstd / rstd per token
    e = {"fp32": 4, "amp_bf16": 0, "bf16": 2}[precision]  # 0: autocast's casts stay
    one = spec.layers * (stats * sb + e * sb * h)
    assert got[False][0] - got[True][0] == one
    assert got[False][1] - got[True][1] == one


def test_autocast_copies_are_gone_by_the_optimizer_step() -> None:
    """Autocast's 16-bit weight copies live from the forward's casts to the backward's end
    (costs.memory.autocast_copy_bytes): a step whose peak is its optimizer step (wide layers,
    16 tokens) peaks at its fp32 twin's, byte for byte in PyTorch, and so does the model (+9.9 %
    while the copies were counted at the step)."""
    wide = ModelSpec("gpt-wide", 2, 128, 4, 4, 512, 256, 256, flash_attention=True)
    peaks = {}
    for prec in ("fp32", "amp_bf16"):
        t = TrainingSpec(seq_len=16, global_batch=1, micro_batch=1, precision=prec,
                         optimizer="adamw", recompute="full")  # fmt: skip
        st = estimate_stage(wide, t)
        peaks[prec] = (measure_step(wide, t, steps=1).peak_bytes,
                       st.peak_memory_bytes - dict(st.memory_bytes)["cuda_context"])  # fmt: skip
    assert peaks["amp_bf16"][0] == peaks["fp32"][0]
    assert peaks["amp_bf16"][1] == peaks["fp32"][1]
    assert peaks["amp_bf16"][1] == pytest.approx(peaks["amp_bf16"][0], rel=0.01)


def test_frozen_weights_autocast_copies_under_recompute() -> None:
    """LoRA under autocast and full recompute: the frozen base weights' copies are not cached
    (autocast caches only leaves that require a gradient) nor saved (the checkpoint), so one
    block's exist at a time: 6 blocks within 2 % (+17.9 % while every block's were counted)."""
    m = replace(LLAMA, layers=6, flash_attention=True)
    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision="amp_bf16",
                     optimizer="adamw", recompute="full", peft=PeftSpec(method="lora"))  # fmt: skip
    measured = measure_step(m, t, steps=1)
    st = estimate_stage(m, t)
    predicted = st.peak_memory_bytes - dict(st.memory_bytes)["cuda_context"]
    assert predicted == pytest.approx(measured.peak_bytes, rel=0.02)


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_linear_probe_keeps_no_block_autocast_copies(recompute: str) -> None:
    """Linear probing under autocast: no gradient flows through the blocks, so their frozen
    weights' copies are neither cached nor saved, and the step peaks at its fp32 twin's in
    PyTorch; so does the model (a review of 2026-12-07: +39.8 % without recompute while every
    block's copies were counted)."""
    m = replace(LLAMA, layers=6, hidden=128, ffn_hidden=512, flash_attention=True)
    t = TrainingSpec(seq_len=32, global_batch=1, micro_batch=1, precision="amp_bf16",
                     optimizer="adamw", recompute=recompute,
                     peft=PeftSpec(method="linear_probe"))  # fmt: skip
    measured = measure_step(m, t, steps=1)
    st = estimate_stage(m, t)
    predicted = st.peak_memory_bytes - dict(st.memory_bytes)["cuda_context"]
    assert predicted == pytest.approx(measured.peak_bytes, rel=0.01)


def test_tied_head_under_autocast_keeps_a_copy_of_the_embedding_table() -> None:
    """A tied head's matmul runs on the token embedding's table: under autocast a 16-bit copy
    of it (V·h·2 B), cached and saved for the head's input gradient. With a large vocabulary
    that copy was what the model missed (−5.0 % of the peak, 2 MB at V 8,192, h 128)."""
    m = ModelSpec("big-vocab", 4, 128, 4, 4, 512, 8192, 256, flash_attention=True)
    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision="amp_bf16",
                     optimizer="sgd")  # fmt: skip
    measured = measure_step(m, t, steps=1)
    st = estimate_stage(m, t)
    predicted = st.peak_memory_bytes - dict(st.memory_bytes)["cuda_context"]
    assert predicted == pytest.approx(measured.peak_bytes, rel=0.01)
