"""
The grammar of repository names, tags and digests.

Everything here is checked before it is used to build an upstream URL or a
path under the cache directory, so a hostile client cannot smuggle C{..},
C{%2f} or a newline through a name, and a L{Digest} can always be used as a
file name.  The rules come from the OCI distribution-spec ("Pulling
manifests", "Workflow categories") and the image-spec ("Digests",
descriptor.md).
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, ClassVar

from attrs import frozen

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = [
    "ContentCheck",
    "Digest",
    "InvalidDigest",
    "InvalidName",
    "InvalidReference",
    "ImageReference",
    "InvalidTag",
    "is_registry_host",
    "parse_image_reference",
    "parse_reference",
    "validate_name",
    "validate_tag",
]


class InvalidReference(ValueError):
    """
    A name, tag or digest does not match the distribution-spec grammar.

    Only the subclasses are raised.  C{code} is the distribution-spec error
    code to put in the JSON error body; C{message} is a short human
    description.  The offending text is deliberately not part of the
    message, since it came from the client and may be arbitrarily long or
    contain control characters.
    """

    code: ClassVar[str] = "UNSUPPORTED"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidName(InvalidReference):
    """
    A repository name is invalid (distribution-spec error C{NAME_INVALID}).
    """

    code: ClassVar[str] = "NAME_INVALID"


class InvalidDigest(InvalidReference):
    """
    A digest is malformed or uses an algorithm we do not verify
    (distribution-spec error C{DIGEST_INVALID}).
    """

    code: ClassVar[str] = "DIGEST_INVALID"


class InvalidTag(InvalidReference):
    """
    A manifest reference is neither a valid tag nor a valid digest.  The
    distribution-spec has no C{TAG_INVALID}; C{MANIFEST_INVALID} is the code
    registries use for a bad reference.
    """

    code: ClassVar[str] = "MANIFEST_INVALID"


# image-spec descriptor.md, "Digests":
#   digest                ::= algorithm ":" encoded
#   algorithm             ::= algorithm-component (algorithm-separator
#                             algorithm-component)*
#   algorithm-component   ::= [a-z0-9]+
#   algorithm-separator   ::= [+._-]
#   encoded               ::= [a-zA-Z0-9=_-]+
# re.fullmatch is used throughout: unlike "$", it cannot match before a
# trailing newline.
_ALGORITHM = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*")
_ENCODED = re.compile(r"[a-zA-Z0-9=_-]+")

# image-spec descriptor.md, "Registered algorithms": the encoded part of a
# registered algorithm is lowercase hex ([a-f0-9]) of exactly this length.
_REGISTERED: dict[str, int] = {"sha256": 64, "sha512": 128}
_LOWER_HEX = re.compile(r"[a-f0-9]+")

# distribution-spec, "Pulling manifests": <name> MUST match
#   [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
# The separator and component alphabets are disjoint, so the pattern cannot
# backtrack badly; the length is checked first regardless.
_NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(_NAME_COMPONENT + r"(?:/" + _NAME_COMPONENT + r")*")

# The spec notes that many clients limit the hostname, "/" and <name> to
# 255 characters together; the name alone can be no longer than that.
_NAME_MAX = 255

# distribution-spec, "Pulling manifests": <reference> as a tag MUST match
#   [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")


@frozen
class Digest:
    """
    A content digest (image-spec descriptor.md, "Digests"), such as
    C{sha256:e3b0...}.

    Construction validates, so every instance has a registered algorithm
    and lowercase hex of the right length: C{encoded} is safe to use as a
    file name and C{hasher()} can verify content against it.

    @ivar algorithm: The algorithm, C{"sha256"} or C{"sha512"}.
    @ivar encoded: The lowercase hex digest.
    """

    algorithm: str
    encoded: str

    def __attrs_post_init__(self) -> None:
        if _ALGORITHM.fullmatch(self.algorithm) is None:
            raise InvalidDigest("malformed digest algorithm")
        if _ENCODED.fullmatch(self.encoded) is None:
            raise InvalidDigest("malformed digest")
        # image-spec: implementations SHOULD reject digests with an
        # unsupported algorithm, since they cannot verify them.
        length = _REGISTERED.get(self.algorithm)
        if length is None:
            raise InvalidDigest("unsupported digest algorithm")
        if (
            len(self.encoded) != length
            or _LOWER_HEX.fullmatch(self.encoded) is None
        ):
            raise InvalidDigest(
                f"{self.algorithm} digest must be {length} lowercase hex "
                f"characters"
            )

    @classmethod
    def parse(cls, text: str) -> Digest:
        """
        Parse C{algorithm:encoded}.

        @raise InvalidDigest: If C{text} is not a digest of a registered
            algorithm.
        """
        algorithm, sep, encoded = text.partition(":")
        if not sep:
            raise InvalidDigest("digest has no algorithm")
        return cls(algorithm, encoded)

    @property
    def hex(self) -> str:
        """
        The hex digest; the same as C{encoded}.
        """
        return self.encoded

    def hasher(self) -> _Hash:
        """
        A new hash object of this digest's algorithm, to verify content
        against C{hex}.
        """
        return hashlib.new(self.algorithm)

    def verifier(self) -> ContentCheck:
        """
        The check a body must pass to be this digest's content (the fetch
        core's verifier): it hashes to it.
        """
        return ContentCheck(self, self.hasher())

    def names(self, content: bytes) -> bool:
        """
        Whether C{content} is what this digest names (distribution-spec
        "Pulling manifests": a digest is that of the exact bytes).
        """
        hasher = self.hasher()
        hasher.update(content)
        return hasher.hexdigest() == self.encoded

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"


class ContentCheck:
    """
    A body is a digest's content when it hashes to it (distribution-spec
    "Pulling blobs": the digest is the content's identity).  The length is
    checked apart, against what the upstream announced.
    """

    def __init__(self, digest: Digest, hasher: _Hash) -> None:
        self._digest = digest
        self._hasher = hasher

    def update(self, data: bytes) -> None:
        self._hasher.update(data)

    def mismatch(self) -> str | None:
        if self._hasher.hexdigest() != self._digest.encoded:
            return f"upstream body does not match {self._digest}"
        return None


def validate_name(name: str) -> str:
    """
    Check a repository name against the distribution-spec grammar.

    This rejects everything that could escape a URL path segment or a cache
    directory: C{..}, empty components, leading or trailing slashes,
    percent-escapes, uppercase, whitespace and non-ASCII.

    @return: C{name}, unchanged.
    @raise InvalidName: If it does not match.
    """
    if not name:
        raise InvalidName("repository name is empty")
    if len(name) > _NAME_MAX:
        raise InvalidName(
            f"repository name is longer than {_NAME_MAX} characters"
        )
    if _NAME.fullmatch(name) is None:
        raise InvalidName("invalid repository name")
    return name


def validate_tag(tag: str) -> str:
    """
    Check a tag against the distribution-spec grammar.

    @return: C{tag}, unchanged.
    @raise InvalidTag: If it does not match.
    """
    if _TAG.fullmatch(tag) is None:
        raise InvalidTag("invalid tag")
    return tag


def parse_reference(text: str) -> Digest | str:
    """
    Parse the C{<reference>} of C{/v2/<name>/manifests/<reference>}.

    A tag cannot contain C{:}, so anything that does is a digest
    (distribution-spec, "Pulling manifests").

    @return: A L{Digest}, or the tag.
    @raise InvalidDigest: If C{text} contains C{:} but is not a valid digest.
    @raise InvalidTag: If C{text} is not a valid tag.
    """
    if ":" in text:
        return Digest.parse(text)
    return validate_tag(text)


# A registry host as clients write it (distribution/reference "domain"):
# DNS labels, optionally with a port.
_HOST = re.compile(
    r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?"
)


def is_registry_host(text: str) -> bool:
    """
    Whether C{text} is a registry host name such as C{docker.io} or
    C{registry.internal:5000}.
    """
    return len(text) <= 253 and _HOST.fullmatch(text) is not None


@frozen
class ImageReference:
    """
    An image as people write it: C{[registry/]repository[:tag][@digest]}.
    C{registry} is C{None} when the text names none (the default upstream,
    as docker reads C{alpine}); C{reference} is the digest when one is
    given, else the tag (C{latest} when neither is).
    """

    registry: str | None
    repository: str
    reference: Digest | str

    def __str__(self) -> str:
        name = self.repository if self.registry is None else f"{self.registry}/{self.repository}"
        separator = "@" if isinstance(self.reference, Digest) else ":"
        return f"{name}{separator}{self.reference}"


def parse_image_reference(text: str) -> ImageReference:
    """
    Parse C{[registry/]repository[:tag][@digest]} (distribution's
    reference grammar).  The first component is a registry when it has a
    C{.} or a C{:}, or is C{localhost}, as docker decides; a digest wins
    over a tag given beside it.

    @raise InvalidReference: If any part does not match the grammar.
    """
    name, _, digest_text = text.partition("@")
    digest = Digest.parse(digest_text) if digest_text else None
    registry: str | None = None
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not is_registry_host(first):
            raise InvalidName("invalid registry host")
        registry, name = first.lower(), rest
    repository, colon, tag = name.rpartition(":") if ":" in name else (name, "", "")
    if colon:
        validate_tag(tag)
    validate_name(repository)
    reference: Digest | str = digest if digest is not None else (tag or "latest")
    return ImageReference(registry, repository, reference)
