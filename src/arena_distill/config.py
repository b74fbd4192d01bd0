"""Typed stage configs: dataclass defaults <- YAML profile <- ``key=value`` overrides.

A profile YAML (``configs/tiny.yaml``, ``configs/a100x8.yaml``) is a mapping of *sections*:

    common:        # keys offered to every stage; a stage takes those it declares, ignores the rest
      seed: 2025
    prepare:       # keys for one stage; every key must be a field of that stage's dataclass
      max_length: 1024

A stage calls ``cfg = load_config(PrepareConfig, "prepare", argv)``. Resolution order: dataclass
default, then ``common`` (only fields the dataclass has), then the stage's own section (unknown keys
are errors), then command-line overrides. Overrides come in three forms: ``key=value`` (must be a
field of this stage), ``section.key=value`` (only for that section's stage, ignored by the others: the
form to use with runbooks that call several stages) and ``common.key=value`` (taken by every stage
that has the field). Values are coerced to the field's type; a bad value names the key. ``--config PATH`` picks the YAML (default: ``$CONFIG`` or
``configs/a100x8.yaml``). The resolved config is written next to outputs with ``save_config``.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

DEFAULT_CONFIG = "configs/a100x8.yaml"
T = TypeVar("T")


class ConfigError(ValueError):
    """A config problem the user must fix; the message names the key and the source."""


def field(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    """A dataclass field with help text (shown by ``--help``). Lists/dicts get a default factory."""
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(key: str, value: Any, tp: Any, source: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to type ``tp``; raise ConfigError naming key."""
    tp, optional = _unwrap_optional(tp)
    from_cli = isinstance(value, str) and source == "command line"
    if value is None or (from_cli and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{source}: key '{key}' must not be null")
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError(f"not a boolean: {value!r}")
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"not an integer: {value!r}")
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError(f"not a number: {value!r}")
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError(f"not a string: {value!r}")
            return str(value)
        if origin in (list, tuple):
            (inner, *_) = typing.get_args(tp) or (str,)
            if isinstance(value, str):
                value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"not a list: {value!r}")
            items = [_coerce(f"{key}[{i}]", v, inner, source) for i, v in enumerate(value)]
            return items if origin is list else tuple(items)
        if origin is dict or tp is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError(f"not a mapping: {value!r}")
            return dict(value)
        if origin is typing.Literal:
            choices = typing.get_args(tp)
            if value not in choices:
                raise ValueError(f"{value!r} is not one of {list(choices)}")
            return value
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: bad value for '{key}': {exc}") from None
    return value


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        f.type = hints[f.name]
        out[f.name] = f
    return out


def parse_overrides(args: list[str]) -> tuple[str | None, dict[str, str], bool]:
    """Split argv into (--config path, {key: raw value}, help requested)."""
    path, overrides, want_help = None, {}, False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-h", "--help"):
            want_help = True
        elif arg in ("-v", "--verbose"):
            pass  # read by arena_distill.logs when the package loads (it must act before the libraries load)
        elif arg == "--config":
            if i + 1 >= len(args):
                raise ConfigError("--config needs a path")
            path = args[i + 1]
            i += 1
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif "=" in arg:
            key, value = arg.split("=", 1)
            if key.lstrip("-").strip() == "verbose":
                i += 1
                continue  # as -v (arena_distill.logs); common.verbose=... is dropped like any common key
            overrides[key.lstrip("-").strip()] = value
        else:
            raise ConfigError(f"command line: expected key=value or --config PATH, got {arg!r}")
        i += 1
    return path, overrides, want_help


def read_profile(path: str | os.PathLike) -> dict[str, dict]:
    """Read a profile YAML; every top-level value must be a mapping (a section)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    from .io import StageInputError
    from .readers import read_yaml

    try:  # a syntax error or a non-UTF-8 byte: one line with the place, not a yaml traceback
        data = read_yaml(p, fix="fix the YAML there (or pass --config with another profile)") or {}
    except StageInputError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections")
    for name, section in data.items():
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"{p}: section '{name}' must be a mapping")
    return {k: (v or {}) for k, v in data.items()}


def build_config(cls: type[T], section: str, profile: dict[str, dict], overrides: dict[str, Any],
                 source: str = "config") -> T:
    """Resolve a dataclass from a profile dict and overrides (see module docstring)."""
    fields = _fields(cls)
    values: dict[str, Any] = {}
    for key, value in profile.get("common", {}).items():
        if key in fields:
            values[key] = _coerce(key, value, fields[key].type, f"{source} [common]")
    for key, value in profile.get(section, {}).items():
        if key not in fields:
            raise ConfigError(f"{source} [{section}]: unknown key '{key}' (known: {', '.join(sorted(fields))})")
        values[key] = _coerce(key, value, fields[key].type, f"{source} [{section}]")
    for raw_key, value in overrides.items():
        scope, _, key = raw_key.rpartition(".")
        if scope and scope not in profile and scope != "common":
            raise ConfigError(f"command line: '{raw_key}': no section '{scope}' in {source} "
                              f"(sections: {', '.join(profile)})")
        if scope == "common" and key not in fields:
            continue  # like the YAML's common section: offered to every stage, taken where it fits
        if scope and scope not in ("common", section):
            continue  # meant for another stage of a runbook
        if key not in fields:
            raise ConfigError(f"command line: unknown key '{key}' for stage '{section}' "
                              f"(known: {', '.join(sorted(fields))}); in runbooks scope keys as "
                              f"{section}.{key}=... or common.{key}=...")
        values[key] = _coerce(key, value, fields[key].type, "command line")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source} [{section}]: {exc}") from None


def help_text(cls: type, section: str) -> str:
    lines = [f"Config keys for stage '{section}' (set in the YAML section [{section}] or as key=value):"]
    for name, f in _fields(cls).items():
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "<required>")
        lines.append(f"  {name} = {default!r}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def load_config(cls: type[T], section: str, argv: list[str] | None = None) -> T:
    """Entry point for stages: parse argv, read the profile, resolve, exit 2 on a config error."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        path, overrides, want_help = parse_overrides(argv)
        if want_help:
            print(help_text(cls, section))
            raise SystemExit(0)
        path = path or os.environ.get("CONFIG") or DEFAULT_CONFIG
        cfg = build_config(cls, section, read_profile(path), overrides, source=str(path))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    cfg.__dict__["_profile_path"] = str(path)
    return cfg


def config_dict(cfg: Any) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def save_config(cfg: Any, out_dir: str | os.PathLike, name: str = "config.yaml", **extra: Any) -> Path:
    """Write the resolved config (plus e.g. seed, stage name) next to an output, atomically."""
    from .io import atomic_write_text

    payload = {"stage": type(cfg).__name__, "profile": cfg.__dict__.get("_profile_path"), **extra,
               "config": config_dict(cfg)}
    path = Path(out_dir) / name
    atomic_write_text(path, yaml.safe_dump(payload, sort_keys=False, allow_unicode=True))
    return path


def read_saved_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read back a config saved by ``save_config`` (later stages find e.g. the base model this way)."""
    from .readers import read_yaml

    data = read_yaml(path, fix="re-run the stage that wrote it")
    if not isinstance(data, dict):
        from .readers import FileFormatError

        raise FileFormatError(f"{path}: not a saved config (a YAML mapping) -> re-run the stage that wrote it")
    return data


def _cli(argv: list[str]) -> int:
    """``python -m arena_distill.config --config X get SECTION.KEY [overrides]``: print a resolved value
    (lists space-separated) for shell runbooks."""
    args = [a for a in argv if a != "get"]
    target = next((a for a in args if "=" not in a and a != "--config" and not a.endswith(".yaml")), None)
    if target is None or "." not in target:
        print("usage: python -m arena_distill.config --config X get SECTION.KEY [section.key=value ...]",
              file=sys.stderr)
        return 2
    args.remove(target)
    try:
        path, overrides, _ = parse_overrides(args)
        profile = read_profile(path or os.environ.get("CONFIG") or DEFAULT_CONFIG)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    section, key = target.split(".", 1)
    value = profile.get(section, {}).get(key)
    for raw, v in overrides.items():
        scope, _, k = raw.rpartition(".")
        if k == key and scope in ("", section, "common"):
            value = yaml.safe_load(v) if v.strip().startswith("[") else v
    if value is None and section != "common":
        value = profile.get("common", {}).get(key)
    print(" ".join(map(str, value)) if isinstance(value, list) else ("" if value is None else value))
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli(sys.argv[1:]))
