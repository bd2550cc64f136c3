"""Validators shared by the method layer: each refuses a bad value with a ConfigError."""

import math
import numbers

from trainables.rcgm.errors import ConfigError


def check_int(field: str, value, low: int) -> int:
    """Return value if it is an integer >= low (bools and floats such as 2.0 are refused)."""
    # bool is an Integral subclass; order=True is a typo, not the integer 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ConfigError(field, value, f"an integer >= {low}")
    return int(value)


def check_real(field: str, value, low: float, high: float, *, low_open=False, high_open=False,
               allow_inf=False) -> float:
    """Return value as a float if it is a real number inside the stated interval."""
    lb, hb = "(" if low_open else "[", ")" if high_open else "]"
    expected = f"a number in {lb}{low}, {high}{hb}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(field, value, expected)
    x = float(value)
    if math.isnan(x) or (math.isinf(x) and not allow_inf):
        raise ConfigError(field, value, expected)
    if x < low or x > high or (low_open and x == low) or (high_open and x == high):
        raise ConfigError(field, value, expected)
    return x


def check_choice(field: str, value, choices) -> str:
    """Return value if it is one of choices."""
    if value not in choices:
        raise ConfigError(field, value, "one of " + ", ".join(repr(c) for c in choices))
    return value
