"""Megatron's passes over the gradients besides the optimizer's update and its mixed-precision
optimizer's copies (``costs.workload.grad_passes_ns``, ``master_copy_bytes_per_param``;
runtimes/megatron_core.yaml [gpass] [mcopy], runtimes/megatron_lm_2021.yaml [opt])."""

from __future__ import annotations

from dataclasses import replace

import pytest

from simtrain.apps.simulate import simulate_scenario
from simtrain.costs.workload import grad_passes_ns, master_copy_bytes_per_param
from simtrain.layout.step import resolve
from simtrain.spec.scenario import parse_scenario

PASSES = (
    "zero_grad_buffer",
    "check_nan_in_grad",
    "scale_grads_before_reduce",
    "clip_grad_norm",
    "master_copies",
)


def _scenario(dp: int = 4, runtime: str = "megatron_core", zero: int = 1,
              precision: str = "bf16_fp32_grads", reduce: str = "fp32"):  # fmt: skip
    """A Megatron-LM --bf16 run: the gradient buffer and its reduction in fp32."""
    return parse_scenario(
        {"name": "x", "hardware": "h100_sxm5_80gb",
         "runtime": {"name": runtime, "grad_reduce_dtype": reduce},
         "model": {"layers": 2, "hidden": 1024, "heads": 8, "ffn_hidden": 4096, "vocab": 1024,
                   "max_positions": 1024, "mlp": "swiglu", "bias": False},
         "training": {"seq_len": 1024, "global_batch": dp, "micro_batch": 1,
                      "precision": precision},
         "parallelism": {"dp": dp, "zero_stage": zero},
         "cluster": {"nodes": 1, "gpus_per_node": dp}}, "t.yaml")  # fmt: skip


def _without_passes(sc):
    return replace(sc, runtime_profile=replace(sc.runtime, **dict.fromkeys(PASSES, False)))


def _ns(n_bytes: float, sc) -> float:
    hw = sc.hardware
    return 1e9 * n_bytes / (hw.hbm_bandwidth_bytes_per_s * hw.efficiency.memory_bound)


def test_megatron_core_passes_by_hand():
    """dp 4: zero (write), NaN-check norm (read) and 1/dp scale (read + write) of all 1,000
    fp32 gradients, and of the 250 of the shard the norm (read) and the master weights' read
    for their copy into the 16-bit parameters (the main grads are views of the fp32 buffer):
    (4 x 1,000 + 2 x 250) x 4 B."""
    sc = _scenario()
    step = resolve(sc)
    assert master_copy_bytes_per_param(sc, step) == 4
    assert grad_passes_ns(sc, step, 1000, 250) == pytest.approx(
        _ns((4 * 1000 + 2 * 250) * 4, sc), abs=1)  # fmt: skip
    # one GPU: no 1/dp scale (gradient_scaling_factor 1), the rest as before
    one = _scenario(dp=1, zero=0)
    assert grad_passes_ns(one, resolve(one), 1000, 1000) == pytest.approx(
        _ns((2 * 1000 + 2 * 1000) * 4, one), abs=1)  # fmt: skip


def test_megatron_2021_float16_optimizer_by_hand():
    """Megatron-LM 2021, fp16 (local DDP, its 16-bit gradient buffer; no ZeRO, so the shard is
    all 1,000): zero the buffer (2 B), divide it by dp (2 + 2 B), the clip's norm of the fp32
    main grads (4 B), and the Float16 optimizer's copies: main_grad.float() (2 + 4 B), the
    update's read of those fp32 grads beyond the 2 B the update is charged (2 B), the unscale
    and inf check (4 + 4 B), the master weights' read for the 16-bit copy (4 B)."""
    sc = _scenario(runtime="megatron_lm_2021", zero=0, precision="fp16", reduce="grad")
    step = resolve(sc)
    assert master_copy_bytes_per_param(sc, step) == (2 + 4) + 2 + (4 + 4) + 4
    assert grad_passes_ns(sc, step, 1000, 1000) == pytest.approx(
        _ns(1000 * (2 + 4 + 4 + 20), sc), abs=1)  # fmt: skip
    # one GPU: Megatron-LM 2021's allreduce_gradients still divides its buffer (by 1)
    one = _scenario(dp=1, runtime="megatron_lm_2021", zero=0, precision="fp16", reduce="grad")
    assert one.runtime.scale_grads_at_dp1
    assert grad_passes_ns(one, resolve(one), 1000, 1000) == pytest.approx(
        _ns(1000 * (2 + 4 + 4 + 20), one), abs=1)  # fmt: skip


def test_megatron_core_bf16_buffer_copies_by_hand():
    """Megatron-Core with a bf16 gradient buffer (--grad-reduce-in-bf16): the distributed
    optimizer's main grads are fp32 copies of its shard (2 + 4 B), read by the update (4 - 2 B
    beyond the charged 2), no unscale (bf16), and the master read for the copy_ (4 B)."""
    sc = _scenario(precision="bf16", reduce="grad")
    assert master_copy_bytes_per_param(sc, resolve(sc)) == (2 + 4) + 2 + 4


def test_no_master_copies_without_master_weights_or_on_the_host():
    """fp32 training has no master copy; an offloaded optimizer steps on the CPU."""
    fp32 = _scenario(runtime="megatron_lm_2021", zero=0, precision="fp32", reduce="grad")
    assert master_copy_bytes_per_param(fp32, resolve(fp32)) == 0
    assert fp32.runtime.master_copies
    sc = _scenario(runtime="megatron_lm_2021", zero=0, precision="bf16", reduce="grad")
    off = replace(sc, training=replace(sc.training, offload=replace(sc.training.offload,
                                                                    optimizer=True)))  # fmt: skip
    assert master_copy_bytes_per_param(sc, resolve(sc)) > 0
    assert grad_passes_ns(off, resolve(off), 1000, 1000) == 0  # the host's step: no GPU pass


def test_other_runtimes_make_no_such_passes():
    for name in ("deepspeed", "nanotron", "torchtitan", "pytorch_eager"):
        sc = _scenario(runtime=name)
        assert grad_passes_ns(sc, resolve(sc), 10**6, 10**5) == 0, name


def test_the_step_pays_them_once_with_the_optimizer():
    """One stage, no pipeline: the step is longer by exactly the passes over the rank's
    trainable parameters (the shard: 1/4 of them under the distributed optimizer)."""
    sc = _scenario()
    with_, without = simulate_scenario(sc), simulate_scenario(_without_passes(sc))
    trainable = with_.memory.stages[0].trainable
    expected = grad_passes_ns(sc, resolve(sc), trainable, trainable // 4)
    assert expected > 0
    delta_ns = round(1e9 * (with_.metrics.step_time_s - without.metrics.step_time_s))
    assert delta_ns == expected


@pytest.mark.parametrize("overrides", [[], ["parallelism.cp=2", "parallelism.dp=8"]],
                         ids=["dp16", "dp8-cp2"])  # fmt: skip
def test_the_step_updates_the_shard_the_memory_model_holds(overrides) -> None:
    """The optimizer step (and the norm pass) runs over the parameters whose fp32 master
    weights and Adam states the memory model puts on the rank: Mixtral 8x7B, ep 8, ZeRO-1:
    the dense part over dp x cp, the experts over dp x cp / ep. With cp 2 the step once
    divided by dp alone and updated twice the parameters (re-read review)."""
    from simtrain.costs.memory import estimate_memory
    from simtrain.costs.workload import rank_optimizer_shard
    from simtrain.spec.scenario import load_scenario

    sc = load_scenario("scenarios/mixtral_8x7b_ep8.yaml", ["parallelism.zero_stage=1", *overrides])
    st = estimate_memory(sc).stages[0]
    cats = dict(st.memory_bytes)
    shard = rank_optimizer_shard(sc, resolve(sc), 0, st.trainable)
    assert shard * 8 == cats["optimizer_states"] and shard * 4 == cats["master_weights"]
