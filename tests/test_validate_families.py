"""simtrain validate over every published-run file of measured/ (issue 13, Deliver 5 and 6):
families (source keys) and their figures with and without noisy pairs, the precision mapping
(every precision text of the files maps to a simtrain precision or to a named skip), the
conventions of the sources added with measured/more_runs_2026-12.yaml (each FLOP formula checked
against the source's own published numbers) and the runtime each source ran on."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from simtrain.apps.simulate import simulate_scenario
from simtrain.apps.validate import (
    RUNTIME_PROFILES,
    Comparison,
    ErrorStats,
    Record,
    SkipReason,
    Translation,
    layout_key,
    load_records,
    not_yet_expressible,
    read_precision,
    runtime_of,
    translate,
    validate_command,
)
from simtrain.apps.validate.conventions import (
    LLAMA3,
    MCORE_GPT,
    RUNTIMES,
    SOURCES,
    convention_for,
    megatron_core_flops,
    record_convention,
    source_flops,
    torchtitan_flops,
)
from simtrain.apps.validate.records import load_record_files, resolve_paths
from simtrain.apps.validate.run import NOISY_RATIO, family_summaries, noisy_pairs
from simtrain.costs.memory import estimate_memory
from simtrain.errors import ConfigError
from simtrain.spec.runtime import load_runtime
from simtrain.spec.scenario import parse_scenario

ROOT = Path(__file__).resolve().parent.parent
MEASURED = ROOT / "measured"
NEW_FILE = MEASURED / "more_runs_2026-12.yaml"
NEW_FAMILIES = ("bloom_chronicles", "llama3", "megatron_bridge", "megatron_core", "mtnlg", "nemo",
                "torchao", "torchtitan")  # fmt: skip


@pytest.fixture(scope="module")
def new_records() -> dict[str, Record]:
    return {r.id: r for r in load_records(NEW_FILE)}


@pytest.fixture(scope="module")
def all_records(default_records: dict[str, Record]) -> list[Record]:
    """conftest's ``default_records`` (every default file), as a list in file order."""
    return list(default_records.values())


# --------------------------------------------------------------------------- the record files


def test_new_file_is_the_shared_delivery() -> None:
    """measured/more_runs_2026-12.yaml is a byte copy of the delivered file (68 records)."""
    shared = ROOT.parent / "shared" / "measured" / "more_runs_2026-12.yaml"
    if shared.is_file():
        assert NEW_FILE.read_bytes() == shared.read_bytes()
    assert len(load_records(NEW_FILE)) == 68


def test_default_reads_every_published_run_file() -> None:
    """No PATH: published_runs.yaml, more_runs_2026-12.yaml and SimuMax's published B200 runs,
    not simtrain's own H200 runs."""
    names = [p.name for p in resolve_paths(None)]
    assert names == ["published_runs.yaml", "more_runs_2026-12.yaml", "simumax_b200.yaml",
                     "torchao_float8.yaml", "torchtitan_2412.yaml",
                     "torchtitan_2506_asynctp.yaml", "llama3_table4.yaml",
                     "mbridge_2511.yaml", "mbridge_26x.yaml", "fms_fsdp.yaml",
                     "kempnerforge.yaml", "nemo_automodel.yaml", "nemo2407_rest.yaml"]  # fmt: skip
    assert "simtrain_h200.yaml" not in names


def test_an_id_in_two_files_is_an_error(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("- id: run_1\n")
    b.write_text("- id: run_2\n- id: run_1\n")
    with pytest.raises(ConfigError, match="duplicate id"):
        load_record_files([a, b])


def test_new_source_keys(new_records: dict) -> None:
    assert {r.source_key for r in new_records.values()} == set(NEW_FAMILIES)
    # the chronicles are their own family, not the BLOOM-176B run's
    assert all(
        r.source_key == "bloom_chronicles" for i, r in new_records.items() if i.startswith("bloom")
    )


# --------------------------------------------------------------------------- precision


# Every precision text of the two files: the simtrain precision it maps to, or the word its skip
# reason names. A new text in a file fails the first assertion until it is added here.
PRECISION_TEXTS = {
    "4-bit NF4 storage, bf16 compute": "4-bit",
    "amp_bf16 (FSDP mixed_precision=DEFAULT)": "amp_bf16",
    "amp_fp8 (FSDP mixed_precision=DEFAULT)": "fp8_delayed",
    "bf16": "bf16",
    "bf16 (BF16_Optimizer, fp32 grad accumulation)": "bf16",
    "bf16 (FSDP mixed_precision=PURE)": "bf16",
    "bf16 (fp32 grad accumulation)": "bf16",
    "bf16 (FP32 grad accumulation and FP32 reduce-scatter)": "bf16",
    "bf16 + Float8 linears": "fp8_tensorwise",
    "bf16 + Float8 linears (FSDP float8 all-gather)": "fp8_tensorwise",
    "bf16 + float8 rowwise linears": "fp8_rowwise",
    "bf16 + float8 tensorwise linears": "fp8_tensorwise",
    "bf16 AMP": "amp_bf16",
    "bf16 mixed (FSDP)": "bf16",
    "FP8": "fp8_delayed",
    "FP8 (Transformer Engine) mixed with BF16": "fp8_delayed",
    "FP8-CS (FP8 current scaling)": "fp8_current",
    "FP8-MX (MXFP8)": "mxfp8",
    "NVFP4": "nvfp4",
    "BF16": "bf16",
    "fp16": "fp16",
    "fp16 (--fp16)": "fp16",
    "fp16 AMP": "amp_fp16",
    "fp16 mixed precision": "fp16",
    "fp16 weights, fp32 Adam state, dynamic loss scaling": "fp16",
    "fp32": "fp32",
    "full bf16 (no AMP)": "bf16_pure",
    "mixed precision": "not stated",
    "mixed precision (16-bit)": "fp16",
    "not stated (bf16/fp16 mixed)": "not stated",
    None: "not reported",
}


def test_every_precision_text_maps_or_is_a_named_skip(all_records: list) -> None:
    texts = {r.training.get("precision") for r in all_records}
    assert texts == set(PRECISION_TEXTS)
    for text, expected in PRECISION_TEXTS.items():
        precision, why = read_precision(text)
        if precision is not None:
            assert precision == expected, text
        else:
            assert expected in why, (text, why)


def test_no_record_is_simulated_in_a_precision_it_does_not_name(all_records: list) -> None:
    """A translated record's precision is its text's mapping, or the source convention's reading
    of it, stated among the assumptions (nanotron's and the BLOOM chronicles' fp32 gradient
    buffer, Composer's amp_bf16 under FSDP, an unstated 16-bit format), never a silent bf16; an
    FP8 record is skipped with a reason naming FP8."""
    for rec in all_records:
        text = rec.training.get("precision")
        tr = translate(rec)
        mapped, why = read_precision(text)
        if isinstance(tr, SkipReason):
            if mapped is None and "FP8" in why:
                assert "FP8" in tr.reason, (rec.id, tr.reason)
            continue
        got = tr.scenario.training.precision
        conv = convention_for(rec)
        if mapped is None:
            assert conv.precision_unstated is not None and got == conv.precision_unstated[0]
            assert conv.precision_unstated[1] in tr.assumptions, rec.id
        elif mapped != got:  # the source's reading, stated among the assumptions
            if mapped in conv.precision_map:
                assert conv.precision_map[mapped] == (got, conv.precision_map[mapped][1])
                assert conv.precision_map[mapped][1] in tr.assumptions, rec.id
            else:
                assert (mapped, got) == ("bf16", "bf16_fp32_grads"), (rec.id, text, got)
                assert "fp32 grad accum" in str(text).lower(), rec.id


def test_float8_rows_are_fp8_not_bf16(new_records: dict) -> None:
    """torchtitan's 'bf16 + Float8 linears' used to read as bf16 (the word bf16 matched first);
    now each runs torchao's recipe it names, or is skipped for something else it needs."""
    rows = [r for r in new_records.values() if "float8" in str(r.training.get("precision")).lower()]
    assert len(rows) == 9
    for r in rows:
        out = translate(r)
        if isinstance(out, SkipReason):
            assert "bf16" not in out.reason.split("(got")[0], (r.id, out.reason)
            continue
        assert out.scenario.training.precision in ("fp8_tensorwise", "fp8_rowwise"), r.id


def test_later_issue_features_are_named_together(new_records: dict) -> None:
    assert not_yet_expressible(new_records["mbridge2511_B200_LLAMA3_8B_8gpu"]) == []
    # Context parallelism is expressible now (parallelism.cp); this row is refused for its
    # printed GPU count, which its layout does not multiply to (the record's notes say so).
    assert not_yet_expressible(new_records["llama3_405b_t4_16384gpu_seq131072"]) == []
    out = translate(new_records["llama3_405b_t4_16384gpu_seq131072"])
    assert isinstance(out, SkipReason) and "num_gpus 16384 != tp x pp x cp x dp" in out.reason
    moe = replace(new_records["mtnlg530b_2240gpu"], model={"num_experts": 8}, parallelism={"ep": 8})
    # (MT-NLG's family is read through the Megatron importer; the experts are laid over its flags)
    assert not_yet_expressible(moe) == []
    mt = new_records["mtnlg530b_2240gpu"]
    tr = translate(replace(mt, model={**mt.model, "num_experts": 8, "experts_per_token": 2},
                           parallelism={**mt.parallelism, "ep": 8, "sequence_parallel": True}))  # fmt: skip
    assert not isinstance(tr, SkipReason), tr
    assert (tr.scenario.model.num_experts, tr.scenario.parallelism.ep) == (8, 8)
    assert "parallelism.ep=8" in tr.native.sets and "model.num_experts=8" in tr.native.sets
    b100 = replace(new_records["mtnlg530b_2240gpu"], hardware={"gpu": "B100"})
    assert not_yet_expressible(b100) == ["Blackwell GPU 'B100'"]
    assert not_yet_expressible(new_records["mtnlg530b_2240gpu"]) == []


def test_a_moe_preset_named_by_the_record_is_expressible(new_records: dict) -> None:
    """A row that names a mixture-of-experts model the presets hold ("DeepSeekV3" at 671 B,
    "Qwen3_30B_a3B", "GPT OSS 120B": Megatron-Bridge's performance tables give names, not
    shapes) takes the preset's experts, so its expert parallelism is expressible; a name no
    preset holds still says what is missing. Llama 3.1's names find Llama 3's shapes."""
    from simtrain.spec.model import find_preset

    base = new_records["mbridge2511_B200_LLAMA3_8B_8gpu"]
    for name, params_b in (("DeepSeekV3", 671), ("Qwen3_30B_a3B", None), ("GPT OSS 120B", 117)):
        model = {"name": name, "seq_len": 4096, **({"params_b": params_b} if params_b else {})}
        rec = replace(base, model=model, parallelism={**base.parallelism, "ep": 8})
        assert not_yet_expressible(rec) == [], name
    for name, why in (
        ("SomeMoE 50B", " (model 'SomeMoE 50B': no simtrain preset by that name, and no shape)"),
        ("LLAMA3_70B", ""),
    ):  # no preset (the reason says so); a dense preset
        odd = replace(base, model={"name": name, "seq_len": 4096},
                      parallelism={**base.parallelism, "ep": 8})  # fmt: skip
        assert not_yet_expressible(odd) == [
            "expert parallelism (ep 8) without model.num_experts" + why
        ]
    assert [find_preset(n, loose=True) for n in ("LLAMA3.1_405B", "Llama-3.1-8B", "llama3.1-70b")] == [
        "llama3-405b", "llama3-8b", "llama3-70b"]  # fmt: skip


def test_megatron_bridge_rack_jobs_run_in_their_slurm_segments(default_records: dict) -> None:
    """Megatron-Bridge's launcher asks Slurm for segments of all the 4-GPU trays up to 18, else
    the largest divisor of the tray count up to 18 (00b7660b scripts/performance/utils/
    executors.py l.113-121): 256 GPUs are 64 trays in segments of 16, NVLink domains of 64
    GPUs, not of the rack's 72; its DeepSeek-V3 layout (recipes/deepseek/deepseek_v3.py
    layout_map) and Qwen3-235B-A22B's embedding and loss counted as layers
    (recipes/qwen/qwen3_moe.py) give their rows a split."""
    from simtrain.apps.validate.native import mbridge_nvlink_domain

    assert [mbridge_nvlink_domain(g) for g in (8, 64, 72, 128, 256, 288, 1024)] == [
        8, 64, 72, 64, 64, 72, 64]  # fmt: skip
    ds = translate(default_records["mbridge2511_GB200_DeepSeekV3_BF16_256gpu"])
    assert not isinstance(ds, SkipReason), ds
    assert (ds.scenario.cluster.nodes, ds.scenario.cluster.gpus_per_node) == (4, 64)
    p = ds.scenario.parallelism
    assert (p.pp, p.virtual_stages, p.ep) == (4, 4, 64)
    assert p.layer_split == (*[4] * 15, 1) and ds.scenario.model.mtp_layers == 1
    assert ds.scenario.training.optimizer_state_dtype == "bf16"  # the recipe's bf16 moments
    b16 = translate(default_records["mbridge2511_B200_DeepSeekV3_FP8MX_256gpu"]).scenario
    assert (b16.parallelism.pp, b16.parallelism.virtual_stages) == (16, 1)
    assert b16.parallelism.layer_split == (*[4] * 15, 1)
    qw = translate(default_records["mbridge2511_GB200_Qwen3_235B_a22B_BF16_256gpu"]).scenario
    assert qw.parallelism.account_for_embedding and qw.parallelism.account_for_loss
    # a DGX B200 job keeps its 8-GPU nodes
    b200 = translate(default_records["mbridge2511_B200_GPT_OSS_120B_BF16_64gpu"]).scenario
    assert (b200.cluster.nodes, b200.cluster.gpus_per_node) == (8, 8)


def test_megatron_bridge_flops_are_its_tables_own_ratio(default_records: dict) -> None:
    """Megatron-Bridge's FLOP count (flop_utils.py transformer_flops at 00b7660b: dense and MoE
    layers, shared experts, MTP modules, multi-latent attention, causal scores; a gated MLP at
    3/2 only with SiLU, so GPT-OSS's quick_gelu GLU at 1) reproduces each row's own TFLOP/s
    over tokens/s (the table's FLOPs per token, an independent value) within 0.35 %: 28 rows
    of dense Llama, DeepSeek-V3, Qwen3 and GPT-OSS. Two rows' ratio is the count without the
    MTP module, their runs' setting (GB200 DeepSeek-V3 BF16: +4.4 % with it, +0.3 % without;
    GB200 DeepSeek-V3 MXFP8, pp 8 vp 4: +4.2 % with it)."""
    import dataclasses as dc

    from simtrain.apps.validate.conventions import convention_for, source_flops

    # (the 26.x rows, mbridge_26x.yaml, are those releases' own count: from 26.06 on GPT-OSS's
    # per token is 1.20x this port of 00b7660b's, a later flop_utils.py)
    rows = [r for r in default_records.values()
            if r.source_key == "megatron_bridge" and not r.id.startswith("mbridge26")]  # fmt: skip
    checked = 0
    for rec in rows:
        tr = translate(rec)
        if isinstance(tr, SkipReason):
            continue
        sc = tr.scenario
        if rec.id.startswith("mbridge2511_GB200_DeepSeekV3_"):
            sc = dc.replace(sc, model=dc.replace(sc.model, mtp_layers=0))
        per_token = source_flops(sc, convention_for(rec), "tflops") / (
            sc.training.global_batch * sc.training.seq_len)  # fmt: skip
        table = rec.measured["model_tflops_per_gpu"] * 1e12 / rec.measured["tokens_per_s_per_gpu"]
        assert abs(per_token / table - 1) < 0.0035, (rec.id, per_token, table)
        checked += 1
    assert checked == 29


def test_deepseek_v3_flops_by_hand() -> None:
    """Megatron-Bridge's count (flop_utils.py transformer_flops at 00b7660b) of DeepSeek-V3 at
    4,096 tokens, per token, written out: 62 layers with the MTP module (3 dense, 59 MoE, whose
    8 routed experts and 1 shared of 2,048 are 18,432 wide, as the dense MLP), SwiGLU at 3/2:
    MLP 12·62·7168·18432·1.5; MLA 6·62·(1536·(7168 + 128·192 + 1) + 512·(7168 + 128·256 + 1)
    + 7168·64 + 128·128·7168 + 4096·128·192/2 + 4096·128·128/2); MTP 6·(3·7168 + 2·7168²);
    logits 6·7168·129280·2."""
    from simtrain.apps.validate.conventions import megatron_core_flops

    mlp = 12 * 62 * 7168 * 18432 * 1.5
    mla = 6 * 62 * (1536 * (7168 + 128 * 192 + 1) + 512 * (7168 + 128 * 256 + 1) + 7168 * 64
                    + 128 * 128 * 7168 + 4096 * 128 * 192 / 2 + 4096 * 128 * 128 / 2)  # fmt: skip
    mtp = 6 * (3 * 7168 + 2 * 7168**2)
    logits = 6 * 7168 * 129280 * 2
    sc = parse_scenario({"name": "ds", "model": {"preset": "deepseek-v3"}, "hardware": "h100_sxm5_80gb",
                         "training": {"seq_len": 4096, "global_batch": 1, "micro_batch": 1}},
                        "test")  # fmt: skip
    assert megatron_core_flops(sc, causal=True) / 4096 == pytest.approx(
        mlp + mla + mtp + logits, rel=1e-12
    )


def test_source_convention_overrides_the_runtime(new_records: dict) -> None:
    """Meta's Llama 3 rows run under torchtitan's profile (conventions.RUNTIMES) with the
    element-wise ops fused (its convention's runtime_overrides), unlike torchtitan's eager
    default, and say so; another torchtitan-run source keeps the profile's value."""
    rec = new_records["llama3_405b_t4_16384gpu_seq131072"]
    # made expressible (the row itself is refused: its printed GPU count, no global batch)
    rec = replace(rec, hardware={**rec.hardware, "num_gpus": 8 * 2 * 16 * 4},
                  parallelism={**rec.parallelism, "pp": 2},
                  training={**rec.training, "global_batch": 64, "recompute": "none"})  # fmt: skip
    out = translate(rec)
    assert out.scenario.runtime.name == "torchtitan"
    assert out.scenario.runtime.eager_elementwise is False
    assert any("eager_elementwise False" in a for a in out.assumptions)
    from simtrain.spec.runtime import load_runtime

    assert load_runtime("torchtitan").eager_elementwise is True


def test_llama3_pipeline_is_its_papers_interleaved_split(default_records: dict) -> None:
    """Dubey et al. 2024 §3.3.2: "we reduce one Transformer layer each from the first and the
    last stages ... This means that the first model chunk on the first stage has only the
    embedding, and the last model chunk on the last stage has only output projection and
    loss", under an interleaved schedule: one layer per model chunk, so 126 + 2 slots over pp 16
    are v = 8 chunks per rank, chunk 0 (rank 0's first) and chunk 127 (rank 15's last) without
    a decoder layer. The stages' input and output tensors are freed once used (its
    runtime_overrides). The two rows: measured/llama3_table4.yaml."""
    for gpus, dp, m in ((8192, 64, 32), (16384, 128, 16)):
        out = translate(default_records[f"llama3_405b_t4_{gpus}gpu_seq8192"])
        assert not isinstance(out, SkipReason), out
        p = out.scenario.parallelism
        assert (p.tp, p.pp, p.dp, p.schedule, p.virtual_stages) == (8, 16, dp, "interleaved", 8)
        assert p.layer_split == (0, *[1] * 126, 0)
        assert out.scenario.num_microbatches == m and out.scenario.training.recompute == "none"
        rt = out.scenario.runtime
        assert not (rt.pipeline_keeps_stage_outputs or rt.pipeline_keeps_last_outputs
                    or rt.pipeline_recv_buffers_per_microbatch or rt.tp_saves_gathered_input)  # fmt: skip
        assert rt.tp_regather_backward  # Korthikanti's sequence parallelism
        assert any("virtual stages not reported: 8" in a for a in out.assumptions)
    # A source without the convention, or a record that says non-interleaved, keeps v = 1.
    rec = default_records["llama3_405b_t4_8192gpu_seq8192"]
    said = replace(rec, parallelism={**rec.parallelism, "schedule": "1F1B (non-interleaved); "
                                     "first/last stage one layer fewer"})  # fmt: skip
    p = translate(said).scenario.parallelism
    assert (p.schedule, p.virtual_stages, p.first_stage_layers, p.last_stage_layers) == (
        "1f1b",
        1,
        7,
        7,
    )


@pytest.mark.parametrize(("text", "interleaved"), [
    ("interleaved 1F1B", True), ("Interleaved1F1B", True),
    ("interleaved 1F1B with tunable N (custom DFS/BFS hybrid)", True),
    ("1F1B (non-interleaved; no virtual-pipeline flag in script)", False),
    ("non interleaved", False), ("Non-Interleaved", False), ("non\u2013interleaved", False),
    ("not interleaved", False), ("1F1B without interleaving", False),
    ("1F1B (no interleaving)", False), ("Interleaved: no", False),
    ("InterleavedZeroBubble", False), ("1F1B", False),
    ("Interleaved 1F1B (vs. a non-interleaved baseline)", True),
    ("Interleaved (v=2), no-interleaving ablation", True),
])  # fmt: skip
def test_a_schedule_text_names_interleaving_only_when_it_does(text: str, interleaved: bool) -> None:
    """The schedule texts that let a convention imply its virtual stages
    (translate._implied_interleaving): the interleaved 1F1B named, not negated nor another
    interleaving schedule."""
    from simtrain.apps.validate.translate import _names_interleaved

    assert _names_interleaved(text) is interleaved


def test_fp16_and_bf16_predict_alike_on_a100() -> None:
    """MT-NLG's 'mixed precision' is read as fp16 on the ground that fp16 and bf16 predict the
    same on an A100 (same 312 TFLOP/s peak, same bytes) under the runtime it ran (deepspeed):
    checked on a small scenario. Under Megatron's Float16 optimizer fp16 adds exactly the
    unscale and inf check of the fp32 main grads (4 + 4 B per parameter on the GPU)."""

    def sc(precision: str, runtime: str = "deepspeed"):
        return parse_scenario({
            "name": "x", "model": {"layers": 4, "hidden": 1024, "heads": 16, "vocab": 32000},
            "hardware": "a100_sxm4_80gb", "runtime": runtime,
            "training": {"seq_len": 1024, "global_batch": 8, "micro_batch": 2,
                         "precision": precision, "recompute": "full"},
            "parallelism": {"dp": 2, "tp": 2, "pp": 2},
        }, "t")  # fmt: skip

    a, b = sc("fp16"), sc("bf16")
    assert simulate_scenario(a).metrics.step_time_s == simulate_scenario(b).metrics.step_time_s
    assert estimate_memory(a).peak_memory_bytes == estimate_memory(b).peak_memory_bytes
    a, b = sc("fp16", "megatron_lm_2021"), sc("bf16", "megatron_lm_2021")
    ra, rb = simulate_scenario(a), simulate_scenario(b)
    assert estimate_memory(a).peak_memory_bytes == estimate_memory(b).peak_memory_bytes
    hw = a.hardware
    # the step grows by stage 0's unscale pass (its optimizer step ends the step): 8 B per
    # trainable parameter at 2,039 GB/s x 0.64 (the profile's element-wise rate: no measured
    # optimizer rate)
    stage0 = ra.memory.stages[0].trainable
    grow_ns = 1e9 * (ra.metrics.step_time_s - rb.metrics.step_time_s)
    assert grow_ns == pytest.approx(1e9 * 8 * stage0 / (2039e9 * 0.64), abs=2)
    assert hw.hbm_bandwidth_bytes_per_s == 2039e9 and hw.efficiency.memory_bound == 0.64
    assert hw.efficiency.optimizer is None


# --------------------------------------------------------------------------- FLOP conventions


def _shape(rec: Record, arch: dict, vocab: int | None = None):
    m = rec.model
    model = {**arch, "layers": m["layers"], "hidden": m["hidden"], "heads": m["heads"],
             "kv_heads": m.get("kv_heads", m["heads"]), "ffn_hidden": m["ffn_hidden"],
             "vocab": vocab or m["vocab"], "max_positions": m["seq_len"]}  # fmt: skip
    training = {"seq_len": m["seq_len"], "global_batch": 1, "micro_batch": 1, "precision": "bf16"}
    return parse_scenario({"name": "x", "model": model, "hardware": "h100_sxm5_80gb",
                           "training": training, "parallelism": {}}, "t")  # fmt: skip


@pytest.mark.parametrize(
    "rid,arch,causal",
    [
        ("nemo2407_h100_fp8_GPT3-175B_128gpu", MCORE_GPT, False),
        ("nemo2407_h100_fp8_LLAMA2-13B_16gpu", LLAMA3, False),
        ("nemo2407_h100_fp8_LLAMA2-70B_64gpu", LLAMA3, False),
        ("mbridge2511_B200_LLAMA3_8B_8gpu", LLAMA3, True),
        ("mbridge2511_H100_LLAMA3.1_405B_1024gpu", LLAMA3, True),
        ("mbridge2511_GB200_LLAMA3.1_405B_256gpu", LLAMA3, True),
    ],
)
def test_megatron_core_flops_reproduce_nemo_and_bridge(new_records, rid, arch, causal) -> None:
    """NeMo 24.07 / Megatron-Bridge pretraining rows: model TFLOP/s per GPU ÷ tokens/s per GPU
    = FLOPs per token, which Megatron-Core's formula (Bridge: causal attention) gives within
    0.1 %. GPT3-175B's vocabulary is not on the page: GPT-2's 50,257 padded to 51,200 (the
    V/(2lh) term moves the result by 0.007 %)."""
    rec = new_records[rid]
    published = rec.measured["model_tflops_per_gpu"] * 1e12 / rec.measured["tokens_per_s_per_gpu"]
    sc = _shape(rec, arch, None if "vocab" in rec.model else 51200)
    per_token = megatron_core_flops(sc, causal=causal) / sc.training.seq_len
    assert per_token == pytest.approx(published, rel=1e-3)
    assert convention_for(rec).flops == ("megatron_core_causal" if causal else "megatron_core")


def test_megatron_core_flops_is_eq7_for_gpt() -> None:
    """With a 4h GeLU MLP and no GQA the formula is Korthikanti Eq. 7 (closed form)."""
    from simtrain.costs.compute import eq7_flops

    sc = parse_scenario({
        "name": "x", "model": {**MCORE_GPT, "layers": 48, "hidden": 7168, "heads": 56,
                               "vocab": 131072, "max_positions": 4096},
        "hardware": "h100_sxm5_80gb",
        "training": {"seq_len": 4096, "global_batch": 192, "micro_batch": 4, "precision": "bf16"},
        "parallelism": {"dp": 48, "tp": 8},
    }, "t")  # fmt: skip
    assert megatron_core_flops(sc) == pytest.approx(eq7_flops(192, 4096, 48, 7168, 131072))


def test_llama3_8b_source_flops_by_hand(new_records) -> None:
    """Megatron-Bridge's Llama 3 8B row at seq 8192, as validate builds it (the record through
    translate, not a shape given here): FLOPs per token counted matmul by matmul, forward x 3.
    Per layer, forward: q, k, v 2·4096·(4096 + 2·1024) = 50,331,648; out-projection 2·4096² =
    33,554,432; SwiGLU MLP 3 · 2·4096·14,336 = 352,321,536; causal scores and values
    2 · 2·8192·4096 / 2 = 67,108,864; 503,316,480 in all, x 32 layers = 16,106,127,360; logits
    2·4096·128,256 = 1,050,673,152; forward 17,156,800,512, x 3 = 51,470,401,536. The published
    1,576 TFLOP/s at 30,624 tokens/s per GPU is 51,462,904,911 per token (ours +0.015 %). A GeLU MLP
    (2 matmuls, the convention's architecture before the Llama rows got theirs) gives
    40,196,112,384 per token, 22 % fewer: the -22 % TFLOP/s error of issue 13."""
    rec = new_records["mbridge2511_B200_LLAMA3_8B_8gpu"]
    tr = translate(rec)
    assert isinstance(tr, Translation)
    sc = tr.scenario
    tokens = sc.training.global_batch * sc.training.seq_len
    assert source_flops(sc, record_convention(rec), "tflops") / tokens == 51_470_401_536
    published = 1576e12 / 30624
    assert 51_470_401_536 / published - 1 == pytest.approx(1.46e-4, abs=1e-6)


@pytest.mark.parametrize("rid", ["nemo2407_h100_fp8_LLAMA2-13B_16gpu",
                                 "nemo2407_h100_fp8_LLAMA2-70B_64gpu",
                                 "mbridge2511_B200_LLAMA3_8B_8gpu",
                                 "mbridge2511_GB200_LLAMA3_8B_8gpu",
                                 "mbridge2511_H100_LLAMA3.1_405B_1024gpu",
                                 "mbridge2511_GB200_LLAMA3.1_405B_256gpu"])  # fmt: skip
def test_translated_llama_rows_count_the_published_flops(new_records, rid) -> None:
    """The NeMo / Megatron-Bridge pretraining rows as translate builds them (architecture by
    model name: the frameworks' Llama config) count, per token, the FLOPs the published TFLOP/s
    and tokens/s imply, within 0.1 %: the TFLOP/s compared are the source's."""
    rec = new_records[rid]
    tr = translate(rec)
    assert isinstance(tr, Translation)
    m = tr.scenario.model
    arch = (m.mlp, m.norm, m.positions, m.bias, m.tied_embeddings)
    assert arch == ("swiglu", "rmsnorm", "rotary", False, False)
    assert any(a.startswith("model LLAMA*") for a in tr.assumptions)
    sc = tr.scenario
    tokens = sc.training.global_batch * sc.training.seq_len
    per_token = source_flops(sc, record_convention(rec), "tflops") / tokens
    published = rec.measured["model_tflops_per_gpu"] * 1e12 / rec.measured["tokens_per_s_per_gpu"]
    assert per_token == pytest.approx(published, rel=1e-3)


def test_named_architecture_only_for_its_names(new_records) -> None:
    """A NeMo row whose model is not a Llama keeps the convention's own architecture."""
    rec = new_records["nemo2407_h100_fp8_LLAMA2-13B_16gpu"]
    gpt = replace(rec, model={**rec.model, "name": "GPT3-175B"})
    assert convention_for(gpt).architecture == SOURCES["nemo"].architecture
    assert convention_for(gpt).architecture_note == ""
    assert convention_for(rec).architecture["mlp"] == "swiglu"


def test_megatron_core_readme_mfu_is_its_tflops_over_the_bf16_peak(new_records) -> None:
    """Megatron-LM README (937571cfd4) weak-scaling rows: MFU = model TFLOP/s / 989 (the H100's
    dense BF16 peak) to the table's rounding, so TFLOP/s and MFU are one measurement on the same
    FLOPs (training.py num_floating_point_operations): their errors move together."""
    rows = [r for r in new_records.values() if r.source_key == "megatron_core"
            and "tflops_per_gpu" in r.measured]  # fmt: skip
    assert len(rows) == 3
    for r in rows:
        assert r.measured["tflops_per_gpu"] / 989 == pytest.approx(r.measured["mfu"], abs=0.006)


def test_torchtitan_flops_reproduce_the_published_mfu(new_records) -> None:
    """torchtitan benchmarks/llama3_h100_202412_torchtitan.md: Llama 3.1 8B at 8192 tokens
    "achieves 33% to 39% MFU" without Float8: Table 1 FSDP 5,762 and FSDP + torch.compile 6,667
    TPS/GPU on 8 GPUs, Table 3 FSDP 5,605 on 128, over get_peak_flops' 989e12 for an H100 SXM."""
    sc = _shape(new_records["torchtitan_2412_t3_8b_128gpu_FSDP_torchcompile"], LLAMA3)
    per_token = torchtitan_flops(sc) / sc.training.seq_len
    assert round(100 * 5605 * per_token / 989e12) == 33
    assert round(100 * 6667 * per_token / 989e12) == 39
    assert 100 * 5762 * per_token / 989e12 == pytest.approx(33.7, abs=0.1)


def test_chronicles_and_mtnlg_tflops_follow_their_estimators(new_records) -> None:
    """The TFLOP/s the sources printed, recomputed from each record's step time and shape in its
    convention: the BLOOM chronicles' two 02-17 rows follow Megatron-DeepSpeed's approximate
    estimator (8·N_non-embedding·s·B), every later row Eq. 3 (fixed on 02-21), within 0.05 %;
    MT-NLG's 126 TFLOP/s at 60.1 s on 2240 GPUs is Eq. 3 with vocab 51,200 within 0.3 %."""
    n = 0
    for rec in new_records.values():
        if rec.source_key not in ("bloom_chronicles", "mtnlg"):
            continue
        tr = translate(rec)
        if isinstance(tr, SkipReason) or "tflops_per_gpu" not in rec.measured:
            continue
        sc, conv = tr.scenario, record_convention(rec)
        assert conv.flops == ("megatron_ds_2021" if "_02-17_" in rec.id else "megatron_eq3")
        tflops = source_flops(sc, conv, "tflops") / (rec.measured["step_time_s"] *
                                                     sc.parallelism.gpus) / 1e12  # fmt: skip
        tol = 3e-3 if rec.source_key == "mtnlg" else 5e-4
        assert tflops == pytest.approx(rec.measured["tflops_per_gpu"], rel=tol), rec.id
        n += 1
    assert n == 35  # 31 + the four 78- and 106-layer pp 12 rows (uneven splits, issue 14)


def test_chronicles_conventions_by_date(new_records) -> None:
    """Megatron-DeepSpeed ae6277f5 (02-21) changed the TFLOP/s estimator; from 02-28 the BF16
    optimizer (fp32 gradient buffer) and the type:transformer|embedding partition (00f5f889)."""

    def conv(prefix: str):
        return convention_for(next(r for i, r in new_records.items() if i.startswith(prefix)))

    early, mid, late = (conv("bloom_prequel_02-17"), conv("bloom_prequel_02-25"),
                        conv("bloom_prequel_02-28"))  # fmt: skip
    assert (early.flops, early.layer_split) == ("megatron_ds_2021", "uniform")
    assert (mid.flops, mid.layer_split, dict(mid.precision_map)) == ("megatron_eq3", "uniform", {})
    assert (late.flops, late.layer_split) == ("megatron_eq3", "embedding_as_layer")
    assert late.precision_map["bf16"][0] == "bf16_fp32_grads"
    assert early.memory_includes_context and early.ddp_default == "local"


def test_tr11_runs_keep_megatron_dropout_and_the_chronicle_context(new_records, all_records
                                                                   ) -> None:  # fmt: skip
    """No tr11 script sets a dropout, so Megatron-DeepSpeed's defaults (arguments.py: hidden and
    attention 0.1; tr11-176B-ml/README.md "The default Megatron-LM dropout settings are
    inherited") hold for the chronicles and the final run, and all pass --embed-layernorm; the
    chronicles' memory includes the
    CUDA context the chronicle measured with nvidia-smi on an A100 (1573 MiB), other A100
    records keep the hardware profile's (1024 MiB)."""
    chron = translate(next(r for r in new_records.values() if r.source_key == "bloom_chronicles"))
    final = translate(next(r for r in all_records if r.source_key == "bloom"))
    assert isinstance(chron, Translation) and isinstance(final, Translation)
    assert chron.scenario.model.dropout == final.scenario.model.dropout == 0.1
    assert chron.scenario.model.embedding_norm and final.scenario.model.embedding_norm
    assert chron.scenario.hardware.cuda_context_bytes == 1573 * 2**20
    assert any("1573 MiB" in a for a in chron.assumptions)
    # both on Jean Zay (Omni-Path): the a100_sxm4_80gb_opa network profile, same GPU
    assert final.scenario.hardware.name == chron.scenario.hardware.name == "a100_sxm4_80gb_opa"
    assert final.scenario.hardware.cuda_context_bytes == 1024 * 2**20


def test_megatron_core_defaults_from_the_readme_flags(new_records) -> None:
    """--tp-comm-overlap asserts --sequence-parallel and --overlap-param-gather asserts the
    distributed optimizer (arguments.py at 937571cfd4): sequence parallel and ZeRO-1; bf16 from
    the README's TFLOP/s ÷ MFU = 989; untied embeddings from its model sizes (within 1 %)."""
    for rid in ("mcore_r080_h100_weak_32B", "mcore_r080_h100_weak_314B",
                "mcore_r080_h100_weak_462B"):  # fmt: skip
        rec = new_records[rid]
        assert rec.measured["tflops_per_gpu"] / rec.measured["mfu"] == pytest.approx(989, rel=0.02)
        tr = translate(rec)
        assert isinstance(tr, Translation)
        p, t = tr.scenario.parallelism, tr.scenario.training
        assert (p.sequence_parallel, p.zero_stage, t.precision) == (True, 1, "bf16")
        assert tr.scenario.model.total_params() / 1e9 == pytest.approx(rec.model["params_b"],
                                                                        rel=0.016)  # fmt: skip


def test_torchtitan_per_op_selective_checkpointing_is_selective_op(new_records) -> None:
    """torchtitan's "selective (per-op)" and "selective (llama3_8b.toml default)" rows run its
    per-op policy: simtrain's selective_op (costs.op_sac); async TP rows overlap their TP
    collectives (runtime tp_comm_overlap), vanilla TP rows do not."""
    for rid in ("torchtitan_2412_t3_8b_128gpu_FSDP_torchcompile",
                "torchtitan_2506_trainy_h200_llama31_8b_32gpu",
                "torchtitan_2506_asynctp_8B_64gpu_float8_rowwise_vanillaTP"):  # fmt: skip
        out = translate(new_records[rid])
        assert isinstance(out, Translation), rid
        assert out.scenario.training.recompute == "selective_op", rid
    asy = translate(new_records["torchtitan_2506_asynctp_8B_64gpu_float8_rowwise_asyncTP"])
    van = translate(new_records["torchtitan_2506_asynctp_8B_64gpu_float8_rowwise_vanillaTP"])
    assert isinstance(asy, Translation) and isinstance(van, Translation)
    assert asy.scenario.runtime.tp_comm_overlap and not van.scenario.runtime.tp_comm_overlap
    # the 2024-12 tables name async TP in their techniques ("2D + AsyncTP + torch.compile +
    # Float8"), not in a parallelism flag: read there too
    for rid in ("torchtitan_2412_t4_70b_256gpu_2D_AsyncTP",
                "torchtitan_2412_t5_405b_512gpu_Interleaved1F1B"):  # fmt: skip
        out = translate(new_records[rid])
        assert isinstance(out, Translation), rid
        assert "AsyncTP" in new_records[rid].training["techniques"], rid
        assert out.scenario.runtime.tp_comm_overlap, rid
    fsdp = translate(new_records["torchtitan_2412_t3_8b_128gpu_FSDP_torchcompile"])
    assert isinstance(fsdp, Translation) and not fsdp.scenario.runtime.tp_comm_overlap  # tp 1
    # Grand Teton's H100 96 GB HBM2e: its own profile, so the fit verdict is compared
    ok = translate(new_records["torchtitan_2506_asynctp_70B_256gpu_bf16_asyncTP"])
    assert isinstance(ok, Translation) and ok.capacity_known
    assert ok.scenario.hardware.name == "h100_sxm5_96gb_hbm2e"
    assert not any("H100 96 GB" in a for a in ok.assumptions)


# --------------------------------------------------------------------------- runtimes


def test_runtime_of_every_source(all_records: list) -> None:
    keys = {r.source_key for r in all_records} | {"simtrain_h200"}
    assert keys <= set(RUNTIMES)  # a new source must be given its runtime
    assert set(RUNTIMES.values()) == set(RUNTIME_PROFILES)
    assert set(SOURCES) <= set(RUNTIMES)
    expected = {
        "megatron_sc21": "megatron_lm_2021", "korthikanti2022": "megatron_lm_2022",
        "megatron_core": "megatron_core", "nemo": "megatron_core", "bloom": "deepspeed",
        "bloom_chronicles": "deepspeed", "mtnlg": "deepspeed", "nanotron": "nanotron_bench",
        "torchtitan": "torchtitan", "mosaicml": "llm_foundry",
        "hf_transformers": "pytorch_eager", "simtrain_h200": "pytorch_eager",
    }  # fmt: skip
    assert {k: runtime_of(k) for k in expected} == expected
    assert runtime_of("my_cluster") == "pytorch_eager"


# --------------------------------------------------------------------------- families, noise


def test_error_stats_closed_form() -> None:
    st = ErrorStats.of([-30.0, -5.0, 2.0, 12.0, 40.0])
    assert st.n == 5
    assert st.mape_pct == pytest.approx(89 / 5)
    assert st.median_abs_error_pct == 12.0 and st.median_error_pct == 2.0
    assert st.within_10pct == pytest.approx(2 / 5) and st.within_25pct == pytest.approx(3 / 5)


def _sc(global_batch: int = 8, zero: int = 0):
    return parse_scenario({
        "name": "x", "model": {"layers": 4, "hidden": 512, "heads": 8, "vocab": 1000},
        "hardware": "a100_sxm4_80gb",
        "training": {"seq_len": 256, "global_batch": global_batch, "micro_batch": 2,
                     "precision": "bf16"},
        "parallelism": {"dp": 2, "zero_stage": zero},
    }, "t")  # fmt: skip


def test_noisy_pairs_and_family_figures_without_them() -> None:
    """a/b: same layout, tokens/s 2.5x apart -> noisy; a/c 1.5x and b/c 1.67x -> not; d: another
    batch, never paired; ZeRO stage is not part of a timing layout but is of a memory layout; fit verdicts
    are not measurements."""
    scs = {"a": _sc(), "b": _sc(zero=1), "c": _sc(), "d": _sc(global_batch=16)}
    rows = [
        Comparison("a", "fam", "tokens_per_s", 100.0, 110.0, 10.0),
        Comparison("b", "fam", "tokens_per_s", 250.0, 110.0, -56.0),
        Comparison("c", "fam", "tokens_per_s", 150.0, 110.0, -26.7),
        Comparison("d", "fam", "tokens_per_s", 1000.0, 220.0, -78.0),
        Comparison("a", "fam", "peak_memory_bytes", 1e9, 1e9, 0.0),
        Comparison("b", "fam", "peak_memory_bytes", 3e9, 1e9, -66.7),
        Comparison("a", "fam", "fits", True, False, 100.0),
        Comparison("c", "fam", "fits", False, False, 0.0),
    ]
    pairs = noisy_pairs(rows, scs)
    assert [(p.metric, p.id_a, p.id_b) for p in pairs] == [("tokens_per_s", "a", "b")]
    assert pairs[0].ratio == 2.5 > NOISY_RATIO
    assert layout_key(scs["a"], "tokens_per_s") == layout_key(scs["b"], "tokens_per_s")
    assert layout_key(scs["a"], "peak_memory_bytes") != layout_key(scs["b"], "peak_memory_bytes")
    fams = {f.metric: f for f in family_summaries(rows, pairs)}
    tps = fams["tokens_per_s"]
    assert tps.all.n == 4 and tps.noisy_left_out == 2
    assert tps.without_noisy is not None and tps.without_noisy.n == 2
    assert tps.without_noisy.mape_pct == pytest.approx((26.7 + 78.0) / 2)
    assert fams["peak_memory_bytes"].noisy_left_out == 0
    assert fams["fits"].all.mape_pct == 50.0 and fams["fits"].all.within_10pct == 0.5


def test_noisy_pairs_need_the_same_code_and_links() -> None:
    """Two records of one layout run under different runtimes (the Playbook's twins before and
    after the sweep's "pp fix"), or on links their own jobs measured apart (13 vs 168 GB/s),
    are not one layout measured twice: the simulator predicts each its own step, so their 14x
    is no noise. A third record under the same code and links as the first is paired."""
    base = _sc()
    other_code = replace(base, runtime_profile=load_runtime("nanotron"))
    slow_links = replace(base, hardware=replace(base.hardware, nic_bandwidth_bytes_per_s=1e9))
    assert base.hardware != slow_links.hardware
    scs = {"a": base, "b": other_code, "c": slow_links, "d": _sc(zero=1)}
    rows = [Comparison(k, "fam", "tokens_per_s", v, 100.0, 0.0)
            for k, v in (("a", 100.0), ("b", 1400.0), ("c", 7.0), ("d", 300.0))]  # fmt: skip
    pairs = noisy_pairs(rows, scs)
    assert [(p.id_a, p.id_b) for p in pairs] == [("a", "d")]


def test_by_family_outputs(tmp_path: Path) -> None:
    """--by family and the JSON's by_family / noisy_pairs blocks, on two records of one layout
    whose step times are 3x apart (a noisy pair) and one other."""
    recs = tmp_path / "runs.yaml"
    body = ("  source_key: lab\n  model: {layers: 4, hidden: 512, heads: 8, seq_len: 256, "
            "vocab: 1000}\n  training: {global_batch: 8, micro_batch: 2, precision: bf16}\n"
            "  parallelism: {dp: 2}\n  hardware: {gpu: A100-SXM4-80GB, num_gpus: 2}\n")  # fmt: skip
    recs.write_text(
        f"- id: lab_1\n{body}  measured: {{step_time_s: 0.01}}\n"
        f"- id: lab_2\n{body}  measured: {{step_time_s: 0.03}}\n"
        f"- id: lab_3\n{body.replace('global_batch: 8', 'global_batch: 16')}"
        "  measured: {step_time_s: 0.02}\n- id: lab_4\n  kind: memory_capacity\n"
    )
    text = validate_command(str(recs), False, None, str(tmp_path), by="family")
    assert "noisy pairs (same layout, measurements more than 2x apart): 1" in text
    assert "lab_1 0.010 s  vs  lab_2 0.030 s  (3.00x)" in text
    assert "lab                       3 / 1" in text  # records compared / skipped
    assert "noisy pairs left out" in text
    doc = json.loads(validate_command(str(recs), True, None, str(tmp_path)))
    assert set(doc) == {"schema_version", "records", "skipped", "summary", "by_family",
                        "noisy_pairs", "fitted_constants"}  # fmt: skip
    assert doc["noisy_pairs"] == [{"metric": "step_time_s", "id_a": "lab_1", "id_b": "lab_2",
                                   "measured_a": 0.01, "measured_b": 0.03,
                                   "ratio": pytest.approx(3.0)}]  # fmt: skip
    fam = [f for f in doc["by_family"] if f["metric"] == "step_time_s"][0]
    assert set(fam) == {"family", "metric", "n", "mape_pct", "median_abs_error_pct",
                        "median_error_pct", "within_10pct", "within_25pct", "noisy_left_out",
                        "without_noisy"}  # fmt: skip
    assert (fam["family"], fam["n"], fam["noisy_left_out"]) == ("lab", 3, 2)
    assert fam["without_noisy"]["n"] == 1
    with pytest.raises(ConfigError, match="--by"):
        validate_command(str(recs), False, None, str(tmp_path), by="source")


def test_every_record_of_the_files_is_compared_or_skipped(default_result, all_records) -> None:
    ids = {r.id for r in all_records}
    # + torchtitan_2412, _2506_asynctp, llama3_table4, mbridge_2511, mbridge_26x, fms_fsdp,
    # kempnerforge
    # (mbridge_26x: 168 pre-training rows + 26.06's 10 SFT / LoRA rows), nemo_automodel 16,
    # nemo2407_rest 12
    assert len(ids) == 655 + 68 + 43 + 3 + 13 + 7 + 2 + 27 + 168 + 10 + 4 + 33 + 16 + 12
    compared = {c.id for c in default_result.comparisons}
    skipped = {s.id for s in default_result.skipped}
    assert not compared & skipped and compared | skipped == ids
    fams = {f.family for f in default_result.by_family}
    assert {"bloom_chronicles", "megatron_core", "mtnlg", "torchtitan"} <= fams


def test_new_family_regression_bounds(default_result) -> None:
    """Not targets: the figures reached when the records were added (issue 13), as bounds."""
    by = {(f.family, f.metric): f.all for f in default_result.by_family}
    bounds = {  # (n, MAPE bound %)
        # + the 78- and 106-layer pp 12 rows (their DeepSpeed splits, issue 14 item 6)
        # + tr11's dropout 0.1, embedding LayerNorm and the chronicle's CUDA context (issue 13)
        ("bloom_chronicles", "step_time_s"): (34, 12.0),
        ("bloom_chronicles", "tflops_per_gpu"): (34, 15.0),
        ("bloom_chronicles", "peak_memory_bytes"): (24, 15.0),
        ("megatron_core", "tflops_per_gpu"): (3, 32.0),
        # 14.5 -> 19.4 % (too fast) with the A100 80GB's GEMM-table rate and fitted
        # element-wise rate (2026-12-06), held out
        ("mtnlg", "step_time_s"): (1, 20.0),
        # 2 FP8 rows since issue 14's FP8; + 5 selective_op rows (torchtitan's per-op
        # checkpointing): the two float8 rowwise 8B tp-8 rows run at the tensorwise FP8 rate
        # (+48 %, +72 %; measured, rowwise is 30 % slower than tensorwise under async TP);
        # + the two 405B pp 8 rows (torchtitan's split); + the 405B cp 8 row (+46.8 %)
        # + sequence parallelism's norms and residual adds on s/t tokens: the three FP8 8B
        # tp-8 rows +68 / +38 / +18 -> +96 / +54 / +37 %; FSDP2's copy-out: 25.4 -> 25.0 %
        # + torchao's float8 table (8B, 8 GPUs): bf16 +16.9, tensorwise +23.5, rowwise +40.3 %
        # + the Grand Teton profile (25.4 -> 23.2 %), async TP read from the captions (24.0 %),
        # FSDP2's all-gather pool in the reserved figure (memory 12.7 -> 9.9 %), and the other 13
        # rows of the 2024-12 tables (torchtitan_2412.yaml): the eager FSDP rows +24 / +28 %,
        # the 8B CP 4 / 8 rows +44 / +51 % (attention at the GEMM rate); eager element-wise
        # (runtime eager_elementwise): the eager rows +5.0 / +8.4 %, 22.3 -> 20.9 %
        # + the other 7 rows of the 2025-06 async TP tables (torchtitan_2506_asynctp.yaml):
        # async TP's gain priced at 1.19-1.32x, measured 1.04-1.16x
        # + float8 rowwise's backward rescale (costs.fp8.rowwise_rescale_bytes): 17.8 -> 16.9 %;
        # tensorwise TP's float8 all-gathers (costs.comm.tp_input_gather_ns): 16.9 %
        ("torchtitan", "tokens_per_s"): (34, 21.5),
        ("torchtitan", "peak_memory_bytes"): (22, 8.5),  # torchao's three: -14.2 to -14.5 %
        # + 405B pp 16 vp 4; + 405B cp 2 (H100); the Llama rows as Llama (SwiGLU: a third more
        # MLP work than the GeLU they were built with), now under-predicted by 8-16 %
        # + the launchers' sequence parallelism, DP/TP overlaps and bf16 gradient reduction
        # (was 11.3 %, and the GB200 405B row OOM)
        # + the other 24 rows of its 25.11 table (mbridge_2511.yaml), the DeepSeek-V3 layouts and
        # the Slurm segments' 64-GPU NVLink domains (GB200 DeepSeek-V3 -65 -> +3 %, Qwen3-235B
        # -68 -> -2 %): the MoE rows of B200 / H100 too fast (+29 to +172 %), GB300 -9 to -22 %
        # + the 26.x releases' 168 rows (mbridge_26x.yaml; 164 compared, with the GB300
        # DeepSeek-V3 recipe's pp 2 vp 8 layout and the H100 Qwen3-235B rows' whole experts,
        # expert_tp 1): 192 rows, 20.2 % (dense 9.6 %, MoE 27 %), median |e| 12.7 %
        # + the four Kimi K2 rows (its preset, the recipe's Muon and layout): 196 rows,
        # 17.7 -> 17.5 % (the Kimi rows +1.8 to +7.8 %); + the 25.11 GB200 DeepSeek-V3 MXFP8
        # row at pp 8 vp 4 in the H100 perf recipe's layout (-8.8 %): 197, 17.4 %
        # + 26.06's 10 SFT / LoRA rows on packed SQuAD (6.6 %; 12.4 % as one 4,096-token
        # sequence a row): 207 rows, 12.4 %; their TFLOP/s the 5 SFT rows' (LoRA's not compared)
        ("megatron_bridge", "tokens_per_s"): (207, 21.5),
        ("megatron_bridge", "tflops_per_gpu"): (202, 21.0),  # was 21.4: the GeLU model's FLOPs
        # the same (was 10.0; 9.6 with GeLU); + GPT3-175B (+3.8 %) and Nemotron-340B (-0.1 %)
        # by their presets (the records name the model, not its shape)
        # the two fine-tuning rows on packed SQuAD: SFT 7B -1.3 -> +11.1 %, LoRA 70B -7.4 ->
        # +1.3 % (4.4 -> 5.0 %)
        # + the other 12 rows of its table (nemo2407_rest.yaml; the fine-tuning rows as the
        # launcher's H100 examples run them): 18 rows, 5.6 %
        ("nemo", "tokens_per_s"): (18, 8.0),
        # Table 4's 8K rows (llama3_table4.yaml) as §3.3.2 describes the pipeline (v = 8): -8.2 /
        # -9.1 % (plain 1F1B: -31.9 / -50.6 %)
        ("llama3", "tflops_per_gpu"): (2, 10.0),
        # held out (issue 13): 36.8 % when added; its pipeline rows without sequence
        # parallelism 33.2; its per-linear TP redistribution (tp_input_redistribution) 28.7;
        # its early-stopped recompute (recompute_early_stop) 33.2: its TP rows too fast already;
        # its 4-GPU nodes (the record's gpus_per_node) 18.7
        ("kempnerforge", "tokens_per_s"): (33, 20.0),
        # 51.1 % when added; 11.2 %; its embedding whole on every TP rank 5.2 %; its TP-only
        # rows as ZeRO-3 over one GPU 4.4 %; their gathered layers 4.2 %
        ("kempnerforge", "peak_memory_bytes"): (33, 5.0),
        # 12.2 % (hybrid sharding, zero_replicas); 9.6 % with the early-stopped recompute
        ("fms_fsdp", "tokens_per_s"): (4, 10.5),
    }
    for key, (n, mape) in bounds.items():
        assert by[key].n == n and by[key].mape_pct <= mape, (key, by[key])
    assert by[("bloom_chronicles", "fits")].n == 37


def test_noisy_pairs_of_the_published_runs(default_result) -> None:
    """No two published records are one layout measured twice more than 2x apart. The nanotron
    sweep's ZeRO-0/ZeRO-1 twins, 6x to 25x apart in tokens/s, were listed as noisy until
    2026-12-08; they ran under different code (three pp > 1 layouts before and after the sweep's
    "pp fix") or on links their own jobs measured apart (8B n64 tp32: all-reduce across nodes
    167.5 vs 13.2 GB/s), and the simulator puts each within 23 % of its measured tokens/s
    (22.6 % the largest; the bound, 25 %, a margin above it)."""
    assert default_result.noisy == ()
    errors = {c.id: c.error_pct for c in default_result.comparisons
              if c.metric == "tokens_per_s"}  # fmt: skip
    twins = ("usp_3B_n16_dp16_tp2_pp4_mbs1_ga16", "usp_8B_n16_dp8_tp2_pp8_mbs1_ga32",
             "usp_8B_n64_dp16_tp32_pp1_mbs1_ga16", "usp_8B_n8_dp4_tp2_pp8_mbs1_ga64")  # fmt: skip
    for t in twins:
        z0, z1 = errors[t + "_z0"], errors[t + "_z1"]
        assert abs(z0) < 25 and abs(z1) < 25, (t, z0, z1)
    nano = {f.metric: f for f in default_result.by_family if f.family == "nanotron"}
    assert nano["tokens_per_s"].noisy_left_out == 0
    assert nano["tokens_per_s"].without_noisy == nano["tokens_per_s"].all


def test_finetune_text_reads_as_peft() -> None:
    """``training.finetune``: full and SFT train every weight; a LoRA text's own rank and
    targets win; a LoRA row silent on them takes the source's recipe (NeMo 24.07: rank 32 on
    the fused Q/K/V, megatron_gpt_finetuning_config.yaml); anything else is a named skip."""
    from simtrain.apps.validate.translate import _NotExpressible, read_finetune

    notes: list[str] = []
    assert read_finetune(None, SOURCES["nemo"], notes) is None
    assert read_finetune("SFT", SOURCES["nemo"], notes) is None
    assert read_finetune("full", SOURCES["megatron_sc21"], notes) is None
    own = read_finetune("LoRA r=4 on W_q, W_v", SOURCES["megatron_sc21"], notes)
    assert own == {"method": "lora", "rank": 4, "target_modules": ["q", "v"]}
    assert notes == []
    nemo = read_finetune("LoRA", SOURCES["nemo"], notes)
    assert nemo == {"method": "lora", "rank": 32, "alpha": 32.0, "target_modules": ["q", "k", "v"]}
    assert len(notes) == 1 and notes[0].startswith("LoRA rank and target modules not reported")
    with pytest.raises(_NotExpressible, match="rank or target"):
        read_finetune("LoRA", SOURCES["megatron_sc21"], notes)
    with pytest.raises(_NotExpressible, match=re.escape("not full | SFT | LoRA")):
        read_finetune("QLoRA (LoRA on all linear layers)", SOURCES["nemo"], notes)
    # every target the text names, in the paper's, HF PEFT's and Megatron's spellings
    text = "LoRA r=8 on q_proj,v_proj,gate_proj,up_proj,down_proj"
    assert read_finetune(text, SOURCES["nemo"], notes)["target_modules"] == [
        "q", "v", "gate", "up", "down"]  # fmt: skip
    assert read_finetune("LoRA(r=8, target=W_qkv)", SOURCES["nemo"], notes)[
        "target_modules"] == ["q", "k", "v"]  # fmt: skip
    assert read_finetune("LoRA r=16, W_q,W_v", SOURCES["nemo"], notes)["target_modules"] == [
        "q", "v"]  # fmt: skip
    assert len(read_finetune("LoRA on all linear layers r=16", SOURCES["nemo"], notes)[
        "target_modules"]) == 7  # fmt: skip
    assert len(notes) == 1  # none of these took the recipe's default
    # the recipe fills only what the text leaves out, and the note says which
    partial = read_finetune("LoRA r=8", SOURCES["nemo"], notes)
    assert (partial["rank"], partial["target_modules"]) == (8, ["q", "k", "v"])
    assert notes[-1].startswith("LoRA target modules not reported")
    for bad, why in (("LoRA rank=64 on attention", "target 'attention'"),
                     ("LoRA r=0 on W_q", "rank 0")):  # fmt: skip
        with pytest.raises(_NotExpressible, match=why):
            read_finetune(bad, SOURCES["nemo"], notes)


def test_nemo_lora_row_trains_adapters_only(new_records) -> None:
    """NeMo 24.07's LoRA 70B row (8 H100, tp 2 pp 4) is a LoRA run, not a full fine-tune: only
    rank-32 Q/K/V adapters have gradients and Adam states, so it fits in 80 GB (it ran), and no
    weight-gradient GEMM of the frozen base is priced: it runs faster than the same layout fully
    trained. Its TFLOP/s is not compared: Megatron-Core's / NeMo's FLOP count states no rule
    for frozen weights."""
    rec = new_records["nemo2407_h100_fp8_finetune_LoRA_LLAMA2-70B_8gpu"]
    tr = translate(rec)
    assert isinstance(tr, Translation)
    peft = tr.scenario.training.peft
    assert (peft.method, peft.rank, peft.target_modules) == ("lora", 32, ("q", "k", "v"))
    from simtrain.apps.validate.measured import compare_record

    got = {c.metric: c for c in compare_record(tr)}
    assert set(got) == {"tokens_per_s", "fits"}
    assert got["fits"].predicted is True
    full = replace(
        tr.scenario, training=replace(tr.scenario.training, peft=replace(peft, method="none"))
    )
    lora_s = simulate_scenario(tr.scenario, detail=False).metrics.step_time_s
    assert simulate_scenario(full, detail=False).metrics.step_time_s > 1.3 * lora_s


def test_megatron_core_pipeline_rows_run_interleaved(new_records) -> None:
    """The Megatron-Core README's runs overlap pipeline communication, which Megatron does only
    under the interleaved schedule (arguments.py l.254-277 at 937571cfd4): its pp > 1 rows run
    interleaved at 1 layer per virtual stage (the 462B row's 7 layers per stage allow no other
    even split); the pp 1 row has no pipeline to interleave."""
    from simtrain.apps.validate.translate import _implied_interleaving

    got = {}
    for rid in ("mcore_r080_h100_weak_32B", "mcore_r080_h100_weak_314B",
                "mcore_r080_h100_weak_462B"):  # fmt: skip
        tr = translate(new_records[rid])
        assert isinstance(tr, Translation)
        p = tr.scenario.parallelism
        got[rid] = (p.pp, p.virtual_stages, p.schedule)
    assert got["mcore_r080_h100_weak_32B"][:2] == (1, 1)
    assert got["mcore_r080_h100_weak_314B"] == (8, 12, "interleaved")
    assert got["mcore_r080_h100_weak_462B"] == (16, 7, "interleaved")
    notes: list[str] = []
    conv = SOURCES["megatron_core"]
    assert _implied_interleaving({}, conv, 4, 30, notes) == {}  # 30 layers on pp 4: no even split
    assert _implied_interleaving({"virtual_stages": 2}, conv, 4, 32, notes) == {"virtual_stages": 2}
    assert _implied_interleaving({}, conv, 4, 32, notes) == {"virtual_stages": 8}
    assert _implied_interleaving({"schedule": "1f1b"}, conv, 4, 32, notes) == {"schedule": "1f1b"}
    assert _implied_interleaving({}, SOURCES["nemo"], 4, 32, notes) == {}
    assert len(notes) == 1


@pytest.mark.parametrize(
    ("rid", "sp", "tp_overlap"),
    [("mbridge2511_GB200_LLAMA3.1_405B_256gpu", True, True),
     ("mbridge2511_H100_LLAMA3.1_405B_1024gpu", True, True),
     ("mbridge2511_B200_LLAMA3_8B_8gpu", False, False),  # tp 1: nothing to split or overlap
     ("nemo2407_h100_fp8_LLAMA2-70B_64gpu", True, True),
     ("nemo2407_h100_fp8_LLAMA2-13B_16gpu", False, False),
     # NeMo's fine-tuning config: no sequence parallelism, so no TP overlap (it needs SP)
     ("nemo2407_h100_fp8_finetune_LoRA_LLAMA2-70B_8gpu", False, False)],
)  # fmt: skip
def test_nemo_and_bridge_rows_run_their_launchers_settings(
    new_records, rid, sp, tp_overlap
) -> None:
    """NeMo 24.07's and Megatron-Bridge's performance rows say nothing of sequence parallelism
    or overlaps; their launchers set them (NeMo-Framework-Launcher 6a76374e
    conf/training/llama/llama2_70b.yaml, examples/training/llama/h100/llama2_70b_fp8.sh;
    Megatron-Bridge 00b7660b recipes/llama/llama3.py and scripts/performance/): sequence
    parallelism with tp > 1 when pretraining, the DP gradient reduce-scatter and parameter
    all-gather overlapped, the TP collectives overlapped (userbuffers) where there is SP, and
    the gradients reduced in bf16."""
    tr = translate(new_records[rid])
    assert isinstance(tr, Translation)
    sc = tr.scenario
    rt = sc.runtime
    assert sc.parallelism.sequence_parallel is sp
    assert rt.tp_comm_overlap is tp_overlap
    if sc.training.peft.method == "lora":
        # the LoRA example (70b_1node_lora.sh) runs fused_adam without the overlaps or
        # grad_sync_dtype: no launcher flag, Megatron's own defaults
        assert not rt.overlap_grad_reduce and not rt.overlap_param_gather
        assert rt.grad_reduce_dtype == "fp32"
        assert any(a.startswith("NeMo-Framework-Launcher's LoRA example") for a in tr.assumptions)
        return
    assert rt.overlap_grad_reduce and rt.overlap_param_gather
    # --grad-reduce-in-bf16: the gradients reduced (and bucketed) in their own 16-bit dtype, not
    # the fp32 Megatron-LM's arguments.py forces under --bf16
    assert rt.grad_reduce_dtype == "grad"
    assert any("--overlap-grad-reduce" in a for a in tr.assumptions)
    # sequence parallelism is implied (and said) only where tp > 1 has something to split
    said_sp = any("sequence_parallel True not reported" in a for a in tr.assumptions)
    assert said_sp is (sc.parallelism.tp > 1)


def test_launch_flags_apply_only_where_the_layout_can_use_them() -> None:
    """A launcher's flag is written only where Megatron would accept it: TP comm overlap needs
    tp > 1 and sequence parallelism, the parameter all-gather's overlap the distributed
    optimizer, a bf16 gradient reduction a 16-bit run on --bf16."""
    from simtrain.apps.validate.native import launch_flags

    conv = SOURCES["megatron_bridge"]
    every = ["--overlap-grad-reduce", "--overlap-param-gather", "--tp-comm-overlap",
             "--grad-reduce-in-bf16"]  # fmt: skip

    def flags(tp: int, sp: bool, zero: int, precision: str, peft: str = "none") -> list[str]:
        training = {"precision": precision, "peft": {"method": peft}}
        return launch_flags(conv, tp, sp, zero, training)

    assert flags(4, True, 1, "bf16") == every
    assert flags(4, False, 1, "bf16") == [f for f in every if f != "--tp-comm-overlap"]
    assert flags(1, True, 1, "fp8_current") == [f for f in every if f != "--tp-comm-overlap"]
    # Megatron FSDP (ZeRO 2/3) shards the parameters too: their all-gather can overlap
    assert flags(4, True, 3, "bf16") == every
    assert flags(4, True, 0, "fp16") == ["--overlap-grad-reduce", "--tp-comm-overlap"]
    assert flags(4, True, 1, "fp32") == every[:3]  # no 16-bit gradients to reduce in bf16
    # Megatron-Bridge has no LoRA launcher of its own here; NeMo's LoRA example sets none
    assert flags(4, True, 1, "bf16", "lora") == every
    nemo = launch_flags(SOURCES["nemo"], 4, True, 1, {"precision": "bf16",
                                                      "peft": {"method": "lora"}})  # fmt: skip
    assert nemo == []
    assert launch_flags(SOURCES["megatron_sc21"], 8, True, 1, {"precision": "bf16"}) == []


def test_a_flag_the_record_names_is_not_the_launchers(new_records) -> None:
    """The assumption line lists only the flags the launcher adds: a record whose own notes
    name --tp-comm-overlap keeps it (applied from the record's text), without crediting the
    launcher for it."""
    rec = new_records["mbridge2511_H100_LLAMA3.1_405B_1024gpu"]
    said = replace(rec, notes=f"{rec.notes} Ran with --tp-comm-overlap.")
    for r, credited in ((rec, True), (said, False)):
        tr = translate(r)
        assert isinstance(tr, Translation) and tr.scenario.runtime.tp_comm_overlap
        line = next(a for a in tr.assumptions if a.startswith("--overlap-grad-reduce"))
        assert ("--tp-comm-overlap" in line.split(":")[0]) is credited


def _lab_record(model: dict, parallelism: dict) -> Record:
    """A record of a source without an importer (read as a scenario), on 8 H100s."""
    return Record(
        id="lab_moe_1", kind="training_run", source="test", source_key="lab",
        model={"name": "m", "layers": 4, "hidden": 1024, "heads": 8, "seq_len": 1024,
               "vocab": 32000, **model},
        training={"global_batch": 64, "micro_batch": 1, "precision": "bf16"},
        parallelism=parallelism, hardware={"gpu": "H100 80GB", "num_gpus": 8},
        measured={"tokens_per_s_per_gpu": 1000.0},
    )  # fmt: skip


def test_a_record_says_what_a_scenario_says() -> None:
    """A record read as a scenario takes every ModelSpec key of its model section: experts with
    parallelism.ep (Megatron-Core's expert grid over dp), a shared-norm parallel block, a head
    size; MoE keys the model does not read, or ep without experts, are named skips."""
    moe = {"num_experts": 8, "experts_per_token": 2, "mlp": "swiglu", "moe_ffn_hidden": 512}
    tr = translate(_lab_record({**moe, "parallel_residual": True, "shared_norm": True,
                                "head_size": 64}, {"tp": 1, "ep": 4}))  # fmt: skip
    assert not isinstance(tr, SkipReason), tr
    m, p = tr.scenario.model, tr.scenario.parallelism
    assert (m.num_experts, m.experts_per_token, m.moe_ffn_hidden, p.ep) == (8, 2, 512, 4)
    assert (m.parallel_residual, m.shared_norm, m.head_size) == (True, True, 64)
    out = translate(_lab_record({"experts": 8}, {"ep": 4}))
    assert isinstance(out, SkipReason) and "keys simtrain does not read (experts;" in out.reason
    out = translate(_lab_record({}, {"ep": 4}))
    assert isinstance(out, SkipReason) and "ep 4) without model.num_experts" in out.reason
    out = translate(_lab_record({"num_experts": "8"}, {}))
    assert isinstance(out, SkipReason) and "model.num_experts" in out.reason


@pytest.mark.parametrize(("text", "v", "want"), [
    ("1F1B", 1, "1f1b"), (None, 1, "1f1b"), ("interleaved 1F1B", 3, "interleaved"),
    (None, 4, "interleaved"), ("Interleaved 1F1B", 1, "1f1b"), ("GPipe", 1, "gpipe"),
    ("AFAB", 1, "gpipe"), ("ZB-H1", 1, "zb_h1"), ("zero bubble", 1, "zb_h1"),
    ("ZB-V", 1, "zb_v"), ("ZBV", 2, "zb_v"), ("DualPipe", 1, "dualpipe"),
    ("DualPipeV", 1, "dualpipe_v"), ("DualPipe-V", 2, "dualpipe_v"),
    ("PipeDream-Flush", 1, "1f1b"), ("PipeDream-2BW", 1, "pipedream_2bw"),
    ("PipeDream", 1, "pipedream"), ("naive", 1, "naive"),
])  # fmt: skip
def test_schedule_names(text, v: int, want: str) -> None:
    """A record's schedule text names simtrain's schedule (was: ZB-V read as ZB-H1, DualPipe and
    PipeDream as 1F1B, in silence)."""
    from simtrain.apps.validate.translate import map_schedule

    notes: list[str] = []
    assert map_schedule(text, 4, v, notes) == want
    assert notes == []


@pytest.mark.parametrize(("text", "v", "want"), [("looped BFS", 2, "interleaved"),
                                                 ("BFS", 1, "1f1b")])  # fmt: skip
def test_an_unknown_schedule_is_said(text: str, v: int, want: str) -> None:
    from simtrain.apps.validate.translate import map_schedule

    notes: list[str] = []
    assert map_schedule(text, 4, v, notes) == want
    assert len(notes) == 1 and repr(text) in notes[0]


def test_schedule_review_cases() -> None:
    """simtrain's own combined_1f1b name is read; ZB-H2, which simtrain does not simulate, is
    ZB-H1 with a note; 1F1B with virtual stages is interleaved 1F1B."""
    from simtrain.apps.validate.translate import map_schedule

    notes: list[str] = []
    assert map_schedule("combined 1F1B", 4, 1, notes) == "combined_1f1b" and not notes
    assert map_schedule("combined_1f1b", 4, 2, notes) == "combined_1f1b" and not notes
    assert map_schedule("ZB-H2", 4, 1, notes) == "zb_h1" and "ZB-H2" in notes[0]
    assert map_schedule("PipeDream-Flush", 4, 2, []) == "interleaved"


@pytest.mark.parametrize("ep", ["4", 0, 2.5, -2])
def test_a_bad_ep_is_named(ep) -> None:
    out = translate(_lab_record({"num_experts": 8, "experts_per_token": 2}, {"ep": ep}))
    assert isinstance(out, SkipReason) and "parallelism.ep" in out.reason


def test_moe_keys_without_experts_are_named() -> None:
    out = translate(_lab_record({"experts_per_token": 2}, {}))
    assert isinstance(out, SkipReason)
    assert "experts_per_token without model.num_experts" in out.reason


def test_a_key_the_framework_config_sets_is_noted(new_records: dict) -> None:
    """An importer family's record whose model section disagrees with the configuration
    written for it (torchtitan's llama3 flavour is RMSNorm) keeps the framework's value and
    says so."""
    rec = next(r for r in new_records.values() if r.source_key == "torchtitan")
    tr = translate(replace(rec, model={**rec.model, "norm": "layernorm"}))
    assert not isinstance(tr, SkipReason), tr
    assert tr.scenario.model.norm == "rmsnorm"
    assert any(a.startswith("model.norm: the record's 'layernorm'") for a in tr.assumptions)


def test_megatron_bridge_26x_layouts_and_folding(default_records: dict) -> None:
    """The 26.x GB300 DeepSeek-V3 rows run their recipe's pp 2 vp 8 layout (perf_recipes/
    deepseek/gb300/deepseek_v3.py l.154 at 067f987d: "Et*4|(t*4|)*14tmL"); the H100
    Qwen3-235B rows (tp 2, ep 32) the MoE configs' whole experts (expert_tensor_parallel_size
    1), the EP group over tp x dp."""
    ds = translate(default_records["mbridge2604_GB300_DeepSeekV3_FP8MX_256gpu"]).scenario
    assert (ds.parallelism.pp, ds.parallelism.virtual_stages) == (2, 8)
    assert ds.parallelism.layer_split == (*[4] * 15, 1)
    qw = translate(default_records["mbridge2604_H100_Qwen3_235B_a22B_FP8CS_256gpu"]).scenario
    p = qw.parallelism
    assert (p.tp, p.ep, p.etp, p.expert_dp) == (2, 32, 1, 1)


def test_megatron_bridge_deepep_config(default_records: dict) -> None:
    """The B200 DeepSeek-V3 row at pp 8 vp 2 ep 32 (EP over four 8-GPU nodes) runs its config's
    DeepEP dispatcher (perf_recipes/deepseek/b200/deepseek_v3.py l.124-188 at 067f987d:
    moe_flex_dispatcher_backend "deepep"); the pp 16 ep 8 rows keep the alltoall one."""
    far = translate(default_records["mbridge260401_B200_DeepSeekV3_FP8MX_256gpu"]).scenario
    near = translate(default_records["mbridge2604_B200_DeepSeekV3_FP8MX_256gpu"]).scenario
    assert (far.parallelism.ep, far.runtime.moe_dispatcher) == (32, "deepep")
    assert (near.parallelism.ep, near.runtime.moe_dispatcher) == (8, "alltoall")
