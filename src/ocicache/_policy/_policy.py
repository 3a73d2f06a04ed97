"""
The decision: (identity, upstream, repository, reference kind) -> allowed
or not, with the rule that decided and why.

Two layers, both of which must allow:

  1. the upstream's own patterns, for everyone: C{exclude}, then
     C{include}, then C{digest_only} and C{tags};
  2. the C{[[rule]]} list, for identities: the first rule whose matchers
     all hold for the identity, and whose C{upstreams} and
     C{repositories} hold the request, decides (C{action}).  When rules
     exist and none matches, the request is denied; with no rules at all,
     every identity may pull what layer 1 allows.

Repository patterns are matched against every name the repository has,
derived from the upstream's repository name, never from how the client
spelled it: on Docker Hub, C{library/alpine} is also C{alpine}, so
C{alpine}, C{library/alpine} and C{docker.io/library/alpine} in a client's
request get one answer, and a pattern may use either spelling.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from attrs import field, frozen

from .._identity import Identity, IdentityKind
from .._ops._config import Config, RuleConfig, UpstreamConfig
from ._patterns import Pattern

__all__ = ["Decision", "Policy", "ReferenceKind", "decide", "identity_text"]


class ReferenceKind(StrEnum):
    """What a request reads of a repository."""

    TAG = "tag"
    """A manifest by tag."""
    DIGEST = "digest"
    """A manifest by digest."""
    TAGS_LIST = "tags-list"
    REFERRERS = "referrers"
    BLOB = "blob"


_BY_TAG = frozenset({ReferenceKind.TAG, ReferenceKind.TAGS_LIST})
"""What C{digest_only} refuses: what names a manifest by tag, or lists tags."""


@frozen
class Decision:
    """
    The answer, and what gave it: C{rule} names the config entry (never a
    secret: patterns and rule names only), C{reason} says why in words a
    client may be shown.
    """

    allowed: bool
    rule: str
    reason: str


@frozen
class Policy:
    """
    What L{decide} decides from: the config's patterns and rules, and
    every glob they hold, compiled once.
    """

    upstreams: Mapping[str, UpstreamConfig]
    rules: tuple[RuleConfig, ...] = ()
    patterns: Mapping[str, Pattern] = field(factory=dict, repr=False)

    @classmethod
    def from_config(cls, config: Config) -> Policy:
        texts = {text for upstream in config.upstreams for text in (*upstream.include, *upstream.exclude,
                                                                     *upstream.tags)}
        for rule in config.rules:
            texts.update(text for text in (rule.identity, rule.user, rule.token) if text is not None)
            texts.update(text for _, text in rule.claims)
            texts.update(rule.repositories or ())
        return cls({upstream.name: upstream for upstream in config.upstreams}, config.rules,
                   {text: Pattern(text) for text in texts})

    def matches(self, pattern: str, value: str) -> bool:
        """Whether the whole of C{value} matches the config's glob C{pattern}."""
        return self.patterns[pattern].matches(value)


def _names(upstream: UpstreamConfig, repository: str) -> tuple[str, ...]:
    """Every name C{repository} has on C{upstream}."""
    if upstream.is_docker_hub and repository.startswith("library/") and repository.count("/") == 1:
        return (repository, repository.removeprefix("library/"))
    return (repository,)


def _first_match(policy: Policy, patterns: Iterable[str], names: tuple[str, ...]) -> str | None:
    for pattern in patterns:
        if any(policy.matches(pattern, name) for name in names):
            return pattern
    return None


def identity_text(identity: Identity) -> str:
    """What a rule's C{identity} pattern is matched against, and log lines say."""
    if identity.kind is IdentityKind.ANONYMOUS:
        return "anonymous"
    return f"{identity.kind}:{identity.name}"


def _is_for(policy: Policy, rule: RuleConfig, identity: Identity) -> bool:
    """Whether every matcher of C{rule} holds for C{identity}."""
    if rule.identity is not None and not policy.matches(rule.identity, identity_text(identity)):
        return False
    if rule.user is not None and not (identity.kind is IdentityKind.USER
                                      and policy.matches(rule.user, identity.name)):
        return False
    if rule.token is not None and not (identity.kind is IdentityKind.TOKEN
                                       and policy.matches(rule.token, identity.name)):
        return False
    for claim, pattern in rule.claims:
        value = identity.claims.get(claim)
        if value is None or not policy.matches(pattern, value):
            return False
    return True


def _covers(policy: Policy, rule: RuleConfig, upstream: str, names: tuple[str, ...]) -> bool:
    """Whether the request is within C{rule}'s upstreams and repositories."""
    if rule.upstreams is not None and upstream not in rule.upstreams:
        return False
    return rule.repositories is None or _first_match(policy, rule.repositories, names) is not None


def decide(
    policy: Policy,
    identity: Identity,
    upstream: str,
    repository: str,
    kind: ReferenceKind,
    tag: str | None = None,
) -> Decision:
    """
    Whether C{identity} may read C{repository} (the upstream's name for
    it, C{library/} added on Docker Hub) of the upstream named
    C{upstream}, as C{kind}; C{tag} is the tag of a L{ReferenceKind.TAG}.
    """
    config = policy.upstreams.get(upstream)
    if config is None:
        return Decision(False, f"upstream[{upstream}]", "no such upstream is configured")
    here = f"upstream[{upstream}]"
    names = _names(config, repository)
    excluded = _first_match(policy, config.exclude, names)
    if excluded is not None:
        return Decision(False, f"{here}.exclude", f"the repository is excluded ({excluded})")
    if config.include and _first_match(policy, config.include, names) is None:
        return Decision(False, f"{here}.include", "the repository is not included")
    if config.digest_only and kind in _BY_TAG:
        return Decision(False, f"{here}.digest_only", "this upstream is served by digest only")
    if kind is ReferenceKind.TAG and config.tags:
        if tag is None or not any(policy.matches(pattern, tag) for pattern in config.tags):
            return Decision(False, f"{here}.tags", "the tag is not allowed")
    if not policy.rules:
        return Decision(True, "default", "no [[rule]] is configured: everyone may pull")
    for rule in policy.rules:
        if _is_for(policy, rule, identity) and _covers(policy, rule, upstream, names):
            if rule.action == "allow":
                return Decision(True, rule.label, "allowed")
            return Decision(False, rule.label, "a rule denies it")
    return Decision(False, "no rule matched", "no rule allows it")
