"""Packed sequences (``training.packed_sample_len``): a variable-length flash kernel keeps
attention within each sample of a row, so a query sees its own sample's keys. Checked against
closed forms: the attention core is the samples' l x l blocks (l/s of the row's s x s), causal
within each; everything else is the row's; bad combinations are named errors."""

from __future__ import annotations

import pytest

from simtrain.apps.simulate import simulate_scenario
from simtrain.costs.compute import block_flops, flash_kernel_flops, model_flops_per_step
from simtrain.errors import ConfigError
from simtrain.spec.scenario import parse_scenario

S = 4096


def scenario(packed: int | None = 256, *, flash: bool = True, **over):
    training = {"seq_len": S, "global_batch": 16, "micro_batch": 2, "precision": "bf16"}
    if packed is not None:
        training["packed_sample_len"] = packed
    model = {"preset": "llama3-8b", "flash_attention": flash, **over.pop("model", {})}
    training.update(over.pop("training", {}))
    return parse_scenario({
        "name": "packed", "hardware": "h100_sxm5_80gb", "runtime": "megatron_core",
        "model": model, "training": training,
        "parallelism": {"dp": 8, "tp": 1, "pp": 1, **over.pop("parallelism", {})},
    }, "packed.yaml")  # fmt: skip


@pytest.mark.parametrize("n", [1, 256, 1000, S])
def test_keys_and_causal_span_are_the_samples(n):
    t = scenario(n).training
    assert (t.kv_len, t.causal_len) == (n, n)
    u = scenario(None).training
    assert (u.kv_len, u.causal_len) == (S, S)


@pytest.mark.parametrize("n", [256, 1000])
def test_attention_core_is_the_samples_blocks(n):
    """core = 4·b·s·kv·q: packed, n/s of the row's; the flash forward does half of it."""
    pk, un = scenario(n), scenario(None)
    cp, cu = (block_flops(x.model, x.training).attention_core for x in (pk, un))
    assert cp == pytest.approx(cu * n / S, rel=1e-12)
    assert cp == pytest.approx(4 * 2 * S * n * pk.model.q_dim, rel=1e-12)
    fwd, bwd = flash_kernel_flops(cp, pk.training)
    assert fwd == pytest.approx(cp / 2, rel=1e-12)
    assert bwd > fwd
    # the rest of the block is the row's
    rest = block_flops(pk.model, pk.training).forward - cp
    assert rest == pytest.approx(block_flops(un.model, un.training).forward - cu, rel=1e-12)


def test_model_flops_lose_exactly_the_cross_sample_attention():
    """Forward core once, input gradient twice: 3 x layers x (core_row - core_packed) per
    micro-batch, over global_batch / micro_batch micro-batches."""
    pk, un = scenario(256), scenario(None)
    cp, cu = (block_flops(x.model, x.training).attention_core for x in (pk, un))
    want = 3 * pk.model.layers * (cu - cp) * 16 / 2
    assert model_flops_per_step(un) - model_flops_per_step(pk) == pytest.approx(want, rel=1e-9)


def test_packing_speeds_the_step_and_keeps_the_memory():
    pk, un = (simulate_scenario(x, detail=False) for x in (scenario(256), scenario(None)))
    assert pk.metrics.step_time_s < un.metrics.step_time_s
    assert pk.memory.peak_memory_bytes == un.memory.peak_memory_bytes


def test_one_sample_a_row_is_the_unpacked_step():
    """l = seq_len, and 0 (the default, written out), are the unpacked step."""
    for same in (scenario(S), scenario(0)):
        a, b = (simulate_scenario(x, detail=False) for x in (same, scenario(None)))
        assert a.metrics.step_time_s == b.metrics.step_time_s
        assert a.memory.peak_memory_bytes == b.memory.peak_memory_bytes


@pytest.mark.parametrize("kw, words", [
    ({"packed": S + 1}, "must fit its row"),
    ({"packed": -1}, "0 (one sequence a row) or a positive length"),
    ({"packed": 256, "flash": False}, "model.flash_attention is false"),
    ({"packed": 256, "parallelism": {"dp": 4, "cp": 2}}, "parallelism.cp = 2"),
    ({"packed": 256, "model": {"sliding_window": 512}}, "model.sliding_window = 512"),
    ({"packed": 256, "training": {"peft": {"method": "prefix"}}}, "peft.method = prefix"),
    ({"packed": 256, "training": {"peft": {"method": "prompt"}}}, "peft.method = prompt"),
])  # fmt: skip
def test_bad_combinations_are_named_errors(kw, words):
    packed = kw.pop("packed")
    with pytest.raises(ConfigError, match="training.packed_sample_len") as err:
        scenario(packed, **kw)
    assert words in str(err.value)


def test_a_text_length_is_refused():
    with pytest.raises(ConfigError, match="training.packed_sample_len"):
        scenario("256")  # type: ignore[arg-type]


def test_validate_reads_a_records_packed_sample_len(default_records):
    """A record's training.packed_sample_len reaches its scenario, on the importer path
    (Megatron-Bridge through `simtrain import megatron`) and off it (a MosaicML row), with an
    assumption saying so; a text there is a skip naming the key."""
    from dataclasses import replace

    from simtrain.apps.validate import SkipReason, translate
    from simtrain.apps.validate.translate import Translation

    for rid in ("mbridge2604_H100_LLAMA3_70B_FP8CS_64gpu",
                "mpt_a100_80gb_amp_bf16_7b_s4096_n8_mbs16_ga2_gbs256_acTrue"):  # fmt: skip
        rec = default_records[rid]
        packed = replace(rec, training={**rec.training, "packed_sample_len": 512})
        tr = translate(packed)
        assert isinstance(tr, Translation), tr
        assert tr.scenario.training.packed_sample_len == 512
        assert any(a.startswith("packed sequences: samples of 512") for a in tr.assumptions)
        bad = translate(replace(rec, training={**rec.training, "packed_sample_len": "short"}))
        assert isinstance(bad, SkipReason) and "packed_sample_len" in bad.reason
