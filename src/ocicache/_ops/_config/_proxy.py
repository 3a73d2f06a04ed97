"""
C{[proxy]} and each upstream's C{proxy} key: which outbound proxy, if
any, a request to a URL goes through.

The choice is a function of the target URL alone (L{ProxyRoutes.for_url}),
so that every client of an upstream (registry, token realm, CDN redirect,
and the git and file remotes to come) makes it the same way.  Without a
setting, the environment is read as curl and Go read it: C{https_proxy}
or C{HTTPS_PROXY} for https URLs, C{http_proxy} or C{HTTP_PROXY} for http
URLs, and C{no_proxy} or C{NO_PROXY} for the hosts that go direct; like
Go, loopback hosts never go through a proxy named by the environment.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping

from attrs import field, frozen
from hyperlink import DecodedURL

from ._fields import key
from ._secrets import Files
from ._types import Invalid, Kind, ListOf, Text

__all__ = ["DIRECT", "UNPROXIED", "Proxy", "ProxyConfig", "ProxyRoutes", "ProxyTable", "parse_proxy"]

_ENVIRONMENT = {
    "https": ("https_proxy", "HTTPS_PROXY"),
    "http": ("http_proxy", "HTTP_PROXY"),
}
_NO_PROXY = ("no_proxy", "NO_PROXY")


@frozen
class Proxy:
    """
    An HTTP proxy: where it is, and the C{Proxy-Authorization} its URL's
    credentials make (RFC 9110 §11.7.2), which never appears in C{repr()}
    or in L{label}.
    """

    host: str
    port: int
    authorization: bytes | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """The proxy as logs and errors name it: without its credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_proxy(text: str) -> Proxy:
    """
    An C{http://[user:password@]host[:port]} proxy URL, or C{host:port}
    as curl and Go take it; C{ValueError} otherwise, never echoing the
    text (it may hold a password).
    """
    if "://" not in text:
        text = "http://" + text
    try:
        url = DecodedURL.from_text(text)
        port = url.port
    except Exception:
        raise ValueError("is not a proxy URL such as 'http://proxy.internal:3128'") from None
    if url.scheme != "http":
        raise ValueError(f"{url.scheme}:// proxies are not supported (only http://, which tunnels https)")
    if not url.host or port is None or not 0 < port < 65536 or any(url.path) or url.query or url.fragment:
        raise ValueError("must be a proxy URL such as 'http://proxy.internal:3128', with no path or query")
    authorization = None
    if any(url.userinfo):
        # The credentials percent-decoded (RFC 3986 §3.2.1), as RFC 7617 §2 pairs them.
        user, password = (url.userinfo + ("",))[:2]
        authorization = b"Basic " + base64.b64encode(f"{user}:{password}".encode())
    return Proxy(url.host, port, authorization)


@frozen
class _Bypass:
    """One C{no_proxy} entry: a domain (and its subdomains), an address or a network; a port, perhaps."""

    domain: str | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            try:
                return ipaddress.ip_address(host) in self.network
            except ValueError:
                return False
        assert self.domain is not None
        return host == self.domain or host.endswith("." + self.domain)


def _bypasses(text: str) -> tuple[_Bypass, ...] | None:
    """
    A C{no_proxy} list (comma or space separated), or C{None} for C{*}
    (every host goes direct).
    """
    entries: list[_Bypass] = []
    for entry in text.replace(",", " ").split():
        if entry == "*":
            return None
        entries.append(_bypass(entry))
    return tuple(entries)


def _bypass(entry: str) -> _Bypass:
    entry = entry.lower()
    port = None
    if entry.startswith("["):
        address, _, rest = entry[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
        entry = address
    elif entry.count(":") == 1:
        host, _, digits = entry.partition(":")
        if digits.isdigit():
            entry, port = host, int(digits)
    try:
        return _Bypass(network=ipaddress.ip_network(entry, strict=False), port=port)
    except ValueError:
        pass
    # curl and Go alike: ".example.com" and "*.example.com" are the domain.
    domain = entry.removeprefix("*").strip(".")
    if not domain:
        raise ValueError(f"{entry[:80]!r} is not a host, domain, address or network")
    return _Bypass(domain=domain, port=port)


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@frozen
class ProxyRoutes:
    """
    Which proxy each scheme goes through, and the hosts that go direct.
    The empty value (L{DIRECT}) sends everything direct.
    """

    https: Proxy | None = None
    http: Proxy | None = None
    direct: tuple[_Bypass, ...] | None = ()
    """The hosts that go direct; C{None}: every host."""
    loopback_direct: bool = False
    """Loopback hosts go direct (Go's rule for proxies named by the environment)."""

    def for_url(self, url: DecodedURL) -> Proxy | None:
        """The proxy a request to C{url} goes through; C{None}: direct."""
        proxy = self.https if url.scheme == "https" else self.http if url.scheme == "http" else None
        if proxy is None or self.direct is None:
            return None
        host = url.host.lower().rstrip(".")
        if self.loopback_direct and _is_loopback(host):
            return None
        port = url.port if url.port is not None else 0
        if any(entry.matches(host, port) for entry in self.direct):
            return None
        return proxy

    @classmethod
    def through(cls, proxy: Proxy, direct: tuple[_Bypass, ...] | None = ()) -> ProxyRoutes:
        """Every scheme through C{proxy}, but for the hosts in C{direct}."""
        return cls(https=proxy, http=proxy, direct=direct)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> ProxyRoutes:
        """What curl and Go read: C{https_proxy}, C{http_proxy}, C{no_proxy}, in either case."""
        proxies: dict[str, Proxy | None] = {}
        for scheme, names in _ENVIRONMENT.items():
            proxies[scheme] = None
            for name in names:
                value = environ.get(name, "").strip()
                if value:
                    try:
                        proxies[scheme] = parse_proxy(value)
                    except ValueError as e:
                        raise Invalid(f"environment variable {name}: {e}") from None
                    break
        direct: tuple[_Bypass, ...] | None = ()
        for name in _NO_PROXY:
            value = environ.get(name, "").strip()
            if value:
                try:
                    direct = _bypasses(value)
                except ValueError as e:
                    raise Invalid(f"environment variable {name}: {e}") from None
                break
        return cls(https=proxies["https"], http=proxies["http"], direct=direct, loopback_direct=True)


DIRECT = ProxyRoutes()


@frozen
class ProxyConfig:
    """The routes of every upstream that has no C{proxy} key of its own."""

    default: ProxyRoutes = DIRECT

    def routes_for(self, setting: str | None) -> ProxyRoutes:
        """
        One upstream's routes: its own C{proxy} key (C{""}: direct) when
        set, else the default.
        """
        if setting is None:
            return self.default
        if setting == "":
            return DIRECT
        return ProxyRoutes.through(parse_proxy(setting))


UNPROXIED = ProxyConfig()
"""Every request direct, whatever the environment says."""


@frozen
class ProxyURL(Kind[str]):
    """A proxy URL (L{parse_proxy}), or C{""} when C{empty} allows it; kept as written."""

    empty: bool = False
    name = "URL"

    def __call__(self, value: object) -> str:
        text = Text()(value)
        if text == "" and self.empty:
            return text
        try:
            parse_proxy(text)
        except ValueError as e:
            raise Invalid(str(e)) from None
        return text

    def show(self, value: object) -> object:
        return value


class _BypassEntry(Kind[str]):
    name = "string"

    def __call__(self, value: object) -> str:
        text = Text()(value)
        if text != "*":
            try:
                _bypass(text)
            except ValueError as e:
                raise Invalid(str(e)) from None
        return text


@frozen
class ProxyTable:
    """
    The outbound HTTP proxy of every upstream without a C{proxy} key of
    its own.  Without this table (or without C{url}), C{https_proxy},
    C{http_proxy} and C{no_proxy} are read as curl and Go read them.
    """

    url: str | None = key(
        ProxyURL(empty=True), 'The proxy for every upstream: http://[user:password@]host:port; "": none.',
        example="http://proxy.internal:3128",
        note="""HTTPS upstreams go through a CONNECT tunnel, with TLS to the upstream
verified end to end; HTTP upstreams are sent to the proxy in absolute form.
The credentials go to the proxy only (Proxy-Authorization), never to an
upstream, never into the logs. An [[upstream]]'s own proxy key wins (the
empty string sends it direct). Unset: the environment (https_proxy,
http_proxy, no_proxy, either case; loopback hosts go direct). The S3 store
never goes through it.""")
    no_proxy: tuple[str, ...] = key(
        ListOf(_BypassEntry()), "Hosts that go direct: domains (with their subdomains), addresses, networks.",
        default=(), example=["registry.internal", "10.0.0.0/8"])

    def check(self) -> None:
        if self.no_proxy and not self.url:
            raise Invalid("needs url (the environment's no_proxy goes with the environment's proxies)",
                          ("no_proxy",))

    def build(self, files: Files, where: str) -> ProxyConfig:
        if self.url is None:
            return ProxyConfig(ProxyRoutes.from_environment(files.environ))
        if self.url == "":
            return ProxyConfig(DIRECT)
        direct = _bypasses(" ".join(self.no_proxy))
        return ProxyConfig(ProxyRoutes.through(parse_proxy(self.url), direct))
