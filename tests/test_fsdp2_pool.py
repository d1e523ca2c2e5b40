"""FSDP2's all-gather pool in a reserved memory figure (``costs.memory.fsdp2_gather_pool_bytes``;
runtimes/torchtitan.yaml [mem]): the gathered parameters live on the copy-in stream and go back
to its pool, which the compute stream cannot reuse (torch 2.13 _fsdp_collectives.py l.336-351,
419; _fsdp_param_group.py l.430-432), so torchtitan's reserved peak holds that pool's peak
beside the compute stream's: checked against the closed form for Llama 3 8B on 8 GPUs."""

from __future__ import annotations

from dataclasses import replace

from simtrain.apps.simulate import simulate_scenario
from simtrain.costs.memory import estimate_memory
from simtrain.spec.scenario import parse_scenario

ROOT = 2 * 128256 * 4096 + 4096  # tok_embeddings, output, final norm: 1,050,677,248
BLOCK = 4096 * (4096 + 1024 + 1024 + 4096) + 3 * 4096 * 14336 + 2 * 4096  # 218,112,000


def _scenario(reported: str = "reserved", runtime: str = "torchtitan", dp: int = 8,
              zero: int = 3, hardware: str = "h100_sxm5_80gb", layers: int = 32, pp: int = 1,
              precision: str = "bf16"):  # fmt: skip
    return parse_scenario({
        "name": "fsdp2", "model": {"preset": "llama3-8b", "layers": layers},
        "hardware": hardware, "runtime": {"name": runtime, "memory_reported": reported},
        "training": {"seq_len": 8192, "global_batch": dp * 2 * pp, "micro_batch": 1,
                     "precision": precision, "recompute": "selective_op"},
        "parallelism": {"dp": dp, "zero_stage": zero, "pp": pp},
        "cluster": {"nodes": 1, "gpus_per_node": dp * pp},
    }, "t.yaml")  # fmt: skip


def test_the_pool_is_the_root_and_the_first_block_by_hand() -> None:
    """The root group (embedding, output, norm: torchtitan's fully_shard(model)) with its cast
    shard, and block 0 prefetched beside it, in bf16: 2 x (P_r + P_r/8 + P_b) = 2.80 GB."""
    assert BLOCK == 218_112_000 and ROOT == 1_050_677_248
    st = estimate_memory(_scenario()).stages[0]
    assert st.gather_pool_bytes == 2 * (ROOT + ROOT // 8 + BLOCK) == 2_800_247_808
    # two layers: the same pair (the root group first)
    two = _scenario(layers=2)
    assert estimate_memory(two).stages[0].gather_pool_bytes == 2 * (ROOT + ROOT // 8 + BLOCK)


def test_a_middle_pipeline_stage_pairs_two_blocks() -> None:
    """pp 4 (torchtitan: reshard_after_forward False, ZeRO-2), dp 2: a middle stage has no root
    parameters, its pool is two blocks and one block's cast shard, 2 x (2 P_b + P_b/2); the
    first stage pairs its root group (the embedding) with block 0."""
    sc = _scenario(dp=2, zero=2, pp=4)
    stages = estimate_memory(sc).stages
    assert stages[1].gather_pool_bytes == 2 * (2 * BLOCK + BLOCK // 2)
    emb = 128256 * 4096
    assert stages[0].gather_pool_bytes == 2 * (emb + emb // 2 + BLOCK)


def test_pure_bf16_parameters_stage_no_cast_shard() -> None:
    """bf16_pure: the shards are already bf16 (no fp32 master), so FSDP2 stages no param-dtype
    cast beside the gathered groups: 2 x (P_r + P_b) = 2,537,578,496 B."""
    sc = _scenario(precision="bf16_pure")
    assert estimate_memory(sc).stages[0].gather_pool_bytes == 2 * (ROOT + BLOCK) == 2_537_578_496


def test_fp32_parameters_stage_no_cast_shard() -> None:
    """Without a param_dtype (fp32 training) FSDP2 gathers the fp32 shards themselves: the pool
    is the two groups' gathered parameters in fp32, 4 x (P_r + P_b)."""
    sc = _scenario(precision="fp32")
    assert estimate_memory(sc).stages[0].gather_pool_bytes == 4 * (ROOT + BLOCK)


def test_the_reserved_peak_grows_by_the_pool_and_the_timeline_holds_it() -> None:
    res, alloc = _scenario(), _scenario("allocated")
    r, a = estimate_memory(res), estimate_memory(alloc)
    pool = r.stages[0].gather_pool_bytes
    assert a.stages[0].gather_pool_bytes == 0
    assert r.peak_memory_bytes - a.peak_memory_bytes == pool
    cats_r, cats_a = dict(r.stages[0].memory_bytes), dict(a.stages[0].memory_bytes)
    assert cats_r["buffers"] - cats_a["buffers"] == pool
    assert {k: v for k, v in cats_r.items() if k != "buffers"} == {
        k: v for k, v in cats_a.items() if k != "buffers"}  # fmt: skip
    # the simulated trace holds the pool the whole step: its peak grows by the same bytes
    tr, ta = simulate_scenario(res).timeline, simulate_scenario(alloc).timeline
    assert tr.peak_memory_bytes(0) - ta.peak_memory_bytes(0) == pool


def test_no_pool_where_fsdp2_does_not_gather() -> None:
    """An allocated figure, one GPU (nothing sharded), DeepSpeed's ZeRO-3 (no copy-out: its
    gathered parameters are the parameters), ZeRO-1 (nothing gathered per group)."""
    for sc in (_scenario("allocated"), _scenario(dp=1), _scenario(runtime="deepspeed"),
               _scenario(zero=1)):  # fmt: skip
        assert estimate_memory(sc).stages[0].gather_pool_bytes == 0


def test_the_pool_never_turns_a_fit_into_an_out_of_memory() -> None:
    """Where the GPU runs out the allocator frees its cache and retries: the pool takes at most
    what the capacity leaves, so the fit verdict is the allocated figure's (a GPU with room
    for half the pool; one a byte short of the allocated peak)."""
    res, alloc = _scenario(), _scenario("allocated")
    allocated = estimate_memory(alloc).peak_memory_bytes
    pool = estimate_memory(res).stages[0].gather_pool_bytes
    for capacity, fits, kept in ((allocated + pool // 2, True, pool // 2),
                                 (allocated - 1, False, 0)):  # fmt: skip
        small = replace(res, hardware=replace(res.hardware, memory_bytes=capacity))
        small_alloc = replace(alloc, hardware=small.hardware)
        r, a = estimate_memory(small), estimate_memory(small_alloc)
        assert r.fits == a.fits == fits
        assert r.stages[0].gather_pool_bytes == kept
        assert r.peak_memory_bytes == a.peak_memory_bytes + kept
