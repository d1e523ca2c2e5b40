"""Decoder layers per pipeline chunk when the split is given by counts: Megatron-Core's uneven
first / last stages, its ``--account-for-embedding/loss-in-pipeline-split``, and an explicit
per-chunk list (``parallelism.layer_split: [7, 8, ..., 7]``).

Pure integer rules, kept in ``spec`` so that the layout check (``spec.scenario.check_layout``)
can refuse a split that does not work, naming the keys and the numbers; ``layout.partition``
turns the counts into the chunks every cost reads.

Chunk order: virtual stage ``k = j·pp + r`` is model chunk ``j`` of pipeline rank ``r``
(Megatron's interleaved layout, Narayanan et al. 2021 §2.2.2; ``schedules.stage_to_rank``);
the chunks hold consecutive layers in the order of ``k``."""

from __future__ import annotations

from typing import Any

from simtrain.errors import ConfigError

# Megatron-LM NVIDIA/Megatron-LM@d98e8a64: megatron/core/transformer/transformer_block.py
# get_num_layers_to_build, transformer_layer.py get_transformer_layer_offset, the checks of
# transformer_config.py TransformerConfig.__post_init__ ("Uneven PP") and
# megatron/training/arguments.py validate_args.
MEGATRON_REF = "Megatron-LM d98e8a64 transformer_block.py get_num_layers_to_build"


def megatron_chunk_layers(layers: int, pp: int, v: int = 1, first: int = 0, last: int = 0,
                          embedding: bool = False, loss: bool = False) -> list[int]:  # fmt: skip
    """Decoder layers of each virtual stage ``k = j·pp + r``, by Megatron-Core's
    ``get_num_layers_to_build`` (``first``/``last`` 0 = unset, i.e. ``None`` there):

    - first/last set: rank 0 builds ``first``, rank pp-1 ``last``, every other rank
      ``(layers - first - last) / (pp - #set)``; each rank's count is divided by ``v`` for
      each of its chunks;
    - else ``n = layers + embedding + loss`` layers, ``n / pp`` per rank, ``/ v`` per chunk, and
      the first chunk of rank 0 builds one layer fewer when the embedding counts as one, the last
      chunk of rank pp-1 one fewer when the loss does.

    The offsets of ``get_transformer_layer_offset`` make the chunks consecutive in the order of
    ``k``. Call :func:`megatron_split_problem` first: this assumes the numbers divide."""
    if first or last:
        middle_stages = pp - (1 if first else 0) - (1 if last else 0)
        middle = (layers - first - last) // middle_stages if middle_stages > 0 else 0
        per_rank = [middle] * pp
        if first:
            per_rank[0] = first
        if last:
            per_rank[pp - 1] = last
    else:
        per_rank = [(layers + embedding + loss) // pp] * pp
    out = [per_rank[k % pp] // v for k in range(pp * v)]
    if not (first or last):
        out[0] -= embedding
        out[-1] -= loss
    return out


def megatron_split_problem(layers: int, pp: int, v: int, first: int, last: int,
                           embedding: bool, loss: bool) -> tuple[str, str, Any] | None:  # fmt: skip
    """Why Megatron-Core refuses this split: (key, message, value), or None. The checks of
    TransformerConfig.__post_init__ (uneven PP: each set count > 0 and divisible by the virtual
    stages; the middle layers > 0 exactly when there are middle stages, divisible by them, and
    per middle rank by the virtual stages; first/last not with the account-for flags) and of
    get_num_layers_to_build (account-for: ``(layers + embedding + loss) / pp`` per rank,
    divisible by ``v``)."""
    fk, lk = "parallelism.first_stage_layers", "parallelism.last_stage_layers"
    for key, n in ((fk, first), (lk, last)):
        if n < 0:
            return key, "must be a number of layers >= 1, or 0 (unset)", n
    if (first or last) and (embedding or loss):
        key = fk if first else lk
        return key, ("cannot be combined with parallelism.account_for_embedding / "
                     "account_for_loss (Megatron-Core refuses both at once)"), first or last  # fmt: skip
    vtxt = f" x virtual_stages = {v}" if v > 1 else ""
    if first or last:
        key, n = (fk, first) if first else (lk, last)
        if pp == 1:
            return key, "needs pipeline parallelism (parallelism.pp > 1)", n
        for k2, n2 in ((fk, first), (lk, last)):
            if n2 and n2 % v:
                return (
                    k2,
                    f"must be a multiple of parallelism.virtual_stages = {v} (each "
                    "model chunk of the stage holds the same number of layers)",
                    n2,
                )
        stages = pp - (1 if first else 0) - (1 if last else 0)
        middle = layers - first - last
        both = (
            f"model.layers - first_stage_layers - last_stage_layers = {layers} - {first} - {last}"
        )
        if stages == 0:
            if middle:
                return (
                    key,
                    f"{both} = {middle}, but pp = {pp} leaves no middle stage for "
                    "them: first + last must equal model.layers",
                    n,
                )
            return None
        if middle <= 0 or middle % (stages * v):
            return key, (f"{both} = {middle} middle layers must split evenly, and at least one "
                         f"each, over the {stages} middle stage(s){vtxt}"), n  # fmt: skip
        return None
    n = layers + embedding + loss
    if n % (pp * v):
        if not (embedding or loss):
            # (virtual stages that pp alone would divide are the key at fault)
            if v > 1 and layers % pp == 0:
                return "parallelism.virtual_stages", (f"pp x virtual_stages = {pp} x {v} must "
                                                      f"divide model.layers = {layers}"), v  # fmt: skip
            return "parallelism.pp", (f"pp x virtual_stages = {pp * v} must divide "
                                      f"model.layers = {layers}"), pp  # fmt: skip
        what = " + ".join(x for x, on in (("1 (embedding)", embedding), ("1 (loss)", loss)) if on)
        key = "parallelism.account_for_embedding" if embedding else "parallelism.account_for_loss"
        total = f" (= {pp * v})" if v > 1 else ""
        return key, (f"model.layers + {what} = {n} must be a multiple of pp = {pp}{vtxt}"
                     f"{total}"), True  # fmt: skip
    return None


def explicit_split_problem(layers: int, pp: int, v: int,
                           split: tuple[int, ...]) -> tuple[str, str, Any] | None:  # fmt: skip
    """Why an explicit ``layer_split`` list does not fit: one entry per chunk (``pp·v``, in the
    chunk order above), summing to ``model.layers``, each >= 1 but the first and the last, which
    hold the embedding and the output layer + loss (and any MTP modules) and may hold no decoder
    layer (Megatron-Core's pipeline layouts allow such stages: ``E|t*3|...|L``; DeepSeek-V3
    balances its embedding, output head and MTP module on one rank this way)."""
    key = "parallelism.layer_split"
    chunks = pp * v
    if len(split) != chunks:
        per = (f"one per model chunk: pp x virtual_stages = {pp} x {v} = {chunks}, in chunk "
               "order j·pp + r (chunk j of rank r)") if v > 1 else f"one per pipeline stage (pp = {pp})"  # fmt: skip
        return key, f"has {len(split)} entries: give {per}", list(split)
    bad = [i for i, n in enumerate(split) if n < 0 or (n == 0 and 0 < i < chunks - 1)]
    if bad:
        return (
            key,
            f"entry {bad[0]} is {split[bad[0]]}: every stage holds at least one layer (the "
            "first and the last may hold none: the embedding, the output layer)",
            list(split),
        )
    if sum(split) != layers:
        return key, f"sums to {sum(split)}, but model.layers = {layers}", list(split)
    return None


def chunk_layer_counts(layers: int, p: Any) -> list[int] | None:
    """Decoder layers per virtual stage of a :class:`spec.scenario.ParallelSpec` whose split is
    given by counts (an explicit list, or ``uniform`` with or without Megatron's first/last and
    account-for keys); None for the splits computed from the model (``compute_balanced``,
    ``embedding_as_layer``). Assumes :func:`split_problem` found nothing."""
    split = p.layer_split
    if isinstance(split, tuple):
        return list(split)
    if split != "uniform":
        return None
    return megatron_chunk_layers(layers, p.pp, p.virtual_stages, p.first_stage_layers,
                                 p.last_stage_layers, p.account_for_embedding,
                                 p.account_for_loss)  # fmt: skip


def uneven_keys(p: Any) -> list[str]:
    """The Megatron uneven-split keys set on ``p``."""
    return [k for k in ("first_stage_layers", "last_stage_layers", "account_for_embedding",
                        "account_for_loss") if getattr(p, k)]  # fmt: skip


def split_problem(layers: int, p: Any) -> tuple[str, str, Any] | None:
    """Why ``p``'s count-given split (see :func:`chunk_layer_counts`) does not work, or None:
    the plain uniform split needs ``pp x virtual_stages`` to divide the layers."""
    keys = uneven_keys(p)
    if isinstance(p.layer_split, tuple):
        if keys:
            return f"parallelism.{keys[0]}", ("cannot be combined with an explicit "
                                              "parallelism.layer_split list (the list gives "
                                              "every stage's layers)"), getattr(p, keys[0])  # fmt: skip
        return explicit_split_problem(layers, p.pp, p.virtual_stages, p.layer_split)
    if keys and p.layer_split != "uniform":
        return f"parallelism.{keys[0]}", (f"applies to layer_split: uniform (Megatron's split), "
                                          f"not {p.layer_split}"), getattr(p, keys[0])  # fmt: skip
    if keys or (p.layer_split == "uniform" and p.pp > 1):
        return megatron_split_problem(layers, p.pp, p.virtual_stages, p.first_stage_layers,
                                      p.last_stage_layers, p.account_for_embedding,
                                      p.account_for_loss)  # fmt: skip
    return None


def parse_split_list(split: Any, file: str, names: tuple[str, ...]) -> tuple[int, ...]:
    """``parallelism.layer_split`` given as a list: a non-empty list of integers (its length,
    entries and sum are checked with the layout, :func:`explicit_split_problem`)."""
    ints = isinstance(split, list | tuple) and all(type(n) is int for n in split)
    if not split or not ints:
        raise ConfigError(file, "parallelism.layer_split", "must be one of the names or a "
                          "non-empty list of integers (layers per stage)", split,
                          " | ".join(names) + " | [n0, n1, ...]")  # fmt: skip
    return tuple(split)
