"""check_int: the one integer validator -- one rule for bool, bounds, and the message format."""
import re

import numpy as np
import pytest

from longmix.checks import check_int, check_optional_int, is_int


@pytest.mark.parametrize("value", [True, False, 1.0, "3", None, [1]])
def test_non_integers_and_bools_are_refused(value):
    assert not is_int(value)
    with pytest.raises(ValueError, match=re.escape(f"size must be an int >= 0, got {value!r}")):
        check_int("size", value, low=0)


def test_bounds_and_numpy_integers():
    assert check_int("n", np.int64(5), low=1, high=5) == 5 and type(check_int("n", np.int64(5))) is int
    with pytest.raises(ValueError, match=r"n must be an int in \[1, 4\], got 5"):
        check_int("n", 5, high=4)
    with pytest.raises(ValueError, match="n must be an int <= 4, got 9"):
        check_int("n", 9, low=None, high=4)
    assert check_int("n", -7, low=None) == -7


def test_owner_and_optional():
    with pytest.raises(ValueError, match="S4D: d_state must be an int >= 2, got 1"):
        check_int("d_state", 1, low=2, owner="S4D")
    assert check_optional_int("t", None) is None and check_optional_int("t", 3) == 3
    with pytest.raises(ValueError, match="t must be None or an int >= 1, got 0"):
        check_optional_int("t", 0)


def test_the_layers_use_the_same_validator():
    """Mixers and tasks name the bad option, and their own name, through longmix.checks."""
    from longmix import mixers, tasks

    with pytest.raises(ValueError, match="SoftmaxAttention: window must be an int >= 1, got True"):
        mixers.build("softmax", dim=8, window=True)
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        tasks.build("passkey", seed=-1)
