"""Where settings come from: defaults, a TOML file, the environment and
command-line flags, in that order of precedence (a later one wins).

Names map mechanically so there is nothing to remember:

* field ``database_url``
* environment ``WADUD_DATABASE_URL``
* TOML ``database_url = ...`` at top level, or ``url = ...`` under ``[database]``
  (a section name and key are joined with ``_``).

An unknown name in any source is an error, never silence.
"""

from __future__ import annotations

import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wadud.config import FIELDS, Settings
from wadud.config.checks import check
from wadud.errors import ConfigError

ENV_PREFIX = "WADUD_"
# Variables with the prefix that are not settings: the configuration file,
# and WADUD_NATIVE=0, read at import by the native hot loops (setup.py) to
# keep the pure-Python ones.
NOT_SETTINGS = frozenset({ENV_PREFIX + "CONFIG", ENV_PREFIX + "NATIVE"})

_HINTS = typing.get_type_hints(Settings)


def load(
    *,
    file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings: defaults, then the TOML ``file`` (or ``$WADUD_CONFIG``),
    then ``WADUD_*`` environment variables, then ``overrides`` (command-line
    flags; ``None`` values are ignored). Unknown keys are errors, not silence."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    file = file or env.get(ENV_PREFIX + "CONFIG") or None
    if file:
        values.update(from_file(file))
    values.update(from_env(env))
    values.update(from_flags(overrides or {}))
    settings = Settings(**values)
    check(settings)
    return settings


def from_file(file: str | Path) -> dict[str, Any]:
    """The settings a TOML file gives; its ``[turn]`` table is shared with the relay."""
    try:
        with open(file, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read configuration file {file}: {exc}") from exc
    values: dict[str, Any] = {}
    for name, value in _flatten(data).items():
        if name not in FIELDS:
            raise ConfigError(f"{file}: unknown setting {name!r}")
        values[name] = _coerce(name, value, str(file))
    return values


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings ``WADUD_*`` variables give (lists comma separated)."""
    values: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key in NOT_SETTINGS:
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in FIELDS or FIELDS[name].metadata.get("env") is False:
            raise ConfigError(f"environment: unknown setting {key}")
        values[name] = _coerce(name, value, "environment")
    return values


def from_flags(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The settings command-line flags give; a flag not given is ``None``."""
    return {
        name: _coerce(name, value, "command line")
        for name, value in overrides.items()
        if value is not None
    }


def _coerce(name: str, value: Any, source: str) -> Any:
    hint = _HINTS[name]
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(value)
        if hint is int or hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return hint(value)
        if hint is Path:
            return Path(value)
        if typing.get_origin(hint) is dict:
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
        if typing.get_origin(hint) is list or isinstance(hint, types.GenericAlias):
            if isinstance(value, str):
                return [part.strip() for part in value.split(",") if part.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            raise ValueError(value)
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except ValueError:
        raise ConfigError(f"{source}: {name} = {value!r} is not a valid {hint}") from None


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}".replace("-", "_")
        if name == "turn" and isinstance(value, dict):
            # The [turn] table is shared with `wadud turn`: keys that are our
            # settings are ours, the rest are the relay's (turn.config).
            relay = {}
            for k, v in value.items():
                field_name = "turn_" + k.replace("-", "_")
                if field_name in FIELDS and field_name != "turn_relay":
                    out[field_name] = v
                else:
                    relay[k.replace("-", "_")] = v
            out["turn_relay"] = relay
        elif isinstance(value, dict) and name not in FIELDS:
            out.update(_flatten(value, name + "_"))
        else:
            out[name] = value
    return out
