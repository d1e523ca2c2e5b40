"""Measured bytes of a real training step of the reference model (needs torch)."""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from simtrain.spec.model import ModelSpec  # noqa: E402
from simtrain.spec.scenario import PeftSpec, TrainingSpec  # noqa: E402
from simtrain.torchref.losses import _FusedCrossEntropyFn  # noqa: E402
from simtrain.torchref.measure import build_reference_model, measure_step  # noqa: E402
from simtrain.torchref.opcount import count_dispatched_ops  # noqa: E402

GPT = ModelSpec("tiny-gpt", layers=2, hidden=64, heads=4, kv_heads=4, ffn_hidden=256, vocab=256,
                max_positions=128)  # fmt: skip
LLAMA = ModelSpec(
    "tiny-llama", layers=2, hidden=64, heads=4, kv_heads=2, ffn_hidden=172, vocab=256,
    max_positions=128, mlp="swiglu", tied_embeddings=False, positions="rotary", bias=False,
    norm="rmsnorm",
)  # fmt: skip
S, B = 32, 2
SBH = S * B * GPT.hidden


def training(**kw) -> TrainingSpec:
    peft = kw.pop("peft", None)
    base = TrainingSpec(seq_len=S, micro_batch=B, precision="fp32", optimizer="adam")
    return replace(base, **kw, **({"peft": peft} if peft else {}))


@pytest.mark.parametrize("spec", [GPT, LLAMA], ids=["gpt", "llama"])
def test_module_parameter_count_matches_spec(spec: ModelSpec) -> None:
    model = build_reference_model(spec, training())
    assert sum(p.numel() for p in model.parameters()) == spec.total_params()


@pytest.mark.parametrize("spec", [GPT, LLAMA], ids=["gpt", "llama"])
def test_full_finetune_fp32_bytes(spec: ModelSpec) -> None:
    m = measure_step(spec, training(), steps=1)
    n = spec.total_params()
    assert m.parameter_bytes == 4 * n
    assert m.trainable_params == n
    assert m.gradient_bytes == 4 * n
    assert m.master_weight_bytes == 0
    assert m.optimizer_state_bytes == 8 * n  # exp_avg + exp_avg_sq
    n_tensors = len(list(build_reference_model(spec, training()).parameters()))
    assert m.optimizer_step_counter_bytes == 4 * n_tensors  # one fp32 scalar per tensor
    assert m.peak_bytes >= m.parameter_bytes + m.gradient_bytes + m.optimizer_state_bytes
    assert m.activation_bytes > 0 and m.torch_version == torch.__version__


def test_bf16_megatron_style_has_fp32_master_and_state() -> None:
    m = measure_step(GPT, training(precision="bf16"), steps=1)
    n = GPT.total_params()
    assert m.parameter_bytes == 2 * n
    assert m.gradient_bytes == 2 * n
    assert m.master_weight_bytes == 4 * n
    assert m.optimizer_state_bytes == 8 * n


def test_bf16_pure_optimizer_state_is_bf16() -> None:
    m = measure_step(GPT, training(precision="bf16_pure"), steps=1)
    n = GPT.total_params()
    assert (m.parameter_bytes, m.master_weight_bytes, m.optimizer_state_bytes) == (2 * n, 0, 4 * n)


@pytest.mark.parametrize(("optimizer", "per_param"), [("sgd", 0), ("sgd_momentum", 4)])
def test_sgd_state(optimizer: str, per_param: int) -> None:
    m = measure_step(GPT, training(optimizer=optimizer), steps=1)
    assert m.optimizer_state_bytes == per_param * GPT.total_params()
    assert m.optimizer_step_counter_bytes == 0


def test_adafactor_state_is_factored() -> None:
    m = measure_step(GPT, training(optimizer="adafactor"), steps=1)
    assert 0 < m.optimizer_state_bytes < GPT.total_params()  # far below 4 bytes per parameter


def test_adam8bit_is_refused_on_any_device() -> None:
    """A ConfigError naming the optimizer, before a model is built (was NotImplementedError
    from the trainer: a traceback at the CLI). The trainer has no bitsandbytes path on any
    device, so the refusal is the optimizer's, not the device's."""
    from simtrain.errors import ConfigError

    with pytest.raises(ConfigError, match="bitsandbytes") as info:
        measure_step(GPT, training(optimizer="adam8bit"))
    assert info.value.key == "training.optimizer"


@pytest.mark.parametrize("spec", [GPT, LLAMA], ids=["gpt", "llama"])
def test_lora_trainable_params(spec: ModelSpec) -> None:
    targets = ("q", "v", "down")
    peft = PeftSpec(method="lora", rank=4, target_modules=targets)
    m = measure_step(spec, training(peft=peft), steps=1)
    shapes = spec.linear_weight_shapes()
    expected = spec.layers * sum(4 * (shapes[t][0] + shapes[t][1]) for t in targets)
    assert m.trainable_params == expected
    assert m.gradient_bytes == 4 * expected
    assert m.optimizer_state_bytes == 8 * expected
    assert m.parameter_bytes == 4 * (spec.total_params() + expected)


def test_qlora_stores_four_bit_weights() -> None:
    peft = PeftSpec(method="qlora", rank=4, target_modules=("q", "v"), quant_block_size=64)
    m = measure_step(LLAMA, training(precision="bf16", peft=peft), steps=1)
    shapes = LLAMA.linear_weight_shapes()
    quantized = LLAMA.layers * sum(i * o for i, o in shapes.values())
    lora = LLAMA.layers * sum(4 * (shapes[t][0] + shapes[t][1]) for t in ("q", "v"))
    rest = LLAMA.total_params() - quantized
    assert m.parameter_bytes == 2 * (rest + lora) + quantized // 2 + 4 * (quantized // 64)
    assert m.trainable_params == lora and m.master_weight_bytes == 4 * lora
    assert m.frozen_params == LLAMA.total_params()


@pytest.mark.parametrize(
    ("method", "trainable"),
    [
        ("adapter", GPT.layers * 2 * (2 * 64 * 16 + 16 + 64)),
        ("prefix", GPT.layers * 2 * 8 * 64),
        ("prompt", 8 * 64),
        ("linear_probe", 256 * 64),  # a new untied head
        ("bitfit", GPT.layers * (4 * 64 + 256 + 64 + 2 * 64) + 64),  # linear + LayerNorm biases
    ],
)
def test_peft_trainable_params(method: str, trainable: int) -> None:
    peft = PeftSpec(method=method, adapter_size=16, prefix_length=8, prompt_length=8)
    m = measure_step(GPT, training(peft=peft), steps=1)
    assert m.trainable_params == trainable
    assert m.gradient_bytes == 4 * trainable


def test_lp_ft_phases() -> None:
    probe = measure_step(GPT, training(peft=PeftSpec(method="lp_ft", phase="probe")), steps=1)
    full = measure_step(GPT, training(peft=PeftSpec(method="lp_ft", phase="finetune")), steps=1)
    assert probe.trainable_params == GPT.vocab * GPT.hidden
    assert full.trainable_params == GPT.total_params()


def test_bitfit_without_biases_is_an_error() -> None:
    from simtrain.errors import ConfigError

    with pytest.raises(ConfigError, match="no trainable") as info:
        build_reference_model(LLAMA, training(peft=PeftSpec(method="bitfit")))
    assert info.value.key == "training.peft.method"


def test_fp32_flash_saved_bytes_match_formula() -> None:
    """fp32, flash, no dropout: per block 64·sbh (norm inputs 2x4, shared qkv input 4, SDPA q k v
    out 4x4, MLP input 4, GeLU input 16, down input 16) + 2 norms x (mean, rstd) 4·sb each
    + the SDPA logsumexp 4·b·heads·s."""
    m = measure_step(replace(GPT, flash_attention=True), training(), steps=1)
    expected = 64 * SBH + 16 * S * B + 4 * B * GPT.heads * S
    assert m.block_activation_bytes == (expected, expected)
    assert m.weight_copy_bytes == 0
    # outside blocks: token ids (8·sb), final norm (4·sbh + 8·sb), head input (4·sbh),
    # log-softmax (4·sbV), targets (8·sb), total_weight (4 bytes)
    outside = 8 * S * B + 4 * SBH + 8 * S * B + 4 * SBH + 4 * S * B * GPT.vocab + 8 * S * B + 4
    assert m.activation_bytes == 2 * expected + outside


@pytest.mark.parametrize("spec", [GPT, LLAMA], ids=["gpt", "llama"])
@pytest.mark.parametrize("flash", [True, False])
def test_activations_scale_linearly_with_micro_batch(spec: ModelSpec, flash: bool) -> None:
    spec = replace(spec, flash_attention=flash, dropout=0.1)
    one = measure_step(spec, training(), batch=2, steps=1)
    two = measure_step(spec, training(), batch=4, steps=1)
    assert abs(two.activation_bytes - 2 * one.activation_bytes) <= 64  # the scalar total_weight
    assert two.activation_bytes_per_layer == 2 * one.activation_bytes_per_layer


def test_recompute_saves_less() -> None:
    spec = replace(GPT, dropout=0.1)
    none = measure_step(spec, training(), steps=1)
    selective = measure_step(spec, training(recompute="selective"), steps=1)
    full = measure_step(spec, training(recompute="full"), steps=1)
    assert full.activation_bytes_per_layer == 4 * SBH  # only the fp32 block input
    assert full.activation_bytes_per_layer < selective.activation_bytes_per_layer
    assert selective.activation_bytes_per_layer < none.activation_bytes_per_layer
    assert none.activation_bytes > 5 * full.activation_bytes / 2


def test_linear_probe_saves_nothing_in_the_body() -> None:
    m = measure_step(GPT, training(peft=PeftSpec(method="linear_probe")), steps=1)
    assert m.block_activation_bytes == (0, 0)
    assert m.activation_bytes < 4 * SBH + 4 * S * B * GPT.vocab + 64 * S * B


def test_amp_saves_weight_copies_and_bf16_activations() -> None:
    fp32 = measure_step(GPT, training(), steps=1)
    amp = measure_step(GPT, training(precision="amp_bf16"), steps=1)
    assert amp.parameter_bytes == fp32.parameter_bytes
    # every linear's weight is cast to bf16 and the cast is saved (the tied head: V·h)
    n_linear = GPT.layers * sum(i * o for i, o in GPT.linear_weight_shapes().values())
    assert amp.weight_copy_bytes == 2 * (n_linear + GPT.vocab * GPT.hidden)
    assert amp.activation_bytes_per_layer < fp32.activation_bytes_per_layer
    descriptions = [d for d, *_ in amp.saved_tensors]
    assert any("blocks.0.attn.q" in d and "wcopy" in d for d in descriptions)


@pytest.mark.parametrize("precision", ["fp16", "amp_fp16"])
def test_fp16_precisions_train(precision: str) -> None:
    m = measure_step(LLAMA, training(precision=precision), steps=1)
    assert 0 < m.loss < 10 and m.activation_bytes > 0


def test_saved_tensor_report_lists_first_block_and_outside_ops() -> None:
    m = measure_step(replace(GPT, dropout=0.1), training(), steps=1)
    descriptions = [d for d, *_ in m.saved_tensors]
    assert any(d.startswith("blocks.0.attn.attn_drop") for d in descriptions)
    assert any(d.startswith("model: cross_entropy") for d in descriptions)
    counted = sum(b for *_, b in m.saved_tensors if True)
    assert counted <= m.activation_bytes + m.constant_saved_bytes
    for desc, shape, dtype, nbytes in m.saved_tensors:
        assert isinstance(desc, str) and isinstance(shape, tuple) and isinstance(dtype, str)
        assert nbytes >= 0


def test_lora_training_updates_only_adapters() -> None:
    torch.manual_seed(0)
    spec = LLAMA
    tr = training(peft=PeftSpec(method="lora", rank=4, target_modules=("q", "v")))
    model = build_reference_model(spec, tr)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    idx = torch.randint(spec.vocab, (B, S))
    for _ in range(2):
        opt.zero_grad()
        model(idx, idx).backward()
        opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("lora_B"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_tracked_peak_agrees_with_profiler(precision: str) -> None:
    """Independent check of the storage tracker: replay the CPU allocator's alloc/free events
    recorded by torch.profiler for the same step (same seed, same data)."""
    from simtrain.torchref.trainer import _Trainer

    spec, tr = replace(GPT, dropout=0.1), training(precision=precision)
    m = measure_step(spec, tr, steps=1)
    torch.manual_seed(0)
    model = build_reference_model(spec, tr)
    trainer = _Trainer(model, tr, torch.device("cpu"))
    idx = torch.randint(spec.vocab, (B, S))
    targets = torch.randint(spec.vocab, (B, S))
    trainer.step(idx, targets)
    trainer.zero_grad()
    states, counters = trainer.state_tensors()
    resident = list(model.parameters()) + list(model.buffers()) + trainer.masters
    resident += states + counters + [idx, targets]
    base = sum(t.untyped_storage().nbytes() for t in resident)
    with torch.profiler.profile(profile_memory=True) as prof:
        loss = trainer.forward(idx, targets)
        trainer.backward(loss)
        trainer.optimizer_step()
        del loss
    try:
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        deltas = [e.nbytes() for e in sorted(events, key=lambda e: e.start_ns())]
    except AttributeError:  # pragma: no cover - private profiler API moved
        pytest.skip("kineto memory events not available")
    live = peak = 0
    for d in deltas:
        live += d
        peak = max(peak, live)
    assert abs((base + peak) - m.peak_bytes) <= 0.01 * m.peak_bytes


@pytest.mark.parametrize(("spec", "precision", "recompute"), [
    (GPT, "fp32", "none"), (GPT, "amp_bf16", "none"), (LLAMA, "bf16", "full"),
])  # fmt: skip
def test_dispatched_ops_grow_by_a_fixed_count_per_layer(spec: ModelSpec, precision: str,
                                                        recompute: str) -> None:  # fmt: skip
    """Eager PyTorch dispatches the same ops for every block: the per-phase counts are affine in
    the number of layers (the second difference is zero), the backward dispatches more than the
    forward, and full recompute adds a forward's worth of block ops to the backward."""
    t = TrainingSpec(seq_len=S, global_batch=B, micro_batch=B, precision=precision,
                     recompute=recompute)  # fmt: skip
    c = [count_dispatched_ops(replace(spec, layers=n), t) for n in (1, 2, 3)]
    for phase in ("forward", "backward", "forward_kernels", "backward_kernels"):
        a, b, d = (getattr(x, phase) for x in c)
        assert b - a == d - b > 0, phase
    assert c[1].backward > c[1].forward
    if recompute == "full":
        plain = count_dispatched_ops(replace(spec, layers=2), replace(t, recompute="none"))
        per_layer_fwd = c[2].forward - c[1].forward
        assert c[1].backward - plain.backward >= 2 * per_layer_fwd * 0.9


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_cross_entropy_equals_pytorchs(dtype) -> None:
    """The block-wise fused kernel (training.cross_entropy: fused) gives PyTorch's mean
    cross-entropy and its gradient, ignored targets (-100) included."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.randn(200, 333, dtype=dtype, requires_grad=True)
    t = torch.randint(333, (200,))
    t[[5, 77]] = -100
    fused = _FusedCrossEntropyFn.apply(x, t)
    fused.backward()
    g = x.grad.clone()
    x.grad = None
    ref = F.cross_entropy(x.float(), t, ignore_index=-100)
    ref.backward()
    assert fused.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(g.float(), x.grad.float(), atol=1e-6)


def test_measure_refuses_fp8_instead_of_running_bf16() -> None:
    """The reference model has no FP8 kernels: an FP8 precision is a one-line error naming
    training.precision, not a 16-bit step reported under an FP8 name."""
    from simtrain.errors import ConfigError
    from simtrain.spec.scenario import TrainingSpec

    with pytest.raises(ConfigError) as info:
        measure_step(GPT, TrainingSpec(seq_len=16, global_batch=1, micro_batch=1,
                                       precision="fp8_delayed"))  # fmt: skip
    assert "training.precision" in str(info.value) and "FP8" in str(info.value)


@pytest.mark.parametrize("precision", ["fp32", "amp_bf16", "bf16"])
@pytest.mark.parametrize("qk", [None, "head", "full"])
def test_head_size_is_built_and_measured(precision: str, qk: str | None) -> None:
    """A head wider than hidden / heads (HF head_dim: Qwen3, Gemma): q is heads·head_size wide and
    o takes it back to hidden. The reference builds it (it crashed with a RuntimeError before),
    its parameters are the spec's to the byte, and its saved bytes move by exactly as much as
    the model's when the head widens (q, k, v, the attention output and the q/k norms)."""
    from reference_pairs import measure_and_estimate

    t = TrainingSpec(seq_len=S, global_batch=B, micro_batch=B, precision=precision)
    norms = {"qk_norm": True, "qk_norm_width": qk} if qk else {}
    base = replace(LLAMA, flash_attention=True, **norms)
    wide = replace(base, head_size=2 * LLAMA.hidden // LLAMA.heads)
    assert wide.q_dim == 2 * LLAMA.hidden
    (r0, m0), (r1, m1) = measure_and_estimate(base, t), measure_and_estimate(wide, t)
    assert r1.parameter_bytes == m1["parameters"] > r0.parameter_bytes == m0["parameters"]
    measured = r1.activation_bytes - r0.activation_bytes
    assert measured == m1["activations"] - m0["activations"] > 0


@pytest.mark.parametrize(("change", "key"), [
    ({"num_experts": 4, "experts_per_token": 2}, "model.num_experts"),
    ({"kv_lora_rank": 16, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16},
     "model.kv_lora_rank"),
    ({"attention_sinks": True}, "model.attention_sinks"),
    ({"embedding_norm": True}, "model.embedding_norm"),
    ({"qkv_layout": "fused_kv_copy", "kv_heads": 4}, "model.qkv_layout"),
])  # fmt: skip
def test_measure_refuses_what_the_reference_does_not_build(change: dict, key: str) -> None:
    """A mechanism the reference decoder lacks is a one-line error naming its key, never a
    measurement of another model (a dense MLP for a mixture of experts: before, `simtrain
    measure` printed a dense step's bytes beside the MoE estimate, 150 % off)."""
    from simtrain.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        measure_step(replace(LLAMA, **change), training(), steps=1)
    assert info.value.key == key and "reference model has no" in str(info.value)


@pytest.mark.parametrize("change", [{"optimizer_state_dtype": "bf16"}, {"master_weights": "none"}])
def test_measure_refuses_an_optimizer_storage_it_does_not_keep(change: dict) -> None:
    from simtrain.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        measure_step(LLAMA, training(precision="bf16", **change), steps=1)
    assert info.value.key == f"training.{next(iter(change))}"


TINY_SCENARIO = """name: tiny
model: {name: tiny, layers: 2, hidden: 64, heads: 4, kv_heads: 4, ffn_hidden: 256, vocab: 256,
        max_positions: 128}
hardware: a100_sxm4_80gb
cluster: {nodes: 1, gpus_per_node: 1}
training: {seq_len: 64, global_batch: 2, micro_batch: 1, precision: fp32, optimizer: adamw}
"""


@pytest.mark.parametrize(("args", "key"), [
    (["--device", "foo"], "--device"),
    (["--device", "meta"], "--device"),
    (["--device", "cuda"], "--device"),  # no GPU on the test machine (skipped where there is)
    (["--set", "training.optimizer=adam8bit"], "training.optimizer"),
    (["--set", "training.peft.method=lora", "--set", "training.peft.target_modules=[gate]"],
     "training.peft.target_modules"),
    (["--set", "model.positions=rotary", "--set", "model.heads=2", "--set", "model.kv_heads=2",
      "--set", "model.head_size=7"], "model.head_size"),
])  # fmt: skip
def test_measure_refuses_what_it_cannot_build(tmp_path, args: list[str], key: str) -> None:
    """Each of these was a torch traceback (a fuzz campaign, 2026-12-07): an unknown or absent
    device, adam8bit (the trainer has no bitsandbytes path), LoRA on modules the model lacks
    (nothing to train), an odd rotated width (RoPE rotates channel pairs). Now one line naming
    the key, and the scenario's file where the key is the scenario's."""
    from click.testing import CliRunner

    from simtrain.cli import main

    if args[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    f = tmp_path / "tiny.yaml"
    f.write_text(TINY_SCENARIO)
    r = CliRunner().invoke(main, ["measure", str(f), *args])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in r.output
    assert f"{key}:" in err
    if not key.startswith("--"):
        assert str(f) in err


def test_a_step_beyond_the_free_memory_is_refused_before_it_is_built(monkeypatch) -> None:
    """simtrain's own one-device estimate against the device's free memory (a CPU measurement
    of GPT-2 XL ran a 24 GiB host out of memory: a traceback, a fuzz campaign): refused with the
    two figures, naming the model; with room, the same step runs."""
    from simtrain.errors import ConfigError
    from simtrain.torchref import measure as measure_mod
    from simtrain.torchref.pairs import estimate_stage

    st = estimate_stage(GPT, training())
    need = st.peak_memory_bytes - dict(st.memory_bytes)["cuda_context"]
    monkeypatch.setattr(measure_mod, "free_memory_bytes", lambda device: need - 1)
    built = []
    real_build = measure_mod.build_reference_model
    monkeypatch.setattr(measure_mod, "build_reference_model",
                        lambda *a, **k: built.append(1) or real_build(*a, **k))  # fmt: skip
    with pytest.raises(ConfigError, match="the step needs about .* GiB .* are free on cpu") as e:
        measure_step(GPT, training(), steps=1, file="tiny.yaml")
    assert not built  # refused before the model is built
    assert e.value.key == "model" and e.value.file == "tiny.yaml"
    monkeypatch.setattr(measure_mod, "free_memory_bytes", lambda device: need)
    assert measure_step(GPT, training(), steps=1).trainable_params > 0


def test_a_batch_beyond_the_global_batch_is_still_measured() -> None:
    """measure_step's batch override above the scenario's global batch: the estimate weighs
    one micro-batch of it (it had raised ScheduleError: microbatches 0; a review)."""
    m = measure_step(GPT, training(global_batch=2, micro_batch=1), batch=4, steps=1)
    assert m.trainable_params > 0


def test_the_cgroup_limit_bounds_the_free_memory(tmp_path, monkeypatch) -> None:
    """A container's cgroup v2 limit, which MemAvailable does not see: memory.max less
    memory.current; none (max) or no v2 cgroup: unlimited."""
    from simtrain.torchref.measure import cgroup_room_bytes

    try:
        with open("/proc/self/cgroup") as f:
            rel = next((x.strip().split("::", 1)[1] for x in f if x.startswith("0::")), None)
    except OSError:
        rel = None
    if rel is None:
        pytest.skip("no cgroup v2 line for this process")
    base = tmp_path / rel.strip("/")
    base.mkdir(parents=True, exist_ok=True)
    (base / "memory.max").write_text("1000000\n")
    (base / "memory.current").write_text("250000\n")
    assert cgroup_room_bytes(str(tmp_path)) == 750_000
    (base / "memory.max").write_text("max\n")
    assert cgroup_room_bytes(str(tmp_path)) == 1 << 62
    assert cgroup_room_bytes(str(tmp_path / "absent")) == 1 << 62


def test_free_memory_is_the_hosts_available_memory() -> None:
    """Against psutil's available memory (its own reading, not this module's; psutil comes with
    the test install's dask), within 1 GiB for the moment between the two readings."""
    psutil = pytest.importorskip("psutil")
    from simtrain.torchref.measure import free_memory_bytes

    assert abs(free_memory_bytes("cpu") - psutil.virtual_memory().available) < 2**30


@pytest.mark.parametrize("exc", [RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. "
                                              "DefaultCPUAllocator: can't allocate memory"),
                                 MemoryError()])  # fmt: skip
def test_running_out_of_memory_while_measuring_is_one_line(monkeypatch, exc) -> None:
    from simtrain.errors import ConfigError
    from simtrain.torchref import measure as measure_mod

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(measure_mod, "_measure_step", fail)
    with pytest.raises(ConfigError, match="the step ran out of memory on cpu") as e:
        measure_step(GPT, training(), steps=1)
    assert e.value.key == "model"


def test_other_runtime_errors_are_not_read_as_memory(monkeypatch) -> None:
    from simtrain.torchref import measure as measure_mod

    def fail(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(measure_mod, "_measure_step", fail)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        measure_step(GPT, training(), steps=1)
