"""YAML configs with ``_base_`` inheritance and ``--set a.b.c=value`` overrides.

A config file is YAML. ``_base_`` names one file or a list of files (relative to the file that names
them); bases are merged left to right, then the file itself is merged on top. Merging is deep for
mappings; anything else is replaced. A mapping with ``_delete_: true`` replaces the inherited one
instead of merging into it.

Example::

    # configs/synthetic/flatformer_tiny.yaml
    _base_: [../_base_/synthetic.yaml, ../_base_/schedule_cpu.yaml]
    model:
      backbone: {type: FlatFormer, channels: 32, num_heads: 2, num_blocks: 1, window: [8, 8], group_size: 64}

    cfg = load_config("configs/synthetic/flatformer_tiny.yaml", overrides=["train.epochs=3"])
    print(cfg.dump())          # the exact config the run used, as YAML

Every error names the file and the dotted key.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import PointwinError, did_you_mean

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` / ``5E+4`` as floats (PyYAML's YAML 1.1 rules need a dot,
    so ``lr: 1e-3`` would otherwise be the string "1e-3")."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
                              list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with scientific-notation floats (the loader is a SafeLoader subclass)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class ConfigError(PointwinError, ValueError):
    """A config file, key or value is wrong; the message names which."""


#: Top-level sections a pointwin command config may hold. Keys starting with ``_`` are free for the
#: user (YAML anchors, notes); anything else is a typo that would otherwise be ignored silently.
TOP_LEVEL_KEYS = frozenset({"model", "data", "train", "eval", "imports", "class_names", "demo", "export"})


def check_top_level_keys(cfg: Mapping, source: str | Path = "config") -> None:
    """Raise a ConfigError naming every unknown top-level key of a command config (with a did-you-mean)."""
    unknown = [k for k in cfg if not str(k).startswith("_") and k not in TOP_LEVEL_KEYS]
    if unknown:
        parts = [f"{k!r}{did_you_mean(k, TOP_LEVEL_KEYS)}" for k in unknown]
        raise ConfigError(f"{source}: unknown top-level key(s) {', '.join(parts)}; expected some of "
                          f"{sorted(TOP_LEVEL_KEYS)} (keys starting with '_' are free for anchors and notes)",
                          path=source, key=str(unknown[0]))


class Config(dict):
    """A plain nested dict with attribute access for reading (``cfg.model.backbone.type``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r} (keys: {sorted(self)})") from None

    def dump(self) -> str:
        """YAML text that :func:`load_config` reads back to an equal config."""
        return yaml.safe_dump(to_plain(self), sort_keys=False, default_flow_style=None)

    def get_path(self, dotted: str, default: Any = None) -> Any:
        node: Any = self
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node


def to_plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def _wrap(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return Config({k: _wrap(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return [_wrap(v) for v in obj]
    return obj


def merge(base: Mapping, update: Mapping) -> dict:
    """Deep merge ``update`` into a copy of ``base``."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping):
            value = dict(value)
            if value.pop(DELETE_KEY, False) or not isinstance(out.get(key), Mapping):
                out[key] = _strip_delete(value)
            else:
                out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _strip_delete(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip_delete(v) for k, v in value.items() if k != DELETE_KEY}
    return value


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _load_tree(path: Path, stack: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"config inheritance cycle: {chain}")
    data = _read_yaml(path)
    bases = data.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: key '{BASE_KEY}' must be a file name or a list of file names")
    merged: dict = {}
    for base in bases:
        base_path = path.parent / base
        if not base_path.is_file():
            raise ConfigError(f"{path}: '{BASE_KEY}' names {base!r}, which does not exist ({base_path})")
        merged = merge(merged, _load_tree(base_path, (*stack, path)))
    return merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a", "b", "c"], YAML-typed value)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from None
    return parts, value


def _type_ok(old: Any, new: Any) -> bool:
    if old is None or new is None:
        return True
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, (int, float)) and isinstance(new, (int, float)):
        return not (isinstance(old, int) and isinstance(new, float) and not new.is_integer())
    if isinstance(old, (list, tuple)):
        return isinstance(new, (list, tuple))
    return isinstance(new, type(old))


def apply_overrides(cfg: dict, overrides: Iterable[str], source: str = "--set") -> dict:
    """Apply ``key.path=value`` overrides. A key must exist (prefix it with ``+`` to add a new one) and
    the new value must have the old value's type (ints may become floats)."""
    cfg = copy.deepcopy(cfg)
    for text in overrides:
        add = text.startswith("+")
        parts, value = parse_override(text.removeprefix("+"))
        node = cfg
        for i, part in enumerate(parts[:-1]):
            if part not in node:
                if not add:
                    raise ConfigError(f"{source} {text!r}: unknown key {'.'.join(parts[: i + 1])!r} "
                                      f"(known here: {sorted(node)}); use +{text} to add it")
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"{source} {text!r}: {'.'.join(parts[: i + 1])!r} is a "
                                  f"{type(node).__name__}, not a mapping")
        last = parts[-1]
        if last not in node and not add:
            raise ConfigError(f"{source} {text!r}: unknown key {'.'.join(parts)!r} "
                              f"(known here: {sorted(node)}); use +{text} to add it")
        if last in node and not _type_ok(node[last], value):
            raise ConfigError(f"{source} {text!r}: key {'.'.join(parts)!r} expects "
                              f"{type(node[last]).__name__} (now {node[last]!r}), got {type(value).__name__}")
        if isinstance(node.get(last), float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        node[last] = value
    return cfg


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Read a YAML config with its bases and apply ``overrides``."""
    tree = _load_tree(Path(path), ())
    return _wrap(apply_overrides(tree, overrides))


def config_from_dict(data: Mapping, overrides: Iterable[str] = ()) -> Config:
    return _wrap(apply_overrides(to_plain(data), overrides))
