"""How each source's framework split the layers over pipeline stages, where it is not an even
split of ``model.layers`` by ``pp x virtual_stages`` (``spec.stage_split``,
``layout.partition``): the keys added to a record's ``parallelism`` section, each with the
code that did it. Nothing here is fitted to a record: each rule is the framework's own code at
the version the record names."""

from __future__ import annotations

import re
from typing import Any

from simtrain.apps.validate.records import Record
from simtrain.layout.partition import deepspeed_balanced_2022, torchtitan_split_2412
from simtrain.spec.model import find_preset

#: Megatron-Bridge's Llama 3.1 405B recipe counts the embedding and the loss as a layer each
#: (NVIDIA-NeMo/Megatron-Bridge 00b7660b, the NeMo 25.11 records' commit:
#: src/megatron/bridge/recipes/llama/llama3.py llama31_405b_pretrain_config,
#: account_for_embedding_in_pipeline_split / account_for_loss_in_pipeline_split True; the
#: performance configs build on it, scripts/performance/configs/llama/llama31_llm_pretrain.py).
#: Its Qwen3-235B-A22B pretraining recipe does the same (recipes/qwen/qwen3_moe.py
#: qwen3_235b_a22b_pretrain_config l.160-161 at 00b7660b): 94 + 2 over pp x vp.
MBRIDGE_ACCOUNT_FOR = ("LLAMA3.1_405B", "QWEN3_235B_A22B")


#: Megatron-Bridge's 61-layer recipes lay their layers out by (pp, vp), the same decoder layers
#: per chunk for DeepSeek-V3 (NVIDIA-NeMo/Megatron-Bridge 00b7660b src/megatron/bridge/recipes/
#: deepseek/deepseek_v3.py l.235-247 layout_map) and Kimi K2 (recipes/kimi/h100/kimi_k2.py
#: ``_get_kimi_k2_pipeline_layout`` l.16-40 at 067f987d, which the perf recipes call):
#: decoder layers per chunk in virtual-stage order, the embedding before the first chunk's, the
#: loss (and DeepSeek-V3's MTP module) after the last chunk's. (pp, vp) pairs a map does not
#: hold have no layout there (an even split, which 61 layers refuse). (2, 8): Kimi K2's map,
#: and the 26.x DeepSeek-V3 GB300 recipe's own layout (perf_recipes/deepseek/gb300/
#: deepseek_v3.py l.154, its MXFP8 pp 2 vp 8 config, at 067f987d: "Et*4|(t*4|)*14tmL", the
#: same 16 chunks).
_MBRIDGE_61_LAYER_LAYOUTS: dict[tuple[int, int], tuple[int, ...]] = {
    (4, 1): (16, 16, 16, 13),
    (8, 1): (8,) * 7 + (5,),
    (4, 2): (8,) * 7 + (5,),
    (16, 1): (4,) * 15 + (1,),
    (8, 2): (4,) * 15 + (1,),
    (4, 4): (4,) * 15 + (1,),
    (2, 8): (4,) * 15 + (1,),
}
#: The H100 configs' "Et|(tt|)*30mL" / "Et|(tt|)*30L": the embedding and one block, 30 chunks of
#: two, the loss (and the MTP module) a chunk of its own.
_EMBEDDING_ONE_30_TWOS_LOSS = (1,) + (2,) * 30 + (0,)
#: DeepSeek-V3: (8, 4) the H100 configs' (25.11: scripts/performance/configs/deepseek/
#: deepseek_llm_pretrain.py l.175 at 00b7660b; 26.x: perf_recipes/deepseek/h100/deepseek_v3.py at
#: 067f987d; 1,024 GPUs), the only pp 8 vp 4 layout Megatron-Bridge's scripts have, so the one
#: a row of another GPU at pp 8 vp 4 is read with (25.11's GB200 MXFP8 row: an assumption its
#: note states).
MBRIDGE_DEEPSEEK_V3_LAYOUTS = {**_MBRIDGE_61_LAYER_LAYOUTS, (8, 4): _EMBEDDING_ONE_30_TWOS_LOSS}
#: Kimi K2: (16, 2) its H100 perf recipe's (perf_recipes/kimi/h100/kimi_k2.py l.47 at 067f987d,
#: 1,024 GPUs).
MBRIDGE_KIMI_K2_LAYOUTS = {**_MBRIDGE_61_LAYER_LAYOUTS, (16, 2): _EMBEDDING_ONE_30_TWOS_LOSS}
#: The Megatron-Bridge recipes' own layouts by preset, and where they are read.
MBRIDGE_LAYOUTS = {
    "deepseek-v3": (
        MBRIDGE_DEEPSEEK_V3_LAYOUTS,
        "recipes/deepseek/deepseek_v3.py layout_map at 00b7660b",
    ),
    "kimi-k2": (
        MBRIDGE_KIMI_K2_LAYOUTS,
        "recipes/kimi/h100/kimi_k2.py _get_kimi_k2_pipeline_layout at 067f987d",
    ),
}
#: The (preset, (pp, vp)) layouts a per-system perf recipe sets itself (the comments above).
MBRIDGE_RECIPE_LAYOUTS = {
    ("deepseek-v3", (2, 8)): "perf_recipes/deepseek/gb300/deepseek_v3.py at 067f987d",
    ("deepseek-v3", (8, 4)): "the H100 config's, scripts/performance/configs/deepseek/"
    "deepseek_llm_pretrain.py l.175 at 00b7660b, the only pp 8 vp 4 layout of its scripts, "
    "assumed for any GPU",
    ("kimi-k2", (16, 2)): "perf_recipes/kimi/h100/kimi_k2.py at 067f987d",
}


#: A record that says its first and last stages hold one layer fewer than the others (Llama 3,
#: Dubey et al. 2024 §3.3.2: "we reduce one Transformer layer each from the first and the last
#: stages"; its Table 4 row: "first/last stage one layer fewer").
_ENDS_ONE_FEWER = re.compile(
    r"first\s*(?:/|and)\s*(?:the )?last stages? (?:has |have |hold |with )?one (?:transformer )?"
    r"layer (?:fewer|less)"
    r"|one (?:transformer )?layer (?:fewer|less)[^.;]*\bfirst and (?:the )?last stages?"
    r"|reduce one (?:transformer )?layer each from the first and (?:the )?last stages?",
    re.IGNORECASE,
)


def ends_one_fewer(rec: Record) -> bool:
    """Whether the record says its first and last pipeline stages hold one layer fewer."""
    return bool(_ENDS_ONE_FEWER.search(f"{rec.parallelism.get('schedule', '')} {rec.notes}"))


def pipeline_split(rec: Record, par: dict[str, Any], layers: int | None,
                   notes: list[str]) -> dict[str, Any]:  # fmt: skip
    """The parallelism keys that give ``rec`` the split its framework made (empty: the
    translation's own, an even split or the source convention's ``layer_split``). Under the
    interleaved schedule the layer the first and the last stages lack is their first and
    last model chunk's: k - 1 there, k on every other chunk (Dubey et al. 2024 §3.3.2: "the
    first model chunk on the first stage has only the embedding, and the last model chunk on
    the last stage has only output projection and loss")."""
    pp, v = int(par.get("pp") or 1), int(par.get("virtual_stages") or 1)
    if pp == 1 or not layers:
        return {}
    key = rec.source_key
    if v == 1 and ends_one_fewer(rec) and (layers + 2) % pp == 0 and pp > 2:
        k = (layers + 2) // pp
        notes.append(f"pipeline split: the record's first and last stages one layer fewer: "
                     f"{k - 1}, {k} x {pp - 2}, {k - 1} layers per stage")  # fmt: skip
        return {"first_stage_layers": k - 1, "last_stage_layers": k - 1}
    if v > 1 and ends_one_fewer(rec) and (layers + 2) % (pp * v) == 0:
        k = (layers + 2) // (pp * v)
        split = [k] * (pp * v)
        split[0] -= 1
        split[-1] -= 1
        notes.append(f"pipeline split: the record's first and last stages one layer fewer, "
                     f"on their first and last model chunk: "
                     f"{_short(split, 'chunk')} (chunk j·pp + r)")  # fmt: skip
        return {"layer_split": split}
    preset = (
        find_preset(str(rec.model.get("name", "")), loose=True)
        if key == "megatron_bridge"
        else None
    )
    if preset in MBRIDGE_LAYOUTS and (pp, v) in MBRIDGE_LAYOUTS[preset][0]:
        layouts, where = MBRIDGE_LAYOUTS[preset]
        where = MBRIDGE_RECIPE_LAYOUTS.get((preset, (pp, v)), where)
        split = list(layouts[(pp, v)])  # (a copy: the scenario data is the caller's to change)
        notes.append(f"pipeline split: Megatron-Bridge's {preset} layout for pp {pp}, vp {v} "
                     f"({where}): {_short(split, 'chunk')}")  # fmt: skip
        return {"layer_split": split}
    if key == "megatron_bridge" and str(rec.model.get("name", "")).upper() in MBRIDGE_ACCOUNT_FOR:
        notes.append("pipeline split: Megatron-Bridge's Llama 3.1 405B and Qwen3-235B-A22B "
                     "recipes count the embedding and the loss as a layer each "
                     "(account_for_embedding/loss_in_pipeline_split, recipes/llama/llama3.py, "
                     "recipes/qwen/qwen3_moe.py at 00b7660b)")  # fmt: skip
        return {"account_for_embedding": True, "account_for_loss": True}
    if key == "bloom_chronicles" and pp > 1:
        text = f"{rec.source} {rec.notes}"
        if "type:transformer|embed" in text:
            notes.append("pipeline split: the source's partition_method 'type:transformer|embed' "
                         "(the embeddings weigh one layer each): embedding_as_layer")  # fmt: skip
            return {"layer_split": "embedding_as_layer"}
        if par.get("layer_split", "uniform") == "uniform" and layers % pp:
            split = deepspeed_balanced_2022(layers, pp)
            notes.append(f"pipeline split: DeepSpeed's partition_balanced over type:transformer "
                         f"(Megatron-DeepSpeed's gpt_model.py before 00f5f889; DeepSpeed "
                         f"runtime/utils.py before 2bdf061f): {_short(split)}")  # fmt: skip
            return {"layer_split": split}
    if key == "torchtitan" and "202412" in rec.source and layers % (pp * v):
        # the virtual stages are the importer's (2 per rank for Interleaved1F1B without split
        # points, 9dec370a and 4a950ea alike); the split of 9dec370a is not 4a950ea's
        split = torchtitan_split_2412(layers, pp * v)
        notes.append(f"pipeline split: torchtitan 9dec370's generated split points "
                     f"(pipelining_utils.py generate_split_points): {_short(split)}")  # fmt: skip
        return {"layer_split": split}
    return {}


def _short(split: list[int], unit: str = "stage") -> str:
    """[7, 8, 8, 8, 7] -> '7, 8 x 3, 7 layers per stage' (runs of equal counts)."""
    runs: list[list[int]] = []
    for n in split:
        if runs and runs[-1][0] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
    return ", ".join(f"{n}" if c == 1 else f"{n} x {c}" for n, c in runs) + f" layers per {unit}"
