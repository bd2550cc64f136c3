"""Errors raised for bad user input, naming the field and, where one sets it, the flag to change."""


class ConfigError(ValueError):
    """A config value is invalid; the message names the field, what it accepts and (if known) the flag.

    The method and parts layers know no command lines, so they raise without a flag; the trainable
    layer adds the flag of a TrialConfig field (`trainables.config.with_flag`), an entry point its own.
    """

    def __init__(self, field: str, value, expected: str, flag: str | None = None):
        self.field = field
        self.value = value
        self.expected = expected
        self.flag = flag
        change = f" (change {flag})" if flag else ""
        super().__init__(f"{field}={value!r} is invalid: expected {expected}{change}")

    def with_flag(self, flag: str | None, field: str | None = None) -> "ConfigError":
        """The same error naming flag (and optionally another field name, e.g. 'kappas' for a grid)."""
        return ConfigError(field or self.field, self.value, self.expected, flag)
