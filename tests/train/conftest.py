import pytest

import toys  # tests/train/toys.py: test-only mixers and task


@pytest.fixture(scope="module")
def toy_registry():
    """Register the test-only mixers and task for one module, then remove them."""
    toys.register_toys()
    yield toys
    toys.unregister_toys()
