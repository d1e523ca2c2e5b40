"""Hugging Face config.json files for the importer's tests: one of tests/data's configs with
changes laid over it, written where ``from_hf_config`` reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
HF = DATA / "hf"
#: A change's value that removes the key (the configuration class's default then applies).
DROP = object()


def write_config(tmp_path: Path, base: str | Path | dict[str, Any],
                 change: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """``tmp_path``/config.json: ``base`` (a file name under tests/data/hf, a path, or the
    config itself) with ``change`` laid over it, :data:`DROP` values removing their keys."""
    if isinstance(base, dict):
        cfg = dict(base)
    else:
        cfg = json.loads((HF / base if isinstance(base, str) else base).read_text())
    for k, v in (change or {}).items():
        if v is DROP:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return p
