"""shell.split_words is shlex's word split (posix, whitespace_split, '#' comments or none) in linear
time: checked against shlex itself on random texts of the characters that steer it, and on
every launch script of the repository."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from simtrain.apps.importers import shell
from simtrain.apps.importers.shell import _scan, split_words

ROOT = Path(__file__).resolve().parents[1]
#: every character shlex treats apart (blanks, quotes, the escape, the commenter) and two
#: ordinary ones
ALPHABET = " \t\r\n'\"\\#a$()"


def _shlex(text: str, comments: bool) -> list[str] | str:
    lex = shlex.shlex(text, posix=True)
    lex.whitespace_split = True
    lex.commenters = "#" if comments else ""
    try:
        return list(lex)
    except ValueError as exc:
        return f"ValueError: {exc}"


def _ours(text: str, comments: bool) -> list[str] | str:
    try:
        return split_words(text, comments)
    except ValueError as exc:
        return f"ValueError: {exc}"


#: the pieces of a random text: every character of ALPHABET but "#", which comes only at a
#: word's start (after a blank), where bash and shlex both start a comment; inside a word bash
#: reads it as a character and shlex as a comment (test_a_hash_inside_a_word_is_a_character)
PIECES = [c for c in ALPHABET if c != "#"] + [" #", "\n#", "\t#"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=24), st.booleans())
def test_the_words_are_shlexs(pieces: list[str], comments: bool) -> None:
    text = "".join(pieces)
    assume(not any(f"\\{b}#" in text for b in " \t\n"))  # an escaped blank: mid-word
    assert _ours(text, comments) == _shlex(text, comments)


@pytest.mark.parametrize(("text", "expected"), [
    ("NNODES=${#HOSTS[@]} --n 2", ["NNODES=${#HOSTS[@]}", "--n", "2"]),
    ("while [[ $# -gt 0 ]]", ["while", "[[", "$#", "-gt", "0", "]]"]),
    ("a#b # c", ["a#b"]), ("'x'#y", ["x#y"]), ("x \\#y", ["x", "#y"]), ("x\\ #y", ["x #y"]),
    ("#c\nd", ["d"]), ("x #c\nd", ["x", "d"]),
])  # fmt: skip
def test_a_hash_inside_a_word_is_a_character(text: str, expected: list[str]) -> None:
    """bash starts a comment at a word's start only (bash(1), COMMENTS: "a word beginning with
    #"); shlex anywhere, so ``NNODES=${#HOSTS[@]}`` lost its value and an array holding
    ``${#B[@]}`` never closed (the review)."""
    assert split_words(text) == expected
    assert split_words(text, comments=False) == _shlex(text, False)


@pytest.mark.parametrize("text", [
    "", " ", "''", '""', "a''b", "'a b'c", '"a\\"b"', '"a\\b"', "'a\\b'", "a\\ b", "\\",
    "'open", '"open', "a #b c", "'#' x # y\nz", "x\\\ny", '"$(date +%s)" --x=$(nproc)',
    "A=(\n --a 1 # (c\n)\n", "é ü\u00a0x", "a\r\nb",
])  # fmt: skip
@pytest.mark.parametrize("comments", [True, False])
def test_known_texts(text: str, comments: bool) -> None:
    assert _ours(text, comments) == _shlex(text, comments)


def test_launch_scripts_of_the_repository() -> None:
    """Every .sh file of the repository (the importer's fixture scripts: Megatron-LM's 133
    scripts were compared by hand, not kept here)."""
    scripts = [p for p in ROOT.rglob("*.sh") if ".venv" not in p.parts]
    assert scripts
    for p in scripts:
        text = p.read_text(errors="replace")
        for comments in (True, False):
            assert _ours(text, comments) == _shlex(text, comments), p


def test_a_word_of_the_longest_value_is_read_in_one_pass() -> None:
    """Counted, not timed: the text is indexed once per character. (That alone would not catch
    a copy of the word at each character, shlex's self.token += c, whose cost on a word of
    MAX_VALUE, 1 MiB, benchmarks/bench_shell_words.py measures: 15.3 s against 0.17 s.)"""
    reads = [0]

    class Counting(str):
        def __getitem__(self, i):  # noqa: ANN001, ANN204
            reads[0] += 1
            return str.__getitem__(self, i)

    word = "x" * shell.MAX_VALUE
    text = Counting(word + " y")
    assert split_words(text) == [word, "y"]
    assert reads[0] <= len(text) + 1


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=24))
def test_the_line_scanner_agrees_with_the_splitter_on_open_quotes(text: str) -> None:
    """_logical_lines reads a line alone with _scan where it can, and the whole buffer with
    split_words where a line closes it: both must see the same open quote (a text that ends
    inside quotes is split_words' ValueError; a trailing backslash, its other one, is a line
    continuation there and never reaches either)."""
    assume(not text.endswith("\\"))
    try:
        split_words(text)
        open_quote = False
    except ValueError:
        open_quote = True
    assert (_scan(text, "", False, 0)[0] != "") == open_quote
