import pytest

from ._tiny import ensure_fisher


@pytest.fixture(autouse=True, scope="session")
def _fisher():
    ensure_fisher()
