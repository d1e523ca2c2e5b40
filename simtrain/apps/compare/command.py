"""``simtrain compare``: run the comparison, write its files, print the table or JSON."""

from __future__ import annotations

from pathlib import Path

from simtrain.apps.compare.plots import ladder_plot, tradeoff_plot
from simtrain.apps.compare.run import VariantComparison, compare
from simtrain.apps.compare.tables import table, to_csv
from simtrain.apps.compare.variants import ADHOC_HELP, BUILTIN_VARIANTS, split_variants
from simtrain.errors import ConfigError
from simtrain.report.tables import dumps


def write_outputs(comp: VariantComparison, out_dir: str | Path) -> list[Path]:
    """compare.csv, compare.json, ladder.png and tradeoff.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.csv").write_text(to_csv(comp))
    (out / "compare.json").write_text(dumps(comp.to_json()))
    return [
        out / "compare.csv",
        out / "compare.json",
        ladder_plot(comp, out / "ladder.png"),
        tradeoff_plot(comp, out / "tradeoff.png"),
    ]


#: Variants one comparison simulates side by side (each a whole simulation; there are 15
#: built-in ones): a table of more is not read, and each costs a simulation.
MAX_VARIANTS = 32


def compare_command(
    scenario: str,
    variants: str,
    ladder: bool,
    out_dir: str | None,
    as_json: bool,
    overrides: tuple[str, ...],
) -> str:
    """What ``simtrain compare`` prints; writes compare.csv, compare.json, ladder.png and
    tradeoff.png into ``out_dir`` (default ``plots/<scenario name>/compare``)."""
    specs = split_variants(variants or "")
    if not specs:
        raise ConfigError(None, "--variants", "give at least one variant", variants,
                          ", ".join(BUILTIN_VARIANTS) + f", or {ADHOC_HELP}")  # fmt: skip
    if len(specs) > MAX_VARIANTS:
        # (150 variants of a 2,048-GPU scenario ran past a minute: a fuzz campaign)
        raise ConfigError(None, "--variants", f"{len(specs)} variants: at most {MAX_VARIANTS} "
                          "side by side", variants[:60] + "...")  # fmt: skip
    comp = compare(scenario, specs, ladder=ladder, overrides=overrides)
    folder = Path(out_dir) if out_dir else Path("plots") / comp.scenario / "compare"
    paths = write_outputs(comp, folder)
    if as_json:
        return dumps(comp.to_json())
    return table(comp) + "\n\nwrote " + ", ".join(str(p) for p in paths) + "\n"
