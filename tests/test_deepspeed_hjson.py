"""DeepSpeed reads its config with hjson (deepspeed/runtime/config.py ``hjson.load``), so a
ds_config may carry comments, trailing commas and a BOM; simtrain's importer takes those out
outside strings (a bad-input review, 2026-12-07: such a config was refused as "not JSON")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simtrain.apps.importers.deepspeed import import_deepspeed, relaxed_json
from simtrain.errors import ConfigError

PLAIN = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
         "zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}  # fmt: skip


def test_comments_trailing_commas_and_a_bom_read_as_the_plain_config() -> None:
    text = ('\ufeff{ // DeepSpeed\n "train_micro_batch_size_per_gpu": 4, # per GPU\n'
            ' /* accumulate */ "gradient_accumulation_steps": 2,\n'
            ' "zero_optimization": {"stage": 3,},\n "bf16": {"enabled": true},\n}')  # fmt: skip
    assert json.loads(relaxed_json(text)) == PLAIN
    # strings keep what looks like comments or trailing commas
    assert json.loads(relaxed_json('{"a": "x,}//y#z /* */", "b": [1, 2, ],}')) == {
        "a": "x,}//y#z /* */", "b": [1, 2]}  # fmt: skip


def test_the_importer_reads_it_and_still_refuses_what_is_not_json(tmp_path: Path) -> None:
    f = tmp_path / "ds.json"
    f.write_text('{ // c\n "train_micro_batch_size_per_gpu": 4,\n "gradient_accumulation_steps": 2,'
                 '\n "zero_optimization": {"stage": 3},\n "bf16": {"enabled": true},\n}')  # fmt: skip
    imp = import_deepspeed(f, "gpt2", gpus=8)
    assert imp.data["parallelism"]["zero_stage"] == 3
    f.write_text("{stage: 3}")  # hjson's quoteless keys: not read
    with pytest.raises(ConfigError, match="DeepSpeed reads hjson"):
        import_deepspeed(f, "gpt2", gpus=8)
