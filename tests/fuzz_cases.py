"""Hostile input for the CLI (issue 15): Hypothesis strategies, a case runner and the oracles.

A :class:`Case` is a command line plus the files it reads (scenario, hardware profile, HF
``config.json``, plan, measured-run records), written as YAML/JSON *text* (or raw bytes, a
folder, a FIFO, a symlink loop). Strategies draw valid-but-unusual inputs (extreme but legal
layouts, every schedule, ZeRO stage, precision, PEFT method, recompute, layer split,
cross-entropy, offload, dp_mode, cluster shape, huge and tiny numbers) and, from those, broken ones
(wrong types, missing and unknown keys, NaN/inf, negative and huge numbers, deep nesting, alias
bombs, non-UTF-8, empty files, folders and FIFOs as paths, the wrong kind of file, long strings).

:func:`run_case` runs one case in this process through ``click.testing.CliRunner`` on
``simtrain.cli.main`` in a folder of its own, under an address-space limit (``RLIMIT_AS``: a
huge allocation becomes a ``MemoryError`` instead of taking the machine's memory), and returns an
:class:`Outcome` whose ``failures`` the oracles fill in:

- no traceback: the exit code is 0 or 2 (3 for ``--strict``), never an uncaught exception;
- exit 2 prints one line on stderr, ``error: ...``, of at most :data:`MAX_MESSAGE_CHARS`;
- with a :class:`Timing` (the long campaign's, ``benchmarks/fuzz_campaign.py``: this module
  reads no clock, so no test depends on the machine's load), no case runs over its limit;
- a successful output keeps its invariants (:func:`check_output`: one function, to swap for
  ``tests/test_invariants.py``'s checks when they land).

Used by ``tests/test_fuzz.py`` (the quick profile, ~1,000 cases) and
``benchmarks/fuzz_campaign.py`` (the long campaign, with a worker pool and reproducers).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import math
import os
import re
import resource
import shlex
import shutil
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from simtrain.apps.compare.variants import BUILTIN_VARIANTS
from simtrain.schedules.registry import SCHEDULES
from simtrain.spec.hardware import HARDWARE_DIR
from simtrain.spec.model import ALIASES, MLP_KINDS, POSITION_KINDS, PRESETS
from simtrain.spec.precision import MASTER_WEIGHTS, OPTIMIZER_STATE_DTYPES, PRECISIONS
from simtrain.spec.scenario import (
    CROSS_ENTROPY,
    DP_MODES,
    LAYER_SPLITS,
    LORA_TARGETS,
    OPTIMIZERS,
    PEFT_METHODS,
    RECOMPUTE,
)

MAX_MESSAGE_CHARS = 600  # an exit-2 message, with the case folder's path taken out: key and value
# echoes are cut to 80 characters each and lists of allowed values to 400, the whole message
# to 560 (simtrain.errors MAX_ECHO, MAX_ALLOWED, MAX_MESSAGE)
ALLOWED_EXIT_CODES = (0, 2, 3)  # 3: a scenario that does not fit, under --strict
MEMORY_HEADROOM_BYTES = 2 << 30  # address space a case may add to the process

# Command families: what each case runs (see _argv_for).
FAMILIES = ("memory", "memory_json", "run", "schedule", "topology", "compare", "plan", "validate")
SCHEDULE_NAMES = tuple(SCHEDULES)
PRESET_NAMES = tuple(PRESETS)
SHIPPED_HARDWARE = tuple(sorted(p.stem for p in HARDWARE_DIR.glob("*.yaml")))
SCENARIO_FILE, HARDWARE_FILE, CONFIG_FILE = "scenario.yaml", "hw.yaml", "config.json"
PLAN_FILE, RECORDS_FILE, OUT_DIR = "plan.yaml", "records.yaml", "out"


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class FileSpec:
    """One path of a case, relative to its folder: a file with ``data``, a folder, a FIFO or a
    symlink (``data`` = its target)."""

    name: str
    kind: str = "file"  # file | dir | fifo | symlink
    data: bytes = b""


@dataclass(frozen=True)
class Case:
    family: str
    argv: tuple[str, ...]
    files: tuple[FileSpec, ...] = ()
    expect_valid: bool = False  # drawn as valid (no mutation): a rejection is worth a look
    mutation: str = ""  # what was broken, for the reader

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = [
            {"name": f.name, "kind": f.kind, "data_b64": base64.b64encode(f.data).decode()}
            for f in self.files
        ]
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> Case:
        files = tuple(
            FileSpec(f["name"], f["kind"], base64.b64decode(f["data_b64"])) for f in d["files"]
        )
        return Case(d["family"], tuple(d["argv"]), files, d["expect_valid"], d["mutation"])

    def command_line(self) -> str:
        return "simtrain " + " ".join(shlex.quote(a) for a in self.argv)


def materialize(case: Case, folder: Path) -> None:
    """Write the case's files into ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in case.files:
        p = folder / f.name
        p.parent.mkdir(parents=True, exist_ok=True)
        if f.kind == "file":
            p.write_bytes(f.data)
        elif f.kind == "dir":
            p.mkdir(exist_ok=True)
        elif f.kind == "fifo":
            os.mkfifo(p)
        elif f.kind == "symlink":
            os.symlink(f.data.decode(), p)


def write_reproducer(case: Case, folder: Path, outcome: Outcome | None = None) -> None:
    """A folder that reproduces the case: its files, ``cmd.sh`` (run it from the folder),
    ``case.json`` and, if given, ``outcome.txt``."""
    materialize(case, folder)
    (folder / "cmd.sh").write_text(f'#!/bin/sh\ncd "$(dirname "$0")"\n{case.command_line()}\n')
    (folder / "case.json").write_text(json.dumps(case.to_json(), indent=1))
    if outcome is not None:
        (folder / "outcome.txt").write_text(outcome.describe())


# ---------------------------------------------------------------------------------------------
# YAML text: documents with raw YAML fragments spliced in


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class Raw(str):
    """A YAML fragment written verbatim where a value (or key) goes: ``1e999``, an alias bomb,
    ``[[[...]]]``, ``!!binary ...``. One line, flow style."""


def to_yaml(doc: Any, flow: bool = False) -> str:
    """``doc`` as YAML text (block style unless ``flow``); :class:`Raw` values verbatim."""
    raws: list[str] = []

    def swap(x: Any) -> Any:
        if isinstance(x, Raw):
            raws.append(str(x))
            return f"zzraw{len(raws) - 1}zz"
        if isinstance(x, dict):
            return {swap(k): swap(v) for k, v in x.items()}
        if isinstance(x, list):
            return [swap(v) for v in x]
        return x

    text = yaml.dump(
        swap(doc), Dumper=_DUMPER, sort_keys=False, default_flow_style=True if flow else False,
        allow_unicode=True, width=1 << 30,
    )  # fmt: skip
    if text.endswith("\n...\n"):
        text = text[: -len("...\n")]
    for i in reversed(range(len(raws))):  # zzraw10zz before zzraw1zz
        text = re.sub(rf"'?zzraw{i}zz'?", lambda _m, i=i: raws[i], text)
    return text


def to_flow(value: Any) -> str:
    """One value as one line of YAML (for ``--set`` and ad-hoc variants)."""
    if isinstance(value, Raw):
        return str(value)
    return to_yaml(value, flow=True).strip()


def alias_bomb(levels: int, width: int) -> Raw:
    """The "billion laughs": ``width ** levels`` leaves from a few hundred bytes of YAML."""
    parts = [f"&a0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        parts.append(f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return Raw("[" + ", ".join(parts) + "]")


def deep_list(depth: int) -> Raw:
    return Raw("[" * depth + "1" + "]" * depth)


def deep_map(depth: int) -> Raw:
    return Raw("{a: " * depth + "1" + "}" * depth)


# ---------------------------------------------------------------------------------------------
# Small strategy helpers


class Drawer:
    """``draw`` of a composite strategy plus a random generator Hypothesis seeded.

    Structural choices (which command, valid or broken, which key to break, how) come from
    ``rnd``, so that their weights hold: Hypothesis draws bounded integers toward their lower
    end (``integers(0, 99) < 5`` came out true 39 % of the time over 2,000 examples, not 5 %),
    which would swamp the mix with the first option. Values (names, text, floats, integers)
    are Hypothesis's own draws, whose edge cases are the point.
    """

    def __init__(self, draw: Any) -> None:
        self._draw = draw
        self.rnd = draw(st.randoms(use_true_random=True))

    def __call__(self, strategy: st.SearchStrategy[Any]) -> Any:
        return self._draw(strategy)


def integer(draw: Drawer, lo: int, hi: int) -> int:
    """An integer in [lo, hi], uniformly."""
    return draw.rnd.randint(lo, hi)


def coin(draw: Drawer, p: float) -> bool:
    """True with probability about ``p`` (in hundredths)."""
    return integer(draw, 0, 99) < round(100 * p)


def choose(draw: Drawer, *options: Any) -> Any:
    """One of ``options`` (repeat an option to weight it)."""
    return options[integer(draw, 0, len(options) - 1)]


def choose_some(draw: Drawer, options: tuple, lo: int, hi: int) -> list[Any]:
    """Between ``lo`` and ``hi`` distinct options, in the options' order."""
    k = integer(draw, lo, min(hi, len(options)))
    chosen = {integer(draw, 0, len(options) - 1) for _ in range(k)}
    return [o for i, o in enumerate(options) if i in chosen] or [options[0]]


def divisors(n: int, limit: int = 1 << 30) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


def odd_number(draw: Drawer, lo: float, hi: float) -> float:
    """A float in [lo, hi] drawn log-uniformly (huge and tiny values as often as ordinary)."""
    e = integer(draw, 0, 1000) / 1000 * (math.log10(hi) - math.log10(lo)) + math.log10(lo)
    return float(f"{10**e:.4g}")


NAME_CHARS = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))
TEXT = st.text(NAME_CHARS, max_size=30)
SIMPLE_NAME = st.from_regex(r"[a-z][a-z0-9_\-]{0,20}", fullmatch=True)
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
WIDE_INT = st.integers(-(10**12), 10**12)


def scenario_name(draw: Drawer) -> Any:
    """A scenario or plan name: ordinary, unicode, with path parts, long, empty."""
    kind = integer(draw, 0, 9)
    if kind <= 4:
        return draw(SIMPLE_NAME)
    if kind == 5:
        return draw(TEXT) or "x"
    if kind == 6:
        return choose(draw, "a/b", "../up", "x/../../y", ".", "..", "with space", "-dash", "a\\b")
    if kind == 7:
        return "n" * integer(draw, 100, 400)
    return choose(draw, 123, 1.5, "", " ", "nan", "null", "~")


# ---------------------------------------------------------------------------------------------
# Hostile values and mutations


INT_SIZED = (
    0, -1, -7, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63), 10**20, 10**100, 10**300,
    10**1000,
)  # fmt: skip
FLOAT_SIZED = (
    0.0, -0.0, 1.5, -2.5, 1e-300, 5e-324, 1e-9, 0.999999, 1.0000001, 1e308, 1.7976931348623157e308,
    float("nan"), float("inf"), float("-inf"),
)  # fmt: skip
RAW_SCALARS = (
    "1e999", "-1e999", ".nan", ".NaN", ".inf", "-.inf", "+.inf", "0x7fffffffffffffffff", "0o777",
    "0b1011", "1_000_000", "1:20", "yes", "no", "on", "off", "~", "null", "''", '""', "!!binary aGk=",
    "!!set {a, b}", "!!timestamp 2001-12-14", "2024-01-01", "12:30:00", "!!str 5", "!!int '7'",
    "!!float '1e3'", "!!python/object/apply:os.getcwd []", "*undefined_alias", "&anchor 4",
    "!custom 3", "[1, 2", "{a: 1", "'unterminated", "\"\\x00\"", "\"\\uD800\"", "- 1", ": 1", "? x",
    "|", ">", "%YAML 1.2", "@at", "`tick", "!!map {}", "!!seq []", "[]", "{}", "[~]", "{~: ~}",
)  # fmt: skip


def hostile_value(draw: Drawer) -> Any:
    """A value that should not be accepted where a number, name or mapping goes (or an
    extreme one that may be)."""
    kind = integer(draw, 0, 15)
    if kind == 0:
        return choose(draw, *INT_SIZED)
    if kind == 1:
        return choose(draw, *FLOAT_SIZED)
    if kind == 2:
        return draw(WIDE_INT)
    if kind == 3:
        return draw(ANY_FLOAT)
    if kind == 4:
        return Raw(choose(draw, *RAW_SCALARS))
    if kind == 5:
        return choose(draw, None, True, False, "", " ", "abc", "1", "1.5", "None", "NaN", "inf")
    if kind == 6:
        return choose(draw, [], {}, [1], [1, 2], {"a": 1}, [[]], {"min": 1}, [None], {None: None})
    if kind == 7:  # a long string (the error must not echo it whole)
        n = choose(draw, 301, 1000, 10_000, 100_000, 1_000_000)
        return choose(draw, "x", "ab", "é", "\t", "9") * n
    if kind == 8:  # a number with thousands of digits (int() refuses > 4,300 digits)
        n = choose(draw, 20, 309, 400, 4300, 4301, 5000, 50_000)
        return Raw(choose(draw, "9", "1") * n)
    if kind == 9:
        return deep_list(integer(draw, 1, 1100))
    if kind == 10:
        return deep_map(integer(draw, 1, 1100))
    if kind == 11:
        return alias_bomb(integer(draw, 2, 10), integer(draw, 2, 12))
    if kind == 12:
        return draw(TEXT)
    if kind == 13:
        return Raw(choose(draw, "-1", "-0", "-1e-9", "-1e308", "-.inf", "-9" * 1 + "9" * 30))
    if kind == 14:
        return [choose(draw, -3, 0, 1, 7, 10**6) for _ in range(integer(draw, 0, 5))]
    return choose(draw, 0.5, 2.5, 1e-6, 1e6, 1e12, 1e30, 3, 7, 1024, 10**9, 10**15)


def doc_paths(doc: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every path into nested dicts and lists (the root included)."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from doc_paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from doc_paths(v, (*prefix, i))


def _get(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def _misspell(key: str, i: int) -> str:
    if not key:
        return "x"
    j = i % len(key)
    options = (
        key[:j] + key[j + 1 :],  # a letter dropped
        key + "s",
        key.upper(),
        key.replace("_", "-"),
        key[:j] + key[j] * 2 + key[j + 1 :],
        " " + key,
    )
    return options[i % len(options)]


def mutate_doc(draw: Drawer, doc: Any) -> tuple[Any, str]:
    """One structural mutation of a document: delete a key, add an unknown key, replace a
    value with a hostile one, wrap it, replace a whole section. Returns (doc, description)."""
    doc = copy.deepcopy(doc)
    paths = list(doc_paths(doc))
    path = choose(draw, *paths)
    op = choose(
        draw, "replace", "replace", "replace", "replace", "delete", "unknown", "wrap", "type"
    )
    where = ".".join(str(k) for k in path) or "<root>"
    if not path:
        if op == "unknown" and isinstance(doc, dict):
            k = choose(draw, "extra", "Name", 1, None, True, "", "a.b", "k" * 500)
            doc[k] = hostile_value(draw)
            return doc, f"unknown root key {str(k)[:40]!r}"
        return hostile_value(draw), "root replaced"
    parent, key = _get(doc, path[:-1]), path[-1]
    if op == "delete":
        del parent[key]
        return doc, f"deleted {where}"
    if op == "unknown" and isinstance(parent, dict) and isinstance(key, str):
        if coin(draw, 0.6):
            k: Any = _misspell(key, integer(draw, 0, 5))
        else:
            k = choose(draw, "extra", 0, None, False, "", "k" * 1000, "__class__", "a.b")
        if k not in parent:
            parent[k] = parent[key] if coin(draw, 0.5) else hostile_value(draw)
            return doc, f"unknown key {str(k)[:40]!r} next to {where}"
    if op == "wrap":
        parent[key] = choose(draw, [parent[key]], {"value": parent[key]}, {str(key): parent[key]})
        return doc, f"wrapped {where}"
    if op == "type":
        old = parent[key]
        if isinstance(old, bool):
            new: Any = choose(draw, "true", 1, "yes", None)
        elif isinstance(old, int):
            new = choose(draw, str(old), float(old) + 0.5, [old], -old, 0, True)
        elif isinstance(old, float):
            new = choose(draw, str(old), -old, 0.0, [old], math.nan, math.inf)
        elif isinstance(old, str):
            new = choose(draw, 1, [old], {old: old}, old.upper(), old + " ", True)
        else:
            new = choose(draw, "text", 1, None)
        parent[key] = new
        return doc, f"type of {where}"
    parent[key] = hostile_value(draw)
    return doc, f"replaced {where}"


def mutate_text(draw: Drawer, text: str) -> tuple[bytes, str]:
    """A file-level mutation of YAML text -> (bytes, description)."""
    op = integer(draw, 0, 17)
    raw = text.encode()
    if op == 0:
        return b"", "empty file"
    if op == 1:
        return choose(draw, b"\n", b"   \n\t\n", b"# only a comment\n", b"---\n", b"...\n"), "blank"
    if op == 2:
        return choose(
            draw, b"~\n", b"null\n", b"42\n", b"just text\n", b"[1, 2]\n", b"- a\n- b\n"
        ), ("not a mapping")
    if op == 3:
        cut = integer(draw, 0, max(0, len(raw) - 1))
        return raw[:cut], f"truncated at {cut}"
    if op == 4:
        at = integer(draw, 0, len(raw))
        junk = choose(draw, b"\xff", b"\xc3\x28", b"\x80abc", b"\xed\xa0\x80", b"\xe9t\xe9")
        return raw[:at] + junk + raw[at:], "non-UTF-8 bytes"
    if op == 5:
        # (latin-1 cannot hold every drawn character: those become '?', still not UTF-8)
        enc = choose(draw, "utf-16", "utf-32", "latin-1")
        return text.encode(enc, errors="replace"), "other encoding"
    if op == 6:
        return b"\xef\xbb\xbf" + raw, "UTF-8 BOM"
    if op == 7:
        at = integer(draw, 0, len(raw))
        return raw[:at] + b"\x00" + raw[at:], "NUL byte"
    if op == 8:
        return raw.replace(b"  ", b"\t"), "tabs for indentation"
    if op == 9:
        return raw + b"---\n" + raw, "two documents"
    if op == 10:
        return bytes(integer(draw, 0, 255) for _ in range(integer(draw, 1, 200))), "binary junk"
    if op == 11:
        mb = choose(draw, 1, 2, 4)
        pad = (b"# " + b"x" * 98 + b"\n") * (mb * 10_000)
        return raw + pad, f"{mb} MB file"
    if op == 12:
        line = choose(draw, b"description: " + b"y" * 2_000_000, b"x" * 100_000) + b"\n"
        return raw + line, "very long line"
    if op == 13:  # a key given twice
        lines = text.splitlines(keepends=True)
        i = integer(draw, 0, max(0, len(lines) - 1))
        return "".join(lines[: i + 1] + lines[i : i + 1] + lines[i + 1 :]).encode(), "dup line"
    if op == 14:
        return (f"anchor_holder: {alias_bomb(9, 10)}\n").encode() + raw, "alias bomb at the top"
    if op == 15:
        return b"%YAML 1.1\n%TAG ! tag:x,2000:\n---\n" + raw, "directives"
    if op == 16:
        return raw.replace(b": ", b":"), "no space after colons"
    return b"\r\n".join(raw.split(b"\n")), "CRLF line ends"


# ---------------------------------------------------------------------------------------------
# Valid-but-unusual documents


def _shipped_hardware(name: str) -> dict[str, Any]:
    return yaml.safe_load((HARDWARE_DIR / f"{name}.yaml").read_text())


SHIPPED_HW_DOCS = {n: _shipped_hardware(n) for n in SHIPPED_HARDWARE}


def hardware_doc(draw: Drawer) -> dict[str, Any]:
    """A legal hardware profile with extreme numbers: a shipped one, rescaled."""
    doc = copy.deepcopy(SHIPPED_HW_DOCS[choose(draw, *SHIPPED_HARDWARE)])
    doc["name"] = choose(draw, "fuzz_gpu", "hw", doc["name"])
    if coin(draw, 0.3):
        del doc["display_name"]
    for key in ("memory_gib", "hbm_bandwidth_gb_per_s", "pcie_bandwidth_gb_per_s",
                "nic_bandwidth_gbit_per_s", "cuda_context_mib", "host_memory_gib",
                "inter_node_latency_us"):  # fmt: skip
        if key in doc and coin(draw, 0.3):
            doc[key] = odd_number(draw, 1e-3, 1e7)
    if coin(draw, 0.3):
        doc["cpu_adam_params_per_s"] = odd_number(draw, 1, 1e15)
    if coin(draw, 0.2):
        doc["cuda_context_mib"] = 0
    if coin(draw, 0.2):
        doc["inter_node_latency_us"] = 0
    for dtype in list(doc["peak_tflops"]):
        if coin(draw, 0.2):
            doc["peak_tflops"][dtype] = choose(draw, 0, 1e-6, 0.001, 1, 1e5, 1e9)
    if coin(draw, 0.1):  # a GPU with no 16-bit rate (a profile states it: 0)
        doc["peak_tflops"] = {"fp32": odd_number(draw, 1e-3, 1e5), "fp16": 0, "bf16": 0}
    doc["gpus_per_node"] = choose(draw, 8, 8, 1, 2, 3, 4, 16, 64)
    doc["intra_node"]["kind"] = choose(draw, doc["intra_node"]["kind"], "pcie", "nvlink", "xgmi")
    if coin(draw, 0.3):
        doc["intra_node"]["bandwidth_gb_per_s"] = odd_number(draw, 1e-3, 1e6)
    if coin(draw, 0.3):
        doc["intra_node"]["latency_us"] = choose(draw, 0, 1e-3, 1e3)
    if coin(draw, 0.2):
        doc["oversubscription"] = choose(draw, 1, 1.5, 4, 1000)
    eff = doc.setdefault("efficiency", {})
    for k in ("matmul", "memory_bound", "collective", "optimizer"):
        if coin(draw, 0.25):
            eff[k] = choose(draw, 1, 1.0, 1e-6, 0.001, 0.5, 0.999)
    if coin(draw, 0.25):  # a FlashAttention class: both rates, their edges from 0 up
        kernel = choose(draw, "fa2", "fa2", "cudnn", "fa3")
        cls = doc.setdefault("attention_kernels", {}).setdefault(kernel, {})
        for k in ("forward", "backward"):
            cls[k] = choose(draw, 2, 1e-6, 0.001, 0.5, 1.5)
            cls[f"{k}_rows_edge"] = choose(draw, 0, 1, 55296, 1e9)
            cls[f"{k}_seq_edge"] = choose(draw, 0, 1, 376, 1e7)
            cls[f"{k}_head_dim_edge"] = choose(draw, 0, 1, 18, 1e4)
    return doc


@dataclass
class Layout:
    """The integers of a legal layout, drawn together so that they divide."""

    tp: int
    pp: int
    dp: int
    v: int
    m: int
    micro_batch: int
    schedule: str
    layer_split: str
    layers: int


def layout(draw: Drawer, heads: int, kv_heads: int, layers: int | None, size: str) -> Layout:
    """tp | heads and kv_heads; pp x v | layers for the uniform split; interleaved: m a
    multiple of pp. ``layers`` None: chosen here to fit pp x v. ``size``: see SIZES."""
    tp = choose(draw, *divisors(math.gcd(heads, kv_heads), 4 if size == "small" else 16))
    schedule = choose(draw, *SCHEDULE_NAMES)
    max_pp = {"small": 4, "normal": 8, "big": 32}[size]
    if layers is not None:
        max_pp = min(max_pp, layers)
    v = 1
    if schedule == "interleaved" and coin(draw, 0.7):
        v = choose(draw, 2, 2, 3, 4)
    split = "uniform" if v > 1 else choose(draw, *LAYER_SPLITS)
    if layers is None:
        pp = integer(draw, 1, max_pp)
        if v > 1 and pp == 1:
            pp = 2
        per = choose(draw, 1, 1, 2, 3, 4) if split == "uniform" else 0
        layers = pp * v * per if split == "uniform" else pp + integer(draw, 0, 12)
    else:
        if split == "uniform":
            options = [p for p in divisors(layers, max_pp) if layers % (p * v) == 0]
            options = [p for p in options if p > 1] if v > 1 else options
            if not options:
                v, options = 1, divisors(layers, max_pp)
        else:
            options = list(range(1, max_pp + 1))
        pp = choose(draw, *options)
    if v > 1 and pp == 1:
        v = 1
    dp = {
        "small": lambda: choose(draw, 1, 1, 1, 2, 2, 3, 4),
        "normal": lambda: choose(draw, 1, 1, 1, 2, 2, 3, 4, 8, 5, 16),
        "big": lambda: choose(draw, 1, 2, 4, 8, 32, 64, 7),
    }[size]()
    micro_batch = choose(draw, 1, 1, 1, 2, 3, 4, 8, 16, 64)
    m_hi = {"small": 8, "normal": 16, "big": 128}[size]
    m = integer(draw, 1, m_hi)
    if schedule == "interleaved":
        m = pp * max(1, m // pp)
    return Layout(tp, pp, dp, v, m, micro_batch, schedule, split, layers)


def model_section(draw: Drawer, size: str) -> tuple[dict[str, Any], Layout, dict | None, int]:
    """model: (the mapping, the layout, an HF config.json document or None, max positions of
    learned positions or 0 when rotary)."""
    mode = choose(draw, "shape", "shape", "shape", "preset", "preset", "hf")
    extra: dict[str, Any] = {}
    if mode == "preset":
        name = choose(draw, *PRESET_NAMES + tuple(ALIASES))
        spec = PRESETS[ALIASES.get(name, name)]
        if coin(draw, 0.1):
            name = name.upper()
        lay = layout(draw, spec.heads, spec.kv_heads, spec.layers, size)
        doc: dict[str, Any] = {"preset": name}
        if coin(draw, 0.3):
            doc["flash_attention"] = coin(draw, 0.5)
        if coin(draw, 0.2):
            doc["dropout"] = choose(draw, 0.0, 0.1, 0.5, 0.999)
        max_pos = spec.max_positions if spec.positions == "learned" else 0
        return doc, lay, None, max_pos
    tp_unit = choose(draw, 1, 1, 2, 4, 8)
    kv_heads = tp_unit * choose(draw, 1, 1, 2, 4)
    heads = kv_heads * choose(draw, 1, 1, 2, 4, 8)
    head_dim = choose(draw, 1, 2, 3, 8, 16, 64, 128)
    hidden = heads * head_dim
    lay = layout(draw, heads, kv_heads, None, size)
    vocab = choose(draw, 1, 2, 7, 128, 1000, 50257, 128256, 10**6)
    positions = choose(draw, *POSITION_KINDS)
    max_pos = choose(draw, 1, 64, 2048, 8192, 131072)
    if mode == "hf":
        if positions == "learned" and coin(draw, 0.7):
            cfg: dict[str, Any] = {
                "model_type": choose(draw, "gpt2", "gpt_bigcode"), "n_layer": lay.layers,
                "n_embd": hidden, "n_head": heads, "vocab_size": vocab, "n_positions": max_pos,
            }  # fmt: skip
            if coin(draw, 0.5):
                cfg["n_inner"] = choose(draw, 1, hidden, 4 * hidden, 11008)
            if cfg["model_type"] == "gpt_bigcode":  # one K/V head, or every head's
                cfg["multi_query"] = coin(draw, 0.7)
        elif positions == "learned":  # OPT: MHA, learned positions (+ 2 rows), ReLU
            cfg = {
                "model_type": "opt", "num_hidden_layers": lay.layers, "hidden_size": hidden,
                "num_attention_heads": heads, "ffn_dim": choose(draw, 1, 4 * hidden),
                "vocab_size": vocab, "max_position_embeddings": max_pos,
                "dropout": choose(draw, 0.0, 0.1), "attention_dropout": choose(draw, 0.0, 0.1),
            }  # fmt: skip
        else:
            kind = choose(draw, "llama", "mistral", "qwen2", "phi3", "gemma", "starcoder2",
                          "nemotron", "gpt_neox", "bloom", "falcon", "phi", "gptj",
                          "gemma2", "gemma3_text", "olmo2")  # fmt: skip
            cfg = {
                "model_type": kind, "num_hidden_layers": lay.layers, "hidden_size": hidden,
                "num_attention_heads": heads, "num_key_value_heads": kv_heads,
                "intermediate_size": choose(draw, 1, 2 * hidden, 11008), "vocab_size": vocab,
                "max_position_embeddings": max_pos,
            }  # fmt: skip
            if kind in ("gpt_neox", "bloom"):  # multi-head attention only
                cfg["num_key_value_heads"] = heads
            if kind.startswith("gemma"):  # GemmaConfig's head_dim default (256) would change
                cfg["head_dim"] = head_dim  # the width
            if kind == "gptj":  # GPT-2's field names, rotary on rotary_dim of each head
                cfg = {"model_type": "gptj", "n_layer": lay.layers, "n_embd": hidden,
                       "n_head": heads, "vocab_size": vocab, "n_positions": max_pos,
                       # an even width up to the head's (null: the whole head, valid with one
                       # head only; bad values are the mutations' job)
                       "rotary_dim": choose(draw, None if heads == 1 else 2, 2,
                                            max(2, head_dim - head_dim % 2))}  # fmt: skip
            if kind == "falcon":  # num_kv_heads groups (new layout), or MQA / MHA (original)
                cfg["ffn_hidden_size"] = cfg.pop("intermediate_size")
                cfg["parallel_attn"] = coin(draw, 0.8)
                if cfg["parallel_attn"] and coin(draw, 0.5):
                    cfg.update(new_decoder_architecture=True, num_kv_heads=kv_heads,
                               num_ln_in_parallel_attn=choose(draw, 1, 2))  # fmt: skip
                else:
                    cfg["multi_query"] = coin(draw, 0.5)
                cfg["alibi"] = coin(draw, 0.2)
        return {"hf_config": CONFIG_FILE}, lay, cfg, (max_pos if positions == "learned" else 0)
    doc = {"layers": lay.layers, "hidden": hidden, "heads": heads, "vocab": vocab}
    if kv_heads != heads or coin(draw, 0.3):
        doc["kv_heads"] = kv_heads
    if coin(draw, 0.4):
        doc["ffn_hidden"] = choose(draw, 1, 3, hidden, 4 * hidden, 8 * hidden + 1)
    doc["positions"] = positions
    doc["max_positions"] = max_pos
    for key, values in (
        ("mlp", MLP_KINDS), ("tied_embeddings", (True, False)), ("bias", (True, False)),
        ("qkv_bias", (True, False)), ("norm", ("layernorm", "rmsnorm")),
        ("dropout", (0.0, 0.1, 0.5, 0.999)), ("flash_attention", (True, False)),
        ("qkv_layout", ("separate", "fused_kv_copy")), ("parallel_residual", (True, False)),
        ("head_bias", (True, False)), ("logit_softcap", (True, False)),
        ("attention_softcap", (True, False)),
    ):  # fmt: skip
        if coin(draw, 0.35):
            doc[key] = choose(draw, *values)
    if doc.get("parallel_residual") and coin(draw, 0.5):
        doc["shared_norm"] = True
    elif not doc.get("parallel_residual") and coin(draw, 0.2):
        doc["post_norms"] = True
        if coin(draw, 0.5):
            doc["pre_norms"] = False
    if coin(draw, 0.15):
        doc["qk_norm"] = True
        doc["qk_norm_width"] = choose(draw, "head", "full")
    if coin(draw, 0.15):  # sliding-window attention, every n-th layer full
        doc["sliding_window"] = choose(draw, 1, 2, 128, 4096, 10**6)
        if coin(draw, 0.5):
            doc["full_attention_every"] = choose(draw, 1, 2, 6, 1024)  # (spec.limits' most)
    doc.update(extra)
    return doc, lay, None, (max_pos if positions == "learned" else 0)


def training_section(draw: Drawer, lay: Layout, max_pos: int) -> dict[str, Any]:
    seq_hi = max_pos if max_pos else 1 << 17
    seq = choose(draw, 1, 2, 17, 128, 512, 1024, 2048, 4096, 32768, 131072)
    seq = min(seq, seq_hi)
    precision = choose(draw, *tuple(PRECISIONS))
    t: dict[str, Any] = {
        "seq_len": seq,
        "global_batch": lay.micro_batch * lay.dp * lay.m,
        "micro_batch": lay.micro_batch,
        "precision": precision,
    }
    for key, values in (("optimizer", OPTIMIZERS), ("recompute", RECOMPUTE),
                        ("cross_entropy", CROSS_ENTROPY)):  # fmt: skip
        if coin(draw, 0.7):
            t[key] = choose(draw, *values)
    for key, values in (("optimizer_state_dtype", OPTIMIZER_STATE_DTYPES),
                        ("master_weights", MASTER_WEIGHTS)):  # fmt: skip
        if coin(draw, 0.15):
            t[key] = choose(draw, *values)
    if coin(draw, 0.5):
        method = choose(draw, *PEFT_METHODS)
        if method == "qlora" and precision == "fp32":
            method = "lora"
        peft: dict[str, Any] = {"method": method}
        if method in ("lora", "qlora"):
            if coin(draw, 0.5):
                peft["rank"] = choose(draw, 1, 2, 8, 64, 1024)
            if coin(draw, 0.3):
                peft["alpha"] = choose(draw, 0, 0.5, 16, 1e6)
            if coin(draw, 0.5):
                peft["target_modules"] = choose_some(draw, LORA_TARGETS, 1, 7)
            if method == "qlora" and coin(draw, 0.3):
                peft["quant_block_size"] = choose(draw, 1, 16, 64, 4096)
        elif method == "adapter" and coin(draw, 0.5):
            peft["adapter_size"] = choose(draw, 1, 64, 4096)
        elif method == "prefix" and coin(draw, 0.5):
            peft["prefix_length"] = choose(draw, 1, 32, 10_000)
        elif method == "prompt" and coin(draw, 0.5):
            peft["prompt_length"] = choose(draw, 1, 32, 10_000)
        elif method == "lp_ft" and coin(draw, 0.7):
            peft["phase"] = choose(draw, "probe", "finetune")
        t["peft"] = peft
    if coin(draw, 0.3):
        t["offload"] = {"optimizer": coin(draw, 0.5)}
    if lay.pp == 1 and lay.layers > 1 and t.get("recompute", "none") == "none" and coin(draw, 0.1):
        # Megatron-Core's layer offload of 1 .. L-1 blocks (pp 1, no recompute)
        t.setdefault("offload", {})["activation_layers"] = choose(
            draw, *range(1, min(lay.layers, 5))
        )
    return t


def parallelism_section(draw: Drawer, lay: Layout) -> dict[str, Any]:
    p: dict[str, Any] = {"dp": lay.dp, "tp": lay.tp, "pp": lay.pp, "schedule": lay.schedule}
    if lay.v > 1 or coin(draw, 0.2):
        p["virtual_stages"] = lay.v
    dp_mode = choose(draw, *DP_MODES, "ddp", "ddp") if lay.dp > 1 else "ddp"
    if dp_mode != "ddp" or coin(draw, 0.2):
        p["dp_mode"] = dp_mode
    if dp_mode == "ddp" and coin(draw, 0.6):
        p["zero_stage"] = choose(draw, 0, 1, 2, 3)
    if lay.tp > 1 and coin(draw, 0.4):
        p["sequence_parallel"] = coin(draw, 0.5)
    if lay.layer_split != "uniform" or coin(draw, 0.2):
        p["layer_split"] = lay.layer_split
    if coin(draw, 0.2):
        p["bucket_mb"] = odd_number(draw, 1e-3, 1e5)
    if coin(draw, 0.15):
        p["zero3_max_live_params"] = choose(draw, 1, 1000, 10**9, 10**12)
    if lay.v > 1 and coin(draw, 0.15):
        # the default (0 = pp) or pp itself keep the case valid; others may be refused
        p["microbatch_group_size"] = choose(draw, 0, lay.pp, lay.pp, 2 * lay.pp, 1, 10**9)
    return p


@dataclass
class ScenarioDraw:
    """A valid scenario and its side files."""

    doc: dict[str, Any]
    hardware: dict[str, Any] | None  # hw.yaml when the scenario names it
    hf_config: dict[str, Any] | None  # config.json when the model names it
    layout: Layout


def valid_scenario(draw: Drawer, size: str = "normal") -> ScenarioDraw:
    """A legal scenario: every schedule, split, precision, PEFT method, ZeRO stage and cluster
    shape; shapes from 1 to 10^6 wide."""
    model, lay, cfg, max_pos = model_section(draw, size)
    hw_doc = hardware_doc(draw) if coin(draw, 0.25) else None
    hw_gpn = hw_doc["gpus_per_node"] if hw_doc else 8
    gpus = lay.tp * lay.pp * lay.dp
    doc: dict[str, Any] = {}
    if coin(draw, 0.8):
        doc["name"] = draw(SIMPLE_NAME) if coin(draw, 0.8) else scenario_name(draw)
    if coin(draw, 0.1):
        doc["description"] = draw(TEXT)
    doc["model"] = model
    doc["hardware"] = HARDWARE_FILE if hw_doc else choose(draw, *SHIPPED_HARDWARE)
    if coin(draw, 0.8):
        gpn = choose(draw, *divisors(gpus, hw_gpn))
        doc["cluster"] = {"nodes": gpus // gpn, "gpus_per_node": gpn}
    doc["training"] = training_section(draw, lay, max_pos)
    doc["parallelism"] = parallelism_section(draw, lay)
    par, off = doc["parallelism"], doc["training"].get("offload", {})
    if (par.get("zero_stage", 0) >= 1 and par.get("dp_mode", "ddp") == "ddp"
            and not any(off.values()) and coin(draw, 0.3)):  # fmt: skip
        # hybrid sharding: groups of at least 2 GPUs (spec.scenario.check_zero_replicas)
        reps = [r for r in range(2, lay.dp + 1) if lay.dp % r == 0 and lay.dp // r >= 2]
        if reps:
            par["zero_replicas"] = choose(draw, *reps)
    if coin(draw, 0.4):
        doc["runtime"] = runtime_section(draw, lay, doc["parallelism"].get("zero_stage", 0))
    if doc["training"].get("offload", {}).get("activation_layers"):
        # Megatron-Core's layer offload: its runtime and DDP (else an error, not a valid case)
        doc["runtime"] = "megatron_core"
        doc["parallelism"].pop("dp_mode", None)
    return ScenarioDraw(doc, hw_doc, cfg, lay)


RUNTIME_NAMES = ("megatron_lm_2021", "megatron_core", "deepspeed", "nanotron", "torchtitan",
                 "llm_foundry", "pytorch_eager")  # fmt: skip


def runtime_section(draw: Drawer, lay: Layout, zero: int) -> Any:
    """A legal ``runtime:``: a shipped profile's name, or a mapping overriding its settings
    (the overlap switches only where the layout has that communication)."""
    name = choose(draw, *RUNTIME_NAMES)
    if coin(draw, 0.5):
        return name
    out: dict[str, Any] = {"name": name}
    for key, values in (
        ("p2p", ("async", "blocking")), ("collective_algorithm", ("ring", "nccl")),
        ("host_us_per_op", (0, 0.5, 26, 1000.0)), ("dispatch", ("eager", "cuda_graphs")),
        ("p2p_messages_forward", (1, 6, 64)), ("grad_reduce_dtype", ("grad", "fp32")),
        ("overlap_grad_reduce", (True, False)), ("zero_grad_reduction", ("all_reduce",)),
        ("zero3_per_gpu_nic", (True, False)), ("zero3_gather_copy_out", (True, False)),
        ("memory_reported", ("allocated", "reserved", "nvidia_smi")),
        ("flat_optimizer_buffers", (True, False)), ("fused_optimizer", (True, False)),
        ("zero_grad_buffer", (True, False)), ("check_nan_in_grad", (True, False)),
        ("scale_grads_before_reduce", (True, False)), ("clip_grad_norm", (True, False)),
        ("master_copies", (True, False)), ("scale_grads_at_dp1", (True, False)),
        ("eager_elementwise", (True, False)), ("recompute_early_stop", (True, False)),
        ("moe_implementation", ("reference", "megatron_core")),
        ("cuda_graph_scope", ([], ["attn"], ["mlp", "moe"], ["attn", "moe_router", "moe_preprocess"],
                              ["moe_router"])),
    ):  # fmt: skip
        if coin(draw, 0.3):
            out[key] = choose(draw, *values)
    if lay.tp > 1 and coin(draw, 0.3):
        out["tp_comm_overlap"] = True
    elif coin(draw, 0.2):  # per-linear TP redistribution: the projections apart, no TP overlap
        out["tp_input_redistribution"] = choose(draw, "per_linear", "per_linear_compiled")
        out["fused_qkv"] = out["fused_gate_up"] = False
    if zero in (1, 2) and coin(draw, 0.3):
        out["overlap_param_gather"] = True
    return out


# ---------------------------------------------------------------------------------------------
# --set overrides and --variants

SCENARIO_KEYS = (
    "name", "description", "hardware", "model.preset", "model.layers", "model.hidden",
    "model.heads", "model.kv_heads", "model.ffn_hidden", "model.vocab", "model.max_positions",
    "model.dropout", "model.mlp", "model.positions", "model.hf_config", "cluster.nodes",
    "cluster.gpus_per_node", "training.seq_len", "training.global_batch", "training.micro_batch",
    "training.precision", "training.optimizer", "training.recompute", "training.cross_entropy",
    "training.peft.method", "training.peft.rank", "training.peft.alpha",
    "training.peft.target_modules", "training.peft.prefix_length", "training.peft.prompt_length",
    "training.offload.optimizer", "training.offload.activation_layers",
    "training.optimizer_state_dtype", "training.master_weights",
    "parallelism.dp", "parallelism.tp", "parallelism.pp", "parallelism.ep", "parallelism.expert_tp",
    "parallelism.schedule", "parallelism.virtual_stages", "parallelism.microbatch_group_size",
    "parallelism.zero_stage",
    "parallelism.dp_mode", "parallelism.bucket_mb", "parallelism.zero3_max_live_params",
    "parallelism.layer_split", "parallelism.sequence_parallel", "runtime", "runtime.name",
    "runtime.p2p", "runtime.host_us_per_op", "runtime.tp_comm_overlap",
    "runtime.p2p_messages_backward",
)  # fmt: skip
SAFE_OVERRIDES = (
    ("training.recompute", RECOMPUTE), ("training.cross_entropy", CROSS_ENTROPY),
    ("training.optimizer", OPTIMIZERS), ("model.dropout", ("0.0", "0.1", "0.99")),
    ("name", ("renamed", "x_y")), ("description", ("'a: b'", "text")),
    ("training.offload.optimizer", ("true", "false")), ("model.flash_attention", ("true", "no")),
    ("training.peft.method", ("none", "lora", "bitfit", "prefix", "prompt", "adapter")),
    ("parallelism.bucket_mb", ("0.001", "1e9", "25")),
    ("runtime", ("nanotron", "deepspeed", "pytorch_eager", "{host_us_per_op: 100}")),
)  # fmt: skip


def valid_override(draw: Drawer) -> str:
    key, values = choose(draw, *SAFE_OVERRIDES)
    return f"{key}={choose(draw, *values)}"


def broken_override(draw: Drawer) -> str:
    kind = integer(draw, 0, 7)
    if kind <= 2:
        return f"{choose(draw, *SCENARIO_KEYS)}={to_flow(hostile_value(draw))}"
    if kind == 3:
        key = choose(draw, *SCENARIO_KEYS)
        return f"{_misspell(key, integer(draw, 0, 5))}={choose(draw, '1', 'x', '[1]')}"
    if kind == 4:
        return choose(
            draw, "noequals", "=1", ".=1", "a..b=1", "training.=2", "model.preset.x=1",
            "training=5", "model=", "hardware=hw.yaml", "hardware=missing.yaml",
            "hardware=" + SCENARIO_FILE, "hardware=dir.yaml", "training.peft=[]",
            "parallelism.pp.x.y=1", " = ", "training.micro_batch==2", "k" * 400 + "=1",
            "training.seq_len=1\n2", "model.layers=[1, 2",
        )  # fmt: skip
    if kind == 5:
        return f"description={alias_bomb(integer(draw, 5, 10), 10)}"
    if kind == 6:
        return f"{choose(draw, *SCENARIO_KEYS)}={deep_list(integer(draw, 500, 1100))}"
    return f"name={'n' * choose(draw, 300, 10_000, 1_000_000)}"


def variants_arg(draw: Drawer, broken: bool) -> str:
    builtins = tuple(BUILTIN_VARIANTS)
    if not broken:
        kind = integer(draw, 0, 3)
        if kind <= 1:
            return ",".join(choose(draw, *builtins) for _ in range(integer(draw, 1, 3)))
        if kind == 2:
            return f"mine:{valid_override(draw)}"
        return f"a:{valid_override(draw)},b:{valid_override(draw)}"
    kind = integer(draw, 0, 3)
    if kind <= 1:
        return choose(
            draw, "", ",", ",,,", "nope", "amp,nope", "a:", ":x=1", "x=", "=1", "[", "amp,[", "a:b",
            "a:x=1,a:y=2", "training.micro_batch=1,training.micro_batch=2",
            "a:training.precision=fp32,b:training.precision=fp32", "amp," * 200, "zero3,zero3",
            "{", "a:{b=1}", "name=" + "v" * 100_000,
        )  # fmt: skip
    if kind == 2:
        return broken_override(draw)
    return draw(TEXT)


# ---------------------------------------------------------------------------------------------
# Case strategies per command family

PATH_KINDS = ("dir", "fifo", "missing", "symlink_loop", "/dev/null", "/dev/zero", "dangling")


def _path_case(kind: str, name: str) -> tuple[list[FileSpec], str]:
    """Replace ``name`` by something that is not a regular file (the argv keeps ``name``)."""
    if kind == "dir":
        return [FileSpec(name, "dir")], "a folder as the file"
    if kind == "fifo":
        return [FileSpec(name, "fifo")], "a FIFO as the file"
    if kind == "missing":
        return [], "missing file"
    if kind == "symlink_loop":
        return [FileSpec(name, "symlink", name.encode())], "symlink loop"
    if kind == "dangling":
        return [FileSpec(name, "symlink", b"nowhere/none.yaml")], "dangling symlink"
    return [FileSpec(name, "symlink", kind.encode())], f"{kind} as the file"


def _files(texts: dict[str, bytes]) -> list[FileSpec]:
    return [FileSpec(n, "file", b) for n, b in texts.items()]


def scenario_files(
    draw: Drawer, valid: bool, size: str
) -> tuple[list[FileSpec], str, ScenarioDraw]:
    """scenario.yaml (+ hw.yaml, config.json), possibly broken in one place."""
    sd = valid_scenario(draw, size)
    docs: dict[str, Any] = {SCENARIO_FILE: sd.doc}
    if sd.hardware is not None:
        docs[HARDWARE_FILE] = sd.hardware
    texts = {n: to_yaml(d).encode() for n, d in docs.items()}
    if sd.hf_config is not None:
        texts[CONFIG_FILE] = json.dumps(sd.hf_config).encode()
    if valid:
        return _files(texts), "", sd
    targets = ["scenario"] * 6 + ["scenario_text", "path", "other_kind"]
    if sd.hardware is not None:
        targets += ["hardware"] * 3 + ["hardware_text", "hardware_path"]
    if sd.hf_config is not None:
        targets += ["hf_config", "hf_text"]
    target = choose(draw, *targets)
    extra: list[FileSpec] = []
    if target == "scenario":
        doc, what = mutate_doc(draw, sd.doc)
        texts[SCENARIO_FILE] = to_yaml(doc).encode()
    elif target == "hardware":
        doc, what = mutate_doc(draw, sd.hardware)
        texts[HARDWARE_FILE] = to_yaml(doc).encode()
        what = "hw.yaml: " + what
    elif target == "scenario_text":
        texts[SCENARIO_FILE], what = mutate_text(draw, texts[SCENARIO_FILE].decode())
    elif target == "hardware_text":
        texts[HARDWARE_FILE], what = mutate_text(draw, texts[HARDWARE_FILE].decode())
        what = "hw.yaml: " + what
    elif target == "path":
        kind = choose(draw, *PATH_KINDS)
        del texts[SCENARIO_FILE]
        extra, what = _path_case(kind, SCENARIO_FILE)
    elif target == "hardware_path":
        kind = choose(draw, *PATH_KINDS)
        del texts[HARDWARE_FILE]
        extra, what = _path_case(kind, HARDWARE_FILE)
        what = "hw.yaml: " + what
    elif target == "other_kind":
        kind = choose(draw, "hardware profile", "plan", "records", "JSON", "PNG", "HF config")
        texts[SCENARIO_FILE] = {
            "hardware profile": lambda: to_yaml(SHIPPED_HW_DOCS[SHIPPED_HARDWARE[0]]).encode(),
            "plan": lambda: to_yaml(PLAN_TEMPLATE).encode(),
            "records": lambda: to_yaml([RECORD_TEMPLATE]).encode(),
            "JSON": lambda: json.dumps(sd.doc).encode(),
            "PNG": lambda: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            "HF config": lambda: b'{"n_layer": 2}',
        }[kind]()
        what = f"a {kind} file as the scenario"
    elif target == "hf_config":
        cfg = copy.deepcopy(sd.hf_config)
        key = choose(draw, *sorted(cfg))
        op = choose(draw, "delete", "value", "value", "extra")
        if op == "delete":
            del cfg[key]
        elif op == "extra":
            cfg["n_layer" if "n_layer" not in cfg else "hidden_size"] = hostile_value(draw)
        else:
            cfg[key] = choose(draw, None, True, "12", 1.5, -1, 0, 2**64, 10**400, [], {}, "x" * 1000,
                              float("nan"), float("inf"))  # fmt: skip
        texts[CONFIG_FILE] = json.dumps(cfg).encode()
        what = f"config.json: {op} {key}"
    else:  # hf_text
        texts[CONFIG_FILE], what = choose(
            draw,
            (b"", "empty"), (b"[1, 2]", "a list"), (b"{", "truncated"),
            (b'{"n_layer": NaN, "n_embd": Infinity, "n_head": 1, "vocab_size": 1}', "NaN"),
            (b'{"model_type": "gpt2", "n_layer": ' + b"9" * 5000 + b"}", "5000 digits"),
            (b"[" * 100_000 + b"]" * 100_000, "deep"),
            (b"\xff\xfe{}", "not UTF-8"),
            (b'{"model_type": "bert", "hidden_size": 8}', "unsupported"),
        )  # fmt: skip
        what = f"config.json: {what}"
    return _files(texts) + extra, what, sd


def overrides_for(draw: Drawer, valid: bool) -> tuple[list[str], str]:
    """``--set`` assignments (valid ones only, or valid plus at least one broken)."""
    sets = [valid_override(draw) for _ in range(integer(draw, 0, 2))]
    if not valid:
        sets.append(broken_override(draw))
    return sets, ("" if valid else f"--set {sets[-1][:60]!r}")


def _set_args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


@st.composite
def scenario_case(draw: Any, family: str, valid_pct: float, size: str) -> Case:
    """memory, memory --json, run, topology and compare cases."""
    draw = Drawer(draw)
    valid = coin(draw, valid_pct)
    broken_sets = not valid and coin(draw, 0.25)
    files, what, sd = scenario_files(draw, valid or broken_sets, size)
    sets, set_what = overrides_for(draw, not broken_sets)
    what = set_what if broken_sets else what
    out = [] if coin(draw, 0.15) else ["--out", OUT_DIR]
    if not valid and coin(draw, 0.05):  # a hostile --out
        out = ["--out", choose(draw, SCENARIO_FILE, "/dev/null/x", "o" * 5000, "/proc/self/x", "")]
        what = f"--out {out[1][:40]!r}"
    # --strict (issue 15: exit 3 when the scenario does not fit); a usage error until it lands
    strict = ["--strict"] if coin(draw, 0.05) else []
    if family == "memory":
        argv = ["memory", *strict, SCENARIO_FILE] + (["--explain"] if coin(draw, 0.5) else [])
    elif family == "memory_json":
        argv = ["memory", "--json", *strict, SCENARIO_FILE]
    elif family == "run":
        argv = ["run", "--json", "--no-plots", *strict, *out, SCENARIO_FILE]
    elif family == "topology":
        argv = ["topology", *out, SCENARIO_FILE]
    elif family == "compare":
        vbroken = not valid and coin(draw, 0.3)
        variants = variants_arg(draw, vbroken)
        if vbroken:
            what = f"--variants {variants[:60]!r}"
        ladder = ["--ladder"] if coin(draw, 0.3) else []
        argv = ["compare", "--json", *ladder, *out, SCENARIO_FILE, "--variants", variants]
    else:
        raise ValueError(family)
    return Case(family, tuple(argv + _set_args(sets)), tuple(files), valid, what)


@st.composite
def schedule_case(draw: Any, valid_pct: float, size: str) -> Case:
    draw = Drawer(draw)
    valid = coin(draw, valid_pct)
    name = choose(draw, *SCHEDULE_NAMES)
    pp = integer(draw, 1, {"small": 8, "normal": 16, "big": 64}[size])
    m = integer(draw, 1, {"small": 16, "normal": 32, "big": 256}[size])
    v = choose(draw, 1, 1, 2, 3, 4) if name == "interleaved" else 1
    group = 0
    if name == "interleaved" and v > 1 and coin(draw, 0.3):
        # Megatron-Core's micro-batch groups: one group of all m >= pp (m % m = 0), any m
        m = max(m, pp)
        group = m
    elif name == "interleaved":
        m = pp * max(1, m // pp)
    args = {"name": name, "--pp": str(pp), "--microbatches": str(m), "--virtual-stages": str(v)}
    if group:
        args["--microbatch-group"] = str(group)
    what = ""
    if not valid:
        key = choose(draw, "name", "--pp", "--microbatches", "--virtual-stages", "--pp")
        if key == "name":
            bad = choose(draw, "", "GPIPE", "1F1B", "zb", "x" * 10_000, "naive ", "interleaved\n")
        else:
            bad = str(choose(draw, 0, -1, -(2**63), 2**31, 10**6, 10**9, 10**12, 2**63, 10**30))
            bad = choose(draw, bad, bad, "1.5", "abc", "", "1e3", "0x10", " 3")
        args[key] = bad
        what = f"{key} {bad[:40]!r}"
    argv = ["schedule", args.pop("name")]
    for k, val in args.items():
        if coin(draw, 0.9) or k == "--pp":
            argv += [k, val]
    return Case("schedule", tuple(argv), (), valid, what)


PLAN_TEMPLATE: dict[str, Any] = {
    "name": "p",
    "model": {"layers": 4, "hidden": 64, "heads": 4, "vocab": 128, "max_positions": 256},
    "tokens": 1.0e9,
    "training": {"seq_len": 64, "global_batch": 8, "precision": "bf16"},
    "hardware": [{"name": "a100_sxm4_80gb", "price_per_gpu_hour": 2.0}],
    "gpus": {"min": 1, "max": 2},
    "top": 2,
}


def plan_doc(draw: Drawer) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A small legal plan (a few hundred layouts at most) and its hw.yaml, if it names one."""
    heads = choose(draw, 1, 2, 4, 8)
    layers = choose(draw, 1, 2, 4, 6, 8)
    model: dict[str, Any] = {"layers": layers, "hidden": heads * choose(draw, 1, 8, 64),
                             "heads": heads, "vocab": choose(draw, 1, 128, 50257)}  # fmt: skip
    if coin(draw, 0.2):
        model = {"preset": choose(draw, "gpt2", "llama3-8b", "gpt3-175b")}
    elif coin(draw, 0.5):
        model["positions"] = "rotary"
    else:
        model["max_positions"] = 4096
    gb_kind = integer(draw, 0, 3)
    if gb_kind == 0:
        gb: Any = choose(draw, 1, 2, 8, 64, 1000)
    elif gb_kind == 1:
        gb = [choose(draw, 1, 2, 4, 16) for _ in range(integer(draw, 1, 3))]
    elif gb_kind == 2:
        lo = choose(draw, 1, 2, 4)
        gb = {"min": lo, "max": lo * choose(draw, 1, 2, 8)}
    else:
        lo, step = choose(draw, 1, 2), choose(draw, 1, 2)
        gb = {"min": lo, "max": lo + 3 * step, "step": step}
    training: dict[str, Any] = {"seq_len": choose(draw, 1, 64, 512, 2048), "global_batch": gb}
    for key, values in (("precision", tuple(PRECISIONS)), ("optimizer", OPTIMIZERS),
                        ("cross_entropy", CROSS_ENTROPY),
                        ("optimizer_state_dtype", OPTIMIZER_STATE_DTYPES),
                        ("master_weights", MASTER_WEIGHTS)):  # fmt: skip
        if coin(draw, 0.5):
            training[key] = choose(draw, *values)
    if coin(draw, 0.2):
        training["peft"] = {"method": choose(draw, "lora", "bitfit", "none")}
    if coin(draw, 0.1):
        training["offload"] = {"optimizer": True}
    hw_doc = hardware_doc(draw) if coin(draw, 0.2) else None
    hardware: list[Any] = [
        {"name": HARDWARE_FILE if hw_doc else choose(draw, *SHIPPED_HARDWARE),
         "price_per_gpu_hour": choose(draw, 0, 0.01, 2.0, 1e6)}
    ]  # fmt: skip
    if coin(draw, 0.3):
        other = choose(draw, *SHIPPED_HARDWARE)
        if other != hardware[0]["name"]:
            hardware.append(choose(draw, other, {"name": other}))
    doc: dict[str, Any] = {
        "name": choose(draw, "p", "tiny_plan"),
        "model": model,
        "tokens": choose(draw, 1, 1e6, 1e9, 1e12, 1e15),
        "training": training,
        "hardware": choose(draw, hardware, hardware, hardware[0]),
        "gpus": choose(
            draw, {"min": 1, "max": 2}, {"min": 1, "max": 4}, [1, 2], 2, [8], {"max": 3}
        ),
        "top": choose(draw, 1, 2, 3),
    }
    if coin(draw, 0.4):
        doc["constraints"] = {
            k: v for k, v in (("deadline_days", choose(draw, None, 0.001, 30, 1e6)),
                              ("budget", choose(draw, None, 0.01, 1e6)),
                              ("max_gpus", choose(draw, None, 1, 4)),
                              ("memory_headroom", choose(draw, None, 0.1, 0.9, 0.95)))
            if v is not None
        }  # fmt: skip
    if coin(draw, 0.5):
        fixed: dict[str, Any] = {}
        for key, values in (("pp", (1, 2, [1, 2])), ("tp", (1, [1, 2])), ("zero_stage", (0, 3)),
                            ("micro_batch", (1, [1, 2])), ("recompute", ("none", ["full"])),
                            ("schedule", tuple(SCHEDULE_NAMES)),
                            ("sequence_parallel", (False,))):  # fmt: skip
            if coin(draw, 0.3):
                fixed[key] = choose(draw, *values)
        doc["fixed"] = fixed
    if coin(draw, 0.3):
        doc["parallelism"] = {
            "bucket_mb": choose(draw, 1, 25, 1e4), "layer_split": choose(draw, *LAYER_SPLITS)
        }  # fmt: skip
    if coin(draw, 0.3):
        doc["failures"] = {
            "enabled": coin(draw, 0.5), "mtbf_gpu_hours": choose(draw, 1, 1e5),
            "checkpoint_interval": choose(draw, "young", 60, 1e6), "checkpoint_s": choose(draw, 0, 30),
        }  # fmt: skip
    if coin(draw, 0.3):
        doc["objective"] = choose(draw, "time", "cost")
    return doc, hw_doc


@st.composite
def plan_case(draw: Any, valid_pct: float) -> Case:
    draw = Drawer(draw)
    valid = coin(draw, valid_pct)
    doc, hw_doc = plan_doc(draw)
    texts = {PLAN_FILE: to_yaml(doc).encode()}
    if hw_doc is not None:
        texts[HARDWARE_FILE] = to_yaml(hw_doc).encode()
    extra: list[FileSpec] = []
    what = ""
    workers = ["--workers", "1"]
    args: list[str] = []
    if not valid:
        target = choose(draw, "doc", "doc", "doc", "doc", "doc", "text", "path", "args", "hw")
        if target == "hw" and hw_doc is None:
            target = "doc"
        if target == "doc":
            bad, what = mutate_doc(draw, doc)
            texts[PLAN_FILE] = to_yaml(bad).encode()
        elif target == "hw":
            bad, what = mutate_doc(draw, hw_doc)
            texts[HARDWARE_FILE] = to_yaml(bad).encode()
            what = "hw.yaml: " + what
        elif target == "text":
            texts[PLAN_FILE], what = mutate_text(draw, texts[PLAN_FILE].decode())
        elif target == "path":
            del texts[PLAN_FILE]
            extra, what = _path_case(choose(draw, *PATH_KINDS), PLAN_FILE)
        else:
            opt = choose(draw, "--workers", "--top", "--top", "--executor")
            val = choose(draw, "0", "-1", "-5", "10**9", "1000000000", "abc", "1.5", "")
            if opt == "--executor":
                val = choose(draw, "threads", "DASK", "")
            if opt == "--workers":
                workers = []
            args = [opt, val]
            what = f"{opt} {val!r}"
    argv = ["plan", "--json", "--out", OUT_DIR, *workers, *args, PLAN_FILE]
    return Case("plan", tuple(argv), tuple(_files(texts) + extra), valid, what)


RECORD_TEMPLATE: dict[str, Any] = {
    "id": "lab_tiny_1",
    "source": "fuzz",
    "model": {"layers": 4, "hidden": 64, "heads": 4, "seq_len": 64, "vocab": 128},
    "training": {"global_batch": 8, "micro_batch": 1, "precision": "bf16"},
    "parallelism": {"tp": 1, "pp": 2, "dp": 1},
    "hardware": {"gpu": "A100-SXM4-80GB", "num_gpus": 2},
    "measured": {"step_time_s": 0.01, "peak_mem_gib": 1.0},
}


def record_doc(draw: Drawer, i: int) -> dict[str, Any]:
    """One measured-run record of a tiny model (schema: measured/README.md)."""
    pp = choose(draw, 1, 2, 4)
    tp = choose(draw, 1, 2)
    dp = choose(draw, 1, 2)
    heads = 4
    rec: dict[str, Any] = {
        "id": f"{choose(draw, 'lab', 'megatron_sc21', 'mpt_', 'usp_', 'zero')}_fuzz_{i}",
        "model": {"layers": 4 * pp, "hidden": 64, "heads": heads,
                  "seq_len": choose(draw, 64, 1024), "vocab": choose(draw, 128, 50257)},
        "training": {"global_batch": 8 * dp, "micro_batch": choose(draw, 1, 2),
                     "precision": choose(draw, "bf16", "fp16 mixed precision", "fp32", "amp_bf16")},
        "parallelism": {"tp": tp, "pp": pp, "dp": dp},
        "hardware": {"gpu": choose(draw, "A100-SXM4-80GB", "H100", "V100", "A100 40GB", "TPU"),
                     "num_gpus": tp * pp * dp},
        "measured": {},
    }  # fmt: skip
    measured = {
        "step_time_s": choose(draw, 1e-6, 0.01, 10), "tokens_per_s": choose(draw, 1, 1e5),
        "tflops_per_gpu": choose(draw, 0.1, 150), "mfu": choose(draw, 0.01, 0.5, 1.0),
        "hfu": choose(draw, 0.4, 0.9), "peak_mem_gib": choose(draw, 0.5, 20),
        "outcome": "crashed_or_oom",
    }  # fmt: skip
    for k in choose_some(draw, tuple(sorted(measured)), 1, 3):
        rec["measured"][k] = measured[k]
    if coin(draw, 0.3):
        rec["parallelism"]["schedule"] = choose(draw, "1F1B", "GPipe", "interleaved")
    if coin(draw, 0.2):
        rec["training"]["recompute"] = choose(draw, "none", "full", "selective attention")
    return rec


@st.composite
def validate_case(draw: Any, valid_pct: float) -> Case:
    draw = Drawer(draw)
    valid = coin(draw, valid_pct)
    n = integer(draw, 1, 2)
    doc = [record_doc(draw, i) for i in range(n)]
    texts = {RECORDS_FILE: to_yaml(doc).encode()}
    extra: list[FileSpec] = []
    what = ""
    if not valid:
        target = choose(draw, "doc", "doc", "doc", "doc", "text", "path")
        if target == "doc":
            bad, what = mutate_doc(draw, doc)
            texts[RECORDS_FILE] = to_yaml(bad).encode()
        elif target == "text":
            texts[RECORDS_FILE], what = mutate_text(draw, texts[RECORDS_FILE].decode())
        else:
            del texts[RECORDS_FILE]
            extra, what = _path_case(choose(draw, *PATH_KINDS), RECORDS_FILE)
    argv = ["validate", "--json", "--out", OUT_DIR, RECORDS_FILE]
    return Case("validate", tuple(argv), tuple(_files(texts) + extra), valid, what)


SIZES = ("small", "normal", "big")  # layouts: pp <= 4 / 8 / 32, micro-batches <= 8 / 16 / 128


def case_strategy(family: str, valid_pct: float = 0.4, size: str = "normal") -> st.SearchStrategy:
    """Cases of one command family; ``valid_pct`` of them drawn valid; layouts of ``size``
    (SIZES: small ones keep the quick profile quick, big ones reach pp 32 x 128
    micro-batches and clusters of thousands of GPUs)."""
    if size not in SIZES:
        raise ValueError(f"size {size!r}: one of {', '.join(SIZES)}")
    if family in ("memory", "memory_json", "run", "topology", "compare"):
        return scenario_case(family, valid_pct, size)
    if family == "schedule":
        return schedule_case(valid_pct, size)
    if family == "plan":
        return plan_case(valid_pct)
    if family == "validate":
        return validate_case(valid_pct)
    raise ValueError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")


GENERATION_BATCH = 100  # examples per Hypothesis run (each run starts afresh: more variety)


def generate_cases(family: str, n: int, seed: int, valid_pct: float = 0.4,
                   size: str = "normal") -> list[Case]:  # fmt: skip
    """``n`` distinct cases of one family, the same for the same arguments and Hypothesis
    version: Hypothesis runs of :data:`GENERATION_BATCH` examples with seeds derived from
    ``seed``, generation only (no shrinking, no example database)."""
    out: list[Case] = []
    seen: set[Case] = set()
    strategy = case_strategy(family, valid_pct, size)
    batch = 0
    while len(out) < n and batch < 10 + 4 * n // GENERATION_BATCH:
        got: list[Case] = []

        @hypothesis_seed(zlib.crc32(f"{seed}/{family}/{valid_pct}/{size}/{batch}".encode()))
        @settings(max_examples=GENERATION_BATCH, database=None, deadline=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(strategy)
        def collect(case: Case) -> None:
            got.append(case)  # noqa: B023 - called at once, in this iteration

        collect()
        for case in got:
            if case not in seen and len(out) < n:
                seen.add(case)
                out.append(case)
        batch += 1
    return out


# ---------------------------------------------------------------------------------------------
# Running a case and the oracles


class CaseTimeout(BaseException):
    """Raised by a :class:`Timing`'s guard when a case runs past its limit (a BaseException, so
    that no ``except Exception`` in the code under test swallows it)."""


@dataclass
class Outcome:
    family: str
    exit_code: int | None
    seconds: float | None  # wall time, with a Timing only
    stdout: str
    stderr: str
    exception: str = ""  # "Type: message" of an uncaught exception or the timeout
    where: str = ""  # innermost simtrain frame of the exception, "file.py:function"
    trace: str = ""  # the formatted traceback
    failures: list[tuple[str, str]] = field(default_factory=list)  # (class, signature)

    def describe(self) -> str:
        took = f" after {self.seconds:.2f} s" if self.seconds is not None else ""
        out = [f"exit {self.exit_code}{took}"]
        out += [f"FAILURE {c}: {s}" for c, s in self.failures]
        if self.exception:
            out.append(f"exception: {self.exception}")
        if self.trace:
            out.append(self.trace)
        out.append(f"--- stderr ({len(self.stderr)} chars)\n{self.stderr[:2000]}")
        out.append(f"--- stdout ({len(self.stdout)} chars)\n{self.stdout[:2000]}")
        return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Timing:
    """A per-case time limit, supplied by the long campaign (``benchmarks/fuzz_campaign.py``):
    ``guard()`` raises :class:`CaseTimeout` in the case past ``limit_s`` and ``now()`` is its
    clock. The test suite passes none: no test asserts on wall time (issue 15)."""

    limit_s: float
    guard: Callable[[], contextlib.AbstractContextManager[None]]
    now: Callable[[], float]


@contextlib.contextmanager
def memory_capped(memory_bytes: int | None) -> Iterator[None]:
    """An address-space cap ``memory_bytes`` above the current size (None: no cap) for the
    duration; restored after."""
    old_limit = resource.getrlimit(resource.RLIMIT_AS)
    if memory_bytes is not None:
        cap = _vm_size() + memory_bytes
        hard = old_limit[1]
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard < 0 else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old_limit)


def _vm_size() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 30


def _where(tb: Any) -> str:
    """Innermost simtrain frame (else the innermost frame) of a traceback, file:function."""
    frames = traceback.extract_tb(tb)
    ours = [f for f in frames if "/simtrain/" in f.filename.replace(os.sep, "/")]
    f = (ours or frames or [None])[-1]
    if f is None:
        return "?"
    name = f.filename.replace(os.sep, "/")
    name = name.split("/simtrain/", 1)[1] if "/simtrain/" in name else Path(name).name
    return f"{name}:{f.name}"


def run_case(case: Case, folder: Path, timing: Timing | None = None,
             memory_bytes: int | None = MEMORY_HEADROOM_BYTES) -> Outcome:  # fmt: skip
    """Run one case through the CLI in this process, in ``folder`` (created, then removed),
    and judge it (``Outcome.failures``); timed and limited only with a ``timing``."""
    from click.testing import CliRunner

    from simtrain.cli import main

    folder = folder.resolve()
    materialize(case, folder)
    cwd = os.getcwd()
    exc_text = where = trace = ""
    t0 = timing.now() if timing else 0.0
    limit = timing.guard() if timing else contextlib.nullcontext()
    result = None
    try:
        os.chdir(folder)
        with limit, memory_capped(memory_bytes):
            result = CliRunner().invoke(main, list(case.argv), catch_exceptions=True)
    except CaseTimeout as exc:
        exc_text, where = f"timeout: {exc}", _where(exc.__traceback__)
        trace = "".join(traceback.format_exception(exc)[-12:])
    except MemoryError as exc:  # raised outside the runner's own catch
        exc_text, where = "MemoryError", _where(exc.__traceback__)
    finally:
        seconds = timing.now() - t0 if timing else None
        os.chdir(cwd)
        _close_figures()
        shutil.rmtree(folder, ignore_errors=True)
    if result is not None:
        stdout, stderr, code = result.stdout, result.stderr, result.exit_code
        exc = result.exception
        if exc is not None and not isinstance(exc, SystemExit):
            exc_text = f"{type(exc).__name__}: {str(exc)[:500]}"
            where = _where(exc.__traceback__)
            trace = "".join(traceback.format_exception(exc)[-12:])
    else:
        stdout = stderr = ""
        code = None
    out = Outcome(case.family, code, seconds, stdout, stderr, exc_text, where, trace)
    out.failures = judge(case, out, str(folder), timing.limit_s if timing else None)
    return out


def _close_figures() -> None:
    import sys

    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")


_KEY_RE = re.compile(r"^error: (?:(?P<file>[^\s:]+): )?(?P<key>[^:]{1,80}?): (?P<msg>.*)$", re.S)


def message_key(message: str) -> str:
    """The key an error message blames and its first words, for grouping."""
    m = _KEY_RE.match(message)
    if not m:
        return " ".join(message.split()[:4])[:60]
    words = re.sub(r"\(got .*", "", m.group("msg")).split()[:4]
    return f"{m.group('key')[:40]}: {' '.join(words)[:40]}"


def long_message_cause(msg: str) -> str:
    """What makes an error message long: the value echoed whole, the list of allowed values
    (named by the message's words), the key echoed whole, or else the message itself."""
    allowed = msg.split("; allowed: ", 1)[1] if "; allowed: " in msg else ""
    body = msg[: len(msg) - len(allowed)]
    value = body.split("(got ", 1)[1] if "(got " in body else ""
    m = _KEY_RE.match(msg)
    key = m.group("key") if m else ""
    parts = {"the value echoed whole": len(value), "the key echoed whole": len(key),
             "the allowed list": len(allowed)}  # fmt: skip
    cause = max(parts, key=parts.__getitem__)
    if parts[cause] < 80:
        return f"message: {message_key(msg)}"
    if cause == "the allowed list":
        return f"the allowed list after {message_key(msg)!r}"
    return cause


def judge(case: Case, out: Outcome, folder: str = "",
          limit_s: float | None = None) -> list[tuple[str, str]]:  # fmt: skip
    """The oracles. Classes: traceback, timeout, bad_exit, bad_message, long_message,
    invariant."""
    fam = case.family
    if out.exception.startswith("timeout"):
        return [("timeout", f"{fam} @ {out.where}")]
    if out.exception:
        return [("traceback", f"{out.exception.split(':')[0]} @ {out.where}")]
    if out.exit_code not in ALLOWED_EXIT_CODES:
        return [("bad_exit", f"{fam} exit {out.exit_code}")]
    if limit_s is not None and out.seconds is not None and out.seconds > limit_s:
        # finished, but late (the alarm fired in C code)
        return [("timeout", f"{fam} finished late ({out.seconds:.0f} s)")]
    if out.exit_code == 2:
        msg = out.stderr.strip().replace(folder + os.sep, "").replace(folder, "")
        if not msg.startswith("error:") or "\n" in msg:
            first = msg.splitlines()[0] if msg else "<nothing on stderr>"
            return [("bad_message", f"{fam}: {first[:70]}")]
        if len(msg) > MAX_MESSAGE_CHARS:
            return [("long_message", f"{long_message_cause(msg)} ({_size_class(len(msg))})")]
        return []
    if out.exit_code == 0:
        problems = check_output(case.argv, out.stdout, fp8=_low_precision_gemms(case))
        return [("invariant", f"{fam}: {p}") for p in problems]
    return []


#: A scenario's precision whose linear GEMMs run below the compute dtype (spec.precision's
#: gemm_dtype), as a YAML value or a --set: simtrain's MFU divides by the compute dtype's peak,
#: so it may exceed 1 where the profile's FP8/FP4 peak is far above its 16-bit one. (Hardware
#: profiles name the dtypes as keys, ``mxfp8:``; those are not precisions.) No upper bound is
#: checked for them: a profile's FP8 peak may be any multiple of its 16-bit one.
_LOW_PRECISION = re.compile(
    rb"precision\s*[:=]\s*[\"']?("
    + b"|".join(re.escape(k.encode()) for k, p in PRECISIONS.items() if p.gemm_dtype)
    + rb")\b"
)


def _low_precision_gemms(case: Case) -> bool:
    return any(_LOW_PRECISION.search(f.data) for f in case.files) or any(
        _LOW_PRECISION.search(a.encode()) for a in case.argv
    )


def _size_class(n: int) -> str:
    for limit in (1_000, 10_000, 100_000):
        if n <= limit:
            return f"<= {limit:,} chars"
    return "> 100,000 chars"


# Output invariants of successful runs. One function, to swap for tests/test_invariants.py's
# check_outputs when it lands.

# "nan" or "inf" as a number: next to a digit, a unit, '=', 'x' or '%' (a scenario may well be
# *named* "nan": the name is echoed as a word and is no number).
_NONFINITE_TEXT = re.compile(
    r"(?:[=x(]\s*|\d\s)[-+]?(?:nan|inf|infinity)\b|\b[-+]?(?:nan|inf|infinity)\s*(?:%|GiB|GB|ms|s\b|x\b)",
    re.I,
)


def check_output(argv: tuple[str, ...], stdout: str, fp8: bool = False) -> list[str]:
    """Problems with a successful command's output (empty: none). JSON outputs: parseable,
    finite numbers, bubble ratios in [0, 1), MFU and hardware FLOP utilisation in (0, 1] (above
    0 only with ``fp8``: an FP8-family case, whose GEMMs may beat the 16-bit peak), memory
    categories and peaks >= 0, times >= 0. Text outputs: no nan/inf."""
    if "--json" not in argv:
        problems = []
        m = _NONFINITE_TEXT.search(stdout)
        if m:
            problems.append(f"non-finite number in the text output ({m.group(0)!r})")
        b = re.search(r"^bubble ratio (\S+) \(", stdout, re.M)  # simtrain schedule
        if argv[:1] == ("schedule",) and b and not 0 <= float(b.group(1)) < 1:
            problems.append(f"schedule: bubble ratio {b.group(1)} not in [0, 1)")
        return problems
    problems: list[str] = []

    def nonfinite(token: str) -> float:
        problems.append(f"non-finite number in JSON ({token})")
        return 0.0

    try:
        doc = json.loads(stdout, parse_constant=nonfinite)
    except ValueError as exc:
        return [f"--json output is not JSON ({str(exc)[:60]})"]
    for path, key, value in _json_items(doc):
        problems += _check_item(path, key, value, fp8)
    return sorted(set(problems))


def _json_items(doc: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield path, str(k), v
            yield from _json_items(v, f"{path}.{k}")
        # hardware FLOP utilisation = MFU x hardware FLOPs / model FLOPs (run --json)
        if {"mfu", "hardware_flops_per_step", "model_flops_per_step"} <= set(doc):
            mfu, hw, model = doc["mfu"], doc["hardware_flops_per_step"], doc["model_flops_per_step"]
            if all(isinstance(x, int | float) for x in (mfu, hw, model)) and model:
                yield path, "hfu(derived)", mfu * hw / model
        if doc.get("metric") in ("mfu", "hfu") and "predicted" in doc:
            yield path, f"predicted {doc['metric']}", doc["predicted"]
    elif isinstance(doc, list):
        for v in doc:
            yield from _json_items(v, f"{path}[]")


def _check_item(path: str, key: str, value: Any, fp8: bool = False) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        if key in ("memory_bytes", "at_peak_bytes", "time_breakdown_s") and isinstance(value, dict):
            return [f"{key}.{k} = {v!r} < 0" for k, v in value.items()
                    if isinstance(v, int | float) and v < 0]  # fmt: skip
        return []
    where = re.sub(r"\[\]", "[]", path.lstrip(".")) or "<root>"
    if key == "bubble_ratio" and not 0 <= value < 1:
        return [f"{where}.bubble_ratio = {_fmt(value)} not in [0, 1)"]
    # fp8: MFU is over the 16-bit peak, which FP8-family GEMMs may beat (_LOW_PRECISION)
    if key in ("mfu", "hfu", "hfu(derived)", "predicted mfu", "predicted hfu") and not (
        0 < value and (fp8 or value <= 1)
    ):
        return [f"{where} {key} = {_fmt(value)} not in (0, {'inf' if fp8 else 1}]"]
    if (key.endswith("_bytes") or key.endswith("_s") or key in ("params", "trainable_params")) \
            and value < 0:  # fmt: skip
        return [f"{where}.{key} = {_fmt(value)} < 0"]
    return []


def _fmt(x: float) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)
