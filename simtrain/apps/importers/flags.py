"""Command-line flags as an importer reads them: typed look-ups that remember which flags were
read, so that every flag left over is listed (no effect, or not simulated), never dropped."""

from __future__ import annotations

import math

from simtrain.apps.importers.common import Reading
from simtrain.errors import ConfigError


class Flags:
    """``{flag: value}`` (``True`` for a flag without a value) with typed, recorded reads."""

    def __init__(self, flags: dict[str, str | bool], r: Reading) -> None:
        self.flags = flags
        self.r = r
        self.read: set[str] = set()

    def __contains__(self, flag: str) -> bool:
        return flag in self.flags

    def has(self, *flags: str) -> bool:
        """Any of ``flags`` given (and marked read)."""
        found = False
        for f in flags:
            if f in self.flags:
                self.read.add(f)
                found = True
        return found

    def value(self, flag: str) -> str | None:
        """The flag's text, None when absent; a flag that needs a value and has none, or whose
        value is a shell variable the script never set, is an error naming it."""
        if flag not in self.flags:
            return None
        self.read.add(flag)
        v = self.flags[flag]
        if v is True:
            raise ConfigError(self.r.file, flag, "needs a value")
        text = str(v)
        if "$" in text:
            raise ConfigError(self.r.file, flag, "is a shell variable the script does not set "
                              "(give the value in the file, or the scenario key with --set)",
                              text)  # fmt: skip
        return text

    def int_(self, flag: str, default: int | None = None) -> int | None:
        text = self.value(flag)
        if text is None:
            return default
        try:
            return int(text)
        except ValueError:
            raise ConfigError(self.r.file, flag, "must be an integer", text) from None

    def pos_(self, flag: str, default: int | None = None, hi: int | None = None,
             lo: int = 1) -> int | None:  # fmt: skip
        """An integer flag that must be at least ``lo`` (positive by default) and at most
        ``hi``: 0, a negative or a number past the range is an error naming the flag (never
        read as absent, nor as the default)."""
        v = self.int_(flag)
        if v is None:
            return default
        if v < lo:
            raise ConfigError(self.r.file, flag, "must be positive" if lo == 1 else
                              f"must be >= {lo}", v)  # fmt: skip
        if hi is not None and v > hi:
            raise ConfigError(self.r.file, flag, f"must be <= {hi:,}", v)
        return v

    def float_(self, flag: str, default: float | None = None) -> float | None:
        text = self.value(flag)
        if text is None:
            return default
        try:
            v = float(text)
        except ValueError:
            raise ConfigError(self.r.file, flag, "must be a number", text) from None
        if not math.isfinite(v):
            raise ConfigError(self.r.file, flag, "must be a finite number", text)
        return v

    def bool_(self, flag: str) -> bool:
        """A store_true flag: given or not (a value after it is an error)."""
        if flag not in self.flags:
            return False
        self.read.add(flag)
        v = self.flags[flag]
        if v is not True:
            raise ConfigError(self.r.file, flag, "takes no value", v)
        return True

    def leftover(self) -> list[str]:
        """The flags not read, in the file's order."""
        return [f for f in self.flags if f not in self.read]

    def shown(self, flag: str) -> str:
        """``--flag value`` as written (for the lists of the emitted YAML)."""
        v = self.flags.get(flag, True)
        return flag if v is True else f"{flag} {v}"
