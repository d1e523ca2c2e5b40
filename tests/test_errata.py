"""Errata (apps/validate/errata.py): a printed cell that the run's own code contradicts is read
with the code's value, listed as an assumption, and never applied to a cell it was not written
for."""

from __future__ import annotations

from dataclasses import replace

import pytest

from simtrain.apps.validate import SkipReason, translate
from simtrain.apps.validate.errata import ERRATA, ErratumMismatch, apply_errata, errata_for
from simtrain.apps.validate.translate import Translation


def test_every_erratum_names_a_record_and_its_printed_cell(default_records):
    """Each erratum's record exists and still holds the printed value the erratum corrects."""
    assert ERRATA
    for e in ERRATA:
        rec = default_records[e.record_id]
        section = getattr(rec, e.section)
        assert section.get(e.key) == e.printed, (e.record_id, e.key)
        assert e.as_run != e.printed


def test_apply_errata_leaves_other_records_alone(default_records):
    rec = default_records["mbridge2604_GB300_LLAMA3_70B_FP8MX_64gpu"]
    notes: list[str] = []
    assert errata_for(rec.id) == ()
    assert apply_errata(rec, notes) is rec
    assert notes == []


def test_a_changed_cell_is_refused_not_overwritten(default_records):
    """An erratum written for "MBS 2" does not apply to a record that now says 4: validate
    skips the row, naming the erratum, instead of silently replacing a value it never saw."""
    rec = default_records["mbridge260201_GB300_LLAMA3_70B_FP8MX_64gpu"]
    changed = replace(rec, training={**rec.training, "micro_batch": 4})
    with pytest.raises(ErratumMismatch, match="micro_batch"):
        apply_errata(changed, [])
    out = translate(changed)
    assert isinstance(out, SkipReason)
    assert "erratum does not match" in out.reason


@pytest.mark.parametrize("prec", ["FP8MX", "NVFP4"])
def test_megatron_bridge_26_02_01_gb300_llama3_70b_rows_run_their_config(default_records,
                                                                        prec):  # fmt: skip
    """The archive prints these two rows with the FP8-CS row's MBS 2 and VP n/a (NVFP4: PP 1);
    Megatron-Bridge v0.3.1's config ran pp 4, vp 5, MBS 1. Read so, they fit (70B unsharded
    at pp 1 does not) and carry the erratum among their assumptions."""
    rec = default_records[f"mbridge260201_GB300_LLAMA3_70B_{prec}_64gpu"]
    tr = translate(rec)
    assert isinstance(tr, Translation)
    p, t = tr.scenario.parallelism, tr.scenario.training
    assert (p.tp, p.pp, p.dp, p.virtual_stages, t.micro_batch) == (1, 4, 16, 5, 1)
    assert any(a.startswith("erratum: ") and "v0.3.1" in a for a in tr.assumptions)
    from simtrain.apps.simulate import simulate_scenario

    assert simulate_scenario(tr.scenario).memory.fits


def test_megatron_bridge_26_02_01_h100_qwen3_30b_runs_v0_3_1s_preset(default_records):
    """Printed with the 26.02 row's pp 2, vp 12, ep 8 (v0.3.0's preset), measured 1.77x that
    row, as the 26.04 rows with v0.3.1's pp 1, ep 16: read with v0.3.1's layout."""
    rec = default_records["mbridge260201_H100_Qwen3_30B_a3B_FP8CS_16gpu"]
    tr = translate(rec)
    assert isinstance(tr, Translation)
    p = tr.scenario.parallelism
    assert (p.tp, p.pp, p.dp, p.ep, p.virtual_stages) == (1, 1, 16, 16, 1)
    assert any(a.startswith("erratum: ") and "virtual_stages 12 -> n/a" in a
               for a in tr.assumptions)  # fmt: skip
