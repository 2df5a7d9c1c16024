"""Stage configs: a dataclass per stage, filled from YAML then `key=value` overrides.

Unknown keys and wrong types are rejected with the dotted key named, so a typo never
silently trains with a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from zhongjing.errors import ConfigError, RangeError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp` (after YAML parsing) and return it, converted where lossless."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"config key '{key}': expected one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple):
        (item_tp, *_) = get_args(tp) or (Any,)
        if isinstance(value, str):  # allow `key=a,b` on the command line
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        _, vt = get_args(tp) or (Any, Any)
        return {k: _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '5e-5' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"config{' ' + prefix.rstrip('.') if prefix else ''}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' (valid keys: {', '.join(sorted(fields))})"
        )
    hints = _hints(cls)
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config{' ' + prefix.rstrip('.') if prefix else ''}: {e}") from None


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.load(raw, Loader=_StrictLoader) if raw != "" else ""  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': the value is not valid YAML ({_yaml_error(e)})") from None
    return key.split("."), value


def _set_dotted(data: dict, path: list[str], value: Any) -> None:
    for p in path[:-1]:
        nxt = data.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{'.'.join(path)}': '{p}' is not a section")
        data = nxt
    data[path[-1]] = value


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping: plain YAML keeps the last silently, so a setting
    written twice (an edited copy of a config) would train with whichever came second."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then a key: overriding on purpose
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
                seen[key] = key_node.start_mark
            except TypeError:  # an unhashable key: the base class reports it
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given again (first at line {first.line + 1}, column {first.column + 1})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _yaml_error(e: yaml.YAMLError) -> str:
    """One line: what is wrong and where (YAML's own text puts the line on a later line of the message)."""
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    if getattr(e, "context", None) and not str(what).startswith("key "):
        what = f"{e.context}: {what}"
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(what)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a YAML config file") from None
    except PermissionError:
        raise ConfigError(f"{path}: not readable (permission denied)") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({_yaml_error(e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = (), section: str | None = None) -> T:
    """YAML file (optionally one top-level `section` of it) + `a.b=value` overrides → `cls`."""
    data: dict = {}
    if path:
        data = read_yaml(path)
        if section is not None:
            data = data.get(section) or {}
    for item in overrides:
        keys, value = parse_override(item)
        _set_dotted(data, keys, value)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def describe(cls, prefix: str = "", default: Any = None) -> list[str]:
    """One line per key with type and default, for `--help`.

    Defaults come from an instance, so a nested section's stage-specific default (a
    `default_factory` that sets other values than the section's class) is what is shown.
    """
    lines = []
    hints = _hints(cls)
    if default is None:
        try:
            default = cls()
        except TypeError:  # required fields: fall back to per-field defaults
            default = None
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if default is not None:
            value = getattr(default, f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
        else:
            value = "(required)"
        if dataclasses.is_dataclass(tp):
            lines += describe(tp, prefix + f.name + ".", value if dataclasses.is_dataclass(value) else None)
            continue
        lines.append(f"  {prefix}{f.name} = {value!r}  [{_type_name(tp)}]")
    return lines


def at_least(cfg: Any, minimum: int, *names: str) -> None:
    """For a config's __post_init__: each named field must be ≥ minimum (e.g. `limit`, where 0 means all).
    A RangeError, so that `from_dict` names where the config sits (`config testsets[0]: limit must be ≥ 0`)."""
    for name in names:
        if getattr(cfg, name) < minimum:
            raise RangeError(f"{name} must be ≥ {minimum}, got {getattr(cfg, name)}")


def within(cfg: Any, lo: float, hi: float, *names: str) -> None:
    """For a config's __post_init__: each named number must lie in [lo, hi] (a RangeError, like at_least)."""
    for name in names:
        if not lo <= getattr(cfg, name) <= hi:  # (NaN fails too)
            span = f"≥ {_bound(lo)}" if hi == float("inf") else f"in [{_bound(lo)}, {_bound(hi)}]"
            raise RangeError(f"{name} must be {span}, got {getattr(cfg, name)}")


def positive(cfg: Any, *names: str) -> None:
    """For a config's __post_init__: each named number must be finite and > 0 (a clip range, a step size)."""
    for name in names:
        if not 0 < getattr(cfg, name) < float("inf"):  # (NaN fails too)
            raise RangeError(f"{name} must be > 0, got {getattr(cfg, name)}")


def _bound(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)  # an int bound as an int: 4294967295, not 4.29497e+09


def finite(cfg: Any, *names: str) -> None:
    """For a config's __post_init__: each named number must be finite (a weight may be negative, never NaN or inf:
    they train on NaN rewards and write the model)."""
    for name in names:
        if not math.isfinite(getattr(cfg, name)):
            raise RangeError(f"{name} must be a finite number, got {getattr(cfg, name)}")


def non_negative(text: str) -> float:
    """argparse type of a finite number ≥ 0 (a tie margin, a threshold): float() alone takes nan, inf and -1."""
    return _number(text, float, False)


def positive_number(text: str) -> float:
    """argparse type of a finite number > 0 (hours, a penalty factor)."""
    return _number(text, float, True)


def positive_int(text: str) -> int:
    """argparse type of a whole number ≥ 1 (threads, a count)."""
    return _number(text, int, True)


def non_negative_int(text: str) -> int:
    """argparse type of a whole number ≥ 0 (threads where 0 means torch's default)."""
    return _number(text, int, False)


def _number(text: str, kind: type, positive: bool):
    what = (f"a whole number ≥ {int(positive)}" if kind is int
            else "a finite number > 0" if positive else "a finite number ≥ 0")
    try:
        x = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not (0 < x if positive else 0 <= x) or not x < float("inf"):  # (NaN fails both)
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return x


def port_number(text: str) -> int:
    """argparse type of a TCP port: a clear usage error instead of the socket's OverflowError traceback."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number (0-65535), got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (0-65535), got {port}")
    return port


def stage_parser(prog: str, cls, description: str = "") -> argparse.ArgumentParser:
    """Parser shared by every stage: `--config FILE` plus `key=value` overrides."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="config keys (override with key=value):\n" + "\n".join(describe(cls)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML file with the stage's keys")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a config key (dotted for nesting)")
    return p


def parse_stage_args(prog: str, cls: type[T], argv: list[str], description: str = "") -> T:
    args = stage_parser(prog, cls, description).parse_args(argv)
    return load_config(cls, args.config, args.overrides)
