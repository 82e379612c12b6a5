"""The restore's errors: what every restore path raises, in one line that says why."""

from __future__ import annotations

__all__ = ["RestoreError", "RestoreRefused", "ShardError", "ShardRefusedClient"]


class RestoreError(Exception):
    """A restore cannot go on; the message is one line that says why."""


class RestoreRefused(RestoreError):
    """The request cannot be delivered as asked (a time outside the valid range,
    a destination that is not empty, a path that did not exist)."""


class ShardError(RestoreError):
    """A shard did not answer or failed a call; the message names it."""




class ShardRefusedClient(ShardError):
    """A shard refused this client's credentials (no token, a wrong one, a
    certificate it does not accept)."""
