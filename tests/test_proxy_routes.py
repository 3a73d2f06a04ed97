"""
Which proxy a URL goes through (L{ProxyRoutes.for_url}): the C{[proxy]}
table, an upstream's own C{proxy} key, and the environment as curl and Go
read it; and the refusals of what cannot be a proxy, never echoing its
credentials.
"""

from __future__ import annotations

import base64

import pytest
from hyperlink import DecodedURL

from ocicache._ops._config import ConfigError, parse_config
from ocicache._ops._config._proxy import Proxy, parse_proxy


def _via(config_proxy: object, url: str, setting: str | None = None) -> Proxy | None:
    routes = config_proxy.routes_for(setting)  # type: ignore[attr-defined]
    proxy: Proxy | None = routes.for_url(DecodedURL.from_text(url))
    return proxy


def test_environment_as_curl_and_go_read_it() -> None:
    config = parse_config({}, {"HTTPS_PROXY": "corp:3128", "http_proxy": "http://plain:8080",
                               "NO_PROXY": ".internal, 10.0.0.0/8,registry.example:5000"})
    assert _via(config.proxy, "https://registry-1.docker.io/v2/") == Proxy("corp", 3128)
    assert _via(config.proxy, "http://mirror.example/v2/") == Proxy("plain", 8080)
    # Domains with their subdomains, networks, host:port.
    assert _via(config.proxy, "https://internal/v2/") is None
    assert _via(config.proxy, "https://a.b.internal/v2/") is None
    assert _via(config.proxy, "https://notinternal/v2/") == Proxy("corp", 3128)
    assert _via(config.proxy, "https://10.2.3.4:5000/v2/") is None
    assert _via(config.proxy, "https://registry.example:5000/v2/") is None
    assert _via(config.proxy, "https://registry.example/v2/") == Proxy("corp", 3128)
    # Go's rule: loopback never goes through the environment's proxy.
    assert _via(config.proxy, "https://127.0.0.1:5000/v2/") is None
    assert _via(config.proxy, "https://localhost/v2/") is None


def test_no_proxy_star_and_no_environment() -> None:
    assert _via(parse_config({}, {"https_proxy": "http://p:1", "no_proxy": "*"}).proxy, "https://x.io/") is None
    assert _via(parse_config({}, {}).proxy, "https://x.io/") is None


def test_table_and_upstream_key() -> None:
    config = parse_config({
        "proxy": {"url": "http://proxy.corp:3128", "no_proxy": ["registry.internal"]},
        "upstream": [{"name": "docker.io", "url": "https://registry-1.docker.io", "default": True},
                     {"name": "ghcr.io", "url": "https://ghcr.io", "proxy": ""},
                     {"name": "quay.io", "url": "https://quay.io", "proxy": "http://other:8080"}],
    }, {"HTTPS_PROXY": "http://ignored:1"})
    docker, ghcr, quay = config.upstreams
    assert _via(config.proxy, "https://registry-1.docker.io/v2/", docker.proxy) == Proxy("proxy.corp", 3128)
    # Loopback goes through a configured proxy: only the environment's skips it.
    assert _via(config.proxy, "https://127.0.0.1/v2/", docker.proxy) == Proxy("proxy.corp", 3128)
    assert _via(config.proxy, "https://registry.internal/v2/", docker.proxy) is None
    assert _via(config.proxy, "https://ghcr.io/v2/", ghcr.proxy) is None
    assert _via(config.proxy, "https://quay.io/v2/", quay.proxy) == Proxy("other", 8080)
    assert _via(parse_config({"proxy": {"url": ""}}, {"HTTPS_PROXY": "http://p:1"}).proxy, "https://x.io/") is None


def test_credentials_make_proxy_authorization_and_stay_out_of_repr() -> None:
    proxy = parse_proxy("http://bot%40corp:p%3Ass@proxy:3128")
    assert proxy.authorization == b"Basic " + base64.b64encode(b"bot@corp:p:ss")
    assert "p:ss" not in repr(proxy) and "bot" not in proxy.label
    assert proxy.label == "http://proxy:3128"


@pytest.mark.parametrize(("document", "environ", "message"), [
    ({"proxy": {"url": "socks5://u:hidden@p:1080"}}, {}, "proxy.url: socks5:// proxies are not supported"),
    ({"proxy": {"url": "http://u:hidden@p:3128/path"}}, {}, "proxy.url: must be a proxy URL"),
    ({"proxy": {"no_proxy": ["x"]}}, {}, "proxy.no_proxy: needs url"),
    ({"proxy": {"url": "http://p:1", "no_proxy": ["*.", ""]}}, {}, "proxy.no_proxy[0]"),
    ({"upstream": [{"name": "a.io", "url": "https://a.io", "proxy": "https://u:hidden@p:1"}]}, {},
     "upstream[0].proxy: https:// proxies are not supported"),
    ({}, {"HTTPS_PROXY": "socks5h://u:hidden@p:1"}, "proxy: environment variable HTTPS_PROXY: socks5h://"),
])
def test_refusals_name_the_key_not_the_secret(document: dict[str, object], environ: dict[str, str],
                                              message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(document, environ)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "hidden" not in str(caught.value)
