"""`simtrain schema` (issue 17): JSON Schema draft 2020-12 of scenario and plan files, generated
from the parsers' tables. Every shipped scenario and plan validates against it (with the
maintained ``jsonschema`` validator); files that break a key's rule fail both the schema and
simtrain's own parser; the schemas committed under schemas/ are the generated ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from simtrain.apps.plan.file import parse_plan
from simtrain.apps.schema import KINDS, schema, schema_json
from simtrain.cli import main
from simtrain.errors import ConfigError
from simtrain.spec.model import PRESETS
from simtrain.spec.precision import PRECISIONS
from simtrain.spec.runtime import available_runtimes
from simtrain.spec.scenario import ParallelSpec, TrainingSpec, parse_scenario
from simtrain.spec.yamlfile import load_yaml

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
PLANS = sorted((ROOT / "plans").glob("*.yaml"))


def validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(kind))


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_a_valid_draft_2020_12_schema(kind: str) -> None:
    s = schema(kind)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(s)


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_shipped_scenario_validates(path: Path) -> None:
    errors = [e.message for e in validator("scenario").iter_errors(load_yaml(path))]
    assert errors == []


@pytest.mark.parametrize("path", PLANS, ids=lambda p: p.name)
def test_every_shipped_plan_validates(path: Path) -> None:
    errors = [e.message for e in validator("plan").iter_errors(load_yaml(path))]
    assert errors == []


def test_there_are_files_to_validate() -> None:
    assert len(SCENARIOS) >= 10 and len(PLANS) >= 3


GOOD = {
    "model": {"preset": "gpt2"},
    "hardware": "a100_sxm4_80gb",
    "training": {"seq_len": 1024, "global_batch": 8, "micro_batch": 1},
    "parallelism": {"dp": 8},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(GOOD))
    node = doc
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return doc


class _Delete:
    """The key is removed (its repr is stable, so that test ids are the same in every process)."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()
BAD_SCENARIOS = [
    ("training.precision", "fp8"),  # not in spec.precision.PRECISIONS
    ("training.micro_batch", 0),  # spec.limits: >= 1
    ("training.seq_len", 2**24 + 1),  # spec.limits: <= 2^24
    ("training.seq_len", "1024"),  # a string for an integer
    ("parallelism.zero_stage", 4),
    ("parallelism.schedule", "1f2b"),
    ("parallelism.bucket_mb", 0),  # spec.limits FLOAT_RANGES: >= 1e-6
    ("parallelism.tensor", 2),  # unknown key
    ("model.preset", "gpt5"),
    ("model.dropout", 1.5),
    ("model", {"layers": 2, "hidden": 64}),  # neither preset, hf_config nor the shape keys
    ("model.hf_config", "x/config.json"),  # next to a preset
    ("hardware", "b300"),  # not a shipped profile, not a .yaml path
    ("runtime", "megatron_2030"),
    ("runtime", {"name": "megatron_core", "p2p": "telepathy"}),
    ("runtime", {"name": "nanotron", "host_us_per_op": -1}),
    ("training.peft", {"method": "lora", "target_modules": ["q", "x"]}),
    ("name", "a/b"),  # names the output folder
    ("model", DELETE),
    ("colour", "blue"),  # unknown top-level key
]


@pytest.mark.parametrize(("path", "value"), BAD_SCENARIOS, ids=lambda x: str(x)[:30])
def test_invalid_scenarios_fail_schema_and_parser(path: str, value: Any) -> None:
    doc = _with(path, value)
    assert not validator("scenario").is_valid(doc)
    with pytest.raises(ConfigError):
        parse_scenario(doc, "bad.yaml", ROOT)


def test_good_scenario_passes_both() -> None:
    assert validator("scenario").is_valid(GOOD)
    parse_scenario(GOOD, "good.yaml", ROOT)
    doc = _with("training.peft", {"method": "lora", "target_modules": "q, v"})
    assert validator("scenario").is_valid(doc)
    parse_scenario(doc, "good.yaml", ROOT)


BAD_PLANS = [
    ("objective", "fastest"),
    ("top", 0),
    ("tokens", 0.5),
    ("training.micro_batch", 2),  # searched: fixed.micro_batch
    ("fixed.tp", [1, 0]),
    ("fixed.recompute", "some"),
    ("gpus", {"min": 8}),  # max required
    ("failures.checkpoint_interval", "weekly"),
    ("hardware", []),
    ("runtime", "torchtitan2"),
]


@pytest.mark.parametrize(("path", "value"), BAD_PLANS, ids=lambda x: str(x)[:30])
def test_invalid_plans_fail_schema_and_parser(path: str, value: Any) -> None:
    doc = load_yaml(ROOT / "plans" / "llama3_8b.yaml")
    node = doc
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    assert not validator("plan").is_valid(doc)
    with pytest.raises(ConfigError):
        parse_plan(doc, "bad_plan.yaml", ROOT / "plans")


def test_schema_follows_the_code() -> None:
    """Generated, not copied: every dataclass field and allowed value is there."""
    s = schema("scenario")["properties"]
    assert set(s["parallelism"]["properties"]) == {
        f for f in ParallelSpec.__dataclass_fields__ if f != "last_node_gpus"
    }
    assert set(s["training"]["properties"]) == set(TrainingSpec.__dataclass_fields__) - {
        "cp_shards"  # not a YAML key: a context-parallel rank's view (spec.scenario)
    }
    assert s["training"]["properties"]["precision"]["enum"] == list(PRECISIONS)
    assert set(PRESETS) <= set(s["model"]["properties"]["preset"]["enum"])
    assert s["runtime"]["anyOf"][0]["enum"] == available_runtimes()
    assert s["training"]["properties"]["seq_len"]["maximum"] == 2**24


@pytest.mark.parametrize("kind", KINDS)
def test_cli_prints_the_schema_and_the_committed_copy_is_current(kind: str) -> None:
    r = CliRunner().invoke(main, ["schema", kind])
    assert r.exit_code == 0
    assert r.stdout == schema_json(kind)
    committed = ROOT / "schemas" / f"{kind}.schema.json"
    assert committed.read_text() == schema_json(kind), (
        f"regenerate: simtrain schema {kind} --out schemas/{kind}.schema.json"
    )


def test_schema_default_kind_is_scenario() -> None:
    r = CliRunner().invoke(main, ["schema"])
    assert r.exit_code == 0 and json.loads(r.stdout)["title"] == "simtrain scenario"
    r = CliRunner().invoke(main, ["schema", "hardware"])
    assert r.exit_code == 2 and r.stderr.startswith("error: ")
