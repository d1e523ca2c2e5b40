"""Domain errors. The CLI turns them into one-line messages and exit code 2."""

from __future__ import annotations


class SimtrainError(Exception):
    """Base class of every error simtrain reports to the user without a traceback."""


class ConfigError(SimtrainError):
    """A scenario, hardware or plan file is invalid.

    The message names the file, the key path, the value and what is allowed.
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
        where = f"{file}: " if file else ""
        text = f"{where}{key}: {message}"
        if value is not None:
            text += f" (got {value!r})"
        if allowed:
            text += f"; allowed: {allowed}"
        super().__init__(text)


class ScheduleError(SimtrainError):
    """A pipeline schedule violates its invariants; the message carries the rank x step grid."""


class DeadlockError(SimtrainError):
    """The engine finished with unfinished tasks; the message names each GPU's blocked action."""
