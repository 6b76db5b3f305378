"""Configuration: frozen dataclasses per stage, config files, and their serialised forms.

Each engine takes one frozen dataclass, built by the CLI from the command's parameters. Values come in three
layers: the option defaults, a ``--config file.yaml``, and the flags the user actually typed. The CLI hands
the file's values to the option parser as defaults (see ``cxr_tools.cli.common``), so a YAML value is
converted and checked exactly as the same flag would be. This module reads the file and picks the keys for one
command: at top level or under a section named after the command (``preprocess:``), so one file can
configure a whole pipeline. Unknown keys are an error that names the closest valid key, never silently ignored.
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
    return {str(k): v for k, v in data.items()}


def select(
    data: Mapping[str, Any], command: str, options: Mapping[str, Mapping[str, str]], source: str = "config"
) -> dict[str, Any]:
    """The values of a config file for ``command``, by parameter name; its own section wins over top-level keys.

    ``options`` maps every command name to its accepted keys (``-`` written as ``_``) and the parameter each
    names. A file may configure a whole pipeline, so a top-level key is accepted when any command knows it and
    applies to the commands that do; a section is a top-level key named after a command. A key no command
    (or, inside a section, not that command) knows is refused with the closest valid key, since a typo
    silently ignored would run with a value the user did not intend.
    """
    every = {key for keys in options.values() for key in keys}
    sections = {name.replace("-", "_"): name for name in options}
    top: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = _key(raw_key)
        if key in sections and (isinstance(value, Mapping) or key not in every):
            name = sections[key]
            if not isinstance(value, Mapping):
                raise ConfigError(f"Section '{raw_key}' in {source} must be a mapping of option names to values.")
            picked = _pick(value, options[name], f"the '{raw_key}' section of {source}")
            if name == command:
                own = picked
        elif key in every:
            if key in options.get(command, {}):
                top.update(_pick({raw_key: value}, options[command], source))
        else:
            raise ConfigError(f"Unknown key '{raw_key}' in {source}.", _suggest(key, every | set(sections)))
    return {**top, **own}


def _key(raw: object) -> str:
    return str(raw).strip().replace("-", "_")


def _pick(values: Mapping[Any, Any], known: Mapping[str, str], where: str) -> dict[str, Any]:
    """Keys of one mapping as parameter names; unknown keys and two keys for one parameter are refused."""
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for raw_key, value in values.items():
        key = _key(raw_key)
        if key not in known:
            raise ConfigError(f"Unknown key '{raw_key}' in {where}.", _suggest(key, set(known)))
        name = known[key]
        if name in out:
            raise ConfigError(f"Keys '{spelled[name]}' and '{raw_key}' in {where} set the same option.", "Keep one.")
        out[name], spelled[name] = value, str(raw_key)
    return out


def _suggest(key: str, valid: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
    return f"Did you mean '{close[0]}'?" if close else f"Valid keys: {', '.join(sorted(valid))}."


def cli_text(value: Any) -> str:
    """A YAML scalar as the text a user would type after its flag, so it is converted and checked as a flag is.

    A list becomes the comma-separated form every list-valued cxr option reads (``classes: [A, B]`` is
    ``--classes A,B``); a mapping the ``KEY=VALUE`` form (``{Effusion: 0.3, Mass: 0.6}`` is
    ``Effusion=0.3,Mass=0.6``), with ``;`` between entries whose values are lists (``{train: [A, B], val: [C]}``
    is the meta-split ``train=A,B;val=C``); booleans become ``true`` / ``false``.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(cli_text(v) for v in value)
    if isinstance(value, Mapping):
        entries = [f"{cli_text(k)}={cli_text(v)}" for k, v in value.items()]
        return (";" if any(isinstance(v, (list, tuple)) for v in value.values()) else ",").join(entries)
    return str(value)


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


def check_at_least(flag: str, value: float | None, minimum: float = 1) -> None:
    """Refuse a setting below ``minimum`` with a message naming its flag; None (not set) passes."""
    if value is not None and value < minimum:
        raise ConfigError(f"{flag} must be at least {minimum} (got {value}).")


def fields_from(cls: type[T], source: Any) -> T:
    """A ``cls`` dataclass whose every field ``source`` has an attribute of the same name takes that value (the
    others keep their defaults): a stage's part of a larger config, with no field copied by hand to drift."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return cls(**{n: getattr(source, n) for n in names if hasattr(source, n)})
