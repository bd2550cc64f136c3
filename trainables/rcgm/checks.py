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
    # An infinite bound is only shown closed ("inf]") when inf itself is accepted.
    lb = "(" if low_open or (math.isinf(low) and not allow_inf) else "["
    hb = ")" if high_open or (math.isinf(high) and not allow_inf) else "]"
    expected = f"a number in {lb}{low}, {high}{hb}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(field, value, expected)
    x = float(value)
    if math.isnan(x) or (math.isinf(x) and not allow_inf):
        raise ConfigError(field, value, expected)
    if x < low or x > high or (low_open and x == low) or (high_open and x == high):
        raise ConfigError(field, value, expected)
    return x


def check_bool(field: str, value) -> bool:
    """Return value if it is True or False (1, 'yes' and other truthy values are refused)."""
    if not isinstance(value, bool):
        raise ConfigError(field, value, "true or false")
    return value


def check_choice(field: str, value, choices) -> str:
    """Return value if it is one of choices."""
    if value not in choices:
        raise ConfigError(field, value, "one of " + ", ".join(repr(c) for c in choices))
    return value


class IntRange:
    """Integers >= low: a declared range that checks values and describes itself for --help."""

    def __init__(self, low: int):
        self.low = low

    def check(self, field: str, value) -> int:
        """value as an int, or a ConfigError naming field."""
        return check_int(field, value, self.low)

    def describe(self) -> str:
        """What the range accepts, in words."""
        return f"an integer >= {self.low}"


class RealRange:
    """Real numbers in an interval (NaN always refused, inf only with allow_inf)."""

    def __init__(self, low: float, high: float, *, low_open=False, high_open=False, allow_inf=False):
        self.low, self.high = low, high
        self.options = dict(low_open=low_open, high_open=high_open, allow_inf=allow_inf)

    def check(self, field: str, value) -> float:
        """value as a float, or a ConfigError naming field."""
        return check_real(field, value, self.low, self.high, **self.options)

    def describe(self) -> str:
        """What the range accepts, in words (the same text a refusal shows)."""
        try:
            check_real("_", math.nan, self.low, self.high, **self.options)
        except ConfigError as err:
            return err.expected
        raise AssertionError("NaN passed a RealRange")


class Choice:
    """One of a fixed tuple of names."""

    def __init__(self, choices: tuple):
        self.choices = tuple(choices)

    def check(self, field: str, value):
        """value itself, or a ConfigError listing the choices."""
        return check_choice(field, value, self.choices)

    def describe(self) -> str:
        """The choices, comma-separated."""
        return "one of " + ", ".join(map(str, self.choices))


class Boolean:
    """True or False."""

    def check(self, field: str, value) -> bool:
        """value itself, or a ConfigError."""
        return check_bool(field, value)

    def describe(self) -> str:
        """What the flag takes."""
        return "on with the flag, off with its --no- form"
