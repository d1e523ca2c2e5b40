"""``simtrain compare`` side by side lists a built-in variant that does not apply to the
scenario as skipped, with its reason, and compares the others (a review, 2026-12-07: half_batch
at micro-batch 1 aborted every comparison of the shipped GPT-3 scenario)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simtrain.apps.compare.run import compare
from simtrain.apps.compare.tables import table
from simtrain.errors import ConfigError

GPT3 = Path(__file__).resolve().parent.parent / "scenarios" / "gpt3_175b_1024gpu.yaml"


def test_an_inapplicable_builtin_is_skipped_and_the_rest_compared() -> None:
    comp = compare(GPT3, ["half_batch", "amp", "checkpointing"])
    assert [r.name for r in comp.rows] == ["baseline", "amp", "checkpointing"]
    assert [n for n, _ in comp.skipped] == ["half_batch"]
    assert "even training.micro_batch" in comp.skipped[0][1]
    assert comp.to_json()["skipped"][0]["variant"] == "half_batch"
    assert "not compared: half_batch:" in table(comp)


def test_a_ladder_an_adhoc_variant_or_nothing_left_is_still_an_error() -> None:
    with pytest.raises(ConfigError, match="half_batch"):
        compare(GPT3, ["half_batch", "amp"], ladder=True)
    with pytest.raises(ConfigError, match="variant 'bad'"):
        compare(GPT3, ["amp", "bad:training.precision=fp8"])
    with pytest.raises(ConfigError, match="half_batch"):
        compare(GPT3, ["half_batch"])
