"""Quick hostile-input profile (issue 15): 1,000 generated CLI cases, in this process.

Each command family draws a fixed, seeded set of cases from ``tests/fuzz_cases.py`` (valid but
unusual and broken scenario, hardware, HF config, plan and records files, ``--set`` and
``--variants``; small layouts) and runs them through ``simtrain.cli.main``. A family fails with
the list of its failure signatures (a traceback, an exit-2 message that is not one ``error:``
line of at most 300 characters, a broken output invariant) and the first case of each. No clock
is read here (a busy machine must not fail a test): the per-case time limit is the long
campaign's, ``benchmarks/fuzz_campaign.py``. The families that write plots (topology, compare,
plan, validate) get fewer cases.
"""

from __future__ import annotations

import collections
from pathlib import Path

import fuzz_cases as fc
import pytest

SEED = 15  # fixed: the same cases on every run (for a given Hypothesis version)
# family: (cases, share drawn valid)
QUICK = {
    "memory": (245, 0.4), "memory_json": (220, 0.4), "run": (270, 0.4), "schedule": (150, 0.4),
    "topology": (45, 0.3), "compare": (25, 0.25), "plan": (25, 0.25), "validate": (20, 0.4),
}  # fmt: skip


@pytest.mark.parametrize("family", list(QUICK))
def test_hostile_input_quick(family: str, tmp_path: Path) -> None:
    n, valid_pct = QUICK[family]
    cases = fc.generate_cases(family, n, seed=SEED, valid_pct=valid_pct, size="small")
    assert len(cases) == n
    found: collections.Counter[tuple[str, str]] = collections.Counter()
    first: dict[tuple[str, str], tuple[fc.Case, fc.Outcome]] = {}
    for i, case in enumerate(cases):
        out = fc.run_case(case, tmp_path / f"case{i}")
        for failure in out.failures:
            found[failure] += 1
            first.setdefault(failure, (case, out))
    if found:
        lines = [f"{sum(found.values())} failures in {n} {family} cases:"]
        for (cls, sig), k in found.most_common():
            case, out = first[(cls, sig)]
            lines.append(f"\n{k} x {cls}: {sig}\n  mutation: {case.mutation or '(drawn valid)'}")
            lines.append(f"  $ {case.command_line()[:300]}")
            lines.append(f"  {out.exception or out.stderr.strip()}"[:300])
        pytest.fail("\n".join(lines), pytrace=False)


def test_fp8_runs_may_exceed_the_16_bit_peak() -> None:
    """simtrain's MFU divides by the compute dtype's (16-bit) peak, which FP8 GEMMs may beat
    (fuzz campaign 19: a profile with a 1e-6 TFLOP/s bf16 peak gave MFU 1.29 under
    fp8_rowwise): the judge lets an FP8-family run's MFU and HFU exceed 1, never drop to 0."""
    from fuzz_cases import Case, FileSpec, Outcome, judge

    doc = '{"mfu": 1.29, "hardware_flops_per_step": 2.0, "model_flops_per_step": 1.0}'
    out = Outcome("run", 0, 0.1, doc, "")
    argv = ("run", "--json", "scenario.yaml")
    fp8 = Case("run", argv, (FileSpec("scenario.yaml", data=b"precision: fp8_rowwise\n"),))
    bf16 = Case("run", argv, (FileSpec("scenario.yaml", data=b"precision: bf16\n"),))
    assert judge(fp8, out) == []
    want = {"run: <root> mfu = 1.29 not in (0, 1]", "run: <root> hfu(derived) = 2.58 not in (0, 1]"}
    assert {s for _, s in judge(bf16, out)} == want
    zero = Outcome("run", 0, 0.1, doc.replace("1.29", "0"), "")
    assert judge(fp8, zero)  # 0 is no utilisation, whatever the precision
    # a bf16 run on a profile that names FP8 peaks (keys, not precisions) keeps the bound
    hw = FileSpec("hw.yaml", data=b"peak_tflops:\n  mxfp8: 4500\n  nvfp4: 9000\n")
    assert judge(Case("run", argv, (bf16.files[0], hw)), out)
    assert judge(Case("run", (*argv, "--set", "training.precision=fp8_current"), bf16.files),
                 out) == []  # fmt: skip
