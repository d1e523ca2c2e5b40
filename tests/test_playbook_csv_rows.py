"""benchmarks/playbook_csv_rows.py: the Ultra-Scale Playbook sweep's CSV rows as nanotron
records, checked against the chart records shipped in measured/ (the same run, read both ways,
gives the same scenario and the same errors)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from simtrain.apps.validate.measured import compare_record
from simtrain.apps.validate.translate import translate

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "playbook_csv_rows.py"


# Two rows of the sweep's CSV (eyao600/Rapid-LLM validation_scripts/huggingface_data/
# bench_final2_mod_add.csv at 9a8d0a10), the columns the script reads: a pipeline run after the
# "pp fix" that is in measured/ (usp_1B_n16_dp8_tp8_pp2_mbs1_ga32_z1) and an out-of-memory one.
def _header() -> str:
    """The script's columns (benchmarks/playbook_csv_rows.py COLUMNS), as the CSV's header."""
    spec = importlib.util.spec_from_file_location("playbook_csv_rows_cols", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return ",".join(mod.COLUMNS)


HEADER = _header()


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("playbook_csv_rows", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_csv_row_is_its_chart_record(script, published_records: dict) -> None:
    shipped = published_records["usp_1B_n16_dp8_tp8_pp2_mbs1_ga32_z1"]
    row = {"job_id": "14099003", "status": "Success", "oom_error": "False", "dp": "8",
           "tp": "8", "pp": "2", "mbs": "1", "batch_accum": "32", "zero_stage": "1",
           "hidden_size": "2048", "num_layers": "16", "num_heads": "32", "num_kv_heads": "32.0",
           "interm_dim": "8192", "seq_len": "4096", "vocab_size": "131072",
           "tok/s/gpu": str(shipped.measured["tokens_per_s_per_gpu"]),
           "Mem Alloc (GB)": str(shipped.measured["step_peak_mem_gb"]),
           "Mem Res (GB)": str(shipped.measured["peak_mem_gb"]),
           **{col: str(shipped.hardware["network_measured"][key]) for col, key in (
               ("AllGather (GB/s)", "all_gather_busbw_gb_per_s"),  # the CSV's own headers
               ("ReduceScatter (GB/s)", "reduce_scatter_busbw_gb_per_s"),
               ("AllReduce (GB/s)", "all_reduce_busbw_gb_per_s"),
               ("AG Intra-node (GB/s)", "intra_node_all_gather_busbw_gb_per_s"),
               ("RS Intra-node (GB/s)", "intra_node_reduce_scatter_busbw_gb_per_s"),
               ("AR Intra-node (GB/s)", "intra_node_all_reduce_busbw_gb_per_s"))}}  # fmt: skip
    rec = script.row_record(row, published_records[script.TEMPLATE], one_runtime=False)
    assert rec.runtime == shipped.runtime == "nanotron"  # job >= 14097150: after the fix
    # the row's own bandwidth test is the record's network (job_network.py), as shipped
    assert rec.hardware["network_measured"] == shipped.hardware["network_measured"]
    bare = script.row_record(row, published_records[script.TEMPLATE], one_runtime=False,
                             job_network=False)  # fmt: skip
    assert "network_measured" not in bare.hardware  # --no-job-network: the EFA profile's
    untested = {**row, **dict.fromkeys(script.NETWORK_COLUMNS, "")}
    rec_u = script.row_record(untested, published_records[script.TEMPLATE], one_runtime=False)
    # the template's own (one-node) test is never carried over to a row without one
    assert "network_measured" in published_records[script.TEMPLATE].hardware
    assert "network_measured" not in rec_u.hardware
    a, b = translate(shipped).scenario, translate(rec).scenario
    assert (a.model.layers, a.model.hidden, a.model.ffn_hidden, a.model.tied_embeddings) == (
        b.model.layers,
        b.model.hidden,
        b.model.ffn_hidden,
        b.model.tied_embeddings,
    )
    assert a.parallelism == b.parallelism and a.runtime == b.runtime
    assert a.training == b.training
    got = {c.metric: c.error_pct for c in compare_record(translate(rec))}
    want = {c.metric: c.error_pct for c in compare_record(translate(shipped))}
    for metric in ("tokens_per_s", "step_memory_bytes", "fits"):
        assert got[metric] == pytest.approx(want[metric], abs=1e-6), metric
    # the same row before the fix, or under --one-runtime: the source's polling profile
    early = script.row_record({**row, "job_id": "14018419"}, published_records[script.TEMPLATE],
                              one_runtime=False)  # fmt: skip
    assert early.runtime == "nanotron_bench"
    at_fix = script.row_record({**row, "job_id": "14097150"}, published_records[script.TEMPLATE],
                               one_runtime=False)  # fmt: skip
    assert at_fix.runtime == "nanotron"  # the script re-ran jobs below 14097150
    one = script.row_record(row, published_records[script.TEMPLATE], one_runtime=True)
    assert translate(one).scenario.runtime.name == "nanotron_bench"


def test_out_of_memory_and_other_failures(script, published_records: dict) -> None:
    tmpl = published_records[script.TEMPLATE]
    base = dict.fromkeys(HEADER.split(","), "")
    base.update({"job_id": "14000000", "dp": "8", "tp": "1", "pp": "1", "mbs": "64",
                 "batch_accum": "1", "zero_stage": "0", "hidden_size": "8192",
                 "num_layers": "80", "num_heads": "64", "seq_len": "4096",
                 "vocab_size": "131072", "interm_dim": "28672"})  # fmt: skip
    oom = script.row_record({**base, "status": "OOM", "oom_error": "True"}, tmpl, False)
    assert oom.measured == {"outcome": "oom"}
    assert not oom.model["tied_embeddings"] and oom.model["kv_heads"] == 64  # kv: heads
    assert {c.metric: c.predicted for c in compare_record(translate(oom))} == {"fits": False}
    # a crash the log does not call out of memory is no verdict; a row without its shape none
    assert script.row_record({**base, "status": "Other", "oom_error": "False"}, tmpl, False) is None
    assert script.row_record({**base, "status": "OOM", "oom_error": "True", "tp": ""}, tmpl,
                             False) is None  # fmt: skip


def test_the_whole_table(script, tmp_path, capsys) -> None:
    """main() reads a CSV and prints the groups (three rows, two of them compared: no worker
    pool needed)."""
    path = tmp_path / "bench.csv"
    rows = [
        "14099003,Success,False,8,8,2,1,32,1,2048,16,32,32.0,8192,4096,131072,9000,7.6,14.4",
        "13500000,OOM,True,1,8,1,64,4,0,8192,80,64,,28672,4096,131072,,,",
        "13500001,Other,False,1,8,1,1,4,0,2048,16,32,,8192,4096,131072,,,",
    ]
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    assert script.main([str(path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "3 CSV rows, 2 runs compared" in out
    table = {(x[:13].strip(), x[13:39].strip(), x[39:58].strip()): x[58:].split()
             for x in out.splitlines()[2:]}  # fmt: skip
    # the 1B run fits, the 80B one at tp 8 on 8 GPUs does not: both verdicts right
    assert table[("all runs", "all", "fits")] == ["2", "100.0", "%", "right"]
    assert table[("all runs", "pp 1", "fits")] == ["1", "100.0", "%", "right"]
    assert table[("all runs", "pp > 1, after the fix", "tokens_per_s")][0] == "1"
    # what that post-fix pipeline run loses per layer per micro-batch: one tp-8 run
    lost = next(x for x in out.splitlines() if "per layer per micro-batch" in x)
    assert "tp 8 " in lost and "(n 1)" in lost and "tp 1 " not in lost
    # a CSV without the sweep's columns is refused, naming them
    bad = tmp_path / "other.csv"
    bad.write_text("job_id,dp\n1,2\n")
    assert script.main([str(bad)]) == 2
    assert "no column status, oom_error" in capsys.readouterr().err


def test_an_out_of_memory_row_is_its_chart_record(script, published_records: dict) -> None:
    """An out-of-memory run read both ways (the chart's record and its CSV row, job 13848093)
    is the same scenario, fused AdamW included (the sweep's one base config; the record has no
    optimizer text), and the same verdict."""
    shipped = published_records["usp_fail_1B_n1_dp2_tp2_pp2_mbs64_ga2_z1"]
    row = dict.fromkeys(HEADER.split(","), "")
    row.update({"job_id": "13848093", "status": "OOM", "oom_error": "True", "dp": "2", "tp": "2",
                "pp": "2", "mbs": "64", "batch_accum": "2", "zero_stage": "1",
                "hidden_size": "2048", "num_layers": "16", "num_heads": "32",
                "interm_dim": "8192", "seq_len": "4096", "vocab_size": "131072"})  # fmt: skip
    rec = script.row_record(row, published_records[script.TEMPLATE], one_runtime=False)
    a, b = translate(shipped).scenario, translate(rec).scenario
    assert (
        a.runtime == b.runtime and a.runtime.fused_optimizer and a.runtime.name == "nanotron_bench"
    )
    assert a.parallelism == b.parallelism
    assert (a.training.precision, a.training.micro_batch) == (b.training.precision, 64)
    got = {c.metric: c.predicted for c in compare_record(translate(rec))}
    want = {c.metric: c.predicted for c in compare_record(translate(shipped))}
    assert got == want == {"fits": False}


def test_wrong_verdicts_print_their_predicted_share_of_the_gpu(script, tmp_path, capsys) -> None:
    """A run that ran out of memory where simtrain predicts a fit (the 1B model, tp 8, one
    micro-batch of 4,096 tokens) is counted with its predicted peak as a share of the GPU: the
    line behind costs.memory.NEAR_CAPACITY's quartiles."""
    path = tmp_path / "bench.csv"
    row = "13500002,OOM,True,1,8,1,1,4,0,2048,16,32,,8192,4096,131072,,,"
    path.write_text("\n".join([HEADER, row]) + "\n")
    assert script.main([str(path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("wrong fit verdicts"))
    assert line.startswith("wrong fit verdicts, ran out of memory where predicted to fit: 1;")
    share = int(line.split("quartiles ")[1].split(" / ")[0])
    assert 0 < share < 85  # far from the GPU's memory: a miss the warning would not catch


def test_the_groups_the_shapes_and_the_lost_time(script, tmp_path, capsys) -> None:
    """The script's own figures: a row that is a record in measured/ counts there, two others
    held out; a row whose shape differs from its record (kv heads 8, not 32) is named; the
    held-out runs, one 100x too slow for the model and one 100x too fast, give a MAPE above
    |median| (errors of both signs); the slow post-fix pipeline run loses time (> 0)."""
    cols = HEADER.split(",")

    def row(**kw: str) -> str:
        base = {"job_id": "14099003", "status": "Success", "oom_error": "False", "dp": "8",
                "tp": "8", "pp": "2", "mbs": "1", "batch_accum": "32", "zero_stage": "1",
                "hidden_size": "2048", "num_layers": "16", "num_heads": "32",
                "num_kv_heads": "32.0", "interm_dim": "8192", "seq_len": "4096",
                "vocab_size": "131072", "tok/s/gpu": "9000"}  # fmt: skip
        base.update(kw)
        return ",".join(base.get(c, "") for c in cols)

    path = tmp_path / "bench.csv"
    path.write_text("\n".join([HEADER, row(num_kv_heads="8.0", **{"tok/s/gpu": "30"}),
                               row(job_id="14099901", dp="4", **{"tok/s/gpu": "30"}),
                               row(job_id="14099902", dp="2", **{"tok/s/gpu": "3000000"})])
                    + "\n")  # fmt: skip
    assert script.main([str(path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "shape differs from their CSV row" in out
    shapes = next(x for x in out.splitlines() if "shape differs" in x)
    assert shapes.endswith("): 1: usp_1B_n16_dp8_tp8_pp2_mbs1_ga32_z1")
    table = {(x[:13].strip(), x[13:39].strip(), x[39:58].strip()): x[58:].split()
             for x in out.splitlines()[3:] if x[:13].strip()}  # fmt: skip
    assert table[("in measured/", "all", "tokens_per_s")][0] == "1"
    n, mape, median, abs_median = table[("held out", "all", "tokens_per_s")]
    assert n == "2" and float(mape) > abs(float(median)) + 50 and float(mape) > 90
    lost = next(x for x in out.splitlines() if "per layer per micro-batch" in x)
    # the median of the three runs (two 300x below the chart record's rate): slower than the model
    assert lost.split("tp 8 ")[1].startswith("+") and "(n 3)" in lost


def test_the_two_kinds_of_job_it_prints(script, tmp_path, capsys) -> None:
    """The figures runtimes/nanotron.yaml [ppfix] / [issue] / [gap] quote, on two jobs of 32
    GPUs (4 nodes) written here: a slow-kind one (node all-gather 242 GB/s, job-wide 97.9) and
    a fast-kind one (263, 226.4). Each line is checked against values computed here: the test's
    time per GPU, (n - 1) / n x 1 GiB / busbw / n; bus bandwidth x nodes; the reading (only
    the slow job's test is slower than the EFA profile's links); the kinds' order; the time per
    layer per micro-batch, tokens / (tokens/s) / (micro-batches x layers)."""
    cols = HEADER.split(",")
    gib = 2**30

    def row(job: str, node_ag: str, world_ag: str, tok_per_gpu: str) -> str:
        base = {"job_id": job, "status": "Success", "oom_error": "False", "dp": "4", "tp": "8",
                "pp": "1", "mbs": "1", "batch_accum": "8", "zero_stage": "1",
                "hidden_size": "2048", "num_layers": "16", "num_heads": "32",
                "num_kv_heads": "32.0", "interm_dim": "8192", "seq_len": "4096",
                "vocab_size": "131072", "tok/s/gpu": tok_per_gpu, "Mem Res (GB)": "40",
                "AllGather (GB/s)": world_ag, "ReduceScatter (GB/s)": world_ag,
                "AG Intra-node (GB/s)": node_ag, "RS Intra-node (GB/s)": node_ag}  # fmt: skip
        return ",".join(base.get(c, "") for c in cols)

    path = tmp_path / "bench.csv"
    path.write_text("\n".join([HEADER, row("14000001", "263.0", "226.4", "9000"),
                               row("14200001", "242.0", "97.9", "3000")]) + "\n")  # fmt: skip
    assert script.main([str(path), "--workers", "1"]) == 0
    out = capsys.readouterr().out.splitlines()

    def line(start: str) -> str:
        return next(x for x in out if x.startswith(start))

    per_gpu = 31 / 32 * gib / 97.9e9 / 32
    assert line("jobs whose test across nodes ran slower").endswith(
        f"4 {1e3 * per_gpu:.3f} ms (n 1)"
    )
    assert ": 1;" in line("jobs whose test across nodes ran no slower")
    assert line("node test < 250").startswith("node test < 250 GB/s: 1 jobs, median all-gather "
                                              "242.0")  # fmt: skip
    assert line("in job order") == "in job order: the first 1 fast, then the last 1 slow"
    assert line("jobs whose node all-gather test is < 250").endswith("4 97.9 x 4 = 392, 1 of 1")
    assert line("jobs whose node all-gather test is >= 250").endswith("4 226.4 x 4 = 906, 0 of 1")
    tokens = 4 * 8 * 4096
    for fast, tok_s in ((True, 9000 * 32), (False, 3000 * 32)):
        floor = 1e3 * tokens / tok_s / (8 * 16)
        kind = ">= 250" if fast else "< 250"
        assert line(f"measured time per layer per micro-batch at micro-batch <= 2, pp 1 and "
                    f"post-fix pipelines, node all-gather {kind}").endswith(
            f"tp 8 {floor:.1f} ms (n 1)")  # fmt: skip
    assert "(median, n 1)" in line("reserved excess left at pp 1, tp > 1, node all-gather >= 250")
    # its host (26 us an op) issues a micro-batch slower than its GPU runs it: nothing held back
    assert line("reserved peak MAPE").endswith("pending reduce-scatter inputs for 0 % of 1")


def test_a_fast_kind_run_holds_back_its_row_outputs(script, tmp_path, capsys) -> None:
    """One fast-kind run (node all-gather 263 GB/s, no issue cost) whose GPU outlasts its host:
    the 1B model at tp 8, micro-batch 8, 8 micro-batches. At m = 1 the model's host (26 us an
    op) issues a forward in 30 ms that its GPU runs in 59 (tests/test_pending_collectives.py),
    and the surplus of 7 more micro-batches puts the host past the whole forward: all 16
    layers' two outputs held, 1.00 x two b.s.h per layer, on 1 of 1 runs."""
    cols = HEADER.split(",")
    base = {"job_id": "14000001", "status": "Success", "oom_error": "False", "dp": "4",
            "tp": "8", "pp": "1", "mbs": "8", "batch_accum": "8", "zero_stage": "1",
            "hidden_size": "2048", "num_layers": "16", "num_heads": "32", "num_kv_heads": "32.0",
            "interm_dim": "8192", "seq_len": "4096", "vocab_size": "131072", "tok/s/gpu": "9000",
            "Mem Res (GB)": "40", "AllGather (GB/s)": "226.4", "ReduceScatter (GB/s)": "226.4",
            "AG Intra-node (GB/s)": "263.0", "RS Intra-node (GB/s)": "263.0"}  # fmt: skip
    path = tmp_path / "bench.csv"
    path.write_text(HEADER + "\n" + ",".join(base.get(c, "") for c in cols) + "\n")
    assert script.main([str(path), "--workers", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(x for x in out if x.startswith("reserved peak MAPE"))
    assert line.endswith("pending reduce-scatter inputs for 100 % of 1, median 1.00 x two "
                         "b.s.h per layer")  # fmt: skip


def test_the_two_modes_it_prints(script, published_records: dict, tmp_path, capsys) -> None:
    """print_two_codes (runtimes/nanotron.yaml [ppfix], TWO MODES): two post-fix pipeline
    runs of one layout, one measured at main's profile's own prediction and one at the polling
    profile's (nanotron_bench), each goes with that profile; the slow one's node test at 45
    GB/s and its reserved 70 GiB are counted as odd; one job that logged its layout twice is
    listed with both rows' tokens/s per GPU."""
    cols = HEADER.split(",")
    base = {**dict.fromkeys(cols, ""), "status": "Success", "oom_error": "False", "dp": "8",
            "tp": "8", "pp": "2", "mbs": "1", "batch_accum": "32", "zero_stage": "1",
            "hidden_size": "2048", "num_layers": "16", "num_heads": "32", "num_kv_heads": "32.0",
            "interm_dim": "8192", "seq_len": "4096", "vocab_size": "131072"}  # fmt: skip
    fast = {**base, "job_id": "14099003"}
    slow = {
        **base,
        "job_id": "14099004",
        "AR Intra-node (GB/s)": "45",
        "Mem Res (GB)": "70",
        "AG Intra-node (GB/s)": "42",
        "RS Intra-node (GB/s)": "42",
    }  # its node's tests
    template = published_records[script.TEMPLATE]

    def per_gpu(row: dict, runtime: str) -> float:
        """The profile's own tokens/s per GPU for the row (its 128 GPUs)."""
        rec = script.row_record({**row, "tok/s/gpu": "1000"}, template, one_runtime=False)
        comps = compare_record(translate(script.replace(rec, runtime=runtime)))
        return next(c.predicted for c in comps if c.metric == "tokens_per_s") / 128

    fast["tok/s/gpu"] = f"{per_gpu(fast, 'nanotron'):.2f}"
    slow["tok/s/gpu"] = f"{per_gpu(slow, 'nanotron_bench'):.2f}"
    assert float(slow["tok/s/gpu"]) < per_gpu(slow, "nanotron") / 2  # what the polling costs
    path = tmp_path / "bench.csv"
    rows = [fast, slow, {**slow, "tok/s/gpu": "777"}]  # the slow job's layout logged again
    path.write_text("\n".join([HEADER, *(",".join(r[c] for c in cols) for r in rows)]) + "\n")
    assert script.main([str(path), "--workers", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    fixed = next(x for x in out if x.startswith("post-fix pipelines nearer the fixed code"))
    polled = next(x for x in out if x.startswith("post-fix pipelines nearer the polling code"))
    assert ": 1 of 3;" in fixed and ": 2 of 3;" in polled
    assert re.search(r"under main's profile [+-]0\.0 %", fixed)  # at its own prediction
    assert "either: 0" in fixed
    assert "node all-reduce test < 100 GB/s: 2, reserved >= 68 GiB: 2, either: 2" in polled
    twice = next(x for x in out if x.startswith("jobs that logged one layout twice"))
    assert twice.startswith("jobs that logged one layout twice: 1; job 14099004 (hidden_size 2048")
    assert twice.endswith(f": {slow['tok/s/gpu']} and 777 tok/s/GPU")


def test_zero1_lead_pairs_and_accumulation(script, capsys) -> None:
    """print_zero1_lead: the pp-1 errors by gradient accumulation and the ZeRO-1 minus ZeRO-0
    step of one layout, from each run's measured and simulated tokens/s (worked by hand: 2^20
    tokens at 1,048,576 and 524,288 tokens/s are steps of 1 and 2 s)."""
    from types import SimpleNamespace

    def run(tp, z, ga, meas, pred):
        rec = SimpleNamespace(
            parallelism={"pp": 1, "dp": 8, "tp": tp, "zero_stage": z},
            training={"global_batch": 256, "grad_accum": ga, "micro_batch": 1},
            model={"seq_len": 4096, "hidden": 2048, "layers": 16},
        )
        return rec, [("pp 1", "tokens_per_s", meas, pred, 100 * (pred - meas) / meas)]

    runs = [run(8, 0, 1, 2**20, 2**20), run(8, 1, 1, 2**19, 2**20),  # ZeRO-1 1 s slower
            run(16, 0, 16, 2**19, 2**20), run(16, 1, 16, 2**20, 2**20)]  # ZeRO-1 1 s faster  # fmt: skip
    script.print_zero1_lead([r for r, _ in runs], [res for _, res in runs])
    out = capsys.readouterr().out
    assert "ga 1 +50.0 % (n 2), ga >= 8 +50.0 % (n 2)" in out
    assert ("tp <= 8: 1 pairs, ZeRO-1 slower in 1; measured +1.000 .. +1.000 s (median +1.000), "
            "simulated median +0.000 s") in out  # fmt: skip
    assert "tp >= 16: 1 pairs, ZeRO-1 slower in 0; measured -1.000 .. -1.000 s" in out
