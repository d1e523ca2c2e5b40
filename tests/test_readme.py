"""The README's printed figures come from the code: the quick start's `simtrain run` block and
the lecture ladder's step times (they had drifted 3-5 % from the simulation they quote)."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from simtrain.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quick_start_block_is_what_run_prints(tmp_path: Path) -> None:
    block = re.search(r"```\n(gpipe_8gpu: .*?)```", README, re.S)
    assert block is not None
    out = CliRunner().invoke(main, ["run", str(ROOT / "scenarios" / "gpipe_8gpu.yaml"),
                                    "--out", str(tmp_path)])  # fmt: skip
    assert out.exit_code == 0, out.output
    printed = out.output.splitlines()
    for line in block.group(1).strip().splitlines():
        assert line in printed, line


def test_ladder_step_times_are_what_compare_prints(tmp_path: Path) -> None:
    rows = re.findall(
        r"^\| (?:fp32 \+ Adam[^|]*|\+ [^|]+) \| [\d.]+ \| \w+ \| ([\d.]+)", README, re.M
    )
    assert len(rows) == 7
    out = CliRunner().invoke(main, [
        "compare", str(ROOT / "scenarios" / "lecture_walk_gpt2xl.yaml"), "--ladder",
        "--variants", "amp,checkpointing,grad_accum_4,lora,qlora,zero3", "--out", str(tmp_path),
    ])  # fmt: skip
    assert out.exit_code == 0, out.output
    steps = []
    for name in ("baseline", "amp", "checkpointing", "grad_accum_4", "lora", "qlora", "zero3"):
        line = next(x for x in out.output.splitlines() if x.startswith(name + " "))
        steps.append(float(re.search(r"(?:yes|NO)\s+([\d.]+)", line).group(1)))
    for quoted, step in zip(rows, steps, strict=True):  # quoted to 2 decimals
        assert abs(float(quoted) - step) <= 0.005 + 1e-9, (quoted, step)
