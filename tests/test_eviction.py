"""
The S3-FIFO eviction policy, tested on the policy itself: above all, a hot
set survives a one-off scan larger than the whole cache.
"""

from __future__ import annotations

from collections import OrderedDict

from ocicache._storage._eviction import S3FIFO

MiB = 1 << 20


def _run(policy: S3FIFO, key: str, size: int) -> list[str]:
    """
    Read C{key}: a hit counts, a miss inserts after making room, as the
    daemon does (evict down to 90% minus the new entry when it would not
    fit).
    """
    if key in policy:
        policy.access(key)
        return []
    evicted: list[str] = []
    if policy.size + size > policy.capacity:
        evicted = [str(k) for k, _ in policy.evict(int(policy.capacity * 0.9) - size)]
    policy.insert(key, size)
    assert policy.size <= policy.capacity
    return evicted


def test_hot_set_survives_a_scan_larger_than_the_cache() -> None:
    policy = S3FIFO(100 * MiB)
    hot = [f"hot{i}" for i in range(8)]  # 40 MiB read every "day"
    for _ in range(3):
        for key in hot:
            _run(policy, key, 5 * MiB)
    # A one-off pull of a 300 MiB image in 5 MiB layers: three times the cache.
    for i in range(60):
        _run(policy, f"scan{i}", 5 * MiB)
    assert all(key in policy for key in hot), [key for key in hot if key not in policy]
    assert policy.size <= 100 * MiB


def test_lru_would_have_lost_the_hot_set() -> None:
    """
    The same trace under LRU flushes every hot entry: the property above
    is the policy's doing, not the trace's.
    """
    lru: OrderedDict[str, int] = OrderedDict()
    capacity = 100 * MiB
    trace = [f"hot{i}" for i in range(8)] * 3 + [f"scan{i}" for i in range(60)]
    for key in trace:
        if key in lru:
            lru.move_to_end(key)
            continue
        lru[key] = 5 * MiB
        while sum(lru.values()) > capacity:
            lru.popitem(last=False)
    assert not any(f"hot{i}" in lru for i in range(8))


def test_entries_read_once_leave_before_entries_read_twice() -> None:
    policy = S3FIFO(10 * MiB)
    _run(policy, "a", 4 * MiB)
    _run(policy, "b", 4 * MiB)
    _run(policy, "a", 4 * MiB)  # a hit: a is read twice
    evicted = _run(policy, "c", 4 * MiB)
    assert evicted == ["b"]
    assert "a" in policy and "c" in policy


def test_a_ghost_returns_straight_to_main() -> None:
    policy = S3FIFO(10 * MiB)
    _run(policy, "a", 4 * MiB)
    _run(policy, "b", 4 * MiB)
    assert _run(policy, "c", 4 * MiB) == ["a"]
    # "a" comes back while its name is a ghost: it enters main, so the
    # next eviction takes a probation entry instead of it.
    evicted = _run(policy, "a", 4 * MiB)
    assert "a" in policy
    assert evicted and "a" not in evicted
    evicted = _run(policy, "d", 4 * MiB)
    assert "a" in policy, evicted


def test_keep_is_never_chosen() -> None:
    policy = S3FIFO(10 * MiB)
    for key in "abc":
        policy.insert(key, 3 * MiB)
    victims = policy.evict(0, keep={"b"})
    assert sorted(str(k) for k, _ in victims) == ["a", "c"]
    assert "b" in policy and policy.size == 3 * MiB


def test_sizes_are_accounted_through_remove_and_evict() -> None:
    policy = S3FIFO(10 * MiB)
    policy.insert("a", 1 * MiB)
    policy.insert("b", 2 * MiB, hot=True)
    policy.insert("a", 1 * MiB)  # a second insert is a no-op
    assert policy.size == 3 * MiB and len(policy) == 2
    policy.remove("a")
    policy.remove("missing")
    assert policy.size == 2 * MiB
    victims = policy.evict(0)
    assert [(str(k), s) for k, s in victims] == [("b", 2 * MiB)]
    assert policy.size == 0 and len(policy) == 0


def test_evict_to_a_target_it_cannot_reach_stops() -> None:
    policy = S3FIFO(10 * MiB)
    policy.insert("a", 5 * MiB)
    # Everything is kept: evict must give up rather than loop forever.
    assert policy.evict(0, keep={"a"}) == []
    assert "a" in policy
