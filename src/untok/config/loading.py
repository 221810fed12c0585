"""Resolving a run config: presets, TOML recipes, ``--set`` overrides and old keys.

A run is described by a :class:`RunConfig` with three sections, ``model``, ``train`` and
``data``. It is resolved in layers, each overriding the one before::

    defaults -> preset (``--preset`` or ``preset = ...`` in the recipe) -> recipe TOML
             -> ``--set section.key=value`` overrides

Unknown keys are errors that name the nearest valid key. The resolved config is saved in
every checkpoint, so a run can always be rebuilt from its directory alone.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from untok.config.presets import preset
from untok.config.schema import SECTIONS, RunConfig, suggest
from untok.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_SEEN: set[str] = set()


def warn_deprecated(message: str) -> None:
    """Print a deprecation message once per process, on one line of stderr."""
    if message not in _SEEN:
        _SEEN.add(message)
        print(f"untok: {message}", file=sys.stderr)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation; ints pass as floats, strings are parsed."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if isinstance(value, str) and annotation is not str:
        value = parse_value(value)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if isinstance(value, str) and "kind" in {f.name for f in dataclasses.fields(annotation)}:
            value = {"kind": value}  # model.embedding = "wave" means kind = "wave"
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table of settings, got {value!r}")
        return _section_from_dict(annotation, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = typing.get_args(annotation)[0]
        return tuple(_coerce(v, item, key) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key}: expected {getattr(annotation, '__name__', annotation)}, "
                      f"got {value!r}")


def parse_value(text: str) -> Any:
    """Parse a command-line value the way TOML would (numbers, booleans, quoted strings)."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _section_from_dict(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}.{key}'"
                              f"{suggest(key, names)}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}.{key}")
    return cls(**kwargs)


def from_dict(values: dict[str, Any], *, deprecation: typing.Callable[[str], None] | None = None
              ) -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts; unknown sections or keys are errors.

    Keys of untok 0.1 (``model.tie_embeddings``, ``model.ternary_head``,
    ``model.objective``, ``train.objective``) become ``model.head``; ``deprecation`` is told
    a one-line message for each one that was given (checkpoints convert silently)."""
    values = migrate_v1(values, deprecation or (lambda message: None))
    sections = {}
    for name, section in values.items():
        if name not in SECTIONS:
            raise ConfigError(f"unknown config section '{name}'{suggest(name, SECTIONS)}")
        if not isinstance(section, dict):
            raise ConfigError(f"config section '{name}' must be a table")
        sections[name] = _section_from_dict(SECTIONS[name], section, name)
    return RunConfig(**sections)


DEPRECATED_KEYS = {
    "train.objective": "use model.head = 'distance' for mse ('ce' is the default)",
    "model.objective": "use model.head = 'distance' for mse ('ce' is the default)",
    "model.tie_embeddings": "use model.head = 'tied' (the default) or 'linear'",
    "model.ternary_head": "use model.head = 'ternary'",
}


def migrate_v1(values: dict[str, Any], deprecation: typing.Callable[[str], None]
               ) -> dict[str, Any]:
    """``values`` with untok 0.1's head keys turned into ``model.head``."""
    old: dict[str, Any] = {}
    values = dict(values)
    for key in DEPRECATED_KEYS:
        section, name = key.split(".")
        table = values.get(section)
        if isinstance(table, dict) and name in table:
            table = values[section] = dict(table)
            old[name] = table.pop(name)
            deprecation(f"{key} is deprecated and will be removed in untok 0.3; "
                        f"{DEPRECATED_KEYS[key]}")
    if not old:
        return values
    if old.get("objective", "ce") not in ("ce", "mse"):
        raise ConfigError(f"objective {old['objective']!r} is not one of ('ce', 'mse'); "
                          "the objective is now model.head ('distance' for mse)")
    model = values["model"] = dict(values.get("model") or {})
    if "head" not in model:
        if old.get("objective") == "mse":
            model["head"] = "distance"
        elif old.get("ternary_head") is True:
            model["head"] = "ternary"
        elif old.get("tie_embeddings") is False:
            model["head"] = "linear"
    return values


def _merge(base: dict[str, dict], update: dict[str, dict]) -> dict[str, dict]:
    merged = {name: dict(section) for name, section in base.items()}
    for name, section in update.items():
        if not isinstance(section, dict):
            raise ConfigError(f"config section '{name}' must be a table")
        merged[name] = _deep_update(merged.get(name, {}), section)
    return merged


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` applied; nested tables merge key by key."""
    result = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _deep_update(result[key], value)
        else:
            result[key] = value
    return result


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Read a TOML recipe: an optional top-level ``preset`` plus section tables."""
    path = Path(path)
    try:
        recipe = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"recipe not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"recipe {path} is a directory; pass a TOML file such as "
                          "recipes/tiny.toml") from None
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe {path} is not valid TOML: {exc}") from None
    extra = set(recipe) - set(SECTIONS) - {"preset", "description"}
    if extra:
        key = sorted(extra)[0]
        raise ConfigError(f"unknown key '{key}' in recipe {path}"
                          f"{suggest(key, [*SECTIONS, 'preset'])}")
    return recipe


def parse_overrides(assignments: typing.Iterable[str]) -> dict[str, dict[str, Any]]:
    """Turn ``["train.lr=3e-4", "model.local.dim=96"]`` into nested dicts."""
    result: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        path = key.strip().split(".")
        if not sep or len(path) < 2 or not all(path):
            raise ConfigError(f"override '{item}' must look like section.key=value "
                              "(e.g. train.lr=3e-4)")
        table = result
        for name in path[:-1]:
            table = table.setdefault(name, {})
            if not isinstance(table, dict):
                raise ConfigError(f"override '{item}' conflicts with another override")
        table[path[-1]] = parse_value(value.strip())
    return result


def resolve(*, preset_name: str | None = None, recipe: str | Path | None = None,
            overrides: typing.Iterable[str] = (),
            base: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """Resolve defaults -> ``base`` -> preset -> recipe -> overrides into a valid config."""
    layers: dict[str, dict] = _merge({}, base or {})
    recipe_values = read_recipe(recipe) if recipe else {}
    name = preset_name or recipe_values.get("preset")
    if name:
        layers = _merge(layers, preset(name))
    layers = _merge(layers, {k: v for k, v in recipe_values.items() if k in SECTIONS})
    layers = _merge(layers, parse_overrides(overrides))
    return from_dict(layers, deprecation=warn_deprecated).validate()


def replace(config: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """A copy of ``config`` with some fields of some sections changed (checked)."""
    values = _merge(config.to_dict(), sections)
    return from_dict(values).validate()


def save_json(config: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
