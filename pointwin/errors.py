"""One family of user-facing errors and warnings.

Everything that goes wrong because of the user's input (a data file, a label, a prediction file, a
config key, a checkpoint) raises a :class:`PointwinError` subclass whose message names the file (and,
where it applies, the line, byte offset, key or column) and what was expected. The ``pointwin`` command
prints such an error on one line and exits with code 2; any other exception is a bug and keeps its
traceback (as does every error with ``pointwin --debug``).

The errors survive pickling (a worker process of a ``ProcessPoolExecutor`` raising one hands the same
class, message, file and offset to the parent), whatever their constructor's signature.

Input that is accepted but partly ignored (an empty TFRecord, a label of an unknown class, prediction
frames without ground truth, duplicated ground truth) emits a :class:`PointwinWarning` with counts; the
command prints them in its summary.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from typing import Any

__all__ = ["DataError", "EvaluationError", "PointwinError", "PointwinWarning", "did_you_mean", "one_line"]


def _rebuild(cls: type, message: str, state: dict) -> BaseException:
    obj = cls.__new__(cls)
    BaseException.__init__(obj, message)
    obj.__dict__.update(state)
    return obj


class PointwinError(Exception):
    """A user error; ``str(e)`` is the complete one-line message.

    Attributes (None when they do not apply): ``path`` (the file), ``line`` (1-based line number),
    ``offset`` (byte offset), ``key`` (config key, column or field name).
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, line: int | None = None,
                 offset: int | None = None, key: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.line = None if line is None else int(line)
        self.offset = None if offset is None else int(offset)
        self.key = key
        if self.path is not None and self.path not in message:
            where = self.path + (f":{self.line}" if self.line is not None else "")
            message = f"{where}: {message}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException pickles as cls(*args): subclasses with other constructor signatures would fail to
        # unpickle in the parent process ("process pool terminated abruptly"); rebuild without __init__.
        return (_rebuild, (type(self), str(self), dict(self.__dict__)))


class DataError(PointwinError, ValueError):
    """A data file (points, labels, calibration, TFRecord, Parquet, info file) is malformed or implausible."""


class EvaluationError(PointwinError, ValueError):
    """A prediction or ground-truth file cannot be evaluated as it is (NaN scores, non-positive sizes, ...)."""


class PointwinWarning(UserWarning):
    """Input accepted but partly ignored; the message gives the counts and the file(s)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'train'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def one_line(error: BaseException) -> str:
    """The error's message on one line. A PointwinError re-raised by a torch DataLoader worker carries the
    worker's traceback in its message ("Caught DataError in DataLoader worker process 0. Original
    Traceback ..."): keep only the original message, which names the file."""
    text = str(error)
    if "Original Traceback" in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1].strip()
        name = type(error).__name__
        for prefix in (f"{type(error).__module__}.{name}: ", f"{name}: "):
            if last.startswith(prefix):
                return last[len(prefix):]
        return last
    return " ".join(text.split("\n"))
