"""Errors raised for bad user input, always naming the field to change."""


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and what it accepts."""

    def __init__(self, field: str, value, expected: str):
        self.field = field
        self.value = value
        self.expected = expected
        flag = "--" + field.replace("_", "-")
        super().__init__(f"{field}={value!r} is invalid: expected {expected} (change {flag})")
