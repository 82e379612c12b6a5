"""A representative subset of the proxy's end-to-end tests, run against the
Python data plane (`nfsj proxy --data-plane python`) in the normal suite.

The suite runs on the native plane, nfsj's default; the Python plane serves
`--portmap` (NLM: test_locking.py) and the whole suite runs on it with
NFSJ_DATA_PLANE=python. This module keeps it covered otherwise: capture of
every mutation kind and of failures, binds, bad clients, XID reuse, a
client gone with mutations in flight, both quota policies and the no-reply
gap (byte names through baseline and export: test_python_plane_names.py).
"""

from __future__ import annotations

import pytest

from e2e import proxy_fixture
from e2e.test_capture_records import (  # noqa: F401
    captured, test_bind_records_name_what_lookup_and_readdirplus_taught,
    test_every_kind_of_mutation_is_journaled, test_provoked_failures_are_journaled_as_failed)
from e2e.test_gaps import shard, test_a_mutation_whose_nas_reply_never_came_is_a_gap  # noqa: F401
from e2e.test_proxy_faults import (  # noqa: F401
    test_protocol_breaker_is_disconnected_and_nothing_of_it_is_journaled,
    test_quota_block_holds_the_reply_of_a_write_past_the_quota,
    test_quota_passthrough_keeps_serving_and_stops_journaling)
from e2e.test_relay_matching import (  # noqa: F401
    stack, test_a_client_gone_with_mutations_in_flight_leaves_no_stamp_behind,
    test_a_retransmission_in_flight_runs_once_and_is_answered)


@pytest.fixture(scope="module", autouse=True)
def python_data_plane():
    """Every proxy this module starts runs the Python relay (before any module fixture starts one)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(proxy_fixture, "DATA_PLANE", "python")
        yield
