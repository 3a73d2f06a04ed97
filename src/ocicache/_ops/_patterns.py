"""
The glob patterns the policy matches repository names, tags and OIDC
claims with, compiled (and so validated) when the config is loaded.

The syntax is the one CI systems use for branch filters: C{*} matches any
run of characters except C{/}, C{**} any run including C{/}, and C{?} one
character except C{/}.  Everything else matches itself; there are no
character classes, so a pattern never needs escaping.
"""

from __future__ import annotations

import re

from attrs import field, frozen

__all__ = ["Pattern"]

_MAX_LENGTH = 255


def _compile(text: str) -> re.Pattern[str]:
    if not text:
        raise ValueError("a pattern must not be empty")
    if len(text) > _MAX_LENGTH:
        raise ValueError(f"a pattern is at most {_MAX_LENGTH} characters")
    if not text.isprintable():
        raise ValueError(f"{text!r}: a pattern holds no control characters")
    if "***" in text:
        raise ValueError(f"{text!r}: use * or **, not ***")
    parts: list[str] = []
    index = 0
    while index < len(text):
        if text.startswith("**", index):
            parts.append(".*")
            index += 2
        elif text[index] == "*":
            parts.append("[^/]*")
            index += 1
        elif text[index] == "?":
            parts.append("[^/]")
            index += 1
        else:
            parts.append(re.escape(text[index]))
            index += 1
    return re.compile("".join(parts), re.DOTALL)


@frozen
class Pattern:
    """
    One glob, as the operator wrote it (C{text}) and compiled.  Raises
    C{ValueError} with a one-line reason for a pattern it refuses.
    """

    text: str
    _regex: re.Pattern[str] = field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_regex", _compile(self.text))

    def matches(self, value: str) -> bool:
        """Whether the whole of C{value} matches."""
        return self._regex.fullmatch(value) is not None

    def __str__(self) -> str:
        return self.text
