"""Megatron-LM: a launch script (``torchrun ... pretrain_gpt.py --num-layers ...``) or a file of
``pretrain_gpt.py`` flags -> a scenario.

Flags and defaults as Megatron-LM defines them (NVIDIA/Megatron-LM
d98e8a64ddf34856e74b24714e3bedb2f5a39553, ``megatron/training/arguments.py`` unless said):

- ``--ffn-hidden-size`` absent: 4·h, with ``--swiglu`` int(4·h·2/3 / 64)·64 (l.1320-1329);
  ``--num-query-groups`` absent: the heads (core/transformer/transformer_config.py l.1458);
- the vocabulary is padded to a multiple of ``--make-vocab-size-divisible-by`` (128) x tp
  (training/vocab_utils.py ``_calculate_padded_vocab_size_cached``);
- ``--bf16`` accumulates and all-reduces gradients in fp32 unless ``--grad-reduce-in-bf16``
  (l.1204-1216): the runtime's ``grad_reduce_dtype: fp32``;
- ``--optimizer adam`` is AdamW (core/optimizer/optimizer_config.py l.250
  ``decoupled_weight_decay: bool = True``);
- ``--transformer-impl`` defaults to transformer_engine (core/transformer/transformer_config.py
  l.1314) with ``--attention-backend auto`` (enums.py AttnBackend): fused / flash attention;
- the DDP bucket of ``--overlap-grad-reduce`` holds max(4e7, 1e6·dp) parameters when
  ``--ddp-bucket-size`` is absent (core/distributed/distributed_data_parallel_config.py l.48-51).

Scripts with flags Megatron-LM removed when Megatron-Core arrived (``--checkpoint-activations``,
``--DDP-impl``, ``--batch-size``, ``--model-parallel-size`` ...: :data:`LEGACY_FLAGS`) run
under the ``megatron_lm_2021`` runtime, with 2021's "local" DDP (one gradient all-reduce after
the backward) unless ``--DDP-impl torch``; those that also have a flag of the 2022 code
(:data:`FLAGS_2022`) under ``megatron_lm_2022`` (the asynchronous TP backward, off with
``--no-async-tensor-model-parallel-allreduce``); the others under ``megatron_core``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from simtrain.apps.importers.common import (
    ONE_BUCKET_MB,
    Imported,
    Reading,
    clean_number,
    grad_bucket_mb,
    parallel_section,
    world_and_dp,
)
from simtrain.apps.importers.flags import Flags
from simtrain.apps.importers.shell import flag_words, parse_flags, read_command
from simtrain.errors import ConfigError
from simtrain.spec.limits import INT_RANGES, MAX_GPUS
from simtrain.spec.precision import FP8_PARAM_PRECISIONS
from simtrain.spec.runtime import CUDA_GRAPH_SCOPES, graph_scope_problem
from simtrain.spec.scenario import RECOMPUTE_MODULES
from simtrain.spec.yamlfile import read_text_file

#: Flags of Megatron-LM before Megatron-Core (2019-2022): a script with one runs under the
#: megatron_lm_2021 runtime (runtimes/megatron_lm_2021.yaml).
LEGACY_FLAGS = (
    "--checkpoint-activations", "--checkpoint-num-layers", "--DDP-impl", "--batch-size",
    "--model-parallel-size", "--activations-checkpoint-method",
    "--activations-checkpoint-num-layers", "--scatter-gather-tensors-in-pipeline",
    "--fp32-allreduce", "--use-legacy-models", "--distribute-checkpointed-activations",
)  # fmt: skip
#: Flags of Megatron-LM's 2022 code: sequence parallelism and selective recompute (merged
#: 2022-05, d898a8991d; megatron/arguments.py there) and --no-async-tensor-model-parallel-allreduce
#: (there since 2021-09, 6e1bde1e0f, with the asynchronous backward it turns off): a script with
#: one of them and a :data:`LEGACY_FLAGS` flag runs under runtimes/megatron_lm_2022.yaml.
FLAGS_2022 = ("--sequence-parallel", "--recompute-activations", "--recompute-granularity",
              "--recompute-method", "--no-async-tensor-model-parallel-allreduce")  # fmt: skip
#: The largest value of a flag: its scenario key's range (spec.limits).
LIMIT = {k: hi for k, (_lo, hi) in INT_RANGES.items()}
#: The largest --ddp-bucket-size (gradient elements): 2^62, as many bytes as
#: parallelism.bucket_mb's range allows and no float overflow.
MAX_BUCKET_ELEMENTS = 2**62
#: The GPT-2 BPE vocabulary (--vocab-file gpt2-vocab.json --merge-file gpt2-merges.txt): 50,257
#: tokens (Hugging Face gpt2 config.json vocab_size).
GPT2_VOCAB = 50257
#: Megatron-Core's DDP bucket when --ddp-bucket-size is absent: max(4e7, 1e6 x dp) parameters.
MCORE_BUCKET_PARAMS = 40_000_000
MCORE_BUCKET_PARAMS_PER_DP = 1_000_000

#: Flags without effect on one simulated step: learning-rate schedule, data, tokenizer files,
#: logging, checkpoints, initialisation, loss scaling, rotary constants.
NO_EFFECT = frozenset({
    "--train-iters", "--train-samples", "--lr", "--min-lr", "--weight-decay",
    "--weight-decay-incr-style", "--start-weight-decay", "--end-weight-decay",
    "--init-method-std", "--seed", "--data-path", "--train-data-path", "--valid-data-path",
    "--test-data-path", "--split", "--data-cache-path", "--mock-data", "--num-workers",
    "--dataloader-type", "--save", "--load", "--log-interval", "--distributed-backend",
    "--distributed-timeout-minutes", "--use-cpu-initialization", "--initial-loss-scale",
    "--min-loss-scale", "--loss-scale", "--loss-scale-window", "--hysteresis",
    "--attention-softmax-in-fp32", "--finetune", "--no-load-optim", "--no-load-rng",
    "--no-save-optim", "--no-save-rng", "--auto-detect-ckpt-format", "--use-dist-ckpt",
    "--async-save", "--manual-gc", "--manual-gc-interval", "--reset-position-ids",
    "--reset-attention-mask", "--eod-mask-loss", "--no-create-attention-mask-in-dataloader",
    "--rotary-base", "--rotary-seq-len-interpolation-factor",
    "--use-rope-scaling", "--rope-scaling-factor", "--norm-epsilon", "--layernorm-epsilon",
    "--vocab-extra-ids", "--append-eod", "--check-for-nan-in-loss-and-grad",
    "--use-mcore-models",
    "--vocab-file", "--merge-file", "--tokenizer-model", "--attention-dropout",
    "--use-checkpoint-args", "--use-checkpoint-opt_param-scheduler", "--override-opt_param-scheduler",
    "--adlr-autoresume", "--adlr-autoresume-interval",
    "--mtp-loss-scaling-factor",  # the MTP loss's weight: no FLOP or byte changes
    # LayerNorm's weight kept zero-centred and applied as (1 + w) (Transformer Engine's
    # zero_centered_gamma; Nemotron-4): the same parameters and kernels
    "--apply-layernorm-1p",
})  # fmt: skip
NO_EFFECT_PREFIXES = (
    "--log-", "--tensorboard-", "--wandb-", "--eval-", "--save-", "--load-", "--ckpt-",
    "--dist-ckpt-", "--lr-", "--profile", "--exit-", "--timing-", "--adam-", "--one-logger",
    "--straggler", "--rerun-", "--inprocess-", "--ft-", "--record-memory", "--memory-snapshot",
    "--use-pytorch-profiler", "--mmap-", "--object-storage",
)  # fmt: skip
#: Megatron-Core's FP8 formats (TransformerConfig.fp8)
FP8_FORMATS = ("e4m3", "hybrid")
FP8_FLAGS = ("--fp8-format", "--fp8", "--fp8-recipe", "--fp8-param-gather", "--fp4-format",
             "--fp4", "--fp4-recipe", "--fp4-param-gather", "--fp8-margin",
             "--fp8-amax-history-len", "--fp8-amax-compute-algo")  # fmt: skip
#: ``--fp8-recipe`` -> simtrain precision (spec/precision.py): Megatron's "tensorwise" recipe is
#: Transformer Engine's Float8CurrentScaling (megatron/core/fp8_utils.py get_fp8_recipe).
FP8_RECIPES = {"delayed": "fp8_delayed", "tensorwise": "fp8_current", "mxfp8": "mxfp8"}
#: Megatron's overlap flags and the runtime setting each turns on (runtimes/megatron_core.yaml:
#: all three are opt-in there); validate reads records' notes with the same table.
OVERLAP_FLAGS = {
    "--tp-comm-overlap": "tp_comm_overlap",
    "--overlap-grad-reduce": "overlap_grad_reduce",
    "--overlap-param-gather": "overlap_param_gather",
}
# Read into parallelism.layer_split (_parallel, :func:`layout_decoder_counts`).
UNEVEN_PIPELINE = ("--pipeline-model-parallel-layout",)
LAUNCH_PROCS = ("--nproc_per_node", "--nproc-per-node", "--num_gpus", "--num-gpus")
LAUNCH_NODES = ("--nnodes", "--num_nodes", "--num-nodes")


def _launcher_world(launcher: tuple[str, ...]) -> tuple[int | None, str]:
    """The GPU count of a torchrun / torch.distributed.launch / deepspeed launcher line."""
    if not launcher:
        return None, ""
    lf = parse_flags(launcher)
    procs = next((p for p in LAUNCH_PROCS if p in lf), None)
    if procs is None:
        return None, ""
    nodes = next((n for n in LAUNCH_NODES if n in lf), None)
    try:
        per_node = int(str(lf[procs]))
        n = int(str(lf[nodes])) if nodes else 1
    except ValueError:
        return None, ""
    if per_node < 1 or n < 1:  # (-8 x -1 read as 8 GPUs: a fuzz campaign)
        raise ConfigError(None, procs if per_node < 1 else str(nodes), "the launcher's count "
                          "must be a positive integer", per_node if per_node < 1 else n)  # fmt: skip
    label = f"launcher {procs} {per_node}" + (f" x {nodes} {n}" if nodes else "")
    return per_node * n, label


#: Megatron-LM's --optimizer values that are Muon (arguments.py l.2913-2917 at d98e8a64;
#: dist_muon: Muon with the layer-wise distributed optimizer, l.1724-1736).
MUON_OPTIMIZERS = ("muon", "dist_muon")
#: Megatron-LM's two names for Megatron FSDP: --use-custom-fsdp from d165a8548b (2025-02-26)
#: until af28b5a559 (2025-08-21) renamed it --use-megatron-fsdp (at d98e8a64 only
#: ``args.use_custom_fsdp`` is left, set from the new flag, arguments.py l.1118-1122).
MEGATRON_FSDP_FLAGS = ("--use-megatron-fsdp", "--use-custom-fsdp")


def import_megatron(path: str | Path, gpus: int | None = None) -> Imported:
    """A Megatron-LM launch script or flags file as a scenario document: the file's
    ``pretrain_gpt.py`` flags through :func:`import_megatron_flags`, the GPU count from the
    launcher line (``torchrun --nproc_per_node 8 --nnodes 4``) when it has one."""
    file = str(path)
    text = read_text_file(path)
    cmd = read_command(text, file)
    words = list(cmd.args) if cmd else flag_words(text, file)
    world, world_from = _launcher_world(cmd.launcher if cmd else ())
    return import_megatron_flags(words, gpus, file, world, world_from)


def import_megatron_flags(words: list[str], gpus: int | None = None, file: str = "<flags>",
                          world: int | None = None, world_from: str = "") -> Imported:  # fmt: skip
    """``pretrain_gpt.py`` flags (``["--num-layers", "24", "--fp16", ...]``) as a scenario
    document: the one reading of Megatron-LM's flags, for ``simtrain import megatron`` and for
    ``simtrain validate``'s Megatron records (apps.validate.native). ``world``: the job's GPU
    count where a launcher line gave it (``world_from`` says which); ``gpus`` overrides it."""
    r = Reading("megatron", file)
    raw = parse_flags(words)
    raw.pop("", None)
    if not any(f in raw for f in ("--num-layers", "--hidden-size", "--num-attention-heads")):
        raise ConfigError(file, "<file>", "not a Megatron-LM launch script or file of "
                          "pretrain_gpt.py flags: no --num-layers, --hidden-size or "
                          "--num-attention-heads")  # fmt: skip
    f = Flags(raw, r)
    legacy = f.has(*LEGACY_FLAGS)
    new_2022 = [x for x in FLAGS_2022 if x in raw]
    name = ("megatron_lm_2022" if new_2022 else "megatron_lm_2021") if legacy else "megatron_core"
    runtime: dict[str, Any] = {"name": name}
    r.assume(f"runtime {runtime['name']}: " + ("the script has flags of Megatron-LM before "
             "Megatron-Core (" + ", ".join(x for x in LEGACY_FLAGS if x in raw) + ")"
             + (" and of its 2022 sequence-parallel merge (" + ", ".join(new_2022) + ")"
                if new_2022 else "")
             if legacy else "Megatron-Core (no flag of Megatron-LM 2021)"))  # fmt: skip
    if legacy and f.bool_("--no-async-tensor-model-parallel-allreduce"):
        runtime["tp_backward_overlap"] = False
    flash, kernel = _attention(f, r, legacy)
    if kernel:
        runtime["attention_kernel"] = kernel

    # ---- layout (the vocabulary padding needs tp)
    # 0 or a negative degree is an error naming its flag, never read as absent (1)
    tp = f.pos_("--tensor-model-parallel-size", hi=MAX_GPUS)
    if tp is None:
        tp = f.pos_("--model-parallel-size", 1, MAX_GPUS)
    assert tp is not None
    pp = f.pos_("--pipeline-model-parallel-size", 1, MAX_GPUS)
    cp = f.pos_("--context-parallel-size", 1, MAX_GPUS)
    ep = f.pos_("--expert-model-parallel-size", 1, MAX_GPUS)
    assert pp is not None and cp is not None and ep is not None
    r.origin("parallelism.tp", "--tensor-model-parallel-size")
    r.origin("parallelism.pp", "--pipeline-model-parallel-size")
    if cp > 1:
        r.origin("parallelism.cp", "--context-parallel-size")
        comm = f.value("--cp-comm-type") if "--cp-comm-type" in f else None
        if comm == "a2a":  # Transformer Engine's AttnFuncWithCPAndQKVOA2A (costs.cp)
            runtime["cp_attention"] = "a2a"
            r.origin("runtime.cp_attention", "--cp-comm-type")
        elif comm not in (None, "p2p"):
            r.unsupported_(f"--cp-comm-type {comm}", "simulated as p2p (Transformer Engine's "
                           "ring exchange of K/V, Megatron's default)")  # fmt: skip
    if ep > 1:
        r.origin("parallelism.ep", "--expert-model-parallel-size")

    model = _model(f, r, tp, legacy, flash)
    _fusion_flags(f, r, runtime, model, legacy)
    _dispatcher(f, r, runtime, bool(model.get("num_experts")), ep)
    _cuda_graphs(f, r, runtime, file)
    layers = model["layers"]
    training, prec_grad_bytes = _training(f, r, model)
    par = _parallel(f, r, tp, pp, layers, runtime, int(model.get("mtp_layers") or 0))
    dp = world_and_dp(r, world, world_from, gpus, tp * pp * cp,
                      "--tensor-model-parallel-size x --pipeline-model-parallel-size"
                      + (" x --context-parallel-size" if cp > 1 else ""))  # fmt: skip
    par["dp"] = dp
    if not f.has("--global-batch-size"):
        training["global_batch"] = training["micro_batch"] * dp
        r.assume(f"--global-batch-size absent: --micro-batch-size x dp = "
                 f"{training['global_batch']} (Megatron's default)")  # fmt: skip
    _buckets(f, r, par, runtime, legacy, prec_grad_bytes, dp)
    _recompute(f, r, training, layers, pp, par.get("virtual_stages", 1))
    _finish(f, r, raw)
    if cp > 1:
        par["cp"] = cp
    if ep > 1:
        par["ep"] = ep
    etp = f.pos_("--expert-tensor-parallel-size", tp, MAX_GPUS)
    if etp != tp:  # (Megatron's default is tp: parallel_state / arguments.py)
        par["expert_tp"] = etp
        r.origin("parallelism.expert_tp", "--expert-tensor-parallel-size")
    par = parallel_section(par)
    return r.scenario(
        f"Imported from Megatron-LM flags ({Path(file).name})",
        "Megatron-LM flags name no GPU",
        model,
        runtime,
        training,
        par,
    )


#: Megatron-Core's ``TransformerConfig.transformer_impl`` values (d98e8a64
#: core/transformer/transformer_config.py l.1314, a Literal).
TRANSFORMER_IMPLS = ("transformer_engine", "local", "inference_optimized")


def _attention(f: Flags, r: Reading, legacy: bool) -> tuple[bool, str | None]:
    """(flash attention, the kernel where the runtime's default does not hold). Megatron-LM
    before Megatron-Core had no Transformer Engine: its attention is the fused
    scale-mask-softmax over the s x s scores unless --use-flash-attn (2022-), and a legacy
    script without --transformer-impl runs the "local" implementation. Megatron-Core parses
    --use-flash-attn and reads it nowhere (d98e8a64 arguments.py l.2910): Transformer Engine's
    attention is flash (its cuDNN FusedAttention, megatron_core's ``attention_kernel``) unless
    --attention-backend flash picks flash-attn's kernel (FlashAttention-2, or 3 where installed)."""
    impl = f.value("--transformer-impl") or ("local" if legacy else "transformer_engine")
    if impl not in TRANSFORMER_IMPLS:  # (a fuzz campaign: "banana" read as not TE, silently)
        raise ConfigError(r.file, "--transformer-impl", "unknown value", impl,
                          " | ".join(TRANSFORMER_IMPLS))  # fmt: skip
    backend = f.value("--attention-backend") or "auto"
    use_flash = f.bool_("--use-flash-attn")
    te = impl == "transformer_engine"
    if legacy:  # --use-flash-attn, or the legacy model's TE layer (its DotProductAttention)
        return use_flash or (te and backend in ("auto", "flash", "fused")), None
    if use_flash:
        r.assume("--use-flash-attn: parsed and read nowhere by Megatron-Core (d98e8a64 "
                 "arguments.py l.2910): --transformer-impl and --attention-backend decide")  # fmt: skip
    if te and backend == "flash":
        r.assume("--attention-backend flash: flash-attn's kernel (FlashAttention-2; set "
                 "runtime.attention_kernel fa3 where flash-attn 3 is installed)")  # fmt: skip
        return True, "fa2"
    return te and backend in ("auto", "fused"), None


def _model(f: Flags, r: Reading, tp: int, legacy: bool, flash: bool) -> dict[str, Any]:
    file = r.file
    need = {k: f.pos_(k, hi=LIMIT[key]) for k, key in (
        ("--num-layers", "model.layers"), ("--hidden-size", "model.hidden"),
        ("--num-attention-heads", "model.heads"))}  # fmt: skip
    for k, v in need.items():
        if v is None:
            raise ConfigError(file, k, "missing: the model's shape needs --num-layers, "
                              "--hidden-size and --num-attention-heads")  # fmt: skip
    layers, h, heads = need["--num-layers"], need["--hidden-size"], need["--num-attention-heads"]
    assert layers is not None and h is not None and heads is not None
    r.origin("model.layers", "--num-layers")
    r.origin("model.hidden", "--hidden-size")
    r.origin("model.heads", "--num-attention-heads")
    f.bool_("--group-query-attention")  # --num-query-groups gives the KV heads
    kv = f.pos_("--num-query-groups", heads, LIMIT["model.kv_heads"])
    r.origin("model.kv_heads", "--num-query-groups")
    swiglu = f.bool_("--swiglu")
    mlp = "swiglu" if swiglu else "gelu"
    if f.bool_("--quick-geglu"):
        mlp = "swiglu"
        r.assume("--quick-geglu: a gated MLP, simulated as SwiGLU (same matrices and FLOPs)")
    if f.bool_("--squared-relu"):  # arguments.py: activation_func = squared_relu
        if swiglu:  # Megatron-Core's arguments.py asserts not both
            raise ConfigError(file, "--squared-relu", "contradicts --swiglu: give one of them")
        mlp = "relu2"
    f.bool_("--openai-gelu")
    ffn = f.pos_("--ffn-hidden-size", hi=LIMIT["model.ffn_hidden"])
    if ffn is None:
        ffn = int((4 * h * 2 / 3) / 64) * 64 if mlp == "swiglu" else 4 * h
        r.assume(f"--ffn-hidden-size absent: {ffn} (Megatron's default: "
                 + ("int(4h·2/3 / 64)·64 with --swiglu)" if mlp == "swiglu" else "4h)"))  # fmt: skip
    r.origin("model.ffn_hidden", "--ffn-hidden-size")
    kvc = f.pos_("--kv-channels", hi=LIMIT["model.hidden"])
    if kvc is not None and heads and kvc * heads != h:
        r.unsupported_(f"--kv-channels {kvc}", f"a head size other than hidden / heads = "
                       f"{h // heads} is not expressible: simulated with {h // heads}")  # fmt: skip
    seq = f.pos_("--seq-length", hi=LIMIT["training.seq_len"])
    if seq is None:
        seq = f.pos_("--encoder-seq-length", hi=LIMIT["training.seq_len"])
    if seq is None:
        raise ConfigError(file, "--seq-length", "missing: the sequence length is needed")
    maxpos = f.pos_("--max-position-embeddings", hi=LIMIT["model.max_positions"])
    if maxpos is None:
        maxpos = seq
        r.assume(f"--max-position-embeddings absent: --seq-length = {seq}")
    r.origin("model.max_positions", "--max-position-embeddings")
    positions = _positions(f, r)
    norm_flag = f.value("--normalization") or "LayerNorm"
    norms = {"LayerNorm": "layernorm", "RMSNorm": "rmsnorm"}
    if norm_flag not in norms:
        r.unsupported_(f"--normalization {norm_flag}", "simulated as LayerNorm")
    vocab = _vocab(f, r, tp)
    dropout = f.float_("--hidden-dropout", 0.1)
    attn_dropout = f.float_("--attention-dropout", 0.1)
    for flag, p in (("--hidden-dropout", dropout), ("--attention-dropout", attn_dropout)):
        if not 0 <= p < 1:  # (-1, 5 and 1e9 were read as rates, -1 as none: a fuzz campaign)
            raise ConfigError(f.r.file, flag, "a dropout probability must be in [0, 1)", p)
    if "--hidden-dropout" not in f:
        r.assume("--hidden-dropout absent: 0.1 (Megatron's default)")
    attention = attn_dropout > 0 or dropout == 0  # (model.attention_dropout)
    if dropout == 0 and attn_dropout > 0:
        r.assume(
            f"--attention-dropout {attn_dropout} with --hidden-dropout 0: simtrain's "
            "dropout covers the residual branches too (their 1-byte masks counted)"
        )
        dropout = attn_dropout
    elif attn_dropout not in (0, dropout):
        r.assume(f"--attention-dropout {attn_dropout}: at --hidden-dropout's {dropout} (what "
                 "is saved and run does not depend on the rate)")  # fmt: skip
    model: dict[str, Any] = {
        "name": f"Megatron GPT {layers}x{h}",
        "layers": layers, "hidden": h, "heads": heads, "kv_heads": kv, "ffn_hidden": ffn,
        "vocab": vocab, "max_positions": maxpos, "mlp": mlp, "positions": positions,
        "bias": not f.bool_("--disable-bias-linear"), "qkv_bias": f.bool_("--add-qkv-bias"),
        "norm": norms.get(norm_flag, "layernorm"),
        "tied_embeddings": not f.bool_("--untie-embeddings-and-output-weights"),
        "dropout": clean_number(dropout), "attention_dropout": attention,
        "flash_attention": flash,
    }  # fmt: skip
    # --rotary-percent (Megatron arguments.py: float, default 1.0; RotaryEmbedding's
    # rotary_percent: the rotated share of each head's dimensions)
    rotary = f.float_("--rotary-percent", 1.0)
    if rotary is not None and not 0.0 < rotary <= 1.0:
        raise ConfigError(r.file, "--rotary-percent", "must be in (0, 1]", rotary)
    if rotary != 1.0 and f.bool_("--multi-latent-attention"):
        r.assume(
            f"--rotary-percent {rotary}: multi-latent attention's rope dimensions "
            "(--qk-pos-emb-head-dim) are taken whole"
        )
    elif rotary != 1.0 and positions == "rotary":
        model["rotary_fraction"] = clean_number(rotary)
    elif rotary != 1.0:
        r.assume(f"--rotary-percent {rotary}: no rotary positions here ({positions}): unused")
    if vocab is None:
        del model["vocab"]
    model.update(_mla(f, r))
    model.update(_moe(f, r, ffn, layers))
    model["_seq"] = seq
    return model


#: Multi-latent attention flags -> simtrain's MLA keys, with Megatron's defaults
#: (training/arguments.py _add_mla_args l.3546-3557, d98e8a64; q_lora_rank None = Q straight
#: from h).
MLA_FLAGS = (("--q-lora-rank", "q_lora_rank", 0), ("--kv-lora-rank", "kv_lora_rank", 32),
             ("--qk-head-dim", "qk_nope_head_dim", 128),
             ("--qk-pos-emb-head-dim", "qk_rope_head_dim", 64),
             ("--v-head-dim", "v_head_dim", 128))  # fmt: skip


def _mla(f: Flags, r: Reading) -> dict[str, Any]:
    """``--multi-latent-attention`` (DeepSeek-V2 §2.1): its latent ranks and head sizes. With
    MLA, ``--qk-layernorm`` is the RMSNorm of the Q and KV latents (core/models/gpt/
    gpt_layer_specs.py: ``q_layernorm`` / ``kv_layernorm``), which simtrain's MLA always has;
    without it, the per-head Q/K norm (``model.qk_norm``)."""
    if not f.bool_("--multi-latent-attention"):
        if f.bool_("--qk-layernorm"):
            r.origin("model.qk_norm", "--qk-layernorm")
            return {"qk_norm": True}
        return {}
    out: dict[str, Any] = {}
    for flag, key, default in MLA_FLAGS:
        v = f.int_(flag)
        if v is None:
            v = default
            r.assume(f"{flag} absent: {default} (Megatron's default)")
        out[key] = v
        r.origin(f"model.{key}", flag)
    if not f.bool_("--qk-layernorm"):
        r.assume("--multi-latent-attention without --qk-layernorm: the latents' two RMSNorms "
                 "are counted anyway (2 x their rank parameters)")  # fmt: skip
    return out


def _moe(f: Flags, r: Reading, ffn: int, layers: int) -> dict[str, Any]:
    """Megatron-Core's MoE flags (megatron/training/arguments.py, d98e8a64): --num-experts E,
    --moe-router-topk k, --moe-ffn-hidden-size (default --ffn-hidden-size),
    --moe-shared-expert-intermediate-size (all shared experts together: one shared expert of
    that width), --moe-layer-freq as an integer 1 (every layer MoE) or a pattern whose dense
    layers all come first (DeepSeek's ``([0]*k+[1]*n)*1``: ``first_dense_layers`` k; any other
    pattern is listed as not simulated). Routing details (load balancing, aux loss, token dropping policy other
    than dropless) do not change the FLOPs simtrain counts: listed as no effect."""
    experts = f.int_("--num-experts")
    mtp = f.pos_("--mtp-num-layers", hi=LIMIT["model.mtp_layers"]) if "--mtp-num-layers" in f else 0
    if not experts:
        if mtp:
            r.unsupported_(f"--mtp-num-layers {mtp}", "multi-token prediction of a dense model: "
                           "simtrain's MTP module is DeepSeek-V3's, an MoE block")  # fmt: skip
        return {}
    r.origin("model.num_experts", "--num-experts")
    out: dict[str, Any] = {"num_experts": experts}
    if mtp:  # Megatron-Core: the modules on the last pipeline stage (spec.scenario, layout.step)
        out["mtp_layers"] = mtp
        r.origin("model.mtp_layers", "--mtp-num-layers")
    out["experts_per_token"] = f.int_("--moe-router-topk", 2)
    if "--moe-router-topk" not in f:
        r.assume("--moe-router-topk absent: 2 (Megatron's default)")
    r.origin("model.experts_per_token", "--moe-router-topk")
    moe_ffn = f.pos_("--moe-ffn-hidden-size", hi=LIMIT["model.moe_ffn_hidden"])
    out["moe_ffn_hidden"] = moe_ffn or ffn
    r.origin("model.moe_ffn_hidden", "--moe-ffn-hidden-size")
    shared = f.int_("--moe-shared-expert-intermediate-size")
    if shared:
        out["shared_experts"] = 1
        out["shared_expert_ffn_hidden"] = shared
        r.assume(f"--moe-shared-expert-intermediate-size {shared}: one shared expert of that width")
    freq = f.value("--moe-layer-freq")
    if freq not in (None, "1"):
        pattern = layer_pattern(freq)
        dense = pattern.index(1) if pattern and 1 in pattern else -1
        if pattern and len(pattern) == layers and dense >= 0 and all(pattern[dense:]):
            if dense:
                out["first_dense_layers"] = dense
            r.origin("model.first_dense_layers", "--moe-layer-freq")
        else:
            r.unsupported_(f"--moe-layer-freq {freq}", "only a pattern of dense layers first, "
                           "then MoE, is simulated: every layer is MoE")  # fmt: skip
    cap = f.float_("--moe-expert-capacity-factor")
    if cap is not None and cap < 0:
        # (TransformerConfig.__post_init__, transformer_config.py l.1836-1838 at d98e8a64: a
        # negative factor is set to None, dropless)
        r.assume(f"--moe-expert-capacity-factor {cap:g}: negative, dropless (Megatron-Core "
                 "sets it to None)")  # fmt: skip
        cap = None
    if cap == 0:  # (no token would reach an expert)
        raise ConfigError(r.file, "--moe-expert-capacity-factor", "must not be 0 (a negative "
                          "factor or none: dropless)", cap)  # fmt: skip
    if cap:
        out["capacity_factor"] = cap
    # group-limited routing (transformer_config.py l.780-796, d98e8a64)
    groups, group_topk = f.int_("--moe-router-num-groups"), f.int_("--moe-router-group-topk")
    if groups and group_topk:
        out["router_groups"], out["router_group_topk"] = groups, group_topk
        r.origin("model.router_groups", "--moe-router-num-groups")
        r.origin("model.router_group_topk", "--moe-router-group-topk")
    elif groups or group_topk:
        r.assume("--moe-router-num-groups and --moe-router-group-topk go together (Megatron's "
                 "group-limited routing needs both): routing unlimited")  # fmt: skip
    # Padding every expert to its capacity changes the bytes and FLOPs simtrain counts
    # (simtrain computes the routed tokens; the same when the capacity factor is 1).
    if f.bool_("--moe-pad-expert-input-to-capacity") and cap and cap > 1:
        r.unsupported_("--moe-pad-expert-input-to-capacity", f"experts padded to capacity "
                       f"factor {cap}: simulated at the routed tokens")  # fmt: skip
    return out


def _fusion_flags(f: Flags, r: Reading, runtime: dict[str, Any], model: dict[str, Any],
                  legacy: bool) -> None:  # fmt: skip
    """Two Megatron-Core fusions that set memory (Megatron-LM before Megatron-Core had neither):
    ``--no-bias-swiglu-fusion`` runs the SwiGLU as eager ops, silu's output saved beside the fc1
    output (runtime ``fused_swiglu`` false; the flag's default, training/argument_utils.py l.317
    at d98e8a64: ``bias_activation_fusion = args.bias_swiglu_fusion``); Transformer Engine's
    cached dummy weight gradients (runtime ``te_dummy_wgrad``) need the gradient-accumulation
    fusion that writes the wgrad into ``main_grad``: off with
    ``--no-gradient-accumulation-fusion`` (arguments.py l.2944). Megatron's own linears return
    TE's dummy too where TE is installed (tensor_parallel/layers.py l.733-762), so
    ``--transformer-impl local`` keeps them."""
    flags = (("--no-bias-swiglu-fusion", "fused_swiglu", model.get("mlp") == "swiglu"),
             ("--no-gradient-accumulation-fusion", "te_dummy_wgrad", True))  # fmt: skip
    for flag, key, applies in flags:
        if not f.bool_(flag):
            continue
        if legacy or not applies:
            r.ignore(flag)
        else:
            runtime[key] = False
            r.origin(f"runtime.{key}", flag)


def _dispatcher(f: Flags, r: Reading, runtime: dict[str, Any], moe: bool, ep: int) -> None:
    """The MoE token dispatcher (transformer_config.py l.891-898, 964-971 at d98e8a64;
    default "allgather"): ``alltoall`` is simtrain's all-to-all dispatcher; ``flex`` with the
    DeepEP backend (``--moe-flex-dispatcher-backend``, default deepep; or the older
    ``--moe-enable-deepep``) is runtime ``moe_dispatcher: deepep`` with its SMs
    (``--moe-flex-dispatcher-num-sms`` / ``--moe-deepep-num-sms``); the others change the
    bytes simtrain counts and are listed as not simulated. ``flex`` without expert parallelism
    sends nothing (noted, runtime unchanged)."""
    if not moe:
        return
    dispatcher = f.value("--moe-token-dispatcher-type") or "allgather"
    backend = f.value("--moe-flex-dispatcher-backend") or "deepep"
    if ep <= 1 and dispatcher == "flex":
        r.assume("--moe-token-dispatcher-type flex with expert parallelism 1: DeepEP has no "
                 "token to send between GPUs")  # fmt: skip
        return
    if dispatcher == "flex" and backend == "deepep":
        runtime["moe_dispatcher"] = "deepep"
        r.origin("runtime.moe_dispatcher", "--moe-token-dispatcher-type flex")
        for flag in ("--moe-flex-dispatcher-num-sms", "--moe-deepep-num-sms"):
            if flag in f:
                runtime["moe_dispatch_sms"] = f.int_(flag)
                r.origin("runtime.moe_dispatch_sms", flag)
                break
    elif dispatcher != "alltoall":
        what = f"{dispatcher}" + (f" ({backend})" if dispatcher == "flex" else "")
        r.unsupported_(f"--moe-token-dispatcher-type {what}", "simulated as the all-to-all "
                       "dispatcher")  # fmt: skip
    if f.bool_("--moe-enable-deepep") and dispatcher != "flex":
        r.assume("--moe-enable-deepep without --moe-token-dispatcher-type flex: no effect")


def layer_pattern(text: str) -> list[int] | None:
    """Megatron's ``--moe-layer-freq`` list expression (``([0]*3+[1]*58)*1``, or ``[0,1,1]``)
    evaluated without ``eval``: lists of 0/1, ``+`` of lists and ``*`` by an integer; None if
    the text is anything else (training/arguments.py l.327 ``moe_freq_type`` evaluates it in
    Python, d98e8a64)."""

    def ev(node: ast.AST) -> list[int] | int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.List):
            items = [ev(e) for e in node.elts]
            if all(type(i) is int and i in (0, 1) for i in items):
                return [int(i) for i in items]  # type: ignore[arg-type]
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add) and isinstance(a, list) and isinstance(b, list):
                return a + b
            if isinstance(node.op, ast.Mult) and isinstance(a, list) and type(b) is int:
                if 0 <= b <= 4096 and len(a) * b <= 4096:
                    return a * b
        raise ValueError(text)

    try:
        out = ev(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ValueError, RecursionError):
        return None
    return out if isinstance(out, list) else None


def _positions(f: Flags, r: Reading) -> str:
    """The position kind. ``--no-position-embedding`` (deprecated, ``dest=add_position_embedding``)
    drops the learned table: beside rope (Llama scripts: ``--position-embedding-type rope
    --no-position-embedding``) it changes nothing, and Megatron-Core refuses it without rope
    (d98e8a64 megatron/training/arguments.py l.1633-1634); older Megatron-LM ran the model
    without positions (NoPE)."""
    kind = f.value("--position-embedding-type") or "learned_absolute"
    if f.bool_("--use-rotary-position-embeddings"):
        kind = "rope"
    if f.bool_("--no-position-embedding") and kind == "learned_absolute":
        r.assume(
            "--no-position-embedding without rope: no positions (NoPE; Megatron-Core refuses it)"
        )
        kind = "none"
    if kind == "learned_absolute":
        return "learned"
    if kind in ("rope", "yarn", "mrope"):
        if kind != "rope":
            r.assume(f"--position-embedding-type {kind}: as rope (no parameters)")
        return "rotary"
    if kind in ("none", "alibi"):  # Megatron-DeepSpeed PositionEmbeddingType.alibi (BLOOM)
        return kind
    r.unsupported_(f"--position-embedding-type {kind}", "simulated without position parameters")
    return "rotary"


def _vocab(f: Flags, r: Reading, tp: int) -> int | None:
    to = f.pos_("--pad-vocab-size-to", hi=LIMIT["model.vocab"])
    raw = f.pos_("--vocab-size", hi=LIMIT["model.vocab"])
    tok = f.value("--tokenizer-type")
    div = f.pos_("--make-vocab-size-divisible-by", 128, LIMIT["model.vocab"])
    assert div is not None
    if to is not None:
        # Megatron-DeepSpeed megatron/tokenizer/tokenizer.py _vocab_size_with_padding
        # (bigscience-workshop 8387ae17 l.70-82): the vocabulary is padded to exactly this size,
        # which must be at least the tokenizer's and a multiple of
        # --make-vocab-size-divisible-by (ValueError otherwise; no tp rounding)
        if raw is not None and to < raw:
            raise ConfigError(r.file, "--pad-vocab-size-to", f"below --vocab-size {raw:,} "
                              "(Megatron-DeepSpeed pads only to a higher value)", to)  # fmt: skip
        if to % div:
            raise ConfigError(r.file, "--pad-vocab-size-to", f"not a multiple of "
                              f"--make-vocab-size-divisible-by {div}", to)  # fmt: skip
        r.assume(f"vocabulary: --pad-vocab-size-to {to:,} (Megatron-DeepSpeed pads to it)")
        r.origin("model.vocab", "--pad-vocab-size-to")
        return to
    if raw is None:
        if tok == "GPT2BPETokenizer" or (
            tok is None and "--vocab-file" in f and "--merge-file" in f
        ):
            raw = GPT2_VOCAB
            r.assume(f"vocabulary: GPT-2 BPE (--vocab-file / --merge-file), {GPT2_VOCAB:,} tokens "
                     "(Hugging Face gpt2 config.json)")  # fmt: skip
        else:
            r.need("model.vocab", "--tokenizer-type" if tok else "--vocab-size",
                   f"the vocabulary size of tokenizer {tok or '(none named)'} is not in the file: "
                   "give --vocab-size, or --set model.vocab=N (Megatron pads it to a multiple "
                   "of --make-vocab-size-divisible-by x tp)")  # fmt: skip
            return None
    multiple = div * tp
    padded = -(-raw // multiple) * multiple  # integers: no float to overflow
    if padded > LIMIT["model.vocab"]:
        raise ConfigError(r.file, "--make-vocab-size-divisible-by", f"pads the vocabulary "
                          f"{raw:,} to {padded:,} (a multiple of {div} x tp {tp}), past the "
                          f"limit of {LIMIT['model.vocab']:,}", div)  # fmt: skip
    if padded != raw:
        r.assume(f"vocabulary {raw:,} padded to {padded:,} (a multiple of "
                 f"--make-vocab-size-divisible-by {div} x tp {tp}; Megatron vocab_utils.py)")  # fmt: skip
    r.origin("model.vocab", "--vocab-size")
    return padded


def _training(f: Flags, r: Reading, model: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The training section and the bytes of one gradient element on the wire."""
    file = r.file
    seq = model.pop("_seq")
    micro = f.pos_("--micro-batch-size", hi=LIMIT["training.micro_batch"])
    if micro is None:
        micro = f.pos_("--batch-size", hi=LIMIT["training.micro_batch"])
    if micro is None:
        micro = 1
        r.assume("--micro-batch-size absent: 1")
    r.origin("training.micro_batch", "--micro-batch-size")
    r.origin("training.seq_len", "--seq-length")
    r.origin("training.global_batch", "--global-batch-size")
    training: dict[str, Any] = {"seq_len": seq, "micro_batch": micro}
    gb = f.pos_("--global-batch-size", hi=LIMIT["training.global_batch"])
    if gb is not None:
        training["global_batch"] = gb
    for flag in ("--rampup-batch-size", "--step-batch-size-schedule"):
        if flag in f:
            r.unsupported_(f.shown(flag), "batch-size ramp-up: the final --global-batch-size "
                           "is simulated")  # fmt: skip
            f.has(flag)
    fp16, bf16 = f.bool_("--fp16"), f.bool_("--bf16")
    if fp16 and bf16:
        raise ConfigError(file, "--fp16", "contradicts --bf16: give one of them")
    precision = "bf16" if bf16 else "fp16" if fp16 else "fp32"
    if precision == "fp32":
        r.assume("neither --fp16 nor --bf16: fp32")
    training["precision"] = _fp8(f, r, precision)
    if "--fp8-param-gather" in f and training["precision"] in FP8_PARAM_PRECISIONS:
        # TE quantized primary weights (costs.memory.fp8_weight_storage), all-gathered in
        # their byte under the per-tensor recipes (costs.memory.fp8_gathered_params)
        if any(f.bool_(x) for x in MEGATRON_FSDP_FLAGS) or "--data-parallel-sharding-strategy" in f:
            r.unsupported_("--fp8-param-gather", "FP8 primary weights under Megatron FSDP: "
                           "simulated with 16-bit weights")  # fmt: skip
        else:
            training["fp8_params"] = True
            r.origin("training.fp8_params", "--fp8-param-gather")
            r.assume("--fp8-param-gather: FP8 primary weights (no 16-bit copy of the linears' "
                     "weights), all-gathered in 1 byte each (MXFP8: in bf16, through the "
                     "gradient buffer)")  # fmt: skip
    elif "--fp8-param-gather" in f:
        r.unsupported_("--fp8-param-gather", "FP8 parameters without an FP8 recipe simtrain "
                       "models: simulated with 16-bit weights")  # fmt: skip
    grad_fp32 = f.bool_("--accumulate-allreduce-grads-in-fp32")
    if bf16 and not f.bool_("--grad-reduce-in-bf16"):
        grad_fp32 = True
    grad_bytes = 4 if grad_fp32 or precision == "fp32" else 2
    if grad_fp32 and precision != "fp32":
        if bf16:
            r.assume("--bf16: gradients accumulated and reduced in fp32 (Megatron forces it for "
                     "bf16): an fp32 main-gradient buffer, 4 B/param (runtime megatron_core)")  # fmt: skip
    _optimizer_storage(f, r, training, bf16)
    opt = f.value("--optimizer") or "adam"
    if opt == "adam":
        training["optimizer"] = "adamw"
    elif opt in MUON_OPTIMIZERS:
        # Megatron-LM d98e8a64 arguments.py l.1724-1736: dist_muon is muon with the layer-wise
        # distributed optimizer (as --use-distributed-optimizer with muon): ZeRO-1 below
        training["optimizer"] = "muon"
    elif opt == "sgd":
        momentum = f.float_("--sgd-momentum", 0.9)
        training["optimizer"] = "sgd_momentum" if momentum else "sgd"
    else:
        training["optimizer"] = "adamw"
        r.unsupported_(f"--optimizer {opt}", "simulated as AdamW")
    if f.bool_("--optimizer-cpu-offload"):
        training["offload"] = {"optimizer": True}
        frac = f.float_("--optimizer-offload-fraction", 1.0)
        if frac is None or not 0.0 <= frac <= 1.0:
            raise ConfigError(file, "--optimizer-offload-fraction", "must be 0 to 1 (the share "
                              "of the optimizer on the CPU)", frac)  # fmt: skip
        if frac != 1.0:
            r.unsupported_(f"--optimizer-offload-fraction {frac}", "a partial optimizer offload "
                           "is simulated as a whole one")  # fmt: skip
    n_off = f.int_("--cpu-offloading-num-layers", 0)
    if n_off:
        # TransformerConfig.cpu_offloading_num_layers (arguments.py l.1950 at d98e8a64: > 0
        # turns cpu_offloading on), activations only (cpu_offloading_weights off by default)
        offload = training.setdefault("offload", {})
        offload["activation_layers"] = n_off
        r.origin("training.offload.activation_layers", "--cpu-offloading-num-layers")
    # The loss: Megatron's vocab-parallel cross-entropy (core/tensor_parallel/cross_entropy.py),
    # or with --cross-entropy-loss-fusion its native fusion (fusions/fused_cross_entropy.py, the
    # same fp32 copy worked on in place) or Transformer Engine's kernel
    # (--cross-entropy-fusion-impl te: language_module.py compute_language_model_loss,
    # d98e8a64 l.172-198; arguments.py choices native | te, default native).
    training["cross_entropy"] = "vocab_parallel"
    if f.bool_("--cross-entropy-loss-fusion"):
        impl = f.value("--cross-entropy-fusion-impl") or "native"
        if impl not in ("native", "te"):
            raise ConfigError(file, "--cross-entropy-fusion-impl", "must be native or te", impl)
        training["cross_entropy"] = "te" if impl == "te" else "vocab_parallel"
        r.origin("training.cross_entropy", "--cross-entropy-loss-fusion")
        if impl == "native":
            r.assume("--cross-entropy-loss-fusion (native): Megatron's fused vocab-parallel "
                     "loss, the unfused one's memory; priced with its 3 TP all-reduces of b·s "
                     "fp32 values where the fusion runs 2")  # fmt: skip
    else:
        f.has("--cross-entropy-fusion-impl")  # (no fusion: the impl does not apply)
    return training, grad_bytes


def _fp8(f: Flags, r: Reading, precision: str) -> str:
    """The FP8 precision of ``--fp8-format`` (the switch: e4m3 | hybrid) and ``--fp8-recipe``
    (default delayed; arguments.py _add_transformer_engine_args): delayed -> fp8_delayed
    (Transformer Engine DelayedScaling), tensorwise -> fp8_current (Float8CurrentScaling,
    core/fp8_utils.py), mxfp8 -> mxfp8, on the 16-bit ``precision``; blockwise, FP4 and FP8
    flags without --fp8-format are listed as not simulated."""
    fp8 = [x for x in FP8_FLAGS if x in f]
    if not fp8:
        return precision
    f.has(*fp8)
    # --fp4-format e2m1 with --fp4-recipe nvfp4 (its default): Transformer Engine's
    # NVFP4BlockScaling (transformer_config.py l.671-692, d98e8a64); Megatron refuses fp4 with
    # fp8 (l.1581-1582)
    fp4_fmt, fp4_recipe = f.value("--fp4-format"), f.value("--fp4-recipe") or "nvfp4"
    if (
        fp4_fmt == "e2m1"
        and fp4_recipe == "nvfp4"
        and "--fp8-format" not in f
        and (precision != "fp32")
    ):
        r.origin("training.precision", "--fp4-format")
        r.assume(f"--fp4-format e2m1 --fp4-recipe nvfp4: nvfp4 (the linear layers' GEMMs in "
                 f"NVFP4 on {precision} mixed precision)")  # fmt: skip
        if "--fp4-param-gather" in f:
            r.unsupported_("--fp4-param-gather", "FP4 parameters all-gathered: simulated with "
                           "16-bit gathers")  # fmt: skip
        return "nvfp4"
    fmt = f.value("--fp8-format")
    if fmt is not None and fmt not in FP8_FORMATS:
        # TransformerConfig.fp8: Literal['e4m3', 'hybrid'] (transformer_config.py l.587 at
        # d98e8a64; --fp8-format is generated from it): Megatron refuses another
        raise ConfigError(r.file, "--fp8-format", "unknown value", fmt, " | ".join(FP8_FORMATS))
    recipe = f.value("--fp8-recipe") or "delayed"
    name = FP8_RECIPES.get(recipe)
    fp4 = [x for x in fp8 if x.startswith("--fp4")]
    if fmt is None or name is None or fp4 or precision == "fp32":
        r.unsupported_(" ".join(f.shown(x) for x in fp8), "not a simtrain precision (FP8 recipes: "
                       f"--fp8-format with --fp8-recipe {' | '.join(FP8_RECIPES)}, on --bf16 or "
                       f"--fp16): simulated in {precision}")  # fmt: skip
        return precision
    r.origin("training.precision", "--fp8-recipe")
    r.assume(f"--fp8-format {fmt} --fp8-recipe {recipe}: {name} (the linear layers' GEMMs in "
             f"FP8 on {precision} mixed precision)")  # fmt: skip
    return name


_LAYOUT_CHARS = {"E": "embedding", "L": "loss", "t": "decoder", "m": "mtp"}


def parse_layout(text: str) -> list[str]:
    """Megatron-Core's ``--pipeline-model-parallel-layout`` string as its stages, each a string
    of layer characters (E embedding, t decoder layer, m MTP module, L output layer and loss),
    by Megatron's own rules (d98e8a64 megatron/core/transformer/pipeline_parallel_layer_layout.py
    ``parse_str_to_list``: commas dropped, ``(...)*n`` then ``x*n`` unrolled, stages split on
    ``|``), in virtual-stage order (stage ``j·pp + r``: chunk j of pipeline rank r).
    ``"Et*2|(tt|)*2,mL"`` -> ``["Ett", "tt", "tt", "mL"]``."""
    t = text.strip().strip("'\"").replace(",", "")
    t = re.sub(r"\(([^)]+)\)\*([0-9]+)", lambda x: _unroll(x.group(1), x.group(2)), t)
    t = re.sub(r"(.)\*([0-9]+)", lambda x: _unroll(x.group(1), x.group(2)), t)
    if len(t) > MAX_LAYOUT_CHARS:
        raise ValueError(f"unrolls to {len(t):,} characters (at most {MAX_LAYOUT_CHARS:,})")
    return t.split("|")


#: The largest repeat count a layout string may unroll (a fuzz campaign: "Et*999999999999|L"
#: ran out of memory building the string): 4x the most layers a model may have
#: (spec.limits INT_RANGES["model.layers"], 1,024), room for MTP and separators.
MAX_LAYOUT_REPEAT = 4 * LIMIT["model.layers"]


#: The longest string a layout may unroll to: every stage's layers, each a character, with
#: room for separators; a nested (t*4096)*4096 is refused before it is built.
MAX_LAYOUT_CHARS = 4 * MAX_LAYOUT_REPEAT


def _unroll(unit: str, count: str) -> str:
    """``unit`` x ``count``, or ValueError past :data:`MAX_LAYOUT_REPEAT` or where the result
    would pass :data:`MAX_LAYOUT_CHARS`."""
    if len(count) > len(str(MAX_LAYOUT_REPEAT)) or int(count) > MAX_LAYOUT_REPEAT:
        raise ValueError(f"a repeat count of {count[:12]} (at most {MAX_LAYOUT_REPEAT})")
    if len(unit) * int(count) > MAX_LAYOUT_CHARS:
        raise ValueError(f"unrolls past {MAX_LAYOUT_CHARS:,} characters")
    return unit * int(count)


def layout_string(counts: list[int]) -> str:
    """The ``--pipeline-model-parallel-layout`` string of decoder layers per chunk (virtual-stage
    order): the embedding before the first chunk's layers, the loss after the last's
    (:func:`layout_decoder_counts` reads it back). ``[4, 4, 1]`` -> ``"Etttt|tttt|tL"``."""
    last = len(counts) - 1
    return "|".join(("E" if i == 0 else "") + "t" * n + ("L" if i == last else "")
                    for i, n in enumerate(counts))  # fmt: skip


def layout_decoder_counts(text: str, pp: int, layers: int,
                          mtp: int) -> tuple[list[int], int] | str:  # fmt: skip
    """(decoder layers per chunk, virtual stages) of a layout string (:func:`parse_layout`),
    or why simtrain cannot take it: an unknown character, a stage count that ``pp`` does not
    divide (Megatron's check), decoder layers that do not sum to ``--num-layers``, the
    embedding anywhere but the first stage's start, the loss anywhere but the last stage's
    end, or MTP modules other than the model's ``mtp`` on the last stage."""
    try:
        stages = parse_layout(text)
    except ValueError as exc:
        return str(exc)
    bad = sorted({c for st in stages for c in st if c not in _LAYOUT_CHARS})
    if bad:
        return f"unknown layer character(s) {', '.join(bad)} (Megatron's: E, t, m, L)"
    if len(stages) % pp:
        return f"{len(stages)} stages, not a multiple of --pipeline-model-parallel-size {pp}"
    counts = [st.count("t") for st in stages]
    if sum(counts) != layers:
        return f"{sum(counts)} decoder layers (t), but --num-layers {layers}"
    joined = "|".join(stages)
    if joined.count("E") != 1 or not stages[0].startswith("E"):
        return "the embedding (E) must open the first stage, once"
    if joined.count("L") != 1 or not stages[-1].endswith("L"):
        return "the loss (L) must close the last stage, once"
    if joined.count("m") != mtp or not re.fullmatch(r"E?t*" + "m" * mtp + "L", stages[-1]):
        return (f"{joined.count('m')} MTP module(s) (m); simtrain puts the model's {mtp} on "
                "the last stage, after its decoder layers and before the loss")  # fmt: skip
    if any(not st for st in stages):  # (a middle stage holds decoder layers, or is empty)
        return "an empty stage (every stage holds a layer, the embedding or the loss)"
    return counts, len(stages) // pp


def _parallel(f: Flags, r: Reading, tp: int, pp: int, layers: int,
              runtime: dict[str, Any], mtp: int = 0) -> dict[str, Any]:  # fmt: skip
    file = r.file
    par: dict[str, Any] = {"tp": tp, "pp": pp}
    v = 1
    # Megatron-Core's uneven split (spec.stage_split; arguments.py validate_args): first/last
    # stage layers, or the embedding / loss counted as a layer each.
    first = f.pos_("--decoder-first-pipeline-num-layers", 0, LIMIT["model.layers"])
    last = f.pos_("--decoder-last-pipeline-num-layers", 0, LIMIT["model.layers"])
    emb = f.bool_("--account-for-embedding-in-pipeline-split")
    loss = f.bool_("--account-for-loss-in-pipeline-split")
    for flag, key, val in (
        ("--decoder-first-pipeline-num-layers", "first_stage_layers", first),
        ("--decoder-last-pipeline-num-layers", "last_stage_layers", last),
        ("--account-for-embedding-in-pipeline-split", "account_for_embedding", emb),
        ("--account-for-loss-in-pipeline-split", "account_for_loss", loss),
    ):
        if val:
            par[key] = val
            r.origin(f"parallelism.{key}", flag)
    method = f.value("--pp-partition-method")
    if method is not None:
        # Megatron-DeepSpeed's PipelineModule partition_method (BLOOM's tr11 scripts): with
        # 'type:transformer|embedding' the two embedding layers weigh one layer each, so the
        # first and last stages hold one block fewer (simtrain's embedding_as_layer)
        # (and 'type:transformer', the default, bigscience-workshop 8387ae17
        # megatron/model/gpt_model.py l.310-313: the blocks alone, an even split)
        if re.fullmatch(r"type:transformer\|embed(?:ding)?", method.strip("'\"")):
            par["layer_split"] = "embedding_as_layer"
            r.origin("parallelism.layer_split", "--pp-partition-method")
            r.assume(f"--pp-partition-method {method}: the embeddings weigh one layer each "
                     "(embedding_as_layer)")  # fmt: skip
        elif method.strip("'\"") != "type:transformer":
            r.unsupported_(f"--pp-partition-method {method}", "simulated as an even split")
    if "--num-layers-per-virtual-pipeline-stage" in f:
        n = f.int_("--num-layers-per-virtual-pipeline-stage")
        assert n is not None
        if first or last:
            raise ConfigError(file, "--num-layers-per-virtual-pipeline-stage", "cannot be used "
                              "with --decoder-first/last-pipeline-num-layers: give "
                              "--num-virtual-stages-per-pipeline-rank (Megatron's "
                              "arguments.py)", n)  # fmt: skip
        total = layers + emb + loss
        if n < 1 or total % (pp * n):
            raise ConfigError(file, "--num-layers-per-virtual-pipeline-stage", f"must divide "
                              f"--num-layers / --pipeline-model-parallel-size = {total} / {pp}",
                              n)  # fmt: skip
        v = total // (pp * n)
        r.origin("parallelism.virtual_stages", "--num-layers-per-virtual-pipeline-stage")
    elif "--num-virtual-stages-per-pipeline-rank" in f:
        v = f.pos_("--num-virtual-stages-per-pipeline-rank", 1, LIMIT["parallelism.virtual_stages"])
        r.origin("parallelism.virtual_stages", "--num-virtual-stages-per-pipeline-rank")
    elif "--virtual-pipeline-model-parallel-size" in f:
        v = f.pos_("--virtual-pipeline-model-parallel-size", 1,
                   LIMIT["parallelism.virtual_stages"])  # fmt: skip
        r.origin("parallelism.virtual_stages", "--virtual-pipeline-model-parallel-size")
    if f.has(*UNEVEN_PIPELINE):
        flag = UNEVEN_PIPELINE[0]
        text = f.value(flag) or ""
        clash = [x for x in ("--decoder-first-pipeline-num-layers",
                             "--decoder-last-pipeline-num-layers",
                             "--account-for-embedding-in-pipeline-split",
                             "--account-for-loss-in-pipeline-split",
                             "--num-layers-per-virtual-pipeline-stage",
                             "--num-virtual-stages-per-pipeline-rank",
                             "--virtual-pipeline-model-parallel-size") if x in f]  # fmt: skip
        if clash:  # Megatron's arguments.py: the layout gives the split and the virtual stages
            raise ConfigError(
                file,
                flag,
                f"cannot be combined with {', '.join(clash)} (the "
                "layout gives every chunk's layers and the virtual stages)",
                text,
            )
        got = layout_decoder_counts(text, pp, layers, mtp)
        if isinstance(got, str):
            raise ConfigError(file, flag, got, text)
        counts, v = got  # Megatron takes the virtual stages from the layout (TransformerConfig)
        par["layer_split"] = counts
        r.origin("parallelism.layer_split", flag)
        r.origin("parallelism.virtual_stages", flag)
        r.assume(f"{flag} {text}: decoder layers per chunk {counts}")
    par["schedule"] = "interleaved" if v > 1 else "1f1b"
    if f.bool_("--overlap-moe-expert-parallel-comm"):
        par["schedule"] = "combined_1f1b"  # pipeline_parallel/combined_1f1b.py
        r.origin("parallelism.schedule", "--overlap-moe-expert-parallel-comm")
    par["virtual_stages"] = v
    if f.bool_("--overlap-p2p-comm") and v > 1:
        runtime["p2p"] = "async"
        r.assume("--overlap-p2p-comm: asynchronous pipeline sends (runtimes/megatron_core.yaml "
                 "[p2p]: interleaved schedules with it use isend/irecv without a sync)")  # fmt: skip
    group_flag = "--microbatch-group-size-per-virtual-pipeline-stage"  # model_parallel_config.py
    if group_flag in f:
        g = f.pos_(group_flag, 1, LIMIT["parallelism.microbatch_group_size"])
        if v == 1:
            r.assume(f"{group_flag} {g}: no virtual stages, so no micro-batch groups (Megatron's "
                     "non-interleaved schedule does not read it)")  # fmt: skip
        elif g < pp:  # schedules.py forward_backward_pipelining_with_interleaving's ValueError
            raise ConfigError(file, group_flag, f"Megatron-Core takes groups of pp = {pp} to M "
                              "micro-batches ('should range in [PP, M]')", g)  # fmt: skip
        elif g != pp:
            par["microbatch_group_size"] = g
            r.origin("parallelism.microbatch_group_size", group_flag)
    sp = f.bool_("--sequence-parallel")
    if sp and tp == 1:
        r.assume("--sequence-parallel with tp 1: off (nothing to split)")
        sp = False
    par["sequence_parallel"] = sp
    r.origin("parallelism.sequence_parallel", "--sequence-parallel")
    zero = 0
    if f.bool_("--use-distributed-optimizer"):
        zero = 1
        r.assume("--use-distributed-optimizer: ZeRO-1 (optimizer states and fp32 master "
                 "weights sharded over data parallel)")  # fmt: skip
    elif f.value("--optimizer") == "dist_muon":
        zero = 1
        r.assume("--optimizer dist_muon: Muon with the layer-wise distributed optimizer "
                 "(Megatron-LM arguments.py), its states and Newton-Schulz work shared over "
                 "data parallel as ZeRO-1's")  # fmt: skip
    muon = f.value("--optimizer") in MUON_OPTIMIZERS
    fsdp = [x for x in ("--use-torch-fsdp2", *MEGATRON_FSDP_FLAGS) if f.bool_(x)]
    if fsdp and muon:
        # arguments.py l.1738-1739 at d98e8a64: "Emerging optimizer does not support
        # Torch-FSDP2 / Megatron-FSDP for now."
        for x in fsdp:
            r.unsupported_(x, "Megatron-LM refuses FSDP with Muon: simulated without it")
        if "--data-parallel-sharding-strategy" in f:
            f.has("--data-parallel-sharding-strategy")
            r.assume("--data-parallel-sharding-strategy: no effect without FSDP")
    else:
        if "--use-torch-fsdp2" in fsdp:
            zero = 3
            runtime["zero3_gather_copy_out"] = True  # PyTorch's FSDP2 copies each gather out
        if any(x in fsdp for x in MEGATRON_FSDP_FLAGS):
            strategy = f.value("--data-parallel-sharding-strategy") or "optim_grads_params"
            stages = {"no_shard": 0, "optim": 1, "optim_grads": 2, "optim_grads_params": 3}
            if strategy not in stages:
                raise ConfigError(file, "--data-parallel-sharding-strategy", "unknown value",
                                  strategy, " | ".join(stages))  # fmt: skip
            zero = stages[strategy]
        elif "--data-parallel-sharding-strategy" in f:
            f.has("--data-parallel-sharding-strategy")
            r.assume("--data-parallel-sharding-strategy without --use-megatron-fsdp: no effect")
    par["zero_stage"] = zero
    if "--num-distributed-optimizer-instances" in f:
        n = f.pos_("--num-distributed-optimizer-instances", hi=MAX_GPUS)
        unmodelled = [x for x in ("--num-experts", "--optimizer-cpu-offload") if x in f]
        if n > 1 and muon:  # LayerWiseDistributedOptimizer asserts one instance
            r.unsupported_(f"--num-distributed-optimizer-instances {n}", "Megatron-Core's "
                           "layer-wise distributed optimizer (Muon) runs one instance: "
                           "simulated with one")  # fmt: skip
        elif n > 1 and zero == 1 and unmodelled:
            r.unsupported_(f"--num-distributed-optimizer-instances {n}", f"hybrid sharding with "
                           f"{' and '.join(unmodelled)} is not modelled: simulated with one "
                           "instance")  # fmt: skip
        elif n > 1 and zero == 1:
            par["zero_replicas"] = n
            r.origin("parallelism.zero_replicas", "--num-distributed-optimizer-instances")
            r.assume(f"--num-distributed-optimizer-instances {n}: the distributed optimizer "
                     f"sharded within {n} groups of the data-parallel ranks, gradients "
                     "reduce-scattered within a group and all-reduced across them "
                     "(param_and_grad_buffer.py at d98e8a64)")  # fmt: skip
        elif n > 1:
            r.unsupported_(f"--num-distributed-optimizer-instances {n}", "needs "
                           "--use-distributed-optimizer (without Megatron FSDP): simulated "
                           "with one instance")  # fmt: skip
    # runtime overlap flags, where the layout has something for them to overlap
    if f.bool_("--tp-comm-overlap"):
        if tp > 1:
            runtime["tp_comm_overlap"] = True
        else:
            r.assume("--tp-comm-overlap with tp 1: nothing to overlap")
    if f.bool_("--overlap-grad-reduce"):
        runtime["overlap_grad_reduce"] = True
    if f.bool_("--overlap-param-gather"):
        if zero in (1, 2):
            runtime["overlap_param_gather"] = True
        elif zero == 0:
            raise ConfigError(file, "--overlap-param-gather", "requires "
                              "--use-distributed-optimizer (Megatron-LM arguments.py)")  # fmt: skip
        else:
            r.assume("--overlap-param-gather with full sharding: FSDP gathers per layer anyway")
    _gradient_passes(f, r, runtime)
    return par


def _optimizer_storage(f: Flags, r: Reading, training: dict[str, Any], bf16: bool) -> None:
    """Megatron-Core's precision-aware optimizer (--use-precision-aware-optimizer; OptimizerConfig
    at d98e8a64 l.187-206, 433-438, TE's FusedAdam): with --bf16 it keeps each fp32 master
    weight's low 16 bits beside the bf16 weight (store_param_remainders, on by default,
    --no-store-param-remainders off; master_weights: remainder), its moments in --exp-avg-dtype
    / --exp-avg-sq-dtype (both bf16: optimizer_state_dtype bf16). Without the optimizer flag
    those dtypes do nothing."""
    flags = ("--exp-avg-dtype", "--exp-avg-sq-dtype", "--main-params-dtype")
    dtypes = {x: f.value(x) or "fp32" for x in flags}
    no_remainders = f.bool_("--no-store-param-remainders")
    if not f.bool_("--use-precision-aware-optimizer"):
        for x in flags:
            if dtypes[x] != "fp32":
                r.assume(f"{x} {dtypes[x]} without --use-precision-aware-optimizer: no effect")
        return
    if f.value("--optimizer") in MUON_OPTIMIZERS:  # OptimizerConfig asserts adam
        r.unsupported_("--use-precision-aware-optimizer", "Megatron-Core runs it with adam only "
                       "(optimizer_config.py l.433-436): simulated with Muon's fp32 states")  # fmt: skip
        return
    avg, sq = dtypes["--exp-avg-dtype"], dtypes["--exp-avg-sq-dtype"]
    if avg == sq == "bf16":
        training["optimizer_state_dtype"] = "bf16"
        r.assume("--exp-avg-dtype / --exp-avg-sq-dtype bf16: Adam's moments in bf16 "
                 "(optimizer_state_dtype: bf16)")  # fmt: skip
    elif (avg, sq) != ("fp32", "fp32"):
        r.unsupported_(f"--exp-avg-dtype {avg} --exp-avg-sq-dtype {sq}", "simulated with fp32 "
                       "moments (both bf16 is what simtrain stores in 16 bits)")  # fmt: skip
    if dtypes["--main-params-dtype"] != "fp32":
        r.unsupported_(f"--main-params-dtype {dtypes['--main-params-dtype']}",
                       "simulated with fp32 master weights")  # fmt: skip
    elif bf16 and not no_remainders:
        training["master_weights"] = "remainder"
        r.assume("--use-precision-aware-optimizer with --bf16: the fp32 master weights' low 16 "
                 "bits beside the bf16 weights (store_param_remainders, Megatron-Core's default; "
                 "master_weights: remainder)")  # fmt: skip


def _cuda_graphs(f: Flags, r: Reading, runtime: dict[str, Any], file: str) -> None:
    """Megatron-Core's CUDA graphs: ``--cuda-graph-impl`` (none | local | transformer_engine |
    full_iteration) with ``--cuda-graph-scope`` (megatron-core 0.14-0.16; later the hidden
    alias of ``--cuda-graph-modules``, arguments.py l.2047-2056 at d98e8a64). The whole
    iteration (the ``full_iteration`` implementation of d98e8a64, transformer_config.py
    l.1075-1084, or the older ``--cuda-graph-scope full_iteration``) is the runtime's
    ``dispatch: cuda_graphs``; named scopes are its ``cuda_graph_scope``; an implementation
    with no scope, or the deprecated ``full`` (l.1104-1105: "transformed to an empty list"),
    captures each whole layer (attn, mlp, moe: transformer_layer.py
    _get_submodules_under_cudagraphs)."""
    impl = f.value("--cuda-graph-impl") or "none"
    scopes: list[str] = []
    read = []
    for flag in ("--cuda-graph-scope", "--cuda-graph-modules"):
        text = f.value(flag)
        if text:
            scopes += [x for x in text.replace(",", " ").split() if x]
            read.append(flag)
    impls = ("none", "local", "transformer_engine", "full_iteration")
    if impl not in impls:
        raise ConfigError(file, "--cuda-graph-impl", "not a CUDA graph implementation", impl,
                          " | ".join(impls))  # fmt: skip
    if impl == "none":
        if scopes:
            r.assume(f"{read[0]} without --cuda-graph-impl: no CUDA graphs (Megatron's default "
                     "implementation is none)")  # fmt: skip
        return
    if impl == "full_iteration" or scopes == ["full_iteration"]:
        runtime["dispatch"] = "cuda_graphs"
        r.origin("runtime.dispatch", "--cuda-graph-impl")
        return
    if scopes == ["full"]:
        scopes = []
    for x in scopes:
        if x not in CUDA_GRAPH_SCOPES:
            raise ConfigError(file, read[0], "not a scope simtrain models (the block's parts; "
                              "full alone is every whole layer, full_iteration the whole step)",
                              x, " | ".join((*CUDA_GRAPH_SCOPES, "full", "full_iteration")))  # fmt: skip
    router = {"moe_router", "moe_preprocess"} & set(scopes)
    if impl == "local" and router:
        # the local implementation captures both (transformer_config.py l.1725-1735 at 0.16.1)
        scopes += sorted({"moe_router", "moe_preprocess"} - router, reverse=True)
    why = graph_scope_problem(scopes)
    if why:
        raise ConfigError(file, read[0], why, " ".join(scopes))
    runtime["cuda_graph_scope"] = list(dict.fromkeys(scopes or ["attn", "mlp", "moe"]))
    r.origin("runtime.cuda_graph_scope", read[0] if read else "--cuda-graph-impl")


def _gradient_passes(f: Flags, r: Reading, runtime: dict[str, Any]) -> None:
    """The flags that turn off Megatron-Core's passes over the gradients (runtimes/megatron_core
    .yaml [gpass]): --clip-grad 0 (no norm), --no-check-for-nan-in-loss-and-grad (no NaN
    check), --ddp-average-in-collective (the collective averages: no 1/dp scale),
    --use-precision-aware-optimizer (TE's FusedAdam writes the 16-bit parameters and reads the
    grad buffer itself: no master copies, distrib_optimizer.py l.2822 at d98e8a64). Read for
    every runtime; only Megatron's profiles make the passes."""
    clip = f.float_("--clip-grad")
    if clip is not None and clip <= 0:
        runtime["clip_grad_norm"] = False
        r.assume(f"--clip-grad {clip:g}: no gradient-norm pass before the optimizer step")
    if f.bool_("--no-check-for-nan-in-loss-and-grad"):
        runtime["check_nan_in_grad"] = False
    if f.bool_("--ddp-average-in-collective"):
        runtime["scale_grads_before_reduce"] = False
    if f.bool_("--use-precision-aware-optimizer"):
        runtime["master_copies"] = False
        r.assume(
            "--use-precision-aware-optimizer: the optimizer writes the 16-bit parameters "
            "itself (no master-weight copy after the update)"
        )


def _buckets(f: Flags, r: Reading, par: dict[str, Any], runtime: dict[str, Any], legacy: bool,
             grad_bytes: int, dp: int) -> None:  # fmt: skip
    """The DDP gradient buckets and the wire dtype of the gradient reduction."""
    impl = f.value("--DDP-impl")
    if impl is not None and impl not in ("local", "torch"):
        raise ConfigError(r.file, "--DDP-impl", "unknown value", impl, "local | torch")
    if legacy and (impl or "local") == "local":
        par["bucket_mb"] = ONE_BUCKET_MB
        r.assume("DDP: Megatron-LM 2021's 'local' DDP (--DDP-impl local, its default): one "
                 "all-reduce of the whole gradient buffer after the backward")  # fmt: skip
    size = f.pos_("--ddp-bucket-size", hi=MAX_BUCKET_ELEMENTS)
    if size is not None:
        par["bucket_mb"] = clean_number(grad_bucket_mb(size, grad_bytes))
        r.origin("parallelism.bucket_mb", "--ddp-bucket-size")
    elif not legacy and runtime.get("overlap_grad_reduce"):
        params = max(MCORE_BUCKET_PARAMS, MCORE_BUCKET_PARAMS_PER_DP * dp)
        par["bucket_mb"] = clean_number(grad_bucket_mb(params, grad_bytes))
        r.assume(f"DDP buckets of max(4e7, 1e6·dp) = {params:,} parameters x {grad_bytes} B = "
                 f"{par['bucket_mb']} MB (Megatron-Core's default bucket_size)")  # fmt: skip
    if grad_bytes == 4 and f.has("--fp16", "--bf16"):  # 16-bit gradients reduced in fp32
        runtime["grad_reduce_dtype"] = "fp32"


def _recompute(f: Flags, r: Reading, training: dict[str, Any], layers: int, pp: int,
               v: int) -> None:  # fmt: skip
    gran = f.value("--recompute-granularity")
    method = f.value("--recompute-method") or f.value("--activations-checkpoint-method")
    names = ("--recompute-num-layers", "--activations-checkpoint-num-layers",
             "--checkpoint-num-layers")  # fmt: skip
    given = [f.pos_(k, None, LIMIT["model.layers"], 0) for k in names]
    n = next((x for x in given if x is not None), 1)
    n_flag = next((k for k, x in zip(names, given, strict=True) if x is not None), names[0])
    if f.bool_("--checkpoint-activations"):
        gran = gran or "full"
        method = method or "uniform"
    if f.bool_("--recompute-activations"):
        gran = gran or "selective"
    if gran is None and f.value("--activations-checkpoint-method") is not None:
        # Megatron-LM 2021 (c1e0689d92 megatron/model/transformer.py l.678: "if
        # self.activations_checkpoint_method is not None" checkpoints the layers; arguments.py
        # l.94-98 turns --checkpoint-activations into method uniform): the method alone is full
        gran = "full"
        r.assume("--activations-checkpoint-method without a granularity: full recompute "
                 "(Megatron-LM 2021 checkpoints whenever a method is set)")  # fmt: skip
    if gran != "selective" and "--recompute-modules" in f:
        f.has("--recompute-modules")  # Megatron reads it with the selective granularity only
        r.assume("--recompute-modules: ignored, as Megatron-Core ignores it without "
                 "--recompute-granularity selective")  # fmt: skip
    if gran is None:
        training["recompute"] = "none"
        return
    if gran == "selective":
        training["recompute"] = "selective"
        if "--recompute-modules" not in f:
            return
        # nargs='*': the flag alone is an empty list
        mods = "" if f.flags["--recompute-modules"] is True else f.value("--recompute-modules")
        f.has("--recompute-modules")
        given = list(dict.fromkeys((mods or "").split()))  # (a module named twice: once)
        known = [x for x in given if x in RECOMPUTE_MODULES]
        other = [x for x in given if x not in RECOMPUTE_MODULES]
        if other:
            r.unsupported_(f"--recompute-modules {' '.join(other)}", "not simulated: simtrain "
                           "recomputes " + (" ".join(known) if known else "nothing") + " of the "
                           "list (it simulates " + " | ".join(RECOMPUTE_MODULES) + ")")  # fmt: skip
        if not known:  # selective over no module it simulates: nothing recomputed
            training["recompute"] = "none"
            r.assume(f"--recompute-modules {mods or '(none)'}: selective recompute of no "
                     "module simtrain simulates, run as no recompute")  # fmt: skip
        elif known != ["core_attn"]:
            training["recompute_modules"] = known
            r.origin("training.recompute_modules", "--recompute-modules")
        return
    if gran != "full":
        raise ConfigError(r.file, "--recompute-granularity", "unknown value", gran,
                          "full | selective")  # fmt: skip
    if method == "uniform" and n == 0:
        # (transformer_block.py _checkpointed_forward: the uniform method steps through the
        # layers in chunks of recompute_num_layers; 0 never advances: a fuzz campaign)
        raise ConfigError(r.file, n_flag, "must be >= 1 with the uniform recompute method "
                          "(chunks of that many layers)", n)  # fmt: skip
    if method == "block" and n == 0:
        # core/transformer/transformer_block.py _checkpointed_forward: with the block method
        # the first recompute_num_layers layers of each stage are checkpointed; 0 = none.
        training["recompute"] = "none"
        r.assume("--recompute-method block --recompute-num-layers 0: no layer is recomputed")
        return
    training["recompute"] = "full"
    per_stage = max(1, layers // (pp * v))
    if method is None:
        r.assume("--recompute-granularity full without --recompute-method: every layer")
    elif method == "uniform" and n > 1:
        r.assume(f"--recompute-method uniform --recompute-num-layers {n}: simtrain checkpoints "
                 "every layer's input (the same recompute, a few more saved inputs)")  # fmt: skip
    elif method == "block" and n < per_stage:
        r.unsupported_(f"--recompute-method block --recompute-num-layers {n}", f"recomputes {n} "
                       f"of the {per_stage} layers per stage: simulated as all of them")  # fmt: skip
    elif method not in ("uniform", "block"):
        raise ConfigError(r.file, "--recompute-method", "unknown value", method,
                          "uniform | block")  # fmt: skip
    if f.bool_("--distribute-saved-activations") or f.bool_(
        "--distribute-checkpointed-activations"
    ):
        r.unsupported_("--distribute-saved-activations", "saved layer inputs are not split over "
                       "tensor-parallel ranks in simtrain")  # fmt: skip


def _finish(f: Flags, r: Reading, raw: dict[str, str | bool]) -> None:
    """Every flag not read: no effect, or not simulated (MoE flags as one entry)."""
    moe = [x for x in f.leftover() if x.startswith("--moe-")]
    if moe:  # routing policy, aux losses, fusions: the FLOPs and bytes do not change (the
        # dispatcher and capacity padding, which do, are read in _moe)
        f.has(*moe)
        for x in moe:
            r.ignore(x)
    for x in f.leftover():
        if x in NO_EFFECT or x.startswith(NO_EFFECT_PREFIXES):
            r.ignore(x)
        elif x.startswith("--deepspeed"):
            r.unsupported_(f.shown(x), "Megatron-DeepSpeed: import the ds_config with "
                           "`simtrain import deepspeed`")  # fmt: skip
        else:
            r.unsupported_(f.shown(x), "not a flag this importer knows")
