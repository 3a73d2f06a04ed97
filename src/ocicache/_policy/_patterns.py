"""
The glob patterns the policy matches repository names, tags and OIDC
claims with.  The config validates their text (L{check_glob}, the one
grammar); the policy compiles them once, when it is built from a config.

The syntax is the one CI systems use for branch filters: C{*} matches any
run of characters except C{/}, C{**} any run including C{/}, and C{?} one
character except C{/}.  Everything else matches itself; there are no
character classes, so a pattern never needs escaping.
"""

from __future__ import annotations

import re

from attrs import field, frozen

from .._ops._config import check_glob

__all__ = ["Pattern"]


def _compile(text: str) -> re.Pattern[str]:
    check_glob(text)
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
