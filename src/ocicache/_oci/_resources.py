"""
The image mirror's resources at the site's root: C{/v2/} (the
distribution-spec pull API, L{ocicache._oci._pipeline}) and C{/token}
(the registry token flow, L{ocicache._oci._token}).
"""

from __future__ import annotations

from twisted.web.resource import IResource

from ._pipeline import RegistryResource
from ._services import Services
from ._token import TokenResource

__all__ = ["Services", "registry_resources"]


def registry_resources(services: Services) -> dict[bytes, IResource]:
    """The image mirror's children of the site's root."""
    return {b"v2": RegistryResource(services), b"token": TokenResource(services)}
