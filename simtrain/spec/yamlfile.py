"""Reading YAML files: PyYAML's safe loader, with YAML 1.2 floats (``1e9``, ``300e9``) accepted.

PyYAML implements YAML 1.1, where ``1e9`` is a string; users write it as a number.

Every input file is read within limits, so that no file makes simtrain hang, run out of memory
or print a traceback (each limit is a one-line :class:`ConfigError` naming the file):

- only regular files are read (:func:`read_text_file`): a FIFO, a device or a socket given as a
  scenario would block forever or never end; it is opened without blocking and refused;
- at most :data:`MAX_FILE_BYTES` (10 MiB; the largest shipped file, measured/published_runs.yaml,
  is 0.7 MiB);
- at most :data:`MAX_NODES` values, counted once as written (before composing: libyaml's
  composer takes ~10 us a value, so a 10 MiB list of 5 million numbers would take a minute to
  refuse) and once with aliases expanded (a "billion laughs" document of nested aliases is a
  few hundred bytes that expand to 10^9 values);
- at most :data:`MAX_DEPTH` levels of nesting (64; scenario, hardware and plan files have 4,
  published_runs.yaml 5): deeper values would overflow the stack of whatever walks them.

A key given twice in one mapping (``training:`` twice, ``{seq_len: 1024, seq_len: 2048}``) is
refused, naming the key path and both lines: YAML loaders keep the last value silently
(:func:`check_duplicate_keys`). A merge key (``<<: *base``) may be overridden, as YAML intends.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from simtrain.errors import ConfigError

#: Largest file read (bytes): 10 MiB, 14x measured/published_runs.yaml (0.7 MiB, 23,338 lines).
MAX_FILE_BYTES = 10 * 2**20
#: Most values (scalars, lists, mappings, keys) in one document, also once aliases are
#: expanded: 250,000, 5x measured/published_runs.yaml (46,710 values, 0.7 MiB). Composing that
#: many takes ~2.5 s on the idle 2-core dev machine; refusing more, < 1 s (the count stops at
#: the limit).
MAX_NODES = 250_000
#: Texts up to this many characters are composed without counting first: they cannot hold
#: enough values (at most ~1 per character) to take long.
_COUNT_FROM_CHARS = 64 * 2**10
#: Deepest nesting of lists and mappings in one document.
MAX_DEPTH = 64


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's safe loader when PyYAML has it (the 23,338-line measured/published_runs.yaml
    loads in 0.48 s instead of 2.41 s, best of 2 on the 2-core dev machine), else the
    pure-Python one; both with YAML 1.2 floats."""


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
#: YAML 1.2's integers (decimal, 0x hex, and 0b binary, which PyYAML's constructor reads): not
#: YAML 1.1's base-60 ``17:04`` (1,024) or octal ``010`` (8), which read a clock time or a
#: zero-padded number as another number without a word (a fuzz campaign: ``seq_len: 17:04``
#: ran at 1,024 tokens). Those are strings now, refused where a number is wanted.
_INT = re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$")
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _NUMBER_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _line(node: yaml.Node) -> str:
    mark = getattr(node, "start_mark", None)
    return f"line {mark.line + 1}" if mark is not None else "<root>"


def check_nodes(root: yaml.Node, file: str) -> None:
    """Refuse a composed document that nests deeper than :data:`MAX_DEPTH` or that expands
    (an alias counted at every use) to more than :data:`MAX_NODES` values.

    Walks the document level by level as if every alias were expanded, and stops as soon as
    either limit is passed: at most ~MAX_NODES steps and list entries however large the
    expansion (a billion laughs is refused after MAX_NODES), and an alias to a collection
    containing it (an infinite expansion) is refused by the depth limit."""
    level, depth, total = [root], 0, 1
    while level:
        depth += 1
        below: list[yaml.Node] = []
        for node in level:
            if node.id == "mapping":
                for k, v in node.value:
                    below.append(k)
                    below.append(v)
            elif node.id == "sequence":
                below.extend(node.value)
            if total + len(below) > MAX_NODES:
                raise ConfigError(file, "<root>", f"expands to more than {MAX_NODES:,} values "
                                  "(an alias counted at every use)")  # fmt: skip
        if below and depth > MAX_DEPTH:
            raise ConfigError(file, _line(below[0]), f"nested deeper than {MAX_DEPTH} levels "
                              "(aliases expanded)")  # fmt: skip
        total += len(below)
        level = below


_MERGE_TAG = "tag:yaml.org,2002:merge"


def check_duplicate_keys(root: yaml.Node, file: str, prefix: str = "") -> None:
    """Refuse a mapping that gives the same key twice (the loader would keep the last value
    without a word): a :class:`ConfigError` naming ``file``, the key path (after ``prefix``,
    e.g. ``training.seq_len``; list entries as ``[i]``) and the lines of both.

    Keys are compared as the loader resolves them (``seq_len`` and ``"seq_len"`` are the same
    key; ``1`` and ``"1"`` are not). Each collection is visited once (an alias is not walked
    again); the first duplicate in document order is reported."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, prefix)]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        below: list[tuple[yaml.Node, str]] = []
        if node.id == "mapping":
            first: dict[tuple[str, str], yaml.Node] = {}
            for k, v in node.value:
                if k.id != "scalar":  # a complex key: walk it, no name to compare
                    below += [(k, path), (v, path)]
                    continue
                if k.tag == _MERGE_TAG:  # ``<<: *base``: later keys override it, as intended
                    below.append((v, path))
                    continue
                where = f"{path}.{k.value}" if path else str(k.value)
                ident = (k.tag, k.value)
                if ident in first:
                    a, b = first[ident].start_mark.line + 1, k.start_mark.line + 1
                    lines = f"on line {a}" if a == b else f"on lines {a} and {b}"
                    raise ConfigError(file, where, f"key given twice, {lines} (YAML would keep "
                                      "the second silently); give it once")  # fmt: skip
                first[ident] = k
                below.append((v, where))
        elif node.id == "sequence":
            below = [(v, f"{path}[{i}]") for i, v in enumerate(node.value)]
        stack.extend(reversed(below))  # document order


def _count_events(text: str, file: str) -> None:
    """Refuse a text with more than :data:`MAX_NODES` values as written, or nested deeper
    than :data:`MAX_DEPTH`, from libyaml's event stream (~3 us a value), stopping at the limit."""
    depth, values = 0, 0
    for ev in yaml.parse(text, Loader=_Loader):
        if isinstance(ev, yaml.CollectionStartEvent):
            depth += 1
            values += 1
            if depth > MAX_DEPTH:
                raise ConfigError(file, _line(ev), f"nested deeper than {MAX_DEPTH} levels")
        elif isinstance(ev, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(ev, yaml.ScalarEvent):
            values += 1
        if values > MAX_NODES:
            raise ConfigError(file, _line(ev), f"more than {MAX_NODES:,} values")


def parse_yaml(text: str, file: str, prefix: str = "") -> Any:
    """Parse YAML text within the limits above; every failure is a one-line
    :class:`ConfigError` naming ``file``. ``prefix``: the key path the text is the value of
    (``--set training.peft={...}``), which a duplicate key's path starts with."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(file, "<file>", f"larger than {MAX_FILE_BYTES // 2**20} MiB")
    loader = None
    try:
        if len(text) > _COUNT_FROM_CHARS:
            _count_events(text, file)
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        check_nodes(node, file)
        check_duplicate_keys(node, file, prefix)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "<root>"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(file, where, f"invalid YAML: {problem}") from None
    except RecursionError:  # the pure-Python composer, before check_nodes sees the depth
        raise ConfigError(file, "<root>", f"nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, OverflowError, TypeError) as exc:  # e.g. an integer of 5,000 digits
        raise ConfigError(file, "<value>", f"invalid YAML value: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_text_file(path: str | Path, referrer: tuple[str | None, str] | None = None,
                   what: str = "file") -> str:  # fmt: skip
    """The UTF-8 text of the regular file ``path``, at most :data:`MAX_FILE_BYTES`.

    Opened without blocking, then checked with ``fstat``: a FIFO or a device is refused, never
    waited on. Errors name the path and ``<file>``, or with ``referrer`` = (file, key) the file
    and key that named the path, with the path as the value."""
    p = str(path)
    where, key, value = (p, "<file>", None) if referrer is None else (*referrer, p)

    def fail(message: str) -> ConfigError:
        return ConfigError(where, key, message, value)

    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        raise fail(f"{what} not found") from None
    except OSError as exc:
        raise fail(f"cannot read ({exc.strerror})") from None
    except ValueError as exc:  # an embedded NUL
        raise fail(f"cannot read ({exc})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise fail("is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise fail("not a regular file (a FIFO, device or socket is not read)")
        if st.st_size > MAX_FILE_BYTES:
            raise fail(f"larger than {MAX_FILE_BYTES // 2**20} MiB")
        chunks, n = [], 0
        while n <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - n)
            if not chunk:
                break
            chunks.append(chunk)
            n += len(chunk)
    except OSError as exc:
        raise fail(f"cannot read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if n > MAX_FILE_BYTES:
        raise fail(f"larger than {MAX_FILE_BYTES // 2**20} MiB")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise fail(f"not a UTF-8 text {what}") from None


def is_file(path: str | Path) -> bool:
    """``Path.is_file`` that is False, not an exception, for a name too long or with a NUL."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def exists(path: str | Path) -> bool:
    """``Path.exists`` that is False, not an exception, for a name too long or with a NUL."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def load_yaml(path: str | Path) -> Any:
    """Read and parse a YAML file (a regular file of at most 10 MiB, within the limits above)."""
    p = Path(path)
    text = read_text_file(p).replace("\r\n", "\n").replace("\r", "\n")  # as Path.read_text
    return parse_yaml(text, str(p))
