"""
The S3 store's client, as the daemon builds it from C{[storage]}: botocore's
SigV4 signer, treq's transport, the keys from the config or a credential
program, and each part's payload hash in the disk pool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable

from treq.client import HTTPClient
from twisted.web.client import Agent, HTTPConnectionPool

from .._ops._config import S3Config
from .._ops._reactor import Reactor
from .._storage._disk import Disk
from .._storage._s3 import S3Client, S3Credentials
from .._upstream._credentials import CredentialHelper
from .._upstream._tls import UpstreamTLSPolicy

__all__ = ["s3_client"]


def s3_client(config: S3Config, reactor: Reactor, pool: HTTPConnectionPool, disk: Disk) -> S3Client:
    """
    The S3 store's client: botocore's SigV4 signer, treq's transport, and
    each part's payload hash in the disk pool.
    """
    tls = UpstreamTLSPolicy.for_host(config.endpoint.host, config.tls_verify, config.ca_file)
    return S3Client(
        HTTPClient(Agent(reactor, contextFactory=tls, pool=pool)), config.endpoint, config.bucket,
        _s3_credentials(config, reactor), region=config.region,
        path_style=config.path_style, hasher=lambda body: disk.run(_sha256_hex, body),
    )


def _s3_credentials(config: S3Config, reactor: Reactor) -> S3Credentials | Callable[[], Awaitable[S3Credentials]]:
    """
    The S3 key pair: from the config, or from a credential program (the
    docker-credential-helpers protocol, as for upstreams: C{Username} is
    the access key, C{Secret} the secret), run again after its TTL.
    """
    if config.keys is not None:
        return S3Credentials(config.keys.access_key, config.keys.secret_key)
    if config.credential_command is None:
        raise ValueError("an S3 store with neither keys nor a credential program")
    helper = CredentialHelper(config.credential_command, "S3 store", reactor, reactor)

    async def current() -> S3Credentials:
        got = await helper.get()
        return S3Credentials(got.username, got.password)

    return current


def _sha256_hex(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
