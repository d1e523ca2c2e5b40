"""Reading a launch script as far as its training command: the variables and arrays it assigns,
and the command line of the Python program it starts, expanded.

Not a shell: enough of bash for the launch scripts that Megatron-LM and its users write
(``NAME=value``, ``NAME=(...)`` arrays, ``export``, ``${NAME}``, ``${NAME:-default}``,
``${NAME[@]}``, ``$((a * b))``, line continuations, quoted strings over several lines,
comments). Anything else (conditionals, loops, command substitution) is not evaluated: a
variable it would set stays unexpanded (``$NAME``), and a flag whose value is one is reported.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from simtrain.errors import ConfigError

_ASSIGN = re.compile(r"^\s*(?:export\s+|local\s+|readonly\s+|declare\s+(?:-\w+\s+)*)?"
                     r"([A-Za-z_]\w*)\+?=(.*)$", re.S)  # fmt: skip
#: Words a line starts with that make it no launch of the training program (a test of the
#: script's path, a message): ``if [ ! -f "$PRETRAIN_SCRIPT_PATH" ]``.
NOT_A_LAUNCH = ("if", "elif", "while", "until", "[", "[[", "test", "echo", "printf", "ls", "cat")
_ARRAY_REF = re.compile(r"^\$\{([A-Za-z_]\w*)\[[@*]\]\}$")
_ARRAY_IN = re.compile(r"\$\{([A-Za-z_]\w*)\[[@*]\]\}")
_LENGTH = re.compile(r"\$\{#([A-Za-z_]\w*)(\[[@*]\])?\}")
_VAR = re.compile(r"\$\{([A-Za-z_]\w*)(?::?-([^}]*))?\}|\$([A-Za-z_]\w*)")
_ARITH = re.compile(r"\$\(\((.*?)\)\)")
_ARITH_OK = re.compile(r"^[\d\s+\-*/%()]+$")
# white space between two operands (``$((2 3))``): bash's syntax error, not squeezed into 23
_ARITH_GAP = re.compile(r"[\w}]\s+[\w$]")
#: Words that may precede an assignment.
DECLARE_WORDS = ("export", "local", "readonly", "declare")
#: Longest arithmetic expression evaluated (characters): launch scripts multiply two or three
#: numbers.
MAX_ARITH = 200
#: Longest value a shell variable may take (characters): a launch script's longest, a list of
#: flags, is a few kilobytes, and one the script exports or passes as one word cannot exceed
#: Linux's MAX_ARG_STRLEN, 32 pages = 131,072 bytes (include/uapi/linux/binfmts.h: the
#: longest single argument or environment string execve accepts). 8x that: a guard against a
#: value that doubles itself (A=$A$A), not a limit a real script meets.
MAX_VALUE = 1 << 20


@dataclass(frozen=True, slots=True)
class Command:
    """The program a launch script starts: the launcher's words before it (``torchrun
    --nproc_per_node 8``), the program (``pretrain_gpt.py``) and its arguments."""

    launcher: tuple[str, ...]
    program: str
    args: tuple[str, ...]
    variables: dict[str, str]


_BLANKS = frozenset(" \t\r\n")  # shlex's whitespace
_QUOTES = ("'", '"')
#: bash's metacharacters besides blanks: each ends a word, so a "#" after one starts a comment
_OPERATORS = frozenset(";&|()<>")


def split_words(text: str, comments: bool = True) -> list[str]:
    """The words of ``text`` as ``shlex`` splits it in posix mode with ``whitespace_split`` and,
    with ``comments``, ``#`` as its commenter (``shlex.split(text, comments)``), but for one
    thing, and in time linear in the text: shlex builds each word by ``self.token += c``, a
    copy per character, so one word of 1 MiB takes 15.3 s (0.17 s here; the 2-core dev
    machine, 2026-12-07, benchmarks/bench_shell_words.py). The state machine is CPython's ``shlex.read_token`` (3.11): outside quotes a
    backslash escapes the next character; inside double quotes only a quote or a backslash
    (else both are kept); single quotes escape nothing; an empty quoted word is a word. The one
    difference is bash's: ``#`` starts a comment at a word's start only (after a blank or one
    of ``;&|()<>``), and inside a word (``${#HOSTS[@]}``, ``$#``, ``a#b``) it is a character,
    where shlex cut the line there. A ValueError at an open quote or a trailing backslash,
    with shlex's messages (tests/test_shell_words.py checks it against shlex)."""
    out: list[str] = []
    tok: list[str] = []
    quoted = False
    state, after_escape = " ", " "
    after_operator = False  # the last character an unquoted one of ;&|()<> (bash ends a word)
    i, n = 0, len(text)
    while True:
        c = text[i] if i < n else ""
        i += 1
        if state == " " or state == "a":
            if not c:
                if tok or quoted:
                    out.append("".join(tok))
                return out
            word_start = state == " " or after_operator
            after_operator = c in _OPERATORS
            if c in _BLANKS or (comments and c == "#" and word_start):
                if c == "#":  # at a word's start: the rest of the line (shlex's readline)
                    j = text.find("\n", i)
                    i = n if j < 0 else j + 1
                if state == "a" and (tok or quoted):
                    out.append("".join(tok))
                    tok, quoted, after_escape = [], False, " "
                state = " "
            elif c in _QUOTES:
                state = c
            elif c == "\\":
                after_escape, state = "a", "\\"
            else:
                tok.append(c)
                state = "a"
        elif state in _QUOTES:
            quoted, after_operator = True, False
            if not c:
                raise ValueError("No closing quotation")
            if c == state:
                state = "a"
            elif c == "\\" and state == '"':
                after_escape, state = state, "\\"
            else:
                tok.append(c)
        else:  # a backslash's next character
            after_operator = False
            if not c:
                raise ValueError("No escaped character")
            if after_escape in _QUOTES and c != "\\" and c != after_escape:
                tok.append("\\")
            tok.append(c)
            state = after_escape


def _split(text: str, file: str, line: int) -> list[str]:
    try:
        return split_words(text)
    except ValueError as exc:
        raise ConfigError(file, f"line {line}", f"cannot read the shell line ({exc})") from None


def _squeeze_arith(text: str) -> str:
    """``$(( 2 * N ))`` as ``$((2*N))``: the white space of an arithmetic expansion removed, so
    that the shell-word split keeps it one word (bash ignores it there); an expression with
    white space between two operands (a syntax error in bash) is left as it is."""

    def squeeze(m: re.Match[str]) -> str:
        inner = m.group(1)
        if not any(c.isspace() for c in inner) or _ARITH_GAP.search(inner):
            return m.group(0)
        return "$((" + "".join(inner.split()) + "))"

    return _ARITH.sub(squeeze, text) if "$((" in text else text


#: :func:`_logical_lines`' quote state where :func:`_scan` and :func:`split_words` disagree
UNKNOWN = "?"


def _logical_lines(text: str, file: str) -> list[tuple[int, str, list[str]]]:
    """(first line number, text, words) of each logical line: continuations joined, and a
    quoted string or an array that spans lines read whole. An array ends at the ``)`` that
    balances its ``(`` (``$(...)`` and ``$((...))`` inside it count, quoted and commented
    parentheses do not); what follows it on its line (``) ; NOTE=x``, ``) && python ...``)
    is read as a line of its own, after a list operator."""
    out: list[tuple[int, str, list[str]]] = []
    buf, start = "", 0
    # what keeps the buffer open: "quote" (a quoted string), "array" (NAME=( ... ) or "".
    # While it is open a line that cannot close it joins it without re-reading the whole
    # buffer, which made long open strings quadratic: 5,000 lines, 78 KB, past 60 s, and an
    # array of 10,000 quoted items or a string of 10,000 lines holding a "'" the same (fuzz
    # campaigns). A line with quote characters is read alone from the lexer's state at the
    # buffer's end (:func:`_scan`), the buffer split whole only where that line closes it.
    pending = ""
    # depth: the open array's unbalanced "(" (it closes where a line brings it to 0)
    quote, comment, depth = "", False, 0
    lines = deque(enumerate(text.replace("\r\n", "\n").split("\n"), 1))
    while lines:
        n, raw = lines.popleft()
        quiet = "'" not in raw and '"' not in raw
        scanned = None  # (quote, comment) after this line, where it is read alone
        if pending:
            piece = raw[:-1] + " " if raw.endswith("\\") else raw + "\n"
            if quote == "" and raw.lstrip().startswith("#"):
                continue  # a comment in an array ends at its line, a backslash and all (bash)
            if quote != UNKNOWN:
                after, _end, in_comment, d = _scan(piece, quote, comment, depth)
                if after or (pending == "array" and d > 0):
                    buf, quote, comment, depth = buf + piece, after, in_comment, d
                    continue
                scanned = (after, in_comment)
            elif quiet and (pending == "quote" or ")" not in raw):
                buf += piece
                continue
        if raw.lstrip().startswith("#") and not _open_quote(buf):
            # a comment ends at its line, a backslash and all (bash does not continue it); in
            # a continued command it is left out and the command goes on
            continue
        if not buf:
            start = n
        if raw.endswith("\\"):
            buf += raw[:-1] + " "
            if scanned is not None:
                quote, comment = scanned
            continue
        buf = _squeeze_arith(buf + raw)
        try:
            words = split_words(buf)
        except ValueError:  # an open quote: the string goes on
            buf += "\n"
            pending = "quote"
            quote, _end, comment, _d = _scan(buf, "", False, 0)
            if not quote:  # split_words and _scan read it apart: each next line read whole
                quote = UNKNOWN
            continue
        m = _ASSIGN.match(buf)
        if m and m.group(2).lstrip().startswith("("):
            _q, end, _c, d = _scan(m.group(2), "", False, 0)
            if end < 0:
                buf += "\n"
                pending, quote, comment, depth = "array", "", False, d
                continue
            cut = m.start(2) + end + 1
            if buf[cut:].strip():  # (A=(...) ; NOTE=x put ";" and NOTE=x into A: a review)
                rest = _after_list_operator(buf[cut:])
                buf = buf[:cut]
                words = split_words(buf)
                if rest:  # (A=(... --bf16); kept "--bf16);": a review)
                    lines.appendleft((n, rest))
        out.append((start, buf, words))
        buf, pending = "", ""
    if buf:
        out.append((start, buf, _split(buf, file, start)))
    return out


def _after_list_operator(rest: str) -> str:
    """What follows an array's ``)`` on its line, without the list operator before it
    (``; NOTE=x`` -> ``NOTE=x``); "" when only blanks follow."""
    rest = rest.strip()
    for op in ("&&", "||", ";", "&", "|"):
        if rest.startswith(op):
            return rest[len(op) :].strip()
    return rest


def _scan(piece: str, quote: str, comment: bool, depth: int) -> tuple[str, int, bool, int]:
    """:func:`split_words`' reading (posix, ``#`` comments at a word's start) of ``piece``
    appended to a buffer that ends in ``quote`` ("", "'" or '"'), if ``comment`` in a comment,
    and ``depth`` unbalanced "(" deep: (the quote open after it, the index of the ")" that first
    brings the depth from 1 to 0 (-1: none), whether it ends in a comment, the depth after
    it). Parentheses count outside quotes and comments. A backslash escapes the next character
    outside single quotes (inside double quotes only a quote or a backslash, the one that
    matters here); a comment starts at a word's start and runs to the next line break. Linear
    in the piece."""
    end = -1
    start = True  # at a word's start: the piece starts a line (or follows a joining blank)
    i, n = 0, len(piece)
    while i < n:
        c = piece[i]
        if comment:
            comment = c != "\n"
            start = not comment
        elif quote == "'":
            if c == "'":
                quote = ""
            start = False
        elif quote == '"':
            if c == "\\":
                i += 1
            elif c == '"':
                quote = ""
            start = False
        elif c == "\\":
            i += 1
            start = False
        elif c in "'\"":
            quote, start = c, False
        elif c == "#" and start:  # (inside a word a character, as :func:`split_words` reads it)
            comment = True
        elif c == "(":
            depth, start = depth + 1, True  # (an operator: a "#" after it is a comment)
        elif c == ")":
            depth, start = depth - 1, True
            if depth == 0 and end < 0:
                end = i
        else:
            start = c in _BLANKS or c in _OPERATORS
        i += 1
    return quote, end, comment, depth


def _open_quote(buf: str) -> bool:
    """Is ``buf`` inside an open quoted string (where ``#`` is no comment)?"""
    if not buf:
        return False
    try:
        split_words(buf, comments=False)
    except ValueError:
        return True
    return False


def _arith(expr: str, env: dict[str, str]) -> str | None:
    expr = _VAR.sub(lambda m: env.get(m.group(1) or m.group(3), "x"), expr)
    expr = re.sub(r"\b([A-Za-z_]\w*)\b", lambda m: env.get(m.group(1), "x"), expr)
    if len(expr) > MAX_ARITH or not _ARITH_OK.match(expr) or "**" in expr:
        return None
    try:
        return str(int(eval(expr.replace("/", "//"), {"__builtins__": {}}, {})))  # noqa: S307
    except (ArithmeticError, SyntaxError, ValueError):
        return None


class ValueTooLong(Exception):
    """A word or variable that would grow past :data:`MAX_VALUE` characters (its name)."""


def _check_growth(word: str, env: dict[str, str], arrays: dict[str, list[str]]) -> None:
    """Raise :class:`ValueTooLong` before expanding a ``word`` whose references would make it
    longer than :data:`MAX_VALUE` (each reference at its value's length: "$A$A..." a
    thousand times over a long A), so that the text is never built."""
    size = len(word)  # each reference's text replaced by its value's
    for m in _ARRAY_IN.finditer(word):
        if m.group(1) in arrays:
            items = arrays[m.group(1)]
            size += sum(map(len, items)) + len(items) - 1 - len(m.group(0))
    for m in _VAR.finditer(word):
        name = m.group(1) or m.group(3)
        if name in env:
            size += len(env[name]) - len(m.group(0))
    if size > MAX_VALUE:
        raise ValueTooLong(word[:40])


def expand_words(words: list[str], env: dict[str, str],
                 arrays: dict[str, list[str]]) -> list[str]:  # fmt: skip
    """The words, each expanded (:func:`expand`), stopped with :class:`ValueTooLong` once they
    pass :data:`MAX_VALUE` characters together (a command of 160 "${A[@]}" over an array of
    262,144 items built 42 million arguments: a review of the fuzz campaign's fixes)."""
    out: list[str] = []
    size = 0
    for w in words:
        for e in expand(w, env, arrays):
            size += len(e) + 1
            if size > MAX_VALUE:
                raise ValueTooLong(w[:40])
            out.append(e)
    return out


def _length(m: re.Match[str], env: dict[str, str], arrays: dict[str, list[str]]) -> str:
    """bash's ``${#A[@]}`` (the array's items) and ``${#V}`` (the value's characters; of an
    array, its first item's); a name the script does not set stays as written."""
    name, whole = m.group(1), m.group(2) is not None
    # a value still holding what was not evaluated ($(scontrol ...), `...`, $UNSET) has no
    # length here: HOSTS=($(scontrol show hostnames ...)) counted its 4 words (a review)
    unevaluated = [*arrays.get(name, ()), env.get(name, "")]
    if any("$" in v or "`" in v for v in unevaluated):
        return m.group(0)
    if whole:
        return str(len(arrays[name])) if name in arrays else m.group(0)
    if name in env:
        return str(len(env[name]))
    if name in arrays:
        return str(len(arrays[name][0]) if arrays[name] else 0)
    return m.group(0)


def expand(word: str, env: dict[str, str], arrays: dict[str, list[str]]) -> list[str]:
    """A word with its variables expanded; a word that was only a variable is split on white
    space (as an unquoted ``$ARGS`` is); an array reference is the array's words."""
    m = _ARRAY_REF.match(word)
    if m:
        if m.group(1) in arrays:
            return list(arrays[m.group(1)])
        return [word]
    _check_growth(word, env, arrays)
    if "${#" in word:  # lengths first: ``$(( ${#HOSTS[@]} * 8 ))`` is then arithmetic
        word = _LENGTH.sub(lambda m: _length(m, env, arrays), word)
    whole_var = _VAR.fullmatch(word) is not None
    # ``"... ${ARGS[@]}"`` inside a longer string: the array's words joined by spaces (bash)
    word = _ARRAY_IN.sub(lambda m: " ".join(arrays[m.group(1)]) if m.group(1) in arrays
                         else m.group(0), word)  # fmt: skip

    def arith(m: re.Match[str]) -> str:
        got = _arith(m.group(1), env)
        return got if got is not None else m.group(0)

    def var(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        if name in env:
            return env[name]
        if name in arrays:
            return " ".join(arrays[name]) if whole_var else (arrays[name] or [""])[0]
        if m.group(2) is not None:
            return m.group(2)
        return m.group(0)

    out = _VAR.sub(var, _ARITH.sub(arith, word))
    if whole_var:
        try:
            return split_words(out, comments=False)
        except ValueError:
            return out.split()
    return [out]


#: Words that end one command of a list (``a && b``, ``a || b``, ``a; b``, ``a | b``, ``a & b``).
LIST_OPERATORS = ("&&", "||", ";", "|", "&")


def _list_commands(words: list[str]) -> list[list[str]]:
    """The commands of a list, split at :data:`LIST_OPERATORS` (a word or a trailing ``;``,
    as ``logs;``); none empty."""
    out: list[list[str]] = [[]]
    for w in words:
        if w in LIST_OPERATORS:
            out.append([])
        elif w.endswith(";") and not w.endswith("\\;"):
            out[-1].append(w[:-1])
            out.append([])
        else:
            out[-1].append(w)
    return [c for c in out if c]


def _launch(words: list[str], env: dict[str, str], arrays: dict[str, list[str]], file: str,
            line: int) -> Command | None:  # fmt: skip
    """The ``*.py`` program one command runs, with its launcher words and arguments, after
    expansion; None when it runs none."""
    expanded = expand_words(words, env, arrays)
    # ``bash -c "$LAUNCHER $CMD"`` (BigScience's tr11 slurm script): the command string's
    # own words
    at = next((i for i, w in enumerate(expanded[:-1]) if w == "-c" and i > 0
               and expanded[i - 1].rsplit("/", 1)[-1] in ("bash", "sh")), None)  # fmt: skip
    if at is not None:
        expanded = expanded[: at + 1] + _split(expanded[at + 1], file, line) + expanded[at + 2 :]
    for i, w in enumerate(expanded):
        if w.endswith(".py") and not w.startswith("-"):
            args = expanded[i + 1 :]
            # the command ends at a pipe, a list operator or a redirection (| tee log)
            end = next((k for k, a in enumerate(args) if a in LIST_OPERATORS
                        or re.match(r"^\d*[<>]", a)), len(args))  # fmt: skip
            return Command(tuple(expanded[:i]), w, tuple(args[:end]), dict(env))
    return None


def read_command(text: str, file: str) -> Command | None:
    """The command of the script that launches its training program, expanded: of the lines
    that run a ``*.py`` program (not a test of its path, ``if [ -f ... ]``), the first whose
    program is a ``pretrain*.py`` or that passes ``--num-layers``, else the first that passes
    any ``--`` flag, else the first; None when the text starts no Python program (a file of
    flags). ``NAME+=value`` and ``NAME+=(...)`` append, as in bash."""
    env: dict[str, str] = {}
    arrays: dict[str, list[str]] = {}
    found: list[Command] = []
    n = 0
    target: tuple[str, str] | None = None  # (name, "variable" / "array") being assigned
    try:
        for n, line, words in _logical_lines(text, file):
            target = None
            m = _ASSIGN.match(line)
            ws = words
            if ws and ws[0] in DECLARE_WORDS:
                # its options (declare -a, -x, ...) only: an array's own items keep their dashes
                # (declare -a EXTRA=(--bf16 --use-distributed-optimizer): a fuzz campaign)
                ws = ws[1:]
                while ws and ws[0].startswith("-"):
                    ws = ws[1:]
            if m and ws and (ws[0].startswith(m.group(1) + "=")
                             or ws[0].startswith(m.group(1) + "+=")):  # fmt: skip
                name, rhs = m.group(1), m.group(2).strip()
                append = ws[0].startswith(name + "+=")
                if rhs.startswith("("):
                    inner = ws[:]
                    inner[0] = inner[0].split("=", 1)[1]
                    # the line ends at the array's own ")" (_logical_lines): one "(" off the
                    # first word, one ")" off the last (A=(--x=$(nproc) ) lost the item's ")")
                    if inner[0].startswith("("):
                        inner[0] = inner[0][1:]
                    if inner[-1].endswith(")"):
                        inner[-1] = inner[-1][:-1]
                    items = [w for w in inner if w]
                    # (A=(${A[@]} ${A[@]}) forty-five times: 2^46 items, a MemoryError)
                    target = (name, "array")
                    kept = arrays.get(name, []) if append else []
                    values = expand_words([w for w in items if w], env, arrays)
                    if (
                        sum(map(len, kept)) + len(kept) + sum(map(len, values)) + len(values)
                        > MAX_VALUE
                    ):
                        raise ValueTooLong(" ".join(values[:4])[:40])
                    arrays[name] = kept + values
                    continue
                if len(ws) == 1 or words[0] in DECLARE_WORDS:  # NAME=value alone (or export ...)
                    target = (name, "variable")
                    value = ws[0].split("=", 1)[1]
                    value = " ".join(expand(value, env, arrays)) if value else ""
                    env[name] = (env.get(name, "") + value) if append else value
                    if len(env[name]) > MAX_VALUE:  # (A=$A$A forty times: 2^41 characters)
                        raise ConfigError(file, name, f"the variable grows past {MAX_VALUE:,} "
                                          f"characters (line {n})", env[name][:40] + "...")  # fmt: skip
                    continue
                # NAME=value command ...: an environment prefix of a command
                while ws and _ASSIGN.match(ws[0]) and "=" in ws[0]:
                    ws = ws[1:]
                words = ws
            # each command of a list (``[ -d logs ] || mkdir logs; python pretrain_gpt.py ...``):
            # a test or a print is not the launch, the command after it may be
            for seg in _list_commands(words):
                while seg and seg[0] in ("then", "do", "else", "{", "time"):  # a keyword before it
                    seg = seg[1:]
                if not seg or seg[0] in NOT_A_LAUNCH:
                    continue
                command = _launch(seg, env, arrays, file, n)
                if command is not None:
                    found.append(command)
                    break
    except ValueTooLong as exc:  # ("$A$A..." over a long A: the text is never built)
        if target is not None:  # A=$A$A forty times: 2^41 characters
            name, kind = target
            raise ConfigError(file, name, f"the {kind} grows past {MAX_VALUE:,} characters "
                              f"(line {n})", f"{exc}...") from None  # fmt: skip
        raise ConfigError(file, f"line {n}", f"the command grows past {MAX_VALUE:,} characters "
                          "as its variables expand", f"{exc}...") from None  # fmt: skip
    for good in (
        lambda c: c.program.rsplit("/", 1)[-1].startswith("pretrain") or "--num-layers" in c.args,
        lambda c: any(a.startswith("--") for a in c.args),
        lambda c: True,
    ):
        for c in found:
            if good(c):
                return c
    return None


def flag_words(text: str, file: str) -> list[str]:
    """Every word of a file of flags (comments and line breaks ignored)."""
    return [w for _n, _line, words in _logical_lines(text, file) for w in words]


def parse_flags(args: tuple[str, ...] | list[str]) -> dict[str, str | bool]:
    """``--flag value ...`` and ``--flag=value`` as {flag: value}; a flag followed by another
    flag (or nothing) is ``True`` (argparse's store_true); several values (nargs='+') are joined
    by spaces; a repeated flag keeps its last value (argparse). Words before the first flag are
    ignored (returned under the key ``""``)."""
    out: dict[str, str | bool] = {}
    current = ""
    values: list[str] = []

    def close() -> None:
        if current:
            out[current] = " ".join(values) if values else True
        elif values:
            out[""] = " ".join(values)

    for w in args:
        if w.startswith("--") and len(w) > 2:
            close()
            name, eq, val = w.partition("=")
            current, values = name, ([val] if eq else [])
        else:
            values.append(w)
    close()
    return out
