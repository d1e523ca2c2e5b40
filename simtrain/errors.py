"""Domain errors. The CLI turns them into one-line messages and exit code 2."""

from __future__ import annotations

import difflib
from typing import Any

#: Longest echo of an offending value (or key) in a message, in characters; longer ones are cut
#: with "...". A value is shown to say which one is meant, not to be read back: a 7 MB string
#: or a billion-element list given as a value must not become a 7 MB message.
MAX_ECHO = 80
#: Longest list of allowed values in a message; a longer one (every key of a section) ends with
#: "... (N more)": the "did you mean" suggestion names the nearest (an unknown hardware
#: profile's message also points to `simtrain hardware`, which lists every one).
MAX_ALLOWED = 400
#: Longest message without its file name: the allowed list is cut shorter where the rest of the
#: message (a long key, message and echoed value) leaves it less than MAX_ALLOWED, down to
#: MIN_ALLOWED characters. Choices, not measurements: seven 80-column terminal lines, of which
#: the allowed list keeps at least two (a dozen short names), so that with "error: " and a
#: case's path an exit-2 line stays within tests/fuzz_cases.py's MAX_MESSAGE_CHARS (600).
MAX_MESSAGE = 7 * 80
MIN_ALLOWED = 2 * 80


class SimtrainError(Exception):
    """Base class of every error simtrain reports to the user without a traceback."""


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _repr(value: object, budget: int, depth: int = 0) -> str:
    """``repr(value)``, stopping once ``budget`` characters are written: never walks a whole
    huge or deeply nested value, and never fails (a recursive list, an integer of a million
    digits, an object whose ``__repr__`` raises)."""
    if isinstance(value, str):
        return repr(value[: budget + 1])
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() > 256:  # repr of a huge int is slow, or refused (int_max_str_digits)
            return f"<integer of {int(value.bit_length() * 0.30103) + 1} digits>"
        return repr(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple | dict | set | frozenset):
        if depth > 8:
            return "..."
        if isinstance(value, dict):
            items = ((k, v) for k, v in value.items())
            opening, closing = "{", "}"
        else:
            items = ((None, v) for v in value)
            opening, closing = {list: ("[", "]"), tuple: ("(", ")")}.get(type(value), ("{", "}"))
        out, used = [opening], 1
        for i, (k, v) in enumerate(items):
            if used > budget:
                out.append("...")
                break
            part = "" if i == 0 else ", "
            if k is not None or isinstance(value, dict):
                part += _repr(k, budget - used, depth + 1) + ": "
            part += _repr(v, budget - used - len(part), depth + 1)
            out.append(part)
            used += len(part)
        if isinstance(value, tuple) and len(value) == 1:
            out.append(",")
        out.append(closing)
        return "".join(out)
    try:
        return repr(value)[: budget + 1]
    except Exception:  # noqa: BLE001 - an echo must never fail
        return f"<{type(value).__name__}>"


def echo(value: object, limit: int = MAX_ECHO) -> str:
    """A one-line ``repr`` of ``value``, at most ``limit`` characters."""
    return _cut(_repr(value, limit), limit)


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` as one line (line breaks and other control characters escaped), cut to
    ``limit`` characters when given."""
    s = str(text)
    if limit is not None:
        s = s[: limit + 1]
    if not s.isprintable():
        s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
    return s if limit is None else _cut(s, limit)


class ConfigError(SimtrainError):
    """A scenario, hardware or plan file is invalid.

    The message names the file, the key path, the value and what is allowed. It is one line:
    the value and the key are cut to :data:`MAX_ECHO` characters.
    """

    def __init__(
        self,
        file: str | None,
        key: str,
        message: str,
        value: object = None,
        allowed: str | None = None,
    ) -> None:
        self.file = file
        self.key = key
        self.value = value
        self.allowed = allowed
        self.message = message
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"{one_line(self.file, 4 * MAX_ECHO)}: " if self.file else ""
        text = f"{where}{one_line(self.key, MAX_ECHO)}: {one_line(self.message)}"
        if self.value is not None:
            text += f" (got {echo(self.value)})"
        if self.allowed:
            # the list's own "..., ... (N more)" ending is not in allowed_list's limit
            room = MAX_MESSAGE - (len(text) - len(where)) - len("; allowed:  | ... (9999 more)")
            limit = min(MAX_ALLOWED, max(MIN_ALLOWED, room))
            text += f"; allowed: {allowed_list(one_line(self.allowed), limit)}"
        return text

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # picklable: raised in workers
        return (type(self), (self.file, self.key, self.message, self.value, self.allowed))

    def blaming(self, file: str | None) -> ConfigError:
        """The same error, naming ``file`` instead (e.g. ``--set`` for an override's value)."""
        return ConfigError(file, self.key, self.message, self.value, self.allowed)


def allowed_list(text: str, limit: int = MAX_ALLOWED) -> str:
    """``text`` (items separated by ", " or " | ") cut after the items that fit in ``limit``
    characters, with how many were left out."""
    if len(text) <= limit:
        return text
    sep = " | " if " | " in text else ", "
    items = text.split(sep)
    kept: list[str] = []
    for item in items:
        if len(sep.join([*kept, item])) > limit:
            break
        kept.append(item)
    if not kept:
        return _cut(text, limit)
    cut = f"{sep.join(kept)}{sep}... ({len(items) - len(kept)} more)"
    return cut if len(cut) < len(text) else text


def did_you_mean(given: Any, allowed: tuple[str, ...] | list[str]) -> str:
    """``"; did you mean 'micro_batch'?"`` for the allowed name nearest to ``given``
    (difflib's ratio >= 0.6), or ``""``."""
    if not isinstance(given, str) or len(given) > MAX_ECHO:
        return ""
    close = difflib.get_close_matches(given, [str(a) for a in allowed], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def unknown_key(file: str | None, key: Any, prefix: str, allowed: tuple[str, ...] | list[str],
                listed: str | None = None) -> ConfigError:  # fmt: skip
    """The error of an unknown key: the nearest allowed one suggested, all of them listed."""
    return ConfigError(file, f"{prefix}{key}", f"unknown key{did_you_mean(key, allowed)}", None,
                       listed if listed is not None else ", ".join(allowed))  # fmt: skip


def unknown_value(file: str | None, key: str, value: Any, allowed: tuple[Any, ...] | list[Any],
                  what: str = "value", nearest_to: Any = None, sep: str = " | ",
                  also: str = "") -> ConfigError:  # fmt: skip
    """The error of a value not among ``allowed``: the nearest allowed one suggested (to
    ``nearest_to`` when given, e.g. the one bad item of a list value; "" for none), all of them
    listed, joined by ``sep`` (", " for long lists of names), and ``also`` after them."""
    names = [str(a) for a in allowed]
    near = value if nearest_to is None else nearest_to
    return ConfigError(file, key, f"unknown {what}{did_you_mean(near, names)}", value,
                       sep.join(names) + also)  # fmt: skip


class ScheduleError(SimtrainError):
    """A pipeline schedule violates its invariants; the message carries the rank x step grid."""


class DeadlockError(SimtrainError):
    """The engine finished with unfinished tasks; the message names each GPU's blocked action."""
