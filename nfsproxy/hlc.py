"""The proxy's hybrid logical clock.

The implementation lives in `logstore.hlc` because recovery shards keep a
clock too (their acks carry one) and the dependency direction is
nfsproxy -> recoveryd -> logstore. This module is the proxy's name for it.
"""

from logstore.hlc import *  # noqa: F401,F403
from logstore.hlc import __all__  # noqa: F401
