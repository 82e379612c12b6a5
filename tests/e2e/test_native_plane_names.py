"""test_byte_names on the native data plane (see test_native_plane.py): names
that are not UTF-8, relayed, journaled, baselined and served back by the
point-in-time export exactly."""

from __future__ import annotations

import pytest

from e2e import proxy_fixture
from e2e.test_byte_names import stack, test_byte_names_are_relayed_journaled_and_restored_exactly  # noqa: F401


@pytest.fixture(scope="module", autouse=True)
def native_data_plane():
    """Every proxy this module starts runs the native relay."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(proxy_fixture, "DATA_PLANE", "native")
        yield
