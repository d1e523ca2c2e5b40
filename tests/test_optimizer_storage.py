"""The optimizer's own storage (``training.optimizer_state_dtype``, ``training.master_weights``;
``spec.precision.with_optimizer_storage``): Apex DistributedFusedAdam's state dtype and NeMo's
master-copy choice (store_params / store_param_remainders), against closed forms written out
here, and the NeMo 24.07 Nemotron-4-340B run that fits only with them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from simtrain.apps.validate.records import load_records
from simtrain.apps.validate.translate import translate
from simtrain.costs.compute import optimizer_bytes_per_param
from simtrain.costs.memory import estimate_memory
from simtrain.errors import ConfigError
from simtrain.spec.precision import PRECISIONS, with_optimizer_storage
from simtrain.spec.scenario import load_scenario

GIB = 2**30


def _sc(**training):
    sc = load_scenario("scenarios/gpipe_8gpu.yaml")
    return replace(sc, training=replace(sc.training, **training))


@pytest.mark.parametrize(("state", "master", "master_b", "state_b"), [
    ("fp32", "precision", 4, 4), ("bf16", "none", 0, 2), ("fp32", "remainder", 2, 4),
    ("bf16", "precision", 4, 2), ("fp32", "none", 0, 4),
])  # fmt: skip
def test_model_states_per_parameter(state, master, master_b, state_b) -> None:
    """bf16 mixed precision with Adam: 2 B weights and gradients beside master_b B of master
    copy and 2 x state_b B of moments per trainable parameter, exactly."""
    base = estimate_memory(_sc()).stages[0].breakdown.states
    got = estimate_memory(_sc(optimizer_state_dtype=state, master_weights=master))
    st = got.stages[0].breakdown.states
    n = base.trainable
    assert (st.parameters, st.gradients) == (base.parameters, base.gradients) == (2 * n, 2 * n)
    assert st.master_weights == master_b * n
    assert st.optimizer_states == 2 * state_b * n


def test_storage_is_sharded_like_the_optimizer() -> None:
    """ZeRO-1 over dp 8 shards the master remainders and the bf16 moments: each category / 8."""
    sets = ["parallelism.pp=1", "parallelism.dp=8", "training.optimizer_state_dtype=bf16",
            "training.master_weights=remainder"]  # fmt: skip
    z0 = load_scenario("scenarios/gpipe_8gpu.yaml", overrides=sets)
    z1 = replace(z0, parallelism=replace(z0.parallelism, zero_stage=1))
    (a, b) = (dict(estimate_memory(x).stages[0].memory_bytes) for x in (z0, z1))
    n = estimate_memory(z0).stages[0].breakdown.states.trainable
    assert (a["master_weights"], a["optimizer_states"]) == (2 * n, 2 * 2 * n)
    assert b["master_weights"] == pytest.approx(2 * n / 8, abs=8)
    assert b["optimizer_states"] == pytest.approx(2 * 2 * n / 8, abs=8)


@pytest.mark.parametrize(("state", "master", "per_param"), [
    ("fp32", "precision", 2 + 2 * 4 + 2 * 2 * 4 + 2),  # 28 B: the mixed-precision step
    ("bf16", "none", 2 + 2 * 2 + 2 * 2 * 2),  # 14 B: bf16 weights and moments in place
    ("fp32", "remainder", 2 + 2 * (2 + 2) + 2 * 2 * 4),  # 26 B: weight + remainder, both ways
])  # fmt: skip
def test_optimizer_step_bytes(state, master, per_param) -> None:
    t = _sc(optimizer_state_dtype=state, master_weights=master).training
    assert optimizer_bytes_per_param(t) == per_param


def test_defaults_are_the_precision() -> None:
    for name, prec in PRECISIONS.items():
        assert with_optimizer_storage(prec) is prec, name


@pytest.mark.parametrize(("sets", "key"), [
    (["training.master_weights=remainder", "training.precision=fp32"], "training.master_weights"),
    (["training.master_weights=remainder", "training.precision=bf16_pure"],
     "training.master_weights"),
    (["training.optimizer_state_dtype=bf16", "training.optimizer=sgd"],
     "training.optimizer_state_dtype"),
    (["training.optimizer_state_dtype=bf16", "training.optimizer=adam8bit"],
     "training.optimizer_state_dtype"),
    (["training.optimizer_state_dtype=fp16"], "training.optimizer_state_dtype"),
    (["training.master_weights=fp16"], "training.master_weights"),
    (["training.master_weights=none", "training.precision=amp_bf16"], "training.master_weights"),
    # an fp32 value's high 16 bits are a bf16 value, not an fp16 one
    (["training.master_weights=remainder", "training.precision=fp16"], "training.master_weights"),
])  # fmt: skip
def test_bad_storage_is_a_clear_error(sets, key) -> None:
    with pytest.raises(ConfigError) as ei:
        load_scenario("scenarios/gpipe_8gpu.yaml", overrides=sets)
    assert ei.value.key == key


@pytest.mark.parametrize(("sets", "key"), [
    (["training.peft.method=lora", "training.optimizer_state_dtype=bf16"],
     "training.optimizer_state_dtype"),  # bitsandbytes' 32-bit paged AdamW: fp32 states
    (["training.optimizer_state_dtype=bf16"], "training.optimizer_state_dtype"),  # QLoRA
    (["training.master_weights=none"], "training.master_weights"),  # QLoRA keeps no master
])  # fmt: skip
def test_paged_and_qlora_storage_is_fixed(sets, key) -> None:
    """A review of 2026-12-05: bf16 states halved the paged-out bytes of bitsandbytes' paged
    AdamW, which keeps fp32 states; a master setting under QLoRA did nothing."""
    with pytest.raises(ConfigError) as ei:
        load_scenario("scenarios/qlora_paged_13b_4090.yaml", overrides=sets)
    assert ei.value.key == key


@pytest.mark.parametrize(("file", "sets", "key", "says"), [
    ("zero1_8gpu", ["runtime=deepspeed", "training.master_weights=remainder"],
     "training.master_weights", "runtime deepspeed"),
    ("zero1_8gpu", ["runtime=deepspeed", "training.optimizer_state_dtype=bf16"],
     "training.optimizer_state_dtype", "runtime deepspeed"),
    ("zero3_64gpu", ["training.offload.optimizer=true", "training.optimizer_state_dtype=bf16"],
     "training.optimizer_state_dtype", "CPU Adam"),
    ("zero3_64gpu", ["runtime=torchtitan", "training.master_weights=remainder"],
     "training.master_weights", "bf16_pure"),
    ("zero3_64gpu", ["runtime=torchtitan", "training.master_weights=none"],
     "training.master_weights", "bf16_pure"),
    # FSDP2's ZeRO-2 still gathers from the fp32 shard (a second review of 2026-12-05)
    ("zero3_64gpu", ["runtime=torchtitan", "parallelism.zero_stage=2",
                     "training.master_weights=none"], "training.master_weights", "bf16_pure"),
    # DeepSpeed keeps fp32 master weights and states at every stage
    ("zero1_8gpu", ["runtime=deepspeed", "parallelism.zero_stage=0",
                    "training.master_weights=remainder"], "training.master_weights", "runtime deepspeed"),
    ("zero3_64gpu", ["runtime=deepspeed", "training.optimizer_state_dtype=bf16"],
     "training.optimizer_state_dtype", "runtime deepspeed"),
])  # fmt: skip
def test_storage_the_optimizer_cannot_have_is_refused(file, sets, key, says) -> None:
    """A review of 2026-12-05: DeepSpeed's flat partitions, its CPU Adam and FSDP's fp32 shard
    took the keys silently and read the changed bytes as something else (a 2-byte "fp32 cast")."""
    with pytest.raises(ConfigError) as ei:
        load_scenario(f"scenarios/{file}.yaml", overrides=sets)
    assert ei.value.key == key and says in str(ei.value)
    # FSDP with bf16 moments (torchao's AdamW) is a storage it can have
    sc = load_scenario("scenarios/zero3_64gpu.yaml",
                       overrides=["runtime=torchtitan", "training.optimizer_state_dtype=bf16"])  # fmt: skip
    assert sc.training.precision_spec.state == 2


def test_remainders_and_none_step_from_16_bit_gradients() -> None:
    """Without a full fp32 master copy there is no fp32 master gradient: the optimizer step's
    working memory and the master-copy passes are 0 for them, 4 B / param of the shard with the
    precision's master (a review of 2026-12-05: remainders made it a 2-byte "fp32" gradient)."""
    from simtrain.costs.workload import master_copy_bytes_per_param
    from simtrain.layout.step import resolve

    base = load_scenario("scenarios/llama3_70b_tp_overlap.yaml")
    ws = {}
    for master in ("precision", "remainder", "none"):
        sc = replace(base, training=replace(base.training, master_weights=master))
        ws[master] = estimate_memory(sc).stages[0].optimizer_working_bytes
        copies = master_copy_bytes_per_param(sc, resolve(sc))
        assert (copies > 0) == (master == "precision")
    assert ws["remainder"] == ws["none"] < ws["precision"]
    # with an fp32 gradient buffer the fused step reads 4 B where the update counted 2
    fp32 = load_scenario("scenarios/llama3_70b_tp_overlap.yaml",
                         overrides=["runtime.grad_reduce_dtype=fp32",
                                    "training.master_weights=remainder"])  # fmt: skip
    assert master_copy_bytes_per_param(fp32, resolve(fp32)) == 4 - 2


def _nemo(name: str):
    recs = [r for r in load_records("measured/more_runs_2026-12.yaml") if name in r.id]
    assert len(recs) == 1
    return translate(recs[0])


def test_nemotron_340b_fits_with_apex_bf16_adam() -> None:
    """NeMo 24.07's Nemotron-4-340B run (tp 8, pp 8, vp 12, 128 H100s; it ran): the launcher's
    distributed_fused_adam with dtype bf16 keeps no master copy and bf16 moments. Stage 0 with
    fp32 ones would need 85.6 GiB of 79.2; with the run's optimizer 64.1 GiB, each category as
    the closed form of 5.77e9 parameters a GPU, dp 2: 2 B weights, 2 B gradients, 0 B master,
    2 x 2 B / 2 of moments."""
    tr = _nemo("Nemotron-340B")
    t = tr.scenario.training
    assert (t.optimizer_state_dtype, t.master_weights) == ("bf16", "none")
    st = estimate_memory(tr.scenario).stages[0]
    n, cats = st.breakdown.states.trainable, dict(st.memory_bytes)
    assert cats["master_weights"] == 0
    assert cats["optimizer_states"] == pytest.approx(2 * 2 * n / 2, abs=2)
    assert cats["parameters"] == cats["gradients"] == 2 * n
    assert st.fits and 60 * GIB < st.peak_memory_bytes < 70 * GIB
    fp32 = replace(tr.scenario, training=replace(t, optimizer_state_dtype="fp32",
                                                 master_weights="precision"))  # fmt: skip
    assert not estimate_memory(fp32).stages[0].fits


@pytest.mark.parametrize(("name", "storage"), [
    ("LLAMA2-70B_64gpu", ("fp32", "remainder")),  # distributed_fused_adam, dtype fp32
    ("SFT_LLAMA2-7B", ("fp32", "remainder")),  # the SFT config's optimizer is the same
    ("LoRA_LLAMA2-70B", ("fp32", "precision")),  # the LoRA example's fused_adam
])  # fmt: skip
def test_nemo_rows_take_their_launchers_optimizer(name, storage) -> None:
    t = _nemo(name).scenario.training
    assert (t.optimizer_state_dtype, t.master_weights) == storage


PAO = "--use-precision-aware-optimizer"


@pytest.mark.parametrize(("flags", "storage", "unsupported"), [
    ([], ("fp32", "precision"), None),
    ([PAO], ("fp32", "remainder"), None),
    ([PAO, "--exp-avg-dtype", "bf16", "--exp-avg-sq-dtype", "bf16"], ("bf16", "remainder"), None),
    ([PAO, "--no-store-param-remainders"], ("fp32", "precision"), None),
    (["--exp-avg-dtype", "bf16", "--exp-avg-sq-dtype", "bf16"], ("fp32", "precision"), None),
    # one moment in bf16: not what simtrain stores in 16 bits, said
    ([PAO, "--exp-avg-dtype", "bf16"], ("fp32", "remainder"), "--exp-avg-dtype"),
    ([PAO, "--main-params-dtype", "fp16"], ("fp32", "precision"), "--main-params-dtype"),
    # remainders only beside bf16 weights
    ([PAO, "--fp16"], ("fp32", "precision"), None),
])  # fmt: skip
def test_megatron_precision_aware_optimizer(flags, storage, unsupported) -> None:
    """Megatron-Core's precision-aware optimizer (OptimizerConfig at d98e8a64: store_param_remainders
    on by default with --bf16; --exp-avg-dtype / --exp-avg-sq-dtype) as the two keys; the moments'
    dtypes do nothing without it (a second review of 2026-12-05: the flags were unknown)."""
    from simtrain.apps.importers.megatron import import_megatron_flags

    words = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
             "--seq-length", "128", "--max-position-embeddings", "128", "--micro-batch-size", "1",
             "--global-batch-size", "8", "--use-distributed-optimizer", *flags]  # fmt: skip
    if "--fp16" not in flags:
        words.append("--bf16")
    imp = import_megatron_flags(words, gpus=8)
    t = imp.data["training"]
    got = (t.get("optimizer_state_dtype", "fp32"), t.get("master_weights", "precision"))
    assert got == storage
    said = [u for u in imp.unsupported if "dtype" in u or "remainders" in u]
    assert said == [] if unsupported is None else any(unsupported in u for u in said)


def test_compare_resets_the_storage_a_variant_replaces() -> None:
    """`simtrain compare` on the Nemotron-340B scenario (bf16 moments, no master): the offload and
    QLoRA variants bring their own optimizer; they run with the default storage and say so,
    instead of aborting the whole comparison (a second review of 2026-12-05)."""
    from simtrain.apps.compare.run import compare

    res = compare("scenarios/nemotron_340b_nemo.yaml", ["offload", "lora", "zero3"])
    rows = {r.name: r for r in res.rows}
    assert "training.master_weights=precision" in rows["offload"].overrides
    assert "training.master_weights=precision" in rows["offload"].cumulative_overrides
    assert "optimizer's storage back to its default" in rows["offload"].note
    assert not any("master_weights" in o for o in rows["lora"].overrides)
    # ZeRO-3 has no post-step parameter all-gather: the scenario's overlap of it goes too
    assert "runtime.overlap_param_gather=false" in rows["zero3"].overrides


def test_the_fit_advisor_offers_the_lossless_remainder() -> None:
    """`simtrain memory`'s changes that make it fit: an fp32 master of bf16 weights kept as
    16-bit remainders is lossless (the bf16 weight and its remainder are the fp32 value) and
    saves 2 B a parameter of the optimizer shard: on the Nemotron-340B layout at 3,072 tokens
    with Megatron-Core's fp32 storage (80.3 GiB of 79.2) it fits first, at no cost; never where
    the runtime refuses it (DeepSpeed) or without bf16 weights (fp16)."""
    from simtrain.apps.fit import fit_changes

    sets = ["training.optimizer_state_dtype=fp32", "training.master_weights=precision",
            "training.seq_len=3072"]  # fmt: skip
    advice = fit_changes("scenarios/nemotron_340b_nemo.yaml", sets)
    assert not advice.fits
    best = advice.fixes[0]
    assert best.overrides == ("training.master_weights=remainder",)
    assert best.fits and best.cost <= 1.0
    # a scenario at remainders already is not offered them again
    again = fit_changes("scenarios/nemotron_340b_nemo.yaml",
                        [sets[0], "training.master_weights=remainder", "training.seq_len=8192"])  # fmt: skip
    assert not again.fits and again.fixes
    assert all("master_weights" not in o for f in again.fixes for o in f.overrides)
    # (fp16 at 8,192 tokens: it does not fit, so a remainder would be offered if allowed)
    fp16 = fit_changes(
        "scenarios/nemotron_340b_nemo.yaml",
        [*sets[:2], "training.precision=fp16", "training.seq_len=8192"],
    )
    assert not fp16.fits and fp16.fixes
    assert all("master_weights" not in o for f in fp16.fixes for o in f.overrides)


def test_explain_says_what_the_cost_model_counts() -> None:
    """`memory --explain` takes the gradients' bytes and the master-gradient rule from the cost
    model (costs.memory.buffer_grad_bytes, costs.params.keeps_master_gradients): with an fp32
    reduction buffer the gradients are 4 B and the step casts no master gradient (a read-through
    of 2026-12-05: it printed 2 B and 'fp32 master gradients' beside a 0.08 GB working set)."""
    from simtrain.report.explain import explain_memory

    sets = ["runtime.name=megatron_core", "runtime.fused_optimizer=false",
            "runtime.grad_reduce_dtype=fp32"]  # fmt: skip
    sc = load_scenario("scenarios/zero1_8gpu.yaml", overrides=sets)
    text = "\n".join(explain_memory(sc, estimate_memory(sc)))
    assert "x 4 B (the reduction buffer's dtype)" in text
    assert "fp32 master gradients" not in text
    sc16 = load_scenario("scenarios/zero1_8gpu.yaml",
                         overrides=[*sets[:2], "runtime.grad_reduce_dtype=grad"])  # fmt: skip
    assert "fp32 master gradients" in "\n".join(explain_memory(sc16, estimate_memory(sc16)))


def test_a_variant_keeps_its_own_storage_choice_and_zero3_drops_what_it_has_not() -> None:
    """compare's storage reset is for variants that bring their own optimizer: a user's variant
    that sets a refused storage key stays an error (it was relabelled baseline); and a ZeRO-3
    change drops the scenario's ZeRO-1/2 parameter-gather overlap (spec.scenario
    .runtime_off_overrides), in compare and in the fit advisor, which skipped ZeRO-3 unsaid."""
    from simtrain.apps.compare.run import compare
    from simtrain.apps.fit import fit_changes

    with pytest.raises(ConfigError):
        compare("scenarios/zero3_64gpu.yaml", ["training.master_weights=remainder"])
    sets = ["training.optimizer_state_dtype=fp32", "training.master_weights=precision"]
    advice = fit_changes("scenarios/nemotron_340b_nemo.yaml", sets)
    zero3 = [f for f in advice.fixes if "parallelism.zero_stage=3" in f.overrides]
    assert zero3 and "runtime.overlap_param_gather=false" in zero3[0].overrides


def test_selective_qk_fp32_bytes_closed_form() -> None:
    """(act_norm - act_mm)·sb(q + kv)/t: under amp_bf16 2 B, split by tensor parallelism; none
    in bf16 (act_norm = act_mm) or without q / k norms."""
    from simtrain.costs.activations import selective_qk_fp32_bytes
    from simtrain.spec.model import preset
    from simtrain.spec.scenario import TrainingSpec

    m = preset("qwen3-30b-a3b")
    t = TrainingSpec(seq_len=4096, global_batch=2, micro_batch=2, precision="amp_bf16",
                     recompute="selective")  # fmt: skip
    one = selective_qk_fp32_bytes(m, t, 1)
    assert one == 2 * 2 * 4096 * (m.q_dim + m.kv_dim)
    assert selective_qk_fp32_bytes(m, t, 4) == one // 4
    assert selective_qk_fp32_bytes(m, replace(t, precision="bf16"), 1) == 0
    assert selective_qk_fp32_bytes(replace(m, qk_norm=False), t, 1) == 0
