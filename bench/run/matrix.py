"""Suites of experiments from a small TOML file, expanded into cells.

File layout (every key is checked; unknown keys are errors)::

    [defaults]                      # TrainConfig fields for every suite in the file
    train_steps = 200

    [suites.NAME]
    description = "..."
    methods = ["prefix_tuning", "lora"]
    tasks = ["glue/sst2"]
    backbones = ["minilm-l6"]
    prefix_lengths = [5, 20]        # methods that use no prefix get one cell, prefix_length = null
    seeds = [0, 1]
    train = { train_steps = 300 }   # TrainConfig overrides for this suite
    backbone_overrides.smollm2-135m = { batch_size = 16 }    # TrainConfig, per backbone
    task_overrides."glue/rte" = { max_length = 128 }         # TrainConfig, per task
    task_args."lm_eval/arc_easy" = { num_fewshot = 5, limit = 200 }   # the task's own options
    lm_eval_include_path = "my_tasks"   # lm-eval task YAMLs (relative to this file): lm_eval/<their task>
    overrides.lora = { lr = 1e-3 }                            # TrainConfig, per method
    method_args.prefix_tuning = { projection = false }        # the method's own Config
    exclude = [{ method = "lora", backbone = "smollm2-135m" }]
    search = { lr = [1e-4, 3e-4, 1e-3] }                     # learning-rate search (seed: the first seed)
    search = { lr = [...], prefix_length = 20 }              # trials at one length; its choice serves all
    search = { lr = [...], widen = "one_se" }                # a step beyond an edge choice (widen_steps = 1)
    search_overrides.lora = { lr = [1e-4, 1e-3, 1e-2] }      # a method's own grid, of the same length
    executor = { name = "slurm", partition = "gpu", gpus_per_cell = 1 }   # where cells run (not in the id)
    tracker = { name = "mlflow", uri = "file:///abs/mlruns" }              # run --tracker's default (not in the id)

Training options resolve in this order, later winning: [defaults], the suite's ``train``,
``backbone_overrides``, ``task_overrides``, ``overrides`` (per method).
``tasks`` may name any lm-evaluation-harness task as ``lm_eval/<harness task>``, lm-eval's own
or one of the ``lm_eval_include_path`` folder (``--lm-eval-include-path`` on the command line
wins); ``task_args`` sets its options (tasks/lm_eval_any.py ``OPTIONS``: train_source,
train_split, num_fewshot, limit, main_metric). An unknown name fails here, naming close ones.
A suite may instead be a union of others: ``include = ["suite-a", "suite-b"]`` (with
``description``, ``executor`` and ``tracker`` only); its cells are theirs, labelled with its name.
``expand`` is a pure function: the same file and the same code give the same cells with
the same ids. An id covers the resolved options and the code identity of the cell's method
and task (``bench.core.identity``), so editing either makes new cells, never reuses old rows.

A suite with ``search`` chooses each (method, task, backbone, prefix length) group's learning
rate (with ``search.prefix_length``, each (method, task, backbone) group's, tried at that length): one *trial* cell per grid value at the search seed, scored on the held-out slice of the
training split (``holdout`` > 0 is required), then one *final* cell per seed whose id covers the
grid instead of an lr; the driver runs the trials first and hands each final cell the value its
trials chose (bench/run/search.py). Every method gets as many trials as the suite's grid has
values, so no method wins by a larger budget. With ``search.widen`` a choice at an edge of its
grid earns one more trial a step beyond it (the grid's own pattern continued: 1e-4 below
[3e-4, 1e-3, 3e-3], 1e-2 above), by a rule fixed before any trial runs (bench/run/search.py);
that trial is derived from the final cell (``Cell.trial_at``), so a resumed run finds it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.core.config import LIMITS, ConfigError, TrainConfig, at_most, check_fields, unknown_keys
from bench.core.identity import cell_identity
from bench.core.safe_names import check_name
from bench.core.suite_file import DEFAULT_SUITES, load_toml, suite_names  # noqa: F401  (callers' names)
from bench.run import precision
from bench.run.backbones import BACKBONES
from bench.run.search_spec import check_searchable, search_grids, search_length, widen_rule
from bench.run.searched_lrs import searched_lr
from methods import METHODS
from tasks import task_for
from tasks.lm_eval_any import cell_args, parse_options

SUITE_KEYS = ("description", "methods", "tasks", "backbones", "prefix_lengths", "seeds", "train",
              "backbone_overrides", "task_overrides", "overrides", "method_args", "exclude", "backbone_source", "executor",
              "search", "search_overrides", "task_args", "lm_eval_include_path", "tracker")
COMPOSITE_KEYS = ("description", "include", "executor", "tracker")
AXES = ("methods", "tasks", "backbones", "prefix_lengths", "seeds")
EXCLUDE_KEYS = ("method", "task", "backbone", "prefix_length", "seed")
# suites named claims-* or standard* make claims (REPRODUCTION.md): they must score as the papers do
CLAIMS_PREFIXES = ("claims", "standard")
# What a cell stored before an option existed ran with (its train table lacks the key): the
# behaviour then, not today's default. Every cell expanded now stores every option.
LEGACY_TRAIN = {"precision": "fp32", "compile": False, "bucket_window": 0}
# Options that are off by default and join a cell's train table only when set: every cell
# planned before they existed keeps its id, so a finished results folder is not re-run.
OPTIONAL_TRAIN = {"holdout": 0.0, "patience": 0, "eval_order": "given"}
TRIAL = "trial"  # Cell.role of a learning-rate search's trial cell


@dataclass(frozen=True)
class Cell:
    """One fully resolved experiment: everything that can change its result."""

    suite: str
    method: str
    task: str
    backbone: str
    prefix_length: int | None
    seed: int
    train: dict[str, Any]
    method_args: dict[str, Any]
    backbone_source: str = "auto"
    # method and task versions and source digests (bench/core/identity.py): a code change is a new cell
    identity: dict[str, Any] = dataclasses.field(default_factory=dict)
    # torch CPU threads and deterministic algorithms change the bytes of a result (a sum split
    # over 1 or 2 threads rounds differently), so they are in the id; the runner pins both
    # from the executor before it runs the cells (threads = 0: not pinned yet), and resolves
    # train["precision"] = "auto" then too
    threads: int = 0
    deterministic: bool = False
    # the weights backbone_source resolves to on the machine that runs it (backbones.weights_of)
    weights: str = ""
    # "trial": a learning-rate search's trial, scored on the held-out slice only; "": any other
    role: str = ""
    # a final cell's search, {"lr": [grid], "seed": the trials' seed}: its id covers the grid
    search: dict[str, Any] = dataclasses.field(default_factory=dict)
    # what the driver chose from the trials' rows (bench/run/search.py: grid, scores, chosen,
    # trials, cost_s). Outside the id: a resumed run must find the row it planned whatever its
    # trials chose. Cells reach workers pickled whole (local, subprocess, Ray, Slurm), so it
    # travels with them; a cell rebuilt from its resolved() form must be given it back.
    selection: dict[str, Any] = dataclasses.field(default_factory=dict)
    # the task's own options (a suite's task_args, e.g. an lm_eval/ task's num_fewshot) and,
    # for a task from the suite's lm_eval_include_path, that folder (tasks/lm_eval_any.py)
    task_args: dict[str, Any] = dataclasses.field(default_factory=dict)

    def resolved(self) -> dict[str, Any]:
        """What the id hashes (the suite's name is a label, not part of the id). ``role``,
        ``search`` and ``task_args`` join only when set, so cells without them keep their ids."""
        d = dataclasses.asdict(self)
        for name in ("suite", "selection"):
            d.pop(name)
        for name in ("role", "search", "task_args"):
            if not d[name]:
                d.pop(name)
        return d

    @property
    def id(self) -> str:
        blob = json.dumps(self.resolved(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def pinned(self, threads: int, deterministic: bool, weights: str | None = None,
               device: torch.device | str = "cpu", auto_precision: str | None = None) -> Cell:
        """This cell as run with ``threads`` torch CPU threads, deterministic algorithms on/off,
        (when given) the weights its backbone source resolves to, and precision ``auto``
        resolved: to ``auto_precision`` when given (what a recorded row's ``auto`` became),
        else for ``device`` (bench/run/precision.py). The resolved precision changes the
        bytes, so the id holds it, not ``auto``."""
        train = self.train
        if train.get("precision") == "auto":
            train = {**train, "precision": auto_precision or precision.resolve("auto", device, deterministic)}
        return dataclasses.replace(self, threads=threads, deterministic=deterministic, train=train,
                                   weights=self.weights if weights is None else weights)

    @property
    def train_config(self) -> TrainConfig:
        """The cell's options; one stored before an option existed ran as that option's
        ``LEGACY_TRAIN`` value (e.g. fp32, unbucketed), which it is rebuilt with."""
        cfg = TrainConfig(**{**LEGACY_TRAIN, **self.train})
        chosen = self.selection.get("chosen") or {}
        return dataclasses.replace(cfg, lr=chosen["lr"]) if "lr" in chosen else cfg

    @property
    def is_trial(self) -> bool:
        return self.role == TRIAL

    def trials(self) -> list[Cell]:
        """A final cell's trial cells, one per grid value at the search seed (none without a
        search). Derived from the cell, so pinning the final cell pins its trials alike."""
        return [self.trial_at(lr) for lr in self.search["lr"]] if self.search else []

    def trial_at(self, lr: float) -> Cell:
        """This final cell's trial at learning rate ``lr``: one of its grid's, or one a step
        beyond its edge when the search widens (bench/run/search.py ``widened``)."""
        length = self.search.get("prefix_length", self.prefix_length)
        return dataclasses.replace(self, role=TRIAL, seed=self.search["seed"], prefix_length=length,
                                   train={**self.train, "lr": lr}, search={}, selection={})

    @classmethod
    def from_resolved(cls, resolved: dict[str, Any], suite: str = "reproduce") -> Cell:
        return cls(suite=suite, **resolved)


def _check_list(where: str, key: str, value: Any, kind: type) -> list:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: {key!r} must be a non-empty list, got {value!r}")
    for v in value:
        if not isinstance(v, kind) or isinstance(v, bool):
            raise ConfigError(f"{where}: {key!r} holds {v!r}, expected {kind.__name__} values")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: {key!r} repeats a value: {value!r}")
    return value


def _check_names(where: str, key: str, names: list[str], registry: Any) -> None:
    for name in names:
        if name not in registry:
            raise ConfigError(f"{where}: {key}: {registry.unknown_message(name)}")


def _train_table(where: str, table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table of training options, got {table!r}")
    check_fields(TrainConfig, table, where)  # validates keys and types early
    return dict(table)


def _expand_composite(doc: dict[str, Any], suite: str, spec: dict[str, Any], source: str, where: str,
                      seen: tuple[str, ...], include_path: str | None) -> list[Cell]:
    """A suite made of other suites (``include = [...]``): the union of their cells, labelled
    with this suite's name. Lets one suite pair each task with its own backbones and budget.
    A name the file does not define is looked up among the built-in suites (bench/suites.toml),
    so a user's file can extend ``default`` or ``smoke`` without copying them."""
    unknown = sorted(set(spec) - set(COMPOSITE_KEYS))
    if unknown:
        raise ConfigError(unknown_keys(f"{where}: a suite with 'include' takes only {', '.join(COMPOSITE_KEYS)}",
                                       unknown, COMPOSITE_KEYS))
    parts = _check_list(where, "include", spec["include"], str)
    cells: dict[str, Cell] = {}
    for part in parts:
        if part in seen or part == suite:
            raise ConfigError(f"{where}: include {part!r} makes a cycle ({' -> '.join((*seen, suite, part))})")
        part_doc, part_source = doc, source
        if part not in (doc.get("suites") or {}) and Path(source) != DEFAULT_SUITES:
            part_doc, part_source = load_toml(DEFAULT_SUITES), str(DEFAULT_SUITES)
            if part not in (part_doc.get("suites") or {}):
                raise ConfigError(f"{where}: include {part!r}: no such suite in {source} or among the built-in "
                                  f"suites ({', '.join(sorted(part_doc.get('suites') or {}))})")
        for cell in expand(part_doc, part, part_source, _seen=(*seen, suite), include_path=include_path):
            cells.setdefault(cell.id, dataclasses.replace(cell, suite=suite))
    return list(cells.values())


def expand(doc: dict[str, Any], suite: str, source: str = "<suites>", _seen: tuple[str, ...] = (),
           include_path: str | None = None) -> list[Cell]:
    """Expand suite ``suite`` of a parsed TOML document into cells (pure, deterministic).
    ``include_path`` (--lm-eval-include-path) replaces the suite's ``lm_eval_include_path``."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a document of tables, got {doc!r:.200}")
    unknown_top = sorted(map(str, set(doc) - {"defaults", "suites"}))
    if unknown_top:
        raise ConfigError(f"{source}: unknown top-level key(s) {unknown_top}; valid: defaults, suites")
    suites = doc.get("suites", {})
    if not isinstance(suites, dict):
        raise ConfigError(f"{source}: 'suites' must be a table of [suites.NAME] tables, got {suites!r:.200}")
    check_name("suite", suite, source)  # it names results/runs/<suite> and results/tables/<suite>
    if suite not in suites:
        raise ConfigError(f"{source}: unknown suite {suite!r}; valid suites: {', '.join(sorted(suites)) or '(none)'}")
    where = f"{source} [suites.{suite}]"
    spec = suites[suite]
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a table")
    _check_tracker(where, spec.get("tracker", {}))
    if "include" in spec:
        return _expand_composite(doc, suite, spec, source, where, _seen, include_path)
    unknown = sorted(set(spec) - set(SUITE_KEYS))
    if unknown:
        raise ConfigError(unknown_keys(where, unknown, SUITE_KEYS))
    missing = [a for a in AXES if a not in spec]
    if missing:
        raise ConfigError(f"{where}: missing axis/axes {missing}")

    methods = _check_list(where, "methods", spec["methods"], str)
    tasks = _check_list(where, "tasks", spec["tasks"], str)
    backbones = _check_list(where, "backbones", spec["backbones"], str)
    lengths = _check_list(where, "prefix_lengths", spec["prefix_lengths"], int)
    seeds = _check_list(where, "seeds", spec["seeds"], int)
    _check_names(where, "methods", methods, METHODS)
    task_args = _task_args(where, spec, tasks, _include_path(where, spec, source, include_path))
    task_objs = {t: task_for(t, task_args[t]) for t in tasks}
    _check_names(where, "backbones", backbones, BACKBONES)
    for p in lengths:
        check_point(where, p, None)
    for s in seeds:
        check_point(where, None, s)
    grids, search_seed = search_grids(where, spec, methods, seeds)
    trial_length = search_length(where, spec, lengths)
    widening = widen_rule(where, spec["search"]) if grids else {}
    executor = spec.get("executor", {})
    if not isinstance(executor, dict) or (executor and not isinstance(executor.get("name"), str)):
        raise ConfigError(f"{where}: 'executor' must be a table with a 'name' (local, subprocess, ray, slurm) "
                          f"and that executor's options, got {executor!r:.200}")
    source_choice = spec.get("backbone_source", "auto")
    if source_choice not in ("auto", "local", "hub"):
        raise ConfigError(f"{where}: backbone_source {source_choice!r} is not one of auto, local, hub")

    defaults = _train_table(f"{source} [defaults]", doc.get("defaults", {}))
    suite_train = _train_table(f"{where}.train", spec.get("train", {}))
    per_backbone = _keyed_tables(where, "backbone_overrides", spec, backbones)
    per_task = _keyed_tables(where, "task_overrides", spec, tasks)
    per_method = _keyed_tables(where, "overrides", spec, methods)
    method_args = _keyed_tables(where, "method_args", spec, methods, train=False)
    excludes = spec.get("exclude", [])
    if not isinstance(excludes, list):
        raise ConfigError(f"{where}: 'exclude' must be a list of tables")
    for i, ex in enumerate(excludes):
        if not isinstance(ex, dict) or not ex:
            raise ConfigError(f"{where}: exclude[{i}] must be a non-empty table")
        bad = sorted(set(ex) - set(EXCLUDE_KEYS))
        if bad:
            raise ConfigError(unknown_keys(f"{where}: exclude[{i}]", bad, EXCLUDE_KEYS))

    identities: dict[tuple[str, str], dict[str, Any]] = {}
    cells: dict[str, Cell] = {}
    for method, task, backbone, length, seed in itertools.product(methods, tasks, backbones, lengths, seeds):
        method_cls = METHODS.get(method)
        plen = length if method_cls.uses_prefix_length else None
        point = {"method": method, "task": task, "backbone": backbone, "prefix_length": plen, "seed": seed}
        if any(all(point.get(k) == v for k, v in ex.items()) for ex in excludes):
            continue
        train = {**defaults, **suite_train, **per_backbone.get(backbone, {}),
                 **per_task.get(task, {}), **per_method.get(method, {})}
        cfg = check_fields(TrainConfig, train, f"{where} cell {method}/{task}/{backbone}")
        if suite.startswith(CLAIMS_PREFIXES) and task_objs[task].corpus_metrics and cfg.eval_limit is not None:
            raise ConfigError(f"{where}: a claims-making suite evaluates task {task!r} on its full evaluation split: its "
                              f"metrics are corpus statistics, so eval_limit = {cfg.eval_limit} would make "
                              "its scores comparable to nothing; remove eval_limit")
        if grids:
            check_searchable(f"{where} cell {method}/{task}/{backbone}", cfg, train)
        elif cfg.lr is None:  # the committed search's rate for this backbone, else the method's own
            cfg = dataclasses.replace(cfg, lr=searched_lr(backbone, method) or method_cls.default_lr)
        margs = method_cls.Config.from_dict(method_args.get(method, {}),
                                            f"{where}.method_args.{method}").to_dict()
        if (method, task) not in identities:
            identities[method, task] = cell_identity(method_cls, task_objs[task])
        search = {"lr": grids[method], "seed": search_seed, **widening} if grids else {}
        if search and trial_length is not None and plen is not None:
            search["prefix_length"] = trial_length  # every length takes the choice made at this one
        cell = Cell(suite, method, task, backbone, plen, seed, _stored_train(cfg), margs, source_choice,
                    identities[method, task], search=search, task_args=task_args[task])
        for c in (*cell.trials(), cell):  # a group's trials before its first final cell
            cells.setdefault(c.id, c)  # methods without a prefix collapse the length axis
    if not cells:
        raise ConfigError(f"{where}: the excludes remove every cell")
    return list(cells.values())


def _include_path(where: str, spec: dict, source: str, given: str | None) -> str | None:
    """The folder of lm-eval task YAMLs for this suite's ``lm_eval/`` tasks, absolute:
    ``given`` (the command line; relative to the working directory), else the suite's
    ``lm_eval_include_path`` (relative to its TOML file)."""
    raw, base = (given, Path.cwd()) if given else (spec.get("lm_eval_include_path"), None)
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{where}: lm_eval_include_path must be a folder path, got {raw!r}")
    if base is None:
        base = Path(source).parent if Path(source).is_file() else Path.cwd()
    path = (base / Path(raw).expanduser()).resolve()
    if not path.is_dir():
        raise ConfigError(f"{where}: lm_eval_include_path {raw!r} is not a folder ({path})")
    return str(path)


def _task_args(where: str, spec: dict, tasks: list[str], include_path: str | None) -> dict[str, dict[str, Any]]:
    """Each task's ``Cell.task_args``: its checked ``task_args`` table and, for a task found in
    ``include_path``, that folder. An unknown task name fails here (with close valid names)."""
    tables = _keyed_tables(where, "task_args", spec, tasks, train=False)
    return {task: cell_args(task, parse_options(task, tables[task], f"{where}.task_args.{task}")
                            if task in tables else {}, include_path, f"{where}: tasks")
            for task in tasks}


def _stored_train(cfg: TrainConfig) -> dict[str, Any]:
    """A cell's train table: every option, less those at their ``OPTIONAL_TRAIN`` default."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in OPTIONAL_TRAIN or v != OPTIONAL_TRAIN[k]}


def check_point(where: str, prefix_length: int | None, seed: int | None) -> None:
    """The numeric axes' bounds: 1 <= prefix_length <= LIMITS, 0 <= seed < 2**32."""
    if prefix_length is not None:
        if prefix_length < 1:
            raise ConfigError(f"{where}: prefix_lengths holds {prefix_length}, prefix lengths must be >= 1")
        at_most("prefix_length", prefix_length, f"{where}: prefix_lengths")
    if seed is not None and not 0 <= seed <= LIMITS["seed"][0]:
        raise ConfigError(f"{where}: seeds holds {seed}, seeds must be in [0, {LIMITS['seed'][0]}]: "
                          f"{LIMITS['seed'][1]}")


def _keyed_tables(where: str, key: str, spec: dict, allowed: list[str], train: bool = True) -> dict[str, dict]:
    tables = spec.get(key, {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{where}: {key!r} must be a table keyed by name")
    for name, table in tables.items():
        if name not in allowed:
            raise ConfigError(f"{where}: {key}.{name}: {name!r} is not on this suite's axis; "
                              f"valid: {', '.join(allowed)}")
        if train:
            _train_table(f"{where}.{key}.{name}", table)
        elif not isinstance(table, dict):
            raise ConfigError(f"{where}.{key}.{name}: expected a table, got {table!r}")
    return tables


def executor_table(path: str | Path | None, suite: str) -> tuple[dict[str, Any], str]:
    """The suite's ``executor`` table (empty when it has none) and where it was read, for
    error messages. Where cells run never changes what they compute, so it is not in the id."""
    path = Path(path) if path else DEFAULT_SUITES
    spec = load_toml(path).get("suites", {}).get(suite, {})
    return dict(spec.get("executor", {})), f"{path} [suites.{suite}].executor"


def _check_tracker(where: str, table: Any) -> None:
    """A suite's ``tracker`` table: ``name`` (bench/run/trackers/, or "none") and ``uri``, both strings."""
    if not isinstance(table, dict) or set(table) - {"name", "uri"} or (table and not isinstance(table.get("name"), str)) \
            or not isinstance(table.get("uri", ""), str):
        raise ConfigError(f"{where}: 'tracker' must be a table with a 'name' (tensorboard, mlflow, none) and "
                          f"optionally a 'uri' (a log folder or tracking URI), got {table!r:.200}")


def tracker_table(path: str | Path | None, suite: str) -> dict[str, str]:
    """The suite's ``tracker`` table (empty when it has none). Logging never changes what a
    cell computes, so it is not in the id."""
    path = Path(path) if path else DEFAULT_SUITES
    table = load_toml(path).get("suites", {}).get(suite, {}).get("tracker", {})
    return dict(table) if isinstance(table, dict) else {}


def load_suite(path: str | Path | None, suite: str, include_path: str | None = None) -> list[Cell]:
    path = Path(path) if path else DEFAULT_SUITES
    return expand(load_toml(path), suite, str(path), include_path=include_path)
