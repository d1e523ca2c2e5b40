"""simtrain validate reads each framework's settings through that framework's importer (issue 17
item 2): a record of a family with an importer is written as its framework's configuration
(Megatron: pretrain_gpt.py flags; nanotron: its config YAML; torchtitan: its job config;
DeepSpeed: its ds_config), and ``simtrain import`` of that configuration with the
record's ``--set`` overrides gives exactly the scenario validate simulates. One code path: a
change to the importer's reading of a flag changes validate's scenario too."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from simtrain.apps.importers import import_config
from simtrain.apps.importers.common import load_imported
from simtrain.apps.importers.deepspeed import import_deepspeed_config
from simtrain.apps.validate import SkipReason, translate
from simtrain.apps.validate.job_network import job_hardware, read_job_network
from simtrain.apps.validate.native import IMPORTER_OF, NativeConfig, importer_of
from simtrain.apps.validate.records import load_record_files, resolve_paths
from simtrain.apps.validate.translate import Translation
from simtrain.cli import main
from simtrain.spec.scenario import load_scenario

RECORDS = {r.id: r for r in load_record_files(resolve_paths(None))}

#: Records of each family that goes through an importer: plain data parallel, tensor parallel,
#: interleaved pipelines with Megatron-LM 2021's "local" DDP, selective recompute with sequence
#: parallelism (Korthikanti et al. 2022), V100 DGX-2, a Megatron-DeepSpeed run; nanotron (the
#: Ultra-Scale Playbook's sweep) with ZeRO-1, sequence parallelism (tp_mode REDUCE_SCATTER), a
#: compute-balanced pipeline, and a run that did not fit (out of memory); torchtitan with FSDP2,
#: Interleaved1F1B over 9dec370a's uneven split, context parallel 8 (FSDP over dp_shard x cp),
#: async TP with float8 rowwise linears; DeepSpeed ZeRO-3 (SC'21 Table 2); Megatron-Core r0.8,
#: NeMo 24.07 FP8 and Megatron-Bridge's Llama 3.1 405B (CP 2, embedding and loss counted as
#: layers in the pipeline split); a SimuMax B200 run read from its own arguments (MLA, MoE,
#: EP 4, its --moe-layer-freq pattern).
SAMPLE = (
    "megatron_sc21_t1_1.7B",
    "megatron_sc21_t1_145.6B",
    "megatron_sc21_t2_ptdp_529B_2240gpu",
    "korthikanti22_t5_530B_sp_selective",
    "korthikanti22_t5_22B_full_recompute",
    "megatron_readme2020_dgx2_v100_8B",
    "megatron_readme2021_gpt3_175B_1024gpu",
    "mtnlg530b_2240gpu",
    "usp_1B_n1_dp8_tp1_pp1_mbs1_ga32_z1",
    "usp_1B_n1_dp2_tp2_pp2_mbs2_ga64_z1",
    "usp_8B_n16_dp8_tp2_pp8_mbs1_ga32_z0",
    "usp_fail_8B_n4_dp2_tp8_pp2_mbs16_ga8_z1",
    "torchtitan_2412_t3_8b_128gpu_FSDP_torchcompile",
    "torchtitan_2412_t5_405b_512gpu_Interleaved1F1B",
    "torchtitan_2412_t6_405b_512gpu_fsdp1_cp8_seq262144",
    "torchtitan_2506_asynctp_8B_64gpu_float8_rowwise_asyncTP",
    "megatron_sc21_t2_zero3_174B_384gpu",
    "megatron_sc21_t2_zero3_529B_2240gpu",
    "mcore_r080_h100_weak_314B",
    "nemo2407_h100_fp8_LLAMA2-70B_64gpu",
    "mbridge2511_H100_LLAMA3.1_405B_1024gpu",
    "simumax_b200_deepseekv3_l4_tp1_ep4_pp2_dp4_mbc8_cef",
)


def _translation(rid: str) -> Translation:
    tr = translate(RECORDS[rid])
    assert isinstance(tr, Translation), tr
    return tr


def test_the_sample_covers_every_importer_family() -> None:
    """Every family with an importer and a record that translates (megatron_v1_blog's four
    records report no model shape: skipped before any reading of flags)."""
    translated = {r.source_key for r in RECORDS.values()
                  if importer_of(r) and not isinstance(translate(r), SkipReason)}  # fmt: skip
    assert {RECORDS[rid].source_key for rid in SAMPLE} == translated
    assert set(IMPORTER_OF) - translated == {"megatron_v1_blog"}


@pytest.mark.parametrize("rid", [r for r in SAMPLE if "zero3" not in r])
def test_validate_scenario_is_simtrain_import_of_the_records_flags(rid: str,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    """The record's flags written to a file and imported by the CLI (``simtrain import megatron
    FILE --gpus N --set ...``) load as the very scenario validate simulates."""
    tr = _translation(rid)
    native = tr.native
    assert isinstance(native, NativeConfig) and native.kind == importer_of(tr.record)
    flags = tmp_path / f"{rid}.flags"
    flags.write_text(native.file_text())
    out = tmp_path / "imported.yaml"
    # --strict: every setting is simulated, but torch.compile (torchtitan's runs), listed
    strict = ["--strict"] if native.kind != "torchtitan" else []
    r = CliRunner().invoke(main, [*native.import_args(str(flags)), *strict, "--out", str(out)])
    assert r.exit_code == 0, r.output
    if not strict:
        warned = r.stderr.splitlines()
        assert len(warned) <= 1 and all("compile.enable" in w for w in warned), r.stderr
    imported = load_scenario(out)
    net = read_job_network(tr.record.hardware, tr.record.hardware.get("num_gpus"))
    if net is not None:  # a job's own bandwidth tests (job_network): the one change validate makes
        links = job_hardware(imported.hardware, imported.runtime.collective_algorithm, net)
        assert links.notes and all(n in tr.assumptions for n in links.notes)
        imported = links.on(imported)
    assert replace(imported, source="") == replace(tr.scenario, source="")


@pytest.mark.parametrize("rid", [r for r in SAMPLE if "zero3" in r])
def test_validate_scenario_is_the_deepspeed_import_of_the_records_ds_config(rid: str,
                                                                             tmp_path: Path) -> None:  # fmt: skip
    """A DeepSpeed record's ds_config, written as JSON and read back, through the importer's
    function with the record's model section and --set overrides, loads as validate's scenario
    (the CLI takes the model as --model config.json or preset, which a record's shape is not)."""
    tr = _translation(rid)
    native = tr.native
    assert native is not None and native.kind == "deepspeed" and native.model is not None
    f = tmp_path / "ds_config.json"
    f.write_text(native.file_text())
    cfg = json.loads(f.read_text())
    imp = import_deepspeed_config(cfg, native.model, gpus=native.gpus, file=str(f))
    assert not imp.unsupported
    sc = load_imported(imp, list(native.sets))
    assert replace(sc, source="") == replace(tr.scenario, source="")
    # DeepSpeed's ZeRO-3 defaults, from the importer: 1e9 live parameters, overlap_comm on
    assert sc.parallelism.zero3_max_live_params == 10**9 and sc.runtime.overlap_grad_reduce


def test_every_record_of_an_importer_family_goes_through_it() -> None:
    """Each record that translates carries its native configuration exactly when its family
    has an importer or it carries its own arguments (the count: every such record, once)."""
    through = 0
    for rec in RECORDS.values():
        tr = translate(rec)
        if isinstance(tr, SkipReason):
            continue
        assert (tr.native is not None) == (importer_of(rec) is not None), rec.id
        if tr.native is not None:
            through += 1
    # megatron_sc21 16, korthikanti2022 8 (+ 5 Table 4 layer timings), megatron_readme 13,
    # mtnlg 1, megatron_core 3, nemo 6 (GPT3-175B and Nemotron-340B by their presets),
    # megatron_bridge 4 + 25 (mbridge_2511.yaml; its 2 GB300 DeepSeek-V3 rows at pp 2 vp 4,
    # which no recipe lays out, are skipped), simumax_b200 43 (their own arguments), nanotron 417, torchtitan 11 + 3
    # (torchao's float8 table) + 13 (torchtitan_2412.yaml) + 7 (torchtitan_2506_asynctp.yaml),
    # megatron_sc21_zero3 6; megatron_bridge's 26.x rows 168 (mbridge_26x.yaml, Kimi K2's
    # four with its preset and the recipe's Muon) + 26.06's 10 SFT / LoRA rows
    # + NeMo 24.07's other 12 rows (nemo2407_rest.yaml)
    assert through == 51 + 5 + 25 + 43 + 456 + 34 + 6 + 168 + 10 + 12


def test_an_importer_reading_changes_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    """One code path: Megatron-LM 2021's "local" DDP is the importer's knowledge (one bucket
    of the whole gradient buffer), and validate's interleaved SC'21 rows get it from there."""
    tr = _translation("megatron_sc21_t1_145.6B")
    assert "--DDP-impl" in tr.native.config and tr.scenario.parallelism.bucket_mb == 1e9
    from simtrain.apps.importers import megatron

    monkeypatch.setattr(megatron, "ONE_BUCKET_MB", 123.0)
    assert _translation("megatron_sc21_t1_145.6B").scenario.parallelism.bucket_mb == 123.0


def test_the_flags_file_is_what_the_importer_reads(tmp_path: Path) -> None:
    """The same flags through ``import_config`` (a file, as ``simtrain import`` reads it) and
    through validate give the same model, training and layout."""
    tr = _translation("korthikanti22_t5_530B_sp_selective")
    f = tmp_path / "flags.txt"
    f.write_text(tr.native.file_text())
    imp = import_config("megatron", f, gpus=tr.native.gpus)
    sc = tr.scenario
    assert imp.data["training"]["recompute"] == sc.training.recompute == "selective"
    assert imp.data["parallelism"]["sequence_parallel"] is sc.parallelism.sequence_parallel is True
    assert imp.data["runtime"]["name"] == sc.runtime.name == "megatron_lm_2022"


def _users_megatron_record(model: dict, training: dict, parallelism: dict):
    """A user's own Megatron-LM run on 8 A100s (a record of the megatron_sc21 family, so it
    goes through Megatron's flags and the importer)."""
    from simtrain.apps.validate.records import Record

    return Record(id="user_megatron", kind="training_run", source="a user's run",
                  source_key="megatron_sc21", model=model, training=training,
                  parallelism=parallelism, hardware={"gpu": "A100-SXM4-80GB", "num_gpus": 8},
                  measured={"step_time_s": 1.0})  # fmt: skip


def test_a_records_architecture_reaches_the_megatron_importer_as_flags() -> None:
    """A Megatron record whose model is not Megatron's GPT default (a user's Llama-style run):
    every architecture key becomes a flag, and the importer reads it back."""
    rec = _users_megatron_record(
        model={"layers": 8, "hidden": 1024, "heads": 16, "kv_heads": 4, "ffn_hidden": 2816,
               "seq_len": 2048, "vocab": 32000, "mlp": "swiglu", "positions": "rotary",
               "bias": False, "norm": "rmsnorm", "tied_embeddings": False, "dropout": 0.0,
               "flash_attention": True},
        training={"global_batch": 64, "micro_batch": 2, "precision": "bf16",
                  "recompute": "selective"},
        parallelism={"tp": 2, "pp": 2, "dp": 2, "virtual_stages": 2,
                     "sequence_parallel": True, "zero_stage": 1},
    )  # fmt: skip
    tr = translate(rec)
    assert isinstance(tr, Translation), tr
    words = tr.native.config
    for flag in ("--swiglu", "--disable-bias-linear", "--untie-embeddings-and-output-weights",
                 "--use-flash-attn", "--recompute-activations", "--use-distributed-optimizer",
                 "--sequence-parallel", "--num-query-groups"):  # fmt: skip
        assert flag in words, flag
    m, t, p = tr.scenario.model, tr.scenario.training, tr.scenario.parallelism
    assert (m.mlp, m.positions, m.norm, m.bias, m.tied_embeddings) == (
        "swiglu", "rotary", "rmsnorm", False, False)  # fmt: skip
    assert (m.kv_heads, m.ffn_hidden, m.dropout, m.flash_attention) == (4, 2816, 0.0, True)
    # Megatron pads the vocabulary to a multiple of 128 x tp = 256: 32,000 -> 32,000 (already)
    assert m.vocab == 32000
    assert (t.precision, t.recompute) == ("bf16", "selective")
    assert (p.schedule, p.virtual_stages, p.zero_stage, p.sequence_parallel) == (
        "interleaved", 2, 1, True)  # fmt: skip
    # --bf16: Megatron reduces the gradients in fp32 (the importer's reading)
    assert tr.scenario.runtime.grad_reduce_dtype == "fp32"


SIMUMAX = "simumax_b200_deepseekv3_l4_tp1_ep4_pp2_dp4_mbc8_cef"


def test_a_record_with_its_own_arguments_goes_through_their_importer() -> None:
    """The arguments' kind decides, not the family: the same record under a family of
    translate.py's own path (bloom) is still read by the Megatron importer, MoE and all."""
    rec = replace(RECORDS[SIMUMAX], source_key="bloom")
    assert importer_of(rec) == "megatron"
    tr = translate(rec)
    assert isinstance(tr, Translation) and tr.native is not None
    assert tr.scenario.model.num_experts == 256 and tr.scenario.parallelism.ep == 4


def test_a_record_whose_sections_contradict_its_arguments_is_refused() -> None:
    """The arguments ran; sections that say another layout (tp 2 x dp 2 where the arguments
    give tp 1 x dp 4) are a skip naming native.args, never a silent pick of one of them."""
    rec = RECORDS[SIMUMAX]
    bad = replace(rec, parallelism={**rec.parallelism, "tp": 2, "dp": 2})
    out = translate(bad)
    assert isinstance(out, SkipReason) and "native.args" in out.reason


@pytest.mark.parametrize(("mlp", "positions", "attention_dropout"), [
    ("relu", "alibi", False),  # relu: no Megatron flag (laid over with --set)
    ("relu2", "none", True),
    ("gelu", "learned", False),
])  # fmt: skip
def test_new_architecture_keys_survive_the_megatron_flags(mlp, positions, attention_dropout):
    """ALiBi (Megatron-DeepSpeed --position-embedding-type alibi), NoPE, squared ReLU, ReLU and
    a residual-only dropout reach the scenario of a record that goes through Megatron's flags
    (were re-imported as learned positions and GeLU)."""
    rec = _users_megatron_record(
        model={"layers": 4, "hidden": 1024, "heads": 16, "seq_len": 2048, "vocab": 32000,
               "mlp": mlp, "positions": positions, "dropout": 0.1,
               "attention_dropout": attention_dropout},
        training={"global_batch": 16, "micro_batch": 2, "precision": "bf16"},
        parallelism={"tp": 2, "pp": 1, "dp": 4},
    )  # fmt: skip
    tr = translate(rec)
    assert isinstance(tr, Translation), tr
    m = tr.scenario.model
    assert (m.mlp, m.positions, m.attention_dropout, m.dropout) == (
        mlp, positions, attention_dropout, 0.1)  # fmt: skip
