"""
Unit tests for the config schema's value kinds (L{ocicache._ops._config._types},
L{ocicache._ops._config._names}), its structuring (L{ocicache._ops._config._fields})
and its one secret reader (L{ocicache._ops._config._secrets}).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from attrs import frozen
from hypothesis import given
from hypothesis import strategies as st

from ocicache._ops._config._fields import key, render_path, structure
from ocicache._ops._config._names import HttpURL, RedisURL, check_glob
from ocicache._ops._config._secrets import Files
from ocicache._ops._config._types import (
    BOOLEAN,
    CountOrPercent,
    Duration,
    Integer,
    Invalid,
    ListOf,
    OrNever,
    Size,
    SizeOrPercent,
    Subset,
    Text,
    parse_duration,
    parse_size,
    show_duration,
    show_size,
)


def refusal(kind: object, value: object) -> Invalid:
    assert callable(kind)
    with pytest.raises(Invalid) as raised:
        kind(value)
    return raised.value


# -- durations and sizes


@given(st.integers(min_value=0, max_value=10**9))
def test_a_duration_shown_reads_back(seconds: int) -> None:
    shown = show_duration(float(seconds))
    assert parse_duration(shown) == seconds
    assert len(shown) <= len(f"{seconds}s")


@given(st.integers(min_value=0, max_value=1 << 50))
def test_a_size_shown_reads_back(size: int) -> None:
    assert parse_size(show_size(size)) == size


@pytest.mark.parametrize("shown, value", [("5m", 300.0), ("30d", 30 * 86400.0), ("90s", 90.0), ("1.5s", 1.5)])
def test_durations_are_shown_in_their_largest_exact_unit(shown: str, value: float) -> None:
    assert show_duration(value) == shown


def test_duration_bounds() -> None:
    positive = Duration(positive=True)
    assert positive("1s") == 1.0
    assert refusal(positive, 0).message == "must be positive"
    capped = Duration(positive=True, maximum=86400, too_long="must be at most 1d")
    assert refusal(capped, "2d").message == "must be at most 1d"
    assert refusal(capped, "0s").message == "must be positive"
    assert refusal(Duration(), -1).message == "must not be negative"
    assert refusal(Duration(), math.inf).message == "must be a finite number of seconds"
    assert refusal(Duration(), True).message == "expected a duration such as '5m'"
    assert refusal(Duration(), "9" * 400 + "s").message.endswith("is too long")
    assert OrNever(Duration())("never") is None


def test_size_bounds() -> None:
    assert Size(1 << 20, zero=True, refusal="no")(0) == 0
    assert refusal(Size(1 << 20, zero=True, refusal="no"), "1KiB").message == "no"
    assert refusal(Size(), 1.5).message == "expected a size such as '50GiB'"
    assert refusal(Size(), "50GB").message.startswith("'50GB' is not a size")


def test_percentages() -> None:
    assert SizeOrPercent()("5%") == 0.05 and SizeOrPercent()("1GiB") == 1 << 30
    assert refusal(SizeOrPercent(), "100%").message == "a percentage must be between 0% and 100%"
    floor = CountOrPercent()
    assert floor(10) == 10 and type(floor(10)) is int
    assert floor("100%") == 1.0 and type(floor("10%")) is float
    assert refusal(floor, 1.5).message.startswith("1.5 is not a number of pulls")
    assert SizeOrPercent().show(0.05) == "5%" and floor.show(0.1) == "10%"


# -- scalars and lists


def test_types_are_not_coerced() -> None:
    assert refusal(Integer(), True).message == "expected an integer, got a boolean"
    assert refusal(Integer(), "8").message == "expected an integer, got str"
    assert refusal(Integer(1), 0).message == "must be at least 1"
    assert refusal(BOOLEAN, 1).message == "expected true or false, got int"
    assert refusal(Text(), 5).message == "expected a string, got int"


def test_a_list_item_error_names_its_index() -> None:
    numbers = ListOf(Integer(), empty="must not be empty")
    assert numbers([1, 2]) == (1, 2)
    error = refusal(numbers, [1, 2, "x"])
    assert (error.message, error.path) == ("expected an integer, got str", (2,))
    assert refusal(numbers, []).message == "must not be empty"
    assert refusal(numbers, "1").message == "expected a list, got str"


def test_subset_keeps_the_declared_order_when_shown() -> None:
    kind = Subset(("a", "b", "c"))
    assert kind(["c", "a"]) == frozenset({"a", "c"})
    assert kind.show(frozenset({"c", "a"})) == ["a", "c"]
    assert refusal(kind, ["d"]).message == "'d' is not one of a, b, c"


# -- names


def test_http_urls() -> None:
    kind = HttpURL("password_file")
    assert str(kind("https://r.example//v2//")) == "https://r.example/v2"
    error = refusal(kind, "https://bot:hunter2@r.example")
    assert error.message == "must not contain credentials; use password_file" and "hunter2" not in error.message
    assert refusal(kind, "ftp://x").message == "'ftp://x' must be an http:// or https:// URL with a host"
    assert refusal(kind, "https://r.example/?a=1").message.endswith("must not have a query or fragment")
    assert refusal(kind, "http://x:notaport").message == "'http://x:notaport' is not a URL"
    assert str(HttpURL("x", bare=True)("http://10.0.0.5:5001/path")) == "http://10.0.0.5:5001"


def test_redis_urls() -> None:
    address = RedisURL()("redis://10.0.0.2:6380/3")
    assert (address.host, address.port, address.db) == ("10.0.0.2", 6380, 3)
    assert RedisURL()("redis://r").port == 6379


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Co", "Cn")), min_size=1, max_size=255)
       .filter(lambda text: "***" not in text and text.isprintable()))
def test_every_printable_glob_is_accepted(text: str) -> None:
    assert check_glob(text) == text


@pytest.mark.parametrize("text, message", [
    ("", "a pattern must not be empty"),
    ("a" * 256, "a pattern is at most 255 characters"),
    ("a\nb", "'a\\nb': a pattern holds no control characters"),
    ("a/***", "'a/***': use * or **, not ***"),
])
def test_globs_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$".replace("*", r"\*").replace("\\n", "\\\\n")):
        check_glob(text)


# -- structuring


@frozen
class Inner:
    size: int = key(Size(), "A size.", default=1)


@frozen
class Outer:
    name: str = key(Text(), "A name.", required="what it is called")
    count: int = key(Integer(1), "A count.", default=3)
    items: tuple[int, ...] = key(ListOf(Integer()), "Numbers.", default=())


def test_structure_reads_every_key_through_its_kind() -> None:
    assert structure({"name": "x", "items": [1, 2]}, Outer) == Outer("x", 3, (1, 2))


@pytest.mark.parametrize("table, path, message", [
    ({"count": 2}, ("name",), "required (what it is called)"),
    ({"name": "x", "count": 0}, ("count",), "must be at least 1"),
    ({"name": "x", "items": [1, True]}, ("items", 1), "expected an integer, got a boolean"),
    ({"name": "x", "zz": 1, "aa": 2}, (), "unknown key(s): aa, zz"),
    ({"name": 5, "zz": 1}, ("name",), "expected a string, got int"),
    ("table", (), "expected a table"),
])
def test_structure_raises_the_first_error_with_its_key(table: object, path: tuple[str | int, ...],
                                                      message: str) -> None:
    with pytest.raises(Invalid) as raised:
        structure(table, Outer)
    assert (raised.value.path, raised.value.message) == (path, message)


def test_render_path() -> None:
    assert render_path(("upstream", 1, "url")) == "upstream[1].url"
    assert render_path(("auth", "oidc", 0, "issuer")) == "auth.oidc[0].issuer"


# -- the one secret reader


def test_a_secret_is_the_first_line_without_its_line_ending(tmp_path: Path) -> None:
    files = Files({"CRLF": "s3cret\r\n", "SPACES": " s3cret ", "EMPTY": "\n"})
    for content, secret in [("s3cret\n", "s3cret"), ("s3cret", "s3cret"), ("s3cret\r\nmore\n", "s3cret"),
                            (" s3cret \n", " s3cret ")]:
        (tmp_path / "secret").write_text(content, newline="")
        assert files.secret("secret", str(tmp_path / "secret"), None) == secret
    assert files.secret("secret", None, "CRLF") == "s3cret"
    assert files.secret("secret", None, "SPACES") == " s3cret "
    assert files.secret("secret", None, None) is None


def test_a_secret_that_cannot_be_read_names_its_key(tmp_path: Path) -> None:
    files = Files({"EMPTY": "\n"})
    (tmp_path / "empty").write_text("\nsecond line\n")
    for file, env, path, message in [
        (str(tmp_path / "missing"), None, ("token_file",), f"cannot read {str(tmp_path / 'missing')!r}"),
        (str(tmp_path / "empty"), None, ("token_file",), f"{str(tmp_path / 'empty')!r} has nothing on its first line"),
        (None, "EMPTY", ("token_env",), "environment variable 'EMPTY' is not set"),
        (None, "UNSET", ("token_env",), "environment variable 'UNSET' is not set"),
    ]:
        with pytest.raises(Invalid) as raised:
            files.secret("token", file, env)
        assert raised.value.path == path and raised.value.message.startswith(message)


def test_a_secret_file_is_read_to_a_bound(tmp_path: Path) -> None:
    (tmp_path / "huge").write_text("x" * (128 << 10))
    with pytest.raises(Invalid) as raised:
        Files({}).secret("secret", str(tmp_path / "huge"), None)
    assert raised.value.path == ("secret_file",) and "longer than 65536 characters" in raised.value.message
