"""Mixture-of-experts and multi-head-latent-attention rules: the Hugging Face config fields
(:func:`hf_moe_fields`, for ``spec.model.from_hf_config``), the model checks
(:func:`validate_moe`, for ``spec.model.validate_model``) and the layout checks of expert
parallelism (:func:`check_moe_layout`, for ``spec.scenario.check_layout``). Models are taken
as ``Any`` (``spec.model`` imports this module)."""

from __future__ import annotations

from typing import Any

from simtrain.errors import ConfigError
from simtrain.spec.limits import FLOAT_RANGES, INT_RANGES, check_range
from simtrain.spec.precision import PRECISIONS

#: model_type values of DeepSeek's MLA + MoE decoder (configuration_deepseek_v3.py's fields):
#: Kimi K2's ``kimi_k2`` (moonshotai/Kimi-K2-Instruct config.json: ``architectures``
#: DeepseekV3ForCausalLM, the same fields) with them.
DEEPSEEK_KINDS = ("deepseek_v2", "deepseek_v3", "kimi_k2")


def check_moe_layout(s: Any, file: str) -> None:
    """Expert parallelism (Megatron-Core d98e8a64 ``parallel_state.py`` l.870-896: the expert
    grid is etp x ep x expert-dp x pp with expert-dp = world / (etp·ep·pp) = tp·dp·cp /
    (etp·ep), a RuntimeError where that does not divide, so etp·ep must divide tp·dp·cp
    (``ParallelSpec.expert_dp``); ``arguments.py``: num_experts % expert_model_parallel_size
    == 0; with tp > 1, ``model_parallel_config.py``: "sequence parallelism must be used").
    The expert-TP size is tp (Megatron's default) or 1 (whole experts: the MoE parallel
    folding of Megatron-Bridge's recipes, expert_tensor_parallel_size=1); simtrain models no
    other."""
    m, t, p = s.model, s.training, s.parallelism
    if (m.is_moe or m.is_mla) and t.recompute == "selective_op":
        raise ConfigError(file, "training.recompute", "torchtitan's per-op policy is modelled "
                          "for dense MHA/GQA blocks (costs.op_sac), not MoE or MLA",
                          t.recompute, "none | selective | full")  # fmt: skip
    if p.ep > 1 and not m.is_moe:
        raise ConfigError(file, "parallelism.ep", "expert parallelism needs a model with "
                          "experts (model.num_experts > 0); use 1", p.ep)  # fmt: skip
    if p.expert_tp and (not m.is_moe or p.expert_tp not in (1, p.tp)):
        raise ConfigError(file, "parallelism.expert_tp", "the expert-TP size is tp or 1 (whole "
                          "experts) on a model with experts" + ("" if m.is_moe else
                          ": this one has none"), p.expert_tp,
                          " | ".join(sorted({"0", "1", str(p.tp)})))  # fmt: skip
    if not m.is_moe:
        return
    if p.etp != p.tp and p.ep == 1:
        raise ConfigError(file, "parallelism.expert_tp", "whole experts replicated over the TP "
                          "group without expert parallelism are not modelled: parallelism.ep "
                          "> 1, or expert_tp 0 (= tp)", p.expert_tp, f"0 | {p.tp}")  # fmt: skip
    fold = p.tp * p.dp_cp // p.etp  # the ranks an EP group is taken from
    if m.num_experts % p.ep or fold % p.ep:
        ok = [d for d in range(1, fold + 1) if fold % d == 0 and m.num_experts % d == 0]
        what = ("parallelism.dp x cp" if p.etp == p.tp else
                "parallelism.tp x dp x cp / expert_tp")  # fmt: skip
        raise ConfigError(file, "parallelism.ep", f"must divide model.num_experts = "
                          f"{m.num_experts} and {what} = {fold}", p.ep,
                          " | ".join(map(str, ok)))  # fmt: skip
    if p.ep > 1 and p.tp > 1 and not p.sequence_parallel:
        raise ConfigError(
            file,
            "parallelism.sequence_parallel",
            "expert parallelism with tp > 1 needs sequence parallelism (Megatron-Core)",
            False,
            "true",
        )
    if t.peft.method != "none":
        raise ConfigError(file, "training.peft.method", "PEFT on a mixture-of-experts model is "
                          "not modelled", t.peft.method, "none")  # fmt: skip
    if PRECISIONS[t.precision].fp8_recipe == "torchao":
        raise ConfigError(file, "training.precision", "torchao's float8 linears on a "
                          "mixture-of-experts model are not modelled (their casts are counted "
                          "for dense linears only); Transformer Engine's recipes are",
                          t.precision, "fp8_delayed | fp8_current | mxfp8 | bf16")  # fmt: skip


#: The expert counts and widths of each MoE model type's config.json, positive where given.
_MOE_SIZE_FIELDS = {
    "mixtral": ("num_local_experts", "num_experts_per_tok"),
    **dict.fromkeys(("qwen2_moe", "qwen3_moe"),
                    ("num_experts", "num_experts_per_tok", "moe_intermediate_size")),
    **dict.fromkeys(DEEPSEEK_KINDS,
                    ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size")),
    "gpt_oss": ("num_local_experts", "num_experts_per_tok", "experts_per_token"),
}  # fmt: skip


def hf_moe_fields(kind: str, cfg: dict[str, Any], path: str) -> dict[str, Any]:
    """MoE and attention-variant fields of a Hugging Face config (0 experts: dense). Field names
    from transformers ``configuration_mixtral.py`` (num_local_experts, num_experts_per_tok),
    ``configuration_qwen2_moe.py`` / ``configuration_qwen3_moe.py`` (num_experts,
    moe_intermediate_size, shared_expert_intermediate_size, decoder_sparse_step,
    mlp_only_layers; Qwen2MoeSparseMoeBlock's ``shared_expert_gate`` = Linear(h, 1)) and
    ``configuration_gpt_oss.py`` (num_local_experts, experts_per_token / num_experts_per_tok,
    head_dim; GptOssTopKRouter has a bias, GptOssAttention one sink per head)."""
    out: dict[str, Any] = {}
    for field in _MOE_SIZE_FIELDS.get(kind, ()):
        # (0 experts made a dense model, a moe_intermediate_size of 0 the experts ffn_hidden
        # wide: Qwen3-30B-A3B at 233B parameters; a fuzz campaign)
        if field in cfg and not (isinstance(cfg[field], int) and cfg[field] > 0):
            raise ConfigError(path, field, f"must be a positive integer (a {kind} model's "
                              "experts)", cfg[field])  # fmt: skip
    if kind in ("qwen3", "qwen3_moe", "gpt_oss") and cfg.get("head_dim"):
        out["head_size"] = int(cfg["head_dim"])
    if kind in ("qwen3", "qwen3_moe"):
        out["qk_norm"] = True  # Qwen3Attention.q_norm / k_norm: RMSNorm(head_dim)
    if kind == "mixtral":
        out.update(num_experts=int(cfg.get("num_local_experts", 8)),
                   experts_per_token=int(cfg.get("num_experts_per_tok", 2)))  # fmt: skip
    elif kind in ("qwen2_moe", "qwen3_moe"):
        step = int(cfg.get("decoder_sparse_step", 1))
        if step != 1 or cfg.get("mlp_only_layers"):
            raise ConfigError(path, "decoder_sparse_step", "only every layer MoE is supported "
                              "(decoder_sparse_step 1, mlp_only_layers [])", step)  # fmt: skip
        out.update(num_experts=int(cfg["num_experts"]),
                   experts_per_token=int(cfg.get("num_experts_per_tok", 4 if kind ==
                                                 "qwen2_moe" else 8)),
                   moe_ffn_hidden=int(cfg["moe_intermediate_size"]))  # fmt: skip
        shared = int(cfg.get("shared_expert_intermediate_size") or 0) if kind == "qwen2_moe" else 0
        if shared:
            out.update(shared_experts=1, shared_expert_ffn_hidden=shared,
                       shared_expert_gate=True)  # fmt: skip
    elif kind in DEEPSEEK_KINDS:
        # configuration_deepseek_v3.py: n_routed_experts, n_shared_experts (one MLP of
        # moe_intermediate_size x n_shared_experts: DeepseekV3MoE.shared_experts),
        # first_k_dense_replace, q_lora_rank (null: q_proj), kv_lora_rank, qk_nope_head_dim,
        # qk_rope_head_dim, v_head_dim; V3's router has e_score_correction_bias (noaux_tc).
        step = int(cfg.get("moe_layer_freq", 1))
        if step != 1:
            raise ConfigError(
                path,
                "moe_layer_freq",
                "only every layer MoE after the first "
                "first_k_dense_replace is supported (moe_layer_freq 1)",
                step,
            )
        f_e = int(cfg["moe_intermediate_size"])
        shared = int(cfg.get("n_shared_experts") or 0)
        out.update(
            num_experts=int(cfg["n_routed_experts"]), experts_per_token=int(
                cfg["num_experts_per_tok"]), moe_ffn_hidden=f_e, shared_experts=1 if shared else 0,
            shared_expert_ffn_hidden=f_e * shared,
            first_dense_layers=int(cfg.get("first_k_dense_replace") or 0),
            router_score_bias=kind in ("deepseek_v3", "kimi_k2") or cfg.get("topk_method") == "noaux_tc",
            q_lora_rank=int(cfg.get("q_lora_rank") or 0), kv_lora_rank=int(cfg["kv_lora_rank"]),
            qk_nope_head_dim=int(cfg["qk_nope_head_dim"]),
            qk_rope_head_dim=int(cfg["qk_rope_head_dim"]), v_head_dim=int(cfg["v_head_dim"]),
            mtp_layers=int(cfg.get("num_nextn_predict_layers") or 0),
        )  # fmt: skip
        for field in ("n_group", "topk_group"):
            if (cfg.get(field) or 0) < 0:  # (-1 had turned the group limit off: a fuzz campaign)
                raise ConfigError(path, field, "must be >= 0 (n_group 1 or none: no group "
                                  "limit)", cfg[field])  # fmt: skip
        if (cfg.get("topk_method") in ("group_limited_greedy", "noaux_tc")
                and int(cfg.get("n_group") or 0) > 1):  # fmt: skip
            # DeepseekV3TopkRouter: topk_group of n_group groups (V2: device-limited greedy);
            # one group (Kimi K2's n_group 1) limits nothing: router_groups 0, as its preset
            out.update(router_groups=int(cfg["n_group"]), router_group_topk=int(cfg["topk_group"]))
    elif kind == "gpt_oss":
        k = cfg.get("num_experts_per_tok", cfg.get("experts_per_token", 4))
        out.update(num_experts=int(cfg.get("num_local_experts", 32)), experts_per_token=int(k),
                   router_bias=True, attention_sinks=True,
                   glu_clamp=float(cfg.get("swiglu_limit", 7.0)))  # fmt: skip
    return out


#: Model keys that may be 0 (off), for the schema: the attention variants and the MoE fields.
ZERO_OK_FIELDS = ("head_size", "num_experts", "experts_per_token", "moe_ffn_hidden",
                  "shared_experts", "shared_expert_ffn_hidden", "first_dense_layers",
                  "capacity_factor", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                  "qk_rope_head_dim", "v_head_dim", "mtp_layers", "router_groups",
                  "router_group_topk", "sliding_window", "full_attention_every",
                  "glu_clamp")  # fmt: skip


#: The model keys a dense model (num_experts 0) leaves at their defaults.
MOE_ONLY_FIELDS = ("experts_per_token", "moe_ffn_hidden", "shared_experts",
                   "shared_expert_ffn_hidden", "first_dense_layers", "router_groups",
                   "router_group_topk", "shared_expert_gate", "router_bias", "router_score_bias",
                   "capacity_factor", "moe_load_imbalance", "glu_clamp")  # fmt: skip


def validate_moe(spec: Any, file: str | None, prefix: str) -> None:
    """The MoE fields: counts >= 0 within spec.limits, 1 <= experts_per_token <= num_experts,
    first_dense_layers < layers, capacity_factor 0 (dropless) or in (0, E/k], 1 <= imbalance
    <= E / k (an expert takes each token at most once, so at most all of them: k·T/E each on
    average)."""
    for field in ZERO_OK_FIELDS:
        v = getattr(spec, field)
        if field in ("capacity_factor", "glu_clamp"):  # floats, checked below
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError(file, f"{prefix}.{field}", "must be an integer >= 0", v)
        check_range(v, file, f"{prefix}.{field}", *INT_RANGES[f"model.{field}"])
    mla = ("q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
    if not spec.is_mla and any(getattr(spec, f) for f in mla):
        f = next(f for f in mla if getattr(spec, f))
        raise ConfigError(file, f"{prefix}.{f}", "multi-head latent attention needs "
                          "model.kv_lora_rank > 0", getattr(spec, f))  # fmt: skip
    if spec.is_mla and not (spec.qk_rope_head_dim and spec.v_head_dim and spec.qk_nope_head_dim):
        raise ConfigError(file, f"{prefix}.kv_lora_rank", "multi-head latent attention needs "
                          "qk_nope_head_dim, qk_rope_head_dim and v_head_dim > 0",
                          spec.kv_lora_rank)  # fmt: skip
    if spec.is_mla and (spec.bias or spec.qkv_bias or spec.head_size):
        raise ConfigError(file, f"{prefix}.kv_lora_rank", "multi-head latent attention has no "
                          "biases and no head_size (its widths are the *_head_dim keys)",
                          spec.kv_lora_rank)  # fmt: skip
    e, k = spec.num_experts, spec.experts_per_token
    if spec.mtp_layers and not e:
        raise ConfigError(
            file,
            f"{prefix}.mtp_layers",
            "multi-token prediction modules are MoE blocks: needs model.num_experts > 0",
            spec.mtp_layers,
        )
    if not e:
        # each at other than its dense default (0, false; the routing's rates 0 = dropless and
        # 1 = even) would be read and ignored on a dense model (a fuzz campaign:
        # capacity_factor -1 passed)
        defaults = type(spec).__dataclass_fields__
        moe_only = [f for f in MOE_ONLY_FIELDS if getattr(spec, f) != defaults[f].default]
        if moe_only:
            raise ConfigError(file, f"{prefix}.{moe_only[0]}", "needs model.num_experts > 0 "
                              "(0 = a dense model)", getattr(spec, moe_only[0]))  # fmt: skip
        return
    if not 1 <= k <= e:
        raise ConfigError(file, f"{prefix}.experts_per_token", f"must be in 1 .. num_experts = {e}"
                          " (top-k routing)", k)  # fmt: skip
    if spec.first_dense_layers >= spec.layers:
        raise ConfigError(
            file,
            f"{prefix}.first_dense_layers",
            f"must be below layers = {spec.layers} (at least one MoE layer)",
            spec.first_dense_layers,
        )
    cf = spec.capacity_factor
    if not (cf == 0 or 0 < cf <= e / k) or cf != cf:
        raise ConfigError(file, f"{prefix}.capacity_factor", f"must be 0 (dropless) or in "
                          f"(0, num_experts / experts_per_token = {e / k:g}]", cf)  # fmt: skip
    g, gk = spec.router_groups, spec.router_group_topk
    if bool(g) != bool(gk) or (g and (e % g or gk > g or gk * (e // g) < k)):
        key = "router_group_topk" if g and not e % g else "router_groups"
        raise ConfigError(file, f"{prefix}.{key}", f"group-limited routing needs router_groups "
                          f"dividing num_experts = {e} and 1 <= router_group_topk <= "
                          f"router_groups, with top-k = {k} experts in the chosen groups "
                          "(both 0: unlimited)", getattr(spec, key))  # fmt: skip
    check_range(spec.glu_clamp, file, f"{prefix}.glu_clamp", *FLOAT_RANGES["model.glu_clamp"])
    if spec.glu_clamp and spec.mlp != "swiglu":
        raise ConfigError(file, f"{prefix}.glu_clamp", "clamps a gated (GLU) MLP's two halves: "
                          "needs model.mlp swiglu (0 = no clamp)", spec.glu_clamp)  # fmt: skip
    imb = spec.moe_load_imbalance
    if not 1.0 <= imb <= e / k:
        raise ConfigError(file, f"{prefix}.moe_load_imbalance", "busiest expert's tokens over "
                          f"the mean: must be in [1, num_experts / experts_per_token = {e / k:g}]",
                          imb)  # fmt: skip
