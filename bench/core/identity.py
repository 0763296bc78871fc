"""What a cell's result depends on beyond its options: the code and declarations of its
method and task, and the harness code that computes losses and predictions.

``bench.run.matrix`` hashes this into the cell id, so after a change to a prompt, label words,
a loss or a method's code the same matrix point gets a new id: its old rows are stale,
``run`` re-runs them and tables leave them out, instead of skipping them as finished or
averaging them with new ones.

- method: its ``version`` and a digest of its source: the module that defines it and,
  transitively, the modules of the plugin packages it uses (for prefix methods that takes
  in ``methods/kv_prefix.py`` and ``methods/base.py``);
- task: its ``version``, a digest of what it declares (prompt, label names and words,
  metrics, splits), the same source digest (``tasks/glue.py``, ``tasks/base.py``,
  ``tasks/metrics.py`` ...) and what its ``depends_on`` names (an lm-eval task: the task
  it trains through, its local YAML and rows);
- harness: a digest of the modules that compute losses, predictions, the optimiser step and
  the precision they run in, and the training data drawn (held-out slice, subsample).

The data itself is not here: fingerprinting it means reading it, which expanding a suite
must not do. ``run`` compares each row's ``data_fingerprint`` with the data it has just
read instead (``bench.run.staleness``).

Digests are of file bytes, so an edited comment re-runs cells too: a false alarm costs a
re-run, a missed change costs a wrong table.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

# Packages whose modules are plugin code; a third-party plugin's own package is added to them.
PLUGIN_PACKAGES = ("methods", "tasks")
# The code between a cell's config and its numbers that no plugin owns.
# bench.run.data: which training rows are held out and drawn (a change there moves every number)
HARNESS_MODULES = ("bench.run.trainer", "bench.run.formulations", "bench.run.label_head", "bench.run.precision",
                   "bench.run.data")
# What a task declares; a change to any of these changes what the model is asked and scored on.
TASK_DECLARATION = ("name", "kind", "version", "label_names", "label_words", "prompt", "metrics",
                    "main_metric", "train_split", "eval_split")


def _digest(parts: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in parts:
        h.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()[:16]


def _module_source(module: ModuleType) -> bytes:
    path = getattr(module, "__file__", None)
    if path and path.endswith(".py"):
        return Path(path).read_bytes()
    try:
        return inspect.getsource(module).encode()
    except (OSError, TypeError):  # built in memory: nothing to read, its name stands alone
        return b""


def _uses(module: ModuleType) -> set[ModuleType]:
    """Modules whose classes, functions or selves ``module`` holds at top level."""
    out = set()
    for value in vars(module).values():
        if isinstance(value, ModuleType):
            out.add(value)
        elif inspect.isclass(value) or inspect.isfunction(value):
            home = sys.modules.get(getattr(value, "__module__", "") or "")
            if home is not None:
                out.add(home)
    return out


def source_modules(obj: Any) -> list[ModuleType]:
    """The module defining ``obj`` (a class, or an instance's class) and, transitively, the
    modules of the plugin packages it uses. A package's ``__init__`` is left out: it only
    registers plugins, and following it would pull in every sibling plugin."""
    cls = obj if inspect.isclass(obj) else type(obj)
    root = sys.modules[cls.__module__]
    packages = {*PLUGIN_PACKAGES, root.__name__.split(".")[0]}
    seen: dict[str, ModuleType] = {}
    stack = [root]
    while stack:
        module = stack.pop()
        if module.__name__ in seen:
            continue
        seen[module.__name__] = module
        for dep in _uses(module):
            if (dep.__name__.split(".")[0] in packages and not hasattr(dep, "__path__")
                    and dep.__name__ not in seen):
                stack.append(dep)
    return [seen[name] for name in sorted(seen)]


def source_digest(obj: Any) -> str:
    """sha256 (16 hex digits) over the source of ``source_modules(obj)``."""
    return _digest([(m.__name__, _module_source(m)) for m in source_modules(obj)])


def harness_digest() -> str:
    return _digest([(name, _module_source(importlib.import_module(name))) for name in HARNESS_MODULES])


def task_declaration(task: Any) -> str:
    """Digest of what the task declares (``TASK_DECLARATION``), read from the instance now."""
    declared = {key: getattr(task, key, None) for key in TASK_DECLARATION}
    declared["metrics"] = [(m.name, m.higher_is_better) for m in declared["metrics"] or ()]
    blob = json.dumps(declared, sort_keys=True, default=repr).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def method_identity(method_cls: type) -> dict[str, str]:
    return {"version": str(method_cls.version), "source": source_digest(method_cls)}


def task_identity(task: Any) -> dict[str, str]:
    out = {"version": str(task.version), "declaration": task_declaration(task), "source": source_digest(task)}
    deps = task.depends_on() if hasattr(task, "depends_on") else ()
    if deps:  # e.g. an lm-eval task: the task it trains through, its local YAML and rows
        out["depends_on"] = _digest([
            (str(d.name), d.read_bytes()) if isinstance(d, Path)
            else (str(d.name), json.dumps(task_identity(d), sort_keys=True).encode()) for d in deps])
    return out


def cell_identity(method_cls: type, task: Any) -> dict[str, Any]:
    """Everything besides the options that decides a cell's result (see the module doc)."""
    return {"method": method_identity(method_cls), "task": task_identity(task), "harness": harness_digest()}


def identity_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two identities, in words: ["method source", "task version 1 -> 2"]."""
    if not old:
        return ["recorded before cell ids covered code (schema 1)"]
    out = []
    for part in sorted(set(old) | set(new)):
        a, b = old.get(part), new.get(part)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{part} {key}" + (f" {a.get(key)} -> {b.get(key)}" if key == "version" else "")
                    for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
        else:
            out.append(part)
    return out
