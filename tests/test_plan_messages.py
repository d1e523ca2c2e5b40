"""What ``simtrain plan`` says when a plan has no layout to evaluate, and how many proposals
its table lists (a user review, 2026-12-07: a 12-GPU range on 8-GPU nodes was told "no GPU count
is a multiple of tp x pp", though 12 is a multiple of 1; ``top: 16`` listed 10)."""

from __future__ import annotations

from pathlib import Path

from simtrain.apps.plan.command import MAX_TABLE_ROWS, plan_command

BASE = """model: {preset: llama3-8b, flash_attention: true}
training: {seq_len: 4096, global_batch: 64, precision: bf16, optimizer: adamw}
tokens: 1.0e9
hardware: [h100_sxm5_80gb]
"""


def _plan(tmp_path: Path, extra: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(BASE + extra)
    return plan_command(str(path), False, out_dir=str(tmp_path / "out"), workers=1)


def test_a_range_without_whole_nodes_says_so(tmp_path: Path) -> None:
    text = _plan(tmp_path, "gpus: {min: 12, max: 12}\n")
    assert ("no GPU count in gpus 12..12 fills whole nodes of 8 GPUs or fits in one node"
            in text)  # fmt: skip


def test_counts_tried_that_no_fixed_tp_divides_are_named(tmp_path: Path) -> None:
    text = _plan(tmp_path, "gpus: {min: 8, max: 16}\nfixed: {tp: [3]}\n")
    assert "none of the GPU counts tried (h100_sxm5_80gb: 8, 16: whole nodes" in text
    assert "multiple of tp x pp" in text


def test_the_table_lists_the_plans_top(tmp_path: Path) -> None:
    text = _plan(tmp_path, "gpus: {min: 8, max: 16}\ntop: 12\n")
    rows = [line for line in text.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == 12
    assert len(rows) <= MAX_TABLE_ROWS
