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
    # the up-projected, rotated q and k (qk_nope + qk_rope wide each) and v, per head, in bf16
    qk = DSV3.qk_nope_head_dim + DSV3.qk_rope_head_dim
    qkv = 2 * sb * DSV3.heads * (2 * qk + DSV3.v_head_dim) // tp
    assert _bytes("q, k, v", tp) == qkv
    for mods, dropped in (
        (("moe_act",), expert_fc2),
        (("mla_up_proj",), qkv),
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
    total = expert_fc2 + qkv + 4 * sb * DSV3.hidden + core
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


def test_moe_act_recompute_with_whole_experts_over_tp() -> None:
    """With whole experts over TP (expert_tp 1 < tp 2) a rank holds k·T/t·load pairs of f_e
    columns: the activation's recompute reads and writes 1.5x the fc1 output the rank saves
    (costs.moe.moe_saved_tensors), not tp/etp times that."""
    sc = parse_scenario({
        "model": {"preset": "deepseek-v3", "layers": 4, "flash_attention": True},
        "training": {"seq_len": S, "global_batch": 16, "micro_batch": 1, "precision": "bf16",
                     "recompute": "selective", "recompute_modules": ["moe_act"]},
        "parallelism": {"tp": 2, "pp": 1, "dp": 8, "ep": 8, "expert_tp": 1, "zero_stage": 1,
                        "sequence_parallel": True},
        "hardware": "h100_sxm5_80gb", "cluster": {"nodes": 2, "gpus_per_node": 8},
        "runtime": "megatron_core",
    }, "etp.yaml")  # fmt: skip
    t = sc.training
    bf = chunk_block_flops(sc, 4, 0)
    _, ns = selective_recompute(sc, t, bf, 4, 0, "bf16", flash_core(sc, t, bf, "bf16", True))
    saved = layer_saved_tensors(DSV3, t, tp=2, sequence_parallel=True, etp=1)
    fc1 = sum(x.bytes for x in saved if x.name.startswith("expert fc1 output"))
    assert ns == pytest.approx(memory_bound_ns(1.5 * fc1, sc.hardware))


def test_context_parallel_ring_replays_only_with_the_core() -> None:
    """The context-parallel ring runs again in the backward only when the recompute runs the
    attention core: with mla_up_proj (FLOPs, no core) or moe_act, no replay."""
    from simtrain.costs.memory import estimate_memory
    from simtrain.costs.workload import lowering_input
    from simtrain.layout.step import resolve

    got = {}
    for mods in (["mla_up_proj"], ["moe_act"], ["core_attn"]):
        sc = parse_scenario({
            "model": {"preset": "deepseek-v3", "layers": 4, "flash_attention": True},
            "training": {"seq_len": S, "global_batch": 16, "micro_batch": 1,
                         "precision": "bf16", "recompute": "selective",
                         "recompute_modules": mods},
            "parallelism": {"tp": 1, "pp": 1, "dp": 4, "cp": 2, "ep": 8, "zero_stage": 1},
            "hardware": "h100_sxm5_80gb", "cluster": {"nodes": 1, "gpus_per_node": 8},
            "runtime": "megatron_core",
        }, "cp.yaml")  # fmt: skip
        c = lowering_input(sc, resolve(sc), estimate_memory(sc)).chunks[0]
        got[mods[0]] = (c.cp_recompute_ns, c.cp_forward_ns)
    assert got["mla_up_proj"][0] == got["moe_act"][0] == 0
    assert got["core_attn"][0] == got["core_attn"][1] > 0


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"training.precision": "fp8_delayed"}, "delayed-scaling FP8"),
        ({"runtime": "megatron_lm_2022"}, "needs runtime megatron_core"),
    ],
)
def test_megatron_refusals(changes, words) -> None:
    """Megatron refuses moe_act and layernorm under delayed-scaling FP8
    (transformer_config.py l.2000-2011); the modules are Megatron-Core's (TE layer spec)."""
    from simtrain.spec.scenario import apply_override

    data = {
        "model": {"preset": "deepseek-v3", "layers": 4, "flash_attention": True},
        "training": {"seq_len": S, "global_batch": 16, "micro_batch": 1, "precision": "bf16",
                     "recompute": "selective", "recompute_modules": ["moe_act"]},
        "parallelism": {"tp": 1, "pp": 1, "dp": 8, "ep": 8, "zero_stage": 1},
        "hardware": "h100_sxm5_80gb", "cluster": {"nodes": 1, "gpus_per_node": 8},
        "runtime": "megatron_core",
    }  # fmt: skip
    for k, v in changes.items():
        apply_override(data, f"{k}={v}")
    with pytest.raises(ConfigError, match=words) as ei:
        parse_scenario(data, "r.yaml")
    assert ei.value.key == "training.recompute_modules"


def test_an_empty_list_is_refused_and_null_is_the_default() -> None:
    """Megatron's [] recomputes nothing, simtrain's absent key the attention core: an explicit
    empty list is an error that says so; null is the default."""
    with pytest.raises(ConfigError, match="no recompute") as ei:
        _scenario([])
    assert ei.value.key == "training.recompute_modules"
    data = _scenario(None).training
    assert data.selective_modules == ("core_attn",)


def test_importer_ignores_the_modules_outside_selective() -> None:
    """Megatron reads --recompute-modules with the selective granularity only: under full it is
    an assumption (ignored), not an unknown flag; a module named twice counts once."""
    args = [a for a in ARGS if a != "selective"]
    args[args.index("--recompute-granularity") + 1:1 + args.index("--recompute-granularity")] = [
        "full"]  # fmt: skip
    imp = import_megatron_flags([*args, "--recompute-method", "uniform",
                                 "--recompute-modules", "moe_act"], gpus=8)  # fmt: skip
    assert imp.data["training"]["recompute"] == "full"
    assert not any("--recompute-modules" in u for u in imp.unsupported)
    assert any("--recompute-modules: ignored" in a for a in imp.assumptions)
    twice = import_megatron_flags([*ARGS, "--recompute-modules", "moe_act", "moe_act"], gpus=8)
    assert twice.data["training"]["recompute_modules"] == ["moe_act"]


def test_planner_and_fit_keep_the_modules_to_selective(tmp_path) -> None:
    """A plan's recompute_modules are its selective layouts' (the others drop them), and the
    memory advice's "recompute full" clears them."""
    from pathlib import Path

    from simtrain.apps.fit import _recompute
    from simtrain.apps.plan import build_context, enumerate_layouts, parse_plan, screen_layout
    from simtrain.apps.plan.screen import layout_scenario
    from simtrain.spec.scenario import load_scenario

    plan = parse_plan({
        "name": "moe", "model": {"preset": "mixtral-8x7b", "layers": 4, "flash_attention": True},
        "tokens": 1e9, "gpus": 8,
        "training": {"seq_len": 2048, "global_batch": 16, "precision": "bf16",
                     "recompute_modules": ["moe_act"]},
        "hardware": [{"name": "h100_sxm5_80gb", "price_per_gpu_hour": 2.0}],
        "runtime": "megatron_core",
        "fixed": {"tp": [1], "pp": [1], "ep": [8], "zero_stage": [1],
                  "recompute": ["none", "selective"]},
    }, "plan.yaml", Path("."))  # fmt: skip
    ctx = build_context(plan)
    assert ctx.recompute_modules == ("moe_act",)
    rows = [screen_layout(ctx, lay) for lay in enumerate_layouts(plan, 4, 32, 8)]
    assert {r.layout.recompute for r in rows if r.status != "rejected"} == {"none", "selective"}
    for lay in {r.layout for r in rows if r.status != "rejected"}:
        sc = layout_scenario(ctx.bases[(lay.hardware, lay.global_batch)], lay, ctx.file,
                             ctx.recompute_modules)  # fmt: skip
        want = ("moe_act",) if lay.recompute == "selective" else ()
        assert sc.training.recompute_modules == want
    path = tmp_path / "moe.yaml"
    path.write_text(
        "model: {preset: mixtral-8x7b, layers: 4, flash_attention: true}\n"
        "training: {seq_len: 2048, global_batch: 8, micro_batch: 1, precision: bf16,\n"
        "           recompute: selective, recompute_modules: [moe_act]}\n"
        "parallelism: {dp: 8, ep: 8, zero_stage: 1}\nhardware: h100_sxm5_80gb\n"
        "cluster: {nodes: 1, gpus_per_node: 8}\nruntime: megatron_core\n"
    )
    sc = load_scenario(path)
    (full,) = _recompute(sc)
    assert load_scenario(path, full.overrides).training.recompute == "full"


def test_validate_reads_deepseek_v3_modules_by_era() -> None:
    """25.11: 00b7660b's configs (GB300 moe_act); 26.02-26.04.01: Bridge 0.3's configs (GB300
    MXFP8 mla_up_proj, the pp 2 vp 8 layout those rows ran; B300 mla_up_proj); 26.06 on: the
    recipes (GB300 MXFP8 nothing, GB200 mla_up_proj)."""
    from simtrain.apps.validate.records import load_records
    from simtrain.apps.validate.translate import translate

    rows = {r.id: r for f in ("measured/mbridge_2511.yaml", "measured/mbridge_26x.yaml")
            for r in load_records(f)}  # fmt: skip

    def mods(rid: str) -> tuple[str, tuple[str, ...]]:
        t = translate(rows[rid]).scenario.training
        return t.recompute, t.selective_modules

    assert mods("mbridge2604_GB300_DeepSeekV3_FP8MX_256gpu") == ("selective", ("mla_up_proj",))
    assert mods("mbridge2604_B300_DeepSeekV3_FP8MX_256gpu") == ("selective", ("mla_up_proj",))
    assert mods("mbridge2608_GB300_DeepSeekV3_FP8MX_256gpu") == ("none", ())
    assert mods("mbridge2608_GB200_DeepSeekV3_FP8MX_256gpu") == ("selective", ("mla_up_proj",))
    assert mods("mbridge2511_GB200_DeepSeekV3_BF16_256gpu") == ("selective", ("mla_up_proj",))
    # GPT-OSS: 00b7660b names modules without the granularity (nothing recomputed); Bridge
    # 0.3.0's overrides.py l.143 sets it with them (GB200, B200, H100 BF16; GB300 none)
    assert mods("mbridge2511_GB200_GPT_OSS_120B_BF16_64gpu") == ("none", ())
    assert mods("mbridge2602_GB200_GPT_OSS_120B_BF16_64gpu") == ("selective",
                                                               ("layernorm", "moe_act"))  # fmt: skip
    assert mods("mbridge2602_GB300_GPT_OSS_120B_BF16_64gpu") == ("none", ())


def test_moe_act_of_ungated_experts_reads_and_writes_f_e() -> None:
    """An ungated (GeLU) expert's activation reads and writes f_e values a pair, SwiGLU's reads
    2·f_e and writes f_e (costs.compute.FUSED_OP_ACCESSES, as the forward's element-wise
    traffic counts them): 2/3 of the gated recompute's time."""
    got = {}
    for mlp in ("swiglu", "gelu"):
        sc = _scenario(["moe_act"], mlp=mlp)
        t = sc.training
        bf = chunk_block_flops(sc, 4, 0)
        got[mlp] = selective_recompute(sc, t, bf, 4, 0, "bf16", None)[1]
    pairs = S * DSV3.experts_per_token
    hw = _scenario(["moe_act"]).hardware
    assert got["gelu"] == memory_bound_ns(pairs * 2 * 2 * DSV3.expert_ffn, hw)
    assert got["swiglu"] == memory_bound_ns(pairs * 3 * 2 * DSV3.expert_ffn, hw)
