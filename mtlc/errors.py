"""Errors a user can act on: where in which file, which key, what is wrong.

Every problem with a spec becomes a `SpecError` carrying `file:line:col: key.path:
message`; the CLI prints it and exits 2 instead of showing a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ` (did you mean 'x'?)` suffix, or '' when nothing is close."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean '{by_lower[close[0]]}'?)" if close else ""


def unknown(kind: str, word: str, choices: Iterable[str]) -> str:
    """The message for a name that is not one of `choices`."""
    choices = sorted(choices)
    hint = did_you_mean(word, choices)
    if not hint and len(choices) <= 12:
        hint = f" (expected one of: {', '.join(choices)})"
    return f"unknown {kind} '{word}'{hint}"


@dataclass
class Location:
    file: str = "<spec>"
    line: int | None = None
    col: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.col or 1}"


class MtlcError(Exception):
    """Base for errors that the CLI reports as one clean message.

    ``exit_code`` is 2 (the command could not start: bad input) unless a subclass says
    1 (it started and the machine failed it, e.g. a full disk).
    """

    exit_code: int = 2


class SpecError(MtlcError):
    """A problem in a spec, located at a key path and (when known) a file position."""

    def __init__(self, message: str, path: str = "", location: Location | None = None):
        self.message = message
        self.path = path
        self.location = location or Location()
        super().__init__(str(self))

    def __str__(self) -> str:
        key = f" {self.path}:" if self.path else ""
        return one_line(f"{self.location}:{key} {self.message}")


def one_line(text: str) -> str:
    """`text` with newlines and other unprintable characters escaped (`'a\\n'`), so an
    error quoting a user's key or value stays one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
