"""NVFP4 training (Transformer Engine NVFP4BlockScaling, TransformerEngine d0067d0
common/recipe/__init__.py l.489-555): E2M1 values two per byte, one E4M3 scale per 16 values
(weights: per 16 x 16 block) and an fp32 scale per tensor; row- and column-wise copies; GEMMs at
the profile's nvfp4 rate. Closed forms written here from those rules; a GPU without an NVFP4
rate is a one-line error; Megatron's --fp4-format e2m1 imports as nvfp4."""

from __future__ import annotations

from pathlib import Path

import pytest

from simtrain.apps.simulate import simulate_scenario
from simtrain.costs.activations import layer_saved_tensors
from simtrain.costs.fp8 import fp8_copy_bytes, weight_cache_bytes
from simtrain.errors import ConfigError
from simtrain.spec.model import PRESETS
from simtrain.spec.precision import PRECISIONS
from simtrain.spec.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CP = ROOT / "scenarios" / "llama3_8b_cp.yaml"
NV = PRECISIONS["nvfp4"]


def test_copy_bytes_closed_form() -> None:
    n = 4096 * 4096
    assert fp8_copy_bytes(n, NV) == n // 2 + n // 16 + 4
    assert fp8_copy_bytes(n, NV, weight=True) == n // 2 + n // 256 + 4
    assert fp8_copy_bytes(n, PRECISIONS["mxfp8"]) == n + n // 32


def test_weight_cache_is_two_fp4_copies_per_gemm() -> None:
    """A Llama 3 8B block, tp 1: fused QKV h(h+2kv), proj h², fc1 2hf, fc2 fh; each weight
    twice (row- and column-wise), n/2 + n/256 + 4 bytes a copy; no per-tensor scale_inv."""
    m = PRESETS["llama3-8b"]
    h, kv, f = m.hidden, m.kv_dim, m.ffn_hidden
    groups = (h * (h + 2 * kv), h * h, 2 * h * f, f * h)
    want = sum(2 * (w // 2 + w // 256 + 4) for w in groups)
    assert weight_cache_bytes(m, NV, "blackwell") == want


def test_saved_linear_inputs_are_fp4() -> None:
    """The attention input TE saves for the weight gradient: sbh/2 + sbh/16 + 4 bytes."""
    sc = load_scenario(LLAMA_CP, ["hardware=b200_180gb", "training.precision=nvfp4",
                                  "parallelism.cp=1", "parallelism.dp=8"])  # fmt: skip
    t, m = sc.training, sc.model
    saved = {x.name: x.bytes for x in layer_saved_tensors(m, t)}
    sbh = t.seq_len * t.micro_batch * m.hidden
    assert saved["attention input (q, k, v), FP8"] == sbh // 2 + sbh // 16 + 4


def test_nvfp4_is_faster_than_mxfp8_on_b200_and_refused_on_h100() -> None:
    over = ["hardware=b200_180gb", "parallelism.cp=1", "parallelism.dp=8"]
    fp4 = load_scenario(LLAMA_CP, [*over, "training.precision=nvfp4"])
    fp8 = load_scenario(LLAMA_CP, [*over, "training.precision=mxfp8"])
    assert simulate_scenario(fp4).metrics.step_time_s < simulate_scenario(fp8).metrics.step_time_s
    with pytest.raises(ConfigError, match=r"training\.precision.*nvfp4"):
        load_scenario(LLAMA_CP, ["parallelism.cp=1", "parallelism.dp=8",
                                 "training.precision=nvfp4"])  # fmt: skip


def test_megatron_fp4_flags_import_as_nvfp4(tmp_path: Path) -> None:
    from simtrain.apps.importers import import_config

    f = tmp_path / "fp4.txt"
    f.write_text("--num-layers 4 --hidden-size 1024 --num-attention-heads 16 --seq-length 2048 "
                 "--max-position-embeddings 2048 --micro-batch-size 1 --global-batch-size 8 "
                 "--bf16 --fp4-format e2m1 --swiglu --untie-embeddings-and-output-weights")  # fmt: skip
    imp = import_config("megatron", f, gpus=8)
    assert imp.data["training"]["precision"] == "nvfp4"
    assert not [x for x in imp.unsupported if "fp4" in x]
