"""
The outbound proxy: an L{IAgent} that sends each request direct or
through the proxy its URL's routes choose (L{ProxyRoutes.for_url}).

  - https URLs go through a C{CONNECT} tunnel (RFC 9110 §9.3.6) with TLS to
    the real host on top of it, verified exactly as without a proxy;
  - http URLs are sent to the proxy in absolute form (RFC 9112 §3.2.2).

The proxy's credentials go in C{Proxy-Authorization} (RFC 9110 §11.7.2)
to the proxy alone, never to an upstream and never into a log.  A proxy
that cannot be reached or refuses (407, 403, ...) is a L{ProxyFailed},
logged once, with the proxy named, until a request through it succeeds.
"""

from __future__ import annotations

import re
from typing import Any

from hyperlink import DecodedURL
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IDelayedCall, IProtocol, IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool, ProxyAgent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from .._ops._config._proxy import Proxy, ProxyRoutes
from ._large_reads import DirectEndpoints, with_large_reads

__all__ = ["ProxyFailed", "RoutedAgent"]

log = Logger()

_MAX_HEAD = 16 << 10
"""The most a proxy may say in answer to C{CONNECT} before the tunnel opens."""
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([\x20-\x7e]*))?")


class ProxyFailed(ConnectError):
    """
    The proxy could not be reached, or would not carry the request: a
    connection failure (served stale as one), whose message names the
    proxy but never its credentials.
    """

    def __init__(self, message: str) -> None:
        ConnectError.__init__(self, string=message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class _Tunnel(Protocol):
    """
    The proxy's side of a C{CONNECT}: asks for the tunnel, reads the
    answer's head, and then hands the connection to the protocol the
    caller asked for (TLS, here), passing every later byte through.
    """

    def __init__(self, request: bytes, target: str, proxy: Proxy, factory: IProtocolFactory,
                 ready: Deferred[IProtocol]) -> None:
        self._request = request
        self._target = target
        self._proxy = proxy
        self._factory = factory
        self._ready = ready
        self._buffer = b""
        self._inner: IProtocol | None = None

    def connectionMade(self) -> None:
        self.transport.write(self._request)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEAD:
                self.fail(f"answered CONNECT with more than {_MAX_HEAD} bytes of head")
            return
        head, rest = self._buffer[:end], self._buffer[end + 4:]
        self._buffer = b""
        status = _STATUS_LINE.fullmatch(head.split(b"\r\n", 1)[0])
        if status is None:
            self.fail("answered CONNECT with something that is not HTTP/1.1")
            return
        code = int(status[1])
        if not 200 <= code < 300:
            reason = (status[2] or b"").decode("ascii")[:80]
            self.fail(f"refused the tunnel to {self._target}: {code} {reason}".rstrip())
            return
        inner = self._factory.buildProtocol(self.transport.getPeer())  # type: ignore[union-attr]
        if inner is None:
            self.fail("tunnel opened, but nothing to speak over it")
            return
        self._inner = inner
        inner.makeConnection(self.transport)  # type: ignore[arg-type]
        self._ready.callback(inner)
        if rest:
            inner.dataReceived(rest)

    def fail(self, why: str) -> None:
        """Give up on the tunnel: close the connection, and say why."""
        self.transport.abortConnection()  # type: ignore[union-attr]
        if not self._ready.called:
            self._ready.errback(ProxyFailed(f"the proxy {self._proxy.label} {why}"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._inner is not None:
            self._inner.connectionLost(reason)
        elif not self._ready.called:
            self._ready.errback(ProxyFailed(
                f"the proxy {self._proxy.label} closed the connection before opening a tunnel to {self._target}"))


@implementer(IStreamClientEndpoint)
class _TunnelEndpoint:
    """A connection to C{host:port} through a C{CONNECT} tunnel of C{proxy}."""

    def __init__(self, reactor: Any, proxy: Proxy, host: str, port: int, timeout: float) -> None:
        self._reactor = reactor
        self._proxy = proxy
        self._host = host
        self._port = port
        self._timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        # RFC 9110 §9.3.6: the request target is the authority, and so is Host.
        host = f"[{self._host}]" if ":" in self._host else self._host
        target = f"{host}:{self._port}"
        lines = [f"CONNECT {target} HTTP/1.1".encode("ascii"), b"Host: " + target.encode("ascii")]
        if self._proxy.authorization is not None:
            lines.append(b"Proxy-Authorization: " + self._proxy.authorization)
        request = b"\r\n".join(lines) + b"\r\n\r\n"
        tunnel: _Tunnel | None = None
        timer: IDelayedCall | None = None

        def cancel(_: Deferred[IProtocol]) -> None:
            connecting.cancel()
            if tunnel is not None and tunnel.transport is not None:
                tunnel.transport.abortConnection()  # type: ignore[attr-defined]

        ready: Deferred[IProtocol] = Deferred(cancel)
        tunnel = _Tunnel(request, target, self._proxy, protocolFactory, ready)
        endpoint = HostnameEndpoint(self._reactor, self._proxy.host.encode("idna"), self._proxy.port,
                                    timeout=self._timeout)
        connecting = connectProtocol(endpoint, tunnel)

        def unreachable(failure: Failure) -> None:
            if not ready.called:
                ready.errback(ProxyFailed(f"cannot connect to the proxy {self._proxy.label}:"
                                          f" {failure.getErrorMessage()[:200]}"))

        connecting.addErrback(unreachable)

        def too_slow() -> None:
            if tunnel is not None and not ready.called and tunnel.transport is not None:
                tunnel.fail(f"did not open a tunnel to {target} within {self._timeout:g}s (connect_timeout)")

        timer = self._reactor.callLater(self._timeout, too_slow)

        def settled(result: object) -> object:
            if timer is not None and timer.active():
                timer.cancel()
            return result

        ready.addBoth(settled)
        return ready


@implementer(IAgentEndpointFactory)
class _Tunnels:
    """The endpoints of an agent whose https requests all go through C{proxy}."""

    def __init__(self, reactor: Any, proxy: Proxy, tls: IPolicyForHTTPS, timeout: float) -> None:
        self._reactor = reactor
        self._proxy = proxy
        self._tls = tls
        self._timeout = timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        tunnel = _TunnelEndpoint(self._reactor, self._proxy, host, uri.port, self._timeout)
        # The same TLS, and verification, as a direct connection makes.
        return with_large_reads(wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), tunnel))


@implementer(IAgent)
class RoutedAgent:
    """
    An L{Agent} that sends each request the way C{routes} chooses for its
    URL.  Connections through a proxy are kept in a pool of their own
    (L{close} closes it), so that a connection made direct is never taken
    for one that should go through the proxy, or the reverse.
    """

    def __init__(self, reactor: Any, routes: ProxyRoutes, tls: IPolicyForHTTPS, connect_timeout: float,
                 pool: HTTPConnectionPool, who: str, proxied_pool: HTTPConnectionPool | None = None) -> None:
        """
        @param proxied_pool: the pool of the connections through a proxy,
            when its owner shares it among agents (and closes it); else
            this agent keeps one of its own, which L{close} closes.
        """
        self._reactor: IReactorTime = reactor
        self._routes = routes
        self._tls = tls
        self._timeout = connect_timeout
        self._who = who
        direct = DirectEndpoints(reactor, tls, connect_timeout)
        self._direct: Agent = Agent.usingEndpointFactory(reactor, direct, pool=pool)
        self._owned = proxied_pool is None
        if proxied_pool is None:
            proxied_pool = HTTPConnectionPool(reactor, persistent=True)
            proxied_pool.maxPersistentPerHost = pool.maxPersistentPerHost
            proxied_pool.cachedConnectionTimeout = pool.cachedConnectionTimeout
        self._pool = proxied_pool
        self._agents: dict[tuple[Proxy, bytes], IAgent] = {}
        self._reported: str | None = None

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None) -> Deferred[IResponse]:
        parsed = URI.fromBytes(uri)
        proxy = self._routes.for_url(DecodedURL.from_text(uri.decode("ascii")))
        if proxy is None:
            return self._direct.request(method, uri, headers, bodyProducer)
        agent = self._agent(proxy, parsed.scheme)
        if parsed.scheme == b"http" and proxy.authorization is not None:
            headers = headers.copy() if headers is not None else Headers()
            headers.setRawHeaders(b"proxy-authorization", [proxy.authorization])
        sent = agent.request(method, uri, headers, bodyProducer)
        return sent.addCallbacks(lambda response: self._answered(proxy, response), self._failed)

    def _agent(self, proxy: Proxy, scheme: bytes) -> IAgent:
        agent = self._agents.get((proxy, scheme))
        if agent is None:
            if scheme == b"https":
                agent = Agent.usingEndpointFactory(
                    self._reactor, _Tunnels(self._reactor, proxy, self._tls, self._timeout), pool=self._pool)
            else:
                endpoint = with_large_reads(HostnameEndpoint(self._reactor, proxy.host.encode("idna"), proxy.port,
                                                             timeout=self._timeout))
                agent = _ForwardAgent(proxy, endpoint, self._reactor, self._pool)
            self._agents[(proxy, scheme)] = agent
        return agent

    def _answered(self, proxy: Proxy, response: IResponse) -> IResponse:
        if response.code == 407:
            # RFC 9110 §15.5.8: only a proxy answers 407.
            response.deliverBody(Protocol())
            self._report(ProxyFailed(f"the proxy {proxy.label} wants credentials: 407 Proxy Authentication"
                                     " Required"))
        if self._reported is not None:
            log.info("{who}: the proxy {proxy} carries requests again", who=self._who, proxy=proxy.label)
            self._reported = None
        return response

    def _failed(self, failure: Failure) -> Failure:
        if isinstance(failure.value, ProxyFailed):
            self._report(failure.value)
        return failure

    def _report(self, error: BaseException) -> None:
        """Log C{error} once, until a request through a proxy succeeds; then raise it."""
        message = str(error)
        if message != self._reported:
            log.warn("{who}: {error}", who=self._who, error=message)
            self._reported = message
        raise error

    def close(self) -> Deferred[None]:
        """Close the connections kept through proxies (when the pool is this agent's)."""
        if not self._owned:
            return succeed(None)
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed


class _ForwardAgent(ProxyAgent):
    """Requests to http URLs, sent to the proxy in absolute form; a failure to reach it names it."""

    def __init__(self, proxy: Proxy, endpoint: IStreamClientEndpoint, reactor: Any,
                 pool: HTTPConnectionPool) -> None:
        ProxyAgent.__init__(self, endpoint, reactor, pool)
        self._proxy = proxy

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None) -> Deferred[IResponse]:
        def unreachable(failure: Failure) -> Failure:
            if failure.check(ConnectError) and not failure.check(ProxyFailed):
                raise ProxyFailed(f"cannot connect to the proxy {self._proxy.label}: "
                                  f"{failure.getErrorMessage()[:200]}")
            return failure

        sent: Deferred[IResponse] = ProxyAgent.request(self, method, uri, headers, bodyProducer)
        return sent.addErrback(unreachable)
