"""Typed configs: dataclasses, presets, YAML files and command-line overrides.

Every model and experiment has one dataclass config. A config is built in layers, each overriding the last:

    defaults of the dataclass  <-  preset (``tiny`` / ``quick`` / ``paper``)  <-  YAML file  <-  CLI overrides

CLI overrides are ``key=value`` or ``--key value`` (or ``--key=value``); nested fields use dots
(``model.num_layers=4``). Values are parsed as YAML scalars/lists and then checked against the field's type,
so ``lr=3e-4`` becomes a float and ``lr=fast`` is an error that names the field and the expected type.

Presets are declared on the config class as ``PRESETS = {"tiny": {...}, ...}`` (dicts of overrides).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

PRESET_NAMES = ("tiny", "quick", "paper")


class ConfigError(ValueError):
    """A config value, key or file that does not fit its dataclass."""


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON/YAML-safe dict of a (nested) dataclass config. Tuples become lists."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a dataclass config, got {type(config).__name__}")

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return convert(config)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert ``value`` to ``annotation``; raise ConfigError naming ``where`` on mismatch."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} fits none of {annotation}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {annotation.__name__}, got {value!r}")
        return from_dict(annotation, value, _prefix=where + ".")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else []
        if isinstance(value, str) and "," in value:  # tasks=reach-v3,push-v3
            value = [yaml.safe_load(v.strip()) for v in value.split(",") if v.strip()]
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool) \
                and not (origin is tuple and len(args) > 1 and args[1] is not Ellipsis):
            value = [value]  # one item: --tasks reach-v3
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        converted = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if origin is dict:
        if isinstance(value, str):  # key={push-v3: 0.08} on the command line
            value = yaml.safe_load(value) if value.strip() else {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_type, value_type = args if len(args) == 2 else (Any, Any)
        return {_coerce(k, key_type, f"{where} key"): _coerce(v, value_type, f"{where}[{k!r}]")
                for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected a bool, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected an int, got {value!r}")
        try:
            as_float = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an int, got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{where}: expected an int, got {value!r}")
        return int(as_float)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a float, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a float, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if annotation is Path:
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, _prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys are an error that lists the known ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = _field_types(cls)
    unknown = set(data) - set(hints)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {sorted(_prefix + k for k in unknown)} for {cls.__name__}; "
            f"known: {sorted(hints)}"
        )
    kwargs = {k: _coerce(v, hints[k], _prefix + k) for k, v in data.items()}
    return _construct(cls, kwargs, _prefix)


def _construct(cls: type[T], kwargs: dict[str, Any], prefix: str, base: Any = None) -> T:
    # A config's own checks (``__post_init__``) raise "steps: must be positive"; a nested config must say
    # where it sits ("train.steps: ...") or the user cannot find the key.
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except ConfigError as e:
        if prefix:
            raise ConfigError(f"{prefix}{e}") from None
        raise


def merge(config: T, updates: dict[str, Any], *, _prefix: str = "") -> T:
    """Return a copy of ``config`` with (nested, dotted or not) ``updates`` applied and type-checked."""
    hints = _field_types(type(config))
    changes: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in updates.items():
        head, _, rest = key.partition(".")
        if head not in hints:
            raise ConfigError(f"unknown config key {_prefix + key!r} for {type(config).__name__}; known: {sorted(hints)}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        elif dataclasses.is_dataclass(hints[head]) and isinstance(value, dict):
            nested.setdefault(head, {}).update(value)
        else:
            changes[head] = _coerce(value, hints[head], _prefix + head)
    for head, sub in nested.items():
        current = changes.get(head, getattr(config, head))
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"config key {head!r} of {type(config).__name__} has no sub-keys")
        changes[head] = merge(current, sub, _prefix=f"{_prefix}{head}.")
    return _construct(type(config), changes, _prefix, base=config)


def preset(cls: type[T], name: str) -> T:
    """The config of ``cls`` under preset ``name`` (``cls.PRESETS[name]`` applied to the defaults)."""
    presets = getattr(cls, "PRESETS", {})
    if name not in presets:
        raise ConfigError(f"{cls.__name__} has no preset {name!r}; available: {sorted(presets)}")
    return merge(cls(), presets[name])


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """``["a=1", "--b.c", "x", "--d=2", "--e", "u", "v"]`` -> ``{"a": 1, "b.c": "x", "d": 2, "e": ["u", "v"]}``
    (values parsed as YAML; ``--key v1 v2 ...`` gives a list; a bare ``--flag`` is true)."""
    out: dict[str, Any] = {}
    i = 0

    def is_value(j: int) -> bool:  # argv[j] is a value, not the next option
        return j < len(argv) and "=" not in argv[j] and (not argv[j].startswith("--") or _is_number(argv[j]))

    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            body = arg[2:]
            if "=" in body:
                key, raw = body.split("=", 1)
            elif not is_value(i + 1):
                key, raw = body, "true"  # a bare flag
            else:
                key, raw = body, argv[i + 1]
                i += 1
                if is_value(i + 1):  # --key v1 v2 ...: a list
                    items = [raw]
                    while is_value(i + 1):
                        items.append(argv[i + 1])
                        i += 1
                    out[key.replace("-", "_")] = [_yaml_value(v) for v in items]
                    i += 1
                    continue
        elif "=" in arg:
            key, raw = arg.split("=", 1)
        else:
            raise ConfigError(f"cannot parse argument {arg!r}: expected key=value or --key value")
        out[key.replace("-", "_")] = _yaml_value(raw)
        i += 1
    return out


def _yaml_value(raw: str) -> Any:
    if raw == "":
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def build_config(cls: type[T], argv: list[str] | None = None, *, default_preset: str | None = None) -> T:
    """Build a config from the command line: ``[--preset NAME] [--config FILE.yaml] [key=value ...]``.

    Order: dataclass defaults <- preset <- YAML file <- overrides. A ``preset`` key inside the YAML file is
    honoured when no ``--preset`` was given.
    """
    overrides = parse_overrides(list(argv or []))
    preset_name = overrides.pop("preset", None)
    file_values: dict[str, Any] = {}
    config_path = overrides.pop("config", None)
    preset_from_file = False
    if config_path is not None:
        file_values = load_yaml(config_path)
        preset_from_file = preset_name is None and file_values.get("preset") is not None
        preset_name = preset_name or file_values.pop("preset", None)
        file_values.pop("preset", None)
    preset_name = preset_name or default_preset
    try:
        config = preset(cls, preset_name) if preset_name else cls()
    except ConfigError as e:
        if preset_from_file:
            raise ConfigError(f"config file {config_path}: {e}") from None
        raise
    try:
        config = merge(config, _flatten(file_values))
    except ConfigError as e:
        # A wrong value in a file must say which file, or a user with several configs cannot find it.
        raise ConfigError(f"config file {config_path}: {e}") from None
    return merge(config, _negated_flags(cls, overrides))


def _negated_flags(cls: type, overrides: dict[str, Any]) -> dict[str, Any]:
    """``--no-x`` (``{"no_x": True}``) -> ``{"x": False}`` for a bool field ``x`` of ``cls`` that has no field
    ``no_x`` itself."""
    hints = _field_types(cls)
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        name = key[3:]
        if key.startswith("no_") and key not in hints and hints.get(name) is bool and value is True:
            out[name] = False
        else:
            out[key] = value
    return out


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


