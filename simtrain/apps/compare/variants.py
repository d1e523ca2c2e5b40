"""Variants: the built-in techniques (overrides as functions of the current scenario) and
the parsing of ``--variants`` (built-in names and ad-hoc ``KEY=VALUE`` lists)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from simtrain.errors import ConfigError
from simtrain.spec.scenario import MAX_NAME, Scenario, runtime_off_overrides
from simtrain.spec.yamlfile import parse_yaml

ZERO_GPUS_FOR_ONE_GPU = 8  # a 1-GPU scenario gets ZeRO over one node of this many GPUs

# A variant's overrides as a function of the current scenario: (overrides, note for the reader).
OverrideFn = Callable[[Scenario], tuple[tuple[str, ...], str]]


def _fixed(*overrides: str, note: str = "") -> OverrideFn:
    return lambda sc: (tuple(overrides), note)


def _half_dtype(sc: Scenario) -> str:
    """bf16 where the GPU has bf16 tensor cores, else fp16 (e.g. V100)."""
    try:
        bf16 = sc.hardware.peak("bf16")
    except KeyError:
        bf16 = 0.0
    return "bf16" if bf16 > 0 else "fp16"


def _amp(sc: Scenario) -> tuple[tuple[str, ...], str]:
    dtype = _half_dtype(sc)
    note = "" if dtype == "bf16" else f"{sc.hardware.name} has no bf16 tensor cores: fp16"
    return (f"training.precision={dtype}",), note


def _half_batch(sc: Scenario) -> tuple[tuple[str, ...], str]:
    t = sc.training
    if t.micro_batch % 2:
        raise ConfigError(
            sc.source or None, "--variants", "half_batch needs an even training.micro_batch",
            t.micro_batch,
        )  # fmt: skip
    return (
        (
            f"training.micro_batch={t.micro_batch // 2}",
            f"training.global_batch={t.global_batch // 2}",
        ),
        f"micro-batch {t.micro_batch} -> {t.micro_batch // 2}, global batch {t.global_batch} -> "
        f"{t.global_batch // 2} sequences per step",
    )


def _grad_accum(k: int) -> OverrideFn:
    def fn(sc: Scenario) -> tuple[tuple[str, ...], str]:
        t = sc.training
        if t.micro_batch % k:
            raise ConfigError(
                sc.source or None, "--variants", f"grad_accum_{k} needs training.micro_batch "
                f"divisible by {k}", t.micro_batch,
            )  # fmt: skip
        mb = t.micro_batch // k
        m = t.global_batch // (mb * sc.parallelism.dp)
        return (
            (f"training.micro_batch={mb}",),
            f"micro-batch {t.micro_batch} -> {mb}: {m} accumulation steps, same global batch "
            f"{t.global_batch}",
        )

    return fn


def _linear_modules(sc: Scenario) -> str:
    return "[" + ", ".join(sc.model.linear_weight_shapes()) + "]"


def _qlora(sc: Scenario) -> tuple[tuple[str, ...], str]:
    return (
        "training.peft.method=qlora",
        f"training.precision={_half_dtype(sc)}",
        f"training.peft.target_modules={_linear_modules(sc)}",
    ), "NF4 base weights, LoRA on every linear module (QLoRA paper setting)"


def _prompt(sc: Scenario) -> tuple[tuple[str, ...], str]:
    """Prompt tuning (Lester et al. 2021): its soft tokens take positions, so a model with
    learned positions whose sequence already fills them trains on that many fewer data tokens
    (GPT-2 XL at 1,024: 992 + 32 virtual)."""
    m, t = sc.model, sc.training
    n = t.peft.prompt_length
    ov = ("training.peft.method=prompt",)
    if m.positions == "learned" and t.seq_len + n > m.max_positions:
        s = m.max_positions - n
        if s < 1:
            raise ConfigError(sc.source or None, "--variants", f"prompt: {n} soft tokens leave "
                              f"no position of model.max_positions = {m.max_positions} for data",
                              n)  # fmt: skip
        return ov + (f"training.seq_len={s}",), (
            f"{n} soft tokens take learned positions: sequence {t.seq_len} -> {s} data tokens"
        )
    return ov, ""


def _zero(stage: int) -> OverrideFn:
    """ZeRO-``stage`` with dp = all GPUs of the scenario. A scenario with dp x cp = 1 is re-laid
    out as pure data parallelism over its GPUs (1 GPU: over one node of 8); every GPU keeps its
    micro-batch size and accumulation steps, so the global batch grows with dp. With context
    parallelism ZeRO shards over the dp x cp ranks already there."""

    def fn(sc: Scenario) -> tuple[tuple[str, ...], str]:
        p, t = sc.parallelism, sc.training
        ov = [f"parallelism.zero_stage={stage}"]
        note = ""
        if p.dp_cp == 1:
            gpus = sc.cluster.gpus
            if gpus == 1:
                gpus = min(ZERO_GPUS_FOR_ONE_GPU, sc.hardware.gpus_per_node)
                ov += ["cluster.nodes=1", f"cluster.gpus_per_node={gpus}"]
                note = f"the scenario has 1 GPU: ZeRO over {gpus} GPUs of one node"
            else:
                note = f"dp was 1: re-laid out as data parallelism over all {gpus} GPUs"
            gb = t.micro_batch * gpus * sc.num_microbatches
            ov += [
                f"parallelism.dp={gpus}", "parallelism.tp=1", "parallelism.pp=1",
                "parallelism.virtual_stages=1", "parallelism.sequence_parallel=false",
                f"training.global_batch={gb}",
            ]  # fmt: skip
            note += (f"; each GPU keeps {sc.num_microbatches} micro-batch(es) of "
                     f"{t.micro_batch}, so the global batch is {t.global_batch} -> {gb}")  # fmt: skip
        if p.dp_mode != "ddp":
            ov.append("parallelism.dp_mode=ddp")
        # the runtime options the new layout has nothing for (ZeRO-3's no post-step parameter
        # all-gather; tp 1's no TP collectives)
        relaid = p.dp_cp == 1  # (tp 1, pp 1, no sequence parallelism: above)
        off = runtime_off_overrides(
            sc,
            1 if relaid else p.tp,
            stage,
            p.ep,
            pp=1 if relaid else p.pp,
            sequence_parallel=False if relaid else p.sequence_parallel,
        )
        if off:
            ov += off
            note = "; ".join(x for x in (note, "off, as the layout has nothing for them: "
                                         + ", ".join(o.split("=")[0] for o in off)) if x)  # fmt: skip
        return tuple(ov), note

    return fn


BUILTIN_VARIANTS: dict[str, tuple[str, OverrideFn]] = {
    "amp": ("mixed precision: 16-bit weights, gradients, activations; fp32 master + Adam", _amp),
    "checkpointing": ("gradient checkpointing: keep block inputs, recompute the forward",
                      _fixed("training.recompute=full")),
    "selective_recompute": ("recompute only the attention core (Korthikanti et al. 2022)",
                            _fixed("training.recompute=selective")),
    "half_batch": ("halve the micro-batch and the global batch", _half_batch),
    "grad_accum_4": ("micro-batch / 4, same global batch (4x gradient accumulation)",
                     _grad_accum(4)),
    "lora": ("LoRA: frozen base, low-rank trainable matrices (default r=8 on q, v)",
             _fixed("training.peft.method=lora")),
    "qlora": ("QLoRA: 4-bit NF4 base + LoRA on all linear modules, 16-bit compute", _qlora),
    "prefix": ("prefix tuning: trainable key/value prefixes per layer",
               _fixed("training.peft.method=prefix")),
    "prompt": ("prompt tuning: trainable soft tokens", _prompt),
    "adapter": ("bottleneck adapters after attention and MLP",
                _fixed("training.peft.method=adapter")),
    "linear_probe": ("train only a new head on frozen features",
                     _fixed("training.peft.method=linear_probe")),
    "offload": ("optimizer states and master weights in CPU memory, CPU Adam",
                _fixed("training.offload.optimizer=true")),
    "zero1": ("ZeRO-1: optimizer states sharded over data parallelism", _zero(1)),
    "zero2": ("ZeRO-2: + gradients sharded", _zero(2)),
    "zero3": ("ZeRO-3: + parameters sharded", _zero(3)),
}  # fmt: skip

ADHOC_HELP = "NAME:KEY=VALUE,KEY=VALUE or KEY=VALUE,..."


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    description: str
    overrides: OverrideFn
    adhoc: bool = False  # the user's NAME:KEY=VALUE,... (not a built-in)


_KEY_START = re.compile(r",\s*(?=[A-Za-z_][\w.]*\s*=)")


def _split_assignments(text: str) -> tuple[str, ...]:
    """``a.b=1,c=[x, y],d=q,k`` -> ("a.b=1", "c=[x, y]", "d=q,k"): a comma starts a new
    assignment only when a ``key=`` follows it, so list values keep their commas."""
    parts = [p.strip() for p in _KEY_START.split(text) if p.strip()]
    for p in parts:
        if "=" not in p:
            raise ConfigError(None, "--variants", "expected KEY.PATH=VALUE", p, ADHOC_HELP)
    return tuple(parts)


def parse_variant(spec: str) -> Variant:
    """One variant: a built-in name, ``NAME:KEY=VALUE,...`` or ``KEY=VALUE,...``."""
    spec = spec.strip()
    if spec in BUILTIN_VARIANTS:
        desc, fn = BUILTIN_VARIANTS[spec]
        return Variant(spec, desc, fn)
    head, sep, rest = spec.partition(":")
    if sep and "=" not in head and head.strip():
        name, body = head.strip(), rest
    elif "=" in spec:
        body = spec
        name = ",".join(a.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + a.split("=", 1)[1]
                        for a in _split_assignments(spec))  # fmt: skip
        # (a name made of the values: cut, and printable)
        name = _cut("".join(c if c.isprintable() else "?" for c in name), MAX_NAME)
    else:
        raise ConfigError(None, "--variants", "unknown variant", spec,
                          ", ".join(BUILTIN_VARIANTS) + f", or {ADHOC_HELP}")  # fmt: skip
    if len(name) > MAX_NAME or not name.isprintable():
        # (a name of 100,000 characters took 91 s to draw; a zero-width or $...$ one crashed
        # the plots: a fuzz campaign)
        raise ConfigError(None, "--variants", f"a variant's name must be at most {MAX_NAME} "
                          "printable characters", _cut(name, 40))  # fmt: skip
    overrides = _split_assignments(body)
    if not overrides:
        raise ConfigError(None, "--variants", "empty variant", spec, ADHOC_HELP)
    _no_key_twice(name, overrides)
    return Variant(name, "ad hoc: " + ", ".join(overrides), _fixed(*overrides), adhoc=True)


def _mapping_value(assignment: str) -> Any:
    """The value of ``KEY=VALUE`` as YAML (what ``--set`` reads), None if it does not parse."""
    try:
        return parse_yaml(assignment.split("=", 1)[1], "--variants")
    except ConfigError:
        return None


def _holds(value: Any, path: str) -> bool:
    """Whether mapping ``value`` has the dotted ``path`` (the variant gives it itself)."""
    for k in path.split("."):
        if not isinstance(value, dict) or k not in value:
            return False
        value = value[k]
    return True


def check_keeps_base(v: Variant, overrides: tuple[str, ...], base: Sequence[str]) -> None:
    """An ad-hoc variant's mapping (``training.peft={method: lora}``) replaces the whole of
    it, so a baseline ``--set`` inside it (``training.peft.rank=4``) would be lost without a
    word (a fuzz campaign: rank 8 trained instead of 4), as ``--set`` refuses the same pair;
    a variant's own value for a baseline key is what it compares, and is kept."""
    if not v.adhoc:
        return
    for a in overrides:
        key = _key_path(a)
        given = _mapping_value(a)
        lost = [b for b in base if _key_path(b).startswith(key + ".")
                and not _holds(given, _key_path(b)[len(key) + 1 :])]  # fmt: skip
        if lost:
            raise ConfigError(None, "--variants", f"variant {_cut(v.name, 40)!r} sets "
                              f"{_cut(a, 40)!r}, which replaces the whole of {_cut(key, 40)}, "
                              f"so --set {_cut(lost[0], 40)!r} would be silently lost; set the "
                              "keys inside it instead")  # fmt: skip


def _cut(text: str, n: int = 60) -> str:
    text = text.strip()
    return text if len(text) <= n else text[: n - 3] + "..."


def _key_path(assignment: str) -> str:
    return ".".join(k.strip() for k in assignment.split("=", 1)[0].split(".") if k.strip())


def _no_key_twice(name: str, overrides: tuple[str, ...]) -> None:
    """One variant sets each key once: ``training.micro_batch=2,training.micro_batch=4`` is one
    variant whose second value would silently win (two variants need names, ``a:...,b:...``).
    A key and a key inside it (``training.peft={...}`` and ``training.peft.rank=4``) also
    collide: the later one overwrites part or all of the earlier."""
    seen: list[tuple[str, str]] = []
    for a in overrides:
        key = _key_path(a)
        for k, first in seen:
            f, b = _cut(first), _cut(a)
            if key == k:
                raise ConfigError(
                    None, "--variants", f"variant {_cut(name, 40)!r} sets {_cut(key, 40)} twice, "
                    f"{f!r} and {b!r} (the second would silently win); to compare both, name each "
                    f"variant: a:{f},b:{b}",
                )  # fmt: skip
            if key.startswith(k + ".") or k.startswith(key + "."):
                raise ConfigError(
                    None, "--variants", f"variant {_cut(name, 40)!r} sets {_cut(k, 40)} and "
                    f"{_cut(key, 40)}, which overlap: "
                    f"{b!r} overwrites part of {f!r}; set each key once",
                )  # fmt: skip
        seen.append((key, a))


def split_variants(text: str) -> list[str]:
    """The CLI's ``--variants`` string -> variant specs.

    Commas separate variants, except inside brackets and inside an ad-hoc variant: after
    ``NAME:KEY=VALUE`` or ``KEY=VALUE``, further ``KEY=VALUE`` items belong to it (and items that
    are not built-in names continue its last value, e.g. a list ``q,k,v``). Name ad-hoc variants
    (``a:...,b:...``) to put two of them side by side.
    """
    tokens: list[str] = []
    depth, cur = 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            tokens.append(cur)
            cur = ""
        else:
            cur += ch
    tokens.append(cur)
    specs: list[str] = []
    adhoc = False
    for tok in (t.strip() for t in tokens):
        if not tok:
            continue
        named = ":" in tok and "=" not in tok.split(":", 1)[0] and "=" in tok
        if named or ("=" in tok and not adhoc):
            specs.append(tok)
            adhoc = True
        elif "=" in tok or (adhoc and tok not in BUILTIN_VARIANTS):
            specs[-1] += "," + tok
        else:
            specs.append(tok)
            adhoc = False
    return specs
