"""Configuration of ``suitkit serve`` from flags, the environment and a TOML file (issue #13).

Every option of ``serve`` has a key of the same name (the first long flag, dashes as
underscores: ``--max-upload-mib`` is ``max_upload_mib``, ``--db`` is ``db``) and an environment
variable ``SUITKIT_<KEY>`` (``SUITKIT_MAX_UPLOAD_MIB``). The value in force is, first found:
the flag, the environment variable, the key in the file of ``--config`` (or
``SUITKIT_CONFIG``), the default. ``resolve`` builds the result once, as a mapping the CLI
turns into its frozen options dataclass; ``render`` shows it as TOML (that a file can hold
again) with each value's source, secrets redacted.

A file is a flat TOML table of those keys. An unknown key, a value of the wrong type and a
file that is not TOML are each one line naming the key (or the line) and the file, exit 2:
a typo in a key must not silently leave a default in force. Environment values are text,
converted as the flag's would be; a list (``author_anchor``) is separated by commas there.

Not here: validating the values' ranges (``serve`` does, for every source alike).
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "Key", "Resolved", "keys_of", "render", "resolve"]

ENV_PREFIX = "SUITKIT_"
_MAX_FILE = 1024 * 1024


class ConfigError(Exception):
    """A configuration source holds something unusable: one line naming the key and where."""


@dataclass(frozen=True, slots=True)
class Key:
    """One option of the command: its key, parameter name, flag, kind and default."""

    key: str
    name: str
    flag: str
    kind: str  # "int", "float", "bool", "str", "path", "paths"
    default: Any

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


@dataclass(frozen=True, slots=True)
class Resolved:
    """The value in force for each parameter name, and where it came from (``flag``,
    ``env SUITKIT_X``, ``file PATH``, ``default``)."""

    values: Mapping[str, Any]
    sources: Mapping[str, str]


def _kind(annotation: Any) -> str:
    """The kind of a dataclass field's type (``int | None`` is an int that may be unset)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (list, tuple):
        return "paths"
    if args and len(args) == 1:
        return _kind(args[0])
    for kind, name in ((bool, "bool"), (int, "int"), (float, "float"), (Path, "path")):
        if annotation is kind:
            return name
    return "str"


def keys_of(command: Any, options: type[Any], *, skip: frozenset[str] = frozenset()
            ) -> list[Key]:
    """The keys of a Typer/click ``command``'s options (but the parameter names in
    ``skip``), each of the kind of the field of the same name in the dataclass ``options``."""
    hints = typing.get_type_hints(options)
    keys = []
    for param in command.params:
        name = param.name
        if name is None or name in skip or name == "help" or name not in hints:
            continue
        flag = next((o for o in param.opts if o.startswith("--")), param.opts[0])
        key = flag.lstrip("-").replace("-", "_")
        default = param.default() if callable(param.default) else param.default
        keys.append(Key(key, name, flag, _kind(hints[name]), default))
    return keys


_INT = re.compile(r"[+-]?[0-9]+")


def _from_text(key: Key, text: str, where: str) -> Any:
    """An environment variable's text as a value of ``key``'s kind."""
    text = text.strip()
    try:
        if key.kind == "int":
            if not _INT.fullmatch(text):
                raise ValueError
            return int(text)
        if key.kind == "float":
            value = float(text)
            if not text.isascii() or not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        raise ConfigError(f"{where}: expected {_NAMES[key.kind]}, got {text[:80]!r}") from None
    if key.kind == "bool":
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {text[:80]!r}")
    if key.kind == "paths":
        return [Path(part.strip()) for part in text.split(",") if part.strip()]
    if key.kind == "path":
        return Path(text) if text else None
    return text or None


_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false",
          "str": "a string", "path": "a path (a string)", "paths": "a list of paths (strings)"}


def _from_toml(key: Key, value: Any, where: str) -> Any:
    """A TOML value checked against ``key``'s kind (a bool is no integer)."""
    kind = key.kind
    ok = (isinstance(value, int) and not isinstance(value, bool) if kind == "int"
          else isinstance(value, int | float) and not isinstance(value, bool) if kind == "float"
          else isinstance(value, bool) if kind == "bool"
          else isinstance(value, list) and all(isinstance(v, str) for v in value)
          if kind == "paths"
          else isinstance(value, str))
    if not ok:
        raise ConfigError(f"{where}: expected {_NAMES[kind]}, got "
                          f"{type(value).__name__} {str(value)[:60]!r}")
    if kind == "float":
        return float(value)
    if kind == "paths":
        return [Path(v) for v in value]
    if kind == "path":
        return Path(value)
    return value


def read_file(path: Path, keys: list[Key]) -> dict[str, Any]:
    """The keys a TOML file sets, by parameter name, checked.

    Raises:
        ConfigError: unreadable, not TOML, an unknown key, a value of the wrong type.
    """
    try:
        with path.open("rb") as file:
            raw = file.read(_MAX_FILE + 1)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    if len(raw) > _MAX_FILE:
        raise ConfigError(f"config file {path} is larger than {_MAX_FILE} bytes")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    by_key = {k.key: k for k in keys}
    values: dict[str, Any] = {}
    for name, value in doc.items():
        key = by_key.get(name)
        if key is None:
            shown = json.dumps(name)[:80]
            raise ConfigError(f"config file {path}: unknown key {shown} (known keys: "
                              f"{', '.join(sorted(by_key))})")
        values[key.name] = _from_toml(key, value, f"config file {path}: key {name}")
    return values


def resolve(keys: list[Key], given: Mapping[str, Any], from_flag: frozenset[str],
            config_file: Path | None, environ: Mapping[str, str] | None = None) -> Resolved:
    """The value of each key: flag (parameter names in ``from_flag``, values in ``given``) >
    ``SUITKIT_<KEY>`` > ``config_file`` > default.

    Raises:
        ConfigError: a source holds something unusable (one line naming key and source).
    """
    environ = os.environ if environ is None else environ
    in_file = read_file(config_file, keys) if config_file is not None else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in keys:
        if key.name in from_flag:
            values[key.name], sources[key.name] = given[key.name], f"flag {key.flag}"
        elif key.env in environ:
            values[key.name] = _from_text(key, environ[key.env],
                                          f"environment variable {key.env}")
            sources[key.name] = f"env {key.env}"
        elif key.name in in_file:
            values[key.name], sources[key.name] = in_file[key.name], f"file {config_file}"
        else:
            values[key.name], sources[key.name] = given.get(key.name, key.default), "default"
        if key.kind == "paths" and values[key.name] is not None:
            values[key.name] = [Path(p) for p in values[key.name]]
        elif key.kind == "path" and isinstance(values[key.name], str):
            values[key.name] = Path(values[key.name])
    return Resolved(values, sources)


_URL_PASSWORD = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^:/@]*):[^@/]*@")


def redact(value: str) -> str:
    """A URL's password as ``***`` (``postgresql://u:***@host/db``)."""
    return _URL_PASSWORD.sub(r"\1:***@", value)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=True)  # a TOML basic string


def as_json(keys: list[Key], resolved: Resolved) -> dict[str, dict[str, Any]]:
    """The configuration in force as ``{key: {"value", "source"}}`` (``value`` null when
    unset), secrets redacted as in ``render``."""
    doc: dict[str, dict[str, Any]] = {}
    for key in keys:
        value = resolved.values[key.name]
        if isinstance(value, Path):
            value = str(value)
        doc[key.key] = {"value": redact(value) if isinstance(value, str) else value,
                        "source": resolved.sources[key.name]}
    return doc


def render(keys: list[Key], resolved: Resolved) -> str:
    """The configuration in force as TOML, each line with its source as a comment; secrets
    (the password of any URL, a database's first) redacted; an unset option as a comment."""
    lines = []
    for key in keys:
        value = resolved.values[key.name]
        source = resolved.sources[key.name]
        if value is None or value == []:
            lines.append(f"# {key.key} = (not set)  # {source}")
            continue
        # a URL's password is a secret whatever the key (--public-url https://u:p@host too)
        shown = _toml(redact(str(value)) if isinstance(value, str) else value)
        lines.append(f"{key.key} = {shown}  # {source}")
    return "\n".join(lines)
