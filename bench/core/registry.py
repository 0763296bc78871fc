"""One small generic registry, used for methods, tasks, backbones and executors.

A registry maps a name to a plugin (a class, or an object for data-like plugins such as
backbones). Registration is a decorator; duplicate names and plugins of the wrong type are
rejected at import time; looking up an unknown name raises an error that lists every valid
name. Third-party packages add plugins through an entry-point group
(``prefix_bench.<kind>``): each entry point names a module (or ``module:attr``) whose import
registers its plugins with the usual decorator.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

ENTRY_POINT_PREFIX = "prefix_bench."


class RegistryError(ValueError):
    """Raised for duplicate names, wrong plugin types and unknown names."""


class UnknownNameError(RegistryError, KeyError):
    """An unknown name was looked up; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class Registry(Generic[T]):
    """Name -> plugin map with decorator registration and entry-point discovery."""

    def __init__(self, kind: str, base: type, *, instances: bool = False) -> None:
        self.kind = kind
        self.base = base
        self.instances = instances  # True: plugins are objects of `base`; else subclasses
        self._items: dict[str, T] = {}
        self._entry_points_loaded = False
        self.broken: list[str] = []  # entry points that failed to load: named, skipped

    # -- registration -------------------------------------------------------------
    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` on a class (or call it on an object)."""

        def deco(item: T) -> T:
            self.add(name, item)
            return item

        return deco

    def add(self, name: str, item: T) -> None:
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.kind} name must be a non-empty string, got {name!r}")
        ok = isinstance(item, self.base) if self.instances else (
            isinstance(item, type) and issubclass(item, self.base)
        )
        if not ok:
            what = "an instance" if self.instances else "a subclass"
            raise RegistryError(
                f"cannot register {item!r} as {self.kind} {name!r}: it must be {what} of "
                f"{self.base.__module__}.{self.base.__qualname__}"
            )
        if name in self._items and self._items[name] is not item:
            raise RegistryError(
                f"{self.kind} {name!r} is already registered (by {self._items[name]!r})"
            )
        self._items[name] = item

    # -- lookup ---------------------------------------------------------------------
    def get(self, name: str) -> T:
        self._load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: object) -> str:
        valid = self.names()
        hint = difflib.get_close_matches(str(name), valid, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"unknown {self.kind} {name!r}{did_you_mean}; valid {self.kind}s: {', '.join(valid)}"

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self._items[name]

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._items

    def __len__(self) -> int:
        return len(self.names())

    # -- plugins from other distributions --------------------------------------------
    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        group = ENTRY_POINT_PREFIX + self.kind + "s"
        for ep in entry_points(group=group):
            # Importing the module runs its @register decorators. An entry point that
            # names an object which is not yet registered is registered under ep.name.
            # One broken installed package must not break every command: it is named and skipped.
            try:
                obj = ep.load()
                if not isinstance(obj, type(importlib)) and obj not in self._items.values():
                    self.add(ep.name, obj)
            except Exception as err:  # anything its import raises
                message = (f"skipping the {group} entry point {ep.name!r} ({ep.value}): "
                           f"{type(err).__name__}: {err}")
                self.broken.append(message)
                print(f"prefix-bench: warning: {message}", file=sys.stderr)


def is_plugin_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def import_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """Import the plugins a user names explicitly: a module (``--plugin my_pkg.my_method``)
    or a Python file (``--plugin ./my_method.py``); their import registers their plugins.
    Only what is named here or declared as an entry point is ever imported: nothing is
    loaded from paths found in data or configs."""
    for spec in modules:
        try:
            if is_plugin_path(spec):
                _import_file(Path(spec))
            else:
                importlib.import_module(spec)
        except Exception as err:  # a missing file or module, or anything its import raised
            raise RegistryError(f"plugin {spec!r} could not be imported: {type(err).__name__}: {err}") from None


def _import_file(path: Path) -> None:
    """Import a plugin file once per process, as a module named after its resolved path."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ImportError(f"no such file {path}")
    name = "prefix_bench_plugin_" + "".join(c if c.isalnum() else "_" for c in str(path.with_suffix("")))
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
