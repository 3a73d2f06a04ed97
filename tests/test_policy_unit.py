"""
The policy (L{ocicache._policy}): one pure function from (identity,
upstream, repository, reference kind) to a decision naming its rule, and
the config keys it is built from, validated at load.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocicache._identity import ANONYMOUS, Identity, IdentityKind
from ocicache._ops._config import ConfigError, parse_config
from ocicache._policy import Decision, Policy, ReferenceKind, decide
from ocicache._policy._patterns import Pattern

TAG, DIGEST, TAGS_LIST, REFERRERS, BLOB = (ReferenceKind.TAG, ReferenceKind.DIGEST, ReferenceKind.TAGS_LIST,
                                           ReferenceKind.REFERRERS, ReferenceKind.BLOB)
EVERY_KIND = tuple(ReferenceKind)
CI = Identity(IdentityKind.USER, "ci")
DEPLOY = Identity(IdentityKind.TOKEN, "deploy")
WORKFLOW = Identity(IdentityKind.OIDC, "repo:org/app:ref:refs/heads/main",
                    {"repository": "org/app", "ref": "refs/heads/main", "pipeline": "build"})


def policy(upstreams: list[dict[str, Any]] | None = None, rules: list[dict[str, Any]] | None = None) -> Policy:
    data: dict[str, Any] = {"upstream": upstreams or [hub()]}
    if rules is not None:
        data["rule"] = rules
    return Policy.from_config(parse_config(data, {}))


def hub(**keys: Any) -> dict[str, Any]:
    return {"name": "docker.io", "url": "https://registry-1.docker.io", "default": True, **keys}


def ghcr(**keys: Any) -> dict[str, Any]:
    return {"name": "ghcr.io", "url": "https://ghcr.io", **keys}


def error(upstreams: list[dict[str, Any]], rules: list[dict[str, Any]] | None = None) -> str:
    data: dict[str, Any] = {"upstream": upstreams}
    if rules is not None:
        data["rule"] = rules
    with pytest.raises(ConfigError) as raised:
        parse_config(data, {})
    message = str(raised.value)
    assert "\n" not in message
    return message


def allowed(p: Policy, repository: str, kind: ReferenceKind = TAG, tag: str | None = "v1",
            identity: Identity = ANONYMOUS, upstream: str = "docker.io") -> bool:
    return decide(p, identity, upstream, repository, kind, tag if kind is TAG else None).allowed


# -- the patterns


@pytest.mark.parametrize(("pattern", "value", "matches"), [
    ("library/*", "library/alpine", True),
    ("library/*", "library/a/b", False),
    ("org/**", "org/a/b/c", True),
    ("org/**", "org/", True),
    ("org/**", "orgx/a", False),
    ("alpine", "alpine", True),
    ("alpine", "alpine2", False),
    ("v?.*", "v1.2", True),
    ("v?.*", "v10.2", False),
    ("a.b", "axb", False),  # a dot is a dot, not a regex
    ("CI *", "CI build", True),  # a claim such as GitHub's workflow may hold spaces
    ("refs/heads/*", "refs/heads/feature/x", False),
    ("refs/heads/**", "refs/heads/feature/x", True),
])
def test_globs(pattern: str, value: str, matches: bool) -> None:
    assert Pattern(pattern).matches(value) is matches


# -- per-upstream patterns: include, exclude, tags, digest_only


def test_no_patterns_and_no_rules_allow_everything() -> None:
    p = policy()
    for kind in EVERY_KIND:
        decision = decide(p, ANONYMOUS, "docker.io", "any/thing", kind, "v1" if kind is TAG else None)
        assert decision == Decision(True, "default", "no [[rule]] is configured: everyone may pull")


def test_exclude_wins_over_include_for_every_kind() -> None:
    p = policy([hub(include=["library/*"], exclude=["library/secret"])])
    for kind in EVERY_KIND:
        decision = decide(p, ANONYMOUS, "docker.io", "library/secret", kind, "v1")
        assert decision.allowed is False
        assert decision.rule == "upstream[docker.io].exclude"
        assert allowed(p, "library/alpine", kind)


def test_include_refuses_what_it_does_not_name() -> None:
    p = policy([hub(include=["library/*", "myorg/**"])])
    assert allowed(p, "myorg/team/app")
    decision = decide(p, ANONYMOUS, "docker.io", "evil/app", BLOB)
    assert (decision.allowed, decision.rule) == (False, "upstream[docker.io].include")


def test_docker_hub_official_images_have_both_names() -> None:
    # The request's repository is the upstream's (library/ added); the
    # patterns may use either spelling, and either one matches.
    for pattern in ("alpine", "library/alpine"):
        p = policy([hub(exclude=[pattern])])
        assert not allowed(p, "library/alpine")
        assert allowed(p, "library/debian")
        p = policy([hub(include=[pattern])])
        assert allowed(p, "library/alpine")
        assert not allowed(p, "library/debian")
    # "*" is every name a client may write in one segment: the official images.
    p = policy([hub(include=["*"])])
    assert allowed(p, "library/alpine") and not allowed(p, "someone/alpine")


def test_the_short_name_is_docker_hub_only() -> None:
    p = policy([hub(), ghcr(exclude=["alpine"])])
    assert allowed(p, "library/alpine", upstream="ghcr.io")
    assert not allowed(p, "alpine", upstream="ghcr.io")
    # A nested library/ path is not an official image.
    p = policy([hub(exclude=["x"])])
    assert allowed(p, "library/x/y")


def test_tag_patterns_apply_to_tags_only() -> None:
    p = policy([hub(tags=["v*", "latest"])])
    assert allowed(p, "library/a", TAG, "v1.2")
    assert allowed(p, "library/a", TAG, "latest")
    decision = decide(p, ANONYMOUS, "docker.io", "library/a", TAG, "nightly")
    assert (decision.allowed, decision.rule) == (False, "upstream[docker.io].tags")
    for kind in (DIGEST, BLOB, TAGS_LIST, REFERRERS):
        assert allowed(p, "library/a", kind)


def test_digest_only_refuses_tags_and_tag_lists() -> None:
    p = policy([hub(digest_only=True)])
    for kind in (TAG, TAGS_LIST):
        decision = decide(p, ANONYMOUS, "docker.io", "library/a", kind, "v1")
        assert decision == Decision(False, "upstream[docker.io].digest_only", "this upstream is served by digest only")
    for kind in (DIGEST, BLOB, REFERRERS):
        assert allowed(p, "library/a", kind)


def test_an_upstream_the_policy_does_not_know_is_refused() -> None:
    decision = decide(policy(), ANONYMOUS, "quay.io", "a/b", BLOB)
    assert decision.allowed is False


# -- identity rules


RULES: list[dict[str, Any]] = [
    {"name": "ci pulls org", "user": "ci", "upstreams": ["docker.io"], "repositories": ["org/**"]},
    {"token": "deploy", "repositories": ["prod/*"]},
    {"claims": {"repository": "org/*", "ref": "refs/heads/main"}, "repositories": ["org/**", "library/*"]},
    {"identity": "user:*", "action": "deny", "repositories": ["org/secret"]},
    {"identity": "user:*", "repositories": ["library/*"]},
    {"identity": "anonymous", "repositories": ["alpine"]},
]


def test_the_first_matching_rule_decides() -> None:
    p = policy([hub(), ghcr()], RULES)
    assert decide(p, CI, "docker.io", "org/app", TAG, "v1") == Decision(True, "rule[0] (ci pulls org)", "allowed")
    # rule[0] is docker.io only: on ghcr.io the user falls through to the
    # deny rule, ahead of the allow it would otherwise get.
    assert decide(p, CI, "ghcr.io", "org/secret", TAG, "v1") == Decision(False, "rule[3]", "a rule denies it")
    assert decide(p, CI, "ghcr.io", "library/x", BLOB).rule == "rule[4]"
    assert decide(p, DEPLOY, "ghcr.io", "prod/web", DIGEST).rule == "rule[1]"
    assert not decide(p, DEPLOY, "ghcr.io", "org/app", DIGEST).allowed


def test_claims_must_all_match() -> None:
    p = policy([hub()], RULES)
    assert decide(p, WORKFLOW, "docker.io", "org/app", TAG, "v1").rule == "rule[2]"
    branch = Identity(IdentityKind.OIDC, WORKFLOW.name, {**WORKFLOW.claims, "ref": "refs/heads/dev"})
    assert decide(p, branch, "docker.io", "org/app", TAG, "v1") == Decision(False, "no rule matched",
                                                                            "no rule allows it")
    claimless = Identity(IdentityKind.OIDC, WORKFLOW.name)
    assert not decide(p, claimless, "docker.io", "org/app", TAG, "v1").allowed


def test_when_rules_exist_the_unmatched_are_denied() -> None:
    p = policy([hub()], RULES)
    assert decide(p, ANONYMOUS, "docker.io", "library/alpine", TAG, "v1").rule == "rule[5]"
    decision = decide(p, ANONYMOUS, "docker.io", "library/debian", TAG, "v1")
    assert decision == Decision(False, "no rule matched", "no rule allows it")
    # A token is not a user, and a user name does not match a token rule.
    assert not decide(p, Identity(IdentityKind.TOKEN, "ci"), "docker.io", "org/app", TAG, "v1").allowed
    assert not decide(p, Identity(IdentityKind.USER, "deploy"), "docker.io", "prod/web", TAG, "v1").allowed


def test_upstream_patterns_bind_every_identity() -> None:
    p = policy([hub(exclude=["org/secret"], digest_only=True)], [{"identity": "**"}])
    assert decide(p, CI, "docker.io", "org/secret", DIGEST).rule == "upstream[docker.io].exclude"
    assert decide(p, CI, "docker.io", "org/app", TAG, "v1").rule == "upstream[docker.io].digest_only"
    assert decide(p, WORKFLOW, "docker.io", "org/app", DIGEST) == Decision(True, "rule[0]", "allowed")


# -- properties


_SEGMENT = st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)
_REPOSITORY = st.lists(_SEGMENT, min_size=1, max_size=4).map("/".join)
_TAG = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_IDENTITY = st.one_of(
    st.just(ANONYMOUS),
    st.builds(Identity, st.sampled_from([IdentityKind.USER, IdentityKind.TOKEN, IdentityKind.OIDC]), _SEGMENT,
              st.dictionaries(st.sampled_from(["repository", "ref", "pipeline"]), _REPOSITORY, max_size=3)),
)


@given(_IDENTITY, _REPOSITORY, st.sampled_from(EVERY_KIND), _TAG)
def test_no_policy_denies_nothing(identity: Identity, repository: str, kind: ReferenceKind, tag: str) -> None:
    assert decide(policy(), identity, "docker.io", repository, kind, tag).allowed


@given(_IDENTITY, _REPOSITORY, _TAG)
def test_digest_only_never_serves_a_tag(identity: Identity, repository: str, tag: str) -> None:
    p = policy([hub(digest_only=True)], [{"identity": "**"}])
    assert not decide(p, identity, "docker.io", repository, TAG, tag).allowed
    assert not decide(p, identity, "docker.io", repository, TAGS_LIST).allowed
    assert decide(p, identity, "docker.io", repository, DIGEST).allowed


@given(_IDENTITY, _REPOSITORY, st.sampled_from(EVERY_KIND), _TAG)
def test_an_excluded_repository_is_denied_to_everyone(
    identity: Identity, repository: str, kind: ReferenceKind, tag: str
) -> None:
    p = policy([hub(exclude=[repository])], [{"identity": "**"}])
    decision = decide(p, identity, "docker.io", repository, kind, tag)
    assert (decision.allowed, decision.rule) == (False, "upstream[docker.io].exclude")


@given(_IDENTITY, _REPOSITORY, st.sampled_from(EVERY_KIND), st.booleans(), st.booleans())
def test_order_decides_between_an_allow_and_a_deny(
    identity: Identity, repository: str, kind: ReferenceKind, deny_first: bool, scoped: bool
) -> None:
    scope = {"repositories": [repository]} if scoped else {}
    allow: dict[str, Any] = {"identity": "**", **scope}
    deny: dict[str, Any] = {"identity": "**", "action": "deny", **scope}
    p = policy([hub()], [deny, allow] if deny_first else [allow, deny])
    decision = decide(p, identity, "docker.io", repository, kind, "v1")
    assert decision.allowed is not deny_first
    assert decision.rule == "rule[0]"


@given(_REPOSITORY, st.sampled_from(EVERY_KIND))
def test_a_rule_reaches_no_further_than_its_repositories(repository: str, kind: ReferenceKind) -> None:
    p = policy([hub()], [{"identity": "**", "repositories": ["scoped/**"]}])
    decision = decide(p, CI, "docker.io", repository, kind, "v1")
    assert decision.allowed is repository.startswith("scoped/")


# -- the config keys


def test_patterns_are_validated_at_load() -> None:
    assert error([hub(include=[])]) == "upstream[0].include: must not be empty (leave it out to match everything)"
    assert error([hub(exclude=["Library/*"])]).startswith("upstream[0].exclude[0]: 'Library/*' can never match")
    assert error([hub(include=["a b"])]).startswith("upstream[0].include[0]: 'a b' can never match")
    assert error([hub(tags=["v1/x"])]).startswith("upstream[0].tags[0]: 'v1/x' can never match")
    assert error([hub(include=["a/***"])]) == "upstream[0].include[0]: 'a/***': use * or **, not ***"
    assert error([hub(include=[3])]) == "upstream[0].include[0]: expected a string"
    assert error([hub(tags=["v*"], digest_only=True)]) == (
        "upstream[0].tags: digest_only refuses every tag; set one or the other")
    assert error([hub(digest_only="yes")]) == "upstream[0].digest_only: expected true or false, got str"


def test_rules_are_validated_at_load() -> None:
    assert error([hub()], [{"repositories": ["a/*"]}]) == (
        'rule[0]: say who it is for: identity, user, token or claims (identity = "**" for everyone)')
    assert error([hub()], [{"user": "ci", "upstreams": ["quay.io"]}]) == (
        "rule[0].upstreams[0]: 'quay.io' is not a configured upstream")
    assert error([hub()], [{"user": "ci", "upstreams": []}]).startswith("rule[0].upstreams: must not be empty")
    assert error([hub()], [{"user": "ci", "action": "maybe"}]) == "rule[0].action: 'maybe' must be 'allow' or 'deny'"
    assert error([hub()], [{"claims": {"ref": 1}}]) == "rule[0].claims.ref: expected a string pattern"
    assert error([hub()], [{"claims": {}}]) == "rule[0].claims: must not be empty"
    assert error([hub()], [{"identity": ""}]) == "rule[0].identity: a pattern must not be empty"
    assert error([hub()], [{"claims": {"ref": "a\nb"}}]) == (
        "rule[0].claims.ref: 'a\\nb': a pattern holds no control characters")
    assert error([hub()], [{"user": "ci", "name": "two\nlines"}]) == (
        "rule[0].name: one line of at most 64 characters, for log lines")
    assert error([hub()], [{"user": "ci", "repository": ["a"]}]) == "rule[0]: unknown key(s): repository"
    assert error([hub()], [{"user": "ci"}, {"token": "x", "repositories": ["UP"]}]).startswith(
        "rule[1].repositories[0]: 'UP' can never match")


def test_rule_labels_and_defaults() -> None:
    config = parse_config({"upstream": [hub()], "rule": [{"user": "ci", "name": "the CI"}, {"token": "t"}]}, {})
    first, second = config.rules
    assert (first.label, first.action, first.upstreams, first.repositories) == ("rule[0] (the CI)", "allow",
                                                                                None, None)
    assert second.label == "rule[1]"
    assert parse_config({"upstream": [hub()]}, {}).rules == ()


def test_the_documented_example_loads() -> None:
    """The policy example of docs/sharing.md ("Who may pull what") loads and decides as it says."""
    import re
    import tomllib
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "sharing.md").read_text()
    section = page.split("\n## Who may pull what\n", 1)[1].split("\n## ", 1)[0]
    example = re.search(r"```toml\n(.*?)```", section, re.S)
    assert example is not None
    config = parse_config(tomllib.loads(example.group(1)), {})
    p = Policy.from_config(config)
    main = Identity(IdentityKind.OIDC, "x", {"repository": "ourorg/app", "ref": "refs/heads/main"})
    assert decide(p, main, "docker.io", "ourorg/app", TAG, "v2").rule == "rule[0] (main of ourorg/app)"
    assert decide(p, main, "registry.internal:5000", "ourorg/base", DIGEST).rule == "rule[0] (main of ourorg/app)"
    assert not decide(p, main, "registry.internal:5000", "ourorg/base", TAG, "v1").allowed
    assert decide(p, Identity(IdentityKind.USER, "ci-7"), "docker.io", "ourorg/x", TAG, "v1").rule == "rule[1]"
    assert decide(p, ANONYMOUS, "docker.io", "library/alpine", TAG, "latest").rule == "rule[2]"
    assert not decide(p, ANONYMOUS, "docker.io", "library/alpine", TAG, "edge").allowed
    assert not decide(p, ANONYMOUS, "docker.io", "ourorg/x", DIGEST).allowed
    assert not decide(p, Identity(IdentityKind.USER, "ci-7"), "registry.internal:5000", "a/b", TAG, "v1").allowed
