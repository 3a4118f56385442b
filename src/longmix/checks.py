"""The one validator of integer arguments, on the ground floor: every layer may import it.

One rule for ``bool``: it is refused. ``True`` is an ``int`` to Python, but a size, count, seed
or step of ``True`` is always a mistake (a flag passed in the wrong place), never a meaning.
NumPy integers are accepted (task code computes sizes with NumPy) and returned as ``int``.
"""
from __future__ import annotations

import numbers


def _expected(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"an int in [{low}, {high}]"
    if low is not None:
        return f"an int >= {low}"
    return "an int" if high is None else f"an int <= {high}"


def is_int(value, low: int | None = None, high: int | None = None) -> bool:
    """Whether ``value`` is an integer (not a bool) in ``[low, high]``: the test of :func:`check_int`,
    for callers that raise their own error (e.g. a damaged file rather than a bad argument)."""
    return (not isinstance(value, bool) and isinstance(value, numbers.Integral)
            and (low is None or value >= low) and (high is None or value <= high))


def check_int(name: str, value, low: int | None = 1, high: int | None = None, *,
              owner: str | None = None) -> int:
    """Return ``value`` as an ``int`` if it is an integer (not a bool) in ``[low, high]``;
    otherwise raise a ValueError naming the argument (``owner: name`` when ``owner`` is given)
    and what was expected. ``low=None`` or ``high=None``: no bound on that side."""
    if not is_int(value, low, high):
        where = f"{owner}: " if owner else ""
        raise ValueError(f"{where}{name} must be {_expected(low, high)}, got {value!r}")
    return int(value)


def check_optional_int(name: str, value, low: int | None = 1, high: int | None = None, *,
                       owner: str | None = None) -> int | None:
    """:func:`check_int` for an option that may be unset: None passes through."""
    if value is None:
        return None
    if not is_int(value, low, high):
        where = f"{owner}: " if owner else ""
        raise ValueError(f"{where}{name} must be None or {_expected(low, high)}, got {value!r}")
    return int(value)
