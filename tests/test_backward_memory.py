"""What a block's backward holds beside the saved activations: the MLP's temporaries
(costs.activations.mlp_backward_working_bytes) and, where the gradients are transient (one GPU,
one micro-batch), the gradients already produced (costs.memory.transient_backward_moment).
The PyTorch measurements of both are in tests/test_memory_vs_measure.py; these pin the closed
forms and the invariants."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_pairs import GPT_TINY, LLAMA_TINY, estimate_stage

from simtrain.costs.activations import MLP_BACKWARD_TEMPORARIES, mlp_backward_working_bytes
from simtrain.spec.scenario import PeftSpec, TrainingSpec

GPT = replace(GPT_TINY, flash_attention=True)


def _t(**kw) -> TrainingSpec:
    base = {"seq_len": 128, "global_batch": 2, "micro_batch": 2, "precision": "fp32",
            "optimizer": "adamw", "recompute": "full"}  # fmt: skip
    return TrainingSpec(**{**base, **kw})


@pytest.mark.parametrize(("mlp", "k"), [("gelu", 1), ("swiglu", 2), ("relu", 2), ("relu2", 3)])
def test_mlp_temporaries_closed_form(mlp: str, k: int) -> None:
    """k tensors of b·s·f/t values at the activation's element size (fp32: 4 B; bf16: 2 B)."""
    m = replace(GPT, mlp=mlp)
    assert MLP_BACKWARD_TEMPORARIES[mlp] == k
    assert mlp_backward_working_bytes(m, _t()) == k * 4 * 2 * 128 * 256
    assert mlp_backward_working_bytes(m, _t(precision="bf16"), tp=4) == k * 2 * 2 * 128 * 256 // 4


def test_mlp_temporaries_frozen_down_projection() -> None:
    """LoRA that leaves the down-projection alone: it saved no input, so nothing is freed before
    the activation's backward (one tensor more), except under ReLU (its output is ReLU's own);
    LoRA on 'down' saves the input again; linear probing has no gradient through the blocks."""
    lora_qv = _t(peft=PeftSpec(method="lora"))
    lora_down = _t(peft=PeftSpec(method="lora", target_modules=("q", "v", "down")))
    bsf = 4 * 2 * 128 * 256
    assert mlp_backward_working_bytes(GPT, lora_qv) == 2 * bsf
    assert mlp_backward_working_bytes(GPT, lora_down) == bsf
    assert mlp_backward_working_bytes(replace(GPT, mlp="relu"), lora_qv) == 2 * bsf
    assert mlp_backward_working_bytes(GPT, _t(peft=PeftSpec(method="linear_probe"))) == 0


def test_no_backward_moment_where_gradients_persist() -> None:
    """With gradient accumulation the gradients exist all step (counted in the category), so
    there is no transient moment to add; with one micro-batch on one GPU there is."""
    accumulated = estimate_stage(LLAMA_TINY, _t(global_batch=4))
    single = estimate_stage(LLAMA_TINY, _t())
    assert accumulated.backward_moment_bytes == 0
    assert single.transient_gradient_bytes == 4 * single.trainable  # fp32 gradients
    assert single.backward_moment_bytes > 0


@settings(max_examples=40, deadline=None)
@given(
    layers=st.integers(1, 6),
    mlp=st.sampled_from(["gelu", "swiglu", "relu", "relu2"]),
    precision=st.sampled_from(["fp32", "amp_bf16", "bf16"]),
    recompute=st.sampled_from(["none", "full", "selective_op"]),
    tied=st.booleans(),
    mb=st.integers(1, 4),
)
def test_transient_peak_between_bounds(layers, mlp, precision, recompute, tied, mb) -> None:
    """With transient gradients the peak is at least rest + max(walk, gradients at the step),
    rest being what every moment holds (the old rule's moments are still candidates), and no
    category at the peak exceeds its own maximum."""
    m = replace(GPT, layers=layers, mlp=mlp, tied_embeddings=tied)
    if recompute == "selective_op" and mlp != "swiglu":
        m = replace(m, mlp="swiglu")
    t = _t(precision=precision, recompute=recompute, global_batch=mb, micro_batch=mb)
    s = estimate_stage(m, t)
    c = dict(s.memory_bytes)
    at = dict(s.peak_memory_bytes_by_category)
    assert sum(at.values()) == s.peak_memory_bytes
    assert all(v >= 0 for v in at.values())
    for k in c:
        assert at[k] <= c[k], k
    # (the per-category bound above is the upper one: the peak is at most every category's max)
    # what every moment holds: the static categories, less the loss's and the step's working
    # memory, the transient gradients and autocast's copies (gone by the step)
    rest = (sum(c.values()) - c["activations"] - s.optimizer_working_bytes
            - sum(b for _, b in s.loss_bytes) - s.transient_gradient_bytes
            - s.autocast_copy_bytes)  # fmt: skip
    assert s.peak_memory_bytes >= rest + max(c["activations"], s.transient_gradient_bytes)


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_pipedream_keeps_autocast_copies_through_its_steps(recompute: str) -> None:
    """PipeDream steps after every micro-batch while others hold their forwards' autocast
    copies: the copies stay in the step's buffers, and the trace's peak is the estimate's (a
    review of 2026-12-07 found them 42 MB apart on stage 0 while the step dropped them)."""
    from test_invariants import check_outputs

    from simtrain.spec.scenario import parse_scenario

    data = {"model": {"preset": "gpt2"}, "hardware": "a100_sxm4_80gb",
            "cluster": {"nodes": 1, "gpus_per_node": 4},
            "training": {"seq_len": 256, "global_batch": 8, "micro_batch": 1,
                         "precision": "amp_bf16", "optimizer": "adamw", "recompute": recompute},
            "parallelism": {"pp": 4, "schedule": "pipedream"}}  # fmt: skip
    sc = parse_scenario(data, "pipedream_amp.yaml")
    check_outputs(sc, rerun=False)
    from simtrain.costs.memory import estimate_memory

    assert all(s.autocast_copy_bytes == 0 for s in estimate_memory(sc).stages)


@pytest.mark.parametrize("first_dense", [0, 1, 3])
def test_transient_moment_counts_dense_and_moe_blocks_apart(first_dense: int) -> None:
    """An MoE model's first dense blocks have fewer parameters than its MoE blocks: at the last
    block's backward (all blocks' gradients still to come) the head's gradients are there
    whatever the mix, with the last block's experts' down projections (a review of 2026-12-07:
    0 of the head's 131 MB with 3 dense blocks of 4 while every block was counted as an MoE one;
    another: the experts' "expertN.down" tensors missed)."""
    from simtrain.costs import memory as M
    from simtrain.layout.step import resolve
    from simtrain.spec.scenario import parse_scenario

    data = {"model": {"layers": 4, "hidden": 1024, "heads": 8, "vocab": 32000, "mlp": "swiglu",
                      "norm": "rmsnorm", "positions": "rotary", "num_experts": 8,
                      "experts_per_token": 2, "moe_ffn_hidden": 1024, "ffn_hidden": 2048,
                      "first_dense_layers": first_dense, "flash_attention": True},
            "hardware": "a100_sxm4_80gb", "cluster": {"nodes": 1, "gpus_per_node": 1},
            "training": {"seq_len": 4096, "global_batch": 4, "micro_batch": 4,
                         "precision": "fp32", "optimizer": "sgd", "recompute": "none"},
            "parallelism": {}}  # fmt: skip
    sc = parse_scenario(data, "moe.yaml")
    step = resolve(sc)
    sm = M.stage_memory(sc, 0)
    ms = M._model_states(sc, step, 0)[0]
    act = M._stage_activations(sc, step, 0)
    acts, grads, _ = M.transient_backward_moment(sc, step, 0, act, sm.transient_gradient_bytes, ms)
    # the last block's backward (an MoE one), its down projections' gradients written: the
    # head's (lm_head and the final norm) and the 8 experts' down projections, fp32
    head = 4 * (1024 * 32000 + 1024)
    down = 4 * 8 * (1024 * 1024 + (1024 if sc.model.bias else 0))
    assert grads == head + down
    assert acts == act.chunk_bytes[0] + act.backward_delta[0]


def test_explain_names_the_temporaries_memory_chose() -> None:
    """``memory --explain`` names the backward temporaries that set the working set as memory
    chose them (costs.memory records it: StageBreakdown.backward_part), not by a rule of its
    own: a non-flash GPT block under full recompute, where the core's moment comes after the
    MLP half is freed, is set by the MLP's (a review of 2026-12-07 found explain naming the
    core)."""
    from simtrain.costs.memory import estimate_memory
    from simtrain.report.explain import explain_memory
    from simtrain.spec.hardware import load_hardware
    from simtrain.spec.scenario import ClusterSpec, ParallelSpec, Scenario

    m = replace(GPT, flash_attention=False)
    sc = Scenario("t", m, load_hardware("a100_sxm4_80gb"), ClusterSpec(1, 1), _t(),
                  ParallelSpec())  # fmt: skip
    rep = estimate_memory(sc)
    assert rep.stages[0].breakdown.backward_part == "mlp"
    text = "\n".join(explain_memory(sc, rep))
    assert "the MLP backward's gradients" in text
    assert "a non-flash attention core's backward" not in text


def test_a_tied_head_with_a_bias_still_runs_on_the_token_table() -> None:
    """A tied head's matmul runs on the token embedding's table even where the head has a bias
    of its own: under autocast its 16-bit copy, V·h·2 B, is counted (the review's case: a
    prefix test on 'lm_head' had taken the bias for a table of the head's own)."""
    from simtrain.costs.params import end_param_tensors, model_state_bytes

    t = _t(precision="amp_bf16")
    copies = {}
    for bias in (False, True):
        m = replace(GPT, tied_embeddings=True, head_bias=bias)
        ends = end_param_tensors(m, t, 1, 1, True, True)
        copies[bias] = model_state_bytes(ends, t).weight_copies
    assert copies[False] == copies[True] == 2 * GPT.vocab * GPT.hidden
