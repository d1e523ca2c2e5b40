"""DeepSpeed ZeRO-1/2's flat step buffers and what a reserved or device-level memory figure adds
(runtime ``zero_flat_step_buffers``, ``reduce_bucket_elements``; ``costs.memory``), against
closed forms written out here from DeepSpeed's code (runtimes/deepspeed.yaml [zflat]):

* the optimizer step's working memory: the flat 16-bit gradient partition and its fp32 copy,
  (2 + 4) B x trainable / dp, no Adam temporaries (FusedAdam, [fadam]);
* an allocated figure: the peak is the larger of the activation walk's moment and the step's
  (unchanged rule), the reduction's bucket copy is not at either;
* a reserved or nvidia-smi figure: the walk's cached activation blocks stay reserved while the
  bucket copy, min(5e8, trainable) x 2 B, and the step's flat buffers take new segments:
  reported = walk moment + bucket + flat buffers, at most the GPU's memory (where the
  allocator frees its cache and retries: the fit verdict is the allocated one's);
* not for DeepSpeed's BF16 optimizer (fp32-accumulating precision), ZeRO-0/3, other runtimes.
"""

from __future__ import annotations

import pytest

from simtrain.costs.memory import allocator_cached_bytes, estimate_memory
from simtrain.errors import ConfigError
from simtrain.spec.scenario import parse_scenario

MODEL = {"layers": 8, "hidden": 2048, "heads": 16, "ffn_hidden": 8192, "vocab": 50304,
         "max_positions": 2048, "flash_attention": True}  # fmt: skip


def _scenario(reported: str = "nvidia_smi", precision: str = "fp16", zero: int = 1,
              runtime: str = "deepspeed", micro_batch: int = 4, **rt):  # fmt: skip
    return parse_scenario({
        "name": "flat",
        "model": MODEL,
        "hardware": "a100_sxm4_80gb",
        "cluster": {"nodes": 1, "gpus_per_node": 8},
        "training": {"seq_len": 2048, "global_batch": 8 * micro_batch,
                     "micro_batch": micro_batch, "precision": precision, "optimizer": "adamw"},
        "parallelism": {"dp": 8, "tp": 1, "pp": 1, "zero_stage": zero},
        "runtime": {"name": runtime, "memory_reported": reported, **rt},
    }, "flat.yaml")  # fmt: skip


def _stage(sc):
    return estimate_memory(sc).stages[0]


def test_step_working_memory_is_the_flat_partition_and_its_fp32_copy():
    st = _stage(_scenario("allocated"))
    assert st.optimizer_working_bytes == (2 + 4) * -(-st.trainable // 8)
    assert st.allocator_cached_bytes == 0
    plain = _stage(_scenario("allocated", zero_flat_step_buffers=False))
    assert plain.optimizer_working_bytes == 4 * -(-st.trainable // 8)  # the fp32 copy alone


def test_reserved_figure_adds_the_flat_buffers_to_the_cached_walk():
    """reported = walk moment + bucket + flat step buffers; the allocated peak is the larger of
    the walk and the step, so the difference is the cached part, exactly."""
    alloc = _stage(_scenario("allocated"))
    smi = _stage(_scenario("nvidia_smi"))
    res = _stage(_scenario("reserved"))
    p = alloc.trainable
    bucket = min(500_000_000, p) * 2
    flat = alloc.optimizer_working_bytes
    walk = dict(alloc.peak_memory_bytes_by_category)
    assert walk["activations"] == alloc.breakdown.activations  # this layout peaks at the walk
    walk_b = alloc.peak_memory_bytes
    assert res.peak_memory_bytes == walk_b + bucket + flat
    assert res.allocator_cached_bytes == bucket + flat
    assert dict(res.peak_memory_bytes_by_category)["buffers"] == (
        dict(alloc.peak_memory_bytes_by_category)["buffers"] + bucket + flat
    )
    assert sum(dict(res.peak_memory_bytes_by_category).values()) == res.peak_memory_bytes
    # nvidia-smi: the same plus NCCL's buffers (device-level), counted in both moments
    assert smi.peak_memory_bytes - smi.breakdown.nccl_bytes == res.peak_memory_bytes
    # the bucket is capped by the rank's parameters
    small = _stage(_scenario("reserved", reduce_bucket_elements=1000))
    assert small.allocator_cached_bytes == 1000 * 2 + flat


def test_where_the_step_already_peaks_the_cache_is_the_walks_activations():
    """At micro-batch 1 the step's moment can be the allocated peak; the reported figure is
    still walk + flat buffers, never below the allocated peak."""
    for mb in (1, 2, 4):
        alloc = _stage(_scenario("allocated", micro_batch=mb))
        res = _stage(_scenario("reserved", micro_batch=mb))
        assert res.peak_memory_bytes >= alloc.peak_memory_bytes
        assert res.peak_memory_bytes - res.allocator_cached_bytes == alloc.peak_memory_bytes


def test_cached_bytes_closed_form_and_capacity():
    assert allocator_cached_bytes(50, 20, 60, 100) == 10  # walk 50 + flat 20 over peak 60
    assert allocator_cached_bytes(50, 5, 60, 100) == 0  # the step's moment is larger
    assert allocator_cached_bytes(90, 30, 95, 100) == 5  # at most the GPU's memory
    assert allocator_cached_bytes(90, 30, 120, 100) == 0  # an allocated OOM stays one


def test_fit_verdict_is_the_allocated_ones():
    """A layout whose allocated peak fits but whose walk + flat buffers would not: the
    reported figure stops at the GPU's memory, so it still fits."""
    sc = _scenario("reserved", micro_batch=16)
    alloc = _stage(_scenario("allocated", micro_batch=16))
    st = _stage(sc)
    assert alloc.peak_memory_bytes <= st.capacity_bytes
    assert st.peak_memory_bytes <= st.capacity_bytes
    assert estimate_memory(sc).fits


@pytest.mark.parametrize("kw", [
    {"precision": "bf16_fp32_grads"},  # DeepSpeed's BF16 optimizer: no flat copies
    {"zero": 0}, {"zero": 3},
    {"runtime": "megatron_core"},
])  # fmt: skip
def test_no_flat_buffers_elsewhere(kw):
    st = _stage(_scenario("reserved", **kw))
    assert st.allocator_cached_bytes == 0
    # a reserved figure without flat buffers is the allocated one
    assert st.peak_memory_bytes == _stage(_scenario("allocated", **kw)).peak_memory_bytes


def test_bad_bucket_is_a_clear_error():
    with pytest.raises(ConfigError, match="reduce_bucket_elements"):
        _scenario(reduce_bucket_elements=-1)
    with pytest.raises(ConfigError, match="zero_flat_step_buffers"):
        _scenario(zero_flat_step_buffers="yes")
