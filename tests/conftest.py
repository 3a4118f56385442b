"""Fixtures shared by several test folders."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "train"))
import toys  # noqa: E402  (tests/train/toys.py: test-only mixers and task)


@pytest.fixture(scope="module")
def toy_registry():
    """Register the test-only mixers and task for one module, then remove them."""
    toys.register_toys()
    yield toys
    toys.unregister_toys()
