"""
Helpers for the operations tests (C{test_ops_*.py}).

  - L{make_pki}: a CA and a server certificate for 127.0.0.1 (cryptography)
  - L{AuxRegistry}: another C{docker-registry} serving an existing storage
    directory (the session upstream's), with TLS, htpasswd or token auth
  - L{TokenServer}: a tiny registry token server issuing real JWTs
  - L{launch}: the daemon under C{twistd} with any command line
  - L{metric_value}, L{scrape}: reading the Prometheus exposition
"""

from __future__ import annotations

import base64
import datetime
import http.client
import http.server
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import free_port, http_request, log_tail, require_binary, stop_process, wait_for
from .daemon import TWISTD, daemon_env
from .serving import LoopbackServer, send

__all__ = [
    "PKI",
    "AuxRegistry",
    "Launched",
    "TokenServer",
    "htpasswd_line",
    "launch",
    "make_pki",
    "metric_value",
    "scrape",
    "socket_refuses",
]


# --- certificates -------------------------------------------------------------


@dataclass
class PKI:
    ca_cert: str
    """The CA certificate (PEM): what clients trust."""
    cert: str
    """The server certificate for 127.0.0.1 and localhost (PEM)."""
    key: str
    """The server's private key (PEM, unencrypted)."""


def make_pki(directory: str, name: str = "ocitest") -> PKI:
    """
    Write a CA and a server certificate (for IP 127.0.0.1 and DNS
    localhost, signed by that CA) under C{directory}.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                          crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = PKI(
        ca_cert=os.path.join(directory, "ca.pem"),
        cert=os.path.join(directory, "cert.pem"),
        key=os.path.join(directory, "key.pem"),
    )
    with open(pki.ca_cert, "wb") as f:
        f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    with open(pki.cert, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(pki.key, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return pki


# --- htpasswd -----------------------------------------------------------------


def htpasswd_line(username: str, password: str) -> str:
    """
    One htpasswd line with a bcrypt hash, as docker-registry's
    C{auth.htpasswd} and ocicache's C{[auth] htpasswd_file} want.
    """
    import bcrypt

    # Cost 2**5: these hashes guard nothing and are checked per request.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    return f"{username}:{hashed}\n"


# --- another docker-registry on the same storage ------------------------------


class AuxRegistry:
    """
    A C{docker-registry serve} on 127.0.0.1 over an existing storage
    directory (read-only), optionally with TLS and an C{auth:} section.
    """

    def __init__(
        self,
        workdir: str,
        storage: str,
        tls: PKI | None = None,
        auth_yaml: Sequence[str] = (),
    ) -> None:
        self.workdir = os.path.abspath(workdir)
        self.storage = storage
        self.tls = tls
        self.auth_yaml = list(auth_yaml)
        self.port = free_port()
        self.config_path = os.path.join(self.workdir, "registry.yml")
        self.log_path = os.path.join(self.workdir, "registry.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  formatter: text",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  maintenance:",
            "    uploadpurging:",
            "      enabled: false",
            "    readonly:",
            "      enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            "  secret: ocitest-not-a-secret",
        ]
        if self.tls is not None:
            lines += ["  tls:", f"    certificate: {self.tls.cert}", f"    key: {self.tls.key}"]
        lines += self.auth_yaml
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 20.0) -> AuxRegistry:
        binary = require_binary("docker-registry")
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.config_path, "w") as f:
            f.write(self.config_text())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "serve", self.config_path], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {self.proc.returncode}\n"
                                   f"{log_tail(self.log_path)}")
            try:
                status = self._probe()
                if status in (200, 401):
                    return self
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"docker-registry did not answer on {self.url}\n{log_tail(self.log_path)}")
            time.sleep(0.05)

    def _probe(self) -> int:
        if self.tls is not None:
            context = ssl.create_default_context(cafile=self.tls.ca_cert)
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, timeout=2, context=context)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/v2/")
            return conn.getresponse().status
        finally:
            conn.close()

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def __enter__(self) -> AuxRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- a token server -----------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenServer:
    """
    The distribution token flow's authorization server, just enough for
    docker-registry's C{auth.token}: checks Basic credentials and issues an
    RS256 JWT (x5c: its self-signed certificate, which is the registry's
    C{rootcertbundle}) granting the requested C{repository:...:pull}
    scopes.  Every token issued is kept in L{issued}.  C{password} may be
    changed while it runs (a rotation): it is read on every request.
    Tokens live C{expires_in} seconds (their C{exp} and the response's
    C{expires_in}); the repositories in C{denied} get tokens granting
    nothing, which the registry then refuses (as a private repository
    the account may not read).
    """

    issuer = "ocitest-issuer"
    service = "ocitest-registry"

    def __init__(self, workdir: str, username: str, password: str, expires_in: int = 300,
                 denied: frozenset[str] = frozenset()) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        os.makedirs(workdir, exist_ok=True)
        self.username = username
        self.password = password
        self.expires_in = expires_in
        self.denied = denied
        self._server = LoopbackServer(self._answer, name="token-server")
        self.port = self._server.port
        self.issued: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ocitest token signer")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
        self.bundle = os.path.join(workdir, "token-signer.pem")
        with open(self.bundle, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def registry_auth_yaml(self) -> list[str]:
        return [
            "auth:",
            "  token:",
            f"    realm: {self.realm}",
            f"    service: {self.service}",
            f"    issuer: {self.issuer}",
            f"    rootcertbundle: {self.bundle}",
        ]

    def _token(self, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and name and name not in self.denied:
                access.append({"type": "repository", "name": name,
                               "actions": [a for a in actions.split(",") if a == "pull"]})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": self.issuer, "sub": self.username, "aud": self.service,
            "exp": now + self.expires_in, "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def start(self) -> TokenServer:
        self._server.start()
        return self

    def _answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(parts.query)
        # Read per request: a test may rotate the password.
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        authorized = handler.headers.get("Authorization") == expected
        self.requests.append({"path": parts.path, "query": query, "authorized": authorized})
        if parts.path != "/token" or not authorized:
            send(handler, 401, b'{"details": "unauthorized"}')
            return
        token = self._token(query.get("scope", []))
        self.issued.append(token)
        send(handler, 200, json.dumps({"token": token, "access_token": token, "expires_in": self.expires_in}).encode())

    def failed_logins(self) -> int:
        """The token requests refused for their credentials so far."""
        return sum(1 for request in self.requests if not request["authorized"])

    def stop(self) -> None:
        self._server.stop()


# --- the daemon with any command line -----------------------------------------


@dataclass
class Launched:
    proc: subprocess.Popen[bytes]
    log_path: str

    def log_text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> int | None:
        return stop_process(self.proc)


def launch(
    config_path: str,
    workdir: str,
    twistd_args: Sequence[str] = (),
    ocicache_args: Sequence[str] = (),
    wrapper: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    wait_url: str | None = None,
    timeout: float = 20.0,
) -> Launched:
    """
    Start C{[wrapper...] python -c <twistd> [twistd_args...] -n --pidfile=
    ocicache --config CONFIG [ocicache_args...]}, logging to
    C{workdir}/ocicache.log; wait for C{wait_url} to answer 200.
    """
    os.makedirs(workdir, exist_ok=True)
    command = [*wrapper, sys.executable, "-c", TWISTD, *twistd_args, "-n", "--pidfile=",
               "ocicache", "--config", config_path, *ocicache_args]
    log_path = os.path.join(workdir, "ocicache.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=workdir, env=daemon_env(None, env))
    launched = Launched(proc, log_path)
    if wait_url is not None:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ocicache exited with {proc.returncode}: {' '.join(command)}\n"
                                   f"{log_tail(log_path)}")
            try:
                if http_request(wait_url, timeout=2)[0] == 200:
                    break
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                launched.stop()
                raise TimeoutError(f"ocicache did not answer {wait_url}\n{log_tail(log_path)}")
            time.sleep(0.05)
    return launched


# --- metrics ------------------------------------------------------------------


def scrape(metrics_url: str) -> str:
    status, headers, body = http_request(metrics_url)
    assert status == 200, (status, body[:300])
    assert headers["content-type"].startswith("text/plain"), headers
    return body.decode("utf-8")


def metric_value(text: str, name: str, **labels: str) -> float:
    """
    The sum of the samples of C{name} whose labels include C{labels}
    (0 when there is none).
    """
    total = 0.0
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        metric, _, label_text = series.partition("{")
        if metric != name:
            continue
        found = dict(_parse_labels(label_text.rstrip("}")))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def _parse_labels(text: str) -> list[tuple[str, str]]:
    pairs = []
    rest = text
    while rest:
        key, _, rest = rest.partition("=")
        assert rest.startswith('"'), text
        value, index = "", 1
        while rest[index] != '"':
            if rest[index] == "\\":
                index += 1
            value += rest[index]
            index += 1
        pairs.append((key.strip(", "), value))
        rest = rest[index + 1:].lstrip(",")
    return pairs


def socket_refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def socket_activated(config_path: str, workdir: str, socket_port: int) -> Launched:
    """
    The daemon behind C{systemd-socket-activate}, standing in for systemd
    (ocicache.socket): it binds C{socket_port} and starts the daemon on the
    first connection, passing it the socket; returned once it listens.
    """
    activate = require_binary("systemd-socket-activate")
    launched = launch(config_path, workdir, ocicache_args=["--listen", "systemd:domain=INET:index=0"],
                      # It passes a clean environment, less what -E names.
                      # Twisted wants LISTEN_FDNAMES too, as systemd (227+)
                      # always sets it: --fdname.
                      wrapper=[activate, "--listen", f"127.0.0.1:{socket_port}", "--fdname=ocicache",
                               "-E", "PYTHONPATH", "-E", "PYTHONUNBUFFERED"])
    try:
        wait_for(lambda: "Listening on" in launched.log_text(), timeout=20,
                 what="systemd-socket-activate to bind its socket")
    except BaseException:
        launched.stop()
        raise
    return launched
