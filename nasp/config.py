"""The one configuration system of the library: typed dataclasses, one loader, one ``--set`` syntax.

Every setting is a field of a dataclass with one default. A run is configured by layering, nanoGPT style:
the dataclass defaults, then a YAML file (read with yaml's safe loader; a key repeated in one mapping is
refused), then ``key.sub=value`` assignments (values parsed as YAML scalars, so ``1e-3`` is a float and
``[a, b]`` a list; a str setting given one character, ``data.sep=,``, takes that character). Every layer goes
through :func:`merge`, which checks types and rejects an unknown key with a one-line :class:`ConfigError`
naming it, the file it came from and the nearest valid keys.

A top-level run config may declare ``__derived__ = {"search.seed": "seed"}``: those nested keys are set from
the named top-level key and refused as input, so that one ``seed`` drives everything and no accepted key is
ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = ["ConfigError", "merge", "parse_assignments", "read_yaml", "load", "config_from_dict", "to_dict", "keys",
           "add_config_arguments", "check_finite", "check_range"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key was rejected; the message is one line naming the key (and the file)."""


# ---- values --------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Text:
    """A ``--set`` value whose reading depends on the setting's type: one character that YAML reads as something
    else (``,`` ``:`` ``[`` are syntax, ``|`` ``>`` empty block scalars, ``#`` ``~`` ``!`` null, ``-`` ``?``
    collections), or text YAML cannot parse. :func:`_convert` takes the text itself for a str
    setting, YAML's reading (``parsed``) for any other, and names the key when YAML could not read it."""

    text: str
    parsed: Any = None
    error: bool = False             # YAML could not read the text

    def __repr__(self) -> str:
        return repr(self.text)


def _union_args(annotation: Any) -> tuple:
    return typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()


def _from_text(value: _Text, annotation: Any, key: str) -> Any:
    """The value of a :class:`_Text` for a setting of type ``annotation`` (see there)."""
    args = _union_args(annotation)
    if annotation is str or set(args) == {str, type(None)}:            # a str setting: the text as written
        return value.text
    if not value.error:
        return value.parsed
    if annotation is Any or str in args:
        return value.text
    raise ConfigError(f"--set {key}: cannot parse the value {value.text!r}")


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """``value`` as ``annotation`` where that is lossless, else a ConfigError naming ``key``."""
    if isinstance(value, _Text):
        value = _from_text(value, annotation, key)
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        if len(args) == 2 and type(None) in args:     # X | None given a value: X's own message ("got nan")
            return _convert(value, next(a for a in args if a is not type(None)), key)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_name(annotation)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        items = [_convert(v, args[min(i, len(args) - 1)] if args else Any, key) for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float:
        if isinstance(value, str):          # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value != value:              # NaN compares false to everything, so no range check would catch it
                raise ConfigError(f"{key}: expected a number, got nan")
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if annotation in (int, str, bool):
        if type(value) is not annotation:
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r} ({type(value).__name__})")
        return value
    return value


def _name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("NoneType", "null")


# ---- value checks shared by the configs' __post_init__ (a ValueError "<field> must ..."; merge names the section) --
def check_finite(obj: Any) -> None:
    """Refuse NaN and +-inf in every float field of the dataclass ``obj`` (no setting means anything by them)."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{f.name} must be a finite number, got {v}")


def check_range(obj: Any, name: str, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = True, nullable: bool = False, hint: str = "") -> None:
    """Refuse field ``name`` of ``obj`` outside [low, high) (``low_open``: (low, ...; ``high_open=False``: ..., high]),
    null unless ``nullable``; the message names the field, the interval and the value."""
    v = getattr(obj, name)
    if v is None and nullable:
        return
    ok = v is not None and (low is None or (v > low if low_open else v >= low)) and \
        (high is None or (v < high if high_open else v <= high))
    if not ok:
        if high is None:
            want = f"{'>' if low_open else '>='} {low:g}"
        else:
            want = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be {want}{' or null' if nullable else ''}{hint}, got {v}")


# ---- merging -------------------------------------------------------------------------------------------------------
def keys(obj: Any, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a (nested) dataclass instance."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += keys(value, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def _unknown(full: str, prefix: str, names: Iterable[str], root: Any) -> ConfigError:
    candidates = [f"{prefix}{n}" for n in names] + (keys(root) if root is not None else [])
    near = difflib.get_close_matches(full, dict.fromkeys(candidates), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else f"; valid keys here: {', '.join(sorted(names))}"
    return ConfigError(f"unknown config key {full!r}{hint}")


def merge(obj: T, values: Mapping[str, Any], prefix: str = "", root: Any = None) -> T:
    """Set ``values`` (a nested mapping) on the dataclass ``obj`` in place, type-checked; returns ``obj``.

    Nested dataclass fields take nested mappings. ``__post_init__`` runs again after the merge, so each config's
    own value checks apply; their ValueErrors come back as a ConfigError naming the section."""
    root = obj if root is None else root
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'the top level'}: expected a mapping of settings, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    derived = getattr(type(root), "__derived__", {})
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise _unknown(full, prefix, names, root)
        if full in derived:
            raise ConfigError(f"{full!r} is not a setting of its own: it is set from {derived[full]!r}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            merge(current, value, f"{full}.", root)
        else:
            setattr(obj, key, _convert(value, hints[key], full))
    if hasattr(obj, "__post_init__"):
        try:
            obj.__post_init__()
        except (TypeError, ValueError) as e:
            msg = str(e)
            if isinstance(e, ConfigError) or not prefix:
                raise ConfigError(msg) from None
            if msg.split(" ", 1)[0] in names:        # "lr must be > 0" -> "train.lr must be > 0"
                raise ConfigError(f"{prefix}{msg}") from None
            raise ConfigError(f"{prefix.rstrip('.')}: {msg}") from None
    return obj


def _read_value(raw: str) -> Any:
    """A ``--set`` value read as YAML, or a :class:`_Text` where the setting's type decides (one character YAML
    reads as something else, or text YAML cannot parse)."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return _Text(raw, error=True)
    if len(raw) == 1 and not isinstance(value, (int, float)) and value != raw:       # a digit stays a number
        return _Text(raw, value)
    return value


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` -> ``{"a": {"b": 1}, "c": ["x", "y"]}`` (values as YAML scalars). A one-character
    value that YAML reads as something else (``data.sep=,`` ``;`` ``|`` ``:`` ``#``, a tab, a space), or text YAML
    cannot parse, is read by the setting's type when merged: the text itself for a str setting (``null`` still
    sets None; ``~`` is the character), else YAML's reading, and a one-line error naming the key when there is none."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        value = _read_value(raw)
        cursor = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            nxt = cursor.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: {p!r} is a value, not a section")
            cursor = nxt
        cursor[parts[-1]] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, except that a key given twice in one mapping is an error (safe_load keeps the last one
    silently, so ``search:`` written twice would drop the first section's settings)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} repeats line {seen[key]}",
                                                        key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (yaml's safe loader; a key repeated in one mapping is refused); errors name
    the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}:{line} not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return values


def load(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = (),
         values: Mapping[str, Any] | None = None) -> T:
    """``cls()`` <- ``values`` <- the YAML file at ``path`` <- the ``key=value`` overrides."""
    cfg = cls()
    if values:
        merge(cfg, values)
    if path is not None:
        try:
            merge(cfg, read_yaml(path))
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    overrides = list(overrides)
    if overrides:
        try:
            merge(cfg, parse_assignments(overrides))
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith("--set") else f"--set: {msg}") from None
    return cfg


def config_from_dict(cls: type[T], d: Mapping[str, Any]) -> T:
    """``cls`` with ``d`` merged over its defaults (unknown keys and wrong types raise :class:`ConfigError`
    naming the class)."""
    try:
        return merge(cls(), d)
    except ConfigError as e:
        raise ConfigError(f"{cls.__name__}: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a (nested) dataclass (tuples as lists), without its ``__derived__`` keys, so
    that it loads back through :func:`load`."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    out = plain(dataclasses.asdict(obj))
    for dotted in getattr(type(obj), "__derived__", {}):
        *sections, leaf = dotted.split(".")
        node = out
        for s in sections:
            node = node.get(s, {})
        node.pop(leaf, None)
    return out


def add_config_arguments(parser) -> None:
    """The ``--config FILE`` and ``--set KEY=VALUE [KEY=VALUE ...]`` options shared by every command line."""
    parser.add_argument("--config", help="YAML file layered over the defaults (read with yaml.safe_load)")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="overrides, values parsed as YAML, e.g. --set search.epochs=3 search.a_lr=1e-3 "
                             "(repeatable)")
