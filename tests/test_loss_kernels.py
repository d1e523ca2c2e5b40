"""The loss kernels of Megatron-LM, Transformer Engine and nanotron (``training.cross_entropy:
vocab_parallel | te | sharded``): their saved bytes, working memory and memory traffic in closed form,
counted from the code independently of simtrain's functions, and how the Megatron importer and
validate choose them. (The PyTorch ports are measured in tests/test_memory_vs_measure.py.)"""

from __future__ import annotations

import pytest

from simtrain.apps.importers.megatron import import_megatron_flags
from simtrain.apps.simulate import simulate_scenario
from simtrain.apps.validate.records import load_records
from simtrain.apps.validate.translate import translate
from simtrain.costs.activations import loss_saved_bytes, loss_transient_bytes
from simtrain.costs.compute import head_elementwise_bytes
from simtrain.errors import ConfigError
from simtrain.spec.model import PRESETS
from simtrain.spec.scenario import TrainingSpec

LLAMA70 = PRESETS["llama3-70b"]  # V = 128,256
S, B = 8192, 2
SB = S * B
SBV = SB * 128256


def _t(ce: str, precision: str = "bf16") -> TrainingSpec:
    return TrainingSpec(seq_len=S, global_batch=B, micro_batch=B, precision=precision,
                        optimizer="adamw", cross_entropy=ce)  # fmt: skip


@pytest.mark.parametrize("tp", [1, 4])
def test_saved_and_working_bytes_in_closed_form(tp: int) -> None:
    """Megatron (core/tensor_parallel/cross_entropy.py): the fp32 softmax of the shard and a
    bool mask and an int64 target a token saved; the bf16 logits beside it. TE (through v2.17):
    the bf16 logits saved (the gradient in place), 16 B a row of working memory and the
    all-gathered 12 B a row per rank over TP. Standard: 4 + 2 x 4 B a logit."""
    v = SBV // tp
    assert loss_saved_bytes(LLAMA70, _t("vocab_parallel"), tp) == 4 * v + 9 * SB
    assert loss_transient_bytes(LLAMA70, _t("vocab_parallel"), tp) == 2 * v
    assert loss_saved_bytes(LLAMA70, _t("te"), tp) == 2 * v
    assert loss_transient_bytes(LLAMA70, _t("te"), tp) == 16 * SB + (12 * SB * tp if tp > 1 else 0)
    standard = loss_saved_bytes(LLAMA70, _t("standard"), tp) + loss_transient_bytes(
        LLAMA70, _t("standard"), tp)  # fmt: skip
    assert standard == 12 * v
    # fp32 logits: .float() is the tensor itself, nothing beside the saved softmax
    assert loss_transient_bytes(LLAMA70, _t("vocab_parallel", "fp32"), tp) == 0
    # nanotron (tensor_parallel/functional.py _ShardedCrossEntropy, 2411b022): Megatron's saved
    # tensors; ``sharded_logits - logits_max`` is a new tensor, so its fp32 input (the
    # cast_to_fp32 block's output; in fp32 the logits themselves) stays beside it
    for precision in ("bf16", "fp32"):
        assert loss_saved_bytes(LLAMA70, _t("sharded", precision), tp) == 4 * v + 9 * SB
        assert loss_transient_bytes(LLAMA70, _t("sharded", precision), tp) == 4 * v


def test_memory_traffic_per_logit() -> None:
    """Megatron's passes counted by hand from mpu/cross_entropy.py (README, 'Tried, not
    shipped', 2026-12-05: 38 B forward, 14 B backward a logit on bf16 logits); in fp32 the
    casts go (32, 8). TE: two reads and an in-place write forward, an in-place scaling
    backward: (6, 4) B a bf16 logit."""
    for ce, prec, per_logit in (("vocab_parallel", "bf16", (38, 14)),
                                ("vocab_parallel", "fp32", (32, 8)),
                                ("sharded", "bf16", (38, 14)),  # the same passes, its cast a block
                                ("sharded", "fp32", (32, 8)),
                                ("te", "bf16", (6, 4))):  # fmt: skip
        fwd, bwd = head_elementwise_bytes(LLAMA70, _t(ce, prec))
        assert (fwd / SBV, bwd / SBV) == pytest.approx(per_logit), (ce, prec)


_FLAGS = ("--num-layers 4 --hidden-size 1024 --num-attention-heads 16 --seq-length 2048 "
          "--micro-batch-size 1 --global-batch-size 8 --bf16 --vocab-size 32000").split()  # fmt: skip


@pytest.mark.parametrize(("extra", "expected"), [
    ((), "vocab_parallel"),
    (("--cross-entropy-loss-fusion",), "vocab_parallel"),  # native: the same fp32 copy
    (("--cross-entropy-loss-fusion", "--cross-entropy-fusion-impl", "native"), "vocab_parallel"),
    (("--cross-entropy-loss-fusion", "--cross-entropy-fusion-impl", "te"), "te"),
    (("--cross-entropy-fusion-impl", "te"), "vocab_parallel"),  # no fusion: the impl is unused
])  # fmt: skip
def test_megatron_importer_reads_the_loss(extra: tuple[str, ...], expected: str) -> None:
    imp = import_megatron_flags([*_FLAGS, *extra], gpus=8)
    assert imp.data["training"]["cross_entropy"] == expected


def test_megatron_importer_refuses_an_unknown_loss_kernel() -> None:
    with pytest.raises(ConfigError, match=r"--cross-entropy-fusion-impl.*native or te"):
        import_megatron_flags([*_FLAGS, "--cross-entropy-loss-fusion",
                               "--cross-entropy-fusion-impl", "apex"], gpus=8)  # fmt: skip


def test_validate_runs_each_framework_with_its_loss() -> None:
    """Megatron-LM's own runs use its vocab-parallel loss; Megatron-Bridge's performance runs
    TE's (utils/overrides.py l.55 at 00b7660b). The Bridge's Llama 3 70B FSDP FP8-CS run on 64
    GB200s ran: with PyTorch's loss accounting (12 B a logit at b 2, s 8192) it was predicted
    out of memory (204.7 GB against 197.9); with TE's it fits."""
    sc21 = {r.id: r for r in load_records("measured/published_runs.yaml")
            if r.source_key == "megatron_sc21"}  # fmt: skip
    assert sc21 and all(translate(r).scenario.training.cross_entropy == "vocab_parallel"
                        for r in list(sc21.values())[:3])  # fmt: skip
    row = {r.id: r for r in load_records("measured/mbridge_2511.yaml")}[
        "mbridge2511_GB200_LLAMA3_70B_FP8CS_64gpu"
    ]
    tr = translate(row)
    assert tr.scenario.training.cross_entropy == "te"
    assert any("parallel_cross_entropy" in n for n in tr.assumptions)
    res = simulate_scenario(tr.scenario, detail=False)
    assert res.memory.fits
    usp = next(r for r in load_records("measured/published_runs.yaml")
               if r.source_key == "nanotron")  # fmt: skip
    assert translate(usp).scenario.training.cross_entropy == "sharded"


@pytest.mark.parametrize("ce", ["vocab_parallel", "te", "sharded"])
def test_ported_losses_compute_cross_entropy(ce: str) -> None:
    """The PyTorch ports (simtrain.torchref.losses) are losses, not only memory models: in
    fp32 their masked mean loss and its logit gradient equal ``F.cross_entropy``'s with
    ignore_index -100 (to 1e-5), targets -100 included."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from simtrain.torchref.losses import PER_TOKEN_LOSSES

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 50, generator=g)
    targets = torch.randint(0, 50, (37,), generator=g)
    targets[::5] = -100
    ref_x = logits.clone().requires_grad_(True)
    ref = F.cross_entropy(ref_x, targets, ignore_index=-100)
    ref.backward()
    x = logits.clone().requires_grad_(True)
    mask = (targets != -100).float()
    # (the TE kernel writes into its input: hand it a copy that is not a leaf)
    per_token = PER_TOKEN_LOSSES[ce].apply(x * 1.0, targets)
    loss = (per_token * mask).sum() / mask.sum()
    loss.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(x.grad, ref_x.grad, atol=1e-6)
