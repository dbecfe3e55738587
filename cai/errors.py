"""The few exceptions cai raises on purpose.

The library raises; only ``cai/cli/`` turns a :class:`CaiError` into a one-line message and an
exit code. ``ConfigError`` carries every problem found in one validation pass, each with the file
and line it comes from, so a user fixes them all at once.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path


class CaiError(Exception):
    """An error the user can act on. ``str(err)`` is the whole message; exit code 2."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One problem in one input file: ``FILE:LINE: field: message``."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


class ConfigError(CaiError):
    """One or more problems in input files, reported together, one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class InputError(CaiError):
    """Bad input data (prompts, pairs) or an argument that cannot work."""


class RunLockedError(CaiError):
    """Another cai process is writing the same run directory."""


class EngineError(CaiError):
    """An inference engine that cannot start (no memory for it, an unsupported model, ...)."""


class Interrupted(CaiError):
    """Ctrl-C: what finished is kept and a rerun resumes (exit code 130)."""

    exit_code = 130


class BackendUnavailable(CaiError):
    """No server answered for too long (exit code 3: try again later; the run resumes).

    ``done`` maps the index of each request of the failed call that did finish to its result, so
    a stage can keep them before it stops.
    """

    exit_code = 3

    def __init__(self, message: str, done: dict | None = None):
        super().__init__(message)
        self.done = done or {}


class StorageError(CaiError):
    """A file could not be written: the disk is full, or the run directory is read-only (exit
    code 3). Finished work is kept; free some space or restore write access, and the same
    command resumes."""

    exit_code = 3

    # errno -> (what happened, what to do), in plain words
    REASONS = {
        errno.ENOSPC: ("no space left on device", "free some space"),
        errno.EDQUOT: ("disk quota exceeded", "free some space"),
        errno.EROFS: ("read-only file system", "make it writable"),
        errno.EACCES: ("permission denied", "restore write access"),
        errno.EPERM: ("operation not permitted", "restore write access"),
    }

    @classmethod
    def of(cls, err: OSError, kept_in: str | Path | None = None) -> StorageError | None:
        """The one-line error for ``err``, or None when it is not about storage.

        >>> str(StorageError.of(OSError(errno.ENOSPC, "", "r/a.jsonl")))
        'r/a.jsonl: no space left on device; free some space and run the same command again'
        """
        if err.errno not in cls.REASONS:
            return None
        reason, advice = cls.REASONS[err.errno]
        where = f"{err.filename}: " if err.filename is not None else ""
        kept = f"finished work is kept in {kept_in}; " if kept_in is not None else ""
        return cls(f"{where}{reason}; {kept}{advice} and run the same command again")
