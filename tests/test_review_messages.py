"""Small messages a user review (2026-12-07) found misleading, each worked by hand."""

from __future__ import annotations

import pytest

from simtrain.errors import ConfigError
from simtrain.spec.scenario import load_scenario

TP = "scenarios/llama3_70b_tp_overlap.yaml"  # 80 layers, pp 4


def test_virtual_stages_that_do_not_divide_the_layers_are_the_key_named() -> None:
    # pp 4 divides 80 layers; pp x v = 12 does not: the virtual stages are at fault
    with pytest.raises(ConfigError) as e:
        load_scenario(TP, ["parallelism.schedule=interleaved", "parallelism.virtual_stages=3"])
    assert e.value.key == "parallelism.virtual_stages"
    assert "pp x virtual_stages = 4 x 3 must divide model.layers = 80" in str(e.value)
    # pp 3 does not divide 80 itself: pp is the key
    with pytest.raises(ConfigError) as e:
        load_scenario(TP, ["parallelism.pp=3", "parallelism.dp=1", "cluster.nodes=1",
                           "cluster.gpus_per_node=24", "parallelism.tp=8",
                           "training.global_batch=16"])  # fmt: skip
    assert e.value.key == "parallelism.pp"


def test_a_config_json_of_another_name_is_named_by_its_file(tmp_path) -> None:
    import json

    from simtrain.spec.model import from_hf_config

    cfg = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
           "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000}  # fmt: skip
    sub = tmp_path / "sc"
    sub.mkdir()
    (sub / "qwen_small_config.json").write_text(json.dumps(cfg))
    assert from_hf_config(sub / "qwen_small_config.json").name == "qwen_small_config"
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    assert from_hf_config(folder / "config.json").name == "my-model"  # HF's folder layout


def test_fit_advice_for_fp32_offloads_no_master_weights() -> None:
    """fp32 keeps no master copy: its offload advice names the optimizer states alone; a
    mixed-precision scenario's names both."""
    from simtrain.apps.fit import _offload

    fp32 = load_scenario("scenarios/seed_1p5b_fp32.yaml")
    amp = load_scenario("scenarios/seed_1p5b_fp32.yaml", ["training.precision=bf16"])
    assert _offload(fp32)[0].label == "optimizer states offloaded to CPU (CPU Adam)"
    assert _offload(amp)[0].label.startswith("optimizer states and master weights offloaded")


def test_zero3_explain_says_the_count_is_before_sharding() -> None:
    from simtrain.costs.memory import estimate_memory
    from simtrain.report.explain import explain_memory

    sc = load_scenario("scenarios/zero3_64gpu.yaml")
    text = "\n".join(explain_memory(sc, estimate_memory(sc)))
    assert "parameters on each GPU before ZeRO-3 shards them" in text
    assert "ZeRO-3: parameters / dp 64" in text


def test_a_name_the_font_cannot_draw_warns_nothing(tmp_path, recwarn) -> None:
    """An emoji in the scenario's name is drawn as a box; matplotlib's glyph warning (which
    quoted simtrain's plot.py on stderr) is not shown (a review, 2026-12-07)."""
    import matplotlib.pyplot as plt

    from simtrain.report.plot import save_png

    fig = plt.figure()
    fig.suptitle("лама \U0001f999")
    save_png(fig, tmp_path / "x.png")
    plt.close(fig)
    assert not [w for w in recwarn if "Glyph" in str(w.message)]


def test_the_bubble_line_splits_exactly_the_idle_fraction() -> None:
    """run's bubble-ratio line: its parts (bubble, exposed communication, exposed host time,
    each a share of the step) sum to the bubble ratio printed before them, to the rounding of
    one decimal per part (the time breakdown's conservation, tests/test_metrics.py)."""
    import re

    from simtrain.apps.simulate import simulate_scenario
    from simtrain.report.tables import run_table

    for path in ("scenarios/gpipe_8gpu.yaml", "scenarios/gpt3_175b_1024gpu.yaml",
                 "scenarios/zero3_64gpu.yaml"):  # fmt: skip
        line = next(x for x in run_table(simulate_scenario(load_scenario(path))).splitlines()
                    if x.startswith("bubble ratio"))  # fmt: skip
        total, *parts = (float(v) for v in re.findall(r"([\d.]+) %", line))
        assert parts and abs(sum(parts) - total) <= 0.05 * (len(parts) + 1), line
