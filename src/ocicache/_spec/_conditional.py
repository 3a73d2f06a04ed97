"""
Conditional requests (RFC 9110 §13) on cached content, named by a digest
or by a path with a C{Last-Modified} date: C{If-None-Match} and
C{If-Modified-Since}, evaluated in the order of §13.2.2
(C{If-None-Match} first; C{If-Modified-Since} only without it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = ["not_modified"]

# RFC 9110 §8.8.3: entity-tag = [ weak ] opaque-tag; weak = %s"W/";
# opaque-tag = DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text.
_ENTITY_TAG = re.compile(rb'\s*(?:W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*')


def _entity_tags(values: Sequence[bytes]) -> list[bytes] | None:
    """
    The opaque tags of an C{If-None-Match} list (its field lines joined,
    RFC 9110 §5.3), or C{None} when it is malformed and so ignored.
    """
    tags = []
    for value in values:
        for member in value.split(b","):
            if not member.strip():
                continue  # RFC 9110 §5.6.1: empty list elements are ignored
            match = _ENTITY_TAG.fullmatch(member)
            if match is None:
                return None
            tags.append(match.group(1))
    return tags


def _http_date(values: Sequence[bytes]) -> datetime | None:
    """
    The one HTTP-date (RFC 9110 §5.6.7) C{values} holds, or C{None}: a
    missing, repeated or invalid field is ignored (§13.1.3).
    """
    if len(values) != 1:
        return None
    return _parsed(values[0])


def _parsed(value: bytes) -> datetime | None:
    try:
        date = parsedate_to_datetime(value.decode("ascii"))
    except (ValueError, TypeError, UnicodeDecodeError, IndexError):
        return None
    # An HTTP-date is always GMT (§5.6.7); a zone-less parse is taken as such.
    return date if date.tzinfo is not None else date.replace(tzinfo=UTC)


def not_modified(if_none_match: Sequence[bytes], if_modified_since: Sequence[bytes], etag: bytes,
                 immutable: bool, last_modified: bytes | None = None) -> bool:
    """
    Whether a C{GET} or C{HEAD} of the representation with strong
    validator C{etag} is answered C{304 Not Modified}.

    C{If-None-Match} (§13.1.2) is false, so 304, when C{*} or any listed
    tag matches C{etag} by the weak comparison (C{W/"x"} matches C{"x"}).
    When it is absent, C{If-Modified-Since} (§13.1.3) is false when the
    representation has not changed since the date given: always, for
    content named by its digest (C{immutable}), which has one
    representation ever; else when its C{last_modified} date is no later
    than the one given.  Without a modification date the field is ignored.
    """
    if if_none_match:
        if any(value.strip() == b"*" for value in if_none_match):
            return True
        tags = _entity_tags(if_none_match)
        return tags is not None and etag in tags
    since = _http_date(if_modified_since)
    if since is None:
        return False
    if immutable:
        return True
    modified = _parsed(last_modified) if last_modified is not None else None
    return modified is not None and modified <= since
