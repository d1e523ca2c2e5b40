"""A measured-runs file's typos inside a record's sections are said, not a silently different
run (a review, 2026-12-07: ``zero_stag: 3`` ran as ZeRO-0 and ``step_time_ms`` dropped the
metric without a word; ``recompute: true`` and a list for ``gpu`` were read as something else):
an unread key is listed with the record's assumptions, a value of the wrong type is the
record's skip reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from simtrain.apps.validate.records import (
    SECTION_KEYS,
    load_record_files,
    load_records,
    resolve_paths,
)
from simtrain.errors import ConfigError

GOOD = """- id: lab_a100_gpt_1
  model: {layers: 12, hidden: 768, heads: 12, seq_len: 1024, vocab: 50304}
  training: {global_batch: 32, micro_batch: 8, precision: bf16, optimizer: adamw}
  parallelism: {tp: 1, pp: 1, dp: 4, zero_stage: 3}
  hardware: {gpu: A100-SXM4-40GB, num_gpus: 4}
  measured: {step_time_s: 0.3, tokens_per_s: 109000, note_of_mine: kept}
"""


def _load(tmp_path: Path, text: str):
    f = tmp_path / "runs.yaml"
    f.write_text(text)
    return load_records(f)


def test_a_record_in_the_schema_loads(tmp_path: Path) -> None:
    (r,) = _load(tmp_path, GOOD)
    assert r.parallelism["zero_stage"] == 3 and r.measured["note_of_mine"] == "kept"


@pytest.mark.parametrize("old,new,key,hint", [
    ("zero_stage: 3", "zero_stag: 3", "parallelism.zero_stag", "did you mean 'zero_stage'"),
    ("optimizer: adamw", "optimzer: adamw", "training.optimzer", "did you mean 'optimizer'"),
    ("heads: 12,", "head: 12,", "model.head", "did you mean 'heads'"),
    ("step_time_s: 0.3", "step_time_ms: 300", "measured.step_time_ms", "'step_time_s'"),
    ("tokens_per_s: 109000", "tokens_per_sec: 109000", "measured.tokens_per_sec",
     "'tokens_per_s'"),
])  # fmt: skip
def test_a_typo_is_listed_with_the_records_assumptions(tmp_path, old, new, key, hint) -> None:
    """A key validate does not read is named, with the nearest it does, among the record's
    assumptions; the record is still compared, and the file's other records with it (a later
    schema's records may carry keys this one does not know: never a run-ending error)."""
    from simtrain.apps.validate.translate import translate

    assert old in GOOD
    (r,) = _load(tmp_path, GOOD.replace(old, new))
    assert any(u.startswith(key) and hint in u for u in r.unread), r.unread
    t = translate(r)
    if hasattr(t, "assumptions"):
        assert any(n.startswith(f"not read: {key}") for n in t.assumptions)
    else:  # the typo left out what a scenario needs (model.heads): the skip names it
        assert f"(not read: {key}" in t.reason and hint in t.reason


@pytest.mark.parametrize("old,new,key", [
    ("gpu: A100-SXM4-40GB", "gpu: [A100-SXM4-40GB]", "hardware.gpu"),
    ("optimizer: adamw}", "optimizer: adamw, recompute: true}", "training.recompute"),
])  # fmt: skip
def test_a_value_of_the_wrong_type_is_the_records_skip(tmp_path, old, new, key) -> None:
    from simtrain.apps.validate.translate import translate

    (r,) = _load(tmp_path, GOOD.replace(old, new))
    skip = translate(r)
    assert f"not readable: {key} must be text" in skip.reason


def test_every_shipped_record_is_in_the_schema() -> None:
    """No shipped record has a key validate does not read, or a value of the wrong type (the
    closing note's 0 of 1,023)."""
    records = load_record_files(resolve_paths(None))
    assert len(records) > 1000
    assert [r.id for r in records if r.unread or r.invalid] == []
    used = {k for r in records for k in r.parallelism}
    assert used <= set(SECTION_KEYS["parallelism"])


def test_a_null_or_a_value_of_the_wrong_type_in_a_scenario_says_what_it_got() -> None:
    """``--set training.micro_batch=null`` named no value, ``training.recompute=yes`` (YAML's
    true) no allowed values (a bad-input review, 2026-12-07)."""
    from simtrain.spec.scenario import load_scenario

    with pytest.raises(ConfigError, match=r"training.micro_batch: must be an integer \(got null\)"):
        load_scenario("scenarios/ddp_8gpu.yaml", ["training.micro_batch=null"])
    with pytest.raises(ConfigError, match=r"must be a string \(got True\); allowed: none \| "
                       r"selective \| full"):  # fmt: skip
        load_scenario("scenarios/ddp_8gpu.yaml", ["training.recompute=yes"])
