"""The command line: tables, JSON schema, --explain, exit codes and one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from simtrain.cli import main
from simtrain.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
FP32 = str(ROOT / "scenarios/seed_1p5b_fp32.yaml")
AMP = str(ROOT / "scenarios/seed_1p5b_amp_ckpt.yaml")
GPIPE = str(ROOT / "scenarios/gpipe_8gpu.yaml")
N_XL = 1_557_611_200

CATEGORIES = {"parameters", "master_weights", "gradients", "optimizer_states", "activations",
              "cuda_context", "buffers"}  # fmt: skip
STAGE_KEYS = {"stage", "gpus", "memory_bytes", "host_memory_bytes", "peak_memory_bytes",
              "peak_memory_bytes_by_category", "capacity_bytes", "fits"}  # fmt: skip
TOP_KEYS = {"schema_version", "scenario", "params", "trainable_params", "stages",
            "peak_memory_bytes", "fits"}  # fmt: skip


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_memory_table() -> None:
    r = invoke("memory", AMP)
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "GiB" in out and "GB" in out
    assert re.search(r"^fits", out, re.M)
    assert "does not fit" not in out
    assert "1,557,611,200 parameters" in out
    assert "does not fit" in invoke("memory", FP32).stdout  # 87.8 GB: the lecture's point
    for cat in CATEGORIES:
        assert cat in out
    # parameters (AMP): 2·N bytes = 3,115,222,400 B = 2.90 GiB
    assert re.search(r"^parameters\s+2\.90\s*$", out, re.M)
    assert r.stderr == ""


def test_a_fit_near_the_gpus_memory_is_flagged() -> None:
    """A peak that fits at >= 85 % of the GPU (report.tables.NEAR_CAPACITY) says the
    allocator's fragmentation can still run it out of memory; one with room does not."""
    near = invoke("memory", str(ROOT / "scenarios/llama3_8b_cp.yaml")).stdout  # 71.75 of 79.19
    assert re.search(r"^fits: peak 71\.75 GiB .*; within 15 % of the GPU's memory", near, re.M)
    roomy = invoke("memory", GPIPE).stdout  # 58.23 of 79.35 GiB: 73 %
    assert re.search(r"^fits: peak 58\.23 GiB", roomy, re.M) and "within 15 %" not in roomy
    assert "within 15 %" not in invoke("memory", FP32).stdout  # does not fit: no such note


def test_memory_json_schema() -> None:
    r = invoke("memory", FP32, "--json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert set(doc) == TOP_KEYS
    assert doc["schema_version"] == 1
    assert doc["scenario"] == "seed_1p5b_fp32"
    assert doc["params"] == N_XL and doc["trainable_params"] == N_XL
    assert isinstance(doc["stages"], list) and len(doc["stages"]) == 1
    st = doc["stages"][0]
    assert set(st) == STAGE_KEYS
    assert set(st["memory_bytes"]) == CATEGORIES | {"stashed_weights"}  # JSON: every category
    assert st["memory_bytes"]["stashed_weights"] == 0  # the table leaves the zero row out
    assert "stashed_weights" not in invoke("memory", FP32).stdout
    assert st["memory_bytes"]["parameters"] == 4 * N_XL
    # One micro-batch, no DP/PP: gradients appear as activations are freed, so the peak holds
    # the larger of the two (ResolvedStep.gradients_transient).
    mb = st["memory_bytes"]
    assert st["peak_memory_bytes"] <= sum(mb.values())
    assert st["peak_memory_bytes"] >= sum(mb.values()) - mb["gradients"] - mb["buffers"]
    assert doc["peak_memory_bytes"] == st["peak_memory_bytes"]
    assert st["fits"] is (st["peak_memory_bytes"] <= st["capacity_bytes"]) is doc["fits"]
    assert all(isinstance(v, int) for v in st["memory_bytes"].values())


def test_memory_json_pipeline_stages() -> None:
    doc = json.loads(invoke("memory", GPIPE, "--json").stdout)
    assert [s["stage"] for s in doc["stages"]] == list(range(8))
    for s in doc["stages"]:
        assert set(s) == STAGE_KEYS and s["gpus"] == 1
    assert doc["peak_memory_bytes"] == max(s["peak_memory_bytes"] for s in doc["stages"])


def test_memory_json_deterministic() -> None:
    a = invoke("memory", GPIPE, "--json").stdout_bytes
    b = invoke("memory", GPIPE, "--json").stdout_bytes
    assert a == b and a


def test_explain_prints_arithmetic() -> None:
    r = invoke("memory", FP32, "--explain")
    assert r.exit_code == 0
    out = r.stdout
    # 1,557,611,200 x 4 B = 6,230,444,800 B = 6.23 GB (5.80 GiB), computed by hand
    line = next(x for x in out.splitlines() if x.strip().startswith("parameters") and "=" in x)
    assert "1,557,611,200" in line and "x 4 B" in line and "6.23 GB" in line
    assert any("optimizer states" in x and "12.46 GB" in x for x in out.splitlines())
    assert len([x for x in out.splitlines() if "=" in x]) >= 5
    # the table follows the explanation
    assert re.search(r"^(fits|does not fit)", out, re.M)


def test_does_not_fit_is_a_result() -> None:
    # b = 64: activations alone are several hundred GB on an 80 GB GPU
    r = invoke("memory", FP32, "--set", "training.micro_batch=64",
               "--set", "training.global_batch=64")  # fmt: skip
    assert r.exit_code == 0
    assert "does not fit" in r.stdout
    doc = json.loads(invoke("memory", FP32, "--json", "--set", "training.micro_batch=64",
                            "--set", "training.global_batch=64").stdout)  # fmt: skip
    assert doc["fits"] is False and doc["stages"][0]["fits"] is False


def test_set_override_changes_result() -> None:
    doc = json.loads(invoke("memory", AMP, "--json", "--set", "training.optimizer=sgd").stdout)
    assert doc["stages"][0]["memory_bytes"]["optimizer_states"] == 0


def test_does_not_fit_prints_what_would_make_it_fit(tmp_path: Path) -> None:
    """Under the verdict, the cheapest changes that fit (simtrain.apps.fit); none when it fits."""
    out = invoke("memory", FP32).stdout
    lines = out.splitlines()
    verdict = next(i for i, x in enumerate(lines) if x.startswith("does not fit"))
    assert lines[verdict + 2].startswith("changes that make it fit, cheapest first")
    assert "1. micro-batch 12 -> 6" in out and "--set training.micro_batch=6" in out
    assert "changes that make it fit" in invoke("memory", FP32, "--explain").stdout
    assert "changes that make it fit" not in invoke("memory", AMP).stdout
    run = invoke("run", FP32, "--no-plots", "--out", str(tmp_path))
    assert run.exit_code == 0 and "changes that make it fit" in run.stdout
    assert run.stdout.rstrip().endswith("trace.json")


@pytest.mark.parametrize("command", ["memory", "run"])
def test_strict_exits_3_when_it_does_not_fit(command: str, tmp_path: Path) -> None:
    extra = ("--no-plots", "--out", str(tmp_path)) if command == "run" else ()
    r = invoke(command, FP32, "--strict", *extra)
    assert r.exit_code == 3 and "does not fit" in r.stdout and r.stderr == ""
    assert invoke(command, FP32, *extra).exit_code == 0  # a result, without --strict
    assert invoke(command, AMP, "--strict", *extra).exit_code == 0
    r = invoke(command, FP32, "--strict", "--json", *extra)
    assert r.exit_code == 3 and json.loads(r.stdout)["fits"] is False  # JSON only on stdout


@pytest.mark.parametrize(
    "args",
    [("--pp", "33"), ("--pp", "0"), ("--microbatches", "129"), ("-m", "1" + "0" * 30),
     ("--virtual-stages", "9"), ("-v", "-1")],
)  # fmt: skip
def test_schedule_sizes_are_bounded(args: tuple[str, ...]) -> None:
    """simtrain schedule does work and prints a grid that grow with pp x m x v: bounded, one line."""
    r = invoke("schedule", "interleaved", *args)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("error:") and r.stderr.count("\n") == 1
    assert "is not in the range" in r.stderr and len(r.stderr) < 200


def test_schedule_at_its_maxima() -> None:
    from simtrain.cli import MAX_SCHEDULE_MICROBATCHES, MAX_SCHEDULE_PP

    r = invoke("schedule", "1f1b", "--pp", str(MAX_SCHEDULE_PP), "-m",
               str(MAX_SCHEDULE_MICROBATCHES))  # fmt: skip
    assert r.exit_code == 0 and "bubble ratio" in r.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("memory", str(ROOT / "scenarios/does_not_exist.yaml")),
        ("memory", FP32, "--set", "training.bogus=1"),
        ("memory", FP32, "--set", "training.micro_batch"),
        ("memory", FP32, "--set", "training.micro_batch=[1"),
        ("memory", FP32, "--set", "training.precision=fp8"),
        ("memory", FP32, "--set", "training.micro_batch=5"),
        ("memory", FP32, "--json", "--set", "parallelism.pp=5"),
        ("memory", FP32, "--set", "model.preset=gpt9"),
    ],
)
def test_bad_input_exit_2_one_line(args: tuple[str, ...]) -> None:
    r = invoke(*args)
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stdout == ""
    err = r.stderr
    assert err.startswith("error:")
    assert err.count("\n") == 1 and err.endswith("\n")
    assert "Traceback" not in err


def test_unknown_key_in_file(tmp_path: Path) -> None:
    p = tmp_path / "typo.yaml"
    p.write_text(Path(FP32).read_text().replace("micro_batch: 12", "micro_bach: 12"))
    r = invoke("memory", str(p))
    assert r.exit_code == 2
    assert r.stderr.startswith("error:") and r.stderr.count("\n") == 1
    assert "typo.yaml" in r.stderr and "training.micro_bach" in r.stderr


def test_binary_scenario_file(tmp_path: Path) -> None:
    p = tmp_path / "binary.yaml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    r = invoke("memory", str(p))
    assert r.exit_code == 2
    assert r.stderr.startswith("error:") and r.stderr.count("\n") == 1


@pytest.mark.parametrize("args", [("--set",), ()], ids=["set-without-value", "directory"])
def test_usage_errors_one_line(args: tuple[str, ...]) -> None:
    target = FP32 if args else str(ROOT / "scenarios")
    r = invoke("memory", target, *args)
    assert r.exit_code == 2
    assert r.stderr.startswith("error:") and r.stderr.count("\n") == 1


def test_bad_input_subprocess() -> None:
    """The installed entry point too: exit code 2, one line, no traceback."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", "from simtrain.cli import main; main()", "memory", FP32,
         "--set", "training.bogus=1"],
        capture_output=True, text=True, timeout=600,  # a hang guard, not a time bound
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.startswith("error:") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_schedule_grid() -> None:
    r = invoke("schedule", "gpipe", "--pp", "4", "--microbatches", "8")
    assert r.exit_code == 0
    rows = [x for x in r.stdout.splitlines() if x.startswith("rank")]
    assert len(rows) == 8  # the action order, then the same schedule played in time
    # GPipe (p-1)/(m+p-1) = 3/11
    assert "bubble ratio 0.273" in r.stdout
    rows = rows[:4]
    # GPipe: each rank runs 8 forwards, then 8 backwards (2m = 16 compute actions)
    for k, row in enumerate(rows):
        cells = row.split("|")[1].split()
        fwd = [c for c in cells if re.fullmatch(rf"{k}F\d+", c)]
        bwd = [c for c in cells if re.fullmatch(rf"{k}B\d+", c)]
        assert fwd == [f"{k}F{j}" for j in range(8)]
        assert bwd == [f"{k}B{j}" for j in range(8)]
        assert cells.index(fwd[-1]) < cells.index(bwd[0])


def test_schedule_unknown_name() -> None:
    r = invoke("schedule", "chimera", "--pp", "4")
    assert r.exit_code == 2
    assert r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_a_closed_pipe_ends_quietly() -> None:
    """`simtrain schedule ... | head -1`: the reader leaves; no 'error: output: cannot write:
    Broken pipe' and exit 0 (a review of the CLI, 2026-12-05). The grid is 1.2 MB, more than a
    pipe holds, so the writer does meet the closed pipe (the 1 kB of `run` fitted in the pipe's
    buffer: the test passed with the handler removed)."""
    import subprocess
    import sys

    cmd = f"{sys.executable} -m simtrain schedule interleaved --pp 32 -m 128 -v 8 | head -1"
    out = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=300)  # fmt: skip
    assert out.stdout.strip()
    assert "Broken pipe" not in out.stderr and "error" not in out.stderr
    assert out.returncode == 0


def test_an_unreachable_dask_scheduler_names_the_option(monkeypatch) -> None:
    pytest.importorskip("dask.distributed")
    import dask.distributed

    from simtrain.apps.plan.execute import DaskExecutor

    def refuse(*args, **kwargs):
        raise OSError("Timed out trying to connect to tcp://127.0.0.1:1 after 10 s")

    monkeypatch.setattr(dask.distributed, "Client", refuse)
    with pytest.raises(ConfigError, match="--scheduler: cannot connect to the Dask scheduler"):
        DaskExecutor("tcp://127.0.0.1:1")


@pytest.mark.parametrize("error", [ValueError("missing port number in address 'x'"),
                                   ValueError("invalid literal for int() with base 10: 'x'"),
                                   ValueError("unknown address scheme 'foo'"),
                                   TypeError("TLS expects a `ssl_context` argument of type "
                                             "ssl.SSLContext (perhaps check your TLS "
                                             "configuration?) Instead got None")])  # fmt: skip
def test_a_malformed_dask_scheduler_names_the_option(monkeypatch, error: Exception) -> None:
    """dask's Client raised these for 'x', 'tcp://127.0.0.1:x', 'foo://127.0.0.1:1' and
    'tls://127.0.0.1:1' (a fuzz campaign, 2026-12-07: each a traceback): now one line naming
    --scheduler and the form it takes. The Client is replaced by one that raises dask's
    errors: real Clients on bad addresses start IO-loop threads that hung a loaded CI run."""
    pytest.importorskip("dask.distributed")
    import dask.distributed

    from simtrain.apps.plan.execute import DaskExecutor

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(dask.distributed, "Client", refuse)
    with pytest.raises(ConfigError, match="--scheduler: not a Dask scheduler address") as info:
        DaskExecutor("x")
    assert info.value.allowed == "tcp://HOST:PORT"


@pytest.mark.parametrize("name, v", [("dualpipe", "8"), ("zb_v", "3"), ("dualpipe_v", "4")])
def test_schedule_refuses_a_chunk_count_its_schedule_does_not_run(name: str, v: str) -> None:
    """A schedule of a fixed chunk count (two: ZB-V, DualPipe, DualPipeV) took any -v and ran
    its own silently (a fuzz campaign): now a usage error naming -v and the counts it takes;
    1 (the default) and its own count still run."""
    from click.testing import CliRunner

    from simtrain.cli import main

    r = CliRunner().invoke(main, ["schedule", name, "-v", v])
    assert r.exit_code == 2 and f"runs 2 model chunks per GPU (got {v})" in r.stderr, r.output
    for ok in ("1", "2"):
        assert CliRunner().invoke(main, ["schedule", name, "-v", ok]).exit_code == 0


@pytest.mark.parametrize("args", [
    ["run", "scenarios/gpipe_8gpu.yaml", "--no-plots"],
    ["topology", "scenarios/gpipe_8gpu.yaml"],
    ["compare", "scenarios/gpipe_8gpu.yaml", "--variants", "amp"],
    ["plan", "plans/llama3_8b.yaml"],
    ["validate"],
    ["calibrate", "--device", "cpu"],
    ["fit-network", "h100_sxm5_80gb", "x.txt"],
    ["import", "megatron", "x.sh"],
    ["schema"],
])  # fmt: skip
@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_out_is_a_usage_error(args: list[str], empty: str) -> None:
    """``--out ''`` (an unset shell variable) was read as no --out: the default folder."""
    r = CliRunner().invoke(main, [*args, "--out", empty])
    assert r.exit_code == 2 and "an empty path" in r.output, r.output


@pytest.mark.parametrize("text", ["", "[]\n", "# only a comment\n"])
def test_validate_of_a_file_without_records_is_an_error(tmp_path: Path, text: str) -> None:
    """A records file with no record printed an empty table and exited 0 (a fuzz campaign): a
    script checking its exit code took it for a passed validation."""
    p = tmp_path / "runs.yaml"
    p.write_text(text)
    r = CliRunner().invoke(main, ["validate", str(p), "--out", str(tmp_path / "v")])
    assert r.exit_code == 2 and f"{p}: <root>: no records" in r.output, r.output
