"""
The one place the configuration reads files and the environment, after
every key has been validated: secrets, the files C{[auth]} names, and
the CA files whose existence is checked.

A secret is given as C{<name>_file} or C{<name>_env}, never literally (a
literal ends up in backups and bug reports).  Its value is the file's
first line, or the variable's value, with one trailing line ending
removed, and nothing else: the bytes in between are the secret.  An empty
one is refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TypeVar

from ._types import Invalid

__all__ = ["Files"]

T = TypeVar("T")

_MAX_SECRET = 64 << 10
"""No secret is longer: a key that names a device or a huge file is refused, not read whole."""


def _without_line_ending(text: str) -> str:
    return text.removesuffix("\n").removesuffix("\r")


class Files:
    """
    Reads what the validated keys name; every failure is an L{Invalid}
    that names the key it came from and never the secret.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def secret(self, name: str, file: str | None, env: str | None) -> str | None:
        """
        The secret C{<name>_file} or C{<name>_env} names (the table has
        checked that at most one is set); C{None} when neither is.
        """
        if file is not None:
            try:
                with open(file, encoding="utf-8") as f:
                    line = f.readline(_MAX_SECRET + 1)
            except OSError as e:
                raise Invalid(f"cannot read {file!r}: {e.strerror}", (f"{name}_file",)) from None
            except UnicodeDecodeError:
                raise Invalid(f"{file!r} is not UTF-8", (f"{name}_file",)) from None
            value = _without_line_ending(line)
            if len(value) > _MAX_SECRET:
                raise Invalid(f"{file!r}: its first line is longer than {_MAX_SECRET} characters", (f"{name}_file",))
            if not value:
                raise Invalid(f"{file!r} has nothing on its first line", (f"{name}_file",))
            return value
        if env is not None:
            value = _without_line_ending(self._environ.get(env, ""))
            if not value:
                raise Invalid(f"environment variable {env!r} is not set", (f"{name}_env",))
            return value
        return None

    def parsed(self, key: str, path: str | None, read: Callable[[str], T]) -> T | None:
        """What C{read} makes of the file at C{path} (C{None}: unset); its C{ValueError} names C{key}."""
        if path is None:
            return None
        try:
            return read(path)
        except ValueError as e:
            raise Invalid(str(e), (key,)) from None

    @property
    def environ(self) -> Mapping[str, str]:
        """The environment, for the keys whose default is read from it (the outbound proxy)."""
        return self._environ

    def readable(self, key: str, path: str | None) -> str | None:
        """C{path}, once it is known to be a file (a CA bundle read later by TLS)."""
        if path is not None and not os.path.isfile(path):
            raise Invalid(f"{path!r} is not a readable file", (key,))
        return path
