"""Megatron-Core's selective recompute by module (``training.recompute_modules``: core_attn,
moe_act, layernorm, mla_up_proj; megatron/core/transformer/transformer_config.py
recompute_modules at d98e8a64): what each drops from a block's saved tensors, by hand, what
its recompute costs, the checks and the Megatron importer."""

from __future__ import annotations

import pytest

from simtrain.apps.importers.megatron import import_megatron_flags
from simtrain.costs.activations import layer_activation_bytes, layer_saved_tensors
from simtrain.costs.compute import (
    chunk_block_flops,
    chunk_costs,
    flash_core,
    memory_bound_ns,
    selective_recompute,
)
from simtrain.errors import ConfigError
from simtrain.spec.model import PRESETS
from simtrain.spec.scenario import TrainingSpec, parse_scenario

DSV3 = PRESETS["deepseek-v3"]
S = 4096


def _t(mods: tuple[str, ...] = (), recompute: str = "selective") -> TrainingSpec:
    return TrainingSpec(seq_len=S, global_batch=1, micro_batch=1, precision="bf16",
                        recompute=recompute, recompute_modules=mods)  # fmt: skip


def _bytes(name: str, tp: int = 1, moe: bool | None = None) -> int:
    saved = layer_saved_tensors(DSV3, _t(recompute="none"), tp=tp, moe=moe)
    return sum(x.bytes for x in saved if x.name.startswith(name))


@pytest.mark.parametrize("tp", [1, 4])
def test_each_module_drops_its_tensors(tp: int) -> None:
    """moe_act: fc2's input, k·sb·f_e per MoE block (2 B each); mla_up_proj: the up-projected
    q, k, v; layernorm: MLA's normed input and an MoE block's normed MLP input (the dense
    block's pre-MLP norm is fused into fc1: nothing there); all four: their sum plus the core's."""
    base = layer_activation_bytes(DSV3, _t(recompute="none"), tp)
    sb = S
    expert_fc2 = 2 * DSV3.experts_per_token * sb * DSV3.expert_ffn // tp
    assert _bytes("expert fc2 input", tp) == expert_fc2
    for mods, dropped in (
        (("moe_act",), expert_fc2),
        (("mla_up_proj",), _bytes("q, k, v", tp)),
        (("layernorm",), 2 * 2 * sb * DSV3.hidden),
    ):
        assert base - layer_activation_bytes(DSV3, _t(mods), tp) == dropped, mods
    dense = layer_activation_bytes(DSV3, _t(recompute="none"), tp, moe=False)
    assert (
        dense - layer_activation_bytes(DSV3, _t(("layernorm",)), tp, moe=False)
        == 2 * sb * DSV3.hidden
    )
    assert dense == layer_activation_bytes(DSV3, _t(("moe_act",)), tp, moe=False)
    # the default is the attention core, as ["core_attn"]
    assert layer_activation_bytes(DSV3, _t(), tp) == layer_activation_bytes(
        DSV3, _t(("core_attn",)), tp)  # fmt: skip
    core = base - layer_activation_bytes(DSV3, _t(("core_attn",)), tp)
    every = _t(("core_attn", "moe_act", "mla_up_proj", "layernorm"))
    total = expert_fc2 + _bytes("q, k, v", tp) + 4 * sb * DSV3.hidden + core
    assert base - layer_activation_bytes(DSV3, every, tp) == total


def _scenario(
    mods: list[str] | None, recompute: str = "selective", model: str = "deepseek-v3", **extra
):
    training = {"seq_len": S, "global_batch": 16, "micro_batch": 1, "precision": "bf16",
                "recompute": recompute}  # fmt: skip
    if mods is not None:
        training["recompute_modules"] = mods
    return parse_scenario({
        "model": {"preset": model, "layers": 4, "flash_attention": True, **extra},
        "training": training,
        "parallelism": {"tp": 1, "pp": 1, "dp": 8, "ep": 8 if model == "deepseek-v3" else 1,
                        "zero_stage": 1},
        "hardware": "h100_sxm5_80gb", "cluster": {"nodes": 1, "gpus_per_node": 8},
        "runtime": "megatron_core",
    }, "recompute.yaml")  # fmt: skip


def test_recompute_costs_by_module() -> None:
    """The recompute's time: moe_act reads fc1's 2·f_e and writes f_e a pair (the MoE block of
    DeepSeek-V3's first four: three dense), layernorm reads and writes h a token for MLA's
    input norm of every block and the MoE block's pre-MLP norm, both memory-bound;
    mla_up_proj the up-projections' 2·T·(q_lora·q_b + kv_lora·kv_b) FLOPs; core_attn none of
    these, and the modules add up."""
    parts = {}
    for mods in (["moe_act"], ["layernorm"], ["mla_up_proj"], ["core_attn"],
                 ["core_attn", "moe_act", "layernorm", "mla_up_proj"]):  # fmt: skip
        sc = _scenario(mods)
        t = sc.training
        bf = chunk_block_flops(sc, 4, 0)
        fa = flash_core(sc, t, bf, "bf16", True)
        parts[tuple(mods)] = selective_recompute(sc, t, bf, 4, 0, "bf16", fa)
    hw = _scenario(["moe_act"]).hardware
    pairs = S * DSV3.experts_per_token
    assert parts[("moe_act",)] == (0.0, memory_bound_ns(pairs * 3 * 2 * DSV3.expert_ffn, hw))
    assert parts[("layernorm",)] == (0.0, memory_bound_ns((4 + 1) * S * DSV3.hidden * 4, hw))
    shapes = DSV3.attention_shapes()
    up = shapes["q_b"][0] * shapes["q_b"][1] + shapes["kv_b"][0] * shapes["kv_b"][1]
    assert parts[("mla_up_proj",)][0] == 4 * 2.0 * S * up
    both = parts[("core_attn", "moe_act", "layernorm", "mla_up_proj")]
    one = [parts[(x,)] for x in ("core_attn", "moe_act", "layernorm", "mla_up_proj")]
    assert both[0] == pytest.approx(sum(f for f, _ in one))
    assert both[1] == pytest.approx(sum(n for _, n in one))
    # in the chunk's costs: the recompute and its FLOPs
    c = chunk_costs(_scenario(["mla_up_proj"]), 4, True, True, 0)
    assert c.recompute_flops == parts[("mla_up_proj",)][0] and c.recompute_ns > 0


@pytest.mark.parametrize(
    ("mods", "recompute", "model", "words"),
    [
        (["moe_act"], "full", "deepseek-v3", "needs training.recompute: selective"),
        (["moe_act"], "selective", "llama3-8b", "moe_act needs a model with experts"),
        (["mla_up_proj"], "selective", "llama3-8b", "needs a model with multi-latent"),
        (["mlp"], "selective", "deepseek-v3", "recompute_modules"),
    ],
)
def test_bad_module_lists_are_one_line_errors(mods, recompute, model, words) -> None:
    with pytest.raises(ConfigError, match=words) as ei:
        _scenario(mods, recompute, model)
    assert ei.value.key == "training.recompute_modules"


ARGS = ("--num-layers 4 --hidden-size 1024 --num-attention-heads 16 --seq-length 2048 "
        "--max-position-embeddings 2048 --micro-batch-size 1 --global-batch-size 8 --swiglu "
        "--bf16 --vocab-size 32000 --num-experts 8 --moe-router-topk 2 "
        "--moe-ffn-hidden-size 512 --moe-grouped-gemm --expert-model-parallel-size 8 "
        "--recompute-granularity selective").split()  # fmt: skip


@pytest.mark.parametrize(
    ("mods", "recompute", "modules", "unsupported"),
    [
        (["moe_act", "layernorm"], "selective", ["moe_act", "layernorm"], False),
        (["core_attn"], "selective", None, False),
        (["moe_act", "mlp"], "selective", ["moe_act"], True),
        (["shared_experts"], "none", None, True),
        ([], "none", None, False),
    ],
)
def test_megatron_importer_reads_recompute_modules(mods, recompute, modules, unsupported) -> None:
    """--recompute-modules: the simulated ones kept, the others listed as not simulated; none
    simulated (or an empty list): selective recompute of nothing, run as no recompute."""
    imp = import_megatron_flags([*ARGS, "--recompute-modules", *mods], gpus=8)
    tr = imp.data["training"]
    assert tr["recompute"] == recompute
    assert tr.get("recompute_modules") == modules
    assert any("--recompute-modules" in u for u in imp.unsupported) == unsupported
