"""Wire-level building blocks of digest mode (docs/digest-mode.md).

Pure functions and small value types, independent of the bootstep and of
the compiled core, so the bootstep, the benchmarks and the tests share one
definition of what goes on the wire:

``names``
    the digest exchange, its routing keys, and the Redis pub/sub channel
    names kombu would use for them (``/{db}.`` fanout prefix,
    ``global_keyprefix``), next to the stock ``celeryev`` ones.
``codec``
    encode/decode of the digest-mode messages (relay digests, snapshots
    and pulses, member announces); decoding validates everything and
    never raises (``DigestDecoder`` counts and logs what it drops).
``relays``
    the relay selection rule (a stable hash rank of hostnames, sticky
    relays), the succession order and when a worker takes over.
``view``
    the member's view of the cluster (applies digests and snapshots) and
    the relay's change log (builds digests), as pure state machines.
"""
from .codec import (
    Announce,
    Digest,
    DigestDecoder,
    Member,
    PeerFields,
    Pulse,
    Snapshot,
    ViewHash,
    decode,
    encode,
    member_hash,
)
from .names import DigestNames
from .relays import choose_relays, rank, ranked, should_publish, succession, takeover_after
from .view import Applied, ChangeLog, MemberView

__all__ = (
    'Announce', 'Digest', 'DigestDecoder', 'Member', 'PeerFields', 'Pulse',
    'Snapshot', 'ViewHash', 'decode', 'encode', 'member_hash', 'DigestNames',
    'choose_relays', 'rank', 'ranked', 'should_publish', 'succession',
    'takeover_after', 'Applied', 'ChangeLog', 'MemberView',
)
