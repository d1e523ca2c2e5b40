"""Importers: a training configuration of another framework -> a simtrain scenario.

``simtrain import megatron|deepspeed|torchtitan|nanotron FILE`` prints the scenario YAML
(:func:`import_command`); ``simtrain run --from KIND FILE`` simulates it directly
(:func:`load_foreign`). Each importer lists what it did not simulate (common.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from simtrain.apps.importers.common import (
    Imported,
    load_imported,
    strict_check,
    to_yaml,
    with_overrides,
)
from simtrain.errors import ConfigError
from simtrain.spec.scenario import Scenario

KINDS = ("megatron", "deepspeed", "torchtitan", "nanotron")


def import_config(kind: str, path: str | Path, model: str | None = None,
                  gpus: int | None = None) -> Imported:  # fmt: skip
    """Read ``path`` as a ``kind`` configuration. ``model``: the model of a DeepSpeed config
    (a Hugging Face config.json or a simtrain preset); ``gpus``: the job's GPU count where the
    file gives none or another."""
    if kind not in KINDS:
        raise ConfigError(None, "import", "unknown kind", kind, " | ".join(KINDS))
    if model is not None and kind != "deepspeed":
        raise ConfigError(None, "--model", f"only for deepspeed (a {kind} configuration names "
                          "its model; change it with --set model.KEY=VALUE)", model)  # fmt: skip
    if kind == "megatron":
        from simtrain.apps.importers.megatron import import_megatron

        return import_megatron(path, gpus)
    if kind == "deepspeed":
        from simtrain.apps.importers.deepspeed import import_deepspeed

        return import_deepspeed(path, model, gpus)
    if kind == "torchtitan":
        from simtrain.apps.importers.torchtitan import import_torchtitan

        return import_torchtitan(path, gpus)
    from simtrain.apps.importers.nanotron import import_nanotron

    return import_nanotron(path, gpus)


def import_command(kind: str, path: str, model: str | None, gpus: int | None, out: str | None,
                   overrides: tuple[str, ...], strict: bool, command: str,
                   warn: Callable[[str], None]) -> str:  # fmt: skip
    """``simtrain import``: the scenario YAML (checked by loading it with the overrides), to
    stdout or ``out``; each setting not simulated goes to ``warn`` (stderr)."""
    imp = import_config(kind, path, model, gpus)
    if strict:
        strict_check(imp)
    data = with_overrides(imp, overrides)
    load_imported(imp, overrides)  # the YAML printed is a valid scenario
    text = to_yaml(Imported(imp.kind, imp.file, data, imp.assumptions, imp.unsupported,
                            imp.no_effect, imp.needs, imp.origins), command)  # fmt: skip
    for u in imp.unsupported:
        warn(f"warning: not simulated: {u}")
    if out:
        Path(out).write_text(text)
        return f"wrote {out}\n"
    return text


def load_foreign(kind: str, path: str, model: str | None, gpus: int | None,
                 overrides: tuple[str, ...], warn: Callable[[str], None]) -> Scenario:  # fmt: skip
    """``simtrain run --from KIND FILE``: the imported scenario with ``--set`` overrides."""
    imp = import_config(kind, path, model, gpus)
    for u in imp.unsupported:
        warn(f"warning: not simulated: {u}")
    return load_imported(imp, overrides)


def foreign_as_file(kind: str, path: str, model: str | None, gpus: int | None,
                    folder: str | Path) -> Path:  # fmt: skip
    """The imported scenario written as a YAML file in ``folder`` (for what reads scenarios by
    path: the fit advice of ``simtrain run``)."""
    imp = import_config(kind, path, model, gpus)
    p = Path(folder) / "imported.yaml"
    p.write_text(to_yaml(imp, f"simtrain import {kind} {path}"))
    return p


__all__ = ["KINDS", "Imported", "foreign_as_file", "import_command", "import_config",
           "load_foreign"]  # fmt: skip
