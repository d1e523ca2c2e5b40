"""NeMo's and Megatron-Bridge's fine-tuning rows run on packed SQuAD (validate's source
convention, ``SourceConvention.finetune_packed_sample_len``): a fine-tuning record of those
sources gets ``training.packed_sample_len``, a pre-training record or another source's does not,
and a record's own length wins. The reading is checked against the one independent number the
tables carry: the LoRA rows' model FLOPs per token (Megatron-Bridge's packed-SQuAD LoRA count,
flop_utils.py l.983-1007 at 067f987d: 2/3 of 6·(N − V·h) plus the samples' own attention) sit
at 278-279 GFLOP, where one 4,096-token causal row per micro-batch would count 294."""

from __future__ import annotations

from dataclasses import replace

import pytest

from simtrain.apps.validate import translate
from simtrain.apps.validate.conventions import SOURCES
from simtrain.apps.validate.translate import Translation
from simtrain.spec.model import PRESETS

SQUAD_LEN = SOURCES["nemo"].finetune_packed_sample_len[0]  # type: ignore[index]

FINETUNE = ("nemo2407_h100_fp8_finetune_SFT_LLAMA2-7B_8gpu",
            "nemo2407_h100_fp8_finetune_LoRA_LLAMA2-70B_8gpu",
            "mbridge2606_SFT_H100_LLAMA3_70B_FP8CS_32gpu",
            "mbridge2606_LoRA_GB200_LLAMA3_70B_FP8MX_8gpu")  # fmt: skip
PRETRAIN = ("nemo2407_h100_fp8_LLAMA2-70B_64gpu", "mbridge2604_H100_LLAMA3_70B_FP8CS_64gpu")
# The 26.06 LoRA table (docs/performance-summary-archive.md at 067f987d): model TFLOP/s per GPU
# and tokens/s per GPU of its five rows.
LORA_ROWS = ((2086, 7481), (2072, 7447), (1731, 6206), (1663, 5958), (735, 2643))


def _translated(rec) -> Translation:
    tr = translate(rec)
    assert isinstance(tr, Translation), tr
    return tr


@pytest.mark.parametrize("rid", FINETUNE)
def test_a_finetune_row_runs_packed_squad(default_records, rid):
    tr = _translated(default_records[rid])
    assert tr.scenario.training.packed_sample_len == SQUAD_LEN
    assert tr.scenario.training.kv_len == SQUAD_LEN  # attention within each sample
    assert tr.scenario.training.seq_len == 4096  # the linears still see the whole row
    assert any("packed SQuAD" in a for a in tr.assumptions)


@pytest.mark.parametrize("rid", PRETRAIN)
def test_a_pretraining_row_is_one_sequence_a_row(default_records, rid):
    tr = _translated(default_records[rid])
    assert tr.scenario.training.packed_sample_len == 0
    assert not any("packed SQuAD" in a for a in tr.assumptions)


def test_the_records_own_length_wins(default_records):
    rec = default_records[FINETUNE[0]]
    tr = _translated(replace(rec, training={**rec.training, "packed_sample_len": 512}))
    assert tr.scenario.training.packed_sample_len == 512
    assert not any("packed SQuAD" in a for a in tr.assumptions)


def test_another_sources_finetune_row_is_not_packed(default_records):
    """The convention is NeMo's and Megatron-Bridge's recipes': a MosaicML row said to be an
    SFT stays one sequence a row."""
    rec = default_records["mpt_a100_80gb_amp_bf16_7b_s4096_n8_mbs16_ga2_gbs256_acTrue"]
    tr = _translated(replace(rec, training={**rec.training, "finetune": "SFT"}))
    assert tr.scenario.training.packed_sample_len == 0


def test_packing_makes_the_finetune_step_faster(default_records):
    """The packed row's attention is l/s of the unpacked one's: its predicted tokens/s rise."""
    from simtrain.apps.simulate import simulate_scenario

    sc = _translated(default_records["mbridge2606_LoRA_H100_LLAMA3_70B_FP8CS_8gpu"]).scenario
    unpacked = replace(sc, training=replace(sc.training, packed_sample_len=0))
    fast, slow = (simulate_scenario(x, detail=False) for x in (sc, unpacked))
    assert fast.metrics.step_time_s < slow.metrics.step_time_s


def test_the_lora_tables_flops_say_short_packed_samples():
    """Megatron-Bridge's LoRA rows count 2/3 of 6·(N − V·h) (Llama 3 70B: 278.0 GFLOP a token)
    plus each sample's causal attention, 6·L·h·l a token for samples of l tokens (three passes
    of QK^T and PV, 2 FLOPs a multiply-add, over l/2 keys on average). Every row's count is below the 294.1
    one causal 4,096-token row would give, and the sample length it implies (mean over the five
    rows) is within a factor 1.5 of the convention's."""
    m = PRESETS["llama3-70b"]
    frozen = 6 * (m.total_params() - m.vocab * m.hidden) * 2 / 3
    per_token_of_l = 6 * m.layers * m.hidden
    assert frozen / 1e9 == pytest.approx(278.01, abs=0.01)
    unpacked = frozen + per_token_of_l * 4096
    assert unpacked / 1e9 == pytest.approx(294.12, abs=0.01)
    implied = []
    for tflops, tokens in LORA_ROWS:
        per_token = tflops * 1e12 / tokens
        assert frozen < per_token < unpacked - 10e9
        implied.append((per_token - frozen) / per_token_of_l)
    mean = sum(implied) / len(implied)
    assert SQUAD_LEN / 1.5 < mean < SQUAD_LEN * 1.5
