"""Errors raised by the KV cache manager when its caller (the scheduler or engine) misuses it.

These are programming errors, not user errors: a double free, an unknown sequence id, a
block id outside the pool. They are never shown to API users, so they do not derive from
`trtkv.errors.TrtkvError`.
"""

from __future__ import annotations


class KVCacheError(RuntimeError):
    """The KV cache API was called with an unknown id or in a state that forbids the call."""


class NoFreeBlocksError(KVCacheError):
    """An allocation needs more free blocks than the pool has; nothing was changed.

    Call the matching ``can_*`` predicate first, or free/preempt sequences.
    """
