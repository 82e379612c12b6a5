"""test_byte_names on the Python data plane (see test_python_plane.py): names
that are not UTF-8, relayed, journaled, baselined and served back by the
point-in-time export exactly."""

from __future__ import annotations

import pytest

from e2e import proxy_fixture
from e2e.test_byte_names import stack, test_byte_names_are_relayed_journaled_and_restored_exactly  # noqa: F401


@pytest.fixture(scope="module", autouse=True)
def python_data_plane():
    """Every proxy this module starts runs the Python relay."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(proxy_fixture, "DATA_PLANE", "python")
        yield
