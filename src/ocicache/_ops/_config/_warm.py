"""
C{[[warm]]}: images the daemon fetches itself, and perhaps pins.  The
class is both the table's schema and its value.
"""

from __future__ import annotations

from attrs import frozen

from ..._spec._closure import Platform, host_platform
from ._fields import key
from ._names import PLATFORM, ImageRef
from ._types import BOOLEAN, Duration, ListOf

__all__ = ["WarmConfig"]


@frozen
class WarmConfig:
    """
    Images the daemon fetches itself, at start and then again after each
    C{every} (unset: at start only), through its own cache: an index's manifests
    only for C{platforms} (default: this host's), then their configs and
    layers.  C{pin = true} also pins them: never evicted or expired,
    counted toward max_size (a pin that cannot fit is refused, and
    logged); a tag pin follows the tag when it moves.  Each run logs one
    line with counts.
    """

    refs: tuple[str, ...] = key(
        ListOf(ImageRef(), empty="required, a non-empty list of images such as 'docker.io/library/alpine:3.20'"),
        "The images, each named by its upstream's name (or the default upstream's).",
        required="a non-empty list of images such as 'docker.io/library/alpine:3.20'",
        example=["docker.io/library/alpine:3.20", "ghcr.io/actions/actions-runner:latest"])
    platforms: tuple[Platform, ...] = key(
        ListOf(PLATFORM, empty="expected a non-empty list such as ['linux/amd64']"),
        "The platforms of an index fetched.", factory=lambda: (host_platform(),), shown="this host's",
        example=["linux/amd64", "linux/arm64"], commented=False)
    every: float | None = key(Duration(positive=True, refusal="must be positive (unset: at start only)"),
                              "Fetched again this often; unset: at start only.", example="1h", commented=False)
    pin: bool = key(BOOLEAN, "Their closures are kept from eviction and expiry.", default=False)
