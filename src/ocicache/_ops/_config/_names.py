"""
The kinds of value that name something: URLs, a Redis address, registry
hosts, image references, platforms, the globs the policy matches with, and
a credential program's command line.
"""

from __future__ import annotations

import os
import re
from typing import Any

from attrs import frozen
from hyperlink import DecodedURL

from ..._spec._closure import Platform
from ..._spec._reference import InvalidReference, is_registry_host, parse_image_reference
from ._types import Invalid, Kind, ListOf, Text, parse_with

__all__ = [
    "PLATFORM", "REGISTRY_HOST", "Argv", "Glob", "HttpURL", "HttpURLText", "ImageRef", "RedisAddress", "RedisURL",
    "check_glob",
]


# -- URLs


@frozen
class HttpURL(Kind[DecodedURL]):
    """
    An C{http://} or C{https://} URL with a host and no query or fragment,
    its empty path segments dropped.  Credentials in it are refused
    without echoing it (it may hold a password): C{credentials} says what
    to use instead.
    """

    credentials: str
    bare: bool = False
    """Its path dropped too: a base URL (C{peer_url})."""
    name = "URL"

    def __call__(self, value: object) -> DecodedURL:
        text = Text()(value)
        url = _url(text)
        if any(url.userinfo):
            raise Invalid(f"must not contain credentials; use {self.credentials}")
        if url.scheme not in ("http", "https") or not url.host:
            raise Invalid(f"{text!r} must be an http:// or https:// URL with a host")
        if url.query or url.fragment:
            raise Invalid(f"{text!r} must not have a query or fragment")
        return url.replace(path=() if self.bare else tuple(segment for segment in url.path if segment))

    def show(self, value: Any) -> object:
        return str(value)


@frozen
class HttpURLText(Kind[str]):
    """An C{http://} or C{https://} URL with a host and no credentials, kept as written."""

    name = "URL"

    def __call__(self, value: object) -> str:
        text = Text()(value)
        url = _url(text)
        if url.scheme not in ("http", "https") or not url.host or any(url.userinfo):
            raise Invalid(f"{text!r} must be an http:// or https:// URL with a host and no credentials")
        return text


def _url(text: str) -> DecodedURL:
    try:
        url = DecodedURL.from_text(text)
        url.port  # noqa: B018 (a bad port raises only when read)
    except Exception:
        raise Invalid(f"{text!r} is not a URL") from None
    return url


@frozen
class RedisAddress:
    host: str
    port: int
    db: int


@frozen
class RedisURL(Kind[RedisAddress]):
    """C{redis://host[:port][/db]}; a password goes in its own keys."""

    name = "redis URL"

    def __call__(self, value: object) -> RedisAddress:
        text = Text()(value)
        url = _url(text)
        if any(url.userinfo):
            raise Invalid("must not contain credentials; use redis_password_file or redis_password_env")
        if url.scheme != "redis" or not url.host or url.query or url.fragment:
            raise Invalid(f"{text!r} must be redis://host[:port][/db]")
        segments = [segment for segment in url.path if segment]
        if len(segments) > 1 or (segments and not segments[0].isdigit()):
            raise Invalid(f"{text!r}: the path must be a database number, such as /0")
        return RedisAddress(str(url.host), url.port or 6379, int(segments[0]) if segments else 0)


# -- globs (matched by L{ocicache._policy}, which compiles them)

_MAX_GLOB = 255


def check_glob(text: str) -> str:
    """
    The grammar of a glob the policy matches with: C{*}, C{**} and C{?},
    everything else itself.  Returns C{text}, or raises C{ValueError}.
    """
    if not text:
        raise ValueError("a pattern must not be empty")
    if len(text) > _MAX_GLOB:
        raise ValueError(f"a pattern is at most {_MAX_GLOB} characters")
    if not text.isprintable():
        raise ValueError(f"{text!r}: a pattern holds no control characters")
    if "***" in text:
        raise ValueError(f"{text!r}: use * or **, not ***")
    return text


@frozen
class Glob(Kind[str]):
    """
    A glob (L{check_glob}); with C{alphabet}, one that could match a name
    of that alphabet (plus the glob's own C{*} and C{?}).
    """

    alphabet: re.Pattern[str] | None = None
    expected: str = "a string"
    name = "glob"

    def __call__(self, value: object) -> str:
        if not isinstance(value, str):
            raise Invalid(f"expected {self.expected}")
        if self.alphabet is not None and not self.alphabet.match(value):
            raise Invalid(f"{value[:80]!r} can never match: names are lower-case letters,"
                          " digits, '.', '_', '-' and '/', tags also upper-case letters")
        return parse_with(check_glob, value)


# -- kinds of this domain


@frozen
class PlatformKind(Kind[Platform]):
    name = "platform"

    def __call__(self, value: object) -> Platform:
        if not isinstance(value, str):
            raise Invalid("expected a string")
        return parse_with(Platform.parse, value)

    def show(self, value: Any) -> object:
        return str(value)


PLATFORM = PlatformKind()


@frozen
class ImageRef(Kind[str]):
    name = "image reference"

    def __call__(self, value: object) -> str:
        if not isinstance(value, str):
            raise Invalid("expected a string")
        try:
            parse_image_reference(value)
        except InvalidReference as e:
            raise Invalid(f"{value!r} is not an image reference ({e.message})") from None
        return value


_NON_EMPTY_STRINGS = "expected a non-empty list of non-empty strings"
_ARGV = ListOf(Text(bool), empty=_NON_EMPTY_STRINGS, refusal=_NON_EMPTY_STRINGS)

REGISTRY_HOST = Text(is_registry_host, "{value} is not a registry host name such as 'docker.io'", lower=True,
                     name="registry host")


@frozen
class Argv(Kind[tuple[str, ...]]):
    """A program and its arguments: the program an absolute path or a name on C{$PATH}."""

    name = "list of strings"

    def __call__(self, value: object) -> tuple[str, ...]:
        argv = _ARGV(value)
        if "/" in argv[0] and not os.path.isabs(argv[0]):
            raise Invalid(f"{argv[0][:80]!r} must be an absolute path or a name on $PATH")
        return argv
