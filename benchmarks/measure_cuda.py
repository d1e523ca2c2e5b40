"""Measure real training steps on a CUDA GPU and calibrate it: the closed loop of issue 5 on a GPU.

1. ``simtrain calibrate --device cuda``: matmul FLOP/s per dtype and size, memory bandwidth,
   element-wise and AdamW rates -> ``OUT/<gpu>_calibrated.yaml``.
2. ``simtrain measure`` (``simtrain.torchref.measure.measure_step``) of each case below: peak memory
   (``torch.cuda.max_memory_allocated``), the exact model-state bytes, saved activations and the
   median step time -> ``OUT/measured_cuda.json``, one entry per case with the GPU named.

Compare afterwards, on any machine: ``python benchmarks/measure_cuda.py --compare OUT`` prints
the memory model and ``simtrain run`` (shipped profile and calibrated profile) against them.

Run (a CUDA machine with torch):  python benchmarks/measure_cuda.py --out plots/cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simtrain.spec.scenario import parse_scenario  # noqa: E402

GPT_TINY = {"layers": 4, "hidden": 512, "heads": 8, "vocab": 8192, "max_positions": 256}

# (name, model, training); every case is one GPU, one micro-batch per step.
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("tiny_fp32_b4", {**GPT_TINY, "flash_attention": True},
     {"seq_len": 256, "global_batch": 4, "micro_batch": 4, "precision": "fp32"}),
    ("gpt2_bf16_b8", {"preset": "gpt2", "flash_attention": True},
     {"seq_len": 1024, "global_batch": 8, "micro_batch": 8, "precision": "bf16"}),
    ("gpt2_amp_bf16_b8", {"preset": "gpt2", "flash_attention": True},
     {"seq_len": 1024, "global_batch": 8, "micro_batch": 8, "precision": "amp_bf16"}),
    ("gpt2_fp32_math_b4", {"preset": "gpt2", "flash_attention": False, "dropout": 0.1},
     {"seq_len": 1024, "global_batch": 4, "micro_batch": 4, "precision": "fp32"}),
    ("gpt2_medium_bf16_full_ckpt_b16", {"preset": "gpt2-medium", "flash_attention": True},
     {"seq_len": 1024, "global_batch": 16, "micro_batch": 16, "precision": "bf16",
      "recompute": "full"}),
    ("gpt2_bf16_lora_b8", {"preset": "gpt2", "flash_attention": True},
     {"seq_len": 1024, "global_batch": 8, "micro_batch": 8, "precision": "bf16",
      "peft": {"method": "lora", "rank": 16}}),
    ("llama1b_bf16_b4_s2048", {"layers": 16, "hidden": 2048, "heads": 32, "kv_heads": 8,
                               "ffn_hidden": 8192, "vocab": 128256, "max_positions": 2048,
                               "mlp": "swiglu", "positions": "rotary", "bias": False,
                               "norm": "rmsnorm", "tied_embeddings": True,
                               "flash_attention": True},
     {"seq_len": 2048, "global_batch": 4, "micro_batch": 4, "precision": "bf16"}),
    # The lecture's first slide: GPT-2 XL (1.5B) in fp32 with Adam, b 12 x s 1024: ~84-88 GB.
    ("lecture_1p5b_fp32_adam_b12", {"preset": "gpt2-xl", "flash_attention": True},
     {"seq_len": 1024, "global_batch": 12, "micro_batch": 12, "precision": "fp32",
      "optimizer": "adam"}),
    ("lecture_1p5b_amp_ckpt_b6", {"preset": "gpt2-xl", "flash_attention": True},
     {"seq_len": 1024, "global_batch": 6, "micro_batch": 6, "precision": "bf16",
      "recompute": "full"}),
]  # fmt: skip

LLAMA = {
    "mlp": "swiglu",
    "positions": "rotary",
    "bias": False,
    "norm": "rmsnorm",
    "flash_attention": True,
}
# Held out (added 2026-12-04, not yet measured: no device was lent that session; the
# predictions were registered in commit aaa8519; pytorch_eager's host_us_per_op and the H200
# profile were set on CASES only): shapes and kernel mixes CASES do not have -- grouped-query attention with a
# 152k vocabulary and small GEMMs, a 3B Llama at s 4096, an 8k sequence, a host-bound tiny
# model, selective recompute under autocast. `--set heldout` measures them; nothing is fitted.
HELDOUT_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("qwen0p5b_bf16_b8_s1024", {**LLAMA, "layers": 24, "hidden": 896, "heads": 14, "kv_heads": 2,
                                "ffn_hidden": 4864, "vocab": 151936, "max_positions": 1024,
                                "qkv_bias": True, "tied_embeddings": True},
     {"seq_len": 1024, "global_batch": 8, "micro_batch": 8, "precision": "bf16"}),
    ("llama3b_bf16_b1_s4096", {**LLAMA, "layers": 28, "hidden": 3072, "heads": 24, "kv_heads": 8,
                               "ffn_hidden": 8192, "vocab": 128256, "max_positions": 4096,
                               "tied_embeddings": True},
     {"seq_len": 4096, "global_batch": 1, "micro_batch": 1, "precision": "bf16"}),
    ("gpt2_medium_bf16_b1_s8192", {"preset": "gpt2-medium", "flash_attention": True,
                                   "max_positions": 8192},
     {"seq_len": 8192, "global_batch": 1, "micro_batch": 1, "precision": "bf16"}),
    ("tiny_llama_bf16_b1_s256", {**LLAMA, "layers": 8, "hidden": 256, "heads": 4, "kv_heads": 4,
                                 "ffn_hidden": 704, "vocab": 32000, "max_positions": 256,
                                 "tied_embeddings": False},
     {"seq_len": 256, "global_batch": 1, "micro_batch": 1, "precision": "bf16"}),
    ("gpt2_large_amp_selective_b16", {"preset": "gpt2-large", "flash_attention": False},
     {"seq_len": 1024, "global_batch": 16, "micro_batch": 16, "precision": "amp_bf16",
      "recompute": "selective"}),
    ("llama1b_amp_full_ckpt_b16_s2048", {**LLAMA, "layers": 16, "hidden": 2048, "heads": 32,
                                         "kv_heads": 8, "ffn_hidden": 8192, "vocab": 128256,
                                         "max_positions": 2048, "tied_embeddings": True},
     {"seq_len": 2048, "global_batch": 16, "micro_batch": 16, "precision": "amp_bf16",
      "recompute": "full"}),
]  # fmt: skip
CASE_SETS = {"fitted": CASES, "heldout": HELDOUT_CASES, "all": CASES + HELDOUT_CASES}
HELDOUT_NAMES = frozenset(name for name, _, _ in HELDOUT_CASES)


def scenario(name: str, model: dict, training: dict, hardware: str) -> Any:
    data = {"name": name, "model": model, "hardware": hardware, "runtime": "pytorch_eager",
            "cluster": {"nodes": 1, "gpus_per_node": 1}, "training": training,
            "parallelism": {"dp": 1, "tp": 1, "pp": 1}}  # fmt: skip
    return parse_scenario(data, name, ROOT)


def measure(
    out: Path,
    steps: int,
    device: str,
    only: str | None,
    case_set: str = "all",
    calibrate: bool = True,
) -> None:
    import torch

    from simtrain.torchref.calibrate import calibrate_command
    from simtrain.torchref.measure import measure_step

    out.mkdir(parents=True, exist_ok=True)
    cuda = device == "cuda"
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu"
    t0 = time.perf_counter()
    if calibrate and not only:
        print(calibrate_command(device, str(out / f"{device}_calibrated.yaml")), flush=True)
        print(f"calibration took {time.perf_counter() - t0:.0f} s", flush=True)
    results: list[dict[str, Any]] = []

    def record(entry: dict[str, Any]) -> None:  # saved after every case: a timeout keeps them
        results.append(entry)
        (out / "measured_cuda.json").write_text(json.dumps(results, indent=1))

    for name, model, training in CASE_SETS[case_set]:
        if only and name != only:
            continue
        sc = scenario(name, model, training, "h200_141gb")
        t0 = time.perf_counter()
        try:
            r = measure_step(sc.model, sc.training, device=device, steps=steps, warmup=2)
        except torch.cuda.OutOfMemoryError as exc:
            print(f"{name}: out of memory ({exc})", flush=True)
            record({"case": name, "oom": True})
            torch.cuda.empty_cache()
            continue
        except Exception as exc:  # keep measuring the other cases; the error is recorded
            print(f"{name}: failed: {exc!r}", flush=True)
            record({"case": name, "error": repr(exc)})
            continue
        entry = {
            "case": name, "model": model, "training": training, "gpu": gpu,
            "torch_version": torch.__version__, "cuda": torch.version.cuda if cuda else None,
            "peak_bytes": r.peak_bytes, "parameter_bytes": r.parameter_bytes,
            "master_weight_bytes": r.master_weight_bytes, "gradient_bytes": r.gradient_bytes,
            "optimizer_state_bytes": r.optimizer_state_bytes,
            "activation_bytes": r.activation_bytes, "step_time_s": r.step_time_s,
            "step_times_s": list(r.step_times_s), "trainable_params": r.trainable_params,
            "timed_peak_allocated_bytes": r.timed_peak_allocated_bytes,
            "timed_peak_reserved_bytes": r.timed_peak_reserved_bytes,
            "set": "heldout" if name in HELDOUT_NAMES else "fitted",
        }  # fmt: skip
        record(entry)
        print(f"{name}: peak {r.peak_bytes / 2**30:.2f} GiB (timed steps: allocated "
              f"{r.timed_peak_allocated_bytes / 2**30:.2f}, reserved "
              f"{r.timed_peak_reserved_bytes / 2**30:.2f}), step {r.step_time_s * 1e3:.1f} ms "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
        del r
        if cuda:
            torch.cuda.empty_cache()


def compare(out: Path) -> None:
    from simtrain.apps.simulate import simulate_scenario
    from simtrain.costs.memory import estimate_memory

    rows = json.loads((out / "measured_cuda.json").read_text())
    cals = [p for p in (out / "cuda_calibrated.yaml", out / "cpu_calibrated.yaml") if p.exists()]
    print(
        f"{'case':<32}{'peak meas GiB':>14}{'pred':>8}{'err %':>7}"
        f"{'step meas ms':>14}{'shipped':>9}{'err %':>7}{'calib.':>9}{'err %':>7}"
    )
    for r in rows:
        if r.get("oom") or r.get("error"):
            print(f"{r['case']:<32} {'out of memory' if r.get('oom') else r['error']}")
            continue
        sc = scenario(r["case"], r["model"], r["training"], "h200_141gb")
        mem = estimate_memory(sc).stages[0]
        pred_peak = mem.peak_memory_bytes - sc.hardware.cuda_context_bytes
        t_ship = simulate_scenario(sc).metrics.step_time_s
        t_cal = float("nan")
        if cals:
            sc_cal = scenario(r["case"], r["model"], r["training"], str(cals[0]))
            t_cal = simulate_scenario(sc_cal).metrics.step_time_s
        m, s = r["peak_bytes"], r["step_time_s"]
        print(
            f"{r['case']:<32}{m / 2**30:>14.2f}{pred_peak / 2**30:>8.2f}"
            f"{100 * (pred_peak / m - 1):>+7.1f}{s * 1e3:>14.1f}{t_ship * 1e3:>9.1f}"
            f"{100 * (t_ship / s - 1):>+7.1f}{t_cal * 1e3:>9.1f}{100 * (t_cal / s - 1):>+7.1f}"
        )


def records(out: Path, case_set: str = "all") -> str:
    """The measurements of ``case_set`` as records of measured/README.md's schema (PEFT cases
    are left out: the record schema has no PEFT keys). Held-out cases get the source key
    ``simtrain_h200_heldout`` (a family of its own: no constant was fitted on them) and the
    timed steps' allocated and reserved peaks in their notes."""
    from dataclasses import MISSING, asdict, fields

    import yaml

    rows = json.loads((out / "measured_cuda.json").read_text())
    gpu_txt = (out / "gpu.txt").read_text().split("\n") if (out / "gpu.txt").exists() else []
    recs = []
    for r in rows:
        if r.get("oom") or r.get("error") or "peft" in r["training"]:
            continue
        held = r.get("set") == "heldout"
        if case_set != "all" and case_set != ("heldout" if held else "fitted"):
            continue
        sc = scenario(r["case"], r["model"], r["training"], "h200_141gb")
        # the shape's own keys: the required ones and those off their defaults (an MoE key,
        # even 0, makes a record an MoE one the translator does not take)
        defaults = {f.name: f.default for f in fields(sc.model) if f.default is not MISSING}
        m = {
            k: v
            for k, v in asdict(sc.model).items()
            if k not in ("name", "qkv_layout") and (k not in defaults or v != defaults[k])
        }
        m["seq_len"] = sc.training.seq_len
        t = sc.training
        recs.append({
            "id": f"simtrain_h200_{r['case']}",
            "kind": "training_run",
            "source": "simtrain's own measurement: benchmarks/measure_cuda.py (simtrain.torchref.measure "
                      f"reference model) on {r['gpu']}, torch {r['torch_version']}, CUDA "
                      f"{r['cuda']}; {' '.join(gpu_txt[:1])}",
            "source_key": "simtrain_h200_heldout" if held else "simtrain_h200",
            "model": m,
            "training": {"global_batch": t.global_batch, "micro_batch": t.micro_batch,
                         "precision": t.precision, "recompute": t.recompute,
                         "optimizer": t.optimizer},
            "parallelism": {"tp": 1, "pp": 1, "dp": 1},
            "hardware": {"gpu": "H200 141GB", "num_gpus": 1, "gpus_per_node": 1},
            "measured": {"step_time_s": round(r["step_time_s"], 6),
                         "peak_mem_gib": r["peak_bytes"] / 2**30},
            "notes": "peak = torch.cuda.max_memory_allocated over an instrumented step (no CUDA "
                     "context); step time = median of the timed steps "
                     f"{[round(x, 4) for x in r['step_times_s']]} s after 2 warm-up steps; "
                     "PyTorch eager, unfused reference model (simtrain.torchref.measure), single-tensor "
                     "AdamW (foreach=False), random tokens"
                     + (f"; held out (measure_cuda.HELDOUT_CASES, predictions registered in "
                        f"commit aaa8519 before measuring); timed steps: max_memory_allocated "
                        f"{r['timed_peak_allocated_bytes'] / 2**30:.3f} GiB, max_memory_reserved "
                        f"{r['timed_peak_reserved_bytes'] / 2**30:.3f} GiB" if held else ""),
        })  # fmt: skip
    name = "simtrain_h200_heldout" if case_set == "heldout" else "simtrain_h200"
    head = ("# simtrain's own measured runs on an NVIDIA H200 (benchmarks/measure_cuda.py); "
            f"regenerate:\n# python benchmarks/measure_cuda.py --records OUT --set "
            f"{'heldout' if case_set == 'heldout' else 'fitted'} > measured/{name}.yaml\n")  # fmt: skip
    return head + yaml.safe_dump(recs, sort_keys=False, width=100)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "plots" / "cuda")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per case")
    ap.add_argument("--device", default="cuda", help="cuda (or cpu for a smoke test)")
    ap.add_argument("--only", help="measure one case, without calibrating")
    ap.add_argument(
        "--set",
        dest="case_set",
        choices=sorted(CASE_SETS),
        default="all",
        help="which cases: fitted (CASES), heldout (HELDOUT_CASES) or all",
    )
    ap.add_argument("--no-calibrate", action="store_true", help="skip simtrain calibrate")
    ap.add_argument("--compare", type=Path, help="compare a finished OUT folder, no GPU needed")
    ap.add_argument("--records", type=Path, help="print a finished OUT folder as measured records")
    args = ap.parse_args()
    if args.records:
        print(records(args.records, args.case_set), end="")
    elif args.compare:
        compare(args.compare)
    else:
        measure(args.out, args.steps, args.device, args.only, args.case_set, not args.no_calibrate)


if __name__ == "__main__":
    main()
