"""
TLS towards one upstream: its own CA or no verification for its own host,
and ordinary verification with the system's roots for everything else
(the CDNs that blob downloads are redirected to).
"""

from __future__ import annotations

from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from .._ops._config import UpstreamConfig

__all__ = ["UpstreamTLSPolicy"]


@implementer(IPolicyForHTTPS)
class UpstreamTLSPolicy:
    """The C{contextFactory} of one upstream's L{Agent}."""

    def __init__(self, config: UpstreamConfig) -> None:
        self._setup(config.url.host, config.tls_verify, config.ca_file)

    @classmethod
    def for_host(cls, host: str, tls_verify: bool, ca_file: str | None) -> UpstreamTLSPolicy:
        """The same policy for another service's host (the S3 store's endpoint)."""
        policy = cls.__new__(cls)
        policy._setup(host, tls_verify, ca_file)
        return policy

    def _setup(self, host: str, tls_verify: bool, ca_file: str | None) -> None:
        self._host = host
        self._default = BrowserLikePolicyForHTTPS()
        self._verify = tls_verify
        self._trust: ssl.Certificate | None = None
        if ca_file is not None:
            with open(ca_file, "rb") as f:
                self._trust = ssl.Certificate.loadPEM(f.read())

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        if hostname.decode("ascii", "replace") == self._host:
            if not self._verify:
                return ssl.CertificateOptions(verify=False)
            if self._trust is not None:
                return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust)
        return self._default.creatorForNetloc(hostname, port)
