"""
Whether the cache disk takes writes: one warning when it stops (ENOSPC,
EIO, a read-only or vanished cache directory) and one line when it works
again, however many downloads and manifests meet the failure meanwhile.
Clients are served either way; what fails is only keeping things.
"""

from __future__ import annotations

from twisted.logger import Logger

__all__ = ["DiskHealth"]

log = Logger()


class DiskHealth:
    def __init__(self) -> None:
        self.failing = False

    def failed(self, error: BaseException) -> None:
        if not self.failing:
            self.failing = True
            log.error("The cache disk is failing ({error}); serving pass-through until it recovers",
                      error=str(error))

    def works(self) -> None:
        if self.failing:
            self.failing = False
            log.info("The cache disk works again")
