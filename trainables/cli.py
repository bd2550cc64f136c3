"""Command-line flags for every TrialConfig field, derived from its declaration (shared by every entry point)."""

from __future__ import annotations

import argparse
import dataclasses

from trainables.config import declarations, field_type
from trainables.rcgm.errors import ConfigError


def parse_nfe(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4), refusing anything else with a message naming --nfe."""
    try:
        return tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise ConfigError("nfe", text, "comma-separated integers >= 1, e.g. 1,2,4", flag="--nfe") from None


def parse_time_params(text: str) -> dict[str, float]:
    """'a=0.8,b=1' -> {'a': 0.8, 'b': 1.0}."""
    out = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        key, sep, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError("time_params", text, "k=v pairs with numeric values, e.g. a=0.8,b=1", flag="--time-params")
    return out


# Fields whose flag takes text that is parsed into the field's value.
PARSERS = {tuple: parse_nfe, dict: parse_time_params}


def flag_text(value) -> str:
    """A field value as its flag would spell it (for defaults shown in --help)."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def help_text(f: dataclasses.Field, default) -> str:
    """A flag's help: the declaration's help, what it accepts, and its default (None: set by the caller)."""
    meta = f.metadata
    parts = [meta["help"]]
    if meta["accepts"] is not None:
        parts.append(f"({meta['accepts'].describe()})")
    if meta["auto"] and (default is None or default == f.default):
        parts.append(f"[default {meta['auto']}]")
    elif default is not None:
        parts.append(f"[default {flag_text(default) or 'none'}]")
    return " ".join(parts).replace("%", "%%")


def add_trial_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = (), defaults: dict | None = None,
                        unset: bool = False) -> None:
    """Add a --flag per TrialConfig field (except skip).

    Each flag defaults to the field's declared default (its 'auto' placeholder, never a value
    resolved for another task), or to defaults[name] where an entry point sets its own. With
    unset=True every flag defaults to None, so a caller can layer a named size under the flags.
    """
    defaults = defaults or {}
    group = parser.add_argument_group("trial settings")
    for name, f in declarations().items():
        if name in skip:
            continue
        default = defaults.get(name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
        kind = field_type(f)
        if unset or default is None:
            arg_default = None
        else:
            arg_default = flag_text(default) if kind in PARSERS else default
        flag, text = "--" + name.replace("_", "-"), help_text(f, None if unset else default)
        if kind is bool:
            # --compile / --no-compile: argparse's type=bool would read "False" as True.
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=arg_default, help=text)
        else:
            group.add_argument(flag, type=str if kind in PARSERS else kind, default=arg_default, help=text,
                               metavar=name.upper())


def trial_values_from_args(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict:
    """The TrialConfig fields set on the command line (None = not set), parsed into config values."""
    values = {}
    for name, f in declarations().items():
        if name in skip or getattr(args, name, None) is None:
            continue
        value = getattr(args, name)
        parse = PARSERS.get(field_type(f))
        values[name] = parse(value) if parse and isinstance(value, str) else value
    return values
