"""Seeds derived from keys: independent, reproducible random streams without carried state.

A random choice that must come out the same in a resumed run, in another process or on another rank (an epoch's
order, a sample's augmentation, a few-shot record's demonstration order) draws from a generator seeded by a hash of
what it is for, e.g. derived_seed("order", seed, epoch). No torch here: the teachers use it too.
"""

from __future__ import annotations

import hashlib


def derived_seed(*key: object) -> int:
    """A 63-bit seed that is a hash of `key` (e.g. seed, epoch, index). Stable across processes, unlike hash()."""
    digest = hashlib.blake2b("/".join(map(str, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
