"""End-to-end fixtures: real `nfsj` processes in front of the real NAS."""

from e2e.guest_fixture import guest, kernel_image  # noqa: F401  (pytest fixtures)
from e2e.netns_fixture import host_pair, nas_host_factory  # noqa: F401  (pytest fixtures)
from e2e.proxy_fixture import proxy, proxy_factory  # noqa: F401  (pytest fixtures)
from e2e.shard_fixture import shard_factory  # noqa: F401  (pytest fixture)
