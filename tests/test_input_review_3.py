"""Input a third fuzz campaign found crashing, misread or misreported (the schedule, compare,
validate, topology and hardware commands). Each test failed before its fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from simtrain.apps.compare.run import compare
from simtrain.apps.validate.run import validate
from simtrain.cli import main
from simtrain.errors import ConfigError
from simtrain.layout.topology import build_topology, topology_summary
from simtrain.spec.hardware import load_hardware

ROOT = Path(__file__).resolve().parents[1]
RECORD = """- id: lab_gpt_1
  source: test
  hardware: {{gpu: A100-SXM4-80GB, num_gpus: {gpus}}}
  model: {{layers: 12, hidden: 768, heads: 12, vocab: 50304, seq_len: 1024}}
  training: {{global_batch: 32, micro_batch: {mb}, precision: bf16}}
  parallelism: {{tp: 1, pp: 1, dp: 4}}
  measured: {{step_time_s: 0.5, mfu: {mfu}}}
"""


def _skips(tmp_path: Path, **kw: object) -> list[str]:
    p = tmp_path / "runs.yaml"
    p.write_text(RECORD.format(**{"gpus": 4, "mb": 8, "mfu": 0.4, **kw}))
    return [s.reason for s in validate(p).skipped]


def test_a_name_with_dollars_is_drawn_as_text(tmp_path: Path) -> None:
    """A scenario named $x^$ crashed the Gantt chart: matplotlib read it as a formula
    (ParseSyntaxException). simtrain.report.mpl turns mathtext off for every plot."""
    r = CliRunner().invoke(main, ["run", "scenarios/1f1b_8gpu.yaml", "--set", "name=$x^$",
                                  "--out", str(tmp_path)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (tmp_path / "gantt.png").stat().st_size > 0


@pytest.mark.parametrize("name", ["\u200b", "\ufeff", "a\x01b", "x" * 129])
def test_a_variant_name_is_a_printable_line(name: str) -> None:
    """A zero-width variant name crashed the plots (AttributeError), one of 100,000 characters
    took 91 s to draw (a fuzz helper's run, 2026-12-07, not re-timed here): names are at most
    128 printable characters, as a scenario's."""
    with pytest.raises(ConfigError, match="128 printable") as exc:
        compare("scenarios/zero1_8gpu.yaml", [f"{name}:training.micro_batch=2"])
    assert exc.value.key == "--variants"


def test_a_variant_mapping_does_not_drop_a_baseline_key_inside_it() -> None:
    """--set training.peft.rank=4 with a variant training.peft={method: lora} trained rank 8:
    the variant's mapping replaced the baseline's rank without a word."""
    with pytest.raises(ConfigError, match="training.peft.rank=4"):
        compare("scenarios/zero1_8gpu.yaml", ["a:training.peft={method: lora}"],
                overrides=["training.peft.rank=4"])  # fmt: skip
    res = compare("scenarios/zero1_8gpu.yaml", ["b:training.peft.method=lora"],
                  overrides=["training.peft.rank=4"])  # fmt: skip
    assert len(res.rows) == 2


def test_topology_draws_the_last_node_partial(tmp_path: Path) -> None:
    """dp 10 on 8-GPU servers is 8 + 2 GPUs; topology printed 2 x 8 = 16 GPUs."""
    hw = load_hardware("a100_sxm4_80gb")
    g = build_topology(hw, 2, 8, last_node_gpus=2)
    assert sum(1 for _, d in g.nodes(data=True) if d["kind"] == "gpu") == 10
    assert "the last with 2 = 10 GPUs" in topology_summary(hw, 2, 8, g, 2)
    scenario = ROOT / "tests" / "fixtures" / "dp10_no_cluster.yaml"
    r = CliRunner().invoke(main, ["topology", str(scenario), "--out", str(tmp_path)])
    assert r.exit_code == 0 and "= 10 GPUs" in r.output, r.output


def test_virtual_stages_on_a_one_chunk_schedule_name_the_option() -> None:
    """gpipe -v 2 said "only 'interleaved' takes v > 1": five schedules do."""
    r = CliRunner().invoke(main, ["schedule", "gpipe", "--pp", "4", "-m", "8", "-v", "2"])
    assert r.exit_code == 2 and "--virtual-stages" in r.output
    assert "interleaved, combined_1f1b, zb_v, dualpipe_v, dualpipe" in r.output


def test_validate_refuses_counts_that_are_not_numbers_and_percent_mfu(tmp_path: Path) -> None:
    """num_gpus "6" and micro_batch "4" were read as absent (the layout derived), mfu 40 was
    compared as 40x the peak (-99 %)."""
    assert _skips(tmp_path) == []
    assert _skips(tmp_path, gpus='"6"') == ["hardware.num_gpus: must be a whole number, not '6'"]
    assert _skips(tmp_path, mb='"4"') == ["training.micro_batch: must be a whole number, not '4'"]
    assert "a fraction of the peak, at most 1" in _skips(tmp_path, mfu=40)[0]


def test_a_native_record_error_shows_no_placeholder(tmp_path: Path) -> None:
    p = tmp_path / "runs.yaml"
    p.write_text(RECORD.format(gpus=4, mb=8, mfu=0.4)
                 + "  native: {kind: megatron, args: '--tensor-model-parallel-size 2'}\n")  # fmt: skip
    (reason,) = [s.reason for s in validate(p).skipped]
    assert "<file>" not in reason and "not a Megatron-LM launch script" in reason


@pytest.mark.parametrize(("name", "says"), [("/nonexistent.yaml", "file not found"),
                                            ("../hardware/a100_sxm4_80gb", "no folder")])  # fmt: skip
def test_hardware_paths_and_names(name: str, says: str) -> None:
    """A missing .yaml path was an "unknown hardware profile"; a name with ../ was resolved
    against the hardware folder."""
    with pytest.raises(ConfigError, match=says):
        load_hardware(name)


def test_a_preset_under_a_spelled_out_model_is_refused() -> None:
    """--set model.preset=llama3-70b on a model spelled out key by key changed nothing (the
    file's keys override a preset's), silently; on a preset's model it still applies."""
    from simtrain.spec.scenario import load_scenario

    with pytest.raises(ConfigError, match="would override it") as exc:
        load_scenario("scenarios/nanotron_playbook_polling.yaml", ["model.preset=llama3-70b"])
    assert exc.value.file == "--set" and exc.value.key == "model.preset"
    sc = load_scenario("scenarios/mixtral_8x7b_ep8.yaml", ["model.preset=llama3-8b",
                                                           "parallelism.ep=1"])  # fmt: skip
    assert sc.model.layers == 32 and not sc.model.is_moe and sc.model.flash_attention


def test_log_axes_keep_their_mathtext_ticks() -> None:
    """Names are plain text, but a log axis's ticks are mathtext on purpose: turning mathtext
    off for the process printed $\\mathdefault{10^{5}}$ on validate's and plan's axes (the
    review)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from simtrain.report.mpl import plain_text

    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_xlim(1e3, 1e6)
    ax.set_title("$x^$")
    plain_text(fig)
    fig.canvas.draw()
    assert not ax.title.get_parse_math()
    ticks = [t for t in ax.xaxis.get_major_ticks() if t.label1.get_text()]
    assert ticks and all(t.label1.get_parse_math() for t in ticks)
    assert any("mathdefault" in t.label1.get_text() for t in ticks)


@pytest.mark.parametrize(("text", "expected"), [("--bf16;# launch", ["--bf16;"]),
                                                ("a &# in the background", ["a", "&"]),
                                                ("a|#c", ["a|"]), ("(#c", ["("]),
                                                ("a=#c", ["a=#c"]), ("a#b", ["a#b"])])  # fmt: skip
def test_a_hash_after_an_operator_starts_a_comment(text: str, expected: list[str]) -> None:
    """bash ends a word at ;&|()<>, so a "#" after one starts a comment: --bf16;# launch had
    imported as fp32 (the review); after "=" it is a character."""
    from simtrain.apps.importers.shell import split_words

    assert split_words(text) == expected


def test_lengths_of_unevaluated_values_stay_as_written() -> None:
    """HOSTS=($(scontrol show hostnames ...)) counted its 4 words as 4 nodes (the review)."""
    from simtrain.apps.importers.shell import read_command

    c = read_command('HOSTS=($(scontrol show hostnames "$X"))\nV=$UNSET\nA=(x y)\n'
                     "python pretrain_gpt.py --n ${#HOSTS[@]} --v ${#V} --a ${#A[@]}\n",
                     "t.sh")  # fmt: skip
    assert c is not None and c.args == ("--n", "${#HOSTS[@]}", "--v", "${#V}", "--a", "2")


def test_validate_refuses_a_quoted_grad_accum(tmp_path: Path) -> None:
    p = tmp_path / "runs.yaml"
    p.write_text(RECORD.format(gpus=4, mb=8, mfu=0.4).replace("micro_batch: 8",
                                                              'grad_accum: "4"'))  # fmt: skip
    assert [s.reason for s in validate(p).skipped] == [
        "training.grad_accum: must be a whole number, not '4'"
    ]


def test_a_variant_mapping_that_gives_the_baseline_key_is_kept() -> None:
    res = compare("scenarios/zero1_8gpu.yaml", ["a:training.peft={method: lora, rank: 4}"],
                  overrides=["training.peft.rank=4"])  # fmt: skip
    assert len(res.rows) == 2


def test_the_multi_chunk_schedules_are_those_whose_generators_take_two_chunks() -> None:
    """multi_chunk_schedules (the list --virtual-stages names) against the generators
    themselves: a schedule is in it exactly when it builds with v = 2 (pp 4, m 8)."""
    from simtrain.errors import ScheduleError
    from simtrain.schedules.registry import SCHEDULES, build_schedule, multi_chunk_schedules

    builds = []
    for name in SCHEDULES:
        try:
            build_schedule(name, 4, 8, 2)
        except ScheduleError:
            continue
        builds.append(name)
    assert multi_chunk_schedules() == builds and len(builds) == 5


@pytest.mark.parametrize("value", ["٤", "1_0", "²", "４", "4.0", ""])
def test_a_count_on_the_command_line_is_ascii_digits(value: str) -> None:
    """Python's int() reads "1_0" as 10 and other scripts' digits ("٤", "４") as 4: a command
    line's count is refused unless written in 0-9 (cli.WholeNumber), naming the option."""
    r = CliRunner().invoke(main, ["schedule", "1f1b", "--pp", value, "-m", "8"])
    assert r.exit_code == 2
    assert "'--pp'" in r.output and "digits 0-9" in r.output
    assert "Traceback" not in r.output


def test_ascii_counts_still_read_as_before() -> None:
    for value in ("4", " 4", "+4"):
        r = CliRunner().invoke(main, ["schedule", "1f1b", "--pp", value, "-m", "8"])
        assert r.exit_code == 0, r.output
        assert "bubble ratio 0.273" in r.output  # (p - 1)/(m + p - 1) = 3/11
    r = CliRunner().invoke(main, ["schedule", "1f1b", "--pp", "0", "-m", "8"])
    assert r.exit_code == 2 and "1<=x<=32" in r.output  # the range, as click says it


def test_a_measured_zero_is_named_not_dropped_unsaid(default_records, default_result) -> None:
    """A value of 0 the comparison reads and finds nothing else for (the Playbook sweep's MFU
    of one slow run, 0.000) is named in the record's notes and not compared; a 0 read past
    (a samples_per_s of 0 beside a tokens_per_s) is no note; the other values are compared."""
    from dataclasses import replace

    from simtrain.apps.validate.measured import compare_record, zero_notes
    from simtrain.apps.validate.translate import translate

    note = "measured.{} is 0: not compared (no error can be taken against 0)"
    tr = translate(default_records["usp_3B_n16_dp1_tp32_pp4_mbs1_ga256_z0"])
    assert tr.record.measured["mfu"] == 0
    assert zero_notes(tr.record, tr.scenario) == (note.format("mfu"),)
    metrics = {c.metric for c in compare_record(tr)}
    assert "mfu" not in metrics and "tokens_per_s" in metrics
    mpt = translate(default_records["mpt_a100_80gb_amp_bf16_3b_s65536_n8_mbs1_ga2_gbs16_acTrue"])
    assert mpt.record.measured["samples_per_s"] == 0 and zero_notes(mpt.record, mpt.scenario) == ()
    rec = tr.record
    for measured, zero, read in (
        ({"tokens_per_s": 0, "tokens_per_s_per_gpu": 17}, [], "tokens_per_s"),
        ({"tokens_per_s": 0, "samples_per_s": 0}, ["tokens_per_s", "samples_per_s"], None),
        ({"peak_mem_gb": 0, "peak_mem_gib": 1.4}, [], "peak_memory_bytes"),
        ({"tflops_per_gpu": 0, "model_tflops_per_gpu": 100}, [], "tflops_per_gpu"),
    ):
        one = replace(rec, measured=measured)
        assert zero_notes(one, tr.scenario) == tuple(note.format(k) for k in zero)
        got = {c.metric for c in compare_record(replace(tr, record=one))}
        assert read is None or read in got
    # validate's notes for the record (the session's run: tests/conftest.py)
    assert note.format("mfu") in default_result.assumptions["usp_3B_n16_dp1_tp32_pp4_mbs1_ga256_z0"]
