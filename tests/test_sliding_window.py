"""Sliding-window attention (``model.sliding_window``, ``model.full_attention_every``): a query
of a sliding layer sees at most w keys, and FlashAttention kernels skip the blocks outside the
window (flash-attn's window_size, Transformer Engine's, flex attention's block mask). Closed
forms written here: the keys a query sees, the layers that slide, the kernel FLOPs' ratio."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from hf_configs import DATA, DROP, write_config

from simtrain.costs.compute import (
    block_flops,
    flash_core,
    flash_kernel_flops,
    sliding_share,
    window_keys,
)
from simtrain.errors import ConfigError
from simtrain.spec.model import PRESETS, from_hf_config, validate_model
from simtrain.spec.scenario import parse_scenario


def test_window_keys() -> None:
    """Each of s queries sees min(i + 1, w) keys: w·s - w²/2 pairs (continuous), s/2 a query
    without a window or from w >= s on."""
    assert window_keys(8192, 0) == 4096
    assert window_keys(8192, 128) == 128 - 128 * 128 / (2 * 8192)
    assert window_keys(4096, 4096) == window_keys(4096, 8192) == 2048
    pairs = sum(min(i + 1, 1024) for i in range(8192))  # the discrete count
    assert window_keys(8192, 1024) * 8192 == pytest.approx(pairs, rel=1e-3)


@pytest.mark.parametrize(("every", "lo", "hi", "want"), [
    (0, 0, 32, 32), (2, 0, 24, 12), (2, 0, 1, 1), (2, 1, 2, 0), (2, 3, 9, 3),
    (6, 0, 12, 10), (6, 5, 11, 5), (6, 0, 5, 5),
])  # fmt: skip
def test_sliding_layers(every: int, lo: int, hi: int, want: int) -> None:
    """Every n-th layer full (the (n-1)-th, (2n-1)-th, ... from 0): Gemma-2 / GPT-OSS n = 2
    (layers 1, 3, 5 full), Gemma-3 n = 6; n = 0 all slide."""
    m = replace(PRESETS["llama3-8b"], sliding_window=128, full_attention_every=every)
    assert m.sliding_layers_in(lo, hi) == want
    assert want == sum(1 for i in range(lo, hi) if not every or (i + 1) % every)


def _sc(model: dict, seq: int = 8192, **training):
    return parse_scenario({"name": "w", "model": model, "hardware": "h100_sxm5_80gb",
                           "training": {"seq_len": seq, "global_batch": 1, "micro_batch": 1,
                                        "precision": "bf16", **training},
                           "parallelism": {}}, "w.yaml")  # fmt: skip


def test_kernel_flops_and_time_shrink_with_the_window() -> None:
    """Every layer sliding with w = 1024 at s = 8192: the forward kernel's FLOPs are
    window_keys / (s/2) of the causal ones (0.234); the kernel time falls with them (the
    short-sequence edge then applies to 2·window_keys). The FLOPs taken out of the GEMM class
    (the counted core) do not change."""
    base = {"preset": "llama3-8b", "flash_attention": True, "layers": 2}
    full, slide = _sc(base), _sc({**base, "sliding_window": 1024})
    t = full.training
    bf = block_flops(full.model, t)
    f_full, _ = flash_kernel_flops(bf.attention_core, t)
    f_win, b_win = flash_kernel_flops(bf.attention_core, t, 1024)
    # (1,024 - 1,024²/16,384) / 4,096 = 960 / 4,096
    assert f_win / f_full == pytest.approx(0.234375) == window_keys(8192, 1024) / 4096
    assert b_win == pytest.approx(2.5 * f_win)
    a = flash_core(full, t, bf, "bf16", True)
    b = flash_core(slide, t, bf, "bf16", True, sliding_share(slide.model, 1, 0))
    assert a and b and b.forward_flops == a.forward_flops
    assert 0.2 < b.forward_ns / a.forward_ns < 0.3 and b.backward_ns < a.backward_ns
    # half the layers sliding: the time halfway between
    h = flash_core(slide, t, bf, "bf16", True, 0.5)
    assert h and h.forward_ns == pytest.approx((a.forward_ns + b.forward_ns) / 2)


def test_without_flash_nothing_changes() -> None:
    """Math attention computes and masks the whole s x s scores: a window changes no cost."""
    from simtrain.apps.simulate import simulate_scenario

    base = {"preset": "llama3-8b", "layers": 2}
    a = simulate_scenario(_sc(base, seq=2048)).metrics.step_time_s
    b = simulate_scenario(_sc({**base, "sliding_window": 256}, seq=2048)).metrics.step_time_s
    assert a == b


def test_a_step_with_windows_is_shorter() -> None:
    """GPT-OSS-20B at s 8192 on one GPU (two blocks): the 128-key window on every other layer
    shortens the step; without flash attention it would not."""
    from simtrain.apps.simulate import simulate_scenario

    m = {"preset": "gpt-oss-20b", "layers": 2, "flash_attention": True}
    with_w = simulate_scenario(_sc(m)).metrics.step_time_s
    without = simulate_scenario(_sc({**m, "sliding_window": 0, "full_attention_every": 0}))
    assert with_w < without.metrics.step_time_s


def test_share_of_a_chunk() -> None:
    m = replace(PRESETS["llama3-8b"], sliding_window=128, full_attention_every=2)
    assert sliding_share(m, 4, 0) == 0.5 and sliding_share(m, 1, 1) == 0.0
    assert sliding_share(m, 3, 0) == 2 / 3 and sliding_share(m, 32, None) == 0.5
    assert sliding_share(PRESETS["llama3-8b"], 4, 0) == 0.0


def test_checks_name_their_keys() -> None:
    m = PRESETS["llama3-8b"]
    with pytest.raises(ConfigError) as ei:
        validate_model(replace(m, full_attention_every=2), "s.yaml")
    assert ei.value.key == "model.full_attention_every"
    with pytest.raises(ConfigError) as ei:
        validate_model(replace(m, sliding_window=-1), "s.yaml")
    assert ei.value.key == "model.sliding_window"
    base = {"preset": "llama3-8b", "flash_attention": True, "sliding_window": 128}
    with pytest.raises(ConfigError) as ei:
        parse_scenario({"name": "w", "model": base, "hardware": "h100_sxm5_80gb",
                        "cluster": {"nodes": 1, "gpus_per_node": 2},
                        "training": {"seq_len": 8192, "global_batch": 1, "micro_batch": 1},
                        "parallelism": {"cp": 2}}, "w.yaml")  # fmt: skip
    assert ei.value.key == "parallelism.cp"
    with pytest.raises(ConfigError) as ei:
        _sc(base, peft={"method": "prefix", "prefix_length": 16})
    assert ei.value.key == "training.peft.method"


@pytest.mark.parametrize(("file", "want"), [
    ("moe/gpt_oss_20b_config.json", (128, 2)),  # GptOssConfig's layer_types default
    ("mistral_config.json", (4096, 0)),
    ("hf/phi-3-mini-4k.json", (2047, 0)),
    ("hf/starcoder2-3b.json", (4096, 0)),
    ("qwen2_config.json", (0, 0)),  # sliding_window given, use_sliding_window false
    ("moe/mixtral_8x7b_config.json", (0, 0)),  # null
])  # fmt: skip
def test_configs(file: str, want: tuple) -> None:
    m = from_hf_config(DATA / file)
    assert (m.sliding_window, m.full_attention_every) == want


@pytest.mark.parametrize(("file", "change", "key"), [
    ("qwen2_config.json", {"use_sliding_window": True}, "use_sliding_window"),
    ("moe/gpt_oss_20b_config.json", {"layer_types": ["full_attention"] * 24}, None),
    ("moe/gpt_oss_20b_config.json",
     {"layer_types": ["full_attention"] * 2 + ["sliding_attention"] * 22}, "layer_types"),
    ("mistral_config.json", {"sliding_window": 0}, "sliding_window"),
    # a list of another length than num_hidden_layers, refused before one that long is built
    # (a fuzz campaign: 10^12 layers held the CLI for minutes)
    ("moe/gpt_oss_20b_config.json", {"layer_types": ["full_attention"] * 23}, "layer_types"),
    ("moe/gpt_oss_20b_config.json", {"num_hidden_layers": 10**12}, "num_hidden_layers"),
    ("moe/gpt_oss_20b_config.json",
     {"num_hidden_layers": 10**12, "layer_types": ["sliding_attention", "full_attention"] * 2},
     "layer_types"),
])  # fmt: skip
def test_config_windows(tmp_path: Path, file: str, change: dict, key) -> None:
    """layer_types every n-th full is read (all full: no window on any layer: n = 1); another
    pattern, a Qwen use_sliding_window and a window of 0 are errors naming the field."""
    p = write_config(tmp_path, DATA / file, change)
    if key is None:
        m = from_hf_config(p)
        assert m.full_attention_every == 1 and m.sliding_layers_in(0, m.layers) == 0
        return
    with pytest.raises(ConfigError) as ei:
        from_hf_config(p)
    assert ei.value.key == key


def _pp_scenario(runtime: str = "megatron_core"):
    return parse_scenario({"name": "p", "model": {"preset": "llama3-8b", "flash_attention": True,
                                                  "sliding_window": 512,
                                                  "full_attention_every": 3, "vocab": 32000},
                           "hardware": "h100_sxm5_80gb", "cluster": {"nodes": 1, "gpus_per_node": 8},
                           "training": {"seq_len": 32768, "global_batch": 16, "micro_batch": 1,
                                        "precision": "bf16", "recompute": "full"},
                           "parallelism": {"pp": 8, "schedule": "1f1b"}, "runtime": runtime},
                          "p.yaml")  # fmt: skip


def test_planner_prices_each_stage_s_windows() -> None:
    """Stages of 4 blocks hold 3 or 2 sliding layers (every third full): the planner's closed
    form prices each with its own (a review found one stage's cost reused for the others,
    6.6 % optimistic) and agrees with the simulation within 2 %."""
    from simtrain.apps.plan.estimate import _rank_costs, closed_form_step_s
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.costs.memory import estimate_memory
    from simtrain.layout.step import resolve

    sc = _pp_scenario()
    assert [sc.model.sliding_layers_in(4 * k, 4 * k + 4) for k in (1, 2)] == [3, 2]
    ranks, _ = _rank_costs(sc, resolve(sc))
    assert ranks[1] != ranks[2]  # two middle stages: 3 and 2 windowed layers
    assert ranks[1][0] < ranks[2][0]  # the one with more windows is faster
    plan = closed_form_step_s(sc, estimate_memory(sc).stages)
    sim = simulate_scenario(sc).metrics.step_time_s
    assert plan == pytest.approx(sim, rel=0.02)


def test_mfu_and_hardware_flops_follow_the_window() -> None:
    """At s 131,072 with a 128-key window on every layer, MFU and the hardware FLOP rate stay
    below the peak (a review found 134.5 % MFU, 1,769 TFLOP/s on a 989 TFLOP/s GPU: FLOPs
    counted as if every block were computed); a masked kernel (pytorch_eager) computes every
    block, so its hardware FLOPs are the causal ones and its step is not shortened."""
    from simtrain.apps.simulate import simulate_scenario

    base = {"name": "l", "model": {"preset": "llama3-8b", "flash_attention": True,
                                   "sliding_window": 128, "layers": 4},
            "hardware": "h100_sxm5_80gb", "cluster": {"nodes": 1, "gpus_per_node": 8},
            "training": {"seq_len": 131072, "global_batch": 1, "micro_batch": 1,
                         "precision": "bf16", "recompute": "full"},
            "parallelism": {"tp": 8, "sequence_parallel": True}, "runtime": "megatron_core"}  # fmt: skip
    m = simulate_scenario(parse_scenario(base, "l.yaml")).metrics
    peak = 989.4e12
    assert 0 < m.mfu < 1 and m.tflops_per_gpu * 1e12 < peak
    masked = parse_scenario(
        {**base, "runtime": {"name": "megatron_core", "sliding_window_kernel": False}}, "l.yaml"
    )
    full = parse_scenario({**base, "model": {**base["model"], "sliding_window": 0}}, "l.yaml")
    mm, mf = simulate_scenario(masked).metrics, simulate_scenario(full).metrics
    assert mm.step_time_s == mf.step_time_s and mm.tflops_per_gpu == mf.tflops_per_gpu
    # The same time, so MFU moves by the model FLOPs alone: the causal count less, in each of
    # 4 layers, the core's 4·s²·h (forward once, input gradient twice) times the share of its
    # causal half a 128-key window leaves out, 1 - (w - w²/2s)/(s/2).
    from simtrain.costs.compute import model_flops_per_step

    s, w = 131072, 128
    saving = 1 - (w - w * w / (2 * s)) / (s / 2)
    window_off = 4 * 3 * (4 * s * s * 4096) * saving
    ratio = 1 - window_off / model_flops_per_step(full)
    assert 0.2 < ratio < 0.3  # (the window removes three quarters of these layers' work)
    assert mm.mfu / mf.mfu == pytest.approx(ratio, rel=1e-9)


def test_pytorch_eager_masks_the_window() -> None:
    from simtrain.spec.runtime import load_runtime

    assert load_runtime("pytorch_eager").sliding_window_kernel is False
    assert load_runtime("megatron_core").sliding_window_kernel is True


def test_measure_refuses_a_windowed_flash_kernel() -> None:
    pytest.importorskip("torch")
    from reference_pairs import LLAMA_TINY

    from simtrain.spec.scenario import TrainingSpec
    from simtrain.torchref.measure import measure_step

    m = replace(LLAMA_TINY, flash_attention=True, sliding_window=16)
    t = TrainingSpec(seq_len=128, global_batch=2, micro_batch=2, precision="fp32")
    with pytest.raises(ConfigError) as ei:
        measure_step(m, t, steps=1)
    assert ei.value.key == "model.sliding_window"


def test_config_defaults_where_absent(tmp_path: Path) -> None:
    """MistralConfig's sliding_window default (4,096) where the field is absent; null: none."""
    p = write_config(tmp_path, DATA / "mistral_config.json", {"sliding_window": DROP})
    cfg = json.loads(p.read_text())
    assert from_hf_config(p).sliding_window == 4096
    p.write_text(json.dumps({**cfg, "sliding_window": None}))
    assert from_hf_config(p).sliding_window == 0
