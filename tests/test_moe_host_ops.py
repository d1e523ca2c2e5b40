"""The host ops of Megatron-Core's MoE layer and of per-layer CUDA graphs
(``costs.host.block_ops``; ``runtime.moe_implementation``, ``runtime.cuda_graph_scope``): the
composition rules in closed form, the reference MLP's count recounted with torch, the runtime's
and the Megatron importer's checks, and the scopes validate reads from Megatron-Bridge's
performance configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from megatron_snippets import megatron_apply_bias, megatron_glu_clamp

from simtrain.apps.importers.megatron import import_megatron_flags
from simtrain.costs import host
from simtrain.costs.host import (
    GRAPH_REPLAY_OPS,
    MEGATRON_MOE_DISPATCH_OPS,
    MEGATRON_MOE_PREPROCESS_OPS,
    MEGATRON_MOE_ROUTER_OPS,
    MLP_OPS,
    NORM_OPS,
    RESIDUAL_ADD_OPS,
    LayerOps,
    action_host_ns,
    block_ops,
    layer_ops,
)
from simtrain.errors import ConfigError
from simtrain.spec.scenario import load_scenario

MIXTRAL = Path(__file__).resolve().parents[1] / "scenarios" / "mixtral_8x7b_ep8.yaml"


def _sc(*sets: str):
    return load_scenario(MIXTRAL, ["runtime.name=megatron_core", *sets])


def test_megatron_moe_block_adds_router_preprocess_and_dispatch() -> None:
    """Under Megatron-Core an MoE block (EP 8) dispatches the dense block's ops plus 33 + 25 + 36
    forward and 26 + 0 + 33 backward (counted on megatron-core 0.16.1); the reference MoE
    layer none; a dense block never."""
    sc = _sc()
    dense = layer_ops(sc.model)
    assert block_ops(sc) == dense
    assert block_ops(sc, moe=True) == dense + LayerOps(33 + 25 + 36, 26 + 0 + 33, 33 + 25 + 36)
    ref = _sc("runtime.moe_implementation=reference")
    assert block_ops(ref, moe=True) == dense
    # without expert parallelism or expert TP: the smaller preprocess and dispatch
    one = _sc("parallelism.ep=1")
    assert block_ops(one, moe=True) == dense + MEGATRON_MOE_ROUTER_OPS + LayerOps(
        14 + 20, 0 + 18, 14 + 20
    )


def test_graph_scopes_leave_what_megatron_runs_eagerly() -> None:
    """attn + moe_router + moe_preprocess (Megatron-Bridge's GB200 Qwen3 configs): an MoE block
    keeps eager only its experts, their residual add and the token dispatch, plus one graph
    launch; a dense block only its MLP sublayer (norm, MLP, add) and the launch. mlp alone: a
    dense block keeps its attention part; moe alone: an MoE block keeps its attention part."""
    scopes = "runtime.cuda_graph_scope=[attn, moe_router, moe_preprocess]"
    sc = _sc(scopes)
    m = sc.model
    mlp_sublayer = NORM_OPS[m.norm] + MLP_OPS[m.mlp] + RESIDUAL_ADD_OPS
    assert block_ops(sc, moe=True) == (
        MLP_OPS[m.mlp] + RESIDUAL_ADD_OPS + MEGATRON_MOE_DISPATCH_OPS[True] + GRAPH_REPLAY_OPS
    )
    assert block_ops(sc) == mlp_sublayer + GRAPH_REPLAY_OPS
    attention_part = layer_ops(m) - mlp_sublayer
    # a dense model (Llama 3 8B, the same block kinds): mlp captures its MLP sublayer
    dense = ("model.preset=llama3-8b", "parallelism.ep=1")
    dense_graphed = _sc("runtime.cuda_graph_scope=[mlp]", *dense)
    assert block_ops(dense_graphed) == layer_ops(dense_graphed.model) - (
        NORM_OPS[m.norm] + MLP_OPS[m.mlp] + RESIDUAL_ADD_OPS) + GRAPH_REPLAY_OPS  # fmt: skip
    moe_graphed = _sc("runtime.cuda_graph_scope=[moe]")
    assert block_ops(moe_graphed, moe=True) == attention_part + GRAPH_REPLAY_OPS
    # the router alone: its norm and the router leave, the preprocess and (on a biased model)
    # the MLP linears' bias gradients stay
    for bias in ("false", "true"):
        router = _sc("runtime.cuda_graph_scope=[moe_router]", f"model.bias={bias}")
        eager = _sc(f"model.bias={bias}")
        assert block_ops(router, moe=True) == (
            block_ops(eager, moe=True) - NORM_OPS[m.norm] - MEGATRON_MOE_ROUTER_OPS
            + GRAPH_REPLAY_OPS
        ), bias  # fmt: skip
    # a biased dense block's mlp graph takes its three MLP bias gradients with it
    biased = ("model.preset=llama3-8b", "parallelism.ep=1", "model.bias=true")
    assert block_ops(_sc(*biased)) - block_ops(_sc("runtime.cuda_graph_scope=[mlp]", *biased)) == (
        NORM_OPS[m.norm] + MLP_OPS[m.mlp] + RESIDUAL_ADD_OPS + host.BIAS_OPS * 3
        - GRAPH_REPLAY_OPS
    )  # fmt: skip


def test_host_time_of_an_moe_action_by_hand() -> None:
    """An action's host time is 26 us a dispatched op (megatron_core's host_us_per_op): two
    MoE blocks forward, eager, = 2 x (dense block + 94) ops x 26 us (no TP: no collective's
    issue cost)."""
    sc = _sc()
    fwd, bwd = action_host_ns(sc, 2, moe_layers=2)
    ops = layer_ops(sc.model) + LayerOps(94, 59, 94)
    assert fwd == round(2 * ops.forward * 26e3)
    assert bwd == round(2 * ops.backward * 26e3)


@pytest.mark.parametrize(("scopes", "words"), [
    ("[moe_preprocess]", "add moe_router"),
    ("[moe, moe_router, moe_preprocess]", "give one"),
    ("[attn, router]", "attn | mlp | moe | moe_router | moe_preprocess"),
])  # fmt: skip
def test_bad_graph_scopes_are_one_line_errors(scopes: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        _sc(f"runtime.cuda_graph_scope={scopes}")
    assert "runtime.cuda_graph_scope" in str(e.value) and words in str(e.value)


_FLAGS = ("--num-layers 4 --hidden-size 1024 --num-attention-heads 16 --seq-length 2048 "
          "--micro-batch-size 1 --global-batch-size 8 --bf16 --vocab-size 32000").split()  # fmt: skip


@pytest.mark.parametrize(("extra", "key", "value"), [
    (("--cuda-graph-impl", "transformer_engine", "--cuda-graph-scope", "attn", "moe_router",
      "moe_preprocess"), "cuda_graph_scope", ["attn", "moe_router", "moe_preprocess"]),
    (("--cuda-graph-impl", "transformer_engine", "--cuda-graph-modules", "moe_router"),
     "cuda_graph_scope", ["moe_router"]),
    (("--cuda-graph-impl", "local", "--cuda-graph-scope", "moe_router"),
     "cuda_graph_scope", ["moe_router", "moe_preprocess"]),  # local captures both
    (("--cuda-graph-impl", "transformer_engine"), "cuda_graph_scope", ["attn", "mlp", "moe"]),
    (("--cuda-graph-impl", "local", "--cuda-graph-scope", "full_iteration"), "dispatch",
     "cuda_graphs"),
    (("--cuda-graph-scope", "attn"), "cuda_graph_scope", None),  # no implementation: none
    (("--cuda-graph-impl", "local", "--cuda-graph-scope", "full"), "cuda_graph_scope",
     ["attn", "mlp", "moe"]),  # the deprecated "full": every whole layer, not the step
    (("--cuda-graph-impl", "full_iteration"), "dispatch", "cuda_graphs"),  # d98e8a64's impl
    (("--cuda-graph-impl", "local", "--cuda-graph-scope", "moe_preprocess"),
     "cuda_graph_scope", ["moe_preprocess", "moe_router"]),  # local: both, either way
])  # fmt: skip
def test_megatron_importer_reads_cuda_graphs(extra, key, value) -> None:
    rt = import_megatron_flags([*_FLAGS, *extra], gpus=8).data["runtime"]
    assert rt.get(key) == value


def test_megatron_importer_refuses_unknown_graph_settings() -> None:
    with pytest.raises(
        ConfigError, match=r"--cuda-graph-impl.*none \| local \| transformer_engine"
    ):
        import_megatron_flags([*_FLAGS, "--cuda-graph-impl", "cudnn"], gpus=8)
    te = [*_FLAGS, "--cuda-graph-impl", "transformer_engine", "--cuda-graph-scope"]
    with pytest.raises(ConfigError, match=r"--cuda-graph-scope.*mamba.*full_iteration"):
        import_megatron_flags([*te, "mamba"], gpus=8)
    with pytest.raises(ConfigError, match=r"--cuda-graph-scope.*add moe_router"):
        import_megatron_flags([*te, "moe_preprocess"], gpus=8)
    with pytest.raises(ConfigError, match=r"--cuda-graph-modules.*give one"):
        import_megatron_flags([*_FLAGS, "--cuda-graph-impl", "transformer_engine",
                               "--cuda-graph-modules", "moe", "moe_router"], gpus=8)  # fmt: skip


def test_validate_reads_megatron_bridge_graph_configs() -> None:
    """The 25.11 table's B200 Qwen3-30B run: its config captures the router and the
    preprocess (qwen3_workload_base_configs.py l.203-219 at 00b7660b); the B200 Qwen3-235B
    run's captures nothing; the GB300 Llama 3 8B run's the whole iteration."""
    from simtrain.apps.validate.records import load_records
    from simtrain.apps.validate.translate import translate

    rows = {r.id: r for r in load_records("measured/mbridge_2511.yaml")}
    small = translate(rows["mbridge2511_B200_Qwen3_30B_a3B_FP8MX_8gpu"])
    assert small.scenario.runtime.cuda_graph_scope == ("moe_router", "moe_preprocess")
    assert any("--cuda-graph-scope moe_router moe_preprocess" in a for a in small.assumptions)
    big = translate(rows["mbridge2511_B200_Qwen3_235B_a22B_FP8MX_64gpu"]).scenario
    assert big.runtime.cuda_graph_scope == () and big.runtime.dispatch == "eager"
    llama = translate(rows["mbridge2511_GB300_LLAMA3_8B_FP8CS_8gpu"]).scenario
    assert llama.runtime.dispatch == "cuda_graphs"


def test_validate_reads_the_26x_per_gpu_recipes() -> None:
    """From NeMo 26.06 on, the rows ran Megatron-Bridge's per-GPU recipes (perf_recipes at
    067f987d): the MXFP8 MoE ones on GB200 / GB300 capture the whole iteration and overlap the
    expert all-to-alls (Megatron-Core's combined 1F1B); the B300 DeepSeek-V3 one keeps TE's
    per-layer graphs; the Llama 3.1 405B NVFP4 one captures nothing (its full_iteration scope
    cleared by _benchmark_common), where the 00b7660b config it replaced captured the whole
    iteration. A 26.04 row of the same model reads the old config."""
    from simtrain.apps.validate.native import mbridge_era, mbridge_release
    from simtrain.apps.validate.records import load_records
    from simtrain.apps.validate.translate import translate

    rows = {r.id: r for r in load_records("measured/mbridge_26x.yaml")}
    assert mbridge_release(rows["mbridge260601_GB300_Qwen3_30B_a3B_FP8MX_8gpu"]) == (26, 6, 1)
    # the eras: 25.11 00b7660b's configs, 26.02-26.04.01 Bridge 0.3's, 26.06 on the recipes
    eras = {rid.split("_")[0]: mbridge_era(r) for rid, r in rows.items()}
    assert (eras["mbridge2602"], eras["mbridge260401"], eras["mbridge2606"],
            eras["mbridge2608"]) == ("r0.3", "r0.3", "recipes", "recipes")  # fmt: skip
    old_rows = load_records("measured/mbridge_2511.yaml")
    assert {mbridge_era(r) for r in old_rows if r.source_key == "megatron_bridge"} == {"configs"}
    for rid in ("mbridge2608_GB300_Qwen3_30B_a3B_FP8MX_8gpu",
                "mbridge2606_GB200_DeepSeekV3_FP8MX_256gpu"):  # fmt: skip
        sc = translate(rows[rid]).scenario
        assert sc.runtime.dispatch == "cuda_graphs", rid
        assert sc.parallelism.schedule == "combined_1f1b", rid
    b300 = translate(rows["mbridge2606_B300_DeepSeekV3_FP8MX_256gpu"]).scenario
    assert b300.runtime.cuda_graph_scope == ("attn", "moe_router", "moe_preprocess")
    assert b300.parallelism.schedule != "combined_1f1b"
    nvfp4 = translate(rows["mbridge2606_GB300_LLAMA3.1_405B_NVFP4_256gpu"]).scenario
    assert nvfp4.runtime.dispatch == "eager" and nvfp4.runtime.cuda_graph_scope == ()
    old = translate(rows["mbridge2604_GB300_Qwen3_30B_a3B_FP8MX_8gpu"]).scenario
    assert old.runtime.cuda_graph_scope == ("moe_router", "moe_preprocess")
    assert old.parallelism.schedule != "combined_1f1b"
    b300 = translate(rows["mbridge2606_B300_Qwen3_30B_a3B_FP8MX_8gpu"]).scenario
    assert b300.runtime.dispatch == "cuda_graphs" and b300.parallelism.schedule == "combined_1f1b"
    oss = translate(rows["mbridge2606_B300_GPT_OSS_120B_FP8MX_64gpu"]).scenario
    assert oss.runtime.cuda_graph_scope == ("attn", "moe_router", "moe_preprocess")
    assert oss.parallelism.schedule != "combined_1f1b"
    h100 = translate(rows["mbridge2606_H100_Qwen3_30B_a3B_FP8CS_16gpu"]).scenario
    assert h100.runtime.dispatch == "eager" and h100.runtime.cuda_graph_scope == ()
    # every Megatron-Bridge row names its container (a row without would read the old tables)
    for f in ("measured/mbridge_2511.yaml", "measured/mbridge_26x.yaml"):
        assert all(mbridge_release(r) for r in load_records(f) if r.source_key == "megatron_bridge")


torch = pytest.importorskip("torch")


@pytest.mark.parametrize("kind", sorted(MLP_OPS))
def test_mlp_ops_recounted_with_torch(kind: str) -> None:
    """The reference MLP alone, in bf16, forward and backward with its input's gradient, less
    the harness's own ops (the same pass over an identity)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from simtrain.spec.model import ModelSpec
    from simtrain.torchref.reference_model import MLP

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    def count(fn) -> tuple[int, int]:
        x = torch.randn(2, 16, 64, dtype=torch.bfloat16, requires_grad=True)
        for _ in range(2):  # the second pass, warm
            with Count() as f:
                loss = fn(x).float().sum()
            with Count() as b:
                loss.backward()
            x.grad = None
        return f.n, b.n

    spec = ModelSpec("ops", 2, 64, 4, 4, 256, 256, 256, mlp=kind, bias=False)
    mlp_f, mlp_b = count(MLP(spec).to(torch.bfloat16))
    harness_f, harness_b = count(lambda t: t)
    assert (mlp_f - harness_f, mlp_b - harness_b) == (MLP_OPS[kind].forward, MLP_OPS[kind].backward)


def test_host_module_names_every_table() -> None:
    """(The tables' keys are the MLP kinds the reference block has.)"""
    assert set(MLP_OPS) == {k for k, _ in host.BARE_BLOCK_OPS}


@pytest.mark.parametrize(("scopes", "sets", "words"), [
    ("[moe_router, moe_preprocess]", ["model.preset=llama3-8b", "parallelism.ep=1"],
     "has none (model.num_experts)"),
    ("[mlp]", [], "every block of model"),
    ("[attn]", ["training.recompute=full"], "whole-iteration graph"),
    ("[attn]", ["parallelism.pp=1", "parallelism.dp=64", "training.offload.activation_layers=4"],
     "no CUDA graphs with CPU offloading"),
])  # fmt: skip
def test_graph_scopes_checked_against_the_model_and_recompute(scopes, sets, words) -> None:
    """Megatron-Core's own assertions (transformer_config.py l.2825-2858 at d98e8a64): MoE
    scopes on a dense model, the mlp scope on an all-MoE model, per-layer graphs with full
    recompute are one-line errors naming runtime.cuda_graph_scope."""
    with pytest.raises(ConfigError) as e:
        _sc(f"runtime.cuda_graph_scope={scopes}", *sets)
    assert "runtime.cuda_graph_scope" in str(e.value) and words in str(e.value)


def _megatron_core_path() -> str | None:
    """Where megatron-core can be imported from: MCORE_PATH (a ``pip install --target``
    directory), or the environment; None where it is not installed (CI: simtrain does not
    depend on it)."""
    import importlib.util
    import os

    path = os.environ.get("MCORE_PATH")
    if path and os.path.isdir(os.path.join(path, "megatron", "core")):
        return path
    try:
        return "" if importlib.util.find_spec("megatron.core") else None
    except ModuleNotFoundError:  # (no "megatron" package at all)
        return None


@pytest.mark.parametrize("ep", [1, 2])
def test_megatron_moe_ops_recounted_on_megatron_core(ep: int) -> None:
    """The MEGATRON_MOE_* tables against megatron-core itself, recounted by
    benchmarks/megatron_moe_ops.py (its MoELayer on the CPU; EP 2 on two gloo ranks). Runs
    only where megatron-core is installed (MCORE_PATH; see the script's docstring for the
    two pip commands): skipped in CI."""
    import os
    import re
    import subprocess
    import sys

    path = _megatron_core_path()
    if path is None:
        pytest.skip("megatron-core not installed (set MCORE_PATH)")
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "megatron_moe_ops.py"
    out = subprocess.run([sys.executable, str(script), str(ep)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "MCORE_PATH": path}).stdout  # fmt: skip
    got = re.search(r"router (\d+) / (\d+), preprocess (\d+) / 0, rest (\d+) / (\d+)", out)
    assert got, out
    router_f, router_b, pre_f, rest_f, rest_b = map(int, got.groups())
    grouped = ep > 1
    assert (router_f, router_b) == (
        MEGATRON_MOE_ROUTER_OPS.forward,
        MEGATRON_MOE_ROUTER_OPS.backward,
    )
    assert pre_f == MEGATRON_MOE_PREPROCESS_OPS[grouped].forward
    assert (rest_f, rest_b) == (MEGATRON_MOE_DISPATCH_OPS[grouped].forward,
                                MEGATRON_MOE_DISPATCH_OPS[grouped].backward)  # fmt: skip


@pytest.mark.parametrize("experts", [1, 2, 4, 16])
def test_expert_bias_ops_recounted_with_torch(experts: int) -> None:
    """The fc2 bias loop dispatches 5 + 2E ops forward and 8 + 7E backward on E local experts
    (bf16 output and probabilities: the router's ``probs.type_as(logits)`` without
    moe_router_dtype), counted here on the transcription with the harness
    simtrain.torchref.opcount counts blocks with."""
    torch = pytest.importorskip("torch")
    from simtrain.torchref.opcount import _OpCounter

    tokens, h = [3] * experts, 8
    out = torch.randn(sum(tokens), h, dtype=torch.bfloat16, requires_grad=True) * 1.0
    biases = [torch.randn(h, dtype=torch.bfloat16, requires_grad=True) for _ in tokens]
    probs = torch.rand(sum(tokens), 1, dtype=torch.bfloat16, requires_grad=True) * 1.0
    with _OpCounter() as fwd:
        y = megatron_apply_bias(out, biases, tokens, probs)
    grad = torch.ones_like(y)
    with _OpCounter() as bwd:
        y.backward(grad)
    want = host.expert_bias_ops(experts)
    assert (fwd.ops, bwd.ops) == (want.forward, want.backward)
    assert want.recompute_full == want.forward


def test_glu_clamp_ops_recounted_with_torch() -> None:
    """The clamp dispatches 4 ops forward and 11 backward beyond the view beside it."""
    torch = pytest.importorskip("torch")
    from simtrain.torchref.opcount import _OpCounter

    def count(fn):
        x = torch.randn(5, 16, dtype=torch.bfloat16, requires_grad=True) * 1.0
        with _OpCounter() as fwd:
            y = fn(x)
        with _OpCounter() as bwd:
            y.backward(torch.ones_like(y))
        return fwd.ops, bwd.ops

    clamped, plain = count(megatron_glu_clamp), count(lambda x: x.view(-1, 16))
    want = host.MEGATRON_GLU_CLAMP_OPS
    assert (clamped[0] - plain[0], clamped[1] - plain[1]) == (want.forward, want.backward)
    assert want.recompute_full == want.forward


def test_a_clamped_glu_adds_its_clamp_to_megatron_moe_blocks() -> None:
    """GPT-OSS's glu_clamp adds the clamp's ops to a Megatron-Core MoE block, nothing to the
    reference MoE layer's."""
    sets = ["model.mlp=swiglu", "parallelism.ep=8"]
    clamped, plain = _sc(*sets, "model.glu_clamp=7.0"), _sc(*sets)
    assert block_ops(clamped, moe=True) - block_ops(plain, moe=True) == (
        host.MEGATRON_GLU_CLAMP_OPS
    )
    ref = ["runtime.moe_implementation=reference"]
    assert block_ops(_sc(*sets, "model.glu_clamp=7.0", *ref), moe=True) == block_ops(
        _sc(*sets, *ref), moe=True
    )


def test_biased_experts_add_their_bias_loop() -> None:
    """Biased experts (GPT-OSS's, model.bias) add the fc2 bias loop over the rank's experts to
    an MoE block: Mixtral's 8 experts at ep 8 (one a rank) and ep 2 (four), beside the seven
    linears' bias gradients; a CUDA graph of the MoE takes the loop with the rest."""
    for ep, local in ((8, 1), (2, 4)):
        biased = _sc("model.bias=true", f"parallelism.ep={ep}")
        plain = _sc("model.bias=false", f"parallelism.ep={ep}")
        assert block_ops(biased, moe=True) - block_ops(plain, moe=True) == (
            host.BIAS_OPS * 7 + LayerOps(5 + 2 * local, 8 + 7 * local, 5 + 2 * local)
        ), ep  # fmt: skip
        assert block_ops(biased) - block_ops(plain) == host.BIAS_OPS * 7  # dense blocks: none
    graphed = _sc("model.bias=true", "runtime.cuda_graph_scope=[moe]")
    m = graphed.model
    attention_part = layer_ops(m) - (NORM_OPS[m.norm] + MLP_OPS[m.mlp] + RESIDUAL_ADD_OPS
                                     + host.BIAS_OPS * 3)  # fmt: skip
    assert block_ops(graphed, moe=True) == attention_part + GRAPH_REPLAY_OPS
