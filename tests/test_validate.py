"""simtrain validate: records -> scenarios, like-with-like metrics, accuracy bounds, outputs.

The bounds below are the accuracy the shipped simulator and profiles reach on
measured/published_runs.yaml (issue 5). Where the issue's target is met the test asserts the
target; where it is not, it asserts the figure reached as a regression bound (named so).
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from simtrain.apps.simulate import simulate_scenario
from simtrain.apps.validate import (
    METRICS,
    PACKAGED_PATH,
    Record,
    SkipReason,
    Translation,
    gpu_profile,
    load_records,
    map_precision,
    map_recompute,
    network_profile,
    predicted_step_time,
    record_to_scenario,
    source_key,
    summarize,
    translate,
    validate,
    validate_command,
)
from simtrain.apps.validate.predict import AFFINE_TOLERANCE_S
from simtrain.costs.collectives import nccl_time_s, node_links
from simtrain.costs.compute import eq7_flops, nanotron_flops
from simtrain.errors import ConfigError
from simtrain.layout.step import resolve
from simtrain.spec.hardware import load_hardware
from simtrain.spec.scenario import parse_scenario

ROOT = Path(__file__).resolve().parent.parent
RECORDS = PACKAGED_PATH


@pytest.fixture(scope="module")
def result(predictions, default_result):  # noqa: ARG001 (asked for its order, not its value)
    """The packaged file's records, validated with the session's predictions (``default_result``,
    requested only so that it runs first, simulates their scenarios)."""
    return validate(RECORDS, predictor=predictions)


def _summary(res, source: str, metric: str):
    s = res.summary_for(source, metric)
    assert s is not None, f"no summary for {source}/{metric}"
    return s


# --------------------------------------------------------------------------- accuracy bounds


def test_megatron_sc21_tflops_meets_target(result) -> None:
    """Issue target: TFLOP/s MAPE <= 10 %, max <= 20 % on the Megatron-LM SC'21 rows (Eq. 3
    convention). Reached: 1.8 % / 4.6 % on the 16 PTD-P rows of Tables 1 and 2."""
    s = _summary(result, "megatron_sc21", "tflops_per_gpu")
    assert s.n == 16
    assert s.mape_pct <= 10.0
    assert s.max_error_pct <= 20.0


def test_korthikanti_meets_target(result) -> None:
    """Issue target: MAPE <= 10 %, max <= 20 % on Korthikanti et al. 2022 Table 5.
    Reached: step time 7.0 % / 13.1 %, MFU 5.3 % / 11.6 %, HFU 5.3 % / 11.5 %."""
    for metric, n in (("step_time_s", 8), ("mfu", 4), ("hfu", 4)):
        s = _summary(result, "korthikanti2022", metric)
        assert s.n == n
        assert s.mape_pct <= 10.0, metric
        assert s.max_error_pct <= 20.0, metric


def test_nanotron_fit_verdict_meets_target(result) -> None:
    """Issue target: >= 95 % right verdicts where the source tells out-of-memory from other
    failures (issue 13), >= 90 % over all rows before (issue 12). The chart shows a failed run
    as 'crashed/oom'; the sweep's CSV (measured/README.md, nanotron) tells them apart: 166 of
    its failed layouts ran out of memory (fit verdicts since 2026-12-05), 58 crashed otherwise
    (no verdict: metric crash_or_oom). Reached 95.2 % of 393 (the 234 that ran: 100 %; the
    OOM ones: 140 of 159, the 19 misses predicted at 36-79 GiB of 79.2, 16 of them over 62);
    95.3 % of 422 with the layouts whose fp32 cast and loss sit on stages of their own
    (2026-12-06: StageBlocks.tail; 25 more that ran, 4 more that ran out of memory); 95.0 %
    (401) since the block backward's MLP temporaries (2026-12-07): usp_8B_n4_dp4_tp1_pp8_mbs2_ga32,
    which ran at 77.1 GiB reserved and was predicted at 79.13 of 79.19 GiB, is now over; 95.5 %
    (403 of 422) since a replay of the caching allocator that runs out of memory is a step that does
    not fit (runtime allocator_replay, costs.fragmentation.replay_stage; 2026-12-07)."""
    s = _summary(result, "nanotron", "fits")
    assert s.n >= 390  # the runs that completed and those that ran out of memory
    assert s.share_correct >= 0.954  # 403 of 422
    # runs that crashed for another reason: no fit verdict, the share predicted not to fit
    # reported apart (18 of 34, 17 before the allocator replay's verdict; 19 before nanotron's
    # own loss, cross_entropy sharded, whose peak is 4 B a logit below the standard loss's)
    crash = _summary(result, "nanotron", "crash_or_oom")
    assert crash.n == 34
    assert round(crash.share_correct * crash.n) == 18


def test_peak_memory(result) -> None:
    """Issue targets: peak-memory MAPE <= 15 % where the source reports memory (issue 12), <= 10 %
    for nanotron (issue 13). HF Transformers' single-GPU rows: 7.9 % (9.1 before the allocator
    replay). nanotron: 9.6 % (median -3.5 %), meets the <= 10 % (11.4 %, -8.1 % before the
    caching allocator's replay;
    11.6 %, -8.6 % before the block backward's MLP temporaries were counted,
    costs.activations.mlp_backward_working_bytes). Its 'GB' is
    max_memory_reserved / 1024**3 of world rank 0
    (pipeline stage 0; the sweep's CSV): simtrain's allocated peak plus the row-parallel outputs
    held back behind their pending NCCL reduce-scatter (runtime nccl_record_streams,
    costs.memory.pending_reduce_scatter_bytes; runtimes/nanotron.yaml [rstr]) plus what the
    caching allocator fragments in a replay of the rank's allocations (runtime
    allocator_replay, costs.fragmentation; [frag]). Pinned where it stands (the history is in
    runtimes/nanotron.yaml [gap], [loss], [rstr], [frag])."""
    hf = _summary(result, "hf_transformers", "peak_memory_bytes")
    assert hf.n == 9 and hf.mape_pct <= 15.0
    nt = _summary(result, "nanotron", "peak_memory_bytes")
    assert nt.n >= 230 and 9.5 < nt.mape_pct < 9.7


def test_nanotron_allocated_at_the_step(result) -> None:
    """The sweep's other memory column, 'Mem Alloc (GB)': max_memory_allocated since
    log_memory's reset after the forward / backward (trainer.py l.492-513, logging.py l.250-259
    at 67c5ebb6), i.e. the model states, DDP's buckets and the optimizer step with ZeRO-1's
    gather copies, no activations: each record's stage 0 at the step's moment
    (StageMemory.step_memory_bytes). Reached MAPE 2.1 % (median |error| 1.0 %, 98 % within
    10 %) on 234 records after nanotron's fused AdamW (no temporaries) and its ZeRO-1 gather's
    flat copies (runtime zero_gather_flat_copies; 11.9 % / median -12.2 % before this stop, 12.1 % /
    -15.4 % now with only the gather copies off); on 259 with the layouts whose fp32 cast and
    loss sit on stages of their own (2026-12-06), 2.1 % (median |error| 1.1 %); a
    regression bound 1 point above."""
    s = _summary(result, "nanotron", "step_memory_bytes")
    assert s.n == 259
    assert s.mape_pct <= 3.2


def test_nanotron_throughput_target(result) -> None:
    """Issue targets: MAPE <= 35 %, median |error| <= 15 %, with the records of noisy pairs left
    out (none since 2026-12-08: the family's figures are all 259 records'); met on 2026-12-06 (29.6 / 11.0 %; all records 29.1 / 11.0 %, signed median -3.6 %),
    then MISSED by one record once the layouts whose fp32 cast and loss sit on stages of their
    own were expressed (StageBlocks.tail, 25 more records): 40.3 / 11.9 % (all 259: 39.5 / 11.9 %,
    signed median -4.6 %), of which usp_3B_n16_dp2_tp4_pp16_mbs1_ga128_z1 alone is +2,948 %:
    its job (14099092, after the "pp fix" by its id) ran 52.6 tokens/s per GPU where the same
    layout at dp 1 and dp 4 ran 2,162 and 1,799 (the sweep's CSV, jobs 14098904 and 14099268),
    as the polling runs before the fix did (46 at dp 8, job 14019344); without it the 258 are
    at 28.2 / 11.8 %. Regression bounds about 1 point above the figures reached. The history:
    since 2026-12-05
    each run is compared under the code it ran (record key ``runtime``: jobs before 14097150,
    whose pp > 1 layouts the sweep's script re-ran after its "pp fix", under
    runtimes/nanotron_bench.yaml's 0.1 s polling p2p, the later ones under main's profile), on
    the EFA profile refitted to the Playbook's figure read at its true 1 GiB with torch's
    list-form copy (97.3 -> 67.7 %), on the links its own job measured
    (hardware.network_measured: 48.7 %, median +3.9 %, median |error| 15.5 %); since 2026-12-06
    with the host's per-rank cost of issuing a collective where that job's test across nodes
    ran slower than the profile's links (runtime collective_issue_us_per_rank, read by
    apps/validate/job_network.job_hardware): the post-fix pipelines' loss of ~3 ms x tp per
    layer per micro-batch was that cost (README, "Two kinds of job")."""
    fam = next(f for f in result.by_family if (f.family, f.metric) == ("nanotron", "tokens_per_s"))
    assert fam.all.n == 259 and fam.all.mape_pct <= 40.5
    assert fam.all.median_abs_error_pct <= 12.9 and abs(fam.all.median_error_pct) <= 5.6
    # No noisy pairs since 2026-12-08 (the ZeRO-0/ZeRO-1 twins ran under different code or on
    # links measured apart: tests/test_validate_families.py); 251 records at 40.0 % before.
    assert fam.noisy_left_out == 0 and fam.without_noisy == fam.all
    errors = {c.id: c.error_pct for c in result.comparisons
              if c.source == "nanotron" and c.metric == "tokens_per_s"}  # fmt: skip
    outlier = "usp_3B_n16_dp2_tp4_pp16_mbs1_ga128_z1"
    assert errors[outlier] > 2000
    rest = [abs(e) for k, e in errors.items() if k != outlier]
    assert len(rest) == 258 and sum(rest) / len(rest) <= 29.2
    mfu = _summary(result, "nanotron", "mfu")
    assert mfu.n == 258 and mfu.mape_pct <= 47.0


def test_the_playbook_records_run_the_bench_branch() -> None:
    """The sweep's script (nanotron e24d2483 scripts/scaling_benchmarks.py) reads
    examples/config_tiny_llama_bench.yaml and run_multinode.sh, files of the bench branch."""
    from simtrain.apps.validate.conventions import runtime_of

    assert runtime_of("nanotron") == "nanotron_bench"


def test_a_record_names_the_code_version_it_ran(published_records: dict, tmp_path) -> None:
    """Record key ``runtime``: the sweep's CSV tells each run's job; scaling_benchmarks.py
    (e24d2483 l.512-518) re-ran the pp > 1 layouts of jobs before 14097150 after its "pp fix".
    A run before it polls its pipeline messages (nanotron_bench), one after it does not
    (nanotron): the same layout's runtime differs by the record, and the polling costs a
    pipeline run whole seconds a step."""
    from simtrain.apps.validate.conventions import runtime_for
    from simtrain.apps.validate.predict import predicted_step_time
    from simtrain.apps.validate.records import load_records

    before = published_records["usp_1B_n8_dp1_tp32_pp2_mbs8_ga32_z0"]  # job 14018419
    after = published_records["usp_1B_n16_dp8_tp8_pp2_mbs1_ga32_z1"]  # job 14099003
    assert "14097150" in before.notes and "14097150" in after.notes
    assert runtime_for(before)[0] == before.runtime == "nanotron_bench"
    assert runtime_for(after) == ("nanotron", "runtime nanotron: the record's (the code "
                                  "version it ran; notes)")  # fmt: skip
    sb, sa = translate(before).scenario, translate(after).scenario
    assert sb.runtime.p2p_poll_interval_s == 0.1 and sa.runtime.p2p_poll_interval_s == 0
    polled = replace(sa, runtime_profile=replace(sa.runtime, p2p_poll_interval_s=0.1,
                                         p2p_polled_messages_forward=4,
                                         p2p_polled_messages_backward=2))  # fmt: skip
    assert predicted_step_time(polled) > predicted_step_time(sa) + 1.0
    # an unknown profile is an error naming the record, the key and the allowed names
    bad = tmp_path / "r.yaml"
    bad.write_text("- id: x\n  runtime: nanotron_v2\n")
    with pytest.raises(ConfigError, match=r"x\.runtime.*nanotron_bench"):
        load_records(bad)


def test_omni_path_records_use_the_jean_zay_profile(published_records: dict) -> None:
    """hardware.inter_node naming Omni-Path (OPA) puts an A100 80GB record on
    a100_sxm4_80gb_opa (Jean Zay: BigScience's BLOOM runs), whose NIC rate reproduces
    BigScience's own 4-node all-reduce benchmark there (busbw 5.07 GB/s,
    measured/nccl_tests.yaml bigscience_jz_a100_4n_all_reduce), an eighth of what the DGX
    InfiniBand profile would move; the A100 40GB and other networks keep their profile."""
    assert network_profile("a100_sxm4_80gb", "Intel Omni-Path (4 OPA links per node)")[0] == (
        "a100_sxm4_80gb_opa"
    )
    assert network_profile("a100_sxm4_80gb", "8x 200 Gb/s HDR IB") == ("a100_sxm4_80gb", "")
    assert network_profile("a100_sxm4_40gb", "OPA") == ("a100_sxm4_40gb", "")
    bloom = [r for r in published_records.values() if r.source_key == "bloom"]
    assert len(bloom) == 3
    for r in bloom:
        tr = translate(r)
        assert isinstance(tr, Translation)
        assert tr.scenario.hardware.name == "a100_sxm4_80gb_opa"
        assert any(a.startswith("inter_node Omni-Path (Jean Zay)") for a in tr.assumptions)
    assert network_profile("a100_sxm4_80gb", "Intel Omni-Path")[0] == "a100_sxm4_80gb_opa"
    jz, dgx = load_hardware("a100_sxm4_80gb_opa"), load_hardware("a100_sxm4_80gb")
    # the fitted point: BigScience's 4e9-byte all-reduce over 4 x 8 GPUs took 1.5292 s (median)
    intra, inter = node_links(jz)
    took = nccl_time_s("all_reduce", 4e9, 32, intra=intra, inter=inter, gpus_per_node=8,
                       nvls=jz.nvls, algorithms=jz.nccl_algorithms or None,
                       protocols=jz.nccl_protocols or None, arch=jz.gpu_arch)  # fmt: skip
    assert took.time_s == pytest.approx(1.5292, rel=0.01)
    assert dgx.nic_bandwidth_bytes_per_s / jz.nic_bandwidth_bytes_per_s > 30
    # the same GPU and node: only the name, the host memory and the network are its own
    same = replace(jz, name=dgx.name, display_name=dgx.display_name, source_file=dgx.source_file,
                   nic_bandwidth_bytes_per_s=dgx.nic_bandwidth_bytes_per_s,
                   host_memory_bytes=dgx.host_memory_bytes)  # fmt: skip
    assert same == dgx


def test_efa_records_use_the_efa_profile(published_records: dict) -> None:
    """hardware.inter_node naming EFA puts an H100 record on h100_sxm5_80gb_efa, with the
    reason among its assumptions; other networks and GPUs keep their profile."""
    assert network_profile("h100_sxm5_80gb", "EFA")[0] == "h100_sxm5_80gb_efa"
    assert network_profile("h100_sxm5_80gb", "AWS EFA (bandwidth not stated)")[0] == (
        "h100_sxm5_80gb_efa"
    )
    assert network_profile("h100_sxm5_80gb", "8x 400 Gb/s InfiniBand") == ("h100_sxm5_80gb", "")
    assert network_profile("h100_sxm5_80gb", "DEFAULT fabric") == ("h100_sxm5_80gb", "")
    assert network_profile("h100_sxm5_80gb", None) == ("h100_sxm5_80gb", "")
    assert network_profile("a100_sxm4_80gb", "EFA") == ("a100_sxm4_80gb", "")
    rec = _record(hardware={"gpu": "H100 80GB", "num_gpus": 16, "inter_node": "EFA"})
    tr = translate(rec)
    assert isinstance(tr, Translation)
    assert tr.scenario.hardware.name == "h100_sxm5_80gb_efa"
    assert any(a.startswith("inter_node EFA: h100_sxm5_80gb_efa") for a in tr.assumptions)
    plain = translate(_record(hardware={"gpu": "H100 80GB", "num_gpus": 16}))
    assert isinstance(plain, Translation)
    assert plain.scenario.hardware.name == "h100_sxm5_80gb"
    usp = [r for r in published_records.values() if r.source_key == "nanotron"
           and r.kind == "training_run"]  # fmt: skip
    assert usp and all("EFA" in str(r.hardware.get("inter_node")) for r in usp)
    for r in usp[:20]:
        out = translate(r)
        if not isinstance(out, SkipReason):
            assert out.scenario.hardware.name == "h100_sxm5_80gb_efa", r.id
    assert any(isinstance(translate(r), Translation) for r in usp[:20])


def test_other_sources_regression_bounds(result) -> None:
    """Not issue targets: bounds at the figures reached, to catch regressions."""
    bounds = {
        ("megatron_readme", "step_time_s"): (8.0, 16.0),
        ("megatron_readme", "tflops_per_gpu"): (8.0, 16.0),
        # 37 rows since the two amp_fp8 H100 rows are expressible (fp8_delayed): +45 % and +54 %
        # too fast at 8,192 tokens (the H100's efficiency.matmul re-fitted with the GEMM shape
        # term, 0.50 -> 0.53, made them +2 %; the FlashAttention-2 class, whose causal core at
        # 0.35 of peak is faster than the GEMM class's full count at 0.53, and the re-fit to 0.54
        # made them +4 % more: what else these FP8 rows lose is not modelled)
        # 13.0 % since 2026-12-06: the A100 80GB's GEMM rate from its GEMM table (0.79) and its
        # element-wise rate fitted on the Megatron rows (0.63) take its 14 rows, held out, from
        # 11.4 to 16.5 % (median +12.5 %: too fast; the A100 40GB rows, fitted on MosaicML,
        # and the H100 rows do not move)
        ("mosaicml", "tokens_per_s"): (14.0, 55.0),
        ("mosaicml", "mfu"): (14.0, 55.0),
    }
    for (src, metric), (mape, mx) in bounds.items():
        s = _summary(result, src, metric)
        assert s.mape_pct <= mape, (src, metric, s.mape_pct)
        assert s.max_error_pct <= mx, (src, metric, s.max_error_pct)
    assert _summary(result, "korthikanti2022", "fits").share_correct == 1.0
    assert _summary(result, "megatron_sc21", "fits").share_correct == 1.0
    # llm-foundry's fused cross-entropy: every MosaicML run that ran is predicted to fit (80 %
    # with PyTorch's cross-entropy, which holds fp32 copies of the logits).
    assert _summary(result, "mosaicml", "fits").share_correct == 1.0
    # DeepSpeed's default live-parameter cap: the 529B ZeRO-3 run on 640 GPUs fits (83 % without)
    assert _summary(result, "megatron_sc21_zero3", "fits").share_correct == 1.0


# --------------------------------------------------------------------------- no silent drops


def test_every_record_is_compared_or_skipped_with_a_reason(result, published_records: dict) -> None:
    ids = list(published_records)
    assert len(ids) == 655
    compared = {c.id for c in result.comparisons}
    skipped = {s.id for s in result.skipped}
    assert not compared & skipped
    assert compared | skipped == set(ids)
    for s in result.skipped:
        assert isinstance(s, SkipReason) and len(s.reason) > 10, s
        # translate's guard against a value of the wrong type must not hide simtrain's own
        # errors on the shipped records
        assert not s.reason.startswith("not readable"), s
    reasons = " ".join(s.reason for s in result.skipped)
    for expected in ("training_run_relative", "memory_capacity", "global batch not reported",
                     "no simtrain hardware profile"):  # fmt: skip
        assert expected in reasons


def test_json_document_schema(result) -> None:
    doc = json.loads(json.dumps(result.to_json()))
    assert set(doc) == {"schema_version", "records", "skipped", "summary", "by_family",
                        "noisy_pairs", "fitted_constants"}  # fmt: skip
    assert doc["schema_version"] == 1
    assert doc["records"] and doc["skipped"] and doc["summary"]
    for r in doc["records"]:
        assert set(r) == {"id", "source", "metric", "measured", "predicted", "error_pct"}
        assert r["metric"] in METRICS
        if r["metric"] in ("fits", "crash_or_oom"):
            assert isinstance(r["measured"], bool) and isinstance(r["predicted"], bool)
            assert r["error_pct"] == (0.0 if r["measured"] == r["predicted"] else 100.0)
        else:
            expect = 100 * (r["predicted"] - r["measured"]) / r["measured"]
            assert r["error_pct"] == pytest.approx(expect)
    for s in doc["skipped"]:
        assert set(s) == {"id", "reason"}
    for s in doc["summary"]:
        assert set(s) == {"source", "metric", "n", "mape_pct", "max_error_pct"}
    keys = [(s["source"], METRICS.index(s["metric"])) for s in doc["summary"]]
    assert keys == sorted(keys)


def test_deterministic_and_worker_independent() -> None:
    a = validate(RECORDS, "megatron_readme", workers=1).to_json()
    b = validate(RECORDS, "megatron_readme", workers=2).to_json()
    assert a == b


# --------------------------------------------------------------------------- translation


def _record(**sections) -> Record:
    base = {
        "id": "mine_1",
        "kind": "training_run",
        "source": "my cluster",
        "source_key": "mine",
        "model": {"layers": 8, "hidden": 1024, "heads": 16, "seq_len": 1024, "vocab": 32000},
        "training": {"global_batch": 64, "micro_batch": 4, "precision": "bf16"},
        "parallelism": {"tp": 2, "pp": 2},
        "hardware": {"gpu": "A100-SXM4-80GB", "num_gpus": 16},
        "measured": {"step_time_s": 1.0},
        "notes": "",
    }
    for k, v in sections.items():
        base[k] = v
    return Record(**base)  # type: ignore[arg-type]


def test_string_mappings() -> None:
    assert map_precision("fp16 mixed precision") == "fp16"
    assert map_precision("mixed precision (16-bit)") == "fp16"
    assert map_precision("bf16 (fp32 grad accumulation)") == "bf16"
    assert map_precision("amp_bf16 (FSDP mixed_precision=DEFAULT)") == "amp_bf16"
    assert map_precision("fp16 AMP") == "amp_fp16"
    assert map_precision("fp32") == "fp32"
    assert map_precision("amp_fp8 (FSDP)") == "fp8_delayed"
    # was read as bf16 (issue 13); torchtitan's Float8 default is dynamic tensorwise
    assert map_precision("bf16 + Float8 linears") == "fp8_tensorwise"
    assert map_precision("bf16 + float8 rowwise linears") == "fp8_rowwise"
    assert map_precision("FP8-CS (FP8 current scaling)") == "fp8_current"
    assert map_precision("nvfp4") == "nvfp4"  # Transformer Engine NVFP4BlockScaling
    assert map_precision("NVFP4 (bf16 master)") == "nvfp4"
    assert map_precision("mxfp4") is None and map_precision("fp4") is None
    assert map_precision("bf16 AMP") == "amp_bf16"
    assert map_precision("full bf16 (no AMP)") == "bf16_pure"
    assert map_precision("bf16_fp32_grads") == "bf16_fp32_grads"
    assert map_precision("mixed precision") is None  # no format named
    assert map_precision("tf32") is None
    assert map_recompute("full (activation recomputation; FLOP count ...)") == "full"
    assert map_recompute("selective (attention core)") == "selective"
    assert map_recompute("selective (per-op)") == "selective_op"  # torchtitan's op-level SAC
    assert map_recompute("none (assumed: ...)") == "none"
    assert map_recompute("re-materialization") == "full"
    assert gpu_profile("A100-SXM4-80GB")[:2] == ("a100_sxm4_80gb", True)
    assert gpu_profile("A100 40GB")[:2] == ("a100_sxm4_40gb", True)
    assert gpu_profile("H100 80GB (HF science cluster)")[0] == "h100_sxm5_80gb"
    # torchtitan's Grand Teton H100 has a profile of its own, its memory size known
    grand_teton = gpu_profile("H100 SXM 96GB HBM2e (500W power limit; Grand Teton)")
    assert grand_teton == ("h100_sxm5_96gb_hbm2e", True, "")
    assert gpu_profile("H100 96GB")[:2] == ("h100_sxm5_80gb", False)  # no HBM2e: not that part
    # the other profiles' GPUs by name, the A100 and H100 PCIe cards and the H100 NVL among them;
    # GH200 on the nearest profile, with a note
    for name, profile in (("H800 80GB", "h800_sxm5_80gb"), ("NVIDIA A800-SXM4-80GB", "a800_sxm4_80gb"),
                          ("AMD Instinct MI300X", "mi300x_192gb"), ("L40S 48GB", "l40s_48gb"),
                          ("GeForce RTX 4090", "rtx4090_24gb"), ("H100 PCIe 80GB", "h100_pcie_80gb"),
                          ("H100 NVL 94GB", "h100_nvl_94gb"), ("H100 NVL", "h100_nvl_94gb"),
                          ("A100 PCIe 40GB", "a100_pcie_40gb"), ("A100-PCIE-40GB", "a100_pcie_40gb"),
                          ("A100 80GB PCIe", "a100_pcie_80gb"), ("Tesla T4", "t4_16gb"),
                          ("NVIDIA L4", "l4_24gb"), ("GeForce RTX 3090", "rtx3090_24gb"),
                          ("NVIDIA RTX A6000", "rtx_a6000_48gb")):  # fmt: skip
        assert gpu_profile(name) == (profile, True, ""), name
    for name in (
        "H100 NVL PCIe",
        "NVIDIA H100 NVL 94GB PCIe Gen5",
        "H100NVL",
    ):  # the NVL is a PCIe card
        assert gpu_profile(name) == ("h100_nvl_94gb", True, ""), name
    for name in ("GeForce RTX 3090 Ti", "RTX 3090-Ti"):  # other chips, other rates
        assert gpu_profile(name) is None, name
    # (the RTX 6000 Ada and the A10G have their own profiles: tests/test_more_gpus.py)
    assert gpu_profile("V100 NVLink 32GB") == ("v100_sxm2_32gb", True, "")  # NVLink is not NVL
    gh = gpu_profile("GH200 96GB")
    assert gh is not None and gh[:2] == ("h200_141gb", False) and gh[2].startswith("GH200")
    nvl = gpu_profile("H100 NVL 96GB")  # not the profile's size: not compared
    assert nvl is not None and nvl[:2] == ("h100_nvl_94gb", False) and "94 GB profile" in nvl[2]
    # a PCIe or NVL part without a profile of its own is fit-compared with the SXM note; a
    # profile of a PCIe board itself (L40S, RTX 4090, A100 / H100 PCIe) takes no such note
    got = gpu_profile("H200 NVL 141GB")
    assert (
        got is not None and got[:2] == ("h200_141gb", True) and "H200 NVL part: the SXM" in got[2]
    )
    # the export parts' PCIe cards are the A100 / H100 PCIe cards (a note says so)
    for name, profile in (
        ("A800 80GB PCIe", "a100_pcie_80gb"),
        ("H800 PCIe 80GB", "h100_pcie_80gb"),
    ):
        got = gpu_profile(name)
        assert got is not None and got[:2] == (profile, True) and "PCIe card's profile" in got[2]
    assert gpu_profile("H100 80GB T4-cluster") == ("h100_sxm5_80gb", True, "")  # not the T4
    got = gpu_profile("A800 PCIe 40GB")  # the A800 PCIe came in 40 and 80 GB
    assert got is not None and got[:2] == ("a100_pcie_40gb", True)
    got = gpu_profile("Tesla V100-PCIE-16GB")  # another size and a PCIe part: both said
    assert got is not None and got[:2] == ("v100_sxm2_32gb", False) and "V100 PCIe part" in got[2]
    got = gpu_profile("A100 64GB")  # a size stated, not a profile's
    assert got is not None and got[:2] == ("a100_sxm4_80gb", False) and "A100 64 GB" in got[2]
    assert gpu_profile("RTX A6000-Ada")[0] == "rtx_6000_ada_48gb"  # type: ignore[index]
    for name, profile in (("L40S PCIe 48GB", "l40s_48gb"), ("RTX 4090 PCIe", "rtx4090_24gb")):
        assert gpu_profile(name) == (profile, True, ""), name
    # a size other than the profile's is not compared; a remark in brackets names no GPU
    assert gpu_profile("A800 40GB")[:2] == ("a800_sxm4_80gb", False)  # type: ignore[index]
    assert gpu_profile("MI300X 256GB")[:2] == ("mi300x_192gb", False)  # type: ignore[index]
    for name, profile in (("H100 80GB (cluster h800-prod)", "h100_sxm5_80gb"),
                          ("A100 80GB (vs A800)", "a100_sxm4_80gb"),
                          ("H100 80GB (DGX GH200 cluster)", "h100_sxm5_80gb")):  # fmt: skip
        assert gpu_profile(name) == (profile, True, ""), name
    assert gpu_profile("A100 (DGX A100; memory size not stated)")[1] is False
    assert gpu_profile("Cloud TPU v3") is None
    assert source_key("megatron_sc21_t1_1.7B") == "megatron_sc21"
    assert source_key("megatron_sc21_t2_zero3_174B_384gpu") == "megatron_sc21_zero3"
    assert source_key("usp_fail_1B_n1") == "nanotron"
    assert source_key("mpt_a100_80gb_x") == "mosaicml"
    assert source_key("anything", "mykey") == "mykey"
    assert source_key("myrun_7") == "myrun"
    # NeMo AutoModel is not NeMo 24.07 (whose convention the "nemo" prefix gives)
    assert source_key("nemo_automodel_llama3_8b") == source_key("automodel_x") == "automodel"
    assert source_key("nemo2407_h100_fp8_LLAMA2-13B_16gpu") == "nemo"


def test_record_to_scenario_layout_and_defaults() -> None:
    sc = record_to_scenario(_record())
    assert not isinstance(sc, SkipReason)
    p = sc.parallelism
    assert (p.dp, p.tp, p.pp) == (4, 2, 2)  # dp = num_gpus / (tp x pp)
    assert (sc.cluster.nodes, sc.cluster.gpus_per_node) == (2, 8)
    assert sc.training.precision == "bf16" and sc.num_microbatches == 4
    tr = translate(_record(training={"global_batch": 64, "precision": "bf16"}))
    assert isinstance(tr, Translation)
    assert tr.scenario.training.micro_batch == 1  # pp > 1: documented default
    assert any("micro-batch not reported" in a for a in tr.assumptions)
    assert any("dp = num_gpus" in a for a in tr.assumptions)


def test_unexpressible_records_come_back_with_reasons() -> None:
    cases = {
        "global batch not reported": _record(training={"precision": "bf16"}),
        "no simtrain hardware profile": _record(hardware={"gpu": "TPU v4", "num_gpus": 16}),
        "model shape not reported": _record(model={"layers": 8, "seq_len": 1024}),
        "must divide model.layers": _record(
            parallelism={"tp": 1, "pp": 3, "dp": 1},
            hardware={"gpu": "A100-SXM4-80GB", "num_gpus": 3},
        ),
        "must not exceed model.layers": _record(parallelism={"tp": 1, "pp": 16}),
        "not a simtrain precision": _record(training={"global_batch": 64, "precision": "tf32"}),
        "has no fp8 rate": _record(training={"global_batch": 64, "precision": "fp8"}),
        "num_gpus 16 != tp x pp x dp": _record(parallelism={"tp": 2, "pp": 2, "dp": 2}),
        "kind memory_capacity": _record(kind="memory_capacity"),
        "flops_convention": _record(measured={"mfu": 0.5, "flops_convention": "mine"}),
    }
    for reason, rec in cases.items():
        out = translate(rec)
        assert isinstance(out, SkipReason), reason
        assert reason in out.reason, (reason, out.reason)


def test_users_own_runs(tmp_path: Path) -> None:
    """A file in the record schema with a source simtrain does not know: compared in simtrain's
    own FLOP convention; an unexpressible record is listed with its reason."""
    f = tmp_path / "runs.yaml"
    f.write_text(
        """
- id: lab_a100_gpt_1
  kind: training_run
  source: our cluster, 2026-01-01
  model: {layers: 12, hidden: 768, heads: 12, seq_len: 1024, vocab: 50304}
  training: {global_batch: 32, micro_batch: 8, precision: bf16, recompute: none,
             optimizer: adamw}
  parallelism: {tp: 1, pp: 1, dp: 4}
  hardware: {gpu: A100-SXM4-40GB, num_gpus: 4}
  measured: {step_time_s: 0.30, mfu: 0.40, peak_mem_gib: 20.0,
             flops_convention: simtrain}
- id: lab_a100_gpt_2
  model: {layers: 12, hidden: 768, heads: 12, seq_len: 1024, vocab: 50304}
  training: {precision: bf16}
  hardware: {gpu: A100-SXM4-40GB, num_gpus: 4}
  measured: {step_time_s: 0.30}
"""
    )
    res = validate(f, workers=1)
    metrics = {c.metric for c in res.comparisons}
    assert metrics == {"step_time_s", "mfu", "peak_memory_bytes", "fits"}
    assert {c.source for c in res.comparisons} == {"lab"}
    assert [s.id for s in res.skipped] == ["lab_a100_gpt_2"]
    sc = record_to_scenario(load_records(f)[0])
    mfu = next(c for c in res.comparisons if c.metric == "mfu")
    step = next(c for c in res.comparisons if c.metric == "step_time_s")
    # simtrain's own convention: Korthikanti Eq. 7 model FLOPs (a GPT shape) over the step time,
    # 4 GPUs at the A100's 312 TFLOP/s bf16 peak
    assert step.predicted == pytest.approx(simulate_scenario(sc).metrics.step_time_s)
    flops = eq7_flops(32, 1024, 12, 768, 50304)
    assert mfu.predicted == pytest.approx(flops / (step.predicted * 4 * 312e12), rel=1e-6)


@pytest.mark.parametrize(("key", "unit"), [("peak_memory_gib", 2**30), ("peak_mem_gib", 2**30),
                                           ("peak_memory_mib", 2**20)])  # fmt: skip
def test_memory_key_spellings(tmp_path: Path, key: str, unit: int) -> None:
    """A record's peak memory under ``peak_memory_<unit>`` is read as ``peak_mem_<unit>``:
    compared, in bytes, not left unread."""
    f = tmp_path / "runs.yaml"
    f.write_text(f"""
- id: lab_a100_gpt_mem
  kind: training_run
  source: our cluster, 2026-01-01
  model: {{layers: 12, hidden: 768, heads: 12, seq_len: 1024, vocab: 50304}}
  training: {{global_batch: 32, micro_batch: 8, precision: bf16, recompute: none}}
  parallelism: {{tp: 1, pp: 1, dp: 4}}
  hardware: {{gpu: A100-SXM4-40GB, num_gpus: 4}}
  measured: {{{key}: 20.0}}
""")
    res = validate(f, workers=1)
    mem = [c for c in res.comparisons if c.metric == "peak_memory_bytes"]
    assert len(mem) == 1 and mem[0].measured == 20.0 * unit


def test_load_records_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- id: a\n  model: 3\n")
    with pytest.raises(ConfigError, match="a.model"):
        load_records(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("- id: a\n- id: a\n")
    with pytest.raises(ConfigError, match="duplicate"):
        load_records(dup)
    with pytest.raises(ConfigError, match="source"):
        validate(RECORDS, "no_such_source")


# --------------------------------------------------------------------------- FLOP conventions


def test_flop_conventions_reproduce_the_sources(published_records: dict) -> None:
    # nanotron get_flops: the 1B dp8 run's MFU 0.381 at 39,006 tokens/s/GPU on H100 (989.4).
    rec = published_records["usp_1B_n1_dp8_tp1_pp1_mbs1_ga32_z1"]
    sc = record_to_scenario(rec)
    per_token = nanotron_flops(sc) / sc.tokens_per_step
    assert 39006 * per_token / 989.4e12 == pytest.approx(0.381, abs=0.001)


# --------------------------------------------------------------------------- speed trick


def _scenario(pp: int, m: int, **par) -> object:
    return parse_scenario(_scenario_data(pp, m, **par), "test")


def _scenario_data(pp: int, m: int, **par) -> dict:
    return {
        "name": "x",
        "model": {"layers": 8, "hidden": 1024, "heads": 16, "vocab": 32000},
        "hardware": "a100_sxm4_80gb",
        "training": {"seq_len": 1024, "global_batch": m * 2 * par.get("dp", 1),
                     "micro_batch": 2, "precision": "bf16", "recompute": "full"},
        "parallelism": {"pp": pp, **par},
    }  # fmt: skip


@pytest.mark.parametrize(
    "pp,m,par",
    [
        (4, 12, {"dp": 2, "tp": 2}),
        (4, 52, {"schedule": "interleaved", "virtual_stages": 2, "tp": 2}),
        (2, 7, {"schedule": "gpipe", "dp": 2}),
        (1, 7, {"dp": 4}),
        (1, 8, {"dp": 4, "zero_stage": 1}),
        (1, 9, {"dp": 2, "zero_stage": 3}),
        (2, 10, {"dp": 2, "tp": 2, "bucket_mb": 1e9}),
        (4, 25, {"dp": 2, "tp": 2, "runtime": "nanotron"}),
        (4, 26, {"dp": 2, "runtime": "nanotron_bench"}),
        (4, 27, {"dp": 2, "tp": 2, "runtime": "megatron_core"}),
    ],
)
def test_step_time_extrapolation_is_exact(pp: int, m: int, par: dict, monkeypatch) -> None:
    """predicted_step_time simulates m₁, 2·m₁ and 3·m₁ micro-batches (m₁ = 1; pp with blocking
    p2p; 2·pp for this interleaved order) and extrapolates: it must equal the full simulation.
    Each m is above 6·m₁, so the line is taken (three simulations), not the whole step."""
    par = dict(par)
    runtime = {"runtime": par.pop("runtime")} if "runtime" in par else {}
    sc = parse_scenario({**_scenario_data(pp, m, **par), **runtime}, "test")
    full = simulate_scenario(sc).metrics.step_time_s
    simulated: list[int] = []

    def counting(s, *a, **k):
        simulated.append(resolve(s).microbatches)
        return simulate_scenario(s, *a, **k)

    monkeypatch.setattr("simtrain.apps.validate.predict.simulate_scenario", counting)
    assert predicted_step_time(sc) == pytest.approx(full, rel=1e-9)
    assert len(simulated) == 3 and max(simulated) < m, simulated


def test_a_short_step_is_simulated_whole(monkeypatch) -> None:
    """A step of at most 6·m₁ micro-batches, the three points' own count, is simulated whole
    (one simulation, of all its micro-batches)."""
    data = {**_scenario_data(4, 24, dp=2, tp=2), "runtime": "nanotron"}  # blocking: m₁ = pp
    sc = parse_scenario(data, "test")
    simulated: list[int] = []

    def counting(s, *a, **k):
        simulated.append(resolve(s).microbatches)
        return simulate_scenario(s, *a, **k)

    monkeypatch.setattr("simtrain.apps.validate.predict.simulate_scenario", counting)
    predicted_step_time(sc)
    assert simulated == [24]


def test_a_step_time_off_the_line_is_simulated_whole(default_records: dict) -> None:
    """A step whose time is not affine in the micro-batches (NeMo's LoRA 70B over blocking p2p:
    each micro-batch adds 181, 194, 197, ... ms, tending to ~200) fails the three-point check and
    is simulated whole: predicted_step_time is the full simulation, where the line through
    m = pp and 2·pp was 0.36 % short of it (and through m = 1 and 2, before 2026-12-07,
    7.6 %)."""
    sc = translate(default_records["nemo2407_h100_fp8_finetune_LoRA_LLAMA2-70B_8gpu"]).scenario
    step = resolve(sc)
    m, pp = step.microbatches, step.pp
    t, dp = sc.training, sc.parallelism.dp
    t1, t2, t3 = (
        simulate_scenario(
            replace(sc, training=replace(t, global_batch=k * pp * t.micro_batch * dp))
        ).metrics.step_time_s
        for k in (1, 2, 3)
    )
    assert m > 3 * pp and (t3 - t2) - (t2 - t1) > 1e-3  # 3.2 ms off the line (measured)
    full = simulate_scenario(sc).metrics.step_time_s
    assert predicted_step_time(sc) == full
    assert abs(t1 + (m - pp) * (t2 - t1) / pp - full) > 0.02  # what the line would have said


def test_a_stage_with_slack_turns_the_step_onto_another_line(default_records: dict) -> None:
    """nanotron's 8B over blocking p2p at pp 2: the last stage starts a forward every 852.0 ms
    until its slack is spent, the first every 876.0 ms. m = 2, 4, 6 lie on one line to the
    nanosecond, which is 1.1 % short of the step of 32 micro-batches: the stages' pace at
    m = 6 sends it to a whole simulation, the full simulation's time."""
    sc = translate(default_records["usp_8B_n2_dp8_tp1_pp2_mbs1_ga32_z1"]).scenario
    t, dp = sc.training, sc.parallelism.dp
    t1, t2, t3 = (
        simulate_scenario(
            replace(sc, training=replace(t, global_batch=k * t.micro_batch * dp))
        ).metrics.step_time_s
        for k in (2, 4, 6)
    )
    assert abs((t3 - t2) - (t2 - t1)) <= AFFINE_TOLERANCE_S  # on one line
    full = simulate_scenario(sc).metrics.step_time_s
    line = t1 + (resolve(sc).microbatches - 2) * (t2 - t1) / 2
    assert full - line > 0.01 * full
    assert predicted_step_time(sc) == full


def test_step_time_without_the_allocator_replay_is_the_same() -> None:
    """predicted_step_time simulates without the caching allocator's replay (runtime
    allocator_replay: a reserved memory figure): no task of the timeline moves by a nanosecond
    without it, while the memory report does differ (a scenario the replay fragments)."""
    data = {"name": "frag", "runtime": "nanotron",
            "model": {"layers": 8, "hidden": 1024, "heads": 16, "vocab": 32000},
            "hardware": "h100_sxm5_80gb",
            "training": {"seq_len": 1024, "global_batch": 24, "micro_batch": 2,
                         "precision": "bf16"},
            "parallelism": {"pp": 2, "dp": 2, "tp": 2}}  # fmt: skip
    sc = parse_scenario(data, "test")
    assert sc.runtime.allocator_replay
    off = replace(sc, runtime_profile=replace(sc.runtime, allocator_replay=False))
    replayed, not_replayed = simulate_scenario(sc), simulate_scenario(off)
    assert any(s.fragmentation_bytes for s in replayed.memory.stages)
    assert not any(s.fragmentation_bytes for s in not_replayed.memory.stages)
    assert replayed.metrics.step_time_s == not_replayed.metrics.step_time_s
    assert replayed.timeline.spans == not_replayed.timeline.spans  # every task, to the ns


# --------------------------------------------------------------------------- outputs


def test_validate_command_outputs(tmp_path: Path, predictions) -> None:
    text = validate_command(str(RECORDS), False, "megatron_readme", str(tmp_path),
                            predictor=predictions)  # fmt: skip
    assert "megatron_readme2021_gpt3_175B_1024gpu" in text
    assert "MAPE %" in text and "0 records skipped" in text
    with (tmp_path / "validate.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["metric"] for r in rows} == {"step_time_s", "tflops_per_gpu"}  # GPU memory unstated
    png = tmp_path / "validate_scatter.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(validate_command(str(RECORDS), True, "korthikanti2022", str(tmp_path),
                                      predictor=predictions))  # fmt: skip
    assert doc["schema_version"] == 1
    assert {r["source"] for r in doc["records"]} == {"korthikanti2022"}
    with (tmp_path / "validate.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    table4 = {"layer_forward_s", "layer_backward_s"}  # Korthikanti Table 4's layer timings
    assert {r["metric"] for r in rows} == {"step_time_s", "mfu", "hfu", "fits", "skipped", *table4}
    assert all(r["note"] for r in rows if r["metric"] == "skipped")


def test_summarize_fits_share() -> None:
    from simtrain.apps.validate import Comparison

    rows = [Comparison(str(i), "s", "fits", True, i < 3, 0.0 if i < 3 else 100.0)
            for i in range(4)]  # fmt: skip
    (s,) = summarize(rows)
    assert s.n == 4 and s.mape_pct == 25.0 and s.share_correct == 0.75


def test_own_h200_measurements_memory_within_3pct() -> None:
    """simtrain's own runs on an NVIDIA H200 (benchmarks/measure_cuda.py; peak =
    torch.cuda.max_memory_allocated): peak memory MAPE 2.6 % over 8 single-GPU steps (the
    largest miss, -13 %, is the 0.48 GiB tiny model, where cuBLAS workspaces weigh most), every
    fit verdict right. Step time is reported, not bounded here: it is the set pytorch_eager's
    host_us_per_op was fitted on (measured/fitted_constants.yaml; step MAPE 6.6 %)."""
    res = validate(ROOT / "measured" / "simtrain_h200.yaml", workers=1)
    assert not res.skipped
    by = {(s.source, s.metric): s for s in res.summary}
    mem = by[("simtrain_h200", "peak_memory_bytes")]
    assert mem.n == 8 and mem.mape_pct <= 3.0, mem
    assert by[("simtrain_h200", "fits")].mape_pct == 0.0


def test_a_measurement_that_is_not_a_finite_positive_number_is_a_skip() -> None:
    """Fuzz campaign of 2026-12-03 (validate): a step time of 1e311 (infinity as a float) was a
    traceback in the scatter plot; such a record is skipped with the key named."""
    for bad in (10**400, float("inf"), float("nan"), -1.0):
        out = translate(_record(measured={"step_time_s": bad}))
        assert isinstance(out, SkipReason) and "measured.step_time_s" in out.reason, bad


def test_a_subnormal_measurement_is_a_skip() -> None:
    """Fuzz campaign 19 (validate --json): a tokens/s of 5e-324 made the error 100·(p − m)/m
    overflow to Infinity in the JSON; figures below 1e-30 (but 0) are skipped with the key."""
    out = translate(_record(measured={"tokens_per_s": 5e-324}))
    assert isinstance(out, SkipReason) and "measured.tokens_per_s" in out.reason
    assert not isinstance(translate(_record(measured={"tokens_per_s": 1e-3})), SkipReason)


def test_held_out_h200_cases_become_a_family_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks/measure_cuda.py --records OUT --set heldout: the held-out cases (no constant
    fitted on them) get the source key simtrain_h200_heldout, run eager PyTorch like the fitted
    set, carry the timed steps' allocated and reserved peaks in their notes, and validate."""
    from simtrain.apps.validate.conventions import runtime_of

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import measure_cuda

    name, model, training = measure_cuda.HELDOUT_CASES[3]
    entry = {"case": name, "model": model, "training": training, "gpu": "NVIDIA H200",
             "torch_version": "2.11.0", "cuda": "13.0", "peak_bytes": 2**29,
             "step_time_s": 0.04, "step_times_s": [0.04, 0.041],
             "timed_peak_allocated_bytes": 2**29, "timed_peak_reserved_bytes": 2**30,
             "set": "heldout"}  # fmt: skip
    (tmp_path / "measured_cuda.json").write_text(json.dumps([entry]))
    assert measure_cuda.records(tmp_path, "fitted").count("- id:") == 0
    text = measure_cuda.records(tmp_path, "heldout")
    (tmp_path / "heldout.yaml").write_text(text)
    assert "source_key: simtrain_h200_heldout" in text and "max_memory_reserved 1.000 GiB" in text
    assert runtime_of("simtrain_h200_heldout") == "pytorch_eager"
    res = validate(tmp_path / "heldout.yaml", workers=1)
    assert not res.skipped
    assert {(s.source, s.metric) for s in res.summary} >= {
        ("simtrain_h200_heldout", "step_time_s"),
        ("simtrain_h200_heldout", "peak_memory_bytes"),
    }


@pytest.mark.parametrize(("key", "training", "pp"), [
    ("usp_1B_x", {"global_batch": 8, "micro_batch": 0, "precision": "bf16"}, 2),  # nanotron's
    ("mine_1", {"global_batch": 8, "micro_batch": 0, "precision": "bf16"}, 2),
    ("mine_1", {"global_batch": 2, "precision": "bf16"}, 1),  # fewer sequences than replicas
])  # fmt: skip
def test_a_batch_below_one_sequence_is_a_skip_with_its_reason(key: str, training: dict,
                                                              pp: int) -> None:  # fmt: skip
    """A record's micro-batch of 0 (or, unstated, a global batch smaller than its replicas) is
    not expressible: a skip naming the keys, never a ZeroDivisionError (fuzz seed 22:
    nanotron's batch_accumulation_per_replica divided by it)."""
    out = translate(_record(id=key, source_key=None if key.startswith("usp") else "mine",
                            training=training, parallelism={"tp": 1, "pp": pp, "dp": 4},
                            hardware={"gpu": "H100 80GB", "num_gpus": 4 * pp}))  # fmt: skip
    assert isinstance(out, SkipReason)
    assert "training.micro_batch" in out.reason and "must be >= 1" in out.reason


@pytest.mark.parametrize(("key", "value"), [("pp", [1]), ("tp", "8"), ("virtual_stages", 0),
                                            ("dp", 2.5)])  # fmt: skip
def test_a_degree_that_is_no_integer_is_a_skip_naming_it(key: str, value: object) -> None:
    """A record's parallelism degree that is not an integer >= 1 is not read as 1 (and never
    reaches the importers: fuzz seed 26, pp: [1] under a megatron_sc21 id, a TypeError in
    the pipeline split)."""
    par = {"tp": 1, "pp": 2, key: value}
    out = translate(_record(id="megatron_sc21_x", source_key=None, parallelism=par,
                            hardware={"gpu": "A100-SXM4-80GB", "num_gpus": 4}))  # fmt: skip
    assert isinstance(out, SkipReason)
    assert f"parallelism.{key}" in out.reason and "not an integer" in out.reason


@pytest.mark.parametrize(("tokens", "seq", "sequences"), [
    (16_000_000, 8192, 2048),  # Llama 3 Table 4: batch/DP 32 x DP 64 x 8192 = 2^24 tokens
    (16_000_000, 131072, 128),  # its long-context row: 16 x 8 x 131072
    (4_000_000, 2048, 2048),  # LLaMA 65B's "4M tokens": 2048 x 2048
    (2_000_000, 2048, 1024),  # OPT-175B's "2M": 1024 x 2048 (metaseq)
    (6_291_456, 2048, 3072),  # an exact count is divided as it is
])  # fmt: skip
def test_a_papers_round_million_token_batch_is_read_in_units_of_2_to_the_20(
        tokens: int, seq: int, sequences: int) -> None:  # fmt: skip
    """'16M tokens' that is no whole number of sequences is 16 x 2^20 tokens: Llama 3's Table 4
    gives batch per DP x DP x seq = 2^24 in every row (32 x 64 x 8192, 16 x 128 x 8192); read as
    10^6 the row was a skip ("global batch not reported")."""
    out = translate(_record(model={"layers": 8, "hidden": 1024, "heads": 16, "seq_len": seq,
                                   "vocab": 32000},
                            training={"global_batch_tokens": tokens, "micro_batch": 1,
                                      "precision": "bf16"},
                            parallelism={"tp": 1, "pp": 1, "dp": 16},
                            hardware={"gpu": "H100 80GB", "num_gpus": 16}))  # fmt: skip
    assert isinstance(out, Translation), out
    assert out.scenario.training.global_batch == sequences
    assert any("2^20" in a for a in out.assumptions) == (tokens % seq != 0)


def test_a_token_batch_neither_exact_nor_round_millions_is_a_skip() -> None:
    out = translate(_record(training={"global_batch_tokens": 1_500_000, "precision": "bf16"}))
    assert isinstance(out, SkipReason) and "global batch not reported" in out.reason


@pytest.mark.parametrize(("text", "stage"), [
    ("FSDP: optimizer states + gradients sharded; parameters sharded but NOT resharded after "
     "forward (no extra all-gather in backward)", 2),  # Llama 3's row, not the 3 of "sharded"
    ("FULL_SHARD", 3), ("ZeRO-3 (DeepSpeed)", 3), ("ZeRO stage 1", 1), ("zero-2", 2),
])  # fmt: skip
def test_a_sharding_in_words_is_its_zero_stage(text: str, stage: int) -> None:
    """A record's zero_stage text was read as 0 (``_int`` of a string): now the stage it names,
    with the reason among the assumptions."""
    out = translate(_record(parallelism={"tp": 2, "pp": 1, "zero_stage": text}))
    assert isinstance(out, Translation), out
    assert out.scenario.parallelism.zero_stage == stage
    assert any(a.startswith("zero_stage") for a in out.assumptions)


def test_a_sharding_in_words_simtrain_does_not_know_is_a_skip_naming_the_key() -> None:
    out = translate(_record(parallelism={"tp": 2, "pp": 1, "zero_stage": "sharded a bit"}))
    assert isinstance(out, SkipReason)
    assert "parallelism.zero_stage" in out.reason and "ZeRO-1/2/3" in out.reason


def test_recompute_not_stated_is_the_sources_default_not_a_skip() -> None:
    out = translate(_record(training={"global_batch": 64, "micro_batch": 4, "precision": "bf16",
                                      "recompute": "not stated"}))  # fmt: skip
    assert isinstance(out, Translation), out
    assert out.scenario.training.recompute == "none"
    assert any("recompute not reported" in a for a in out.assumptions)
    bad = translate(_record(training={"global_batch": 64, "micro_batch": 4, "precision": "bf16",
                                      "recompute": "sometimes"}))  # fmt: skip
    assert isinstance(bad, SkipReason) and "recompute 'sometimes'" in bad.reason


def test_first_and_last_stages_one_layer_fewer_as_the_record_says() -> None:
    """Llama 3 (§3.3.2): one layer fewer on the first and the last stage: 126 layers over 16
    stages are 7, 8 x 14, 7 (an even split does not exist: the row was a skip)."""
    model = {"layers": 126, "hidden": 1024, "heads": 16, "seq_len": 1024, "vocab": 32000}
    par = {
        "tp": 1,
        "pp": 16,
        "dp": 1,
        "schedule": "interleaved 1F1B with tunable N; first/last stage one layer fewer",
    }
    out = translate(_record(model=model, parallelism=par,
                            hardware={"gpu": "H100 80GB", "num_gpus": 16}))  # fmt: skip
    assert isinstance(out, Translation), out
    p = out.scenario.parallelism
    assert (p.first_stage_layers, p.last_stage_layers, p.virtual_stages) == (7, 7, 1)
    plain = translate(_record(model=model, parallelism={**par, "schedule": "1F1B"},
                              hardware={"gpu": "H100 80GB", "num_gpus": 16}))  # fmt: skip
    assert isinstance(plain, SkipReason) and "must divide model.layers" in plain.reason


def test_llama3_rows_run_tensor_parallel_with_sequence_parallelism() -> None:
    out = translate(_record(id="llama3_x", source_key="llama3",
                            parallelism={"tp": 8, "pp": 1, "dp": 2},
                            hardware={"gpu": "H100 80GB", "num_gpus": 16}))  # fmt: skip
    assert isinstance(out, Translation), out
    assert out.scenario.parallelism.sequence_parallel
    assert any("SequenceParallel" in a for a in out.assumptions)


@pytest.mark.parametrize(("source", "notes", "runtime"), [
    ("Jiang et al. 2024, MegaScale (NSDI'24), Table 2; built on Megatron-LM", "", "megatron_core"),
    ("Smith et al. 2022, MT-NLG", "Megatron-DeepSpeed, 3D parallelism", "deepspeed"),
    ("Narayanan et al. 2021, Megatron-LM (SC'21)", "", "megatron_lm_2021"),
    ("a 2022 paper", "Megatron-LM with sequence parallelism", "megatron_lm_2022"),
    ("NVIDIA NeMo docs, performance summary", "", "megatron_core"),
    ("pytorch/torchtitan benchmarks", "", "torchtitan"),
    ("a blog", "trained with MosaicML Composer", "llm_foundry"),
    ("a blog", "HF Trainer on one GPU", "pytorch_eager"),
    ("my cluster", "", "pytorch_eager"),  # names nothing: users' runs, as before
])  # fmt: skip
def test_a_new_sources_runtime_is_the_framework_its_record_names(source: str, notes: str,
                                                                 runtime: str) -> None:  # fmt: skip
    """A record of a source simtrain has no convention for ran under pytorch_eager whatever it
    said; now under the profile of the framework its own text names (DeepSpeed before Megatron:
    Megatron-DeepSpeed runs DeepSpeed's engine; Megatron by the year its source gives)."""
    out = translate(_record(source=source, notes=notes))
    assert isinstance(out, Translation), out
    assert out.scenario.runtime.name == runtime
    assert any("the record names" in a for a in out.assumptions) == (source != "my cluster")


def test_a_known_sources_runtime_is_its_own_whatever_its_text_names() -> None:
    rec = _record(id="mpt_x", source_key="mosaicml", source="llm-foundry benchmarks",
                  notes="compared with DeepSpeed ZeRO-3 elsewhere")  # fmt: skip
    out = translate(rec)
    assert isinstance(out, Translation), out
    assert out.scenario.runtime.name == "llm_foundry"


# ---- records in their sources' words (a review of the translation, 2026-12-05)


@pytest.mark.parametrize(("text", "stage"), [
    ("FSDP: parameters, gradients and optimizer states sharded", 3),  # was read as 1
    ("optimizer states + gradients sharded", 2),  # was a skip
    ("FSDP", 3), ("FSDP full shard", 3), ("fully sharded", 3), ("distributed optimizer", 1),
    ("none", 0), ("no sharding (DDP)", 0), ("1", 1), ("0", 0),
    # a second review: negations and each word's own subject
    ("DDP, not FSDP", 0), ("none (plain DDP, no FSDP)", 0), ("ZeRO-0", 0), ("stage 0", 0),
    ("parameters replicated, optimizer states sharded", 1),
    ("gradients reduced, optimizer states sharded", 1),
    # a third: a named stage wins over another scheme's negation, not over its own
    ("Distributed optimizer (ZeRO-1), no FSDP", 1), ("ZeRO-1; not ZeRO-3", 1),
    ("ZeRO-3 (stage 3), no zero-bubble", 3), ("no ZeRO-3", 0),
])  # fmt: skip
def test_more_shardings_in_words(text: str, stage: int) -> None:
    out = translate(_record(parallelism={"tp": 2, "pp": 1, "zero_stage": text}))
    assert isinstance(out, Translation), out
    assert out.scenario.parallelism.zero_stage == stage


def test_a_zero_stage_not_stated_is_the_sources_default() -> None:
    out = translate(_record(parallelism={"tp": 2, "pp": 1, "zero_stage": "not stated"}))
    assert isinstance(out, Translation), out
    assert out.scenario.parallelism.zero_stage == 0


@pytest.mark.parametrize(
    "rid",
    [
        "torchtitan_2412_t3_8b_128gpu_FSDP_torchcompile",
        "megatron_sc21_t1_3.6B",
        "korthikanti22_t5_22B_sp_selective",
    ],
)
def test_a_zero_stage_in_words_reaches_the_importers_as_a_number(default_records: dict,
                                                                 rid: str) -> None:  # fmt: skip
    """The importer families read zero_stage with int(): a text crashed the whole validate run
    (ValueError); the words are read once, for both paths."""
    rec = default_records[rid]
    rec = replace(rec, parallelism={**rec.parallelism, "zero_stage": "ZeRO-1 (distributed "
                                                                      "optimizer)"})  # fmt: skip
    out = translate(rec)
    assert isinstance(out, Translation), out
    number = translate(replace(rec, parallelism={**rec.parallelism, "zero_stage": 1}))
    assert isinstance(number, Translation)
    assert out.scenario == number.scenario  # (torchtitan's importer: FSDP's nearest, ZeRO-2)


@pytest.mark.parametrize(
    ("value", "sp"),
    [("not stated", False), ("false", False), ("true", True), ("yes", True), (False, False)],
)
def test_sequence_parallel_in_words(value: object, sp: bool) -> None:
    """'not stated' or 'false' was read as true (a non-empty text); now the word it is, or the
    source's default where the record is silent."""
    out = translate(_record(parallelism={"tp": 2, "pp": 1, "sequence_parallel": value}))
    assert isinstance(out, Translation), out
    assert out.scenario.parallelism.sequence_parallel is sp


def test_sequence_parallel_in_other_words_is_a_skip_naming_the_key() -> None:
    out = translate(_record(parallelism={"tp": 2, "pp": 1, "sequence_parallel": "sometimes"}))
    assert isinstance(out, SkipReason) and "parallelism.sequence_parallel" in out.reason


@pytest.mark.parametrize(("text", "reading"), [
    ("OOM", "oom"), ("out of memory", "oom"), ("CUDA error: out of memory", "oom"),
    ("OOM (CUDA out of memory)", "oom"), ("out_of_memory", "oom"),
    ("crashed_or_oom", "crashed_or_oom"), ("crashed or OOM", "crashed_or_oom"),
    ("crashed/oom", "crashed_or_oom"), ("crashed", "crashed_or_oom"),
    ("NCCL error", "crashed_or_oom"), ("completed", "fit"), (None, "fit"),
    ("fits (no OOM)", "fit"), ("ran without OOM errors", "fit"),
    ("success (no errors)", "fit"), ("unchanged", "fit"),  # (not 'hang')
])  # fmt: skip
def test_an_outcome_in_words(text: str | None, reading: str) -> None:
    """An outcome is an OOM, a crash that may be either, or (anything else) a run that fit."""
    from simtrain.apps.validate.measured import read_outcome

    assert read_outcome(text) == reading


def test_an_out_of_memory_outcome_is_a_measured_oom(tmp_path: Path) -> None:
    """'out of memory' was read as a run that fit (only 'oom' / 'out_of_memory' were OOM)."""
    from simtrain.apps.validate.measured import measured_values

    rec = _record(measured={"outcome": "out of memory"})
    tr = translate(rec)
    assert isinstance(tr, Translation)
    assert measured_values(rec, tr.scenario)["fits"] is False


@pytest.mark.parametrize(("text", "precision"), [
    ("bfloat16", "bf16"), ("float16 mixed precision", "fp16"),
    ("bf16 (FP32 gradient accumulation)", "bf16_fp32_grads"), ("bf16 (fp32 grads)",
                                                               "bf16_fp32_grads"),
    ("bf16, grads accumulated in fp32", "bf16_fp32_grads"),
])  # fmt: skip
def test_precisions_in_more_words(text: str, precision: str) -> None:
    assert map_precision("FP8-MX") == "mxfp8"  # Megatron-Bridge's tables (was fp8_delayed)
    out = translate(_record(training={"global_batch": 64, "micro_batch": 4, "precision": text}))
    assert isinstance(out, Translation), out
    assert out.scenario.training.precision == precision


@pytest.mark.parametrize(("value", "recompute"), [
    (False, "none"), ("no", "none"), ("off", "none"), ("not used", "none"),
    ("gradient checkpointing", "full"), ("activation checkpointing", "full"),
])  # fmt: skip
def test_recompute_in_more_words(value: object, recompute: str) -> None:
    out = translate(_record(training={"global_batch": 64, "micro_batch": 4, "precision": "bf16",
                                      "recompute": value}))  # fmt: skip
    assert isinstance(out, Translation), out
    assert out.scenario.training.recompute == recompute


@pytest.mark.parametrize("value", ["none", False, "not stated"])
def test_no_offload_in_words_is_no_offload(value: object) -> None:
    out = translate(_record(parallelism={"tp": 2, "pp": 1, "offload": value},
                            training={"global_batch": 64, "micro_batch": 4, "precision": "bf16",
                                      "activation_cpu_offload": "false"}))  # fmt: skip
    assert isinstance(out, Translation), out


def test_fsdp_keys_set_the_zero_stage() -> None:
    out = translate(_record(parallelism={"tp": 2, "pp": 1, "fsdp": True}))
    assert isinstance(out, Translation) and out.scenario.parallelism.zero_stage == 3
    out = translate(_record(parallelism={"tp": 2, "pp": 1, "fsdp_sharding": "shard_grad_op"}))
    assert isinstance(out, Translation) and out.scenario.parallelism.zero_stage == 2
    out = translate(_record(parallelism={"tp": 2, "pp": 1, "fsdp": False}))
    assert isinstance(out, Translation) and out.scenario.parallelism.zero_stage == 0
    bad = translate(_record(parallelism={"tp": 2, "pp": 1, "fsdp_sharding": "SOMETIMES"}))
    assert isinstance(bad, SkipReason) and "fsdp_sharding" in bad.reason


def test_batch_from_grad_accum() -> None:
    out = translate(_record(training={"global_batch": 64, "grad_accum": 4, "precision": "bf16"},
                            parallelism={"tp": 2, "pp": 1}))  # fmt: skip
    assert isinstance(out, Translation), out
    assert out.scenario.training.micro_batch == 2  # 64 / (dp 8 x 4)
    out = translate(_record(training={"micro_batch": 2, "grad_accum": 4, "precision": "bf16"},
                            parallelism={"tp": 2, "pp": 1}))  # fmt: skip
    assert isinstance(out, Translation), out
    assert out.scenario.training.global_batch == 64


def test_a_null_degree_or_an_unreadable_value_is_no_traceback(default_records: dict) -> None:
    rec = default_records["megatron_sc21_t1_3.6B"]
    out = translate(replace(rec, parallelism={**rec.parallelism, "virtual_stages": None}))
    assert isinstance(out, Translation), out
    odd = translate(_record(model={"layers": 8, "hidden": 1024, "heads": 16, "seq_len": 1024,
                                   "vocab": 32000, "ffn_hidden": [4096]}))  # fmt: skip
    assert isinstance(odd, SkipReason) and "model.ffn_hidden" in odd.reason, odd


def test_a_framework_key_outranks_other_frameworks_the_text_names() -> None:
    from simtrain.apps.validate.conventions import inferred_runtime

    found = inferred_runtime("Foo 2023", "compared to DeepSpeed ZeRO-3",
                             [{"framework": "Megatron-Core"}])  # fmt: skip
    assert found is not None and found[0] == "megatron_core"


@pytest.mark.parametrize(("notes", "loss"), [
    ("trained with nanotron", "sharded"),
    ("trained with llm-foundry", "fused"),
    ("Megatron-Core r0.9", "vocab_parallel"),
    ("Megatron-LM, 2021", "vocab_parallel"),
    ("our own PyTorch loop", "standard"),
])  # fmt: skip
def test_a_source_without_a_convention_gets_its_frameworks_loss(notes: str, loss: str) -> None:
    """A user's record of a source simtrain has no convention for runs the loss of the framework
    its words name (conventions.FRAMEWORK_LOSSES), as that framework's own sources do."""
    out = translate(_record(notes=notes))
    assert isinstance(out, Translation), out
    assert out.scenario.training.cross_entropy == loss
    assert (loss == "standard") != any(n.startswith("loss") for n in out.assumptions)


@pytest.mark.parametrize("said", [
    "we reduce one Transformer layer each from the first and the last stages",
    "the first and last stages have one layer fewer",
    "first/last stage one layer fewer",
])  # fmt: skip
def test_one_layer_fewer_in_its_phrasings(said: str) -> None:
    model = {"layers": 126, "hidden": 1024, "heads": 16, "seq_len": 1024, "vocab": 32000}
    out = translate(_record(model=model, parallelism={"tp": 1, "pp": 16, "dp": 1}, notes=said,
                            hardware={"gpu": "H100 80GB", "num_gpus": 16}))  # fmt: skip
    assert isinstance(out, Translation), out
    assert (out.scenario.parallelism.first_stage_layers,
            out.scenario.parallelism.last_stage_layers) == (7, 7)  # fmt: skip


@pytest.mark.parametrize(("model", "expect"), [
    # the name alone: the preset's shape and architecture (Nemotron-4 340B's squared ReLU, GQA)
    ({"name": "Nemotron-340B", "seq_len": 4096},
     {"layers": 96, "hidden": 18432, "kv_heads": 8, "mlp": "relu2", "vocab": 256000}),
    # the shape given, the vocabulary not: the preset's (GPT-3's GPT-2 BPE, 50,257)
    ({"name": "GPT3-175B", "layers": 96, "hidden": 12288, "heads": 96, "seq_len": 2048},
     {"vocab": 50257, "positions": "learned", "mlp": "gelu"}),
    ({"name": "OPT 1.3B", "seq_len": 2048, "params_b": 1.3},
     {"layers": 24, "mlp": "relu", "attention_dropout": True}),  # dropout: the source's (none)
    # a family name without a size, with the record's parameter count
    ({"name": "BLOOM", "params_b": 176, "seq_len": 2048},
     {"layers": 70, "positions": "alibi", "embedding_norm": True}),
])  # fmt: skip
def test_a_named_model_without_its_shape_takes_the_preset(model: dict, expect: dict) -> None:
    tr = translate(_record(model=model, parallelism={"tp": 8, "pp": 1},
                           hardware={"gpu": "H100-SXM5-80GB", "num_gpus": 16}))  # fmt: skip
    assert isinstance(tr, Translation), tr
    m = tr.scenario.model
    assert {k: getattr(m, k) for k in expect} == expect
    assert any("preset" in a and "not reported" in a for a in tr.assumptions)


@pytest.mark.parametrize("model", [
    {"name": "GPT3-175B", "layers": 80, "seq_len": 2048},  # a shape the preset does not have
    {"name": "GPT3-175B", "params_b": 13, "seq_len": 2048},  # another size under the name
    {"name": "GPT-3 (177B incl. larger vocab)", "seq_len": 4096},  # not a preset's name
    {"name": "Nemotron-340B"},  # the run's sequence length is not the model's
    {"name": "GPT-2", "seq_len": 1024},  # a family (124M to 1.5B), no size, no params_b
    {"name": "BLOOM", "seq_len": 2048},
])  # fmt: skip
def test_a_name_that_does_not_fit_a_preset_stays_unexpressible(model: dict) -> None:
    out = translate(_record(model=model))
    assert isinstance(out, SkipReason) and "model shape not reported" in out.reason


@pytest.mark.parametrize("value", ["14.76", True, [1.0], {"gb": 1}])
def test_a_measured_number_that_is_not_one_is_a_skip_naming_the_key(value) -> None:
    """A key validate reads as a number (records.NUMERIC_MEASURED_KEYS) holding a string, a
    bool, a list or a mapping is a skip that names it (it was dropped unsaid: the record then
    compared nothing for it); a key validate does not read stays free text."""
    from simtrain.apps.validate.records import SkipReason

    for key in ("step_peak_mem_gb", "tokens_per_s", "mfu"):
        got = translate(_record(measured={"step_time_s": 1.0, key: value}))
        assert isinstance(got, SkipReason)
        assert got.reason.endswith(f"measured.{key}: must be a number, not {value!r}")
    free = translate(_record(measured={"step_time_s": 1.0, "job": value}))
    assert not isinstance(free, SkipReason)


def test_a_record_simtrain_fails_on_is_a_skip_not_the_end_of_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error inside simtrain's own prediction for one record (here a stand-in: the memory
    estimate of the 24-layer scenario raises) is that record's skip reason, naming the error;
    the other records are still compared, serially and in worker processes alike (the
    caching-allocator replay's IndexError on 9 of the Playbook CSV's rows ended whole runs)."""
    import simtrain.apps.validate.predict as predict_module

    real = predict_module.estimate_memory

    def failing(sc):
        if sc.model.layers == 24:
            raise IndexError("pop from empty list")
        return real(sc)

    monkeypatch.setattr(predict_module, "estimate_memory", failing)
    rows = "\n".join(
        f"""- id: lab_{i}
  kind: training_run
  source: our cluster, 2026-01-01
  model: {{layers: {layers}, hidden: 768, heads: 12, seq_len: 1024, vocab: 50304}}
  training: {{global_batch: {8 * (i + 1)}, micro_batch: 8, precision: bf16, recompute: none,
             optimizer: adamw}}
  parallelism: {{tp: 1, pp: 1, dp: 1}}
  hardware: {{gpu: A100-SXM4-40GB, num_gpus: 1}}
  measured: {{step_time_s: 0.30, peak_mem_gib: 20.0, flops_convention: simtrain}}"""
        for i, layers in enumerate([12, 24] * 5)
    )
    f = tmp_path / "runs.yaml"
    f.write_text(rows + "\n")
    for workers in (1, 2):  # 10 distinct scenarios: the worker pool runs from 8
        res = validate(f, workers=workers)
        failed = {s.id: s.reason for s in res.skipped}
        assert sorted(failed) == [f"lab_{i}" for i in (1, 3, 5, 7, 9)]
        assert all("simtrain failed" in r and "IndexError: pop from empty list" in r
                   for r in failed.values())  # fmt: skip
        assert {c.id for c in res.comparisons} == {f"lab_{i}" for i in (0, 2, 4, 6, 8)}


def test_a_record_simtrain_cannot_translate_is_a_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error raised inside the translation of one record (a stand-in: the reader of the
    job's network section raises) is that record's skip reason, naming the error; the other
    record is still compared."""
    import importlib

    # (the package exports the function translate under the submodule's name)
    translate_module = importlib.import_module("simtrain.apps.validate.translate")
    real = translate_module.read_job_network

    def failing(hw, num_gpus):
        if num_gpus == 2:
            raise ZeroDivisionError("division by zero")
        return real(hw, num_gpus)

    monkeypatch.setattr(translate_module, "read_job_network", failing)
    f = tmp_path / "runs.yaml"
    f.write_text(
        "\n".join(
            f"""- id: lab_{n}
  kind: training_run
  source: our cluster, 2026-01-01
  model: {{layers: 12, hidden: 768, heads: 12, seq_len: 1024, vocab: 50304}}
  training: {{global_batch: {8 * n}, micro_batch: 8, precision: bf16, recompute: none,
             optimizer: adamw}}
  parallelism: {{tp: 1, pp: 1, dp: {n}}}
  hardware: {{gpu: A100-SXM4-40GB, num_gpus: {n}}}
  measured: {{step_time_s: 0.30, flops_convention: simtrain}}"""
            for n in (1, 2)
        )
        + "\n"
    )
    res = validate(f, workers=1)
    assert [s.id for s in res.skipped] == ["lab_2"]
    assert "simtrain failed translating" in res.skipped[0].reason
    assert "ZeroDivisionError: division by zero" in res.skipped[0].reason
    assert {c.id for c in res.comparisons} == {"lab_1"}
