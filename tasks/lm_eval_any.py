"""Any lm-evaluation-harness task by name: ``lm_eval/<harness task>`` in a suite.

A name that is not one of the fixed tasks of ``tasks/lm_eval_tasks.py`` is looked up in
lm-eval's own task index (``lm_eval.tasks.TaskManager``) and, first, in the suite's
``lm_eval_include_path`` (a folder of the user's task YAMLs, as ``lm_eval --include_path``
takes). The task is then an ``LmEvalTask`` like the fixed ones: the adapter trains on one of
our tasks (``train_source``, default ``glue/rte``, through its verbalizer) and lm-eval scores
it with its own task definition, prompts and metrics, on the model in memory.

A suite's ``task_args."lm_eval/<name>"`` sets a task's options (``OPTIONS``); they are part
of the cell id (``Cell.task_args``), and so is the include folder's path, its task files and
the local data files the task names. A fixed task without options is the registered object
itself, so its cells keep their ids.

An unknown name is a config error before anything trains, naming close valid names.
lm-eval's full index (thousands of YAML files, several seconds) is built once per process and
only when a name is not found in the include folder.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from bench.core.config import ConfigError
from tasks.base import TASKS, DataSettings, DataUnavailableError, Metric, Task
from tasks.lm_eval_tasks import HarnessModel, LmEvalTask, flatten_results

PREFIX = "lm_eval/"
DEFAULT_TRAIN_SOURCE = "glue/rte"  # as the fixed hub tasks: offline-available, a yes/no source
# what a suite's task_args."lm_eval/<name>" may set, with the help `prefix-bench list` shows
OPTIONS: dict[str, str] = {
    "train_source": f"our task the adapter trains on before the harness scores it (default {DEFAULT_TRAIN_SOURCE})",
    "train_split": "the split of train_source it trains on (default: that task's training split)",
    "num_fewshot": "few-shot examples in every harness prompt, drawn by lm-eval (default 0)",
    "limit": "harness documents scored: a count, or a fraction in (0, 1) (default: the cell's eval_limit, else all)",
    "main_metric": "the harness metric that is the row's main score (default: the task's first metric)",
}
INCLUDE_KEY = "include_path"  # set from the suite's lm_eval_include_path, never by hand
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")  # datasets builders over local files


# -- lm-eval's task index ------------------------------------------------------------------

def _manager(include_path: str | None) -> Any:
    """lm-eval's TaskManager over ``include_path`` alone (indexed afresh: a few files, and
    they may have changed), or over its built-in tasks (None: once per process)."""
    from lm_eval.tasks import TaskManager

    if include_path is None:
        return _builtin_manager()
    return TaskManager(include_path=include_path, include_defaults=False)


@functools.lru_cache(maxsize=1)
def _builtin_manager() -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _runnable(entry: Any) -> bool:
    return entry.kind.name in ("TASK", "PY_TASK")


def find_harness_task(harness_name: str, include_path: str | None) -> tuple[Any, bool]:
    """(lm-eval's index entry for ``harness_name``, whether it is from ``include_path``).
    Raises ConfigError naming close valid names when lm-eval knows no such task."""
    if include_path:
        entry = _manager(include_path).task_index.get(harness_name)
        if entry is not None and _runnable(entry):
            return entry, True
    entry = _manager(None).task_index.get(harness_name)
    if entry is not None and _runnable(entry):
        return entry, False
    raise ConfigError(unknown_message(PREFIX + harness_name, include_path, entry))


def unknown_message(name: str, include_path: str | None, entry: Any = None) -> str:
    """What is wrong with ``name`` and the closest valid ``lm_eval/`` names."""
    if entry is not None:  # a group or tag: it names several tasks, a cell evaluates one
        members = entry.cfg.get("task") if isinstance(entry.cfg, dict) else None
        shown = f" ({', '.join(map(str, members[:5]))}{', ...' if len(members) > 5 else ''})" \
            if isinstance(members, list) and members else ""
        return (f"lm-eval {entry.kind.name.lower()} {name.removeprefix(PREFIX)!r} names several tasks{shown}; "
                f"a cell evaluates one task: name it as lm_eval/<task>")
    names = {n for n in TASKS.names() if n.startswith(PREFIX)}
    for path in ([include_path] if include_path else []) + [None]:
        names |= {PREFIX + n for n, e in _manager(path).task_index.items() if _runnable(e)}
    close = difflib.get_close_matches(name, sorted(names), n=5, cutoff=0.6)
    where = f"in {include_path} or " if include_path else ""
    hint = f"did you mean {', '.join(close)}?" if close else "`lm_eval ls tasks` lists them"
    return (f"unknown task {name!r}: lm-eval has no task {name.removeprefix(PREFIX)!r} {where}among its "
            f"{len(names):,} tasks; {hint}")


def _entry_metrics(entry: Any, main: str | None) -> tuple[tuple[Metric, ...], str]:
    """The metrics lm-eval reports for the task, named as ``flatten_results`` names them
    (``metric`` or ``metric_filter``), and the main one."""
    from lm_eval.api.registry import DEFAULT_METRIC_REGISTRY, is_higher_better

    cfg = entry.cfg if isinstance(entry.cfg, dict) else {}
    listed = [m for m in cfg.get("metric_list") or [] if isinstance(m, dict) and isinstance(m.get("metric"), str)]
    if listed:
        base = [(m["metric"], m.get("higher_is_better")) for m in listed]
    else:
        base = [(m, None) for m in DEFAULT_METRIC_REGISTRY.get(cfg.get("output_type", ""), [])]
    filters = [f["name"] for f in cfg.get("filter_list") or [] if isinstance(f, dict) and f.get("name")]
    metrics: list[Metric] = []
    for metric, hib in base:
        hib = is_higher_better(metric) if hib is None else hib
        for filt in filters or ["none"]:
            metrics.append(Metric(metric if filt == "none" else f"{metric}_{filt}", hib is not False))
    if main is not None:
        if metrics and main not in {m.name for m in metrics}:
            raise ConfigError(f"main_metric {main!r} is not one of task {entry.name!r}'s metrics "
                              f"({', '.join(m.name for m in metrics)})")
        return tuple(metrics) or (Metric(main),), main
    if not metrics:
        raise ConfigError(f"lm-eval task {entry.name!r} declares no metrics we can read (a Python task?); "
                          "set its main_metric in task_args")
    return tuple(metrics), metrics[0].name


def _data_files(entry: Any) -> tuple[list[Path], bool]:
    """(the local data files the task's YAML names, whether it needs the hub for its data)."""
    cfg = entry.cfg if isinstance(entry.cfg, dict) else {}
    files = (cfg.get("dataset_kwargs") or {}).get("data_files") or {}
    named = list(files.values()) if isinstance(files, dict) else [files]
    paths = [Path(p) for v in named for p in (v if isinstance(v, list) else [v]) if isinstance(p, str)]
    local = cfg.get("dataset_path") in LOCAL_BUILDERS and bool(paths) and all("://" not in str(p) for p in paths)
    return paths, not local


# -- the task ----------------------------------------------------------------------------------

class ConfiguredLmEvalTask(LmEvalTask):
    """An lm-eval task with a suite's options: a training split, a harness ``limit``."""

    limit: int | float | None = None

    def evaluate_adapted(self, adapter: nn.Module, tokenizer: Any, device: Any,
                         limit: int | None = None) -> dict[str, float]:
        return super().evaluate_adapted(adapter, tokenizer, device, self.limit if self.limit is not None else limit)


class HarnessTask(ConfiguredLmEvalTask):
    """A harness task found by name in lm-eval's index or in a user's include folder."""

    def __init__(self, *, entry: Any, include_path: str | None, **kwargs: Any) -> None:
        files, self.needs_hub = _data_files(entry)
        super().__init__(local=not self.needs_hub, hub_dataset=str((entry.cfg or {}).get("dataset_path", "")),
                         **kwargs)
        self.include_path = include_path
        self.yaml_path = Path(entry.yaml_path) if entry.yaml_path else None
        self.data_files = tuple(files)

    def depends_on(self) -> tuple[Any, ...]:
        """The task it trains through, the task's YAML (for an include folder: every task
        file there, since one may include another) and the local data files it names."""
        if self.include_path:
            root = Path(self.include_path)
            defs = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml", ".py") and p.is_file())
        else:
            defs = [self.yaml_path] if self.yaml_path and self.yaml_path.is_file() else []
        return (self.source, *defs, *(p for p in self.data_files if p.is_file()))

    def describe(self) -> str:
        where = f"from {self.include_path}" if self.include_path else "lm-eval's own"
        return (f"lm-eval task {self.harness_task} ({where}), trained on {self.train_source}; "
                f"metrics {', '.join(m.name for m in self.metrics)} (main {self.main_metric})")

    def check_available(self, data: DataSettings) -> None:
        self.source.check_available(data)
        missing = [str(p) for p in self.data_files if not self.needs_hub and not p.is_file()]
        if missing:
            raise DataUnavailableError(f"task {self.name!r}: its YAML names data file(s) that do not exist: "
                                       f"{', '.join(missing)} (relative paths are read from the working "
                                       "directory, as lm-eval does: give absolute ones)")
        if self.needs_hub and not data.allow_hub:
            raise DataUnavailableError(
                f"task {self.name!r} (lm-eval task {self.harness_task!r}) needs the Hugging Face hub for its "
                f"dataset {self.hub_dataset or '(the harness task’s dataset)'}; the hub is disabled "
                "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE). Offline, write a task over local files in an "
                "lm_eval_include_path folder")

    def evaluate_adapted(self, adapter: nn.Module, tokenizer: Any, device: Any,
                         limit: int | None = None) -> dict[str, float]:
        """As ``LmEvalTask.evaluate_adapted``, with lm-eval's index of this task's folder."""
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        adapter.eval()
        adapter.fold()
        base = getattr(adapter, "model", adapter)
        model = HarnessModel(adapter, getattr(base, "get_base_model", lambda: base)())
        padding_side = tokenizer.padding_side
        try:
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size,
                      max_length=getattr(model.config, "max_position_embeddings", 2048), device=str(device),
                      **harness_model_args(tokenizer))
            out = lm_eval.simple_evaluate(
                model=lm, tasks=[self.harness_task], task_manager=_manager(self.include_path),
                num_fewshot=self.num_fewshot, limit=self.limit if self.limit is not None else limit,
                log_samples=False, bootstrap_iters=1000, random_seed=0, numpy_random_seed=0,
                torch_random_seed=0, fewshot_random_seed=0)
        finally:
            tokenizer.padding_side = padding_side  # HFLM may change it; our formulations rely on it
        return flatten_results(out["results"][self.harness_task])


def harness_model_args(tokenizer: Any) -> dict[str, Any]:
    """HFLM's extra arguments for ``tokenizer``: a WordPiece tokenizer (the tiny plumbing
    models) has no BOS/EOS for the harness's empty-context prefix, and [CLS]/[SEP] must not
    wrap every string it encodes (as ``LmEvalTask.evaluate_adapted`` does)."""
    if tokenizer.eos_token_id is None and tokenizer.bos_token_id is None:
        return {"prefix_token_id": tokenizer.sep_token_id, "add_bos_token": False}
    return {}


# -- options and resolution ---------------------------------------------------------------------

def parse_options(name: str, table: Any, where: str) -> dict[str, Any]:
    """A suite's ``task_args`` table for task ``name``, checked (types, bounds, source task)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table of task options, got {table!r:.200}")
    if not name.startswith(PREFIX):
        raise ConfigError(f"{where}: task {name!r} takes no options (only lm_eval/ tasks do)")
    bad = sorted(set(table) - set(OPTIONS))
    if bad:
        close = {b: difflib.get_close_matches(b, list(OPTIONS), n=1) for b in bad}
        hints = "; ".join(f"{b!r} (did you mean {c[0]!r}?)" if c else repr(b) for b, c in close.items())
        raise ConfigError(f"{where}: unknown option(s) {hints}; valid: {', '.join(OPTIONS)}")
    for key in ("train_source", "train_split", "main_metric"):
        if key in table and (not isinstance(table[key], str) or not table[key]):
            raise ConfigError(f"{where}: {key} must be a non-empty string, got {table[key]!r}")
    shots = table.get("num_fewshot", 0)
    if not isinstance(shots, int) or isinstance(shots, bool) or not 0 <= shots <= 1024:
        raise ConfigError(f"{where}: num_fewshot must be a whole number in 0..1024, got {shots!r}")
    limit = table.get("limit")
    if limit is not None and (isinstance(limit, bool) or not (
            (isinstance(limit, int) and limit >= 1) or (isinstance(limit, float) and 0 < limit < 1))):
        raise ConfigError(f"{where}: limit must be a count >= 1 or a fraction in (0, 1), got {limit!r}")
    source = table.get("train_source")
    if source is not None:
        if source not in TASKS:
            raise ConfigError(f"{where}: train_source: {TASKS.unknown_message(source)}")
        if isinstance(TASKS.get(source), LmEvalTask):
            raise ConfigError(f"{where}: train_source {source!r} is an lm-eval task; name one we train "
                              "through a verbalizer (e.g. glue/rte)")
    return dict(table)


def cell_args(name: str, options: Mapping[str, Any], include_path: str | None, where: str) -> dict[str, Any]:
    """A cell's ``task_args`` for task ``name``: its options, and the include folder when the
    task comes from it. Empty for a fixed task without options (its id stays as it was).
    Raises ConfigError for an unknown name, naming close valid ones."""
    args = dict(options)
    if name in TASKS and not args:
        return {}
    if name not in TASKS:
        if not name.startswith(PREFIX):
            raise ConfigError(f"{where}: {TASKS.unknown_message(name)}")
        try:
            _, from_include = find_harness_task(name.removeprefix(PREFIX), include_path)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        if from_include:
            args[INCLUDE_KEY] = include_path
    try:
        task_for(name, args)  # build it now: a bad option (main_metric, split) fails here
    except ConfigError as err:
        raise ConfigError(f"{where}: task {name!r}: {err}") from None
    return args


def _build(name: str, args_json: str) -> Task:
    args = json.loads(args_json)
    include_path = args.pop(INCLUDE_KEY, None)
    fixed = TASKS.get(name) if name in TASKS else None
    if fixed is not None and not isinstance(fixed, LmEvalTask):
        raise ConfigError(f"task {name!r} takes no options (only lm_eval/ tasks do)")
    source = args.get("train_source", fixed.train_source if fixed else DEFAULT_TRAIN_SOURCE)
    common = {"name": name, "train_source": source, "num_fewshot": args.get("num_fewshot", 0)}
    if fixed is not None:
        main = args.get("main_metric", fixed.main_metric)
        if main not in {m.name for m in fixed.metrics}:
            raise ConfigError(f"main_metric {main!r} is not one of {', '.join(m.name for m in fixed.metrics)}")
        task: ConfiguredLmEvalTask = ConfiguredLmEvalTask(
            harness_task=fixed.harness_task, metrics=fixed.metrics, main_metric=main, local=fixed.local,
            hub_dataset=fixed.hub_dataset, batch_size=fixed.batch_size, **common)
    else:
        entry, _ = find_harness_task(name.removeprefix(PREFIX), include_path)
        metrics, main = _entry_metrics(entry, args.get("main_metric"))
        task = HarnessTask(entry=entry, include_path=include_path, harness_task=entry.name, metrics=metrics,
                           main_metric=main, **common)
    task.limit = args.get("limit")
    if "train_split" in args:
        task.train_split = args["train_split"]
    return task


def task_for(name: str, args: Mapping[str, Any] | None = None) -> Task:
    """The task a cell runs: the registered ``name`` itself when ``args`` is empty and it is
    registered, else ``name`` built with ``args`` (an ``lm_eval/`` task, read from lm-eval's
    index and the include folder as they are now). Raises UnknownNameError / ConfigError for a bad name."""
    if not args and name in TASKS:
        return TASKS.get(name)
    if not name.startswith(PREFIX):
        if args:
            raise ConfigError(f"task {name!r} takes no options (only lm_eval/ tasks do)")
        return TASKS.get(name)  # raises, naming the valid tasks
    return _build(name, json.dumps(dict(args or {}), sort_keys=True))


def cell_task(cell: Any) -> Task:
    """``task_for`` a cell (anything with ``task`` and ``task_args``)."""
    return task_for(cell.task, getattr(cell, "task_args", None) or None)


__all__ = ["OPTIONS", "PREFIX", "ConfiguredLmEvalTask", "HarnessTask", "cell_args", "cell_task",
           "find_harness_task", "parse_options", "task_for"]
