"""Speed of the launch-script reader's lexer against shlex, on one word of growing length.

shlex builds a word by ``self.token += c`` on an attribute, a copy per character, so its time
grows with the square of the word; ``simtrain.apps.importers.shell.split_words`` appends to a
list and joins once. Prints, for words of 16 KiB to MAX_VALUE (1 MiB; shlex only up to
``--shlex-max``; one run, it is quadratic), the best of ``--repeat`` runs of split_words, and
the time of read_command on every .sh file of the repository.

Run:  python benchmarks/bench_shell_words.py [--repeat 3] [--shlex-max 1048576]
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from simtrain.apps.importers.shell import MAX_VALUE, read_command, split_words

ROOT = Path(__file__).resolve().parents[1]


def _shlex(text: str) -> list[str]:
    lex = shlex.shlex(text, posix=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    return list(lex)


def best_s(fn, text: str, repeat: int) -> float:  # noqa: ANN001
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--shlex-max", type=int, default=MAX_VALUE)
    args = ap.parse_args()
    print(f"{'word bytes':>11}  {'shlex s':>9}  {'split_words s':>13}  {'ratio':>7}")
    size = 16 * 2**10
    while size <= MAX_VALUE:
        text = "x" * size + " y"
        ours = best_s(split_words, text, args.repeat)
        if size <= args.shlex_max:
            theirs = best_s(_shlex, text, 1)  # (quadratic: one run)
            print(f"{size:>11,}  {theirs:>9.3f}  {ours:>13.4f}  {theirs / ours:>6.0f}x")
        else:
            print(f"{size:>11,}  {'-':>9}  {ours:>13.4f}")
        size *= 2
    scripts = [p for p in ROOT.rglob("*.sh") if ".venv" not in p.parts]
    t0 = time.perf_counter()
    for p in scripts:
        read_command(p.read_text(errors="replace"), str(p))
    print(f"read_command on the repository's {len(scripts)} .sh file(s): "
          f"{time.perf_counter() - t0:.4f} s")  # fmt: skip


if __name__ == "__main__":
    main()
