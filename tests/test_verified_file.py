"""
A stored file read through Python (TLS, the fallback streamer) is hashed on
the way, in the disk pool and a piece ahead of its reader: the final byte
only once the whole matches, bounded memory, and the descriptor kept open
while the pool still reads it.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from ocicache._fetch._source import MIN_PIECE, PIECE, StoredFile, VerifiedFile
from ocicache._spec._reference import Digest
from ocicache._storage._store import Kind, Store
from ocitest.fakes import ManualPool, Reactor, disk_of, run


class Reader:
    def __init__(self) -> None:
        self.position = 0
        self.told = 0

    def data_arrived(self) -> None:
        self.told += 1


def _open(clock: Reactor, store: Store, body: bytes, digest: Digest, corrupt: list[Digest],
          piece: list[int] | None = None) -> tuple[ManualPool, VerifiedFile, Reader]:
    piece = piece if piece is not None else [PIECE]
    store.write_small(Kind.BLOB, digest, body)
    opened = store.open(Kind.BLOB, digest)
    assert opened is not None
    pool = ManualPool()
    source = StoredFile(*opened).verified(digest, corrupt.append, disk_of(clock, pool, store).run,
                                          lambda: piece[0])
    reader = Reader()
    source.subscribe(reader)
    return pool, source, reader


def _piece(clock: Reactor, pool: ManualPool) -> None:
    pool.run_one()
    run(clock)


def test_a_hit_is_hashed_a_piece_ahead_and_its_last_byte_waits_for_the_match(clock: Reactor, store: Store) -> None:
    body = os.urandom(3 * PIECE + 5)
    digest = Digest.parse("sha256:" + hashlib.sha256(body).hexdigest())
    corrupt: list[Digest] = []
    pool, source, reader = _open(clock, store, body, digest, corrupt)
    assert source.available == 0 and not source.ended and len(pool.pending) == 1
    got = b""
    while not source.ended:
        _piece(clock, pool)
        # One piece read ahead, and no second until the reader takes it.
        assert not pool.pending or source.ended
        if not source.ended:
            assert source.available == len(got) + PIECE and reader.told
        while len(got) < source.available:
            got += source.read(len(got), PIECE)
        assert len(pool.pending) == (0 if source.ended else 1)
    assert got == body and source.available == len(body) and source.failure is None and corrupt == []
    source.release()


def test_a_hit_that_does_not_match_is_cut_short_and_reported(clock: Reactor, store: Store) -> None:
    body = os.urandom(PIECE + 10)
    digest = Digest.parse("sha256:" + hashlib.sha256(b"something else").hexdigest())
    corrupt: list[Digest] = []
    pool, source, reader = _open(clock, store, body, digest, corrupt)
    _piece(clock, pool)
    assert source.read(0, PIECE) == body[:PIECE]
    told = reader.told
    _piece(clock, pool)
    assert source.ended and source.failure is not None and corrupt == [digest]
    assert source.available < len(body) and source.read(PIECE, PIECE) == b"" and reader.told > told
    source.release()


def test_pieces_follow_the_write_budgets_share(clock: Reactor, store: Store) -> None:
    """Many clients, small shares: small pieces, so what is held ahead stays bounded."""
    body = os.urandom(2 * PIECE)
    digest = Digest.parse("sha256:" + hashlib.sha256(body).hexdigest())
    share = [PIECE]
    pool, source, _ = _open(clock, store, body, digest, [], share)
    _piece(clock, pool)
    share[0] = 1  # never below MIN_PIECE: a pool job per few bytes would cost more than the hash
    assert source.read(0, PIECE) == body[:PIECE]
    (_, _, args), = pool.pending
    assert args[1:3] == (PIECE, MIN_PIECE)  # (fd, offset, length, verifier)
    _piece(clock, pool)
    assert source.available == PIECE + MIN_PIECE and not pool.pending  # a piece ahead: no more
    source.release()


def test_a_release_while_the_pool_reads_closes_the_file_after(clock: Reactor, store: Store) -> None:
    body = os.urandom(PIECE)
    digest = Digest.parse("sha256:" + hashlib.sha256(body).hexdigest())
    pool, source, _ = _open(clock, store, body, digest, [])
    (_, _, args), = pool.pending
    fd = args[0]
    assert isinstance(fd, int)
    source.release()
    os.fstat(fd)  # still open: the pool is about to read it
    _piece(clock, pool)
    with pytest.raises(OSError):
        os.fstat(fd)


def test_an_empty_hit_is_checked_at_once(clock: Reactor, store: Store) -> None:
    digest = Digest.parse("sha256:" + hashlib.sha256(b"").hexdigest())
    pool, source, _ = _open(clock, store, b"", digest, [])
    assert source.ended and source.available == 0 and source.failure is None and not pool.pending
    source.release()
