"""
The general value types of the configuration's keys, each written once and named
by the schema's fields (L{ocicache._ops._config._fields.key}): what a TOML
value must be, what it becomes, and how the reference shows it.

A kind is called with the TOML value; it returns the parsed value or
raises L{Invalid} with a one-line reason (the loader adds the key path).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Generic, Literal, TypeVar

from attrs import frozen

__all__ = [
    "BOOLEAN", "Boolean", "Choice", "CountOrAuto", "CountOrPercent", "Duration", "Integer", "Invalid", "Kind",
    "ListOf", "Number", "OrNever", "POSITIVE", "Refused", "Size", "SizeOrPercent", "Subset", "TableOf", "Text",
    "parse_duration", "parse_size", "parse_with", "show_duration", "show_size",
]

T = TypeVar("T")
V = TypeVar("V")


class Invalid(ValueError):
    """
    A value refused: the reason, and where below the table being read
    (C{("refs", 0)}); each enclosing table prefixes its own key.
    """

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def at(self, *segments: str | int) -> Invalid:
        return Invalid(self.message, (*segments, *self.path))


def _wrong_type(value: object, expected: str) -> Invalid:
    got = "a boolean" if isinstance(value, bool) else type(value).__name__
    return Invalid(f"expected {expected}, got {got}")


class Kind(Generic[T]):
    """One value type: C{name} for the reference, C{__call__} to parse."""

    name = "value"

    def describe(self) -> str:
        """What the reference's "type" column says."""
        return self.name

    def __call__(self, value: object) -> T:
        raise NotImplementedError

    def show(self, value: Any) -> object:
        """The TOML value that means C{value} (a parsed default)."""
        return value


# -- durations and sizes: "30s", "5m", "16MiB" (the example file's header)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_UNITS = {"TiB": 1 << 40, "GiB": 1 << 30, "MiB": 1 << 20, "KiB": 1 << 10, "B": 1, None: 1}


def parse_duration(value: object) -> float:
    """
    Parse C{"30s"}, C{"5m"}, C{"2h"} or C{"7d"} (or a bare number of
    seconds) into seconds.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("expected a duration such as '5m'")
    if not isinstance(value, str):
        if not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a duration; use a number with s, m, h or d, such as '5m'")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"{value!r} is too long")
    return seconds


def parse_size(value: object) -> int:
    """
    Parse C{"150MiB"} and friends (C{KiB}, C{MiB}, C{GiB}, C{TiB}, or a bare
    number of bytes) into bytes.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("expected a size such as '50GiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a size; use a number with KiB, MiB, GiB or TiB, such as '50GiB'")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def show_duration(seconds: float) -> str:
    """The shortest exact spelling: C{300.0} is C{"5m"}."""
    for unit, scale in _DURATION_UNITS.items():
        if seconds and seconds % scale == 0:
            return f"{int(seconds // scale)}{unit}"
    return f"{seconds:g}s"


def show_size(size: int) -> str:
    """The shortest exact spelling: C{16 << 20} is C{"16MiB"}."""
    for unit, scale in _SIZE_UNITS.items():
        if size and size % scale == 0 and unit:
            return f"{size // scale}{unit}"
    return f"{size}B"


def parse_with(parse: Callable[[V], T], value: V) -> T:
    try:
        return parse(value)
    except (ValueError, OverflowError) as e:
        raise Invalid(str(e)) from None


@frozen
class Duration(Kind[float]):
    """Seconds: C{"90s"}, C{"5m"}, C{"12h"}, C{"7d"} or a number."""

    minimum: float = 0.0
    """Below it: C{refusal}; C{positive} refuses the minimum itself."""
    positive: bool = False
    maximum: float = math.inf
    refusal: str = "must be positive"
    too_long: str = ""
    """Above C{maximum}; by default C{refusal}."""
    name = "duration"

    def __call__(self, value: object) -> float:
        seconds = parse_with(parse_duration, value)
        if seconds < self.minimum or (self.positive and seconds <= self.minimum):
            raise Invalid(self.refusal)
        if seconds > self.maximum:
            raise Invalid(self.too_long or self.refusal)
        return seconds

    def show(self, value: Any) -> object:
        return show_duration(value)


POSITIVE = Duration(positive=True)
"""A duration above zero: timeouts, intervals, TTLs that must pass."""


@frozen
class Size(Kind[int]):
    """Bytes: C{"150MiB"}, C{"50GiB"} or a number."""

    minimum: int = 0
    maximum: int | float = math.inf
    refusal: str = ""
    zero: bool = False
    """0 is accepted below C{minimum} (C{local_max_size}: no local tier)."""
    name = "size"

    def __call__(self, value: object) -> int:
        size = parse_with(parse_size, value)
        if not (self.zero and size == 0) and not self.minimum <= size <= self.maximum:
            raise Invalid(self.refusal)
        return size

    def show(self, value: Any) -> object:
        return show_size(value)


def _percent(text: str, maximum: float, inclusive: bool, example: str) -> float:
    try:
        percent = float(text.strip()[:-1])
    except ValueError:
        raise Invalid(f"{text!r} is not a percentage such as '{example}'") from None
    if not (0 <= percent <= maximum if inclusive else 0 <= percent < maximum):
        raise Invalid("a percentage must be between 0% and 100%")
    return percent / 100


@frozen
class SizeOrPercent(Kind[int | float]):
    """A size (an C{int}), or a percentage of the filesystem (a C{float} fraction)."""

    name = "size or percentage"

    def __call__(self, value: object) -> int | float:
        if isinstance(value, str) and value.strip().endswith("%"):
            return _percent(value, 100, False, "5%")
        return parse_with(parse_size, value)

    def show(self, value: Any) -> object:
        return f"{value * 100:g}%" if isinstance(value, float) else show_size(value)


@frozen
class CountOrPercent(Kind[int | float]):
    """A count (an C{int}), or a percentage of a limit (a C{float} fraction)."""

    name = "count or percentage"

    def __call__(self, value: object) -> int | float:
        refusal = f"{value!r} is not a number of pulls (10) or a percentage of the limit ('10%')"
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise Invalid(refusal)
        if isinstance(value, int):
            if value < 0:
                raise Invalid("must not be negative")
            return value
        if not value.strip().endswith("%"):
            raise Invalid(refusal)
        return _percent(value, 100, True, "10%")

    def show(self, value: Any) -> object:
        return f"{value * 100:g}%" if isinstance(value, float) else value


@frozen
class CountOrAuto(Kind[int | Literal["auto"]]):
    """
    A count within C{minimum} and C{maximum}, or C{"auto"} (left to the
    daemon to derive at start-up, from the host).
    """

    minimum: int
    maximum: int
    name = 'integer or "auto"'

    def __call__(self, value: object) -> int | Literal["auto"]:
        if value == "auto":
            return "auto"
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f'{str(value)[:40]!r} is not a whole number or "auto"')
        if not self.minimum <= value <= self.maximum:
            raise Invalid(f'must be between {self.minimum} and {self.maximum}, or "auto"')
        return value


@frozen
class OrNever(Kind[float | None]):
    """A duration, or C{"never"} (C{None})."""

    duration: Duration
    name = 'duration or "never"'

    def __call__(self, value: object) -> float | None:
        return None if value == "never" else self.duration(value)

    def show(self, value: Any) -> object:
        return "never" if value is None else show_duration(value)


# -- scalars


@frozen
class Boolean(Kind[bool]):
    name = "boolean"

    def __call__(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise _wrong_type(value, "true or false")
        return value


BOOLEAN = Boolean()


@frozen
class Integer(Kind[int]):
    minimum: int = 0
    maximum: int | float = math.inf
    refusal: str = ""
    name = "integer"

    def __call__(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(value, "an integer")
        if not self.minimum <= value <= self.maximum:
            raise Invalid(self.refusal or f"must be at least {self.minimum}")
        return value


@frozen
class Number(Kind[float]):
    """A float or an integer, within bounds."""

    minimum: float
    maximum: float
    refusal: str
    name = "number"

    def __call__(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong_type(value, "an integer or float")
        if not self.minimum <= value <= self.maximum:
            raise Invalid(self.refusal)
        return float(value)


@frozen
class Text(Kind[str]):
    """
    A string; C{check} (a predicate such as a regex's C{fullmatch}) must
    hold, else C{refusal}, formatted with the value's C{repr()}.
    """

    check: Callable[[str], object] | None = None
    refusal: str = "{value} is not accepted"
    lower: bool = False
    name: str = "string"

    def __call__(self, value: object) -> str:
        if not isinstance(value, str):
            raise _wrong_type(value, "a string")
        if self.check is not None and not self.check(value):
            raise Invalid(self.refusal.format(value=repr(value[:80])))
        return value.lower() if self.lower else value


@frozen
class Choice(Kind[str]):
    options: tuple[str, ...]
    name = "choice"

    def describe(self) -> str:
        return " or ".join(f'"{option}"' for option in self.options)

    def __call__(self, value: object) -> str:
        if not isinstance(value, str):
            raise _wrong_type(value, "a string")
        if value not in self.options:
            *most, last = (repr(option) for option in self.options)
            raise Invalid(f"{value[:40]!r} must be {', '.join(most)} or {last}")
        return value


@frozen
class Refused(Kind[None]):
    """A key that is never accepted (a literal secret): C{message} says what to write instead."""

    message: str
    name = "refused"

    def __call__(self, value: object) -> None:
        raise Invalid(self.message)


# -- collections


@frozen
class ListOf(Kind[tuple[T, ...]]):
    """
    A list of C{item}s; an item's error names its index.  C{empty} is the
    refusal of an empty list (C{None}: allowed); C{refusal} replaces the
    type errors of the list and its items when given.
    """

    item: Kind[T]
    empty: str | None = None
    refusal: str | None = None
    name = "list"

    def __call__(self, value: object) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise Invalid(self.refusal) if self.refusal else _wrong_type(value, "a list")
        if not value and self.empty is not None:
            raise Invalid(self.empty)
        items = []
        for index, item in enumerate(value):
            try:
                items.append(self.item(item))
            except Invalid as e:
                if self.refusal:
                    raise Invalid(self.refusal) from None
                raise e.at(index) from None
        return tuple(items)

    def show(self, value: Any) -> object:
        return [self.item.show(item) for item in value]

    def describe(self) -> str:
        return f"list of {self.item.describe()}"


@frozen
class Subset(Kind[frozenset[str]]):
    """Some of C{options}, as a list."""

    options: tuple[str, ...]
    name = "list of strings"

    def describe(self) -> str:
        return "list of " + ", ".join(f'"{option}"' for option in self.options)

    def __call__(self, value: object) -> frozenset[str]:
        if not isinstance(value, list):
            raise _wrong_type(value, "a list")
        for item in value:
            if item not in self.options:
                raise Invalid(f"{item!r} is not one of {', '.join(self.options)}")
        return frozenset(value)

    def show(self, value: Any) -> object:
        return [option for option in self.options if option in value]


@frozen
class TableOf(Kind[tuple[tuple[str, T], ...]]):
    """A table of C{key_check}-named entries, sorted by name."""

    key_check: Callable[[str], object]
    key_refusal: str
    value: Kind[T]
    empty: str = "must not be empty"
    name = "table"

    def __call__(self, value: object) -> tuple[tuple[str, T], ...]:
        if not isinstance(value, Mapping):
            raise _wrong_type(value, "a table")
        if not value:
            raise Invalid(self.empty)
        entries = []
        for name, item in sorted(value.items()):
            if not self.key_check(name):
                raise Invalid(self.key_refusal.format(name=repr(name[:40])))
            try:
                entries.append((name, self.value(item)))
            except Invalid as e:
                raise e.at(name) from None
        return tuple(entries)
