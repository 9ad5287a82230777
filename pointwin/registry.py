"""Registries let configs name classes (``type: DSVT``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .config import ConfigError, to_plain


class Registry:
    """A name -> class (or function) table with a builder.

    Example::

        BACKBONES = Registry("backbone")

        @BACKBONES.register()
        class FlatFormer(nn.Module): ...

        BACKBONES.build({"type": "FlatFormer", "channels": 64}, where="model.backbone")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable] = {}

    def register(self, name: str | None = None) -> Callable:
        def deco(obj: Callable) -> Callable:
            key = name or obj.__name__
            if key in self._items and self._items[key] is not obj:
                raise KeyError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return deco

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str, where: str = "") -> Callable:
        if name not in self._items:
            at = f" at {where}" if where else ""
            raise ConfigError(f"unknown {self.kind} type {name!r}{at}; valid names: {', '.join(self.names())}")
        return self._items[name]

    def build(self, cfg: Mapping[str, Any], where: str = "", **extra: Any) -> Any:
        """Instantiate ``cfg['type']`` with the other keys (plus ``extra``) as keyword arguments.

        Unknown keyword arguments raise a ConfigError naming the config key and the valid ones.
        """
        if not isinstance(cfg, Mapping) or "type" not in cfg:
            raise ConfigError(f"{where or self.kind}: expected a mapping with a 'type' key, got {cfg!r}")
        kwargs = {k: v for k, v in to_plain(cfg).items() if k != "type"}
        kwargs.update(extra)
        target = self.get(cfg["type"], where)
        sig = inspect.signature(target)
        params = sig.parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            unknown = sorted(set(kwargs) - set(params))
            if unknown:
                valid = [p for p in params if p != "self"]
                raise ConfigError(f"{where or self.kind}: {cfg['type']} has no parameter(s) {unknown}; "
                                  f"valid: {valid}")
        missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in kwargs]
        if missing:
            raise ConfigError(f"{where or self.kind}: {cfg['type']} needs parameter(s) {missing}")
        return target(**kwargs)
