"""Configuration: frozen dataclasses per stage, and the layering defaults < YAML < flags given.

Each engine takes one frozen dataclass. The CLI builds it from three layers: the dataclass defaults (which
are the CLI defaults), a ``--config file.yaml``, and the flags the user actually typed. A YAML file may
hold the keys at top level or under a section named after the command (``preprocess:``), so one file can
configure a whole pipeline. Unknown keys are an error that names them, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from cxr_tools.errors import ConfigError

T = TypeVar("T")


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.", "Check the --config path.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}".replace("\n", " ")) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of option names to values.")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def section(data: Mapping[str, Any], name: str, known: Iterable[str]) -> dict[str, Any]:
    """Pick the keys for command ``name``: its own section wins over top-level keys it knows."""
    known = set(known)
    out = {k: v for k, v in data.items() if k in known}
    sub = data.get(name.replace("-", "_")) or data.get(name)
    if isinstance(sub, dict):
        sub = {str(k).replace("-", "_"): v for k, v in sub.items()}
        unknown = sorted(set(sub) - known)
        if unknown:
            raise ConfigError(
                f"Unknown option(s) in the '{name}' section of the config: {', '.join(unknown)}.",
                f"Known options: {', '.join(sorted(known))}.",
            )
        out.update(sub)
    return out


def build(
    cls: type[T],
    defaults_from_flags: Mapping[str, Any],
    given: Iterable[str],
    yaml_values: Mapping[str, Any] | None = None,
) -> T:
    """Build dataclass ``cls``: flag values, overridden by YAML unless the flag was given explicitly.

    ``defaults_from_flags`` holds every flag's value (typed or defaulted by the CLI); ``given`` names the
    flags the user actually typed, which win over ``yaml_values``.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {k: v for k, v in defaults_from_flags.items() if k in fields}
    given = set(given)
    for key, value in (yaml_values or {}).items():
        if key in fields and key not in given:
            values[key] = _coerce(value, values.get(key))
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"Invalid configuration for {cls.__name__}: {exc}") from exc


def _coerce(value: Any, like: Any) -> Any:
    """Convert YAML scalars to the type of the CLI default where that is unambiguous (paths, tuples)."""
    if isinstance(like, Path) and isinstance(value, str):
        return Path(value)
    if isinstance(like, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def to_dict(obj: Any) -> Any:
    """A JSON/YAML-friendly copy of a (nested) dataclass: paths become strings, tuples lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dump_yaml(obj: Any) -> str:
    """Serialise a config dataclass as YAML (the form saved as ``RUN/config.yaml``)."""
    import yaml

    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def to_json(obj: Any) -> str:
    """Serialise a result dataclass as JSON (``--json`` output)."""
    return json.dumps(to_dict(obj), indent=2, default=str)


def differing_keys(saved: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Sorted keys whose values differ between a recorded settings mapping and the current one (a key missing on
    one side differs): what a resume compares before it reuses earlier work."""
    keys = (set(saved) | set(current)) - set(ignore)
    return sorted(k for k in keys if saved.get(k) != current.get(k))
