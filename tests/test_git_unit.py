"""
Unit tests of the git front-end's pure parts: the path grammar, the
upload-pack request parser, the C{[[git]]} configuration, and the check a
response must pass before it is kept, run over real responses of
C{git upload-pack --stateless-rpc}.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
from hyperlink import DecodedURL

from ocicache._git._config import GitConfig, GitUpstreamConfig, parse_git
from ocicache._git._errors import BadGitRequest, NoSuchGitHost, PushRefused
from ocicache._git._pktline import PackResponseCheck, parse_upload_request
from ocicache._git._route import GitEndpoint, route_git
from ocicache._ops._config import ConfigError, parse_config
from ocitest.gitserver import git

CONFIG = GitConfig((GitUpstreamConfig("git.example", DecodedURL.from_text("https://git.example")),))
SERVICE = {b"service": [b"git-upload-pack"]}


def pkt(line: str) -> bytes:
    return b"%04x" % (len(line) + 4) + line.encode()


def test_routes() -> None:
    route = route_git(b"git.example/a/b.git/info/refs".split(b"/"), b"GET", SERVICE, CONFIG)
    assert (route.repo, route.endpoint) == ("a/b.git", GitEndpoint.REFS)
    route = route_git(b"git.example/a/b/git-upload-pack".split(b"/"), b"POST", {}, CONFIG)
    assert (route.repo, route.endpoint) == ("a/b", GitEndpoint.UPLOAD_PACK)


@pytest.mark.parametrize("path, method, args, error", [
    (b"other.example/a.git/info/refs", b"GET", SERVICE, NoSuchGitHost),
    (b"git.example/../a.git/info/refs", b"GET", SERVICE, BadGitRequest),
    (b"git.example/a/%2e%2e/info/refs", b"GET", SERVICE, BadGitRequest),
    (b"git.example//a.git/info/refs", b"GET", SERVICE, BadGitRequest),
    (b"git.example/info/refs", b"GET", SERVICE, BadGitRequest),
    (b"git.example/a.git/info/refs", b"GET", {}, BadGitRequest),
    (b"git.example/a.git/info/refs", b"GET", {b"service": [b"git-upload-pack"] * 2}, BadGitRequest),
    (b"git.example/a.git/info/refs", b"GET", {b"service": [b"git-receive-pack"]}, PushRefused),
    (b"other.example/a.git/git-receive-pack", b"POST", {}, PushRefused),
    (b"git.example/a.git/git-upload-pack", b"GET", {}, BadGitRequest),
    (b"git.example/a.git/objects/info/packs", b"GET", {}, NoSuchGitHost),
    (b"git.example/" + b"/".join([b"a"] * 30) + b"/info/refs", b"GET", SERVICE, BadGitRequest),
    (b"git.example/\xff.git/info/refs", b"GET", SERVICE, BadGitRequest),
])
def test_route_refuses(path: bytes, method: bytes, args: dict[bytes, list[bytes]], error: type) -> None:
    with pytest.raises(error):
        route_git(path.split(b"/"), method, args, CONFIG)


def test_upload_requests() -> None:
    want = pkt("want " + "a" * 40 + " side-band-64k\n")
    assert parse_upload_request(want + b"0000" + pkt("done\n"), v2=False).cacheable
    assert not parse_upload_request(want + b"0000" + pkt("have " + "b" * 40 + "\n"), v2=False).cacheable
    ls_refs = pkt("command=ls-refs\n") + b"0001" + pkt("peel\n") + b"0000"
    assert parse_upload_request(ls_refs, v2=True).command == "ls-refs"
    assert not parse_upload_request(ls_refs, v2=True).cacheable
    fetch = pkt("command=fetch\n") + b"0001" + want + pkt("done\n") + b"0000"
    assert parse_upload_request(fetch, v2=True).cacheable
    assert parse_upload_request(fetch, v2=True).wants == ("a" * 40,)
    with pytest.raises(BadGitRequest):
        parse_upload_request(pkt("want ../../etc\n") + b"0000", v2=False)
    by_name = pkt("command=fetch\n") + b"0001" + pkt("want-ref refs/heads/main\n") + b"0000"
    assert parse_upload_request(by_name, v2=True).want_refs
    for bad in (b"zzzz", b"0010short", want[:-1], b"0003"):
        with pytest.raises(BadGitRequest):
            parse_upload_request(bad, v2=False)
    with pytest.raises(BadGitRequest):
        parse_upload_request(want, v2=True)


def test_config_errors_name_the_key() -> None:
    assert parse_config({}).git is None
    parsed = parse_git([{"name": "github.com", "url": "https://github.com", "stale_refs": True}])
    assert parsed.named("github.com") is not None and parsed.upstreams[0].stale_refs
    for table, message in [
        ({"url": "https://x"}, "git[0].name: required"),
        ({"name": "GitHub", "url": "https://x"}, "git[0].name:"),
        ({"name": "a.b", "url": "ftp://x"}, "git[0].url:"),
        ({"name": "a.b", "url": "https://u:p@x"}, "git[0].url:"),
        ({"name": "a.b", "url": "https://x", "mode": "proxy"}, "git[0].mode:"),
        ({"name": "a.b", "url": "https://x", "proof_ttl": "0s"}, "git[0].proof_ttl:"),
        ({"name": "a.b", "url": "https://x", "stale_refs": "yes"}, "git[0].stale_refs:"),
        ({"name": "a.b", "url": "https://x", "colour": 1}, "git[0]: unknown key(s): colour"),
        ({"name": "a.b", "url": "https://x", "username": "u"},
         "git[0]: set username and password_file or password_env together"),
        ({"name": "a.b", "url": "https://x", "username": "u", "password_env": "OCITEST_GIT_PASSWORD"},
         "git[0].username: only a mode = 'mirror'"),
        ({"name": "a.b", "url": "https://x", "mode": "mirror", "username": "u", "password_env": "OCITEST_UNSET"},
         "git[0].password_env: environment variable 'OCITEST_UNSET' is not set"),
    ]:
        with pytest.raises(ConfigError) as raised:
            parse_config({"git": [table]})
        assert str(raised.value).startswith(message)
    mirrored = parse_git([{"name": "a.b", "url": "https://x", "mode": "mirror", "username": "u",
                           "password_env": "PW"}], {"PW": "secret"})
    assert mirrored.upstreams[0].credentials is not None and "secret" not in repr(mirrored)
    with pytest.raises(ConfigError, match="configured twice"):
        parse_git([{"name": "a.b", "url": "https://x"}, {"name": "a.b", "url": "https://y"}])


@pytest.fixture(scope="module")
def responses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real upload-pack responses: v0 with side-band-64k, v0 shallow, and v2."""
    root = str(tmp_path_factory.mktemp("repo"))
    git("init", "-q", "-b", "main", "work", cwd=root)
    work = os.path.join(root, "work")
    for index in range(3):
        with open(os.path.join(work, f"f{index}"), "wb") as f:
            f.write(os.urandom(30000))
        git("add", f"f{index}", cwd=work)
        git("commit", "-q", "-m", f"c{index}", cwd=work)
    head = git("rev-parse", "HEAD", cwd=work).stdout.strip()

    def upload_pack(body: bytes, v2: bool = False) -> bytes:
        env = {**os.environ, "GIT_PROTOCOL": "version=2"} if v2 else dict(os.environ)
        return subprocess.run(["git", "upload-pack", "--stateless-rpc", work], input=body, env=env,
                              capture_output=True, check=True).stdout

    want = pkt(f"want {head} side-band-64k ofs-delta\n")
    return {
        "v0": upload_pack(want + b"0000" + pkt("done\n")),
        "shallow": upload_pack(pkt(f"want {head} side-band-64k ofs-delta shallow\n") + pkt("deepen 1\n")
                               + b"0000" + pkt("done\n")),
        "v2": upload_pack(pkt("command=fetch\n") + b"0001" + pkt(f"want {head}\n") + pkt("ofs-delta\n")
                          + pkt("done\n") + b"0000", v2=True),
    }


def check(data: bytes, pieces: int = 7) -> str | None:
    verifier = PackResponseCheck()
    step = max(1, len(data) // pieces)
    for start in range(0, len(data), step):
        verifier.update(data[start:start + step])
    return verifier.mismatch()


@pytest.mark.parametrize("kind", ["v0", "shallow", "v2"])
def test_a_whole_response_passes_in_any_pieces(responses: dict[str, bytes], kind: str) -> None:
    data = responses[kind]
    for pieces in (1, 3, 1000):
        assert check(data, pieces) is None


@pytest.mark.parametrize("kind", ["v0", "v2"])
def test_a_cut_or_corrupt_response_is_refused(responses: dict[str, bytes], kind: str) -> None:
    data = responses[kind]
    for cut in (1, 4, 100, len(data) // 2, len(data) - 30, len(data) - 4, len(data) - 1):
        assert check(data[:cut]) is not None, cut
    # One flipped byte in the middle of the pack: its SHA-1 no longer matches.
    middle = len(data) // 2
    corrupt = data[:middle] + bytes([data[middle] ^ 0x40]) + data[middle + 1:]
    assert check(corrupt) == "the pack's trailing SHA-1 does not match its bytes"
    assert check(data + b"0000") == "the upstream's response goes on after its end"
    assert check(data + pkt("\x01more")) is not None


def test_errors_in_the_response_are_refused() -> None:
    assert check(pkt("NAK\n") + pkt("\x03fatal: out of memory\n") + b"0000") == \
        "the upstream failed: fatal: out of memory"
    assert check(pkt("ERR upload-pack: not our ref " + "a" * 40)) is not None
    assert check(pkt("NAK\n") + b"0000") == "the upstream's response was cut short"
    assert check(pkt("NAK\n") + pkt("\x02progress\n") + b"0000") == "the upstream's response carries no pack"
    assert check(b"HTTP/1.1 200 OK\r\n") == "the upstream's response is not pkt-line framed"


def test_nothing_is_in_the_key_but_the_request(tmp_path: Any) -> None:
    from ocicache._git._key import ResponseKey

    one = ResponseKey.of("git.example", "a.git", "version=2", b"body")
    assert one == ResponseKey.of("git.example", "a.git", "version=2", b"body")
    assert len({one, ResponseKey.of("git.example", "a.git", "", b"body"),
                ResponseKey.of("git.example", "b.git", "version=2", b"body"),
                ResponseKey.of("git.example", "a.gi", "tversion=2", b"body")}) == 4
    assert one.digest.algorithm == "sha256" and len(one.encoded) == 64


def test_access_proofs_expire_are_bounded_and_hold_no_credentials() -> None:
    from ocicache._git import _refs
    from ocicache._git._refs import AccessProofs
    from ocitest.fakes import Reactor

    clock = Reactor()
    proofs = AccessProofs(clock)
    alice = proofs.who("git.example", "a.git", b"Basic YWxpY2U6cHc=")
    assert alice == proofs.who("git.example", "a.git", b"Basic YWxpY2U6cHc=")
    assert b"YWxpY2U6cHc" not in alice.token and len(alice.token) == 32
    # Another repository, other credentials, none: other proofs.
    others = [proofs.who("git.example", "b.git", b"Basic YWxpY2U6cHc="),
              proofs.who("git.example", "a.git", b"Basic Ym9iOnB3"), proofs.who("git.example", "a.git", None)]
    assert len({alice.token, *(who.token for who in others)}) == 4
    assert not proofs.holds(alice)
    proofs.prove(alice, 60)
    assert proofs.holds(alice) and not any(proofs.holds(who) for who in others)
    clock.advance(59)
    assert proofs.holds(alice)
    clock.advance(2)
    assert not proofs.holds(alice)
    proofs.prove(alice, 60)
    proofs.revoke(alice)
    assert not proofs.holds(alice)
    # A crowd of credentials cannot grow the memo without bound.
    for index in range(_refs.MAX_PROOFS + 10):
        proofs.prove(proofs.who("git.example", "a.git", b"Basic %d" % index), 60)
    assert len(proofs._until) == _refs.MAX_PROOFS
    # A process of its own keys its own hashes: nothing to compare offline.
    assert AccessProofs(clock).who("git.example", "a.git", b"Basic YWxpY2U6cHc=").token != alice.token


def test_a_reload_says_git_changes_need_a_restart() -> None:
    from ocicache._daemon._reload import restart_only_changes

    running = parse_config({"git": [{"name": "a.b", "url": "https://x"}]})
    changed = parse_config({"git": [{"name": "a.b", "url": "https://y"}]})
    assert restart_only_changes(running, changed) == ["git"]
    assert restart_only_changes(running, running) == []
